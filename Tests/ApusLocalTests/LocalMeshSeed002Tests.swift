import ApusCore
import Foundation
import Testing

/// Seed 002 and retries end to end, in local mode with real proxies: ServiceProfiles written as files are
/// enforced by the caller's proxy, and editing the file changes the behaviour without restarting anything.
@Suite(.serialized) struct LocalMeshSeed002Tests {
    /// hello calls world (`/`, answered after `worldLatency` ms, failing `worldErrorRate` of requests with 500).
    static func pods(marker: String, worldLatency: Int, worldErrorRate: Double) -> String {
        MeshManifests.file(
            MeshManifests.namespace, MeshManifests.serviceAccount("hello"), MeshManifests.serviceAccount("world"),
            MeshManifests.helloPod(marker: marker, worldURL: "http://world.mesh.svc.cluster.local:7101/"),
            MeshManifests.worldPod(marker: marker, latencyMs: worldLatency, errorRate: worldErrorRate),
            MeshManifests.service("world", port: 7101))
    }

    /// world's profile: one route for `GET /`, with `settings` (YAML lines at the route's indentation).
    static func worldProfile(_ settings: String, budget: String = "") -> String {
        """
        apiVersion: linkerd.io/v1alpha2
        kind: ServiceProfile
        metadata: {name: world.mesh.svc.cluster.local, namespace: mesh}
        spec:
          routes:
          - name: GET /
            condition: {method: GET, pathRegex: /}
            \(settings)
        \(budget)
        """
    }

    @Test("seed 002: a ServiceProfile timeout is enforced, and editing the file changes it within 1 s")
    func serviceProfileTimeoutsFollowTheFile() async throws {
        let mesh = try LocalMeshRun(firstPodAddress: "127.0.54.1")
        defer { mesh.cleanUp() }
        try mesh.writeManifests(Self.pods(marker: mesh.marker, worldLatency: 200, worldErrorRate: 0))
        try mesh.writeManifests(Self.worldProfile("timeout: 2s"), to: "profile.yaml")
        try mesh.startController()
        defer { mesh.stopController() }
        let hello = try await mesh.readyPodIP("hello")
        _ = try await mesh.readyPodIP("world")
        try await eventually(timeout: .seconds(30)) {
            (try? httpGet("http://\(hello):7100/"))?.body == "hello world\n"
        }

        // 50 ms is less than world's 200 ms: hello's proxy answers 504 in about 50 ms, which hello reports.
        let tightened = ContinuousClock.now
        try mesh.writeManifests(Self.worldProfile("timeout: 50ms"), to: "profile.yaml")
        let changed = try await Self.firstRequestStart(after: tightened, url: "http://\(hello):7100/") {
            $0.status == 502 && $0.body.contains("504")
        }
        #expect(changed - tightened < .seconds(1), "the new timeout applied after \(changed - tightened)")
        let started = ContinuousClock.now
        let timedOut = try httpGet("http://\(hello):7100/")
        #expect(timedOut.status == 502 && timedOut.body.contains("504"), "\(timedOut)")
        #expect(ContinuousClock.now - started < .milliseconds(190))

        // Loosened again: world's answers get through.
        let loosened = ContinuousClock.now
        try mesh.writeManifests(Self.worldProfile("timeout: 1s"), to: "profile.yaml")
        let restored = try await Self.firstRequestStart(after: loosened, url: "http://\(hello):7100/") {
            $0.status == 200 && $0.body == "hello world\n"
        }
        #expect(restored - loosened < .seconds(1), "the new timeout applied after \(restored - loosened)")
    }

    @Test("retries: world fails 20 % on a retryable route, hello still succeeds ≥ 99 %")
    func retryableRouteHidesFailures() async throws {
        let mesh = try LocalMeshRun(firstPodAddress: "127.0.55.1")
        defer { mesh.cleanUp() }
        try mesh.writeManifests(Self.pods(marker: mesh.marker, worldLatency: 0, worldErrorRate: 0.2))
        let budget = """
              retryBudget: {retryRatio: 0.5, minRetriesPerSecond: 10, ttl: 10s}
            """
        try mesh.writeManifests(Self.worldProfile("isRetryable: true", budget: budget), to: "profile.yaml")
        try mesh.startController()
        defer { mesh.stopController() }
        let hello = try await mesh.readyPodIP("hello")
        _ = try await mesh.readyPodIP("world")
        // The profile has reached hello's proxy once the route shows up in its metrics.
        try await eventually(timeout: .seconds(30)) {
            _ = try? httpGet("http://\(hello):7100/")
            let metrics = (try? httpGet("http://\(hello):4191/metrics"))?.body ?? ""
            return metrics.contains("route_request_total{") && metrics.contains("rt_route=\"GET /\"")
        }

        var successes = 0
        let total = 300
        for _ in 0..<total {
            if (try? httpGet("http://\(hello):7100/"))?.status == 200 { successes += 1 }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(Double(successes) / Double(total) >= 0.99, "\(successes) of \(total) succeeded")
        // world really failed: its proxy saw 500s that hello's proxy retried.
        let world = try await mesh.readyPodIP("world")
        let worldMetrics = try httpGet("http://\(world):4191/metrics").body
        #expect(
            worldMetrics.split(separator: "\n").contains {
                $0.hasPrefix("response_total{") && $0.contains("direction=\"inbound\"")
                    && $0.contains("status_code=\"500\"")
            })
    }

    /// Sends requests back to back until `matches` holds; returns when the first matching request was sent.
    static func firstRequestStart(
        after start: ContinuousClock.Instant, url: String, timeout: Duration = .seconds(10),
        _ matches: ((status: Int, body: String)) -> Bool
    ) async throws -> ContinuousClock.Instant {
        while ContinuousClock.now - start < timeout {
            let sent = ContinuousClock.now
            if let response = try? httpGet(url), matches(response) { return sent }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("no matching response from \(url) within \(timeout)")
        throw CancellationError()
    }
}
