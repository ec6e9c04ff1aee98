#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Identifies a REST resource on the API server: where it lives (group/version/plural) and how it is scoped.
///
/// Every typed resource in Apus names its `ResourceType`; the API client builds URLs from it and the API test
/// server routes by the same parts, so the two cannot disagree about paths.
///
/// ```swift
/// let pods = ResourceType(group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true)
/// pods.apiVersion // "v1"
/// ```
public struct ResourceType: Hashable, Sendable, CustomStringConvertible {
    /// API group; empty for the core ("legacy") group served under `/api`.
    public var group: String
    public var version: String
    /// Lower-case plural used in URLs, e.g. `serviceprofiles`.
    public var plural: String
    public var kind: String
    public var namespaced: Bool

    public init(group: String, version: String, plural: String, kind: String, namespaced: Bool) {
        self.group = group
        self.version = version
        self.plural = plural
        self.kind = kind
        self.namespaced = namespaced
    }

    /// `v1` for the core group, `group/version` otherwise, as written in a manifest's `apiVersion`.
    public var apiVersion: String { group.isEmpty ? version : "\(group)/\(version)" }

    /// The URL prefix of the group version: `/api/v1` or `/apis/<group>/<version>`.
    public var groupVersionPath: String { group.isEmpty ? "/api/\(version)" : "/apis/\(group)/\(version)" }

    public var description: String { group.isEmpty ? "\(plural)/\(version)" : "\(plural).\(version).\(group)" }
}

/// A Kubernetes object that Apus reads or writes with typed Swift values.
public protocol KubernetesResource: Codable, Sendable {
    static var resourceType: ResourceType { get }
    var metadata: ObjectMeta { get set }
}

extension KubernetesResource {
    /// `namespace/name` for namespaced objects, `name` for cluster-scoped ones: the key of stores and work queues.
    public var objectKey: ObjectKey { ObjectKey(namespace: metadata.namespace, name: metadata.name ?? "") }
}

/// The identity of an object within one resource type.
public struct ObjectKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var namespace: String?
    public var name: String

    public init(namespace: String?, name: String) {
        self.namespace = namespace.flatMap { $0.isEmpty ? nil : $0 }
        self.name = name
    }

    /// Parses `ns/name` or `name`.
    public init(_ string: String) {
        if let slash = string.firstIndex(of: "/") {
            self.init(namespace: String(string[..<slash]), name: String(string[string.index(after: slash)...]))
        } else {
            self.init(namespace: nil, name: string)
        }
    }

    public var description: String { namespace.map { "\($0)/\(name)" } ?? name }

    public static func < (lhs: ObjectKey, rhs: ObjectKey) -> Bool { lhs.description < rhs.description }
}

/// `apiVersion` and `kind`, present on every serialized object.
public struct TypeMeta: Codable, Hashable, Sendable {
    public var apiVersion: String?
    public var kind: String?

    public init(apiVersion: String? = nil, kind: String? = nil) {
        self.apiVersion = apiVersion
        self.kind = kind
    }
}

public struct OwnerReference: Codable, Hashable, Sendable {
    public var apiVersion: String
    public var kind: String
    public var name: String
    public var uid: String
    public var controller: Bool?
    public var blockOwnerDeletion: Bool?

    public init(
        apiVersion: String, kind: String, name: String, uid: String, controller: Bool? = nil,
        blockOwnerDeletion: Bool? = nil
    ) {
        self.apiVersion = apiVersion
        self.kind = kind
        self.name = name
        self.uid = uid
        self.controller = controller
        self.blockOwnerDeletion = blockOwnerDeletion
    }
}

/// Standard object metadata (`metav1.ObjectMeta`), the fields Apus reads and writes.
public struct ObjectMeta: Codable, Hashable, Sendable {
    public var name: String?
    public var generateName: String?
    public var namespace: String?
    public var uid: String?
    public var resourceVersion: String?
    public var generation: Int64?
    public var labels: [String: String]?
    public var annotations: [String: String]?
    public var ownerReferences: [OwnerReference]?
    public var finalizers: [String]?
    public var creationTimestamp: Timestamp?
    public var deletionTimestamp: Timestamp?
    public var deletionGracePeriodSeconds: Int64?

    public init(
        name: String? = nil, generateName: String? = nil, namespace: String? = nil, uid: String? = nil,
        resourceVersion: String? = nil, generation: Int64? = nil, labels: [String: String]? = nil,
        annotations: [String: String]? = nil, ownerReferences: [OwnerReference]? = nil, finalizers: [String]? = nil,
        creationTimestamp: Timestamp? = nil, deletionTimestamp: Timestamp? = nil
    ) {
        self.name = name
        self.generateName = generateName
        self.namespace = namespace
        self.uid = uid
        self.resourceVersion = resourceVersion
        self.generation = generation
        self.labels = labels
        self.annotations = annotations
        self.ownerReferences = ownerReferences
        self.finalizers = finalizers
        self.creationTimestamp = creationTimestamp
        self.deletionTimestamp = deletionTimestamp
    }
}

/// List metadata: the collection's resourceVersion (the point a watch resumes from) and pagination token.
public struct ListMeta: Codable, Hashable, Sendable {
    public var resourceVersion: String?
    /// Set when the server has more items; pass it back as `continue` to fetch the next page.
    public var `continue`: String?
    public var remainingItemCount: Int64?

    public init(resourceVersion: String? = nil, continue: String? = nil) {
        self.resourceVersion = resourceVersion
        self.continue = `continue`
    }
}

/// A typed list response such as `PodList`.
public struct KubernetesList<Item: KubernetesResource>: Codable, Sendable {
    public var apiVersion: String?
    public var kind: String?
    public var metadata: ListMeta
    public var items: [Item]

    public init(metadata: ListMeta = ListMeta(), items: [Item]) {
        self.apiVersion = Item.resourceType.apiVersion
        self.kind = Item.resourceType.kind + "List"
        self.metadata = metadata
        self.items = items
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        apiVersion = try container.decodeIfPresent(String.self, forKey: .apiVersion)
        kind = try container.decodeIfPresent(String.self, forKey: .kind)
        metadata = try container.decodeIfPresent(ListMeta.self, forKey: .metadata) ?? ListMeta()
        // The API server encodes an empty list as `null`.
        items = try container.decodeIfPresent([Item].self, forKey: .items) ?? []
    }
}

/// A `metav1.Condition`, the shape used by status subresources of CRDs (ServiceProfile, HTTPRoute parents).
public struct Condition: Codable, Hashable, Sendable {
    public var type: String
    /// "True", "False" or "Unknown".
    public var status: String
    public var reason: String?
    public var message: String?
    public var observedGeneration: Int64?
    public var lastTransitionTime: Timestamp?

    public init(
        type: String, status: String, reason: String? = nil, message: String? = nil,
        observedGeneration: Int64? = nil, lastTransitionTime: Timestamp? = nil
    ) {
        self.type = type
        self.status = status
        self.reason = reason
        self.message = message
        self.observedGeneration = observedGeneration
        self.lastTransitionTime = lastTransitionTime
    }
}

extension Array where Element == Condition {
    /// Sets a condition by type, keeping `lastTransitionTime` when the status did not change (as `meta.SetStatusCondition`).
    public mutating func set(_ condition: Condition, now: Date = Date()) {
        var new = condition
        if let index = firstIndex(where: { $0.type == condition.type }) {
            if self[index].status == condition.status {
                new.lastTransitionTime = self[index].lastTransitionTime ?? Timestamp(now)
            } else {
                new.lastTransitionTime = condition.lastTransitionTime ?? Timestamp(now)
            }
            self[index] = new
        } else {
            new.lastTransitionTime = condition.lastTransitionTime ?? Timestamp(now)
            append(new)
        }
    }

    public subscript(type type: String) -> Condition? { first { $0.type == type } }
}

/// `metav1.Status`: the body of every API error and of some successful deletes.
public struct Status: Codable, Hashable, Sendable, Error {
    public struct Cause: Codable, Hashable, Sendable {
        public var reason: String?
        public var message: String?
        public var field: String?

        public init(reason: String? = nil, message: String? = nil, field: String? = nil) {
            self.reason = reason
            self.message = message
            self.field = field
        }
    }

    public struct Details: Codable, Hashable, Sendable {
        public var name: String?
        public var group: String?
        public var kind: String?
        public var uid: String?
        public var causes: [Cause]?
        public var retryAfterSeconds: Int?

        public init(
            name: String? = nil, group: String? = nil, kind: String? = nil, causes: [Cause]? = nil,
            retryAfterSeconds: Int? = nil
        ) {
            self.name = name
            self.group = group
            self.kind = kind
            self.causes = causes
            self.retryAfterSeconds = retryAfterSeconds
        }
    }

    public var apiVersion: String? = "v1"
    public var kind: String? = "Status"
    public var metadata: ListMeta?
    /// "Success" or "Failure".
    public var status: String?
    public var message: String?
    /// Machine-readable reason such as `NotFound`, `AlreadyExists`, `Conflict`, `Expired`, `Gone`.
    public var reason: String?
    public var details: Details?
    public var code: Int?

    public init(
        status: String? = "Failure", message: String? = nil, reason: String? = nil, details: Details? = nil,
        code: Int? = nil
    ) {
        self.status = status
        self.message = message
        self.reason = reason
        self.details = details
        self.code = code
        self.metadata = ListMeta()
    }
}
