/// A Linkerd `ServiceProfile` (`linkerd.io/v1alpha2`): per-route metrics names, timeouts, retries, response
/// classification and traffic split for one service, named by the service's FQDN
/// (`web.emojivoto.svc.cluster.local`).
///
/// The wire model is deliberately tolerant: fields whose *meaning* can be wrong (`timeout`, `ttl`, `pathRegex`,
/// `weight`) are kept as the text written, so a malformed profile still decodes and the controller can report
/// what is wrong in `status.conditions`. ``compile()`` turns a valid profile into a ``CompiledServiceProfile``
/// for matching, or throws a ``ValidationError`` listing every problem with its field path.
///
/// Objects stored as `linkerd.io/v1alpha1` have the same shape and decode into this type too; use
/// ``ServiceProfileV1Alpha1`` to list or watch through the v1alpha1 endpoint.
///
/// ```swift
/// let profile = try JSONDecoder().decode(ServiceProfile.self, from: data)
/// let compiled = try profile.compile()
/// compiled.route(for: RouteRequest(method: "GET", target: "/books/7"))?.name  // "GET /books/{id}"
/// ```
public struct ServiceProfile: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "linkerd.io", version: "v1alpha2", plural: "serviceprofiles", kind: "ServiceProfile", namespaced: true)

    /// Every `apiVersion` this type decodes; the CRD serves both and they share one schema.
    public static let supportedAPIVersions: Set<String> = ["linkerd.io/v1alpha2", "linkerd.io/v1alpha1"]

    public var apiVersion: String? = "linkerd.io/v1alpha2"
    public var kind: String? = "ServiceProfile"
    public var metadata: ObjectMeta
    public var spec: Spec
    /// Written by the Apus controller (the CRD has a status subresource); Linkerd itself leaves it empty.
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

    /// `spec`: the profile's routes, retry budget, traffic split and opaque ports.
    public struct Spec: Codable, Hashable, Sendable {
        /// Matched in order; the first route whose condition matches names the request.
        public var routes: [Route]?
        /// Caps retries for the whole service; Linkerd's default applies when absent.
        public var retryBudget: RetryBudget?
        /// Traffic split: send requests to these authorities in proportion to their weights.
        public var dstOverrides: [WeightedDestination]?
        /// `map[uint32]struct{}` in Linkerd's Go types, so JSON keys are port numbers as strings.
        public var opaquePorts: [String: JSONValue]?

        public init(
            routes: [Route]? = nil, retryBudget: RetryBudget? = nil, dstOverrides: [WeightedDestination]? = nil,
            opaquePorts: [String: JSONValue]? = nil
        ) {
            self.routes = routes
            self.retryBudget = retryBudget
            self.dstOverrides = dstOverrides
            self.opaquePorts = opaquePorts
        }
    }

    /// One named route: a request condition plus how to treat matching requests and their responses.
    public struct Route: Codable, Hashable, Sendable {
        /// The `rt_route` metric label, e.g. `GET /books/{id}`; required.
        public var name: String?
        public var condition: RequestMatch?
        /// Checked in order; the first whose condition matches a response decides whether it is a failure.
        public var responseClasses: [ResponseClass]?
        /// Whether failed requests on this route may be retried (within the retry budget).
        public var isRetryable: Bool?
        /// Go duration text such as `300ms`; validated by ``ServiceProfile/compile()``.
        public var timeout: String?

        public init(
            name: String?, condition: RequestMatch?, responseClasses: [ResponseClass]? = nil,
            isRetryable: Bool? = nil, timeout: String? = nil
        ) {
            self.name = name
            self.condition = condition
            self.responseClasses = responseClasses
            self.isRetryable = isRetryable
            self.timeout = timeout
        }
    }

    /// A request predicate. Every field that is set must hold (they combine with AND), so
    /// `{method: GET, pathRegex: /books/\d+}` means "GET and path matches".
    public struct RequestMatch: Codable, Hashable, Sendable {
        public var all: [RequestMatch]?
        public var any: [RequestMatch]?
        /// RE2 syntax, matched against the whole path (without query).
        public var pathRegex: String?
        /// The method token, compared case-sensitively.
        public var method: String?
        // Stored in an array so the struct can contain itself; exposed through `not`.
        private var notStorage: [RequestMatch]?

        public var not: RequestMatch? {
            get { notStorage?.first }
            set { notStorage = newValue.map { [$0] } }
        }

        public init(
            all: [RequestMatch]? = nil, any: [RequestMatch]? = nil, not: RequestMatch? = nil,
            pathRegex: String? = nil, method: String? = nil
        ) {
            self.all = all
            self.any = any
            self.pathRegex = pathRegex
            self.method = method
            self.not = not
        }

        private enum CodingKeys: String, CodingKey {
            case all, any, pathRegex, method
            case notStorage = "not"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            all = try container.decodeIfPresent([RequestMatch].self, forKey: .all)
            any = try container.decodeIfPresent([RequestMatch].self, forKey: .any)
            pathRegex = try container.decodeIfPresent(String.self, forKey: .pathRegex)
            method = try container.decodeIfPresent(String.self, forKey: .method)
            notStorage = try container.decodeIfPresent(RequestMatch.self, forKey: .notStorage).map { [$0] }
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encodeIfPresent(all, forKey: .all)
            try container.encodeIfPresent(any, forKey: .any)
            try container.encodeIfPresent(pathRegex, forKey: .pathRegex)
            try container.encodeIfPresent(method, forKey: .method)
            try container.encodeIfPresent(not, forKey: .notStorage)
        }
    }

    /// Decides whether responses matching `condition` count as failures (for success-rate metrics and retries).
    public struct ResponseClass: Codable, Hashable, Sendable {
        public var condition: ResponseMatch?
        public var isFailure: Bool?

        public init(condition: ResponseMatch?, isFailure: Bool? = nil) {
            self.condition = condition
            self.isFailure = isFailure
        }
    }

    /// A response predicate; set fields combine with AND like ``RequestMatch``.
    public struct ResponseMatch: Codable, Hashable, Sendable {
        public var all: [ResponseMatch]?
        public var any: [ResponseMatch]?
        public var status: StatusRange?
        private var notStorage: [ResponseMatch]?

        public var not: ResponseMatch? {
            get { notStorage?.first }
            set { notStorage = newValue.map { [$0] } }
        }

        public init(
            all: [ResponseMatch]? = nil, any: [ResponseMatch]? = nil, not: ResponseMatch? = nil,
            status: StatusRange? = nil
        ) {
            self.all = all
            self.any = any
            self.status = status
            self.not = not
        }

        private enum CodingKeys: String, CodingKey {
            case all, any, status
            case notStorage = "not"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            all = try container.decodeIfPresent([ResponseMatch].self, forKey: .all)
            any = try container.decodeIfPresent([ResponseMatch].self, forKey: .any)
            status = try container.decodeIfPresent(StatusRange.self, forKey: .status)
            notStorage = try container.decodeIfPresent(ResponseMatch.self, forKey: .notStorage).map { [$0] }
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encodeIfPresent(all, forKey: .all)
            try container.encodeIfPresent(any, forKey: .any)
            try container.encodeIfPresent(status, forKey: .status)
            try container.encodeIfPresent(not, forKey: .notStorage)
        }
    }

    /// An inclusive HTTP status range; an absent (or 0) bound is open, so `{min: 500}` means 500...599.
    public struct StatusRange: Codable, Hashable, Sendable {
        public var min: Int?
        public var max: Int?

        public init(min: Int? = nil, max: Int? = nil) {
            self.min = min
            self.max = max
        }
    }

    /// Limits retries to a fraction of live traffic plus a floor, measured over a sliding window.
    public struct RetryBudget: Codable, Hashable, Sendable {
        /// Extra load retries may add, e.g. 0.2 = 20 % more requests.
        public var retryRatio: Double?
        /// Retries always allowed per second regardless of the ratio.
        public var minRetriesPerSecond: Int?
        /// Window over which the ratio is measured (Go duration text, e.g. `10s`).
        public var ttl: String?

        public init(retryRatio: Double? = nil, minRetriesPerSecond: Int? = nil, ttl: String? = nil) {
            self.retryRatio = retryRatio
            self.minRetriesPerSecond = minRetriesPerSecond
            self.ttl = ttl
        }
    }

    /// One traffic-split target. `weight` is a Kubernetes quantity (`500m`, `1`, `100`) kept as text so a
    /// bad value is reported, not a decoding failure; a JSON number is accepted and kept as its text.
    public struct WeightedDestination: Codable, Hashable, Sendable {
        public var authority: String?
        public var weight: String?

        public init(authority: String?, weight: String?) {
            self.authority = authority
            self.weight = weight
        }

        private enum CodingKeys: String, CodingKey { case authority, weight }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            authority = try container.decodeIfPresent(String.self, forKey: .authority)
            if let number = try? container.decodeIfPresent(Int64.self, forKey: .weight) {
                weight = String(number)
            } else if let number = try? container.decodeIfPresent(Double.self, forKey: .weight) {
                weight = String(number)
            } else {
                weight = try container.decodeIfPresent(String.self, forKey: .weight)
            }
        }
    }

    /// `status`: Apus reports whether the profile is valid and in use as conditions (type `Accepted`).
    public struct Status: Codable, Hashable, Sendable {
        public var conditions: [Condition]?

        public init(conditions: [Condition]? = nil) {
            self.conditions = conditions
        }
    }
}

/// The same object read through `linkerd.io/v1alpha1`, the older served version of the CRD.
///
/// Clusters upgraded from old Linkerd releases may still have manifests applied as v1alpha1; the API server
/// converts on read, so watching v1alpha2 sees them too. This type exists for tools that must address the
/// v1alpha1 endpoint explicitly.
public struct ServiceProfileV1Alpha1: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "linkerd.io", version: "v1alpha1", plural: "serviceprofiles", kind: "ServiceProfile", namespaced: true)

    public var apiVersion: String? = "linkerd.io/v1alpha1"
    public var kind: String? = "ServiceProfile"
    public var metadata: ObjectMeta
    public var spec: ServiceProfile.Spec
    public var status: ServiceProfile.Status?

    public init(metadata: ObjectMeta = ObjectMeta(), spec: ServiceProfile.Spec = .init()) {
        self.metadata = metadata
        self.spec = spec
    }

    public init(from decoder: any Decoder) throws {
        let profile = try ServiceProfile(from: decoder)
        apiVersion = profile.apiVersion
        kind = profile.kind
        metadata = profile.metadata
        spec = profile.spec
        status = profile.status
    }

    /// The v1alpha2 form (identical content, current apiVersion).
    public var v1alpha2: ServiceProfile { ServiceProfile(metadata: metadata, spec: spec, status: status) }
}
