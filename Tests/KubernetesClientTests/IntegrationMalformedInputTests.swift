import ApusCore
import Foundation
import KubernetesClient
import KubernetesTestServer
import Testing

extension IntegrationTests {
    /// Bad bytes and bad objects from the API server must cost one skipped object, never the informer.
    @Suite("Malformed input")
    struct MalformedInput {
        /// A Pod whose `spec.containers` is not a list: valid JSON, but not a `Pod`.
        static func mistypedPod(_ name: String, namespace: String, resourceVersion: String? = nil) -> String {
            let version = resourceVersion.map { #","resourceVersion":"\#($0)""# } ?? ""
            return #"{"metadata":{"name":"\#(name)","namespace":"\#(namespace)"\#(version)},"#
                + #""spec":{"containers":"nginx"}}"#
        }

        static func pod(_ name: String, resourceVersion: String, labels: String = "{}") -> String {
            #"{"metadata":{"name":"\#(name)","namespace":"default","resourceVersion":"\#(resourceVersion)","#
                + #""labels":\#(labels)},"spec":{"containers":[{"name":"app"}]}}"#
        }

        static func describe(_ event: InformerEvent<Pod>) -> String {
            switch event {
            case .added(let pod): return "added \(pod.metadata.name ?? "")@\(pod.metadata.resourceVersion ?? "")"
            case .updated(_, let pod):
                return "updated \(pod.metadata.name ?? "")@\(pod.metadata.resourceVersion ?? "")"
            case .deleted(let pod): return "deleted \(pod.metadata.name ?? "")"
            }
        }

        @Test func objectsThatDoNotDecodeAreReportedWithFieldPathsAndSkipped() async throws {
            try await IntegrationHarness.run(namespace: "bad") { harness in
                let server = harness.server
                let client = harness.client
                _ = try await client.create(
                    Pod(metadata: ObjectMeta(name: "good-1"), spec: PodSpec(containers: [Container(name: "app")])))
                try server.seed(
                    Pod.resourceType, try JSONValue(json: Data(Self.mistypedPod("bad-list", namespace: "bad").utf8)))

                let errors = EventLog<KubernetesError>()
                let informer = Informer(
                    client: client, Pod.self, namespace: "bad",
                    configuration: WatcherConfiguration(backoff: fastBackoff, onError: { errors.append($0) }))
                let handled = EventLog<String>()
                try informer.addHandler { handled.append(Self.describe($0)) }

                try await withRunningInformer(informer) {
                    await informer.waitUntilSynced()
                    #expect(informer.store.list().compactMap(\.metadata.name) == ["good-1"])
                    let listError = try #require(errors.all.first)
                    #expect(listError == .decoding)
                    #expect(listError.fieldPath == "items[0].spec.containers", "\(listError)")
                    #expect(listError.message.contains("bad/bad-list"), "the skipped object is named")

                    try await eventually("the informer watches") { server.activeWatchCount == 1 }
                    try server.seed(
                        Pod.resourceType,
                        try JSONValue(json: Data(Self.mistypedPod("bad-watch", namespace: "bad").utf8)))
                    _ = try await client.create(
                        Pod(metadata: ObjectMeta(name: "good-2"), spec: PodSpec(containers: [Container(name: "app")])))
                    try await eventually("the good pod after the bad one arrives") {
                        informer.store.get(ObjectKey(namespace: "bad", name: "good-2")) != nil
                    }
                    #expect(errors.count == 2)
                    let watchError = try #require(errors.all.last)
                    #expect(watchError == .decoding)
                    #expect(watchError.fieldPath == "object.spec.containers", "\(watchError)")
                    #expect(watchError.message.contains("bad/bad-watch"))

                    // Once fixed, the object arrives like any other.
                    try server.seed(
                        Pod(
                            metadata: ObjectMeta(name: "bad-watch", namespace: "bad"),
                            spec: PodSpec(containers: [Container(name: "app")])))
                    try await eventually("the repaired pod arrives") {
                        informer.store.get(ObjectKey(namespace: "bad", name: "bad-watch")) != nil
                    }
                    let stored = Set(informer.store.list().compactMap(\.metadata.name))
                    #expect(stored == ["good-1", "good-2", "bad-watch"])
                    let served = Set(
                        server.objects(Pod.resourceType, namespace: "bad").compactMap {
                            $0["metadata"]?["name"]?.stringValue
                        })
                    #expect(served == stored.union(["bad-list"]), "only the undecodable object is missing")
                    #expect(
                        handled.all.map { $0.split(separator: "@")[0] } == [
                            "added good-1", "added good-2", "added bad-watch",
                        ])
                    #expect(server.requestCount(verb: "list", resource: "pods") == 1, "no relist was needed")
                }
            }
        }

        @Test func garbageTruncatedAndUnknownWatchLinesAreSkipped() async throws {
            let listBody =
                #"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"10"},"items":["#
                + Self.pod("a", resourceVersion: "10") + ","
                + Self.mistypedPod("broken", namespace: "default", resourceVersion: "9") + "]}"
            let firstStream = [
                "this is not json\n",
                #"{"type":"ADDED","object":{"metadata":{"name":"cut","namespace":"default","resourceVersion":"11""#
                    + "\n",
                #"{"type":"EXPLODED","object":{"metadata":{"name":"x","namespace":"default","resourceVersion":"12"}}}"#
                    + "\n",
                #"{"type":"ADDED","object":"# + Self.mistypedPod("typed", namespace: "default", resourceVersion: "13")
                    + "}\n",
                #"{"type":"MODIFIED","object":"# + Self.pod("a", resourceVersion: "14", labels: #"{"v":"2"}"#) + "}\n",
                // One event split across chunks.
                #"{"type":"ADDED","object":"#,
                Self.pod("b", resourceVersion: "15") + "}\n",
                #"{"type":"DELETED","object":"# + Self.pod("a", resourceVersion: "16") + "}\n",
                // The stream ends inside an event.
                #"{"type":"ADDED","object":{"metadata":{"name":"tail""#,
            ]
            let secondStream = [
                #"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"16"}}}"#
                    + "\n",
                #"{"type":"ADDED","object":"# + Self.pod("c", resourceVersion: "17") + "}\n",
            ]
            let watches = Shared(0)
            let server = try await ScriptedAPIServer.start { request in
                guard request.isWatch else { return .json(listBody) }
                let number = watches.update { count -> Int in
                    count += 1
                    return count
                }
                if number == 1 { return .stream(chunks: firstStream, thenEnd: true) }
                if number == 2 { return .stream(chunks: secondStream, thenEnd: false) }
                return .stream(chunks: [], thenEnd: false)
            }
            let client = try KubernetesClient(configuration: try server.clientConfiguration())
            let errors = EventLog<KubernetesError>()
            let informer = Informer(
                client: client, Pod.self, namespace: "default",
                configuration: WatcherConfiguration(backoff: fastBackoff, onError: { errors.append($0) }))
            let handled = EventLog<String>()
            try informer.addHandler { handled.append(Self.describe($0)) }
            do {
                try await withRunningInformer(informer) {
                    try await eventually("the event after the reconnect arrives") {
                        informer.store.get(ObjectKey(namespace: "default", name: "c")) != nil
                    }
                }
            } catch {
                try? await client.shutdown()
                await server.shutdown()
                throw error
            }
            try await client.shutdown()
            await server.shutdown()

            #expect(handled.all == ["added a@10", "updated a@14", "added b@15", "deleted a", "added c@17"])
            let reported = errors.all
            #expect(reported.allSatisfy { $0 == .decoding }, "\(reported)")
            #expect(reported.count == 6, "\(reported)")
            guard reported.count == 6 else { return }
            #expect(reported[0].fieldPath == "items[1].spec.containers", "list item: \(reported[0])")
            #expect(reported[1].message.contains("not valid JSON") && reported[1].fieldPath == nil, "\(reported[1])")
            #expect(reported[2].message.contains("not valid JSON"), "truncated line: \(reported[2])")
            #expect(reported[3].fieldPath == "type" && reported[3].message.contains("EXPLODED"), "\(reported[3])")
            #expect(reported[4].fieldPath == "object.spec.containers", "typed decoding: \(reported[4])")
            #expect(reported[4].message.contains("default/typed"), "\(reported[4])")
            #expect(reported[5].message.contains("truncated"), "end of stream: \(reported[5])")

            let watchRequests = server.requests.filter(\.isWatch)
            #expect(watchRequests.count == 2)
            #expect(
                watchRequests.map { $0.query["resourceVersion"] } == ["10", "16"], "resumed after the last good event")
        }

        @Test func serviceProfilesWithInvalidRouteFieldsFlowThroughAndCompileReportsTheirPaths() async throws {
            try await IntegrationHarness.run(namespace: "profiles") { harness in
                let client = harness.client
                func profile(_ name: String, regex: String, timeout: String) -> ServiceProfile {
                    ServiceProfile(
                        metadata: ObjectMeta(name: name),
                        spec: ServiceProfile.Spec(routes: [
                            ServiceProfile.Route(
                                name: "GET /books", condition: .init(pathRegex: regex, method: "GET"), timeout: timeout)
                        ]))
                }
                _ = try await client.create(
                    profile("listed.profiles.svc.cluster.local", regex: "/books/(", timeout: "soon"))
                _ = try await client.create(
                    profile("valid.profiles.svc.cluster.local", regex: "/books/\\d+", timeout: "1s"))
                let errors = EventLog<KubernetesError>()
                let informer = Informer(
                    client: client, ServiceProfile.self, namespace: "profiles",
                    configuration: WatcherConfiguration(backoff: fastBackoff, onError: { errors.append($0) }))
                try await withRunningInformer(informer) {
                    await informer.waitUntilSynced()
                    try await eventually("the informer watches") { harness.server.activeWatchCount == 1 }
                    _ = try await client.create(
                        profile("watched.profiles.svc.cluster.local", regex: "[z-a]", timeout: "-5ms"))
                    try await eventually("the profile created while watching arrives") {
                        informer.store.count == 3
                    }
                    #expect(errors.all.isEmpty, "invalid field values still decode: \(errors.all)")

                    let valid = try #require(
                        informer.store.get(ObjectKey(namespace: "profiles", name: "valid.profiles.svc.cluster.local")))
                    #expect(try valid.compile().routes.count == 1)
                    for name in ["listed", "watched"] {
                        let stored = try #require(
                            informer.store.get(
                                ObjectKey(namespace: "profiles", name: "\(name).profiles.svc.cluster.local")))
                        do throws(ValidationError) {
                            _ = try stored.compile()
                            Issue.record("\(name): an invalid regex and duration must not compile")
                        } catch {
                            #expect(
                                error.issues.map(\.field) == [
                                    "spec.routes[0].condition.pathRegex", "spec.routes[0].timeout",
                                ], "\(name): \(error)")
                        }
                    }
                }
            }
        }
    }
}
