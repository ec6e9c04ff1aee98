import ApusCore
import Foundation
import KubernetesClient
import KubernetesTestServer
import Testing

/// One event as a watcher or the server's event log shows it: enough to compare orders exactly.
struct SeenEvent: Hashable, Sendable, CustomStringConvertible {
    /// `apply`, `delete`, `initStart`, `initApply` or `initDone`.
    var type: String
    var name: String
    var resourceVersion: String

    init(type: String, name: String = "", resourceVersion: String = "") {
        self.type = type
        self.name = name
        self.resourceVersion = resourceVersion
    }

    init<R: KubernetesResource>(_ event: WatcherEvent<R>) {
        switch event {
        case .initStart: self.init(type: "initStart")
        case .initDone: self.init(type: "initDone")
        case .initApply(let object): self.init(type: "initApply", object)
        case .apply(let object): self.init(type: "apply", object)
        case .delete(let object): self.init(type: "delete", object)
        }
    }

    /// A raw watch event; ADDED and MODIFIED both become `apply`, as the Watcher reports them.
    init?<R: KubernetesResource>(_ event: WatchEvent<R>) {
        switch event {
        case .added(let object), .modified(let object): self.init(type: "apply", object)
        case .deleted(let object): self.init(type: "delete", object)
        case .bookmark, .error: return nil
        }
    }

    private init<R: KubernetesResource>(type: String, _ object: R) {
        self.init(
            type: type, name: object.metadata.name ?? "", resourceVersion: object.metadata.resourceVersion ?? "")
    }

    var isChange: Bool { type == "apply" || type == "delete" }
    var description: String { "\(type) \(name)@\(resourceVersion)" }
}

/// The fast backoff the integration tests use so reconnects take milliseconds.
let fastBackoff = ExponentialBackoff(initial: .milliseconds(5), maximum: .milliseconds(50))

/// Consumes a watcher on a task, recording every event; cancel with ``stop()``.
final class WatcherRecorder<R: KubernetesResource>: Sendable {
    let events = EventLog<SeenEvent>()
    let errors = EventLog<KubernetesError>()
    private let task: Shared<Task<Void, Never>?> = Shared(nil)

    func start(client: KubernetesClient, namespace: String?, configuration: WatcherConfiguration) {
        var configuration = configuration
        let errors = self.errors
        configuration.onError = { errors.append($0) }
        let watcher = Watcher(client: client, R.self, namespace: namespace, configuration: configuration)
        let events = self.events
        task.set(
            Task {
                do {
                    for try await event in watcher { events.append(SeenEvent(event)) }
                } catch {
                    // Ends only by cancellation.
                }
            })
    }

    func stop() async {
        guard let task = task.value else { return }
        task.cancel()
        await task.value
    }

    var initDoneCount: Int { events.all.count { $0.type == "initDone" } }
    var lastChange: SeenEvent? { events.all.last { $0.isChange } }
}

/// Runs `informer` on a task for the duration of `body`, then cancels it and waits for it to stop.
func withRunningInformer<R: KubernetesResource>(
    _ informer: Informer<R>, _ body: () async throws -> Void
) async throws {
    let task = Task { await informer.run() }
    do {
        try await body()
    } catch {
        task.cancel()
        await task.value
        throw error
    }
    task.cancel()
    await task.value
}

/// The store's contents reduced to what must match the server: key → (resourceVersion, labels, data, uid).
struct ConfigMapState: Hashable, Sendable, CustomStringConvertible {
    var resourceVersion: String?
    var uid: String?
    var labels: [String: String]?
    var data: [String: String]?

    init(_ object: ConfigMap) {
        resourceVersion = object.metadata.resourceVersion
        uid = object.metadata.uid
        labels = object.metadata.labels
        data = object.data
    }

    var description: String { "rv \(resourceVersion ?? "-") data \(data ?? [:])" }

    static func of(_ objects: [ConfigMap]) -> [ObjectKey: ConfigMapState] {
        Dictionary(objects.map { ($0.objectKey, ConfigMapState($0)) }, uniquingKeysWith: { first, _ in first })
    }
}

extension KubernetesTestServer {
    /// The server's ConfigMaps (optionally of one namespace) in the comparable form.
    func configMapStates(namespace: String? = nil) throws -> [ObjectKey: ConfigMapState] {
        ConfigMapState.of(try objects(ConfigMap.self, namespace: namespace))
    }
}

extension IntegrationTests {
    @Suite("Watch resume, relist and recovery")
    struct Watching {
        /// The server's own order of changes since `resourceVersion`: a fresh watch replays its event log.
        static func serverEventOrder(
            client: KubernetesClient, namespace: String, since resourceVersion: String, through last: String
        ) async throws -> [SeenEvent] {
            var events: [SeenEvent] = []
            guard resourceVersion != last else { return events }
            let stream = try await client.watch(
                ConfigMap.self, namespace: namespace, options: ListOptions(resourceVersion: resourceVersion))
            for try await event in stream {
                guard let seen = SeenEvent(event) else { continue }
                events.append(seen)
                if seen.resourceVersion == last { break }
            }
            return events
        }

        /// Two writers each create, patch, delete and re-create six ConfigMaps while another task cuts every
        /// watch connection at seeded random intervals.
        static func writeWhileDroppingWatches(server: KubernetesTestServer, client: KubernetesClient) async throws {
            let writing = Shared(true)
            let seed = UInt64.random(in: 1...UInt64.max)
            print("[watch-resume] seed \(seed)")
            let dropper = Task {
                var random = SeededGenerator(seed: seed)
                while writing.value {
                    try? await Task.sleep(for: .milliseconds(Int.random(in: 2...25, using: &random)))
                    server.dropAllWatches()
                }
            }
            defer { writing.set(false) }
            async let first: Void = writeRounds(client: client, writer: 0)
            async let second: Void = writeRounds(client: client, writer: 1)
            _ = try await (first, second)
            writing.set(false)
            await dropper.value
        }

        private static func writeRounds(client: KubernetesClient, writer: Int) async throws {
            for round in 0..<30 {
                let name = "w\(writer)-\(round % 6)"
                if round < 6 {
                    _ = try await client.create(
                        ConfigMap(metadata: ObjectMeta(name: name), data: ["round": "\(round)"]))
                } else if round % 5 == 4 {
                    try await client.delete(ConfigMap.self, name: name)
                    _ = try await client.create(
                        ConfigMap(metadata: ObjectMeta(name: name), data: ["round": "\(round)"]))
                } else {
                    _ = try await client.patch(
                        ConfigMap.self, name: name,
                        patch: .merge(.object(["data": .object(["round": .string("\(round)")])])))
                }
            }
        }

        @Test func droppedWatchesResumeFromTheLastSeenVersionWithoutLossOrDuplicates() async throws {
            var options = KubernetesTestServer.Options()
            // No bookmarks: the last version the watcher saw is then always the last event it delivered.
            options.bookmarkInterval = .seconds(3600)
            try await IntegrationHarness.run(options: options, namespace: "resume") { harness in
                let server = harness.server
                let client = harness.client
                for index in 0..<3 {
                    _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "pre-\(index)")))
                }
                let recorder = WatcherRecorder<ConfigMap>()
                recorder.start(
                    client: client, namespace: "resume", configuration: WatcherConfiguration(backoff: fastBackoff))
                try await eventually("the initial list is delivered") { recorder.initDoneCount == 1 }
                let firstWatch = try #require(server.requestLog.first { $0.verb == "watch" })
                let listVersion = try #require(firstWatch.query["resourceVersion"])

                // Deterministic part: drop with a known last-seen version; the next watch must resume from it.
                for index in 0..<5 {
                    _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "a-\(index)")))
                }
                try await eventually("the watcher caught up") {
                    recorder.lastChange?.resourceVersion == server.currentResourceVersion
                }
                let lastSeen = try #require(recorder.lastChange?.resourceVersion)
                let watchesBefore = server.requestLog.count { $0.verb == "watch" }
                server.dropAllWatches()
                _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "after-drop")))
                try await eventually("the change after the drop arrives") {
                    recorder.lastChange?.name == "after-drop"
                }
                let rewatch = server.requestLog.filter { $0.verb == "watch" }.dropFirst(watchesBefore).first
                #expect(rewatch?.query["resourceVersion"] == lastSeen, "re-watch from the last seen version")

                // Concurrent part: two writers create, update and delete while a third task cuts every watch.
                try await Self.writeWhileDroppingWatches(server: server, client: client)
                let finalVersion = server.currentResourceVersion
                try await eventually("the watcher delivers the last write") {
                    recorder.lastChange?.resourceVersion == finalVersion
                }
                await recorder.stop()

                let delivered = recorder.events.all
                #expect(delivered.count { $0.type == "initStart" } == 1, "resuming never relists")
                #expect(server.requestCount(verb: "list", resource: "configmaps") == 1)
                let relisted = recorder.errors.all.contains { $0 == .gone }
                #expect(!relisted, "no 410: every resume version was still in the server's history")
                let changes = Array(delivered.drop { $0.type != "initDone" }.dropFirst())
                let watches = server.requestLog.filter { $0.verb == "watch" }
                let expected = try await Self.serverEventOrder(
                    client: client, namespace: "resume", since: listVersion, through: finalVersion)
                #expect(changes.count == expected.count)
                #expect(changes == expected, "the watcher delivers exactly the server's events, in order")
                #expect(Set(changes.map(\.resourceVersion)).count == changes.count, "no event twice")

                #expect(watches.count > 2, "the watch was cut and resumed")
                let deliveredVersions = Set(changes.map(\.resourceVersion)).union([listVersion])
                var previous: Int64 = 0
                for watch in watches {
                    let version = watch.query["resourceVersion"] ?? ""
                    #expect(deliveredVersions.contains(version), "watch from \(version) resumes at a delivered event")
                    let numeric = Int64(version) ?? -1
                    #expect(numeric >= previous, "resume versions never go backwards")
                    previous = numeric
                }
            }
        }

        @Test func compactionWhileDisconnectedRelistsAndTheInformerConverges() async throws {
            try await IntegrationHarness.run(namespace: "relist") { harness in
                let server = harness.server
                let client = harness.client
                let proxy = try await TCPProxy.start(forwardingTo: server.port)
                do {
                    try await Self.relistScenario(server: server, client: client, proxy: proxy, harness: harness)
                } catch {
                    await proxy.shutdown()
                    throw error
                }
                await proxy.shutdown()
            }
        }

        private static func relistScenario(
            server: KubernetesTestServer, client: KubernetesClient, proxy: TCPProxy, harness: IntegrationHarness
        ) async throws {
            for name in ["a", "b", "c", "d"] {
                _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: name), data: ["v": "1"]))
            }
            let proxied = try harness.makeClient(through: proxy)
            let informerErrors = EventLog<KubernetesError>()
            let informer = Informer(
                client: proxied, ConfigMap.self, namespace: "relist",
                configuration: WatcherConfiguration(
                    pageSize: 2, backoff: fastBackoff, onError: { informerErrors.append($0) }))
            let handled = EventLog<InformerEvent<ConfigMap>>()
            try informer.addHandler { handled.append($0) }
            let recorder = WatcherRecorder<ConfigMap>()
            recorder.start(
                client: proxied, namespace: "relist",
                configuration: WatcherConfiguration(pageSize: 2, backoff: fastBackoff))

            try await withRunningInformer(informer) {
                await informer.waitUntilSynced()
                try await eventually("both watchers listed and watch") {
                    handled.count == 4 && recorder.initDoneCount == 1 && server.activeWatchCount == 2
                }
                let deletedA = try #require(informer.store.get(ObjectKey(namespace: "relist", name: "a")))
                let listsBefore = server.requestCount(verb: "list", resource: "configmaps")

                proxy.cut()
                try await eventually("both watchers noticed the partition") {
                    informerErrors.all.contains { $0 == .transport }
                        && recorder.errors.all.contains { $0 == .transport } && server.activeWatchCount == 0
                }
                try await client.delete(ConfigMap.self, name: "a")
                _ = try await client.patch(
                    ConfigMap.self, name: "b", patch: .merge(.object(["data": .object(["v": .string("2")])])))
                _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "e"), data: ["v": "1"]))
                try await client.delete(ConfigMap.self, name: "d")
                let recreatedD = try await client.create(
                    ConfigMap(metadata: ObjectMeta(name: "d"), data: ["v": "reborn"]))
                server.compact()
                #expect(handled.count == 4, "nothing reaches the informer while partitioned")
                proxy.restore()

                let expected = try server.configMapStates(namespace: "relist")
                try await eventually("the informer's store converges to the server's state") {
                    ConfigMapState.of(informer.store.list()) == expected
                }
                try await eventually("the plain watcher relisted") { recorder.initDoneCount == 2 }
                try await eventually("handlers saw the relist's changes") { handled.count == 8 }

                #expect(informerErrors.all.contains { $0 == .gone }, "the stale watch got 410 Expired")
                #expect(recorder.errors.all.contains { $0 == .gone })
                #expect(server.requestCount(verb: "list", resource: "configmaps") > listsBefore, "a new list")

                // The plain watcher: initStart, every current object, initDone, after the first list.
                let events = recorder.events.all
                let relist = Array(events.drop { $0.type != "initDone" }.dropFirst())
                #expect(relist.first?.type == "initStart")
                #expect(relist.last?.type == "initDone")
                #expect(
                    relist.filter { $0.type == "initApply" }.map(\.name).sorted() == ["b", "c", "d", "e"],
                    "the relist names exactly the objects that exist")

                // The informer: the relist's difference, deletes included, with the deleted object's last state.
                let changes = handled.all.dropFirst(4).map { event -> String in
                    switch event {
                    case .added(let object): return "added \(object.metadata.name ?? "")"
                    case .updated(let old, let new):
                        return "updated \(new.metadata.name ?? "") \(old.data?["v"] ?? "")→\(new.data?["v"] ?? "")"
                    case .deleted(let object): return "deleted \(object.metadata.name ?? "")"
                    }
                }
                #expect(changes.sorted() == ["added e", "deleted a", "updated b 1→2", "updated d 1→reborn"])
                if case .deleted(let object)? = handled.all.dropFirst(4).first(where: {
                    if case .deleted = $0 { return true } else { return false }
                }) {
                    #expect(object == deletedA, "a delete found by relisting carries the last known state")
                }
                let storedD = informer.store.get(ObjectKey(namespace: "relist", name: "d"))
                #expect(storedD?.metadata.uid == recreatedD.metadata.uid)
            }
            await recorder.stop()
        }

        @Test func watcherRecoversFromServerErrorsAndHonoursRetryAfter() async throws {
            try await IntegrationHarness.run(namespace: "flaky") { harness in
                let server = harness.server
                let client = harness.client
                _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "first")))
                let errors = EventLog<KubernetesError>()
                let informer = Informer(
                    client: client, ConfigMap.self, namespace: "flaky",
                    configuration: WatcherConfiguration(backoff: fastBackoff, onError: { errors.append($0) }))
                server.failNextRequests(count: 3, status: 500)
                try await withRunningInformer(informer) {
                    await informer.waitUntilSynced()
                    #expect(informer.store.get(ObjectKey(namespace: "flaky", name: "first")) != nil)
                    #expect(errors.all.map(\.code) == [.serverError, .serverError, .serverError])
                    #expect(server.requestCount(verb: "list", resource: "configmaps") == 4, "3 failures, then a list")

                    try await eventually("the informer watches") { server.activeWatchCount == 1 }
                    let watchesBefore = server.requestCount(verb: "watch", resource: "configmaps")
                    server.failNextRequests(count: 2, status: 429, retryAfter: 1)
                    let clock = ContinuousClock()
                    let dropped = clock.now
                    server.dropAllWatches()
                    try await eventually("two refused re-watches, then one accepted") {
                        server.requestCount(verb: "watch", resource: "configmaps") >= watchesBefore + 3
                            && server.activeWatchCount == 1
                    }
                    _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "second")))
                    try await eventually("changes flow again") {
                        informer.store.get(ObjectKey(namespace: "flaky", name: "second")) != nil
                    }
                    let throttled = errors.all.filter { $0 == .tooManyRequests }
                    #expect(throttled.count == 2)
                    #expect(throttled.allSatisfy { $0.retryAfter == .seconds(1) })
                    #expect(clock.now - dropped >= .seconds(2), "each Retry-After of 1 s was waited out")
                }
            }
        }
    }
}
