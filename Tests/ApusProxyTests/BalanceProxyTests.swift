import ApusCore
import ApusDestinationClient
import ApusProxy
import NIOCore
import Testing

/// Load balancing through a real in-process proxy: static endpoints on loopback, backends with latency and
/// failures the test controls.
@Suite struct BalanceProxyTests {
    static let web = "web.shop.svc.cluster.local:80"

    @Test("one of three endpoints 10x slower receives under 15 % of the requests")
    func slowEndpoint() async throws {
        let fast1 = try await ControlledBackend.start("fast-1", delay: .milliseconds(5))
        let fast2 = try await ControlledBackend.start("fast-2", delay: .milliseconds(5))
        let slow = try await ControlledBackend.start("slow", delay: .milliseconds(50))
        let proxy = try await RunningProxy.start { configuration in
            configuration.staticEndpoints = [Self.web: [fast1.endpoint, fast2.endpoint, slow.endpoint]]
        }
        let responses = try await sendRequests(port: proxy.ports.outbound, host: Self.web, total: 600, concurrency: 4)
        let counts = histogram(responses)
        #expect(responses.allSatisfy { $0.status == 200 })
        #expect(counts.values.reduce(0, +) == 600)
        #expect(counts["slow", default: 0] < 600 * 15 / 100, "\(counts)")
        #expect(counts["fast-1", default: 0] > 150 && counts["fast-2", default: 0] > 150, "\(counts)")
        await proxy.stop()
        for backend in [fast1, fast2, slow] { await backend.stop() }
    }

    @Test("failure accrual ejects a failing endpoint, probes it after the penalty, and takes it back once it heals")
    func failureAccrual() async throws {
        let healthy1 = try await ControlledBackend.start("healthy-1")
        let healthy2 = try await ControlledBackend.start("healthy-2")
        let flaky = try await ControlledBackend.start("flaky", status: 500)
        var profile = DestinationProfile(fullyQualifiedName: "web.shop.svc.cluster.local", port: 80, source: .default)
        profile.servicePolicy = RoutePolicy(
            failureAccrual: .init(
                consecutiveMaxFailures: 7, minPenalty: GoDuration(nanoseconds: 400_000_000),
                maxPenalty: GoDuration(nanoseconds: 800_000_000), jitterRatio: 0))
        let proxy = try await RunningProxy.start { configuration in
            configuration.staticEndpoints = [Self.web: [healthy1.endpoint, healthy2.endpoint, flaky.endpoint]]
            configuration.staticProfiles = [Self.web: profile]
        }
        let clock = ContinuousClock()
        let started = clock.now
        // Four at a time: with one request at a time P2C would keep sending to whichever endpoint has the lowest
        // latency estimate, and the failing one might not be tried at all.
        let first = try await sendRequests(port: proxy.ports.outbound, host: Self.web, total: 300, concurrency: 4)
        let elapsed = clock.now - started
        // 7 consecutive failures eject it (up to 3 more may be in flight by then); each later probe (one per
        // penalty, 400 ms then 800 ms) fails once more.
        let maxProbes = Int((elapsed / .milliseconds(400)).rounded(.up))
        #expect(
            flaky.requests >= 7 && flaky.requests <= 10 + maxProbes, "flaky got \(flaky.requests) in \(elapsed)")
        #expect(first.filter { $0.status == 500 }.count == flaky.requests)
        #expect(first.filter { $0.status == 200 }.count == 300 - flaky.requests)
        let labels = #"backend_kind="Service",backend_name="web",backend_namespace="shop",backend_port="80""#
        let ejected = proxy.server.metrics.render()
        #expect(ejected.contains("outbound_http_balancer_endpoints{\(labels),endpoint_state=\"pending\"} 1"))
        #expect(ejected.contains("outbound_http_balancer_endpoints{\(labels),endpoint_state=\"ready\"} 2"))

        // Healed: the next probe (at most the 800 ms max penalty away) succeeds and it is balanced over again
        // (concurrent load, so the pending-request penalty spreads requests despite its older latency estimate).
        flaky.set(status: 200)
        try await Task.sleep(for: .milliseconds(900))
        let before = flaky.requests
        let second = try await sendRequests(port: proxy.ports.outbound, host: Self.web, total: 300, concurrency: 4)
        #expect(second.allSatisfy { $0.status == 200 })
        #expect(flaky.requests - before > 30, "healed endpoint got \(flaky.requests - before) of 300")
        let healed = proxy.server.metrics.render()
        #expect(healed.contains("outbound_http_balancer_endpoints{\(labels),endpoint_state=\"ready\"} 3"))
        #expect(healed.contains("outbound_http_balancer_endpoints{\(labels),endpoint_state=\"pending\"} 0"))
        await proxy.stop()
        for backend in [healthy1, healthy2, flaky] { await backend.stop() }
    }

    @Test("no endpoint available: the request waits out the fail-fast timeout, then gets 503 with l5d-proxy-error")
    func failFast() async throws {
        var profile = DestinationProfile(fullyQualifiedName: "web.shop.svc.cluster.local", port: 80, source: .default)
        profile.servicePolicy = RoutePolicy(
            failureAccrual: .init(
                consecutiveMaxFailures: 1, minPenalty: GoDuration(nanoseconds: 60_000_000_000),
                maxPenalty: GoDuration(nanoseconds: 60_000_000_000), jitterRatio: 0))
        let broken = try await ControlledBackend.start("broken", status: 503)
        let proxy = try await RunningProxy.start { configuration in
            configuration.staticEndpoints = [Self.web: [broken.endpoint]]
            configuration.staticProfiles = [Self.web: profile]
        }
        let connection = try await ProxyClientConnection.connect(port: proxy.ports.outbound)
        // The only endpoint fails once and is ejected for a minute.
        #expect(try await connection.get(host: Self.web).status == 503)
        let clock = ContinuousClock()
        let started = clock.now
        let refused = try await connection.get(host: Self.web)
        let waited = clock.now - started
        #expect(refused.status == 503)
        #expect(refused.backend == nil)
        #expect(refused.proxyError?.contains("no endpoint available within 3") == true, "\(refused)")
        #expect(waited >= .milliseconds(2_900) && waited < .seconds(6), "\(waited)")
        #expect(broken.requests == 1)
        await connection.close()
        await proxy.stop()
        await broken.stop()
    }
}
