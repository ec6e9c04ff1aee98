import ApusCore
import KubernetesClient
import Testing

@Suite("Store and StoreWriter")
struct UnitStoreTests {
    static func pod(
        _ namespace: String, _ name: String, rv: String, labels: [String: String]? = nil, node: String? = nil
    ) -> Pod {
        var pod = Pod(metadata: ObjectMeta(name: name, namespace: namespace, resourceVersion: rv, labels: labels))
        if let node {
            var spec = PodSpec()
            spec.nodeName = node
            pod.spec = spec
        }
        return pod
    }

    static func describe(_ events: [InformerEvent<Pod>]) -> [String] {
        events.map { event in
            switch event {
            case .added(let pod): return "add \(pod.objectKey)@\(pod.metadata.resourceVersion ?? "")"
            case .updated(let old, let new):
                let versions = "\(old.metadata.resourceVersion ?? "")->\(new.metadata.resourceVersion ?? "")"
                return "update \(new.objectKey)@\(versions)"
            case .deleted(let pod): return "delete \(pod.objectKey)@\(pod.metadata.resourceVersion ?? "")"
            }
        }
    }

    static let byNode = Indexer<Pod>(name: "node") { pod in pod.spec?.nodeName.map { [$0] } ?? [] }

    @Test func initialListIsInvisibleUntilInitDoneThenSynced() async {
        let (store, writer) = Store<Pod>.make()
        #expect(writer.apply(.initStart).isEmpty)
        #expect(writer.apply(.initApply(Self.pod("a", "p1", rv: "1"))).isEmpty)
        #expect(store.count == 0, "a list in progress is staged, not visible")
        #expect(!store.hasSynced)
        let events = writer.apply(.initDone)
        #expect(Self.describe(events) == ["add a/p1@1"])
        #expect(store.count == 1)
        #expect(store.hasSynced)
        await store.waitUntilSynced()
    }

    @Test func waiterIsReleasedByTheFirstInitDone() async {
        let (store, writer) = Store<Pod>.make()
        async let waited: Void = store.waitUntilSynced()
        try? await Task.sleep(for: .milliseconds(20))
        writer.apply(.initStart)
        writer.apply(.initDone)
        await waited
        #expect(store.hasSynced)
    }

    @Test func applyAndDeleteProduceOrderedEventsPerKey() {
        let (store, writer) = Store<Pod>.make()
        writer.apply(.initStart)
        writer.apply(.initDone)
        var log: [String] = []
        log += Self.describe(writer.apply(.apply(Self.pod("a", "p", rv: "1"))))
        log += Self.describe(writer.apply(.apply(Self.pod("a", "p", rv: "2"))))
        log += Self.describe(writer.apply(.delete(Self.pod("a", "p", rv: "3"))))
        log += Self.describe(writer.apply(.delete(Self.pod("a", "p", rv: "4"))))  // unknown: no event
        log += Self.describe(writer.apply(.apply(Self.pod("a", "p", rv: "5"))))  // re-added
        #expect(log == ["add a/p@1", "update a/p@1->2", "delete a/p@3", "add a/p@5"])
        #expect(store.get(ObjectKey(namespace: "a", name: "p"))?.metadata.resourceVersion == "5")
    }

    @Test func relistReplacesAtomicallyAndEmitsTheDifference() {
        let (store, writer) = Store<Pod>.make()
        writer.apply(.initStart)
        for name in ["keep", "change", "vanish"] {
            writer.apply(.initApply(Self.pod("a", name, rv: "1")))
        }
        writer.apply(.initDone)

        // The watch broke; the relist sees one unchanged, one changed, one new object, and one is gone.
        writer.apply(.initStart)
        writer.apply(.initApply(Self.pod("a", "keep", rv: "1")))
        writer.apply(.initApply(Self.pod("a", "change", rv: "7")))
        writer.apply(.initApply(Self.pod("a", "new", rv: "8")))
        #expect(store.count == 3, "readers keep the old contents until initDone")
        #expect(store.get(ObjectKey(namespace: "a", name: "vanish")) != nil)
        let events = writer.apply(.initDone)
        #expect(Self.describe(events) == ["update a/change@1->7", "add a/new@8", "delete a/vanish@1"])
        #expect(Set(store.list().map(\.objectKey.description)) == ["a/keep", "a/change", "a/new"])
    }

    @Test func namespaceLabelAndCustomIndexesFollowUpdates() throws {
        let (store, writer) = Store<Pod>.make(indexers: [.label("app"), Self.byNode])
        writer.apply(.initStart)
        writer.apply(.initApply(Self.pod("a", "web-1", rv: "1", labels: ["app": "web"], node: "n1")))
        writer.apply(.initApply(Self.pod("a", "web-2", rv: "1", labels: ["app": "web"], node: "n2")))
        writer.apply(.initApply(Self.pod("b", "db-1", rv: "1", labels: ["app": "db"], node: "n1")))
        writer.apply(.initApply(Self.pod("b", "bare", rv: "1")))
        writer.apply(.initDone)

        func names(_ pods: [Pod]) -> [String] { pods.map(\.objectKey.description).sorted() }
        #expect(names(store.list(namespace: "a")) == ["a/web-1", "a/web-2"])
        #expect(names(store.list(namespace: "b")) == ["b/bare", "b/db-1"])
        let app = Store<Pod>.labelIndexName("app")
        #expect(names(try store.byIndex(name: app, value: "web")) == ["a/web-1", "a/web-2"])
        #expect(names(try store.byIndex(name: "node", value: "n1")) == ["a/web-1", "b/db-1"])

        // Relabel and move: old index entries go away.
        writer.apply(.apply(Self.pod("a", "web-2", rv: "2", labels: ["app": "db"], node: "n1")))
        #expect(names(try store.byIndex(name: app, value: "web")) == ["a/web-1"])
        #expect(names(try store.byIndex(name: app, value: "db")) == ["a/web-2", "b/db-1"])
        #expect(names(try store.byIndex(name: "node", value: "n2")).isEmpty)
        writer.apply(.delete(Self.pod("b", "db-1", rv: "3")))
        #expect(names(try store.byIndex(name: "node", value: "n1")) == ["a/web-1", "a/web-2"])
        #expect(names(try store.byIndex(name: Store<Pod>.namespaceIndex, value: "b")) == ["b/bare"])

        #expect(throws: StoreError.unknownIndex) { try store.byIndex(name: "zone", value: "x") }
    }
}
