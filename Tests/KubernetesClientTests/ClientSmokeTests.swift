import ApusCore
import Foundation
import KubernetesClient
import KubernetesTestServer
import Testing

/// End-to-end checks of the client against the in-process API server over HTTPS with a bearer token.
@Suite("Client smoke tests")
struct ClientSmokeTests {
    static func withClient(_ body: (KubernetesTestServer, KubernetesClient) async throws -> Void) async throws {
        let server = try await KubernetesTestServer.start()
        let configuration = try KubeConfig(yaml: server.kubeconfig(namespace: "smoke")).configuration()
        let client = try KubernetesClient(configuration: configuration)
        do {
            _ = try await client.create(Namespace(metadata: ObjectMeta(name: "smoke")))
            try await body(server, client)
        } catch {
            try await client.shutdown()
            try await server.shutdown()
            throw error
        }
        try await client.shutdown()
        try await server.shutdown()
    }

    @Test func createGetListAndWatchAConfigMap() async throws {
        try await Self.withClient { _, client in
            let created = try await client.create(
                ConfigMap(metadata: ObjectMeta(name: "settings", labels: ["app": "web"]), data: ["a": "1"]))
            #expect(created.metadata.namespace == "smoke", "the kubeconfig context's namespace is the default")
            #expect(created.metadata.resourceVersion != nil)

            let fetched = try await client.get(ConfigMap.self, name: "settings")
            #expect(fetched.data == ["a": "1"])
            await #expect(throws: KubernetesError.notFound) {
                try await client.get(ConfigMap.self, name: "missing")
            }
            await #expect(throws: KubernetesError.alreadyExists) {
                try await client.create(ConfigMap(metadata: ObjectMeta(name: "settings")))
            }

            let list = try await client.list(
                ConfigMap.self, namespace: "smoke",
                options: ListOptions(labelSelector: LabelSelector().equals("app", "web").string))
            #expect(list.items.map(\.metadata.name) == ["settings"])
            let resourceVersion = try #require(list.metadata.resourceVersion)

            let stream = try await client.watch(
                ConfigMap.self, namespace: "smoke", options: ListOptions(resourceVersion: resourceVersion))
            var updated = fetched
            updated.data = ["a": "2"]
            _ = try await client.update(updated)
            _ = try await client.patch(
                ConfigMap.self, name: "settings", patch: .merge(.object(["data": .object(["b": .string("3")])])))
            try await client.delete(ConfigMap.self, name: "settings")

            var seen: [String] = []
            for try await event in stream {
                switch event {
                case .added(let cm): seen.append("ADDED \(cm.data ?? [:])")
                case .modified(let cm): seen.append("MODIFIED \(cm.data?.sorted { $0.key < $1.key } ?? [])")
                case .deleted(let cm): seen.append("DELETED \(cm.metadata.name ?? "")")
                case .bookmark: continue
                case .error(let error): Issue.record("watch error \(error)")
                }
                if seen.count == 3 { break }
            }
            #expect(seen.count == 3)
            #expect(seen.first?.hasPrefix("MODIFIED") == true)
            #expect(seen.last == "DELETED settings")
        }
    }

    @Test func informerSyncsFollowsChangesAndRecoversFromDroppedWatches() async throws {
        try await Self.withClient { server, client in
            _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "before")))
            let informer = Informer(
                client: client, ConfigMap.self, namespace: "smoke",
                configuration: WatcherConfiguration(
                    pageSize: 1, backoff: ExponentialBackoff(initial: .milliseconds(10))))
            let events = try informer.events()
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await informer.run() }
                await informer.waitUntilSynced()
                #expect(informer.store.get(ObjectKey(namespace: "smoke", name: "before")) != nil)

                server.dropAllWatches()
                _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "after")))
                try await client.delete(ConfigMap.self, name: "before")

                var log: [String] = []
                for await event in events {
                    switch event {
                    case .added(let cm): log.append("add \(cm.metadata.name ?? "")")
                    case .updated: continue
                    case .deleted(let cm): log.append("delete \(cm.metadata.name ?? "")")
                    }
                    if log.contains("delete before") { break }
                }
                #expect(log == ["add before", "add after", "delete before"])
                #expect(informer.store.list().map(\.metadata.name) == ["after"])
                group.cancelAll()
            }
        }
    }
}
