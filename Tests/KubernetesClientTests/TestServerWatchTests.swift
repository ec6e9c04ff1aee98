import ApusCore
import Foundation
import KubernetesTestServer
import Testing

@Suite("KubernetesTestServer: watch")
struct TestServerWatchTests {
    private static let configMaps = "/api/v1/namespaces/default/configmaps"

    private static func createConfigMap(_ api: TestServerAPI, _ name: String, labels: String = "{}") async throws
        -> JSONValue
    {
        let response = try await api.send(
            .POST, configMaps, body: try testServerJSON(#"{"metadata":{"name":"\#(name)","labels":\#(labels)}}"#))
        guard response.status == 201 else { throw TestServerFailure("create \(name): \(response.json)") }
        return response.json
    }

    @Test func watchFromResourceVersionReplaysLaterEventsThenStreamsLiveOnes() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            let first = try await Self.createConfigMap(api, "one")
            let checkpoint = try #require(first.testServerResourceVersion)
            _ = try await Self.createConfigMap(api, "two")
            var edited = first
            edited["data"] = .object(["k": .string("v")])
            _ = try await api.send(.PUT, "\(Self.configMaps)/one", body: edited)
            _ = try await api.send(.DELETE, "\(Self.configMaps)/two")

            let watch = try await api.watch("\(Self.configMaps)?watch=1&resourceVersion=\(checkpoint)")
            #expect(watch.status == 200)
            var seen: [String] = []
            for _ in 0..<3 {
                let event = try #require(try await watch.next())
                seen.append("\(event.testServerEventType ?? "?") \(event.testServerEventObject.testServerName ?? "?")")
            }
            #expect(seen == ["ADDED two", "MODIFIED one", "DELETED two"])

            _ = try await Self.createConfigMap(api, "three")
            let live = try #require(try await watch.next())
            #expect(live.testServerEventType == "ADDED")
            #expect(live.testServerEventObject.testServerName == "three")
            #expect(live.testServerEventObject["kind"] == .string("ConfigMap"))
            #expect(live.testServerEventObject.testServerResourceVersion == api.server.currentResourceVersion)
        }
    }

    @Test func watchWithoutResourceVersionStartsWithSyntheticAdds() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            _ = try await Self.createConfigMap(api, "a")
            _ = try await Self.createConfigMap(api, "b")
            for query in ["watch=true", "watch=1&resourceVersion=0"] {
                let watch = try await api.watch("\(Self.configMaps)?\(query)")
                let first = try #require(try await watch.next())
                let second = try #require(try await watch.next())
                #expect([first, second].map(\.testServerEventType) == ["ADDED", "ADDED"])
                #expect([first, second].map(\.testServerEventObject.testServerName) == ["a", "b"])
            }
        }
    }

    @Test func tooOldResourceVersionGetsExpiredErrorEventAfterCompaction() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            let old = try #require(try await Self.createConfigMap(api, "a").testServerResourceVersion)
            _ = try await Self.createConfigMap(api, "b")
            api.server.compact()
            let watch = try await api.watch("\(Self.configMaps)?watch=1&resourceVersion=\(old)")
            #expect(watch.status == 200)
            let error = try #require(try await watch.next())
            #expect(error.testServerEventType == "ERROR")
            #expect(error.testServerEventObject["kind"] == .string("Status"))
            #expect(error.testServerEventObject["code"] == .number(410))
            #expect(error.testServerEventObject["reason"] == .string("Expired"))
            #expect(try await watch.next() == nil)  // then the server ends the response cleanly

            // Watching from the compaction point itself still works.
            let current = api.server.currentResourceVersion
            let resumed = try await api.watch("\(Self.configMaps)?watch=1&resourceVersion=\(current)")
            _ = try await Self.createConfigMap(api, "c")
            #expect(try await resumed.next()?.testServerEventObject.testServerName == "c")
        }
    }

    @Test func bookmarksCarryTheCurrentResourceVersionOnly() async throws {
        var options = KubernetesTestServer.Options()
        options.bookmarkInterval = .milliseconds(100)
        try await TestServerAPI.withServer(options) { api in
            try await api.createNamespace("default")
            _ = try await Self.createConfigMap(api, "a")
            let now = api.server.currentResourceVersion
            let watch = try await api.watch(
                "\(Self.configMaps)?watch=1&allowWatchBookmarks=true&resourceVersion=\(now)")
            let bookmark = try #require(try await watch.next())
            #expect(bookmark.testServerEventType == "BOOKMARK")
            #expect(
                bookmark.testServerEventObject
                    == .object([
                        "kind": .string("ConfigMap"), "apiVersion": .string("v1"),
                        "metadata": .object(["resourceVersion": .string(now)]),
                    ]))
            let plain = try await api.watch("\(Self.configMaps)?watch=1&resourceVersion=\(now)&timeoutSeconds=1")
            // Without allowWatchBookmarks nothing arrives before the timeout ends the stream.
            #expect(try await plain.next() == nil)
        }
    }

    @Test func timeoutSecondsEndsTheStreamCleanly() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            let start = ContinuousClock.now
            let watch = try await api.watch(
                "\(Self.configMaps)?watch=1&timeoutSeconds=1&resourceVersion=\(api.server.currentResourceVersion)")
            #expect(try await watch.next() == nil)
            let elapsed = ContinuousClock.now - start
            #expect(elapsed >= .milliseconds(900) && elapsed < .seconds(5))
            #expect(api.server.activeWatchCount == 0)
        }
    }

    @Test func watchFromAFutureResourceVersionWaitsForIt() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            let future = (Int(api.server.currentResourceVersion) ?? 0) + 2
            let watch = try await api.watch("\(Self.configMaps)?watch=1&resourceVersion=\(future)&timeoutSeconds=2")
            for name in ["a", "b", "c"] { _ = try await Self.createConfigMap(api, name) }
            let event = try #require(try await watch.next())
            #expect(event.testServerEventObject.testServerName == "c")
            #expect(event.testServerEventObject.testServerResourceVersion == String(future + 1))
        }
    }

    @Test func selectorsApplyAndObjectsLeavingTheSelectorAreDeleted() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            let watch = try await api.watch(
                "\(Self.configMaps)?watch=1&labelSelector=app%3Dweb"
                    + "&resourceVersion=\(api.server.currentResourceVersion)"
            )
            let other = try await Self.createConfigMap(api, "other", labels: #"{"app":"db"}"#)
            _ = try await Self.createConfigMap(api, "web", labels: #"{"app":"web"}"#)
            let added = try #require(try await watch.next())
            #expect(added.testServerEventType == "ADDED")
            #expect(added.testServerEventObject.testServerName == "web")

            let relabel = try await api.send(
                .PATCH, "\(Self.configMaps)/web", body: try testServerJSON(#"{"metadata":{"labels":{"app":"api"}}}"#),
                contentType: "application/merge-patch+json")
            let left = try #require(try await watch.next())
            #expect(left.testServerEventType == "DELETED")
            #expect(left.testServerEventObject.testServerName == "web")
            #expect(left.testServerEventObject.testServerResourceVersion == relabel.json.testServerResourceVersion)

            var joined = other
            joined["metadata"]?["labels"] = .object(["app": .string("web")])
            _ = try await api.send(.PUT, "\(Self.configMaps)/other", body: joined)
            let entered = try #require(try await watch.next())
            #expect(entered.testServerEventType == "ADDED")
            #expect(entered.testServerEventObject.testServerName == "other")
        }
    }

    @Test func dropAllWatchesBreaksConnectionsAndCountsWatchRequests() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            let watch = try await api.watch(
                "\(Self.configMaps)?watch=1&resourceVersion=\(api.server.currentResourceVersion)")
            _ = try await Self.createConfigMap(api, "a")
            #expect(try await watch.next()?.testServerEventObject.testServerName == "a")
            #expect(api.server.activeWatchCount == 1)
            api.server.dropAllWatches()
            // An abrupt close is an error (the chunked body never ended), not a clean end of stream.
            await #expect(throws: (any Error).self) {
                while try await watch.next() != nil {}
            }
            #expect(api.server.activeWatchCount == 0)
            #expect(api.server.requestCount(verb: "watch", resource: "configmaps") == 1)
        }
    }

    @Test func watchAcrossNamespacesSeesEveryNamespace() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("a")
            try await api.createNamespace("b")
            let watch = try await api.watch("/api/v1/pods?watch=1&resourceVersion=\(api.server.currentResourceVersion)")
            for namespace in ["a", "b"] {
                _ = try await api.send(
                    .POST, "/api/v1/namespaces/\(namespace)/pods",
                    body: try testServerJSON(#"{"metadata":{"name":"p"},"spec":{}}"#))
            }
            let first = try #require(try await watch.next())
            let second = try #require(try await watch.next())
            #expect(first.testServerEventObject["metadata"]?["namespace"] == .string("a"))
            #expect(second.testServerEventObject["metadata"]?["namespace"] == .string("b"))
        }
    }

    @Test func seededObjectsReachWatchersAndTypedReads() async throws {
        try await TestServerAPI.withServer { api in
            let watch = try await api.watch("/api/v1/pods?watch=1&resourceVersion=\(api.server.currentResourceVersion)")
            var pod = Pod(metadata: ObjectMeta(name: "seeded", namespace: "prod"))
            pod.status = PodStatus(phase: "Running")
            let stored = try api.server.seed(pod)
            #expect(stored.metadata.uid != nil)
            #expect(stored.status?.phase == "Running")
            let event = try #require(try await watch.next())
            #expect(event.testServerEventType == "ADDED")
            #expect(event.testServerEventObject["status"]?["phase"] == .string("Running"))
            #expect(try api.server.objects(Pod.self, namespace: "prod").map(\.metadata.name) == ["seeded"])
            // Seeding created the namespace.
            #expect(api.server.object(Namespace.resourceType, name: "prod") != nil)
        }
    }
}
