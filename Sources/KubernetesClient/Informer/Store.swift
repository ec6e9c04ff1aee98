import ApusCore
import NIOConcurrencyHelpers

/// A change to a store's contents, as handlers see it.
public enum InformerEvent<R: Sendable>: Sendable {
    case added(R)
    /// Also delivered with `old == new` on a periodic resync.
    case updated(old: R, new: R)
    /// Carries the last known state of the object.
    case deleted(R)

    /// The object's current (or, for a delete, final) state.
    public var object: R {
        switch self {
        case .added(let object), .deleted(let object): return object
        case .updated(_, let new): return new
        }
    }
}

/// A secondary index: maps an object to the index values it is filed under.
///
/// ```swift
/// let byNode = Indexer<Pod>(name: "node") { pod in pod.spec?.nodeName.map { [$0] } ?? [] }
/// let (store, writer) = Store<Pod>.make(indexers: [byNode, .label("app")])
/// let onNode = try store.byIndex(name: "node", value: "worker-1")
/// ```
public struct Indexer<R: KubernetesResource>: Sendable {
    public let name: String
    public let values: @Sendable (R) -> [String]

    public init(name: String, values: @escaping @Sendable (R) -> [String]) {
        self.name = name
        self.values = values
    }

    /// The built-in index every store has: the object's namespace (`""` for cluster-scoped objects).
    public static var namespace: Indexer<R> {
        Indexer(name: Store<R>.namespaceIndex) { [$0.metadata.namespace ?? ""] }
    }

    /// Files objects under the value of one label; objects without the label are not indexed.
    /// Query it with ``Store/byIndex(name:value:)`` using ``Store/labelIndexName(_:)``.
    public static func label(_ key: String) -> Indexer<R> {
        Indexer(name: Store<R>.labelIndexName(key)) { object in
            object.metadata.labels?[key].map { [$0] } ?? []
        }
    }
}

/// Why a store query failed.
public struct StoreError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        /// ``Store/byIndex(name:value:)`` named an index that was not registered: a programming error.
        case unknownIndex
    }

    public let code: Code
    public let message: String

    public static func == (lhs: StoreError, rhs: StoreError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
    public var description: String { "StoreError.\(code.rawValue): \(message)" }
    public static let unknownIndex = StoreError(code: .unknownIndex, message: "")
}

final class StoreStorage<R: KubernetesResource>: Sendable {
    struct State {
        var objects: [ObjectKey: R] = [:]
        var indexers: [String: Indexer<R>] = [:]
        /// index name → index value → keys.
        var indices: [String: [String: Set<ObjectKey>]] = [:]
        /// Objects of a relist in progress (between initStart and initDone); readers still see `objects`.
        var staging: [ObjectKey: R]?
        var synced = false
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0

        mutating func insertIntoIndices(_ object: R, key: ObjectKey) {
            for (name, indexer) in indexers {
                for value in indexer.values(object) {
                    indices[name, default: [:]][value, default: []].insert(key)
                }
            }
        }

        mutating func removeFromIndices(_ object: R, key: ObjectKey) {
            for (name, indexer) in indexers {
                for value in indexer.values(object) {
                    indices[name]?[value]?.remove(key)
                    if indices[name]?[value]?.isEmpty == true { indices[name]?[value] = nil }
                }
            }
        }

        mutating func rebuildIndices() {
            indices = Dictionary(uniqueKeysWithValues: indexers.keys.map { ($0, [:]) })
            for (key, object) in objects { insertIntoIndices(object, key: key) }
        }
    }

    let state: NIOLockedValueBox<State>

    init(indexers: [Indexer<R>]) {
        var state = State()
        for indexer in [Indexer<R>.namespace] + indexers { state.indexers[indexer.name] = indexer }
        state.rebuildIndices()
        self.state = NIOLockedValueBox(state)
    }
}

/// A read-only, thread-safe cache of one resource type, filled by a single ``StoreWriter``.
///
/// Reads are synchronous and never wait for the network. Until ``hasSynced`` the contents are incomplete;
/// controllers call ``waitUntilSynced()`` before acting on absence.
///
/// ```swift
/// let (store, writer) = Store<ConfigMap>.make()
/// for try await event in Watcher(client: client, ConfigMap.self) { _ = writer.apply(event) }
/// // elsewhere
/// await store.waitUntilSynced()
/// let settings = store.get(ObjectKey(namespace: "apus", name: "settings"))
/// ```
public struct Store<R: KubernetesResource>: Sendable {
    /// Name of the built-in namespace index.
    public static var namespaceIndex: String { "namespace" }

    /// Name of the index created by ``Indexer/label(_:)``.
    public static func labelIndexName(_ key: String) -> String { "label:\(key)" }

    let storage: StoreStorage<R>

    /// Creates a store and its only writer. The namespace index is always present; `indexers` add more.
    ///
    /// `transform` (client-go's `SetTransform`) rewrites every object the writer receives — list items, watch
    /// adds, updates and deletes alike — before it is stored, indexed or returned as a change, so the store,
    /// the indexers and every handler only ever see transformed objects. Use it to drop fields nobody reads
    /// and keep a large cache small. It must keep `metadata.name`, `metadata.namespace` (the object's key) and
    /// `metadata.resourceVersion` (a relist compares it to decide whether an object changed), must be cheap
    /// (it runs once per event on the informer's task) and must be a pure function of its input.
    public static func make(
        indexers: [Indexer<R>] = [], transform: (@Sendable (R) -> R)? = nil
    ) -> (Store<R>, StoreWriter<R>) {
        let storage = StoreStorage(indexers: indexers)
        return (Store(storage: storage), StoreWriter(storage: storage, transform: transform))
    }

    public func get(_ key: ObjectKey) -> R? {
        storage.state.withLockedValue { $0.objects[key] }
    }

    /// All objects, in no particular order.
    public func list() -> [R] {
        storage.state.withLockedValue { Array($0.objects.values) }
    }

    /// The objects of one namespace (served from the namespace index).
    public func list(namespace: String) -> [R] {
        storage.state.withLockedValue { state in
            (state.indices[Self.namespaceIndex]?[namespace] ?? []).compactMap { state.objects[$0] }
        }
    }

    /// The objects filed under `value` in the index `name`.
    /// - Throws: ``StoreError`` `.unknownIndex` when no indexer of that name was registered.
    public func byIndex(name: String, value: String) throws -> [R] {
        try storage.state.withLockedValue { state in
            guard state.indexers[name] != nil else {
                throw StoreError(
                    code: .unknownIndex,
                    message: "no index named '\(name)' (have: \(state.indexers.keys.sorted().joined(separator: ", ")))")
            }
            return (state.indices[name]?[value] ?? []).compactMap { state.objects[$0] }
        }
    }

    /// The index values currently present in index `name` (e.g. all namespaces with objects).
    public func indexValues(name: String) -> [String] {
        storage.state.withLockedValue { Array(($0.indices[name] ?? [:]).keys) }
    }

    public var count: Int { storage.state.withLockedValue { $0.objects.count } }

    /// Whether the first complete list has been applied.
    public var hasSynced: Bool { storage.state.withLockedValue { $0.synced } }

    /// Returns once the first complete list has been applied (at once if it already was, or when the calling
    /// task is cancelled).
    public func waitUntilSynced() async {
        let id: Int? = storage.state.withLockedValue { state in
            if state.synced { return nil }
            state.nextWaiter += 1
            return state.nextWaiter
        }
        guard let id else { return }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = storage.state.withLockedValue { state -> Bool in
                    if state.synced || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            storage.state.withLockedValue { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}

/// The single writer of a ``Store``: applies ``WatcherEvent``s and reports the resulting changes.
///
/// A relist (`initStart` … `initDone`) is staged and swapped in atomically at `initDone`; the returned events
/// then describe the difference: adds for new objects, updates for objects whose resourceVersion changed,
/// deletes for objects that vanished while the watch was down.
///
/// With a transform (see ``Store/make(indexers:transform:)``), every object is transformed first: the store and
/// the returned changes hold only transformed objects.
public struct StoreWriter<R: KubernetesResource>: Sendable {
    let storage: StoreStorage<R>
    /// Applied to every incoming object before the store's lock is taken.
    let transform: (@Sendable (R) -> R)?

    init(storage: StoreStorage<R>, transform: (@Sendable (R) -> R)? = nil) {
        self.storage = storage
        self.transform = transform
    }

    /// The store this writer fills.
    public var store: Store<R> { Store(storage: storage) }

    /// Applies one watcher event and returns the changes to deliver, in order.
    @discardableResult
    public func apply(_ event: WatcherEvent<R>) -> [InformerEvent<R>] {
        let event = transform.map { Self.transformed(event, by: $0) } ?? event
        var waiters: [CheckedContinuation<Void, Never>] = []
        let changes: [InformerEvent<R>] = storage.state.withLockedValue { state in
            switch event {
            case .initStart:
                state.staging = [:]
                return []
            case .initApply(let object):
                if state.staging == nil { state.staging = [:] }
                state.staging?[object.objectKey] = object
                return []
            case .initDone:
                var fresh = state.staging ?? [:]
                state.staging = nil
                var changes: [InformerEvent<R>] = []
                changes.reserveCapacity(fresh.count)
                for (key, object) in fresh.sorted(by: { $0.key < $1.key }) {
                    if let old = state.objects[key] {
                        if old.metadata.resourceVersion != object.metadata.resourceVersion
                            || object.metadata.resourceVersion == nil
                        {
                            changes.append(.updated(old: old, new: object))
                        } else {
                            // Same version, so no event: keep the copy handlers were given (list items may
                            // lack apiVersion/kind), or the next update's `old` would be one they never saw.
                            fresh[key] = old
                        }
                    } else {
                        changes.append(.added(object))
                    }
                }
                for (key, old) in state.objects.sorted(by: { $0.key < $1.key }) where fresh[key] == nil {
                    changes.append(.deleted(old))
                }
                state.objects = fresh
                state.rebuildIndices()
                if !state.synced {
                    state.synced = true
                    waiters = Array(state.waiters.values)
                    state.waiters.removeAll()
                }
                return changes
            case .apply(let object):
                let key = object.objectKey
                let old = state.objects.updateValue(object, forKey: key)
                if let old { state.removeFromIndices(old, key: key) }
                state.insertIntoIndices(object, key: key)
                return [old.map { .updated(old: $0, new: object) } ?? .added(object)]
            case .delete(let object):
                let key = object.objectKey
                guard let old = state.objects.removeValue(forKey: key) else { return [] }
                state.removeFromIndices(old, key: key)
                return [.deleted(object)]
            }
        }
        for waiter in waiters { waiter.resume() }
        return changes
    }

    private static func transformed(_ event: WatcherEvent<R>, by transform: (R) -> R) -> WatcherEvent<R> {
        switch event {
        case .initStart, .initDone: return event
        case .initApply(let object): return .initApply(transform(object))
        case .apply(let object): return .apply(transform(object))
        case .delete(let object): return .delete(transform(object))
        }
    }
}
