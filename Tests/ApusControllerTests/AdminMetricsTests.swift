import ApusController
import ApusCore
import Foundation
import KubernetesClient
import KubernetesTestServer
import Metrics
import MetricsTestKit
import NIOConcurrencyHelpers
import Testing

/// The controller metrics the admin port exports, asserted on an injected test backend.
@Suite("Controller metrics")
struct AdminMetricsTests {
    /// Polls until `condition` holds (metrics are updated by other tasks), failing after `timeout`.
    static func eventually(
        _ what: String, timeout: Duration = .seconds(10), sourceLocation: SourceLocation = #_sourceLocation,
        _ condition: () throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while !((try? condition()) ?? false) {
            guard ContinuousClock.now < deadline else {
                Issue.record("timed out waiting for \(what)", sourceLocation: sourceLocation)
                return
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Succeeds for `ok`, requeues `later` once, fails `flaky` once then succeeds, and drops `bad` as terminal.
    struct ScriptedReconciler: Reconciler {
        let calls = NIOLockedValueBox<[String: Int]>([:])

        struct Transient: Error {}

        func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
            let call = calls.withLockedValue { calls -> Int in
                calls[key.name, default: 0] += 1
                return calls[key.name, default: 0]
            }
            switch key.name {
            case "later" where call == 1: return .requeue(after: .milliseconds(1))
            case "flaky" where call == 1: throw Transient()
            case "bad": throw TerminalError(Transient())
            default: return .done
            }
        }
    }

    @Test("reconciles are counted by result, errors and durations per controller; the queue reports adds and waits")
    func reconcileAndQueueMetrics() async throws {
        let metrics = TestMetrics()
        let reconciler = ScriptedReconciler()
        let controller = Controller(
            name: "scripted", reconciler: reconciler, workers: 1,
            queue: WorkQueue(
                name: "scripted", rateLimiter: ExponentialFailureRateLimiter(base: .milliseconds(1)),
                metricsFactory: metrics),
            metricsFactory: metrics)
        let run = Task { await controller.run() }
        defer { run.cancel() }
        for name in ["ok", "later", "flaky", "bad"] { await controller.enqueue(ObjectKey(namespace: "ns", name: name)) }

        func total(_ result: String) -> Int64 {
            metrics.counterTotal(
                label: "apus_controller_reconcile_total", dimensions: [("controller", "scripted"), ("result", result)])
        }
        // ok, later (2nd), flaky (2nd) succeed; later's 1st is a requeue; flaky's 1st an error; bad is terminal.
        try await Self.eventually("six reconciles") { total("success") == 3 && total("terminal") == 1 }
        #expect(total("requeue") == 1)
        #expect(total("error") == 1)
        #expect(
            metrics.counterTotal(
                label: "apus_controller_reconcile_errors_total", dimensions: [("controller", "scripted")]) == 2)
        let durations = try metrics.expectTimer(
            "apus_controller_reconcile_duration_seconds", [("controller", "scripted")])
        #expect(durations.values.count == 6)

        let dimensions = [("name", "scripted")]
        // Four enqueues, the requeue and the retry: six keys queued.
        #expect(metrics.counterTotal(label: "apus_controller_workqueue_adds_total", dimensions: dimensions) == 6)
        #expect(metrics.counterTotal(label: "apus_controller_workqueue_retries_total", dimensions: dimensions) == 1)
        let waits = try metrics.expectTimer("apus_controller_workqueue_queue_duration_seconds", dimensions)
        #expect(waits.values.count == 6)
        #expect(waits.values.allSatisfy { $0 >= 0 && $0 < 10_000_000_000 })
        #expect(try metrics.expectGauge("apus_controller_workqueue_depth", dimensions).lastValue == 0)
    }

    @Test("a work queue's depth gauge follows keys waiting and its latency covers the time they waited")
    func queueDepthAndLatency() async throws {
        let metrics = TestMetrics()
        let queue = WorkQueue<String>(name: "depth", metricsFactory: metrics)
        for key in ["a", "b", "c"] { await queue.add(key) }
        let depth = try metrics.expectGauge("apus_controller_workqueue_depth", [("name", "depth")])
        #expect(depth.lastValue == 3)
        try await Task.sleep(for: .milliseconds(30))
        let first = try #require(await queue.tryNext())
        #expect(depth.lastValue == 2)
        let waited = try metrics.expectTimer("apus_controller_workqueue_queue_duration_seconds", [("name", "depth")])
        #expect(try #require(waited.lastValue) >= 30_000_000)
        await queue.done(first)
        await queue.shutDown()
        #expect(depth.lastValue == 0)
    }

    @Test("watch restarts and 410 relists are counted per kind")
    func watchRestartsAndRelists() async throws {
        var options = KubernetesTestServer.Options()
        options.autoCreateNamespaces = true
        // No bookmarks: the watcher's resourceVersion must stay behind the compaction below.
        options.bookmarkInterval = .seconds(3600)
        let server = try await KubernetesTestServer.start(options)
        let client = try KubernetesClient(configuration: try KubeConfig(yaml: server.kubeconfig()).configuration())
        let metrics = TestMetrics()
        let configuration = WatcherConfiguration(
            backoff: ExponentialBackoff(initial: .milliseconds(5), maximum: .milliseconds(50)), onError: { _ in },
            metricsFactory: metrics)
        let informer = Informer(client: client, ConfigMap.self, namespace: "watched", configuration: configuration)
        let run = Task { await informer.run() }
        await informer.waitUntilSynced()
        try await Self.eventually("the watch to open") { server.activeWatchCount == 1 }

        let kind = [("kind", "ConfigMap")]
        #expect(metrics.counterTotal(label: "apus_controller_watch_restarts_total", dimensions: kind) == 0)
        #expect(metrics.counterTotal(label: "apus_controller_watch_relists_total", dimensions: kind) == 0)

        server.dropAllWatches()
        try await Self.eventually("a restart") {
            metrics.counterTotal(label: "apus_controller_watch_restarts_total", dimensions: kind) >= 1
        }
        try await Self.eventually("the watch to reopen") { server.activeWatchCount == 1 }
        #expect(metrics.counterTotal(label: "apus_controller_watch_relists_total", dimensions: kind) == 0)

        // A write elsewhere moves the revision past the watcher's; compacting then expires its resourceVersion.
        _ = try await client.create(
            ConfigMap(metadata: ObjectMeta(name: "elsewhere", namespace: "other"), data: ["k": "v"]))
        server.compact()
        server.dropAllWatches()
        try await Self.eventually("a relist") {
            metrics.counterTotal(label: "apus_controller_watch_relists_total", dimensions: kind) == 1
        }
        run.cancel()
        await run.value
        try await client.shutdown()
        try await server.shutdown()
    }

    @Test("destination indexes report subscribers, targets, changes and updates pushed")
    func destinationPublisherMetrics() async throws {
        let metrics = TestMetrics()
        let index = EndpointsIndex(configuration: Fixtures.configuration, metricsFactory: metrics)
        let target = EndpointTarget.service(ObjectKey(namespace: "shop", name: "web"), port: 80)
        var first = Subscription(index.subscribe(target))
        var second = Subscription(index.subscribe(target))
        let other = index.subscribe(.ip("10.1.1.1", port: 80))
        _ = try await first.next()
        _ = try await second.next()

        let endpoints = [("index", "endpoints")]
        let subscribers = try metrics.expectGauge("apus_controller_destination_subscribers", endpoints)
        let targets = try metrics.expectGauge("apus_controller_destination_targets", endpoints)
        #expect(subscribers.lastValue == 3)
        #expect(targets.lastValue == 2)
        // Each subscription's first value counts as pushed.
        #expect(metrics.counterTotal(label: "apus_controller_destination_updates_total", dimensions: endpoints) == 3)

        index.apply(.service(.added(Fixtures.service())))
        _ = try await first.next()
        _ = try await second.next()
        // Only the Service target changed: 10.1.1.1 is neither the Service's cluster IP nor a pod.
        let changes = metrics.counterTotal(label: "apus_controller_destination_changes_total", dimensions: endpoints)
        #expect(changes == 1)
        #expect(metrics.counterTotal(label: "apus_controller_destination_updates_total", dimensions: endpoints) == 5)

        // A proxy going away drops its stream; the publisher forgets the subscriber.
        withExtendedLifetime(first) {}
        first = Subscription(AsyncStream { $0.finish() })
        try await Self.eventually("the subscription to end") { subscribers.lastValue == 2 }
        #expect(targets.lastValue == 2)
        withExtendedLifetime((second, other)) {}
    }
}
