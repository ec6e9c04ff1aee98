import ApusCore
import ApusDestinationClient
import NIOCore
import NIOHTTP1

/// One destination profile compiled for per-request use: ServiceProfile routes or HTTPRoute rules, the retry
/// budget and the policies, built once when a profile version arrives (``DestinationResolver`` keeps it next to
/// the profile), never per request.
///
/// Precedence follows `docs/destination.md`: a ServiceProfile (source `serviceProfile`) wins and its routes
/// match first-to-last; otherwise the attached HTTPRoutes match by Gateway API precedence; a request nothing
/// matches is the `[DEFAULT]` route, which carries the Service's annotation policy (`servicePolicy`).
///
/// A profile the proxy cannot compile never takes traffic down: a ServiceProfile that fails validation (the
/// controller should not have sent it) leaves its routes out, and an HTTPRoute using a filter Apus does not
/// implement keeps its matches but answers those rules with 500 and an `l5d-proxy-error` naming the filter
/// (failing closed instead of routing differently than the user wrote).
public final class RouteTable: Sendable {
    public let profile: DestinationProfile
    /// Compile problems, for logs (`field: reason`).
    public let problems: [String]
    /// The destination's retry budget (ServiceProfile, or Linkerd's default), shared by its budgeted routes.
    public let budget: RetryBudget
    private let serviceProfile: CompiledServiceProfile?
    private let router: HTTPRouter?
    /// HTTPRoute `namespace/name` → rule index → why that rule fails closed.
    private let failClosedRules: [String: [Int: String]]
    /// HTTPRoute `namespace/name` → the spec, for redirect prefixes.
    private let routeSpecs: [String: HTTPRoute]
    /// BALANCE: HTTPRoute `namespace/name` → rule index → its backends and split key (`backendRefs` weights).
    private let backendsByRule: [String: [Int: (backends: [WeightedBackend], key: String)]]
    private let defaultPlan: RoutePlan
    /// The plan of each ServiceProfile route (same order as its routes), built with the table rather than per
    /// request: a request only picks one.
    private let serviceProfilePlans: [RoutePlan]

    /// - Parameter now: monotonic nanoseconds, the retry budget's start.
    public init(profile: DestinationProfile, now: UInt64 = NIODeadline.now().uptimeNanoseconds) {
        self.profile = profile
        var problems: [String] = []
        var compiledProfile: CompiledServiceProfile?
        do {
            compiledProfile = try profile.compiledServiceProfile()
        } catch {
            problems += error.issues.map { "\($0)" }
        }
        budget = RetryBudget(compiledProfile?.retryBudget ?? .linkerdDefault, now: now)
        if profile.source == .serviceProfile || !(compiledProfile?.routes.isEmpty ?? true) {
            serviceProfile = compiledProfile
            router = nil
            failClosedRules = [:]
            routeSpecs = [:]
            backendsByRule = [:]
        } else {
            serviceProfile = nil
            var compiled: [CompiledHTTPRoute] = []
            var failClosed: [String: [Int: String]] = [:]
            var specs: [String: HTTPRoute] = [:]
            for route in profile.httpRoutes {
                let key = route.objectKey.description
                specs[key] = route
                do {
                    compiled.append(try route.compile())
                } catch {
                    let (sanitized, unsupported) = Self.withoutUnsupportedFilters(route)
                    if !unsupported.isEmpty, let retried = try? sanitized.compile() {
                        compiled.append(retried)
                        failClosed[key] = unsupported
                    } else {
                        problems += error.issues.map { "HTTPRoute \(key): \($0)" }
                    }
                }
            }
            router = compiled.isEmpty ? nil : HTTPRouter(routes: compiled)
            failClosedRules = failClosed
            routeSpecs = specs
            backendsByRule = Self.backends(of: compiled, profile: profile)
        }
        self.problems = problems
        var fallback = RoutePlan.unrouted
        if serviceProfile == nil, let policy = profile.servicePolicy {
            Self.apply(policy, to: &fallback)
        }
        defaultPlan = fallback
        serviceProfilePlans = (serviceProfile?.routes ?? []).map { [budget] route in
            var plan = RoutePlan(name: route.name)
            plan.serviceProfileRoute = route
            plan.requestTimeout = TimeAmount(route.timeout)
            if route.isRetryable { plan.retry = .budgeted(budget) }
            return plan
        }
    }

    /// Whether any request can get something other than the plain `[DEFAULT]` route.
    var hasRoutes: Bool { !(serviceProfile?.routes.isEmpty ?? true) || router != nil }

    /// The plan for one request (method, target and headers as received; `authority` for host matching).
    func plan(for head: HTTPRequestHead, authority: String?) -> RoutePlan {
        if let serviceProfile {
            guard !serviceProfile.routes.isEmpty else { return defaultPlan }
            let request = RouteRequest(method: head.method.rawValue, target: head.uri)
            guard let index = serviceProfile.routeIndex(for: request) else { return defaultPlan }
            return serviceProfilePlans[index]
        }
        guard let router else { return defaultPlan }
        let request = RouteRequest(
            method: head.method.rawValue, target: head.uri, headers: head.headers.map { ($0.name, $0.value) },
            authority: authority)
        guard let match = router.route(request) else { return defaultPlan }
        let key = match.route.key.description
        var plan = RoutePlan(name: match.route.key.name)
        Self.apply(profile.policy(for: match), to: &plan)
        if let reason = failClosedRules[key]?[match.ruleIndex] {
            plan.localAnswer = .failClosed(reason)
            return plan
        }
        if let backends = backendsByRule[key]?[match.ruleIndex] {
            plan.backends = backends.backends
            plan.backendsKey = backends.key
        }
        for filter in match.rule.filters {
            switch filter {
            case .requestHeaderModifier(let modifier): plan.requestFilters.append(modifier)
            case .responseHeaderModifier(let modifier): plan.responseFilters.append(modifier)
            case .requestRedirect(let redirect):
                let prefix = routeSpecs[key].flatMap { Self.matchedPrefix($0, rule: match.ruleIndex, match: match) }
                plan.localAnswer = .redirect(
                    status: redirect.statusCode ?? 302,
                    location: Self.location(redirect, request: request, authority: authority, matchedPrefix: prefix))
            }
        }
        return plan
    }

    /// BALANCE: each rule's Service backends as split targets (`name.namespace.svc.<cluster domain>:port`, the
    /// domain taken from the profile's own name).
    private static func backends(
        of routes: [CompiledHTTPRoute], profile: DestinationProfile
    ) -> [String: [Int: (backends: [WeightedBackend], key: String)]] {
        let name = profile.fullyQualifiedName
        let domain = name.firstRange(of: ".svc.").map { String(name[$0.upperBound...]) } ?? "cluster.local"
        var result: [String: [Int: (backends: [WeightedBackend], key: String)]] = [:]
        for route in routes {
            let key = route.key.description
            for rule in route.rules {
                let backends = WeightedBackend.from(rule: rule, clusterDomain: domain)
                guard !backends.isEmpty else { continue }
                result[key, default: [:]][rule.index] = (backends, "\(name):\(profile.port) \(key)#\(rule.index)")
            }
        }
        return result
    }

    private static func apply(_ policy: RoutePolicy, to plan: inout RoutePlan) {
        plan.requestTimeout = TimeAmount(policy.timeouts.request)
        plan.responseTimeout = TimeAmount(policy.timeouts.response)
        plan.idleTimeout = TimeAmount(policy.timeouts.idle)
        let attempt = [TimeAmount(policy.retry?.timeout), TimeAmount(policy.timeouts.backendRequest)].compactMap { $0 }
        plan.attemptTimeout = attempt.min()
        if let retry = policy.retry, retry.limit > 0 { plan.retry = .limited(retry) }
    }

    /// The route with filters Apus does not implement removed, and which rules lost one (and so fail closed).
    private static func withoutUnsupportedFilters(_ route: HTTPRoute) -> (HTTPRoute, [Int: String]) {
        var route = route
        var unsupported: [Int: String] = [:]
        let key = route.objectKey.description
        for index in (route.spec.rules ?? []).indices {
            guard var rule = route.spec.rules?[index] else { continue }
            var names: [String] = []
            if let filters = rule.filters {
                names += filters.map(\.type).filter { !HTTPRoute.supportedFilterTypes.contains($0) }
                rule.filters = filters.filter { HTTPRoute.supportedFilterTypes.contains($0.type) }
            }
            for backend in (rule.backendRefs ?? []).indices {
                guard let filters = rule.backendRefs?[backend].filters else { continue }
                names += filters.map(\.type).filter { !HTTPRoute.supportedFilterTypes.contains($0) }
                rule.backendRefs?[backend].filters = filters.filter { HTTPRoute.supportedFilterTypes.contains($0.type) }
            }
            if !names.isEmpty {
                unsupported[index] =
                    "HTTPRoute \(key) rule \(index) uses unsupported filter \(names.joined(separator: ", "))"
            }
            route.spec.rules?[index] = rule
        }
        return (route, unsupported)
    }

    /// The `PathPrefix` value the request matched, for `ReplacePrefixMatch` redirects.
    private static func matchedPrefix(_ route: HTTPRoute, rule: Int, match: HTTPRouteMatch) -> String? {
        guard let rules = route.spec.rules, rules.indices.contains(rule) else { return nil }
        guard let matches = rules[rule].matches, matches.indices.contains(match.matchIndex) else { return "/" }
        let path = matches[match.matchIndex].path
        guard (path?.type ?? "PathPrefix") == "PathPrefix" else { return nil }
        return path?.value ?? "/"
    }

    /// The `Location` of a `RequestRedirect` (Gateway API: unset parts keep the request's; a changed scheme
    /// without a port uses the scheme's well-known port, which is then left out).
    static func location(
        _ redirect: HTTPRoute.RequestRedirect, request: RouteRequest, authority: String?, matchedPrefix: String?
    ) -> String {
        let requestAuthority = authority ?? request.headers.first("host") ?? ""
        var requestHost = requestAuthority
        var requestPort: Int?
        if let colon = requestAuthority.lastIndex(of: ":"), !requestAuthority.hasSuffix("]"),
            let port = Int(requestAuthority[requestAuthority.index(after: colon)...])
        {
            requestHost = String(requestAuthority[..<colon])
            requestPort = port
        }
        let scheme = redirect.scheme ?? "http"
        let host = redirect.hostname ?? requestHost
        let port = redirect.port ?? (redirect.scheme == nil ? requestPort : nil)
        var path = request.path
        if let modifier = redirect.path {
            switch modifier.type {
            case "ReplaceFullPath":
                path = modifier.replaceFullPath ?? path
            case "ReplacePrefixMatch":
                if let prefix = matchedPrefix, let replacement = modifier.replacePrefixMatch {
                    var trimmed = Substring(prefix)
                    while trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
                    var rest = path.dropFirst(trimmed.count)
                    var base = Substring(replacement)
                    while base.hasSuffix("/"), !rest.isEmpty { base = base.dropLast() }
                    if base.isEmpty, rest.isEmpty { rest = "/" }
                    path = String(base + rest)
                }
            default:
                break
            }
        }
        let wellKnown = scheme == "https" ? 443 : 80
        let portText = port.map { $0 == wellKnown ? "" : ":\($0)" } ?? ""
        let query = request.query.map { "?\($0)" } ?? ""
        return "\(scheme)://\(host)\(portText)\(path)\(query)"
    }
}

/// Compared by identity: one table per compiled profile version, so equality means "the same version".
extension RouteTable: Hashable {
    public static func == (lhs: RouteTable, rhs: RouteTable) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}
