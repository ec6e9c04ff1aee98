/// Linkerd's retry, timeout and failure-accrual annotations, read from a Service's or an HTTPRoute's
/// `metadata.annotations`.
///
/// Linkerd configures these outside the HTTPRoute spec, so manifests written for Linkerd carry them as
/// annotations; Apus reads the same keys with the same defaults so those manifests behave the same:
///
/// ```swift
/// let service = RoutePolicyAnnotations.parse(service.metadata.annotations, on: .service)
/// let route = RoutePolicyAnnotations.parse(route.metadata.annotations, on: .route)
/// let policy = service.annotations.overridden(by: route.annotations).policy
/// ```
///
/// An invalid value drops only its own key (the other annotations still apply) and is reported as a
/// ``ValidationIssue`` whose field is `metadata.annotations[<key>]`, so a status condition or an Event can name
/// it. Parsing never throws: an annotation typo must not take a working route out of service.
///
/// Precedence, as Linkerd documents it: annotations are grouped (retries, timeouts) and **if a route sets any
/// key of a group, the route's keys replace all of the Service's keys of that group**; groups the route does not
/// mention keep the Service's values. Failure accrual configures the Service's load balancer, so only the
/// Service's annotations count (on a route they are reported and ignored). An HTTPRoute rule's own
/// `timeouts.request`/`timeouts.backendRequest` win over the annotations for that rule
/// (``RoutePolicy/applyingRuleTimeouts(request:backendRequest:)``).
public struct RoutePolicyAnnotations: Hashable, Sendable {
    /// Which kind of object the annotations come from; failure accrual is only read from Services.
    public enum Resource: Hashable, Sendable {
        case service
        case route
    }

    public static let retryHTTPKey = "retry.linkerd.io/http"
    public static let retryGRPCKey = "retry.linkerd.io/grpc"
    public static let retryLimitKey = "retry.linkerd.io/limit"
    public static let retryTimeoutKey = "retry.linkerd.io/timeout"
    public static let requestTimeoutKey = "timeout.linkerd.io/request"
    public static let responseTimeoutKey = "timeout.linkerd.io/response"
    public static let idleTimeoutKey = "timeout.linkerd.io/idle"
    public static let failureAccrualKey = "balancer.linkerd.io/failure-accrual"
    public static let maxFailuresKey = "balancer.linkerd.io/failure-accrual-consecutive-max-failures"
    public static let minPenaltyKey = "balancer.linkerd.io/failure-accrual-consecutive-min-penalty"
    public static let maxPenaltyKey = "balancer.linkerd.io/failure-accrual-consecutive-max-penalty"
    public static let jitterRatioKey = "balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio"

    static let retryKeys = [retryHTTPKey, retryGRPCKey, retryLimitKey, retryTimeoutKey]
    static let timeoutKeys = [requestTimeoutKey, responseTimeoutKey, idleTimeoutKey]
    static let failureAccrualKeys = [failureAccrualKey, maxFailuresKey, minPenaltyKey, maxPenaltyKey, jitterRatioKey]

    /// Linkerd's defaults for consecutive failure accrual.
    public static let defaultMaxFailures = 7
    public static let defaultMinPenalty = GoDuration(nanoseconds: 1_000_000_000)
    public static let defaultMaxPenalty = GoDuration(nanoseconds: 60_000_000_000)
    public static let defaultJitterRatio = 0.5
    /// Linkerd's retry limit when retries are configured without `retry.linkerd.io/limit`.
    public static let defaultRetryLimit = 1

    public var retryHTTP: [HTTPStatusRange]?
    public var retryGRPC: [GRPCRetryCode]?
    public var retryLimit: Int?
    public var retryTimeout: GoDuration?
    public var requestTimeout: GoDuration?
    public var responseTimeout: GoDuration?
    public var idleTimeout: GoDuration?
    /// Set when `balancer.linkerd.io/failure-accrual` is `consecutive` (the only mode outside alpha).
    public var consecutiveFailureAccrual: Bool
    public var maxFailures: Int?
    public var minPenalty: GoDuration?
    public var maxPenalty: GoDuration?
    public var jitterRatio: Double?

    public init(
        retryHTTP: [HTTPStatusRange]? = nil, retryGRPC: [GRPCRetryCode]? = nil, retryLimit: Int? = nil,
        retryTimeout: GoDuration? = nil, requestTimeout: GoDuration? = nil, responseTimeout: GoDuration? = nil,
        idleTimeout: GoDuration? = nil, consecutiveFailureAccrual: Bool = false, maxFailures: Int? = nil,
        minPenalty: GoDuration? = nil, maxPenalty: GoDuration? = nil, jitterRatio: Double? = nil
    ) {
        self.retryHTTP = retryHTTP
        self.retryGRPC = retryGRPC
        self.retryLimit = retryLimit
        self.retryTimeout = retryTimeout
        self.requestTimeout = requestTimeout
        self.responseTimeout = responseTimeout
        self.idleTimeout = idleTimeout
        self.consecutiveFailureAccrual = consecutiveFailureAccrual
        self.maxFailures = maxFailures
        self.minPenalty = minPenalty
        self.maxPenalty = maxPenalty
        self.jitterRatio = jitterRatio
    }

    /// True when any retry key is set (with a valid value).
    public var configuresRetries: Bool {
        retryHTTP != nil || retryGRPC != nil || retryLimit != nil || retryTimeout != nil
    }

    /// True when any `timeout.linkerd.io/*` key is set (with a valid value).
    public var configuresTimeouts: Bool { requestTimeout != nil || responseTimeout != nil || idleTimeout != nil }

    /// Reads the policy annotations of one object; other annotations are ignored.
    ///
    /// - Returns: the valid values, and one issue per invalid (dropped) key, fields `metadata.annotations[<key>]`.
    public static func parse(
        _ annotations: [String: String]?, on resource: Resource
    ) -> (annotations: RoutePolicyAnnotations, issues: [ValidationIssue]) {
        var result = RoutePolicyAnnotations()
        var issues = IssueCollector()
        guard let annotations else { return (result, []) }
        func field(_ key: String) -> String { "metadata.annotations[\(key)]" }

        if let text = annotations[retryHTTPKey] {
            result.retryHTTP = parseStatusRanges(text, field: field(retryHTTPKey), &issues)
        }
        if let text = annotations[retryGRPCKey] {
            result.retryGRPC = parseGRPCCodes(text, field: field(retryGRPCKey), &issues)
        }
        if let text = annotations[retryLimitKey] {
            result.retryLimit = parseInteger(text, in: 0...Int(UInt32.max), field: field(retryLimitKey), &issues)
        }
        result.retryTimeout = parseDuration(annotations[retryTimeoutKey], field: field(retryTimeoutKey), &issues)
        result.requestTimeout = parseDuration(
            annotations[requestTimeoutKey], field: field(requestTimeoutKey), &issues)
        result.responseTimeout = parseDuration(
            annotations[responseTimeoutKey], field: field(responseTimeoutKey), &issues)
        result.idleTimeout = parseDuration(annotations[idleTimeoutKey], field: field(idleTimeoutKey), &issues)

        switch resource {
        case .route:
            for key in failureAccrualKeys where annotations[key] != nil {
                issues.add(
                    field(key), "failure accrual configures the Service's load balancer; set it on the Service")
            }
        case .service:
            parseFailureAccrual(annotations, into: &result, field: field, &issues)
        }
        return (result, issues.issues)
    }

    private static func parseFailureAccrual(
        _ annotations: [String: String], into result: inout RoutePolicyAnnotations, field: (String) -> String,
        _ issues: inout IssueCollector
    ) {
        guard let mode = annotations[failureAccrualKey] else { return }
        guard mode.trimmingSpaces == "consecutive" else {
            issues.add(field(failureAccrualKey), "failure accrual mode '\(mode)' is not supported (use consecutive)")
            return
        }
        result.consecutiveFailureAccrual = true
        if let text = annotations[maxFailuresKey] {
            result.maxFailures = parseInteger(text, in: 1...Int(UInt32.max), field: field(maxFailuresKey), &issues)
        }
        result.minPenalty = parseDuration(annotations[minPenaltyKey], field: field(minPenaltyKey), &issues)
        result.maxPenalty = parseDuration(annotations[maxPenaltyKey], field: field(maxPenaltyKey), &issues)
        if let minPenalty = result.minPenalty, minPenalty == .zero {
            issues.add(field(minPenaltyKey), "min penalty must be greater than 0")
            result.minPenalty = nil
        }
        if let maxPenalty = result.maxPenalty, maxPenalty == .zero {
            issues.add(field(maxPenaltyKey), "max penalty must be greater than 0")
            result.maxPenalty = nil
        }
        let effectiveMin = result.minPenalty ?? defaultMinPenalty
        let effectiveMax = result.maxPenalty ?? defaultMaxPenalty
        if effectiveMin > effectiveMax {
            // Which bound is wrong is a guess, so both user-set bounds go back to Linkerd's consistent defaults.
            for (key, value) in [(minPenaltyKey, result.minPenalty), (maxPenaltyKey, result.maxPenalty)]
            where value != nil {
                issues.add(field(key), "min penalty \(effectiveMin) must not exceed max penalty \(effectiveMax)")
            }
            result.minPenalty = nil
            result.maxPenalty = nil
        }
        if let text = annotations[jitterRatioKey] {
            let trimmed = text.trimmingSpaces
            if let ratio = Double(trimmed), ratio.isFinite, (0...100).contains(ratio) {
                result.jitterRatio = ratio
            } else {
                issues.add(field(jitterRatioKey), "'\(text)' is not a number between 0 and 100")
            }
        }
    }

    /// A clause for a status condition or an Event saying which annotations are ignored and why
    /// (`ignored invalid annotations: metadata.annotations[retry.linkerd.io/limit]: 'x' is not …`); nil when
    /// `issues` is empty.
    public static func ignoredAnnotationsMessage(_ issues: [ValidationIssue]) -> String? {
        guard !issues.isEmpty else { return nil }
        return "ignored invalid annotations: " + issues.map(\.description).joined(separator: "; ")
    }

    /// These annotations (a Service's) with `route`'s on top: a group the route mentions replaces the Service's
    /// whole group; failure accrual always stays the Service's.
    public func overridden(by route: RoutePolicyAnnotations) -> RoutePolicyAnnotations {
        var merged = self
        if route.configuresRetries {
            merged.retryHTTP = route.retryHTTP
            merged.retryGRPC = route.retryGRPC
            merged.retryLimit = route.retryLimit
            merged.retryTimeout = route.retryTimeout
        }
        if route.configuresTimeouts {
            merged.requestTimeout = route.requestTimeout
            merged.responseTimeout = route.responseTimeout
            merged.idleTimeout = route.idleTimeout
        }
        return merged
    }

    /// The policy with Linkerd's defaults applied: retries (limit 1, `5xx` when no condition is given) only
    /// when a retry key is set and the limit is not 0; zero timeouts mean "none".
    public var policy: RoutePolicy {
        var policy = RoutePolicy()
        let limit = retryLimit ?? Self.defaultRetryLimit
        if configuresRetries && limit > 0 {
            let defaultConditions = retryHTTP == nil && retryGRPC == nil
            policy.retry = RoutePolicy.Retry(
                limit: limit, httpStatuses: defaultConditions ? [.serverErrors] : retryHTTP ?? [],
                grpcCodes: retryGRPC ?? [], timeout: retryTimeout.nonZero)
        }
        policy.timeouts = RoutePolicy.Timeouts(
            request: requestTimeout.nonZero, response: responseTimeout.nonZero, idle: idleTimeout.nonZero)
        if consecutiveFailureAccrual {
            policy.failureAccrual = RoutePolicy.FailureAccrual(
                consecutiveMaxFailures: maxFailures ?? Self.defaultMaxFailures,
                minPenalty: minPenalty ?? Self.defaultMinPenalty, maxPenalty: maxPenalty ?? Self.defaultMaxPenalty,
                jitterRatio: jitterRatio ?? Self.defaultJitterRatio)
        }
        return policy
    }

    private static func parseStatusRanges(
        _ text: String, field: String, _ issues: inout IssueCollector
    ) -> [HTTPStatusRange]? {
        var ranges: [HTTPStatusRange] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let element = String(item).trimmingSpaces.lowercased()
            if let range = HTTPStatusRange(parsing: element) {
                ranges.append(range)
            } else {
                issues.add(
                    field,
                    "'\(element)' is not a status code (100-599), a range like 500-504, 5xx or gateway-error")
                return nil
            }
        }
        return ranges
    }

    private static func parseGRPCCodes(
        _ text: String, field: String, _ issues: inout IssueCollector
    ) -> [GRPCRetryCode]? {
        var codes: [GRPCRetryCode] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let element = String(item).trimmingSpaces.lowercased()
            guard let code = GRPCRetryCode(rawValue: element) else {
                let known = GRPCRetryCode.allCases.map(\.rawValue).joined(separator: ", ")
                issues.add(field, "'\(element)' is not a gRPC status name (one of \(known))")
                return nil
            }
            if !codes.contains(code) { codes.append(code) }
        }
        return codes
    }

    private static func parseInteger(
        _ text: String, in range: ClosedRange<Int>, field: String, _ issues: inout IssueCollector
    ) -> Int? {
        guard let value = Int(text.trimmingSpaces), range.contains(value) else {
            issues.add(field, "'\(text)' is not an integer in \(range.lowerBound)-\(range.upperBound)")
            return nil
        }
        return value
    }

    private static func parseDuration(
        _ text: String?, field: String, _ issues: inout IssueCollector
    ) -> GoDuration? {
        guard let text else { return nil }
        do {
            let duration = try GoDuration(parsing: text.trimmingSpaces)
            guard duration >= .zero else {
                issues.add(field, "duration '\(text)' must not be negative")
                return nil
            }
            return duration
        } catch {
            issues.add(field, error.description)
            return nil
        }
    }
}

/// An inclusive range of HTTP status codes to retry.
public struct HTTPStatusRange: Codable, Hashable, Sendable, CustomStringConvertible {
    public var lower: Int
    public var upper: Int

    public init(lower: Int, upper: Int) {
        self.lower = lower
        self.upper = upper
    }

    /// `5xx`: every server error.
    public static let serverErrors = HTTPStatusRange(lower: 500, upper: 599)
    /// `gateway-error`: 502 Bad Gateway, 503 Service Unavailable, 504 Gateway Timeout.
    public static let gatewayErrors = HTTPStatusRange(lower: 502, upper: 504)

    /// `5xx`, `gateway-error`, `503` or `500-504` (lower-case, trimmed); nil for anything else, including
    /// codes outside 100-599 and reversed ranges.
    public init?(parsing text: String) {
        switch text {
        case "5xx": self = .serverErrors
        case "gateway-error": self = .gatewayErrors
        default:
            let bounds = text.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count == 1 || bounds.count == 2,
                bounds.allSatisfy({ !$0.isEmpty && $0.utf8.allSatisfy { $0 >= 48 && $0 <= 57 } }),
                let lower = Int(bounds[0]), let upper = Int(bounds[bounds.count - 1]),
                (100...599).contains(lower), (100...599).contains(upper), lower <= upper
            else { return nil }
            self.init(lower: lower, upper: upper)
        }
    }

    public func contains(_ status: Int) -> Bool { (lower...upper).contains(status) }

    public var description: String { lower == upper ? "\(lower)" : "\(lower)-\(upper)" }
}

/// gRPC status codes by the kebab-case names Linkerd's `retry.linkerd.io/grpc` uses.
public enum GRPCRetryCode: String, Codable, Hashable, Sendable, CaseIterable {
    case cancelled
    case unknown
    case invalidArgument = "invalid-argument"
    case deadlineExceeded = "deadline-exceeded"
    case notFound = "not-found"
    case alreadyExists = "already-exists"
    case permissionDenied = "permission-denied"
    case resourceExhausted = "resource-exhausted"
    case failedPrecondition = "failed-precondition"
    case aborted
    case outOfRange = "out-of-range"
    case unimplemented
    case `internal`
    case unavailable
    case dataLoss = "data-loss"
    case unauthenticated

    /// The numeric code carried in `grpc-status`.
    public var code: Int {
        switch self {
        case .cancelled: return 1
        case .unknown: return 2
        case .invalidArgument: return 3
        case .deadlineExceeded: return 4
        case .notFound: return 5
        case .alreadyExists: return 6
        case .permissionDenied: return 7
        case .resourceExhausted: return 8
        case .failedPrecondition: return 9
        case .aborted: return 10
        case .outOfRange: return 11
        case .unimplemented: return 12
        case .internal: return 13
        case .unavailable: return 14
        case .dataLoss: return 15
        case .unauthenticated: return 16
        }
    }
}

/// Retries, timeouts and failure accrual for the requests of one route (or of a Service when no route
/// matches), as the proxy applies them; built by ``RoutePolicyAnnotations/policy``.
public struct RoutePolicy: Codable, Hashable, Sendable {
    /// Count-limited retries (the HTTPRoute model; ServiceProfiles use a retry budget instead).
    public struct Retry: Codable, Hashable, Sendable {
        /// Retries after the first attempt; at least 1.
        public var limit: Int
        /// Response statuses that are retried.
        public var httpStatuses: [HTTPStatusRange]
        /// `grpc-status` values that are retried.
        public var grpcCodes: [GRPCRetryCode]
        /// Per-attempt timeout; a timed-out attempt may be retried.
        public var timeout: GoDuration?

        public init(
            limit: Int, httpStatuses: [HTTPStatusRange] = [], grpcCodes: [GRPCRetryCode] = [],
            timeout: GoDuration? = nil
        ) {
            self.limit = limit
            self.httpStatuses = httpStatuses
            self.grpcCodes = grpcCodes
            self.timeout = timeout
        }
    }

    /// nil means no timeout of that kind.
    public struct Timeouts: Codable, Hashable, Sendable {
        /// The whole request, retries included (`timeout.linkerd.io/request`, or the rule's `timeouts.request`).
        public var request: GoDuration?
        /// From the end of the request until the response ends (`timeout.linkerd.io/response`).
        public var response: GoDuration?
        /// With no data in either direction (`timeout.linkerd.io/idle`).
        public var idle: GoDuration?
        /// Each backend attempt (the rule's `timeouts.backendRequest`); with a retry timeout the shorter applies.
        public var backendRequest: GoDuration?

        public init(
            request: GoDuration? = nil, response: GoDuration? = nil, idle: GoDuration? = nil,
            backendRequest: GoDuration? = nil
        ) {
            self.request = request
            self.response = response
            self.idle = idle
            self.backendRequest = backendRequest
        }

        public var isEmpty: Bool { request == nil && response == nil && idle == nil && backendRequest == nil }
    }

    /// Consecutive-failures circuit breaking: after `consecutiveMaxFailures` failures in a row an endpoint is
    /// ejected for a penalty growing exponentially from `minPenalty` to `maxPenalty`, jittered by `jitterRatio`.
    public struct FailureAccrual: Codable, Hashable, Sendable {
        public var consecutiveMaxFailures: Int
        public var minPenalty: GoDuration
        public var maxPenalty: GoDuration
        public var jitterRatio: Double

        public init(consecutiveMaxFailures: Int, minPenalty: GoDuration, maxPenalty: GoDuration, jitterRatio: Double) {
            self.consecutiveMaxFailures = consecutiveMaxFailures
            self.minPenalty = minPenalty
            self.maxPenalty = maxPenalty
            self.jitterRatio = jitterRatio
        }
    }

    /// nil: no retries.
    public var retry: Retry?
    public var timeouts: Timeouts
    /// nil: endpoints are never ejected for failures.
    public var failureAccrual: FailureAccrual?

    public init(retry: Retry? = nil, timeouts: Timeouts = Timeouts(), failureAccrual: FailureAccrual? = nil) {
        self.retry = retry
        self.timeouts = timeouts
        self.failureAccrual = failureAccrual
    }

    /// True when the policy changes nothing about how requests are sent.
    public var isEmpty: Bool { retry == nil && timeouts.isEmpty && failureAccrual == nil }

    /// The policy for one HTTPRoute rule: the rule's own `timeouts.request` and `timeouts.backendRequest`
    /// (GEP-1742, already parsed with `0s` as nil by ``HTTPRoute/compile()``) win over the annotations.
    public func applyingRuleTimeouts(request: GoDuration?, backendRequest: GoDuration?) -> RoutePolicy {
        var policy = self
        if let request { policy.timeouts.request = request }
        if let backendRequest { policy.timeouts.backendRequest = backendRequest }
        return policy
    }

    /// ``applyingRuleTimeouts(request:backendRequest:)`` with a compiled rule's timeouts.
    public func applying(_ rule: CompiledHTTPRoute.Rule) -> RoutePolicy {
        applyingRuleTimeouts(request: rule.requestTimeout, backendRequest: rule.backendRequestTimeout)
    }
}

extension Optional where Wrapped == GoDuration {
    /// Zero durations mean "no timeout" in Linkerd's annotations, as in Gateway API timeouts.
    fileprivate var nonZero: GoDuration? {
        guard let self, self != .zero else { return nil }
        return self
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        var slice = Substring(self)
        while let first = slice.first, first == " " || first == "\t" { slice = slice.dropFirst() }
        while let last = slice.last, last == " " || last == "\t" { slice = slice.dropLast() }
        return String(slice)
    }
}
