import ApusController
import ApusCore
import BenchmarkSupport
import Foundation
import KubernetesClient
import Metrics
import NIOConcurrencyHelpers
import Prometheus

/// Runs the measurements against a server child and returns the figures.
struct BenchmarkRunner {
    let options: BenchmarkOptions

    static func main(options: BenchmarkOptions) async -> Int32 {
        // As apus-controller does: every metric the controller records lands in a Prometheus registry, so its
        // cost is part of the figures.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return await runAndPrint("DestinationBenchmark") {
            let report = try await BenchmarkRunner(options: options).run(registry: registry)
            return options.json ? try report.json() : report.table()
        }
    }

    func run(registry: PrometheusCollectorRegistry) async throws -> Report {
        var report = Report(options: options)
        report.memory.start = try Memory.residentBytes()
        progress("starting the API test server child: \(options.pods) Pods, \(options.services) Services + slices")
        let server = try ServerProcess(serving: options.arguments, outputLabel: "apus.bench.destination.child-stdout")
        try await server.stopping { try await measure(server: $0, registry: registry, into: &report) }
        return report
    }

    private func measure(
        server: ServerProcess, registry: PrometheusCollectorRegistry, into report: inout Report
    ) async throws {
        let ready = try await server.ready()
        report.workload.serverPid = Int(server.pid)
        report.workload.averagePodJSONBytes = ready.averagePodJSONBytes
        report.workload.sliceJSONBytes = ready.averageSliceJSONBytes
        report.workload.seedSeconds = ready.seedSeconds
        let client = try KubernetesClient(configuration: try ready.endpoint.clientConfiguration())
        do {
            try await measureController(client: client, server: server, into: &report)
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()
        report.metricsExpositionBytes = registry.emitToBuffer().count
    }

    private func measureController(
        client: KubernetesClient, server: ServerProcess, into report: inout Report
    ) async throws {
        let target = 0
        let probe = PropagationProbe(sliceKey: Topology.serviceKey(target).with(name: Topology.sliceName(target)))
        let manager = ControllerManager(
            client: client, options: ControllerOptions(leaderElection: false, resyncPeriod: nil))
        let indexes = try DestinationIndexes(manager: manager, configuration: DestinationConfiguration())
        try manager.endpointSlices.addHandler { event in probe.sliceEvent(event) }

        progress("running the controller-manager's informers and the destination indexes")
        let started = ContinuousClock.now
        let running = Task {
            await withDiscardingTaskGroup { group in
                group.addTask { await manager.run() }
                group.addTask { await indexes.run() }
            }
        }
        defer { running.cancel() }
        try await withTimeout("the caches and indexes to load", .seconds(600)) { await indexes.waitUntilReady() }
        report.load.seconds = started.duration(to: .now).seconds
        guard manager.pods.store.count == options.pods, manager.services.store.count == options.services,
            manager.endpointSlices.store.count == options.services
        else {
            throw BenchmarkError(
                "loaded \(manager.pods.store.count) Pods, \(manager.services.store.count) Services and "
                    + "\(manager.endpointSlices.store.count) EndpointSlices; expected \(options.pods), "
                    + "\(options.services), \(options.services)")
        }
        report.memory.loaded = try Memory.residentBytes()
        Memory.trimHeap()
        report.memory.loadedTrimmed = try Memory.residentBytes()

        // Every Service gets one subscriber (as when every service has a meshed client), so the index holds the
        // endpoint set of all of them; these stay subscribed for the rest of the run.
        progress("subscribing once to each of the \(options.services) Services")
        let background = Task {
            await withDiscardingTaskGroup { group in
                for service in 0..<options.services {
                    let stream = indexes.endpoints.subscribe(
                        .service(Topology.serviceKey(service), port: Topology.servicePort))
                    group.addTask { for await _ in stream {} }
                }
            }
        }
        defer { background.cancel() }
        try await waitUntil("\(options.services) background subscriptions", timeout: .seconds(60)) {
            indexes.endpoints.subscriberCount == options.services
        }
        report.memory.subscribed = try Memory.residentBytes()
        Memory.trimHeap()
        report.memory.subscribedTrimmed = try Memory.residentBytes()

        let endpointsPerService = Topology.podIndexes(
            service: target, services: options.services, pods: options.pods
        ).count
        var sequence = 0
        for subscribers in options.subscriberCounts {
            progress("propagation: \(options.changes) EndpointSlice changes to \(subscribers) subscriber(s)")
            report.propagation.append(
                try await measurePropagation(
                    subscribers: subscribers, indexes: indexes, probe: probe, server: server,
                    endpointsPerService: endpointsPerService, sequence: &sequence))
        }

        report.memory.end = try Memory.residentBytes()
        Memory.trimHeap()
        report.memory.endTrimmed = try Memory.residentBytes()
        report.memory.serverChild = try await server.send(ChildCommand(operation: .memory)).residentBytes ?? 0
        background.cancel()
        running.cancel()
        await background.value
        await running.value
    }

    private func measurePropagation(
        subscribers: Int, indexes: DestinationIndexes, probe: PropagationProbe, server: ServerProcess,
        endpointsPerService: Int, sequence: inout Int
    ) async throws -> Report.Propagation {
        let target = EndpointTarget.service(Topology.serviceKey(0), port: Topology.servicePort)
        probe.disarm()
        let initialBefore = probe.initialValues
        let readers = Task {
            await withDiscardingTaskGroup { group in
                for _ in 0..<subscribers {
                    let stream = indexes.endpoints.subscribe(target)
                    group.addTask {
                        for await value in stream { probe.received(value.value) }
                    }
                }
            }
        }
        defer { readers.cancel() }
        try await waitUntil("\(subscribers) subscribers to get their first value", timeout: .seconds(60)) {
            probe.initialValues - initialBefore == subscribers
        }
        var subscriberLatencies: [Int64] = []
        subscriberLatencies.reserveCapacity(subscribers * options.changes)
        var informerLatencies: [Int64] = []
        for _ in 0..<options.changes {
            // Even changes make the first endpoint not ready, odd ones ready again.
            let expected = sequence % 2 == 0 ? endpointsPerService - 1 : endpointsPerService
            probe.arm(expecting: expected, subscribers: subscribers)
            let reply = try await server.send(ChildCommand(operation: .flip, service: 0, sequence: sequence))
            sequence += 1
            guard let writtenAt = reply.writtenAt else { throw BenchmarkError("the child sent no write time") }
            try await waitUntil("change \(sequence) at \(subscribers) subscribers", timeout: .seconds(30)) {
                probe.receivedCount >= subscribers && probe.sliceSeen
            }
            let (latencies, informer) = try probe.latencies(since: writtenAt)
            subscriberLatencies += latencies
            informerLatencies.append(informer)
            // Let the readers park again, so each change starts from the idle state a real one meets.
            try await Task.sleep(for: .milliseconds(5))
        }
        probe.disarm()
        readers.cancel()
        await readers.value
        try await waitUntil("\(subscribers) subscriptions to end", timeout: .seconds(30)) {
            indexes.endpoints.subscriberCount == options.services
        }
        return Report.Propagation(
            subscribers: subscribers, changes: options.changes,
            subscriber: Percentiles(nanoseconds: subscriberLatencies),
            informer: Percentiles(nanoseconds: informerLatencies))
    }

    private func progress(_ message: String) {
        if !options.json { printProgress(message) }
    }
}

extension ObjectKey {
    func with(name: String) -> ObjectKey { ObjectKey(namespace: namespace, name: name) }
}

/// Runs `operation`, failing with a message naming `what` if it takes longer than `timeout`.
func withTimeout(_ what: String, _ timeout: Duration, _ operation: @escaping @Sendable () async -> Void) async throws {
    try await withThrowingTaskGroup(of: Bool.self) { group in
        group.addTask {
            await operation()
            return true
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return false
        }
        let finished = try await group.next() ?? false
        group.cancelAll()
        guard finished else { throw BenchmarkError("timed out after \(timeout) waiting for \(what)") }
    }
}
