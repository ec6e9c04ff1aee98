/// A Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`), as used by a mesh: parents are Services
/// (outbound routing) or Servers, rules pick backends by path, header, query and method.
///
/// Like ``ServiceProfile``, the wire model keeps enum-like and semantic fields as text (match types, filter
/// types, durations, regexes) so any route the API server stores decodes; ``compile()`` validates it and
/// reports unsupported features (`URLRewrite`, `RequestMirror`, `ExtensionRef`, …) with field paths, which the
/// controller turns into `status.parents[].conditions`. Filters of unknown types keep their configuration as
/// ``JSONValue`` so nothing is lost on a read–modify–write.
public struct HTTPRoute: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "gateway.networking.k8s.io", version: "v1", plural: "httproutes", kind: "HTTPRoute", namespaced: true)

    public var apiVersion: String? = "gateway.networking.k8s.io/v1"
    public var kind: String? = "HTTPRoute"
    public var metadata: ObjectMeta
    public var spec: Spec
    public var status: Status?

    public init(metadata: ObjectMeta = ObjectMeta(), spec: Spec = Spec(), status: Status? = nil) {
        self.metadata = metadata
        self.spec = spec
        self.status = status
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        apiVersion = try container.decodeIfPresent(String.self, forKey: .apiVersion)
        kind = try container.decodeIfPresent(String.self, forKey: .kind)
        metadata = try container.decodeIfPresent(ObjectMeta.self, forKey: .metadata) ?? ObjectMeta()
        spec = try container.decodeIfPresent(Spec.self, forKey: .spec) ?? Spec()
        status = try container.decodeIfPresent(Status.self, forKey: .status)
    }

    /// `spec`.
    public struct Spec: Codable, Hashable, Sendable {
        /// What the route attaches to: a Gateway, or in a mesh a Service (`group: core` or `""`, `kind: Service`).
        public var parentRefs: [ParentReference]?
        /// Host names (`api.example.com`, `*.example.com`) the route applies to; empty means all.
        public var hostnames: [String]?
        /// Up to 16 rules; with none, the route matches `/` prefix and sends to no backend.
        public var rules: [Rule]?

        public init(parentRefs: [ParentReference]? = nil, hostnames: [String]? = nil, rules: [Rule]? = nil) {
            self.parentRefs = parentRefs
            self.hostnames = hostnames
            self.rules = rules
        }
    }

    /// A reference to a parent resource (`gateway.networking.k8s.io` `ParentReference`).
    public struct ParentReference: Codable, Hashable, Sendable {
        /// Defaults to `gateway.networking.k8s.io`; `core` or `""` with kind `Service` for mesh routes.
        public var group: String?
        /// Defaults to `Gateway`.
        public var kind: String?
        /// Defaults to the route's namespace.
        public var namespace: String?
        public var name: String
        public var port: Int?
        public var sectionName: String?

        public init(
            group: String? = nil, kind: String? = nil, namespace: String? = nil, name: String, port: Int? = nil,
            sectionName: String? = nil
        ) {
            self.group = group
            self.kind = kind
            self.namespace = namespace
            self.name = name
            self.port = port
            self.sectionName = sectionName
        }
    }

    /// One rule: request matches (ORed), filters, and weighted backends.
    public struct Rule: Codable, Hashable, Sendable {
        /// Gateway API ≥ 1.2 lets rules be named (used in metrics and status).
        public var name: String?
        /// ORed; absent or empty means a single `PathPrefix /` match.
        public var matches: [Match]?
        public var filters: [Filter]?
        public var backendRefs: [BackendRef]?
        public var timeouts: Timeouts?

        public init(
            name: String? = nil, matches: [Match]? = nil, filters: [Filter]? = nil, backendRefs: [BackendRef]? = nil,
            timeouts: Timeouts? = nil
        ) {
            self.name = name
            self.matches = matches
            self.filters = filters
            self.backendRefs = backendRefs
            self.timeouts = timeouts
        }
    }

    /// One request match; all present conditions must hold (AND).
    public struct Match: Codable, Hashable, Sendable {
        /// Defaults to `PathPrefix /`.
        public var path: PathMatch?
        public var headers: [HeaderMatch]?
        public var queryParams: [HeaderMatch]?
        public var method: String?

        public init(
            path: PathMatch? = nil, headers: [HeaderMatch]? = nil, queryParams: [HeaderMatch]? = nil,
            method: String? = nil
        ) {
            self.path = path
            self.headers = headers
            self.queryParams = queryParams
            self.method = method
        }
    }

    /// `type` is `Exact`, `PathPrefix` (default) or `RegularExpression`; `value` defaults to `/`.
    public struct PathMatch: Codable, Hashable, Sendable {
        public var type: String?
        public var value: String?

        public init(type: String? = nil, value: String? = nil) {
            self.type = type
            self.value = value
        }
    }

    /// A header or query-parameter match: `type` is `Exact` (default) or `RegularExpression`.
    /// Header names compare case-insensitively; query parameter names exactly.
    public struct HeaderMatch: Codable, Hashable, Sendable {
        public var type: String?
        public var name: String
        public var value: String

        public init(type: String? = nil, name: String, value: String) {
            self.type = type
            self.name = name
            self.value = value
        }
    }

    /// A filter. The three types Apus implements are typed; any other type's configuration is kept in
    /// ``other`` under its JSON key (e.g. `urlRewrite`), so decoding never loses it.
    public struct Filter: Codable, Hashable, Sendable {
        public var type: String
        public var requestHeaderModifier: HeaderModifier?
        public var responseHeaderModifier: HeaderModifier?
        public var requestRedirect: RequestRedirect?
        /// Every other key of the filter object (`urlRewrite`, `requestMirror`, `extensionRef`, …).
        public var other: [String: JSONValue]

        public init(
            type: String, requestHeaderModifier: HeaderModifier? = nil, responseHeaderModifier: HeaderModifier? = nil,
            requestRedirect: RequestRedirect? = nil, other: [String: JSONValue] = [:]
        ) {
            self.type = type
            self.requestHeaderModifier = requestHeaderModifier
            self.responseHeaderModifier = responseHeaderModifier
            self.requestRedirect = requestRedirect
            self.other = other
        }

        private struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(_ string: String) { stringValue = string }
            init?(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        private static let typedKeys: Set<String> = [
            "type", "requestHeaderModifier", "responseHeaderModifier", "requestRedirect",
        ]

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: Key.self)
            type = try container.decode(String.self, forKey: Key("type"))
            requestHeaderModifier = try container.decodeIfPresent(
                HeaderModifier.self, forKey: Key("requestHeaderModifier"))
            responseHeaderModifier = try container.decodeIfPresent(
                HeaderModifier.self, forKey: Key("responseHeaderModifier"))
            requestRedirect = try container.decodeIfPresent(RequestRedirect.self, forKey: Key("requestRedirect"))
            var other: [String: JSONValue] = [:]
            for key in container.allKeys where !Self.typedKeys.contains(key.stringValue) {
                other[key.stringValue] = try container.decode(JSONValue.self, forKey: key)
            }
            self.other = other
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Key.self)
            try container.encode(type, forKey: Key("type"))
            try container.encodeIfPresent(requestHeaderModifier, forKey: Key("requestHeaderModifier"))
            try container.encodeIfPresent(responseHeaderModifier, forKey: Key("responseHeaderModifier"))
            try container.encodeIfPresent(requestRedirect, forKey: Key("requestRedirect"))
            for (key, value) in other where !Self.typedKeys.contains(key) {
                try container.encode(value, forKey: Key(key))
            }
        }
    }

    /// A header name and value, as header modifiers use them.
    public struct Header: Codable, Hashable, Sendable {
        public var name: String
        public var value: String

        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    /// Edits headers: `set` replaces, `add` appends, `remove` deletes (names case-insensitive).
    public struct HeaderModifier: Codable, Hashable, Sendable {
        public var set: [Header]?
        public var add: [Header]?
        public var remove: [String]?

        public init(set: [Header]? = nil, add: [Header]? = nil, remove: [String]? = nil) {
            self.set = set
            self.add = add
            self.remove = remove
        }
    }

    /// Answers with a redirect instead of forwarding; unset parts keep the request's values.
    public struct RequestRedirect: Codable, Hashable, Sendable {
        public var scheme: String?
        public var hostname: String?
        public var path: PathModifier?
        public var port: Int?
        /// 301 (default) or 302.
        public var statusCode: Int?

        public init(
            scheme: String? = nil, hostname: String? = nil, path: PathModifier? = nil, port: Int? = nil,
            statusCode: Int? = nil
        ) {
            self.scheme = scheme
            self.hostname = hostname
            self.path = path
            self.port = port
            self.statusCode = statusCode
        }
    }

    /// `type` is `ReplaceFullPath` (uses ``replaceFullPath``) or `ReplacePrefixMatch` (uses
    /// ``replacePrefixMatch``, valid only with a `PathPrefix` match).
    public struct PathModifier: Codable, Hashable, Sendable {
        public var type: String
        public var replaceFullPath: String?
        public var replacePrefixMatch: String?

        public init(type: String, replaceFullPath: String? = nil, replacePrefixMatch: String? = nil) {
            self.type = type
            self.replaceFullPath = replaceFullPath
            self.replacePrefixMatch = replacePrefixMatch
        }
    }

    /// A backend: by default a Service in the route's namespace.
    public struct BackendRef: Codable, Hashable, Sendable {
        /// Defaults to `""` (core).
        public var group: String?
        /// Defaults to `Service`.
        public var kind: String?
        public var name: String
        /// Defaults to the route's namespace (other namespaces need a ReferenceGrant).
        public var namespace: String?
        /// Required when the backend is a Service.
        public var port: Int?
        /// Relative share of traffic, 0...1,000,000; defaults to 1.
        public var weight: Int?
        /// Per-backend filters; same rules as rule filters.
        public var filters: [Filter]?

        public init(
            group: String? = nil, kind: String? = nil, name: String, namespace: String? = nil, port: Int? = nil,
            weight: Int? = nil, filters: [Filter]? = nil
        ) {
            self.group = group
            self.kind = kind
            self.name = name
            self.namespace = namespace
            self.port = port
            self.weight = weight
            self.filters = filters
        }
    }

    /// GEP-1742 timeouts as Gateway API duration text (`10s`, `500ms`); `0s` disables a timeout.
    public struct Timeouts: Codable, Hashable, Sendable {
        /// For the whole request including retries.
        public var request: String?
        /// For each attempt to a backend; must not exceed ``request``.
        public var backendRequest: String?

        public init(request: String? = nil, backendRequest: String? = nil) {
            self.request = request
            self.backendRequest = backendRequest
        }
    }

    /// `status`: one entry per parent the route is attached to, written by each controller for its parents.
    public struct Status: Codable, Hashable, Sendable {
        public var parents: [ParentStatus]?

        public init(parents: [ParentStatus]? = nil) {
            self.parents = parents
        }
    }

    /// A controller's view of the route for one parent: `Accepted`, `ResolvedRefs` conditions.
    public struct ParentStatus: Codable, Hashable, Sendable {
        public var parentRef: ParentReference
        /// e.g. `linkerd.io/policy-controller`; each controller owns only its own entries.
        public var controllerName: String
        public var conditions: [Condition]?

        public init(parentRef: ParentReference, controllerName: String, conditions: [Condition]? = nil) {
            self.parentRef = parentRef
            self.controllerName = controllerName
            self.conditions = conditions
        }
    }
}
