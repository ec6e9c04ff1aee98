import ApusCore
import Foundation

/// Query options of list and watch calls (`metav1.ListOptions`).
///
/// ```swift
/// var options = ListOptions(labelSelector: LabelSelector().equals("app", "web").string)
/// options.limit = 500
/// let page = try await client.list(Pod.self, namespace: "apus", options: options)
/// ```
public struct ListOptions: Sendable, Hashable {
    public var labelSelector: String?
    public var fieldSelector: String?
    /// With `resourceVersionMatch` unset, `"0"` lets the server answer from its cache.
    public var resourceVersion: String?
    /// `Exact` or `NotOlderThan`.
    public var resourceVersionMatch: String?
    /// Page size; the response's `metadata.continue` fetches the next page.
    public var limit: Int?
    public var `continue`: String?
    /// Server-side timeout of the call; for a watch, when the server ends the stream.
    public var timeoutSeconds: Int?

    public init(
        labelSelector: String? = nil, fieldSelector: String? = nil, resourceVersion: String? = nil,
        resourceVersionMatch: String? = nil, limit: Int? = nil, continue: String? = nil, timeoutSeconds: Int? = nil
    ) {
        self.labelSelector = labelSelector
        self.fieldSelector = fieldSelector
        self.resourceVersion = resourceVersion
        self.resourceVersionMatch = resourceVersionMatch
        self.limit = limit
        self.continue = `continue`
        self.timeoutSeconds = timeoutSeconds
    }

    /// The query parameters in a stable order.
    public var queryItems: [URLQueryItem] {
        var items: [URLQueryItem] = []
        if let labelSelector, !labelSelector.isEmpty {
            items.append(.init(name: "labelSelector", value: labelSelector))
        }
        if let fieldSelector, !fieldSelector.isEmpty {
            items.append(.init(name: "fieldSelector", value: fieldSelector))
        }
        if let resourceVersion { items.append(.init(name: "resourceVersion", value: resourceVersion)) }
        if let resourceVersionMatch {
            items.append(.init(name: "resourceVersionMatch", value: resourceVersionMatch))
        }
        if let limit { items.append(.init(name: "limit", value: String(limit))) }
        if let value = self.continue, !value.isEmpty { items.append(.init(name: "continue", value: value)) }
        if let timeoutSeconds { items.append(.init(name: "timeoutSeconds", value: String(timeoutSeconds))) }
        return items
    }
}

/// Options of a delete call (`metav1.DeleteOptions`), sent as the request body.
public struct DeleteOptions: Sendable, Hashable, Encodable {
    /// `Orphan`, `Background` or `Foreground`.
    public enum PropagationPolicy: String, Sendable, Hashable, Encodable {
        case orphan = "Orphan"
        case background = "Background"
        case foreground = "Foreground"
    }

    /// Delete only if the object still has this uid / resourceVersion; otherwise the server answers 409.
    public struct Preconditions: Sendable, Hashable, Encodable {
        public var uid: String?
        public var resourceVersion: String?
        public init(uid: String? = nil, resourceVersion: String? = nil) {
            self.uid = uid
            self.resourceVersion = resourceVersion
        }
    }

    public var propagationPolicy: PropagationPolicy?
    public var preconditions: Preconditions?
    public var gracePeriodSeconds: Int?

    public init(
        propagationPolicy: PropagationPolicy? = nil, preconditions: Preconditions? = nil,
        gracePeriodSeconds: Int? = nil
    ) {
        self.propagationPolicy = propagationPolicy
        self.preconditions = preconditions
        self.gracePeriodSeconds = gracePeriodSeconds
    }

    var isEmpty: Bool { propagationPolicy == nil && preconditions == nil && gracePeriodSeconds == nil }

    private enum CodingKeys: String, CodingKey {
        case apiVersion, kind, propagationPolicy, preconditions, gracePeriodSeconds
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode("v1", forKey: .apiVersion)
        try container.encode("DeleteOptions", forKey: .kind)
        try container.encodeIfPresent(propagationPolicy, forKey: .propagationPolicy)
        try container.encodeIfPresent(preconditions, forKey: .preconditions)
        try container.encodeIfPresent(gracePeriodSeconds, forKey: .gracePeriodSeconds)
    }
}

/// One RFC 6902 operation of a JSON patch.
public struct JSONPatchOperation: Sendable, Hashable, Encodable {
    public enum Operation: String, Sendable, Hashable, Encodable {
        case add, remove, replace, move, copy, test
    }

    public var op: Operation
    /// JSON pointer, e.g. `/metadata/labels/app` (escape `/` in keys as `~1`).
    public var path: String
    public var value: JSONValue?
    public var from: String?

    public init(op: Operation, path: String, value: JSONValue? = nil, from: String? = nil) {
        self.op = op
        self.path = path
        self.value = value
        self.from = from
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(op, forKey: .op)
        try container.encode(path, forKey: .path)
        if op == .add || op == .replace || op == .test {
            try container.encode(value ?? .null, forKey: .value)
        }
        try container.encodeIfPresent(from, forKey: .from)
    }

    private enum CodingKeys: String, CodingKey { case op, path, value, from }

    /// Escapes a map key for use as one JSON pointer segment.
    public static func escape(_ key: String) -> String {
        key.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
    }
}

/// A patch body together with its content type.
///
/// ```swift
/// let patch = Patch.merge(.object(["metadata": .object(["labels": .object(["tier": .string("web")])])]))
/// let apply = try Patch.apply(myConfigMap, fieldManager: "apus-controller", force: true)
/// ```
public struct Patch: Sendable {
    public enum Kind: String, Sendable, Hashable {
        case merge = "application/merge-patch+json"
        case json = "application/json-patch+json"
        case strategicMerge = "application/strategic-merge-patch+json"
        case apply = "application/apply-patch+yaml"
    }

    public var kind: Kind
    public var body: Data
    /// Required for server-side apply; recorded in `managedFields` for the other kinds.
    public var fieldManager: String?
    /// Server-side apply only: take ownership of fields managed by others instead of failing with a conflict.
    public var force: Bool

    public init(kind: Kind, body: Data, fieldManager: String? = nil, force: Bool = false) {
        self.kind = kind
        self.body = body
        self.fieldManager = fieldManager
        self.force = force
    }

    /// RFC 7386 JSON merge patch: maps merge, `null` deletes, lists are replaced.
    public static func merge(_ value: JSONValue) -> Patch {
        Patch(kind: .merge, body: (try? value.jsonData()) ?? Data("{}".utf8))
    }

    /// RFC 6902 JSON patch.
    public static func json(_ operations: [JSONPatchOperation]) -> Patch {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Patch(kind: .json, body: (try? encoder.encode(operations)) ?? Data("[]".utf8))
    }

    /// Kubernetes strategic merge patch (built-in kinds only; CRDs reject it with 415).
    public static func strategicMerge(_ value: JSONValue) -> Patch {
        Patch(kind: .strategicMerge, body: (try? value.jsonData()) ?? Data("{}".utf8))
    }

    /// Server-side apply of a full intent object (JSON is valid YAML, so the body is JSON).
    public static func apply(_ value: JSONValue, fieldManager: String, force: Bool = false) -> Patch {
        Patch(
            kind: .apply, body: (try? value.jsonData()) ?? Data("{}".utf8), fieldManager: fieldManager, force: force)
    }

    /// Server-side apply of a typed object.
    public static func apply<R: Encodable>(_ object: R, fieldManager: String, force: Bool = false) throws -> Patch {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Patch(kind: .apply, body: try encoder.encode(object), fieldManager: fieldManager, force: force)
    }

    var queryItems: [URLQueryItem] {
        var items: [URLQueryItem] = []
        if let fieldManager { items.append(.init(name: "fieldManager", value: fieldManager)) }
        if kind == .apply, force { items.append(.init(name: "force", value: "true")) }
        return items
    }
}
