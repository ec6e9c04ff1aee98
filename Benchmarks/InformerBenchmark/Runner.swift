import ApusCore
import BenchmarkSupport
import Foundation
import KubernetesClient
import NIOConcurrencyHelpers

/// Counts informer events at the handler and timestamps the first and the last of a phase.
final class EventCounter: Sendable {
    enum Kind: Sendable { case added, updated, deleted }

    struct Phase: Sendable {
        var kind: Kind
        var target: Int
        var seen = 0
        var first: ContinuousClock.Instant?
        var last: ContinuousClock.Instant?
        /// Process CPU time at the first and the last event.
        var firstCPU = 0.0
        var lastCPU = 0.0
        var done: Bool { seen >= target }
        /// Average number of cores this process kept busy between the first and the last event.
        var coresBusy: Double {
            guard let first, let last else { return 0 }
            let wall = first.duration(to: last).seconds
            return wall > 0 ? (lastCPU - firstCPU) / wall : 0
        }
        /// Rate over the span from the first to the last event of the phase.
        var eventsPerSecond: Double {
            guard let first, let last, seen > 1 else { return 0 }
            return Double(seen - 1) / first.duration(to: last).seconds
        }
    }

    private struct State {
        var totals: [Kind: Int] = [:]
        var phase: Phase?
    }

    private let state = NIOLockedValueBox(State())

    func record(_ event: InformerEvent<Pod>) {
        let now = ContinuousClock.now
        let kind: Kind
        switch event {
        case .added: kind = .added
        case .updated: kind = .updated
        case .deleted: kind = .deleted
        }
        state.withLockedValue { state in
            state.totals[kind, default: 0] += 1
            guard var phase = state.phase, phase.kind == kind, !phase.done else { return }
            phase.seen += 1
            if phase.first == nil {
                phase.first = now
                phase.firstCPU = ProcessCPU.seconds()
            }
            if phase.done {
                phase.last = now
                phase.lastCPU = ProcessCPU.seconds()
            }
            state.phase = phase
        }
    }

    /// Starts counting `count` events of `kind` (call before triggering them).
    func arm(_ kind: Kind, count: Int) {
        state.withLockedValue { $0.phase = Phase(kind: kind, target: count) }
    }

    var phase: Phase? { state.withLockedValue { $0.phase } }

    func total(_ kind: Kind) -> Int { state.withLockedValue { $0.totals[kind] ?? 0 } }
}

/// Errors the watcher reported while recovering; decoding errors mean skipped objects and fail the run.
final class WatcherErrors: Sendable {
    private let errors = NIOLockedValueBox<[KubernetesError]>([])

    func record(_ error: KubernetesError) { errors.withLockedValue { $0.append(error) } }

    var all: [KubernetesError] { errors.withLockedValue { $0 } }

    func throwIfDecodingFailed() throws {
        if let failure = all.first(where: { $0.code == .decoding }) {
            throw BenchmarkError("the informer could not decode an object: \(failure)")
        }
    }
}

/// Runs the measurements against a server child and returns the figures.
struct BenchmarkRunner {
    let options: BenchmarkOptions

    static func main(options: BenchmarkOptions) async -> Int32 {
        await runAndPrint("InformerBenchmark") {
            let report = try await BenchmarkRunner(options: options).run()
            return options.json ? try report.json() : report.table()
        }
    }

    /// Generous per-phase time limits: a stuck phase fails the run instead of hanging it.
    private func timeout(for count: Int) -> Duration { .seconds(60) + .milliseconds(10 * count) }

    func run() async throws -> Report {
        var report = Report(options: options)
        report.memory.start = try Memory.residentBytes()
        progress("starting the API test server child and seeding \(options.pods) Pods")
        let server = try ServerProcess(serving: options.arguments, outputLabel: "apus.bench.child-stdout")
        try await server.stopping { try await measure(server: $0, into: &report) }
        return report
    }

    private func measure(server: ServerProcess, into report: inout Report) async throws {
        let ready = try await server.ready()
        report.workload.serverPid = Int(server.pid)
        report.workload.averagePodJSONBytes = ready.averagePodJSONBytes
        report.workload.seedSeconds = ready.seedSeconds
        report.memory.serverChildAfterSeed = ready.residentBytes

        let client = try KubernetesClient(configuration: try ready.endpoint.clientConfiguration())
        do {
            try await measureInformer(client: client, server: server, ready: ready, into: &report)
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()
    }

    private func measureInformer(
        client: KubernetesClient, server: ServerProcess, ready: ChildReady, into report: inout Report
    ) async throws {
        let errors = WatcherErrors()
        let watcherConfiguration = WatcherConfiguration(onError: { errors.record($0) })

        // Baseline RSS: the same client with a synced informer over an empty namespace (connection pool, TLS
        // session, code paged in), so the difference to the full store is the objects and their indices.
        progress("syncing an informer over an empty namespace (memory baseline)")
        let empty = Informer(client: client, Pod.self, namespace: "bench-empty", configuration: watcherConfiguration)
        let emptyRun = Task { await empty.run() }
        try await waitUntil("the empty informer to sync", timeout: .seconds(60)) { empty.hasSynced }
        emptyRun.cancel()
        await emptyRun.value
        guard empty.store.count == 0 else {
            throw BenchmarkError("the empty-namespace store holds \(empty.store.count) objects, expected 0")
        }
        report.memory.emptyStore = try Memory.residentBytes()
        Memory.trimHeap()
        report.memory.emptyStoreTrimmed = try Memory.residentBytes()

        // 1. Initial list + sync.
        progress("listing and syncing \(options.pods) Pods")
        let counter = EventCounter()
        let informer = Informer(client: client, Pod.self, configuration: watcherConfiguration)
        try informer.addHandler { event in counter.record(event) }
        counter.arm(.added, count: options.pods)
        let started = ContinuousClock.now
        let startedCPU = ProcessCPU.seconds()
        let syncedAt = NIOLockedValueBox<ContinuousClock.Instant?>(nil)
        let informerRun = Task { await informer.run() }
        let syncWait = Task {
            await informer.waitUntilSynced()
            syncedAt.withLockedValue { $0 = .now }
        }
        defer {
            informerRun.cancel()
            syncWait.cancel()
        }
        try await waitUntil("the informer to deliver \(options.pods) adds", timeout: timeout(for: options.pods)) {
            try errors.throwIfDecodingFailed()
            return counter.phase?.done ?? false
        }
        await syncWait.value
        guard let addPhase = counter.phase, let added = addPhase.last, let synced = syncedAt.withLockedValue({ $0 })
        else {
            throw BenchmarkError("the informer delivered its adds but never reported synced")
        }
        guard informer.store.count == options.pods, counter.total(.added) == options.pods else {
            throw BenchmarkError(
                "after sync the store holds \(informer.store.count) Pods and the handler saw "
                    + "\(counter.total(.added)) adds; expected \(options.pods)")
        }
        report.sync = .init(
            pageSize: watcherConfiguration.pageSize, storeSyncedSeconds: started.duration(to: synced).seconds,
            allAddsHandledSeconds: started.duration(to: added).seconds,
            clientCores: (addPhase.lastCPU - startedCPU) / started.duration(to: added).seconds)
        report.memory.synced = try Memory.residentBytes()
        Memory.trimHeap()
        report.memory.syncedTrimmed = try Memory.residentBytes()

        // 2a. Replay: the child writes the batch while no watch is registered and holds back the informer's
        // resumed watch until it is written, so the server sends the whole batch back-to-back.
        progress("watch replay: \(options.events) updates")
        counter.arm(.updated, count: options.events)
        let replay = try await server.send(.replay, count: options.events)
        try await waitUntil("\(options.events) replayed updates at the handler", timeout: timeout(for: options.events))
        {
            try errors.throwIfDecodingFailed()
            return counter.phase?.done ?? false
        }
        guard let replayPhase = counter.phase else { throw BenchmarkError("replay phase lost") }
        try verifyStore(informer.store, updates: options.events)
        report.watch.replay = .init(
            events: options.events, eventsPerSecond: replayPhase.eventsPerSecond, clientCores: replayPhase.coresBusy,
            serverWriteSeconds: replay.writeSeconds ?? 0, overlappedWithWrites: replay.overlapped ?? false)

        // 2b. Live: the child writes as fast as it can while the informer watches.
        progress("live watch: \(options.events) updates written while watching")
        counter.arm(.updated, count: options.events)
        let liveStarted = ContinuousClock.now
        let live = try await server.send(.live, count: options.events)
        try await waitUntil("\(options.events) live updates at the handler", timeout: timeout(for: options.events)) {
            try errors.throwIfDecodingFailed()
            return counter.phase?.done ?? false
        }
        guard let livePhase = counter.phase, let liveLast = livePhase.last else {
            throw BenchmarkError("live phase lost")
        }
        try verifyStore(informer.store, updates: 2 * options.events)
        report.watch.live = .init(
            events: options.events, eventsPerSecond: livePhase.eventsPerSecond, clientCores: livePhase.coresBusy,
            endToEndSeconds: liveStarted.duration(to: liveLast).seconds, serverWriteSeconds: live.writeSeconds ?? 0)

        report.memory.afterEvents = try Memory.residentBytes()
        Memory.trimHeap()
        report.memory.afterEventsTrimmed = try Memory.residentBytes()
        report.memory.serverChildAfterEvents = try await server.send(.memory).residentBytes
        report.watch.recoveredWatcherErrors = errors.all.count

        informerRun.cancel()
        await informerRun.value

        // 3. Baselines over the very bytes of the replayed batch.
        guard let from = replay.fromRevision else { throw BenchmarkError("the child did not report a revision") }
        progress("baseline: raw transfer of the same \(options.events) events")
        let capture = try await Baselines.transfer(ready: ready, fromRevision: from, events: options.events)
        report.baselines.transfer = capture.result
        progress("baseline: JSONDecoder and WatchEventDecoder over the captured bytes")
        report.baselines.decode = try Baselines.foundationDecode(capture: capture)
        report.baselines.clientDecoder = try Baselines.clientDecoder(capture: capture)
        report.baselines.storeApply = try Baselines.storeApply(capture: capture)
        progress("baseline: raw transfer and JSONDecoder of the \(options.pods)-Pod list")
        let list = try await Baselines.listTransfer(
            ready: ready, pageSize: watcherConfiguration.pageSize, objects: options.pods)
        report.baselines.listTransfer = list.result
        report.baselines.listDecode = try Baselines.listDecode(capture: list)
    }

    /// Checks that every Pod in the store carries the annotation of the last update written to it.
    private func verifyStore(_ store: Store<Pod>, updates: Int) throws {
        guard store.count == options.pods else {
            throw BenchmarkError("the store holds \(store.count) Pods, expected \(options.pods)")
        }
        for index in 0..<options.pods {
            let expected = PodFactory.expectedUpdate(index: index, pods: options.pods, updates: updates)
            let key = PodFactory.key(index: index)
            guard let pod = store.get(key) else { throw BenchmarkError("the store lost \(key)") }
            let actual = pod.metadata.annotations?[PodFactory.updateAnnotation].flatMap { Int($0) }
            guard actual == expected else {
                throw BenchmarkError(
                    "\(key) in the store carries update \(actual.map(String.init) ?? "none"), expected "
                        + "\(expected.map(String.init) ?? "none")")
            }
        }
    }

    private func progress(_ message: String) {
        if !options.json { printProgress(message) }
    }
}
