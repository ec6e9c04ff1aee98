import ApusCore

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Which exchanges a tap subscriber wants, evaluated in the proxy (server side) when the request event is built,
/// so unwanted exchanges never reach the subscriber's buffer. Every condition given must hold.
///
/// The JSON body of `POST /apus.tap.v1/Observe` (every field optional; `{}` taps everything):
/// ```json
/// {"pathPrefix": "/books", "pathRegex": "/books/\\d+", "method": "GET", "authority": "web.shop:80",
///  "to": {"namespace": "shop", "resource": "deployment/web"}, "from": {"resource": "pod/load-7f9c"},
///  "bufferSize": 1000}
/// ```
public struct TapFilter: Sendable {
    public enum PathMatch: Sendable, Hashable {
        /// The path (query excluded) starts with this text.
        case prefix(String)
        /// The whole path (query excluded) matches this RE2 pattern, anchored as ServiceProfile `pathRegex` is.
        case regex(RouteRegex)
    }

    public var paths: [PathMatch] = []
    /// Compared case-sensitively, as HTTP methods are.
    public var method: String?
    /// Compared case-insensitively against the request's authority (`Host` / `:authority`).
    public var authority: String?
    /// The destination workload (the endpoint for outbound traffic, this pod for inbound).
    public var to: TapResourceFilter?
    /// The source workload (this pod for outbound traffic, the verified caller for inbound).
    public var from: TapResourceFilter?
    /// Events the subscriber's buffer holds while its connection cannot take more; beyond it events are dropped.
    public var bufferSize = TapFilter.defaultBufferSize

    public static let defaultBufferSize = 1000
    public static let bufferSizeLimit = 100_000

    public init() {}

    public func matches(_ request: TapRequestInfo) -> Bool {
        if let method, request.method != method { return false }
        if let authority {
            guard let requestAuthority = request.authority,
                Self.equalIgnoringASCIICase(requestAuthority, authority)
            else { return false }
        }
        if !paths.isEmpty {
            let path = request.pathWithoutQuery
            for match in paths {
                switch match {
                case .prefix(let prefix): if !path.hasPrefix(prefix) { return false }
                case .regex(let regex): if !regex.matchesWhole(path) { return false }
                }
            }
        }
        if let to, !to.matches(request.destination.labels) { return false }
        if let from, !from.matches(request.source.labels) { return false }
        return true
    }

    /// Parses a filter body; an empty body is the match-everything filter.
    /// - Throws: ``TapFilterError`` naming the field that is wrong.
    public static func parse(json bytes: [UInt8]) throws(TapFilterError) -> TapFilter {
        var filter = TapFilter()
        if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return filter }
        let body: TapFilterRequest
        do {
            body = try JSONDecoder().decode(TapFilterRequest.self, from: Data(bytes))
        } catch let DecodingError.typeMismatch(_, context) {
            throw TapFilterError(field: Self.path(context.codingPath), problem: context.debugDescription)
        } catch let DecodingError.dataCorrupted(context) where !context.codingPath.isEmpty {
            throw TapFilterError(field: Self.path(context.codingPath), problem: context.debugDescription)
        } catch {
            throw TapFilterError(field: nil, problem: "the body is not a JSON object")
        }
        if let prefix = body.pathPrefix {
            guard prefix.hasPrefix("/") else {
                throw TapFilterError(field: "pathPrefix", problem: "'\(prefix)' does not start with '/'")
            }
            filter.paths.append(.prefix(prefix))
        }
        if let pattern = body.pathRegex {
            do throws(RouteRegexError) {
                filter.paths.append(.regex(try RouteRegex(pattern)))
            } catch {
                throw TapFilterError(field: "pathRegex", problem: error.description)
            }
        }
        if let method = body.method {
            guard !method.isEmpty, method.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw TapFilterError(field: "method", problem: "'\(method)' is not an HTTP method")
            }
            filter.method = method.uppercased()
        }
        if let authority = body.authority {
            guard !authority.isEmpty else { throw TapFilterError(field: "authority", problem: "is empty") }
            filter.authority = authority
        }
        filter.to = try body.to.map { body throws(TapFilterError) in try TapResourceFilter(body, field: "to") }
        filter.from = try body.from.map { body throws(TapFilterError) in try TapResourceFilter(body, field: "from") }
        if let size = body.bufferSize {
            guard (1...bufferSizeLimit).contains(size) else {
                throw TapFilterError(field: "bufferSize", problem: "\(size) is not from 1 to \(bufferSizeLimit)")
            }
            filter.bufferSize = size
        }
        return filter
    }

    /// Authorities are ASCII (IDNA names, IP literals), so an ASCII fold is exact and needs no Unicode tables.
    static func equalIgnoringASCIICase(_ lhs: String, _ rhs: String) -> Bool {
        lhs.utf8.elementsEqual(rhs.utf8) { left, right in
            left == right || (left | 0x20 == right | 0x20 && (0x61...0x7A).contains(left | 0x20))
        }
    }

    private static func path(_ codingPath: [any CodingKey]) -> String {
        codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }
}

/// A workload as `kubectl`/`linkerd viz tap` names it: an optional namespace and an optional `kind/name`
/// (`deployment/web`, `deploy/web`, `pod/web-0`, `sa/web`, `ns/shop`), matched against an event side's labels.
public struct TapResourceFilter: Sendable, Hashable {
    public var namespace: String?
    /// The label naming this kind of resource (`deployment`, `pod`, …) and the value it must have.
    public var kind: String?
    public var name: String?

    public init(namespace: String? = nil, kind: String? = nil, name: String? = nil) {
        self.namespace = namespace
        self.kind = kind
        self.name = name
    }

    /// Short names and plurals as kubectl accepts them → the label key destination metadata uses.
    static let kinds: [String: String] = [
        "pod": "pod", "pods": "pod", "po": "pod",
        "deployment": "deployment", "deployments": "deployment", "deploy": "deployment",
        "statefulset": "statefulset", "statefulsets": "statefulset", "sts": "statefulset",
        "daemonset": "daemonset", "daemonsets": "daemonset", "ds": "daemonset",
        "replicaset": "replicaset", "replicasets": "replicaset", "rs": "replicaset",
        "job": "job", "jobs": "job",
        "cronjob": "cronjob", "cronjobs": "cronjob", "cj": "cronjob",
        "serviceaccount": "serviceaccount", "serviceaccounts": "serviceaccount", "sa": "serviceaccount",
        "service": "service", "services": "service", "svc": "service",
        "namespace": "namespace", "namespaces": "namespace", "ns": "namespace",
    ]

    init(_ body: TapFilterRequest.Resource, field: String) throws(TapFilterError) {
        namespace = body.namespace.flatMap { $0.isEmpty ? nil : $0 }
        if let resource = body.resource, !resource.isEmpty {
            let parts = resource.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[1].isEmpty, let kind = Self.kinds[parts[0].lowercased()] else {
                throw TapFilterError(
                    field: "\(field).resource",
                    problem: "'\(resource)' is not kind/name with a known kind (pod, deployment, statefulset, "
                        + "daemonset, replicaset, job, cronjob, serviceaccount, service, namespace)")
            }
            self.kind = kind
            name = String(parts[1])
        }
    }

    public func matches(_ labels: [String: String]) -> Bool {
        if let namespace, labels["namespace"] != namespace { return false }
        if let kind, let name, labels[kind] != name { return false }
        return true
    }
}

/// A tap filter body that cannot be used; ``description`` names the field.
public struct TapFilterError: Error, Sendable, Hashable, CustomStringConvertible {
    public var field: String?
    public var problem: String

    public var description: String {
        field.map { "tap filter field '\($0)': \(problem)" } ?? "tap filter: \(problem)"
    }
}
