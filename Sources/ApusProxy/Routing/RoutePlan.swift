import ApusCore
import NIOCore
import NIOHTTP1

/// How the proxy treats one request once its route is known: the `rt_route` name, timeouts, retries, header
/// edits and whether it is answered locally (redirect, unsupported filter).
///
/// Built per request by ``RouteTable/plan(for:authority:)`` from data compiled once per profile version (it
/// holds references to that data; nothing is parsed or compiled per request).
struct RoutePlan {
    /// Linkerd's name for requests no route matches.
    static let defaultRouteName = "[DEFAULT]"

    /// How failed attempts may be retried.
    enum Retry {
        case none
        /// A ServiceProfile `isRetryable` route: failures as its response classes say, bounded by the budget.
        case budgeted(RetryBudget)
        /// HTTPRoute `retry.linkerd.io/*`: up to `limit` retries of the listed statuses / gRPC codes.
        case limited(RoutePolicy.Retry)
    }

    /// What the proxy answers itself instead of forwarding.
    enum LocalAnswer {
        case redirect(status: Int, location: String)
        /// A rule the proxy cannot apply faithfully fails closed (500) rather than routing differently.
        case failClosed(String)
    }

    var name: String
    /// The whole exchange, retries included.
    var requestTimeout: TimeAmount?
    /// From the end of the request until the response ends.
    var responseTimeout: TimeAmount?
    /// Each attempt, until its response head.
    var attemptTimeout: TimeAmount?
    /// The longest the exchange may go without a part moving either way (`timeout.linkerd.io/idle`).
    var idleTimeout: TimeAmount?
    var retry: Retry = .none
    /// The ServiceProfile route's response classes; nil means Linkerd's default (5xx is a failure).
    var serviceProfileRoute: CompiledServiceProfile.Route?
    var requestFilters: [HTTPRoute.HeaderModifier] = []
    var responseFilters: [HTTPRoute.HeaderModifier] = []
    var localAnswer: LocalAnswer?
    /// BALANCE: the matched HTTPRoute rule's weighted backends (empty: no split), and the key its traffic split
    /// is kept under (destination, route and rule; precomputed so the request path builds no string).
    var backends: [WeightedBackend] = []
    var backendsKey = ""

    static let unrouted = RoutePlan(name: defaultRouteName)

    /// Whether the route can retry at all (so the request body must be kept for replay).
    var mayRetry: Bool {
        if case .none = retry { return false }
        return true
    }

    /// Whether the response counts as a failure for metrics and budgeted retries.
    func isFailure(status: Int, grpcStatus: Int?) -> Bool {
        if let route = serviceProfileRoute { return route.isFailure(status: status) }
        return (500...599).contains(status) || (grpcStatus ?? 0) != 0
    }

    /// Whether an attempt that answered `status` (and `grpc-status` in its head, for trailers-only gRPC
    /// responses) should be retried, budget and limits aside.
    func isRetryable(status: Int, grpcStatus: Int?) -> Bool {
        switch retry {
        case .none:
            return false
        case .budgeted:
            return isFailure(status: status, grpcStatus: grpcStatus)
        case .limited(let policy):
            if policy.httpStatuses.contains(where: { $0.contains(status) }) { return true }
            if let grpcStatus, grpcStatus != 0 { return policy.grpcCodes.contains { $0.code == grpcStatus } }
            return false
        }
    }
}

extension HTTPRoute.HeaderModifier {
    /// Applies the Gateway API semantics: `set` replaces, `add` appends, `remove` deletes (names are
    /// case-insensitive).
    func apply(to headers: inout HTTPHeaders) {
        for header in set ?? [] { headers.replaceOrAdd(name: header.name, value: header.value) }
        for header in add ?? [] { headers.add(name: header.name, value: header.value) }
        for name in remove ?? [] { headers.remove(name: name) }
    }
}

extension TimeAmount {
    init?(_ duration: GoDuration?) {
        guard let duration, duration.nanoseconds > 0 else { return nil }
        self = .nanoseconds(duration.nanoseconds)
    }
}
