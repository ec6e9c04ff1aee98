import ApusCore
import Foundation

/// Typed calls for any ``KubernetesResource``.
extension KubernetesClient {
    /// Reads one object.
    ///
    /// ```swift
    /// let pod = try await client.get(Pod.self, name: "web-0", namespace: "apus")
    /// ```
    /// - Throws: ``KubernetesError`` `.notFound` when it does not exist.
    public func get<R: KubernetesResource>(_ type: R.Type = R.self, name: String, namespace: String? = nil)
        async throws -> R
    {
        try await getObject(R.resourceType, R.self, name: name, namespace: namespace)
    }

    /// Reads an object through its `/status` subresource.
    public func getStatus<R: KubernetesResource>(_ type: R.Type = R.self, name: String, namespace: String? = nil)
        async throws -> R
    {
        try await getObject(R.resourceType, R.self, name: name, namespace: namespace, subresource: "status")
    }

    /// Lists one page (or everything when `options.limit` is unset). A `nil` namespace lists all namespaces.
    ///
    /// With `onDecodingError`, items that fail to decode are skipped and reported to it; without, one bad item
    /// fails the call with ``KubernetesError/Code/decoding`` and a field path like `items[3].metadata.labels`.
    public func list<R: KubernetesResource>(
        _ type: R.Type = R.self, namespace: String? = nil, options: ListOptions = ListOptions(),
        onDecodingError: (@Sendable (KubernetesError) -> Void)? = nil
    ) async throws -> KubernetesList<R> {
        let (metadata, items) = try await listObjects(
            R.resourceType, R.self, namespace: namespace, options: options, onDecodingError: onDecodingError)
        return KubernetesList(metadata: metadata, items: items)
    }

    /// Lists every page, following `continue` tokens; `options.limit` is the page size.
    public func listAll<R: KubernetesResource>(
        _ type: R.Type = R.self, namespace: String? = nil, options: ListOptions = ListOptions(),
        onDecodingError: (@Sendable (KubernetesError) -> Void)? = nil
    ) async throws -> KubernetesList<R> {
        var options = options
        var items: [R] = []
        while true {
            let page = try await list(R.self, namespace: namespace, options: options, onDecodingError: onDecodingError)
            items += page.items
            guard let next = page.metadata.continue, !next.isEmpty else {
                return KubernetesList(metadata: ListMeta(resourceVersion: page.metadata.resourceVersion), items: items)
            }
            options.continue = next
        }
    }

    /// Creates an object in `namespace`, or in its `metadata.namespace`, or in the configured namespace.
    /// - Throws: ``KubernetesError`` `.alreadyExists` when the name is taken.
    public func create<R: KubernetesResource>(_ object: R, namespace: String? = nil, fieldManager: String? = nil)
        async throws -> R
    {
        let resource = R.resourceType
        let path = ResourcePath(
            resource, namespace: namespaceForObject(resource, namespace ?? object.metadata.namespace))
        let query = fieldManager.map { [URLQueryItem(name: "fieldManager", value: $0)] } ?? []
        return try await writeObject(
            .POST, resource, R.self, path: path, body: Body(data: try encode(object), contentType: "application/json"),
            query: query)
    }

    /// Replaces an object (PUT). Set `metadata.resourceVersion` to make it conditional: a stale one fails with
    /// ``KubernetesError`` `.conflict`. Only for objects Apus owns: fields the model lacks are dropped.
    public func update<R: KubernetesResource>(_ object: R, fieldManager: String? = nil) async throws -> R {
        try await put(object, subresource: nil, fieldManager: fieldManager)
    }

    /// Replaces the `/status` subresource of an object (the spec in `object` is ignored by the server).
    public func updateStatus<R: KubernetesResource>(_ object: R, fieldManager: String? = nil) async throws -> R {
        try await put(object, subresource: "status", fieldManager: fieldManager)
    }

    private func put<R: KubernetesResource>(_ object: R, subresource: String?, fieldManager: String?)
        async throws -> R
    {
        let resource = R.resourceType
        let name = try objectName(object.metadata, kind: resource.kind)
        let path = ResourcePath(
            resource, namespace: namespaceForObject(resource, object.metadata.namespace), name: name,
            subresource: subresource)
        let query = fieldManager.map { [URLQueryItem(name: "fieldManager", value: $0)] } ?? []
        return try await writeObject(
            .PUT, resource, R.self, path: path, body: Body(data: try encode(object), contentType: "application/json"),
            query: query)
    }

    /// Patches an object (or its `subresource`, e.g. `"status"`) and returns the result.
    ///
    /// ```swift
    /// let patched: Pod = try await client.patch(
    ///     Pod.self, name: "web-0", namespace: "apus",
    ///     patch: .merge(.object(["metadata": .object(["annotations": .object(["apus.io/seen": .string("true")])])])))
    /// ```
    public func patch<R: KubernetesResource>(
        _ type: R.Type = R.self, name: String, namespace: String? = nil, patch: Patch, subresource: String? = nil
    ) async throws -> R {
        let resource = R.resourceType
        let path = ResourcePath(
            resource, namespace: namespaceForObject(resource, namespace), name: name, subresource: subresource)
        return try await writeObject(
            .PATCH, resource, R.self, path: path, body: Body(data: patch.body, contentType: patch.kind.rawValue),
            query: patch.queryItems)
    }

    /// Patches the `/status` subresource.
    public func patchStatus<R: KubernetesResource>(
        _ type: R.Type = R.self, name: String, namespace: String? = nil, patch: Patch
    ) async throws -> R {
        try await self.patch(R.self, name: name, namespace: namespace, patch: patch, subresource: "status")
    }

    /// Deletes an object. Use `options.preconditions` to delete only a specific incarnation.
    /// - Throws: ``KubernetesError`` `.notFound` when it is already gone, `.conflict` when a precondition fails.
    public func delete<R: KubernetesResource>(
        _ type: R.Type = R.self, name: String, namespace: String? = nil, options: DeleteOptions = DeleteOptions()
    ) async throws {
        try await deleteObject(R.resourceType, name: name, namespace: namespace, options: options)
    }

    /// Opens a watch (`?watch=true&allowWatchBookmarks=true`) from `options.resourceVersion` and returns the
    /// event stream, decoded line by line as bytes arrive. A `nil` namespace watches all namespaces.
    ///
    /// Events that fail to decode are passed to `onDecodingError` (default: logged) and skipped. Most callers
    /// want ``Watcher`` instead, which also lists, resumes and relists.
    ///
    /// ```swift
    /// for try await event in try await client.watch(ConfigMap.self, namespace: "apus",
    ///                                               options: .init(resourceVersion: list.metadata.resourceVersion)) {
    ///     print(event)
    /// }
    /// ```
    public func watch<R: KubernetesResource>(
        _ type: R.Type = R.self, namespace: String? = nil, options: ListOptions = ListOptions(),
        onDecodingError: (@Sendable (KubernetesError) -> Void)? = nil
    ) async throws -> WatchStream<R> {
        try await watchObjects(
            R.resourceType, R.self, namespace: namespace, options: options, onDecodingError: onDecodingError)
    }
}

/// A page of objects of a type Apus does not model, as JSON trees.
public struct UntypedList: Sendable, Hashable {
    public var metadata: ListMeta
    public var items: [JSONValue]

    public init(metadata: ListMeta = ListMeta(), items: [JSONValue] = []) {
        self.metadata = metadata
        self.items = items
    }
}

/// Untyped calls for any resource described by a ``ResourceType`` (CRDs by group/version/plural).
///
/// ```swift
/// let profiles = ResourceType(group: "linkerd.io", version: "v1alpha2", plural: "serviceprofiles",
///                             kind: "ServiceProfile", namespaced: true)
/// let list = try await client.list(profiles, namespace: "apus")
/// ```
extension KubernetesClient {
    public func get(_ resource: ResourceType, name: String, namespace: String? = nil, subresource: String? = nil)
        async throws -> JSONValue
    {
        try await getObject(resource, JSONValue.self, name: name, namespace: namespace, subresource: subresource)
    }

    public func list(_ resource: ResourceType, namespace: String? = nil, options: ListOptions = ListOptions())
        async throws -> UntypedList
    {
        let (metadata, items) = try await listObjects(
            resource, JSONValue.self, namespace: namespace, options: options, onDecodingError: nil)
        return UntypedList(metadata: metadata, items: items)
    }

    /// Creates `object` (which must carry `apiVersion`, `kind` and `metadata`).
    public func create(
        _ resource: ResourceType, _ object: JSONValue, namespace: String? = nil, fieldManager: String? = nil
    ) async throws -> JSONValue {
        let objectNamespace = object["metadata"]?["namespace"]?.stringValue
        let path = ResourcePath(resource, namespace: namespaceForObject(resource, namespace ?? objectNamespace))
        let query = fieldManager.map { [URLQueryItem(name: "fieldManager", value: $0)] } ?? []
        return try await writeObject(
            .POST, resource, JSONValue.self, path: path,
            body: Body(data: try encode(object), contentType: "application/json"), query: query)
    }

    /// Replaces `object` (PUT), or its `subresource` such as `"status"`.
    public func update(_ resource: ResourceType, _ object: JSONValue, subresource: String? = nil) async throws
        -> JSONValue
    {
        guard let name = object["metadata"]?["name"]?.stringValue, !name.isEmpty else {
            throw KubernetesError(code: .badRequest, message: "\(resource.kind) has no metadata.name")
        }
        let namespace = namespaceForObject(resource, object["metadata"]?["namespace"]?.stringValue)
        let path = ResourcePath(resource, namespace: namespace, name: name, subresource: subresource)
        return try await writeObject(
            .PUT, resource, JSONValue.self, path: path,
            body: Body(data: try encode(object), contentType: "application/json"))
    }

    public func updateStatus(_ resource: ResourceType, _ object: JSONValue) async throws -> JSONValue {
        try await update(resource, object, subresource: "status")
    }

    public func patch(
        _ resource: ResourceType, name: String, namespace: String? = nil, patch: Patch, subresource: String? = nil
    ) async throws -> JSONValue {
        let path = ResourcePath(
            resource, namespace: namespaceForObject(resource, namespace), name: name, subresource: subresource)
        return try await writeObject(
            .PATCH, resource, JSONValue.self, path: path,
            body: Body(data: patch.body, contentType: patch.kind.rawValue), query: patch.queryItems)
    }

    public func delete(
        _ resource: ResourceType, name: String, namespace: String? = nil, options: DeleteOptions = DeleteOptions()
    ) async throws {
        try await deleteObject(resource, name: name, namespace: namespace, options: options)
    }

    public func watch(
        _ resource: ResourceType, namespace: String? = nil, options: ListOptions = ListOptions(),
        onDecodingError: (@Sendable (KubernetesError) -> Void)? = nil
    ) async throws -> WatchStream<JSONValue> {
        try await watchObjects(
            resource, JSONValue.self, namespace: namespace, options: options, onDecodingError: onDecodingError)
    }
}
