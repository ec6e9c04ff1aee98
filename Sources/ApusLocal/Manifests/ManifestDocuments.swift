import ApusCore
import Foundation
import Yams

/// A manifest problem, naming the file and the document (1-based, in file order) it is in.
public struct ManifestError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        /// The file is not valid YAML/JSON; nothing from it is applied (its previous objects stay).
        case invalidSyntax
        /// A document lacks `apiVersion`, `kind` or `metadata.name`, or a field has the wrong type.
        case invalidObject
        /// The kind is not one local mode serves.
        case unsupportedKind
        /// The file cannot be read.
        case unreadable
    }

    public let code: Code
    public let file: String
    /// 1-based document index; nil when the problem concerns the whole file.
    public let document: Int?
    public let message: String

    public init(_ code: Code, file: String, document: Int? = nil, _ message: String) {
        self.code = code
        self.file = file
        self.document = document
        self.message = message
    }

    public var description: String {
        let location = document.map { "\(file) (document \($0))" } ?? file
        return "\(location): \(message)"
    }
}

/// Parses manifest files the way `kubectl apply -f` reads them: multi-document YAML (JSON is YAML), `List` kinds
/// flattened into their items, empty documents skipped.
public enum ManifestDocuments {
    /// One object from a file, with the document it came from.
    public struct Entry: Sendable, Hashable {
        public var object: JSONValue
        public var document: Int
    }

    /// Every object of `text`; throws ``ManifestError`` `.invalidSyntax` for a file that does not parse.
    public static func parse(_ text: String, file: String) throws(ManifestError) -> [Entry] {
        // Timestamps stay strings (as the API server receives them from kubectl).
        let resolver = Resolver.default.removing(.timestamp)
        var entries: [Entry] = []
        var index = 0
        do {
            var nodes = try Yams.compose_all(yaml: text, resolver)
            while let node = nodes.next() {
                index += 1
                let value = try convert(node, file: file, document: index, at: "")
                if value == .null { continue }
                if value["kind"]?.stringValue?.hasSuffix("List") == true, let items = value["items"]?.arrayValue {
                    entries += items.map { Entry(object: $0, document: index) }
                } else {
                    entries.append(Entry(object: value, document: index))
                }
            }
            if let error = nodes.error { throw error }
        } catch let error as ManifestError {
            throw error
        } catch {
            throw ManifestError(.invalidSyntax, file: file, document: index + 1, "not valid YAML: \(error)")
        }
        return entries
    }

    private static func convert(_ node: Node, file: String, document: Int, at location: String) throws -> JSONValue {
        switch node {
        case .scalar(let scalar):
            switch node.tag.rawValue {
            case Tag.Name.null.rawValue: return .null
            case Tag.Name.bool.rawValue: return node.bool.map(JSONValue.bool) ?? .string(scalar.string)
            case Tag.Name.int.rawValue: return node.int.map { .number(Double($0)) } ?? .string(scalar.string)
            case Tag.Name.float.rawValue: return node.float.map(JSONValue.number) ?? .string(scalar.string)
            default: return .string(scalar.string)
            }
        case .sequence(let sequence):
            return .array(
                try sequence.enumerated().map { index, element in
                    try convert(element, file: file, document: document, at: "\(location)[\(index)]")
                })
        case .mapping(let mapping):
            var object: [String: JSONValue] = [:]
            for (keyNode, valueNode) in mapping {
                guard let key = keyNode.scalar?.string else {
                    throw ManifestError(
                        .invalidSyntax, file: file, document: document, "non-scalar mapping key at \(location)")
                }
                let child = location.isEmpty ? key : "\(location).\(key)"
                guard object[key] == nil else {
                    throw ManifestError(.invalidSyntax, file: file, document: document, "duplicate key \(child)")
                }
                object[key] = try convert(valueNode, file: file, document: document, at: child)
            }
            return .object(object)
        case .alias:
            throw ManifestError(.invalidSyntax, file: file, document: document, "unresolved alias at \(location)")
        }
    }
}

/// The kinds local mode applies, and where the API server serves them.
public enum LocalKinds {
    /// Keyed by `apiVersion` + `/` + `kind`.
    static let table: [String: ResourceType] = {
        var table: [String: ResourceType] = [:]
        func add(_ group: String, _ versions: [String], _ plural: String, _ kind: String, namespaced: Bool = true) {
            for version in versions {
                let type = ResourceType(
                    group: group, version: version, plural: plural, kind: kind, namespaced: namespaced)
                table["\(type.apiVersion)/\(kind)"] = type
            }
        }
        add("", ["v1"], "namespaces", "Namespace", namespaced: false)
        add("", ["v1"], "pods", "Pod")
        add("", ["v1"], "services", "Service")
        add("", ["v1"], "serviceaccounts", "ServiceAccount")
        add("", ["v1"], "configmaps", "ConfigMap")
        add("", ["v1"], "secrets", "Secret")
        add("apps", ["v1"], "deployments", "Deployment")
        add("apps", ["v1"], "statefulsets", "StatefulSet")
        add("discovery.k8s.io", ["v1"], "endpointslices", "EndpointSlice")
        add("linkerd.io", ["v1alpha2", "v1alpha1"], "serviceprofiles", "ServiceProfile")
        add("gateway.networking.k8s.io", ["v1", "v1beta1"], "httproutes", "HTTPRoute")
        add("policy.linkerd.io", ["v1beta3"], "httproutes", "HTTPRoute")
        add("policy.linkerd.io", ["v1beta3"], "servers", "Server")
        add("policy.linkerd.io", ["v1alpha1"], "authorizationpolicies", "AuthorizationPolicy")
        add("policy.linkerd.io", ["v1beta1"], "serverauthorizations", "ServerAuthorization")
        add("policy.linkerd.io", ["v1alpha1"], "meshtlsauthentications", "MeshTLSAuthentication")
        add("policy.linkerd.io", ["v1alpha1"], "networkauthentications", "NetworkAuthentication")
        return table
    }()

    /// The resource for an object's `apiVersion` and `kind`, or nil when local mode does not serve it.
    public static func resourceType(apiVersion: String, kind: String) -> ResourceType? {
        table["\(apiVersion)/\(kind)"]
    }

    /// Every resource type local mode may write (the embedded API server registers the ones it lacks).
    public static var all: [ResourceType] { Array(Set(table.values)).sorted { $0.description < $1.description } }

    /// Creation order: what others refer to first (namespaces, then accounts and config, then services, then
    /// workloads); deletion runs in reverse.
    static func rank(_ kind: String) -> Int {
        switch kind {
        case "Namespace": 0
        case "ServiceAccount", "ConfigMap", "Secret": 1
        case "Service": 2
        case "ServiceProfile", "HTTPRoute", "Server", "AuthorizationPolicy", "ServerAuthorization",
            "MeshTLSAuthentication", "NetworkAuthentication":
            3
        case "Deployment", "StatefulSet", "EndpointSlice": 4
        default: 5  // Pods last, once everything they reference exists.
        }
    }
}
