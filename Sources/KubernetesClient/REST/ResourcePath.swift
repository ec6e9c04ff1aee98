import ApusCore
import Foundation

/// The REST path of a collection, an object or a subresource, built from a ``ResourceType``.
///
/// ```swift
/// ResourcePath(Pod.resourceType, namespace: "apus", name: "web-0", subresource: "status").path
/// // "/api/v1/namespaces/apus/pods/web-0/status"
/// ResourcePath(Namespace.resourceType).path  // "/api/v1/namespaces"
/// ```
///
/// A namespace given for a cluster-scoped type is ignored; a namespaced type without one addresses the
/// collection across all namespaces (list and watch only).
public struct ResourcePath: Sendable, Hashable, CustomStringConvertible {
    public var resource: ResourceType
    public var namespace: String?
    public var name: String?
    public var subresource: String?

    public init(_ resource: ResourceType, namespace: String? = nil, name: String? = nil, subresource: String? = nil) {
        self.resource = resource
        self.namespace = namespace.flatMap { $0.isEmpty ? nil : $0 }
        self.name = name
        self.subresource = subresource
    }

    public var path: String {
        var path = resource.groupVersionPath
        if resource.namespaced, let namespace {
            path += "/namespaces/\(Self.escapeSegment(namespace))"
        }
        path += "/\(resource.plural)"
        if let name {
            path += "/\(Self.escapeSegment(name))"
            if let subresource { path += "/\(subresource)" }
        }
        return path
    }

    public var description: String { path }

    /// The full URL string for a server base URL (which may carry a path prefix, as behind an API proxy).
    public func url(base: URL, query: [URLQueryItem] = []) -> String {
        var base = base.absoluteString
        while base.hasSuffix("/") { base.removeLast() }
        var url = base + path
        if !query.isEmpty {
            url +=
                "?"
                + query.map { "\(Self.escapeQuery($0.name))=\(Self.escapeQuery($0.value ?? ""))" }
                .joined(separator: "&")
        }
        return url
    }

    private static let unreserved: CharacterSet = {
        var set = CharacterSet()
        set.insert(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
        return set
    }()

    private static let segmentAllowed: CharacterSet = unreserved.union(CharacterSet(charactersIn: ":@"))

    static func escapeSegment(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: segmentAllowed) ?? value
    }

    /// Everything outside the unreserved set is escaped, so selectors like `tier in (a,b)` and `!legacy` and
    /// continue tokens with `+`/`=` survive intact.
    static func escapeQuery(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: unreserved) ?? value
    }
}
