import ApusCore
import KubernetesClient
import Testing

/// The informer's transform (client-go's `SetTransform`): every object is rewritten before the store, its indexes
/// and handlers see it, whether it came from a list or a watch event.
@Suite("Store and Informer transform")
struct UnitInformerTransformTests {
    /// Drops the pod's spec and adds a marker label, so a test can tell a transformed object from a raw one.
    static let stripSpec: @Sendable (Pod) -> Pod = { pod in
        var kept = pod
        kept.spec = nil
        kept.metadata.labels = (pod.metadata.labels ?? [:]).merging(["transformed": "yes"]) { _, new in new }
        return kept
    }

    static func pod(_ name: String, rv: String, node: String = "worker-1") -> Pod {
        var spec = PodSpec(containers: [Container(name: "app", image: "app:1")])
        spec.nodeName = node
        return Pod(metadata: ObjectMeta(name: name, namespace: "a", resourceVersion: rv), spec: spec)
    }

    static func isTransformed(_ pod: Pod) -> Bool {
        pod.spec == nil && pod.metadata.labels?["transformed"] == "yes"
    }

    @Test func listItemsWatchEventsAndDeletesAreTransformedBeforeStoringAndDelivering() throws {
        let (store, writer) = Store<Pod>.make(transform: Self.stripSpec)
        writer.apply(.initStart)
        writer.apply(.initApply(Self.pod("p1", rv: "1")))
        let listed = writer.apply(.initDone)
        let updated = writer.apply(.apply(Self.pod("p1", rv: "2")))
        let added = writer.apply(.apply(Self.pod("p2", rv: "3")))
        let stored = try #require(store.get(ObjectKey(namespace: "a", name: "p1")))
        let deleted = writer.apply(.delete(Self.pod("p2", rv: "4")))

        #expect(Self.isTransformed(stored))
        #expect(stored.metadata.resourceVersion == "2")
        var delivered: [Pod] = []
        for change in listed + updated + added + deleted {
            switch change {
            case .added(let pod), .deleted(let pod): delivered.append(pod)
            case .updated(let old, let new): delivered += [old, new]
            }
        }
        #expect(delivered.count == 5)
        #expect(delivered.allSatisfy(Self.isTransformed), "handlers see only transformed objects")
        #expect(store.list().map(\.metadata.name) == ["p1"])
    }

    @Test func indexersSeeTheTransformedObject() throws {
        let byNode = Indexer<Pod>(name: "node") { pod in pod.spec?.nodeName.map { [$0] } ?? [] }
        let (store, writer) = Store<Pod>.make(indexers: [byNode, .label("transformed")], transform: Self.stripSpec)
        writer.apply(.initStart)
        writer.apply(.initApply(Self.pod("p1", rv: "1")))
        writer.apply(.initDone)
        writer.apply(.apply(Self.pod("p2", rv: "2")))

        #expect(try store.byIndex(name: "node", value: "worker-1").isEmpty, "the spec was dropped before indexing")
        let labelled = try store.byIndex(name: Store<Pod>.labelIndexName("transformed"), value: "yes")
        #expect(Set(labelled.compactMap(\.metadata.name)) == ["p1", "p2"])
    }

    @Test func relistOfUnchangedObjectsDeliversNothingAndKeepsTheTransformedCopy() throws {
        let (store, writer) = Store<Pod>.make(transform: Self.stripSpec)
        writer.apply(.initStart)
        writer.apply(.initApply(Self.pod("p1", rv: "1")))
        writer.apply(.initApply(Self.pod("p2", rv: "1")))
        writer.apply(.initDone)

        writer.apply(.initStart)
        writer.apply(.initApply(Self.pod("p1", rv: "1")))
        writer.apply(.initApply(Self.pod("p2", rv: "5")))
        let changes = writer.apply(.initDone)

        #expect(UnitStoreTests.describe(changes) == ["update a/p2@1->5"])
        if case .updated(let old, let new)? = changes.first {
            #expect(Self.isTransformed(old) && Self.isTransformed(new))
        }
        #expect(store.list().allSatisfy(Self.isTransformed))
    }

    @Test func withoutTransformObjectsAreStoredAsReceived() throws {
        let (store, writer) = Store<Pod>.make()
        writer.apply(.initStart)
        writer.apply(.initApply(Self.pod("p1", rv: "1")))
        writer.apply(.initDone)
        #expect(store.get(ObjectKey(namespace: "a", name: "p1")) == Self.pod("p1", rv: "1"))
    }
}

extension IntegrationTests {
    @Suite("Informer transform against the test server")
    struct InformerTransform {
        @Test func storeHandlersAndStreamsSeeTransformedListedAndWatchedObjects() async throws {
            try await IntegrationHarness.run(namespace: "transform") { harness in
                let client = harness.client
                _ = try await client.create(
                    ConfigMap(metadata: ObjectMeta(name: "listed"), data: ["big": "value", "keep": "1"]))
                let informer = Informer(
                    client: client, ConfigMap.self, namespace: "transform",
                    transform: { configMap in
                        var kept = configMap
                        kept.data = configMap.data?.filter { $0.key == "keep" }
                        return kept
                    })
                let handled = EventLog<InformerEvent<ConfigMap>>()
                try informer.addHandler { handled.append($0) }
                let stream = try informer.events()
                let streamed = EventLog<InformerEvent<ConfigMap>>()
                let reader = Task { for await event in stream { streamed.append(event) } }

                try await withRunningInformer(informer) {
                    await informer.waitUntilSynced()
                    _ = try await client.create(
                        ConfigMap(metadata: ObjectMeta(name: "watched"), data: ["big": "value", "keep": "2"]))
                    _ = try await client.patch(
                        ConfigMap.self, name: "listed",
                        patch: .merge(.object(["data": .object(["big": .string("other")])])))
                    try await client.delete(ConfigMap.self, name: "watched")
                    try await eventually("list, create, patch and delete were delivered") {
                        handled.count == 4 && streamed.count == 4
                    }
                    let listed = try #require(informer.store.get(ObjectKey(namespace: "transform", name: "listed")))
                    #expect(listed.data == ["keep": "1"])
                }
                await reader.value
                for event in handled.all + streamed.all {
                    let objects: [ConfigMap]
                    switch event {
                    case .added(let object), .deleted(let object): objects = [object]
                    case .updated(let old, let new): objects = [old, new]
                    }
                    for object in objects {
                        #expect(object.data?["big"] == nil, "\(object.metadata.name ?? "") was delivered untransformed")
                        #expect(object.data?["keep"] != nil)
                    }
                }
            }
        }
    }
}
