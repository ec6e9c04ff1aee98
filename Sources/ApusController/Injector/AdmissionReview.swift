import ApusCore
import Foundation

/// admission.k8s.io/v1 AdmissionReview: what kube-apiserver POSTs to a webhook and what the webhook answers.
///
/// Only the fields the injector reads or writes are modelled; unknown fields are ignored on decoding.
public struct AdmissionReview: Codable, Sendable, Hashable {
    public static let apiVersion = "admission.k8s.io/v1"
    public static let kind = "AdmissionReview"

    public var apiVersion: String?
    public var kind: String?
    public var request: AdmissionRequest?
    public var response: AdmissionResponse?

    public init(request: AdmissionRequest? = nil, response: AdmissionResponse? = nil) {
        self.apiVersion = Self.apiVersion
        self.kind = Self.kind
        self.request = request
        self.response = response
    }
}

/// `group`/`version`/`kind` of the object under review.
public struct GroupVersionKind: Codable, Sendable, Hashable {
    public var group: String
    public var version: String
    public var kind: String

    public init(group: String, version: String, kind: String) {
        self.group = group
        self.version = version
        self.kind = kind
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        group = try c.decodeIfPresent(String.self, forKey: .group) ?? ""
        version = try c.decodeIfPresent(String.self, forKey: .version) ?? ""
        kind = try c.decodeIfPresent(String.self, forKey: .kind) ?? ""
    }
}

/// `group`/`version`/`resource` (plural) of the request's URL.
public struct GroupVersionResource: Codable, Sendable, Hashable {
    public var group: String
    public var version: String
    public var resource: String

    public init(group: String, version: String, resource: String) {
        self.group = group
        self.version = version
        self.resource = resource
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        group = try c.decodeIfPresent(String.self, forKey: .group) ?? ""
        version = try c.decodeIfPresent(String.self, forKey: .version) ?? ""
        resource = try c.decodeIfPresent(String.self, forKey: .resource) ?? ""
    }
}

public struct AdmissionRequest: Codable, Sendable, Hashable {
    /// Echoed in the response; the API server refuses an answer with another uid.
    public var uid: String
    public var kind: GroupVersionKind?
    public var resource: GroupVersionResource?
    public var subResource: String?
    /// Empty for objects created with `generateName` (the name is chosen after admission).
    public var name: String?
    public var namespace: String?
    /// CREATE, UPDATE, DELETE or CONNECT.
    public var operation: String?
    /// The object as it will be stored, kept verbatim so the patch is computed on every field it has.
    public var object: JSONValue?
    public var dryRun: Bool?

    public init(
        uid: String, kind: GroupVersionKind? = nil, resource: GroupVersionResource? = nil, name: String? = nil,
        namespace: String? = nil, operation: String? = nil, object: JSONValue? = nil
    ) {
        self.uid = uid
        self.kind = kind
        self.resource = resource
        self.name = name
        self.namespace = namespace
        self.operation = operation
        self.object = object
    }
}

public struct AdmissionResponse: Codable, Sendable, Hashable {
    public var uid: String
    public var allowed: Bool
    /// `JSONPatch` whenever ``patch`` is set.
    public var patchType: String?
    /// The RFC 6902 patch, base64-encoded (as `[]byte` is in Go's JSON).
    public var patch: String?
    /// Shown by kubectl as `Warning: …` lines.
    public var warnings: [String]?
    public var status: Status?

    public init(
        uid: String, allowed: Bool = true, patchType: String? = nil, patch: String? = nil, warnings: [String]? = nil,
        status: Status? = nil
    ) {
        self.uid = uid
        self.allowed = allowed
        self.patchType = patchType
        self.patch = patch
        self.warnings = warnings
        self.status = status
    }

    /// The decoded patch operations, or nil when the response carries none or it does not decode.
    public var patchOperations: JSONValue? {
        guard let patch, let data = Data(base64Encoded: patch) else { return nil }
        return try? JSONValue(json: data)
    }
}
