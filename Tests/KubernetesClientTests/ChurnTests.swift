import ApusCore
import Foundation
import KubernetesClient
import KubernetesTestServer
import Testing

extension IntegrationTests {
    /// Thousands of writes from concurrent writers while watches are cut, the history is compacted and the
    /// informer is partitioned from the server: afterwards its store must equal the server's state and every
    /// handler must have seen a sequence of events that makes sense key by key.
    @Suite("Churn")
    struct Churn {
        static let objectCount = 2_000
        static let namespaces = ["churn-0", "churn-1", "churn-2", "churn-3"]
        static let writerCount = 4

        enum Operation: Sendable {
            case create, put, patch, delete, deleteWithPrecondition
        }

        /// One object's planned life: its operations run in order, interleaved at random with other objects'.
        struct Plan: Sendable {
            var namespace: String
            var name: String
            var operations: [Operation]
        }

        /// Every object is created, updated 0–3 times, deleted with probability 0.35 and, once deleted,
        /// re-created (and maybe updated) with probability 0.3.
        static func plans(seed: UInt64) -> [Plan] {
            var random = SeededGenerator(seed: seed)
            return (0..<objectCount).map { index in
                var operations: [Operation] = [.create]
                for _ in 0..<Int.random(in: 0...3, using: &random) {
                    operations.append(Bool.random(using: &random) ? .put : .patch)
                }
                if Double.random(in: 0..<1, using: &random) < 0.35 {
                    operations.append(Bool.random(using: &random) ? .delete : .deleteWithPrecondition)
                    if Double.random(in: 0..<1, using: &random) < 0.3 {
                        operations.append(.create)
                        if Bool.random(using: &random) { operations.append(.patch) }
                    }
                }
                return Plan(
                    namespace: namespaces[index % namespaces.count], name: String(format: "cm-%04d", index),
                    operations: operations)
            }
        }

        @Test func informerStaysConsistentThroughChurnDropsCompactionsAndPartitions() async throws {
            let seed =
                ProcessInfo.processInfo.environment["APUS_CHURN_SEED"].flatMap { UInt64($0) }
                ?? UInt64.random(in: 1...UInt64.max)
            print("[churn] seed \(seed) (rerun with APUS_CHURN_SEED=\(seed))")
            var options = KubernetesTestServer.Options()
            options.bookmarkInterval = .milliseconds(250)
            options.threads = 2
            try await IntegrationHarness.run(options: options, namespace: Self.namespaces[0]) { harness in
                for namespace in Self.namespaces.dropFirst() {
                    _ = try await harness.client.create(Namespace(metadata: ObjectMeta(name: namespace)))
                }
                let proxy = try await TCPProxy.start(forwardingTo: harness.server.port)
                do {
                    try await ChurnRun(harness: harness, proxy: proxy, seed: seed).run()
                } catch {
                    await proxy.shutdown()
                    throw error
                }
                await proxy.shutdown()
            }
        }
    }
}

/// The moving parts of one churn run.
private struct ChurnRun {
    typealias Churn = IntegrationTests.Churn

    let harness: IntegrationHarness
    let proxy: TCPProxy
    let seed: UInt64

    func run() async throws {
        let server = harness.server
        let proxied = try harness.makeClient(through: proxy)
        let errors = EventLog<KubernetesError>()
        let informer = Informer(
            client: proxied, ConfigMap.self,
            configuration: WatcherConfiguration(
                pageSize: 250, backoff: fastBackoff, onError: { errors.append($0) }))
        let handled = EventLog<InformerEvent<ConfigMap>>()
        try informer.addHandler { handled.append($0) }

        let plans = Churn.plans(seed: seed)
        let totalOperations = plans.reduce(0) { $0 + $1.operations.count }
        let started = ContinuousClock.now
        try await withRunningInformer(informer) {
            await informer.waitUntilSynced()
            let progress = Shared(0)
            let writing = Shared(true)
            let disruptor = Task {
                await disrupt(progress: progress, total: totalOperations, writing: writing)
            }
            do {
                try await write(plans, progress: progress)
            } catch {
                writing.set(false)
                _ = await disruptor.value
                throw error
            }
            writing.set(false)
            let partitions = await disruptor.value

            let expected = try server.configMapStates()
            try await eventually("the informer's store converges to the server's state", timeout: .seconds(60)) {
                ConfigMapState.of(informer.store.list()) == expected
            }
            let storeObjects = Dictionary(
                informer.store.list().map { ($0.objectKey, $0) }, uniquingKeysWith: { first, _ in first })
            try await eventually("handlers have seen every change") {
                ConfigMapState.of(Array(replay(handled.all).objects.values)) == expected
            }
            let outcome = replay(handled.all)
            print(
                "[churn] \(totalOperations) writes, \(expected.count) objects left, \(handled.count) handler events, "
                    + "\(partitions) partitions, \(server.requestCount(verb: "list", resource: "configmaps")) lists, "
                    + "\(server.requestCount(verb: "watch", resource: "configmaps")) watches, "
                    + "\(errors.all.count { $0 == .gone }) expired, in \(ContinuousClock.now - started)")

            #expect(expected.count > Churn.objectCount / 2, "most objects survive the plan")
            #expect(
                outcome.violations.isEmpty,
                "inconsistent handler sequences:\n\(outcome.violations.joined(separator: "\n"))")
            let differing = storeObjects.filter { outcome.objects[$0.key] != $0.value }.prefix(3)
                .map { "store \($0.value) ≠ replayed \(outcome.objects[$0.key].map { "\($0)" } ?? "nothing")" }
            #expect(
                differing.isEmpty, "replaying the handler events gives the store:\n\(differing.joined(separator: "\n"))"
            )
            #expect(partitions == 2)
            #expect(errors.all.contains { $0 == .gone }, "a compaction while partitioned forced a 410 relist")
            #expect(server.requestCount(verb: "list", resource: "configmaps") >= 3, "initial list plus relists")
            let unexpected = errors.all.filter { ![.gone, .transport, .timeout].contains($0) }
            #expect(unexpected.isEmpty, "only disconnects and expiries: \(unexpected)")
        }
    }

    /// Runs the plans on ``Churn/writerCount`` concurrent writers; each interleaves its objects at random.
    private func write(_ plans: [Churn.Plan], progress: Shared<Int>) async throws {
        let client = harness.client
        let seed = self.seed
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<Churn.writerCount {
                let mine = plans.enumerated().filter { $0.offset % Churn.writerCount == writer }.map(\.element)
                group.addTask {
                    try await Self.runWriter(mine, client: client, seed: seed &+ UInt64(writer + 1), progress: progress)
                }
            }
            try await group.waitForAll()
        }
    }

    private static func runWriter(
        _ plans: [Churn.Plan], client: KubernetesClient, seed: UInt64, progress: Shared<Int>
    ) async throws {
        var random = SeededGenerator(seed: seed)
        var pending = plans
        var latest: [String: ConfigMap] = [:]
        var generation = 0
        while !pending.isEmpty {
            let pick = Int.random(in: 0..<pending.count, using: &random)
            let plan = pending[pick]
            let operation = plan.operations[0]
            generation += 1
            let labels = ["app": "a\(Int.random(in: 0..<7, using: &random))", "gen": "\(generation)"]
            let data = ["value": "\(UInt32.random(in: 0...UInt32.max, using: &random))"]
            switch operation {
            case .create:
                latest[plan.name] = try await client.create(
                    ConfigMap(metadata: ObjectMeta(name: plan.name, labels: labels), data: data),
                    namespace: plan.namespace)
            case .put:
                guard var object = latest[plan.name] else { throw IntegrationFailure("no object to update") }
                object.metadata.labels = labels
                object.data = data
                latest[plan.name] = try await client.update(object)
            case .patch:
                latest[plan.name] = try await client.patch(
                    ConfigMap.self, name: plan.name, namespace: plan.namespace,
                    patch: .merge(
                        .object([
                            "metadata": .object(["labels": .object(labels.mapValues(JSONValue.string))]),
                            "data": .object(data.mapValues(JSONValue.string)),
                        ])))
            case .delete:
                try await client.delete(ConfigMap.self, name: plan.name, namespace: plan.namespace)
                latest[plan.name] = nil
            case .deleteWithPrecondition:
                let object = latest[plan.name]
                try await client.delete(
                    ConfigMap.self, name: plan.name, namespace: plan.namespace,
                    options: DeleteOptions(
                        preconditions: .init(
                            uid: object?.metadata.uid, resourceVersion: object?.metadata.resourceVersion)))
                latest[plan.name] = nil
            }
            progress.update { $0 += 1 }
            if plan.operations.count == 1 {
                pending.remove(at: pick)
            } else {
                pending[pick].operations.removeFirst()
            }
        }
    }

    /// Cuts watches at random intervals and sometimes compacts the history; at about 25 % and 60 % of the writes
    /// it partitions the informer from the server, waits for writes to land, compacts and heals, which forces a
    /// 410 and a relist. Returns how many partitions it made.
    private func disrupt(progress: Shared<Int>, total: Int, writing: Shared<Bool>) async -> Int {
        let server = harness.server
        var random = SeededGenerator(seed: seed ^ 0xD15C_0DE5)
        var partitionsDue = [total / 4, total * 3 / 5]
        var partitions = 0
        while writing.value {
            try? await Task.sleep(for: .milliseconds(Int.random(in: 10...80, using: &random)))
            if let due = partitionsDue.first, progress.value >= due {
                partitionsDue.removeFirst()
                let before = Int64(server.currentResourceVersion) ?? 0
                proxy.cut()
                try? await eventually("writes land while partitioned") {
                    (Int64(server.currentResourceVersion) ?? 0) >= before + 50 || !writing.value
                }
                server.compact()
                proxy.restore()
                partitions += 1
                continue
            }
            switch Int.random(in: 0..<100, using: &random) {
            case 0..<70: server.dropAllWatches()
            case 70..<85: server.compact()
            default:
                server.compact()
                server.dropAllWatches()
            }
        }
        return partitions
    }

    /// Replays handler events key by key, checking that each sequence is one a cache could have produced.
    private func replay(_ events: [InformerEvent<ConfigMap>]) -> (objects: [ObjectKey: ConfigMap], violations: [String])
    {
        var objects: [ObjectKey: ConfigMap] = [:]
        var lastVersion: [ObjectKey: Int64] = [:]
        var violations: [String] = []
        func version(_ object: ConfigMap) -> Int64 { Int64(object.metadata.resourceVersion ?? "") ?? -1 }
        func violation(_ text: String) { if violations.count < 20 { violations.append(text) } }
        for (index, event) in events.enumerated() {
            switch event {
            case .added(let object):
                let key = object.objectKey
                if objects[key] != nil { violation("#\(index) added \(key), which is present") }
                if let last = lastVersion[key], version(object) <= last {
                    violation("#\(index) added \(key)@\(version(object)) after version \(last)")
                }
                objects[key] = object
                lastVersion[key] = version(object)
            case .updated(let old, let new):
                let key = new.objectKey
                guard let previous = objects[key] else {
                    violation("#\(index) updated \(key), which is absent")
                    continue
                }
                if previous != old { violation("#\(index) updated \(key): old is not the previously delivered object") }
                if let last = lastVersion[key], version(new) <= last {
                    violation("#\(index) updated \(key)@\(version(new)) after version \(last)")
                }
                objects[key] = new
                lastVersion[key] = version(new)
            case .deleted(let object):
                let key = object.objectKey
                guard objects[key] != nil else {
                    violation("#\(index) deleted \(key), which is absent")
                    continue
                }
                // A delete found by relisting carries the last delivered state, so its version may equal it.
                if let last = lastVersion[key], version(object) < last {
                    violation("#\(index) deleted \(key)@\(version(object)) after version \(last)")
                }
                objects[key] = nil
                lastVersion[key] = max(lastVersion[key] ?? 0, version(object))
            }
        }
        return (objects, violations)
    }
}
