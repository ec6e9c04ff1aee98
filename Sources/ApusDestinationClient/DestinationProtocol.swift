import ApusCore

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The Apus destination protocol, version 1: what the controller streams to proxies and how.
///
/// Two long-lived HTTP/2 requests over TLS, each answered with `200` and an endless body of newline-delimited
/// JSON frames (`application/x-ndjson`), one frame per line:
///
/// ```
/// GET /apus.destination.v1/Get?authority=web.shop.svc.cluster.local:80&ns=shop&pod=client-0
///   {"type":"snapshot","version":1,"endpoints":[{"address":"10.0.0.1","port":8080,…}]}
///   {"type":"add","version":2,"endpoints":[…]}      ← replaces any endpoint with the same address:port
///   {"type":"remove","version":3,"addresses":["10.0.0.1:8080"]}
///   {"type":"heartbeat"}
/// GET /apus.destination.v1/GetProfile?authority=web.shop.svc.cluster.local:80&ns=shop
///   {"type":"profile","version":1,"profile":{"fullyQualifiedName":…,"source":"serviceProfile",…}}
/// ```
///
/// `docs/destination.md` is the normative description; these types are its only encoder and decoder, shared by
/// the server (ApusController) and the proxy-side client so the two cannot drift.
public enum DestinationProtocol {
    /// Bumped only for incompatible changes; a server answers other versions' paths with 404.
    public static let version = "v1"
    public static let getPath = "/apus.destination.v1/Get"
    public static let getProfilePath = "/apus.destination.v1/GetProfile"
    public static let contentType = "application/x-ndjson"
    /// Linkerd's default endpoint weight, kept so weights mean the same thing to Linkerd-trained operators.
    public static let defaultWeight = 10_000
    /// The meshed pod port that accepts opaque traffic behind a transport header (Linkerd's inbound port).
    public static let opaqueTransportPort = 4143

    /// Encodes one frame as a single JSON line (sorted keys, so equal frames are equal bytes).
    public static func encodeLine<Frame: Encodable>(_ frame: Frame) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(frame)
        data.append(UInt8(ascii: "\n"))
        return data
    }
}

/// How a proxy should speak to an endpoint.
public enum ProtocolHint: String, Codable, Hashable, Sendable {
    /// The endpoint runs a proxy: upgrade HTTP/1 to HTTP/2 between proxies.
    case http2 = "h2"
    /// The port is opaque (`config.linkerd.io/opaque-ports`): no protocol detection, forward TCP.
    case opaque
}

/// One address of a destination, with what the client proxy needs to connect, verify and label it.
public struct Endpoint: Codable, Hashable, Sendable, Comparable {
    /// An IPv4 or IPv6 address (no brackets).
    public var address: String
    public var port: Int
    /// Relative load-balancing weight; ``DestinationProtocol/defaultWeight`` unless a future policy says
    /// otherwise.
    public var weight: Int
    /// The TLS identity the endpoint's certificate must carry (`<sa>.<ns>.serviceaccount.identity.<ns>.<td>`);
    /// nil for unmeshed endpoints, which are reached without mesh TLS.
    public var identity: String?
    public var protocolHint: ProtocolHint?
    /// For meshed opaque endpoints, the port to send opaque traffic to (with a transport header).
    public var opaqueTransportPort: Int?
    /// `namespace`, `service`, `pod`, `serviceaccount`, `deployment`/`statefulset`/`daemonset`, … for metrics.
    public var labels: [String: String]

    public init(
        address: String, port: Int, weight: Int = DestinationProtocol.defaultWeight, identity: String? = nil,
        protocolHint: ProtocolHint? = nil, opaqueTransportPort: Int? = nil, labels: [String: String] = [:]
    ) {
        self.address = address
        self.port = port
        self.weight = weight
        self.identity = identity
        self.protocolHint = protocolHint
        self.opaqueTransportPort = opaqueTransportPort
        self.labels = labels
    }

    /// `address:port` (`[v6]:port`): the identity of an endpoint within a destination; `remove` frames carry it.
    public var key: String { address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)" }

    public static func < (lhs: Endpoint, rhs: Endpoint) -> Bool { lhs.key < rhs.key }
}

/// The endpoints of a destination keyed by ``Endpoint/key``.
public typealias EndpointSet = [String: Endpoint]

/// What changed between two endpoint sets: `added` holds new endpoints and endpoints whose metadata changed
/// (an add replaces the endpoint with the same key), `removed` the keys that are gone.
public struct EndpointDiff: Hashable, Sendable {
    public var added: [Endpoint]
    public var removed: [String]

    public init(added: [Endpoint] = [], removed: [String] = []) {
        self.added = added
        self.removed = removed
    }

    public var isEmpty: Bool { added.isEmpty && removed.isEmpty }

    /// The diff that turns `old` into `new`, sorted by key so equal inputs give equal frames.
    public static func between(_ old: EndpointSet, _ new: EndpointSet) -> EndpointDiff {
        var added: [Endpoint] = []
        for (key, endpoint) in new where old[key] != endpoint { added.append(endpoint) }
        let removed = old.keys.filter { new[$0] == nil }
        return EndpointDiff(added: added.sorted(), removed: removed.sorted())
    }

    /// Applies this diff to `set`.
    public func apply(to set: inout EndpointSet) {
        for key in removed { set[key] = nil }
        for endpoint in added { set[endpoint.key] = endpoint }
    }
}

/// What a destination resolves to.
public enum Resolution: Hashable, Sendable {
    /// A Service (or pod IP) with these endpoints; empty when nothing is ready.
    case endpoints(EndpointSet)
    /// No such Service (or unknown IP): the proxy forwards to the address as given.
    case notFound
    /// An `ExternalName` Service: the proxy resolves `host` through DNS and connects to it on `port`, without
    /// mesh identity (the name is outside the cluster, as kube-dns's CNAME would send it).
    case external(host: String, port: Int)
}

/// One frame of a `Get` stream.
public enum EndpointFrame: Codable, Hashable, Sendable {
    /// The full set; always the first frame, and sent again when a subscriber fell too far behind for a diff.
    case snapshot(version: UInt64, endpoints: [Endpoint])
    case add(version: UInt64, endpoints: [Endpoint])
    case remove(version: UInt64, addresses: [String])
    /// The destination is not a Service Apus knows (`exists: false`).
    case noEndpoints(version: UInt64, exists: Bool)
    case external(version: UInt64, host: String, port: Int)
    /// Sent every heartbeat interval so both sides notice a dead connection quickly.
    case heartbeat

    private enum CodingKeys: String, CodingKey {
        case type, version, endpoints, addresses, exists, host, port
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let type = try container.decode(String.self, forKey: .type)
        if type == "heartbeat" {
            self = .heartbeat
            return
        }
        let version = try container.decode(UInt64.self, forKey: .version)
        switch type {
        case "snapshot":
            self = .snapshot(version: version, endpoints: try container.decode([Endpoint].self, forKey: .endpoints))
        case "add": self = .add(version: version, endpoints: try container.decode([Endpoint].self, forKey: .endpoints))
        case "remove":
            self = .remove(version: version, addresses: try container.decode([String].self, forKey: .addresses))
        case "noEndpoints":
            self = .noEndpoints(version: version, exists: try container.decode(Bool.self, forKey: .exists))
        case "external":
            self = .external(
                version: version, host: try container.decode(String.self, forKey: .host),
                port: try container.decode(Int.self, forKey: .port))
        default:
            throw DecodingError.dataCorruptedError(
                forKey: .type, in: container, debugDescription: "unknown endpoint frame type '\(type)'")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .snapshot(let version, let endpoints):
            try container.encode("snapshot", forKey: .type)
            try container.encode(version, forKey: .version)
            try container.encode(endpoints, forKey: .endpoints)
        case .add(let version, let endpoints):
            try container.encode("add", forKey: .type)
            try container.encode(version, forKey: .version)
            try container.encode(endpoints, forKey: .endpoints)
        case .remove(let version, let addresses):
            try container.encode("remove", forKey: .type)
            try container.encode(version, forKey: .version)
            try container.encode(addresses, forKey: .addresses)
        case .noEndpoints(let version, let exists):
            try container.encode("noEndpoints", forKey: .type)
            try container.encode(version, forKey: .version)
            try container.encode(exists, forKey: .exists)
        case .external(let version, let host, let port):
            try container.encode("external", forKey: .type)
            try container.encode(version, forKey: .version)
            try container.encode(host, forKey: .host)
            try container.encode(port, forKey: .port)
        case .heartbeat:
            try container.encode("heartbeat", forKey: .type)
        }
    }

    /// The frames that bring a subscriber that has seen `old` to `new` (at `version`): a diff when both are
    /// endpoint sets, else the new state in full.
    public static func frames(from old: Resolution?, to new: Resolution, version: UInt64) -> [EndpointFrame] {
        if case .endpoints(let before)? = old, case .endpoints(let after) = new {
            let diff = EndpointDiff.between(before, after)
            var frames: [EndpointFrame] = []
            if !diff.added.isEmpty { frames.append(.add(version: version, endpoints: diff.added)) }
            if !diff.removed.isEmpty { frames.append(.remove(version: version, addresses: diff.removed)) }
            return frames
        }
        return [snapshot(of: new, version: version)]
    }

    /// The frame that states `resolution` in full.
    public static func snapshot(of resolution: Resolution, version: UInt64) -> EndpointFrame {
        switch resolution {
        case .endpoints(let set): return .snapshot(version: version, endpoints: set.values.sorted())
        case .notFound: return .noEndpoints(version: version, exists: false)
        case .external(let host, let port): return .external(version: version, host: host, port: port)
        }
    }
}

/// Where a destination's profile came from, so operators (and the proxy's logs) can tell which resource is in
/// force.
public enum ProfileSource: String, Codable, Hashable, Sendable {
    /// No ServiceProfile or HTTPRoute applies: no routes, Linkerd's default retry budget.
    case `default`
    /// A ServiceProfile (from the client's namespace or the service's).
    case serviceProfile
    /// HTTPRoutes attached to the Service port (GAMMA).
    case httpRoute
}

/// Everything a proxy needs to route, time out, retry and split requests to one destination.
///
/// Routes travel as the (validated) resource specs and the proxy compiles them with the same ApusCore code the
/// controller validated them with (``compiledServiceProfile()``, ``compiledHTTPRoutes()``), so the wire format
/// is the Kubernetes format users already know.
public struct DestinationProfile: Codable, Hashable, Sendable {
    public var fullyQualifiedName: String
    public var port: Int
    public var source: ProfileSource
    /// `namespace/name` of the ServiceProfile in force, or of each HTTPRoute, for logs and debugging.
    public var resources: [String]
    /// ServiceProfile routes (empty for the other sources).
    public var routes: [ServiceProfile.Route]
    public var retryBudget: ServiceProfile.RetryBudget
    public var dstOverrides: [ServiceProfile.WeightedDestination]
    public var opaquePorts: [Int]
    /// The attached HTTPRoutes, metadata trimmed to what precedence needs (name, namespace, creation time).
    public var httpRoutes: [HTTPRoute]
    /// Retries, timeouts and failure accrual from the Service's Linkerd annotations (protocol v1 addition,
    /// absent when the Service sets none): applies to requests no HTTPRoute matches, and its failure accrual to
    /// the whole destination. Not sent with a ServiceProfile, whose retry budget and route timeouts rule.
    public var servicePolicy: RoutePolicy?
    /// Per attached HTTPRoute (`namespace/name`, as in ``resources``), the Service's annotations overridden by
    /// the route's (protocol v1 addition); a route whose policy equals ``servicePolicy`` is omitted, and the
    /// field is absent when no route differs. The rules' own `timeouts` still win: use ``policy(for:)``.
    public var routePolicies: [String: RoutePolicy]?

    public init(
        fullyQualifiedName: String, port: Int, source: ProfileSource, resources: [String] = [],
        routes: [ServiceProfile.Route] = [], retryBudget: ServiceProfile.RetryBudget = DestinationProfile.defaultBudget,
        dstOverrides: [ServiceProfile.WeightedDestination] = [], opaquePorts: [Int] = [], httpRoutes: [HTTPRoute] = [],
        servicePolicy: RoutePolicy? = nil, routePolicies: [String: RoutePolicy]? = nil
    ) {
        self.fullyQualifiedName = fullyQualifiedName
        self.port = port
        self.source = source
        self.resources = resources
        self.routes = routes
        self.retryBudget = retryBudget
        self.dstOverrides = dstOverrides
        self.opaquePorts = opaquePorts
        self.httpRoutes = httpRoutes
        self.servicePolicy = servicePolicy
        self.routePolicies = routePolicies
    }

    /// The policy for requests matched to `match` (from ``compiledHTTPRoutes()``): the route's annotation
    /// policy (else the Service's) with the rule's own timeouts on top; nil match means no route matched,
    /// which gets the Service's policy.
    public func policy(for match: HTTPRouteMatch?) -> RoutePolicy {
        guard let match else { return servicePolicy ?? RoutePolicy() }
        let base = routePolicies?[match.route.key.description] ?? servicePolicy ?? RoutePolicy()
        return base.applying(match.rule)
    }

    /// Linkerd's budget when no profile sets one: 20 % extra load, 10 retries/s, over 10 s.
    public static let defaultBudget = ServiceProfile.RetryBudget(retryRatio: 0.2, minRetriesPerSecond: 10, ttl: "10s")

    /// The profile served when no resource applies.
    public static func defaultProfile(fullyQualifiedName: String, port: Int) -> DestinationProfile {
        DestinationProfile(fullyQualifiedName: fullyQualifiedName, port: port, source: .default)
    }

    /// The ServiceProfile view of this profile, compiled for per-request matching.
    /// - Throws: ``ValidationError`` only if the controller sent a profile it should have rejected.
    public func compiledServiceProfile() throws(ValidationError) -> CompiledServiceProfile {
        let opaque = Dictionary(uniqueKeysWithValues: opaquePorts.map { (String($0), JSONValue.object([:])) })
        let spec = ServiceProfile.Spec(
            routes: routes, retryBudget: retryBudget, dstOverrides: dstOverrides.isEmpty ? nil : dstOverrides,
            opaquePorts: opaque.isEmpty ? nil : opaque)
        return try ServiceProfile(metadata: ObjectMeta(name: fullyQualifiedName), spec: spec).compile()
    }

    /// The attached HTTPRoutes as a router (empty when the source is not `httpRoute`).
    public func compiledHTTPRoutes() throws(ValidationError) -> HTTPRouter {
        var compiled: [CompiledHTTPRoute] = []
        for route in httpRoutes { compiled.append(try route.compile()) }
        return HTTPRouter(routes: compiled)
    }
}

/// One frame of a `GetProfile` stream.
public enum ProfileFrame: Codable, Hashable, Sendable {
    case profile(version: UInt64, profile: DestinationProfile)
    case heartbeat

    private enum CodingKeys: String, CodingKey { case type, version, profile }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        switch try container.decode(String.self, forKey: .type) {
        case "heartbeat": self = .heartbeat
        case "profile":
            self = .profile(
                version: try container.decode(UInt64.self, forKey: .version),
                profile: try container.decode(DestinationProfile.self, forKey: .profile))
        case let type:
            throw DecodingError.dataCorruptedError(
                forKey: .type, in: container, debugDescription: "unknown profile frame type '\(type)'")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .profile(let version, let profile):
            try container.encode("profile", forKey: .type)
            try container.encode(version, forKey: .version)
            try container.encode(profile, forKey: .profile)
        case .heartbeat:
            try container.encode("heartbeat", forKey: .type)
        }
    }
}
