import ApusCore
import Foundation

/// Receives one watch stream's output. Implemented by the HTTP handler, which hops to its channel's event loop;
/// the state calls these while holding its lock, so events reach every stream in resourceVersion order.
protocol WatchSink: Sendable {
    /// One newline-terminated JSON watch event.
    func send(_ line: [UInt8])
    /// Ends the response cleanly (timeout, or after a terminal ERROR event).
    func finish()
    /// Closes the connection without ending the response, as a crashed or restarted API server would.
    func abort()
}

enum WatchEventType: String, Sendable {
    case added = "ADDED"
    case modified = "MODIFIED"
    case deleted = "DELETED"
    case bookmark = "BOOKMARK"
    case error = "ERROR"
}

/// One change in the event log, as stored (version-neutral; stamped with a watcher's apiVersion on delivery).
struct StoredEvent: Sendable {
    var revision: Int64
    var resource: StorageKey
    var type: WatchEventType
    var object: JSONValue
    /// The stored object before a modification or deletion: a selector watch turns "stopped matching" into
    /// DELETED with it, and paginated lists roll changes back with it to serve their first page's snapshot.
    var previous: JSONValue?
}

/// What a watch asks for; validated before the response head is sent.
struct WatchRequest: Sendable {
    var resource: ResourceInfo
    var namespace: String?
    var labelSelector: LabelSelector
    var fieldSelector: FieldSelector
    /// `nil` for "start from now with the current state as ADDED events" (absent or "0").
    var startRevision: Int64?
    var allowBookmarks: Bool

    func matches(_ object: JSONValue) -> Bool {
        if let namespace, object["metadata"]?["namespace"]?.stringValue != namespace { return false }
        return labelSelector.matches(object: object) && fieldSelector.matches(object: object)
    }
}

private struct Watcher: Sendable {
    var request: WatchRequest
    var sink: any WatchSink
}

/// A request the server saw, for tests asserting on client behaviour (relists, retries).
public struct RecordedRequest: Sendable, Hashable {
    public var method: String
    /// The URL path without the query.
    public var path: String
    public var query: [String: String]
    /// The authenticated user, `nil` when authentication failed.
    public var user: String?
    /// The Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection; `nil` for
    /// non-resource paths.
    public var verb: String?
    /// The resource plural, e.g. `pods`, with the subresource appended (`pods/status`).
    public var resource: String?
}

/// What a create hook receives, see ``KubernetesTestServer/setCreateHandler(for:_:)``.
public struct CreateRequest: Sendable {
    /// The request body as sent.
    public var object: JSONValue
    /// The namespace from the URL, for namespaced resources.
    public var namespace: String?
    /// The authenticated user making the request.
    public var user: String
}

/// Answers a create request for a virtual resource with the response object (sent as 201 Created).
public typealias CreateHandler = @Sendable (CreateRequest) throws -> JSONValue

/// All server state, guarded by one lock in ``ServerCore``. Every mutating method runs with the lock held and
/// emits the watch events of its change before returning.
struct ServerState: Sendable {
    var registry = ResourceRegistry.standard
    var options: KubernetesTestServer.Options
    private var objects: [StorageKey: [ObjectKey: JSONValue]] = [:]
    private(set) var revision: Int64 = 1
    private var events: [StoredEvent] = []
    /// Watches and continue tokens at or above this revision can be served; below it they are 410 Gone.
    private(set) var compactedRevision: Int64 = 0
    private var watchers: [Int: Watcher] = [:]
    private var nextWatcherID = 1
    var createHandlers: [StorageKey: CreateHandler] = [:]
    /// Requests kept for tests; long benchmarks drop the oldest quarter when it fills.
    var requestLog: [RecordedRequest] = []
    static let requestLogCapacity = 100_000
    var pendingFailures: (count: Int, status: Int, retryAfter: Int?) = (0, 500, nil)
    var responseDelay: Duration = .zero

    init(options: KubernetesTestServer.Options) {
        self.options = options
    }

    // MARK: - Reads

    func object(_ resource: ResourceInfo, namespace: String?, name: String) -> JSONValue? {
        objects[resource.storageKey]?[ObjectKey(namespace: namespace, name: name)].map { stamp($0, resource) }
    }

    func objects(_ resource: ResourceInfo, namespace: String?) -> [JSONValue] {
        let all = objects[resource.storageKey] ?? [:]
        return all.keys.sorted()
            .filter { namespace == nil || $0.namespace == namespace }
            .compactMap { all[$0].map { stamp($0, resource) } }
    }

    func get(_ resource: ResourceInfo, namespace: String?, name: String) throws -> JSONValue {
        guard let object = object(resource, namespace: namespace, name: name) else {
            throw APIError.notFound(resource, name)
        }
        return object
    }

    /// A list response; `continueToken` pages resume after the last key of the previous page.
    func list(
        _ resource: ResourceInfo, namespace: String?, labelSelector: LabelSelector, fieldSelector: FieldSelector,
        limit: Int?, continueToken: String?
    ) throws -> JSONValue {
        var listRevision = revision
        var startAfter: String?
        if let continueToken, !continueToken.isEmpty {
            let token = try ContinueToken(decoding: continueToken)
            guard token.revision >= compactedRevision else {
                throw APIError.expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a "
                        + "new list without the continue parameter, or use the continue token in this response to "
                        + "retrieve the remainder of the results.")
            }
            listRevision = token.revision
            startAfter = token.startAfter
        }
        var all = objects[resource.storageKey] ?? [:]
        if listRevision < revision { all = snapshot(resource.storageKey, of: all, at: listRevision) }
        var keys = all.keys.filter { namespace == nil || $0.namespace == namespace }.sorted()
        if let startAfter { keys = keys.filter { $0.description > startAfter } }
        var items: [JSONValue] = []
        var metadata: [String: JSONValue] = ["resourceVersion": .string(String(listRevision))]
        for (offset, key) in keys.enumerated() {
            guard let stored = all[key], labelSelector.matches(object: stored), fieldSelector.matches(object: stored)
            else { continue }
            if let limit, limit > 0, items.count == limit {
                let remaining = keys[offset...].filter { key in
                    all[key].map { labelSelector.matches(object: $0) && fieldSelector.matches(object: $0) } ?? false
                }.count
                let last = keys[offset - 1].description
                metadata["continue"] = .string(ContinueToken(revision: listRevision, startAfter: last).encoded)
                metadata["remainingItemCount"] = .number(Double(remaining))
                break
            }
            items.append(listItem(stored, resource))
        }
        return .object([
            "apiVersion": .string(resource.type.apiVersion),
            "kind": .string(resource.type.kind + "List"),
            "metadata": .object(metadata),
            "items": .array(items),
        ])
    }

    /// The objects of one resource as they were at `revision`, rebuilt by undoing the logged changes after it,
    /// so every page of a paginated list shows the first page's snapshot as etcd does. Callers check that
    /// `revision` is not compacted, so every change after it is still in the log.
    private func snapshot(
        _ storageKey: StorageKey, of current: [ObjectKey: JSONValue], at revision: Int64
    ) -> [ObjectKey: JSONValue] {
        var objects = current
        for event in events.reversed() {
            guard event.revision > revision else { break }
            guard event.resource == storageKey else { continue }
            let key = ObjectKey(
                namespace: event.object[meta: "namespace"]?.stringValue,
                name: event.object[meta: "name"]?.stringValue ?? "")
            switch event.type {
            case .added: objects[key] = nil
            case .modified, .deleted: objects[key] = event.previous
            case .bookmark, .error: break
            }
        }
        return objects
    }

    // MARK: - Writes

    /// Creates an object from an API request body (status dropped for kinds with a status subresource).
    mutating func create(_ resource: ResourceInfo, namespace: String?, body: JSONValue) throws -> JSONValue {
        var object = try normalizedBody(resource, namespace: namespace, body: body, urlName: nil)
        try autoCreateNamespaceIfNeeded(resource, namespace)
        try requireNamespace(resource, namespace)
        if resource.hasStatusSubresource { object["status"] = nil }
        return try insert(resource, object)
    }

    /// Creates or replaces without API checks (test seeding): keeps status, creates the namespace if missing.
    mutating func seed(_ resource: ResourceInfo, _ body: JSONValue) throws -> JSONValue {
        let namespace = resource.type.namespaced ? body["metadata"]?["namespace"]?.stringValue ?? "default" : nil
        var object = try normalizedBody(resource, namespace: namespace, body: body, urlName: nil)
        if let namespace, objects[Self.namespaces.storageKey]?[ObjectKey(namespace: nil, name: namespace)] == nil {
            _ = try insert(Self.namespaces, .object(["metadata": .object(["name": .string(namespace)])]))
        }
        let name = object["metadata"]?["name"]?.stringValue ?? ""
        guard let existing = objects[resource.storageKey]?[ObjectKey(namespace: namespace, name: name)] else {
            return try insert(resource, object)
        }
        for field in ["uid", "creationTimestamp"] { object[meta: field] = existing[meta: field] }
        object[meta: "resourceVersion"] = existing[meta: "resourceVersion"]
        return try commit(resource, existing: existing, proposed: object)
    }

    /// PUT of the main resource or of `/status`.
    mutating func update(
        _ resource: ResourceInfo, namespace: String?, name: String, body: JSONValue, statusOnly: Bool
    ) throws -> JSONValue {
        let object = try normalizedBody(resource, namespace: namespace, body: body, urlName: name)
        let key = ObjectKey(namespace: namespace, name: name)
        guard let existing = objects[resource.storageKey]?[key] else { throw APIError.notFound(resource, name) }
        if let wanted = object[meta: "resourceVersion"]?.stringValue, !wanted.isEmpty,
            wanted != existing[meta: "resourceVersion"]?.stringValue
        {
            throw APIError.staleResourceVersion(resource, name)
        }
        if let uid = object[meta: "uid"]?.stringValue, !uid.isEmpty, uid != existing[meta: "uid"]?.stringValue {
            throw APIError.conflict(
                resource, name,
                "Precondition failed: UID in precondition: \(uid), UID in object meta: "
                    + (existing[meta: "uid"]?.stringValue ?? ""))
        }
        var proposed: JSONValue
        if statusOnly {
            proposed = existing
            proposed["status"] = object["status"]
        } else {
            proposed = object
            for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
                proposed[meta: field] = existing[meta: field]
            }
            if resource.hasStatusSubresource { proposed["status"] = existing["status"] }
        }
        proposed[meta: "resourceVersion"] = existing[meta: "resourceVersion"]
        return try commit(resource, existing: existing, proposed: proposed)
    }

    /// Applies a parsed patch: fetches the object, patches it and runs the result through ``update``. Server-side
    /// apply creates the object when it is absent.
    mutating func patch(
        _ resource: ResourceInfo, namespace: String?, name: String, statusOnly: Bool, kind: PatchKind,
        patch: JSONValue
    ) throws -> (object: JSONValue, created: Bool) {
        let key = ObjectKey(namespace: namespace, name: name)
        guard let stored = objects[resource.storageKey]?[key] else {
            guard kind == .apply, !statusOnly else { throw APIError.notFound(resource, name) }
            var object = patch
            if object["metadata"]?["name"] == nil { object[meta: "name"] = .string(name) }
            let normalized = try normalizedBody(resource, namespace: namespace, body: object, urlName: name)
            return (try create(resource, namespace: namespace, body: normalized), true)
        }
        let existing = stamp(stored, resource)
        var patched: JSONValue
        switch kind {
        case .merge, .strategicMerge:
            guard case .object = patch else { throw APIError.badRequest("a merge patch must be a JSON object") }
            patched = Patch.merge(patch, into: existing)
        case .json:
            patched = try Patch.jsonPatch(patch, to: existing)
        case .apply:
            guard case .object = patch else { throw APIError.badRequest("an apply configuration must be an object") }
            if let applyName = patch["metadata"]?["name"]?.stringValue, applyName != name {
                throw APIError.badRequest(
                    "the name of the object (\(applyName)) does not match the name on the URL (\(name))")
            }
            patched = Patch.apply(patch, onto: existing)
        }
        // A patch that does not mention resourceVersion is unconditional, like the real server.
        if patched[meta: "resourceVersion"] == nil {
            patched[meta: "resourceVersion"] = existing[meta: "resourceVersion"]
        }
        return (try update(resource, namespace: namespace, name: name, body: patched, statusOnly: statusOnly), false)
    }

    /// Deletes (or, with finalizers, marks for deletion). Returns the object and whether it is really gone.
    mutating func delete(
        _ resource: ResourceInfo, namespace: String?, name: String, options: JSONValue?
    ) throws -> (object: JSONValue, deleted: Bool) {
        let key = ObjectKey(namespace: namespace, name: name)
        guard let existing = objects[resource.storageKey]?[key] else { throw APIError.notFound(resource, name) }
        if let preconditions = options?["preconditions"] {
            if let uid = preconditions["uid"]?.stringValue, uid != existing[meta: "uid"]?.stringValue {
                throw APIError.conflict(
                    resource, name,
                    "Precondition failed: UID in precondition: \(uid), UID in object meta: "
                        + (existing[meta: "uid"]?.stringValue ?? ""))
            }
            if let version = preconditions["resourceVersion"]?.stringValue,
                version != existing[meta: "resourceVersion"]?.stringValue
            {
                throw APIError.conflict(
                    resource, name,
                    "Precondition failed: ResourceVersion in precondition: \(version), "
                        + "ResourceVersion in object meta: " + (existing[meta: "resourceVersion"]?.stringValue ?? ""))
            }
        }
        if resource.storageKey == Self.namespaces.storageKey {
            deleteContents(ofNamespace: name)
        }
        return deleteObject(resource, key: key, existing: existing)
    }

    /// DELETE on a collection: deletes every matching object, returning them as a list.
    mutating func deleteCollection(
        _ resource: ResourceInfo, namespace: String?, labelSelector: LabelSelector, fieldSelector: FieldSelector
    ) -> JSONValue {
        let all = objects[resource.storageKey] ?? [:]
        var items: [JSONValue] = []
        for key in all.keys.sorted() where namespace == nil || key.namespace == namespace {
            guard let existing = all[key], labelSelector.matches(object: existing),
                fieldSelector.matches(object: existing)
            else { continue }
            if resource.storageKey == Self.namespaces.storageKey { deleteContents(ofNamespace: key.name) }
            items.append(listItem(deleteObject(resource, key: key, existing: existing).object, resource))
        }
        return .object([
            "apiVersion": .string(resource.type.apiVersion), "kind": .string(resource.type.kind + "List"),
            "metadata": .object(["resourceVersion": .string(String(revision))]), "items": .array(items),
        ])
    }

    // MARK: - Watches

    /// Registers a watch and replays what it asked for, atomically with respect to writes. Returns the watch id,
    /// or `nil` when the stream was ended immediately (too old a resourceVersion: ERROR 410, then end).
    mutating func startWatch(_ request: WatchRequest, sink: any WatchSink) -> Int? {
        if let start = request.startRevision {
            guard start >= compactedRevision else {
                let status = APIError.expired("too old resource version: \(start) (\(compactedRevision))").status
                let statusJSON = (try? JSONValue(encoding: status)) ?? .null
                sink.send(Self.eventLine(.error, statusJSON))
                sink.finish()
                return nil
            }
            for event in events where event.revision > start {
                if let (type, object) = Self.translate(event, for: request) {
                    sink.send(Self.eventLine(type, stamp(object, request.resource)))
                }
            }
        } else {
            for object in objects(request.resource, namespace: request.namespace) where request.matches(object) {
                sink.send(Self.eventLine(.added, object))
            }
        }
        let id = nextWatcherID
        nextWatcherID += 1
        watchers[id] = Watcher(request: request, sink: sink)
        return id
    }

    /// Removes a watch; `true` if it was still registered (so the caller owns ending its stream).
    mutating func stopWatch(_ id: Int) -> Bool { watchers.removeValue(forKey: id) != nil }

    /// Unregisters every watch and returns their sinks (for ``KubernetesTestServer/dropAllWatches()``).
    mutating func removeAllWatches() -> [any WatchSink] {
        defer { watchers.removeAll() }
        return watchers.values.map(\.sink)
    }

    var watchCount: Int { watchers.count }

    /// Sends a BOOKMARK at the current revision; every event up to it was already sent to this stream.
    func sendBookmark(_ id: Int) {
        guard let watcher = watchers[id], watcher.request.allowBookmarks else { return }
        let type = watcher.request.resource.type
        let object = JSONValue.object([
            "kind": .string(type.kind), "apiVersion": .string(type.apiVersion),
            "metadata": .object(["resourceVersion": .string(String(revision))]),
        ])
        watcher.sink.send(Self.eventLine(.bookmark, object))
    }

    /// Makes every event up to now unavailable: watches and continue tokens from older revisions get 410.
    mutating func compact() {
        compactedRevision = revision
        events.removeAll()
    }

    // MARK: - Internals

    static let namespaces = ResourceInfo(
        type: Namespace.resourceType, hasStatusSubresource: true, isCustomResource: false)

    private mutating func nextRevision() -> Int64 {
        revision += 1
        return revision
    }

    private func stamp(_ object: JSONValue, _ resource: ResourceInfo) -> JSONValue {
        var object = object
        object["apiVersion"] = .string(resource.type.apiVersion)
        object["kind"] = .string(resource.type.kind)
        return object
    }

    /// List items of built-in kinds carry no apiVersion/kind (the real server's typed lists omit them); custom
    /// resources keep them, as unstructured lists do.
    private func listItem(_ object: JSONValue, _ resource: ResourceInfo) -> JSONValue {
        var object = stamp(object, resource)
        if !resource.isCustomResource {
            object["apiVersion"] = nil
            object["kind"] = nil
        }
        return object
    }

    /// Checks a request body's shape and identity fields against the URL and the resource.
    private func normalizedBody(
        _ resource: ResourceInfo, namespace: String?, body: JSONValue, urlName: String?
    ) throws -> JSONValue {
        guard case .object = body else {
            throw APIError.badRequest("the body of the request must be a JSON object")
        }
        var object = body
        if let apiVersion = object["apiVersion"], apiVersion.stringValue != resource.type.apiVersion {
            throw APIError.badRequest(
                "the API version in the data (\(apiVersion.stringValue ?? "\(apiVersion)")) does not match the "
                    + "expected API version (\(resource.type.apiVersion))")
        }
        if let kind = object["kind"], kind.stringValue != resource.type.kind {
            throw APIError.badRequest(
                "the kind in the data (\(kind.stringValue ?? "\(kind)")) does not match the expected kind "
                    + "(\(resource.type.kind))")
        }
        switch object["metadata"] {
        case nil: object["metadata"] = .object([:])
        case .object?: break
        default: throw APIError.badRequest("metadata must be a JSON object")
        }
        if resource.type.namespaced {
            if let given = object[meta: "namespace"]?.stringValue, !given.isEmpty, given != namespace {
                throw APIError.badRequest(
                    "the namespace of the provided object does not match the namespace sent on the request")
            }
            object[meta: "namespace"] = namespace.map(JSONValue.string)
        } else {
            object[meta: "namespace"] = nil
        }
        if let urlName {
            let given = object[meta: "name"]?.stringValue ?? ""
            guard given == urlName else {
                throw APIError.badRequest(
                    "the name of the object (\(given)) does not match the name on the URL (\(urlName))")
            }
        }
        return object
    }

    private func requireNamespace(_ resource: ResourceInfo, _ namespace: String?) throws {
        guard resource.type.namespaced, let namespace else { return }
        guard let object = objects[Self.namespaces.storageKey]?[ObjectKey(namespace: nil, name: namespace)] else {
            throw APIError.namespaceNotFound(namespace)
        }
        if object[meta: "deletionTimestamp"] != nil {
            throw APIError.forbidden(
                "\(resource.qualifiedPlural) is forbidden: unable to create new content in namespace \(namespace) "
                    + "because it is being terminated")
        }
    }

    /// Creates the namespace of a create request when ``KubernetesTestServer/Options/autoCreateNamespaces`` is on.
    private mutating func autoCreateNamespaceIfNeeded(_ resource: ResourceInfo, _ namespace: String?) throws {
        guard options.autoCreateNamespaces, resource.type.namespaced, let namespace,
            objects[Self.namespaces.storageKey]?[ObjectKey(namespace: nil, name: namespace)] == nil
        else { return }
        _ = try insert(Self.namespaces, .object(["metadata": .object(["name": .string(namespace)])]))
    }

    private mutating func insert(_ resource: ResourceInfo, _ body: JSONValue) throws -> JSONValue {
        var object = body
        var name = object[meta: "name"]?.stringValue ?? ""
        if name.isEmpty, let prefix = object[meta: "generateName"]?.stringValue, !prefix.isEmpty {
            name = prefix + Self.randomSuffix()
            object[meta: "name"] = .string(name)
        }
        guard !name.isEmpty else {
            throw APIError.invalid(
                resource, name, field: "metadata.name", "Required value: name or generateName is required")
        }
        if let problem = Self.nameProblem(name) {
            throw APIError.invalid(resource, name, field: "metadata.name", "Invalid value: \"\(name)\": \(problem)")
        }
        let key = ObjectKey(namespace: object[meta: "namespace"]?.stringValue, name: name)
        guard objects[resource.storageKey]?[key] == nil else { throw APIError.alreadyExists(resource, name) }
        let revision = nextRevision()
        object[meta: "uid"] = .string(UUID().uuidString.lowercased())
        object[meta: "creationTimestamp"] = .string(Timestamp.now().description)
        object[meta: "resourceVersion"] = .string(String(revision))
        object[meta: "deletionTimestamp"] = nil
        object[meta: "deletionGracePeriodSeconds"] = nil
        object[meta: "generation"] = tracksGeneration(resource, object) ? .number(1) : nil
        applyDefaults(resource, &object)
        object = stamp(object, resource)
        objects[resource.storageKey, default: [:]][key] = object
        record(StoredEvent(revision: revision, resource: resource.storageKey, type: .added, object: object))
        return object
    }

    /// The little defaulting the server does: what controllers commonly read back right after a create.
    private func applyDefaults(_ resource: ResourceInfo, _ object: inout JSONValue) {
        switch (resource.type.group, resource.type.plural) {
        case ("", "namespaces"):
            var labels = object[meta: "labels"]?.objectValue ?? [:]
            labels["kubernetes.io/metadata.name"] = object[meta: "name"]
            object[meta: "labels"] = .object(labels)
            if object["status"]?["phase"] == nil { object["status"] = .object(["phase": .string("Active")]) }
        case ("", "pods"):
            if object["status"]?["phase"] == nil {
                var status = object["status"]?.objectValue ?? [:]
                status["phase"] = .string("Pending")
                object["status"] = .object(status)
            }
        default:
            break
        }
    }

    private func tracksGeneration(_ resource: ResourceInfo, _ object: JSONValue) -> Bool {
        resource.isCustomResource || object["spec"] != nil
    }

    /// Everything a user edits except metadata and status: its changes bump `metadata.generation`.
    private static func specContent(_ object: JSONValue) -> JSONValue {
        var content = object
        for key in ["metadata", "status", "apiVersion", "kind"] { content[key] = nil }
        return content
    }

    /// Stores `proposed` as the new state of `existing` (both carry the same resourceVersion): bumps generation
    /// when the spec changed, skips no-op writes like etcd's guaranteed update, and finishes deletion when the
    /// last finalizer of a deleting object is removed.
    private mutating func commit(_ resource: ResourceInfo, existing: JSONValue, proposed: JSONValue) throws -> JSONValue
    {
        var object = stamp(proposed, resource)
        if tracksGeneration(resource, object) {
            let generation = existing[meta: "generation"]?.doubleValue ?? (tracksGeneration(resource, existing) ? 1 : 0)
            let changed = Self.specContent(object) != Self.specContent(existing)
            object[meta: "generation"] = .number(changed ? generation + 1 : max(generation, 1))
        }
        let key = ObjectKey(
            namespace: object[meta: "namespace"]?.stringValue, name: object[meta: "name"]?.stringValue ?? "")
        if object == existing { return object }
        let revision = nextRevision()
        object[meta: "resourceVersion"] = .string(String(revision))
        let finalizers = object[meta: "finalizers"]?.arrayValue ?? []
        if object[meta: "deletionTimestamp"] != nil, finalizers.isEmpty {
            objects[resource.storageKey]?[key] = nil
            record(
                StoredEvent(
                    revision: revision, resource: resource.storageKey, type: .deleted, object: object,
                    previous: existing))
        } else {
            objects[resource.storageKey, default: [:]][key] = object
            record(
                StoredEvent(
                    revision: revision, resource: resource.storageKey, type: .modified, object: object,
                    previous: existing))
        }
        return object
    }

    private mutating func deleteObject(
        _ resource: ResourceInfo, key: ObjectKey, existing: JSONValue
    ) -> (object: JSONValue, deleted: Bool) {
        var object = existing
        if !(object[meta: "finalizers"]?.arrayValue ?? []).isEmpty {
            guard object[meta: "deletionTimestamp"] == nil else { return (stamp(object, resource), false) }
            let revision = nextRevision()
            object[meta: "deletionTimestamp"] = .string(Timestamp.now().description)
            object[meta: "deletionGracePeriodSeconds"] = .number(0)
            object[meta: "resourceVersion"] = .string(String(revision))
            if resource.storageKey == Self.namespaces.storageKey {
                var status = object["status"]?.objectValue ?? [:]
                status["phase"] = .string("Terminating")
                object["status"] = .object(status)
            }
            objects[resource.storageKey]?[key] = object
            record(
                StoredEvent(
                    revision: revision, resource: resource.storageKey, type: .modified, object: object,
                    previous: existing))
            return (stamp(object, resource), false)
        }
        let revision = nextRevision()
        object[meta: "resourceVersion"] = .string(String(revision))
        objects[resource.storageKey]?[key] = nil
        record(
            StoredEvent(
                revision: revision, resource: resource.storageKey, type: .deleted, object: object,
                previous: existing))
        return (stamp(object, resource), true)
    }

    /// What the namespace controller does, done synchronously: delete everything in the namespace.
    private mutating func deleteContents(ofNamespace namespace: String) {
        for storageKey in objects.keys.sorted(by: { "\($0.group)/\($0.plural)" < "\($1.group)/\($1.plural)" }) {
            guard let contents = objects[storageKey] else { continue }
            for key in contents.keys.sorted() where key.namespace == namespace {
                guard let existing = contents[key],
                    let resource = resourceInfo(for: storageKey, object: existing)
                else { continue }
                _ = deleteObject(resource, key: key, existing: existing)
            }
        }
    }

    private func resourceInfo(for storageKey: StorageKey, object: JSONValue) -> ResourceInfo? {
        let version = object["apiVersion"]?.stringValue.map { $0.split(separator: "/").last.map(String.init) ?? $0 }
        return version.flatMap { registry.lookup(group: storageKey.group, version: $0, plural: storageKey.plural) }
    }

    private mutating func record(_ event: StoredEvent) {
        events.append(event)
        if events.count > options.eventLogCapacity {
            let dropped = events.count - options.eventLogCapacity / 2
            compactedRevision = events[dropped - 1].revision
            events.removeFirst(dropped)
        }
        for watcher in watchers.values {
            guard let (type, object) = Self.translate(event, for: watcher.request) else { continue }
            watcher.sink.send(Self.eventLine(type, stamp(object, watcher.request.resource)))
        }
    }

    /// The event a watch sees for a stored change, applying selectors as the real watch cache does: an object
    /// that starts matching is ADDED, one that stops matching is DELETED (with its previous state).
    private static func translate(_ event: StoredEvent, for request: WatchRequest) -> (WatchEventType, JSONValue)? {
        guard event.resource == request.resource.storageKey else { return nil }
        // A watch from a revision the server has not reached yet waits for it, like the real watch cache.
        if let start = request.startRevision, event.revision <= start { return nil }
        let matchesNow = request.matches(event.object)
        switch event.type {
        case .added:
            return matchesNow ? (.added, event.object) : nil
        case .deleted:
            return matchesNow ? (.deleted, event.object) : nil
        case .modified:
            let matchedBefore = event.previous.map(request.matches) ?? false
            switch (matchedBefore, matchesNow) {
            case (true, true): return (.modified, event.object)
            case (false, true): return (.added, event.object)
            case (true, false):
                var previous = event.previous ?? event.object
                previous[meta: "resourceVersion"] = event.object[meta: "resourceVersion"]
                return (.deleted, previous)
            case (false, false): return nil
            }
        case .bookmark, .error:
            return nil
        }
    }

    static func eventLine(_ type: WatchEventType, _ object: JSONValue) -> [UInt8] {
        let event = JSONValue.object(["type": .string(type.rawValue), "object": object])
        var bytes = (try? event.jsonData()).map { Array($0) } ?? Array(#"{"type":"ERROR","object":null}"#.utf8)
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    private static func randomSuffix() -> String {
        // The alphabet of the real name generator (no vowels, no confusable characters).
        let alphabet = Array("bcdfghjklmnpqrstvwxz2456789")
        return String((0..<5).map { _ in alphabet.randomElement() ?? "x" })
    }

    /// DNS-1123 subdomain validation, the rule most kinds apply to `metadata.name`.
    private static func nameProblem(_ name: String) -> String? {
        guard name.utf8.count <= 253 else { return "must be no more than 253 characters" }
        let allowed = name.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 46 }
        let alphanumeric: (UInt8?) -> Bool = { byte in
            guard let byte else { return false }
            return (byte >= 97 && byte <= 122) || (byte >= 48 && byte <= 57)
        }
        guard allowed, alphanumeric(name.utf8.first), alphanumeric(name.utf8.last) else {
            return "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                + "and must start and end with an alphanumeric character"
        }
        return nil
    }
}

/// The kinds of PATCH bodies, by content type.
enum PatchKind: Sendable, Equatable {
    case json, merge, strategicMerge, apply

    init?(contentType: String) {
        switch contentType.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased() {
        case "application/json-patch+json": self = .json
        case "application/merge-patch+json": self = .merge
        case "application/strategic-merge-patch+json": self = .strategicMerge
        case "application/apply-patch+yaml", "application/apply-patch+json": self = .apply
        default: return nil
        }
    }
}

/// `continue` tokens: base64 JSON of the list's revision and the last key returned.
struct ContinueToken {
    var revision: Int64
    var startAfter: String

    init(revision: Int64, startAfter: String) {
        self.revision = revision
        self.startAfter = startAfter
    }

    init(decoding token: String) throws {
        guard let data = Data(base64Encoded: token), let value = try? JSONValue(json: data),
            let revision = value["rv"]?.doubleValue, let start = value["start"]?.stringValue
        else { throw APIError.badRequest("continue key is not valid: \(token)") }
        self.revision = Int64(revision)
        self.startAfter = start
    }

    var encoded: String {
        let value = JSONValue.object(["rv": .number(Double(revision)), "start": .string(startAfter)])
        return ((try? value.jsonData()) ?? Data()).base64EncodedString()
    }
}

extension JSONValue {
    /// A `metadata` field; setting creates `metadata` when missing and `nil` removes the field.
    subscript(meta field: String) -> JSONValue? {
        get { self["metadata"]?[field] }
        set {
            var metadata = self["metadata"] ?? .object([:])
            metadata[field] = newValue
            self["metadata"] = metadata
        }
    }
}
