/// Picks the winning HTTPRoute rule for a request among all routes attached to one parent, using the
/// Gateway API precedence rules.
///
/// Precedence, continuing on ties:
/// 1. the most specific matching hostname (exact beats wildcard, longer beats shorter, any beats none);
/// 2. an `Exact` path, then `RegularExpression` (Linkerd's choice; the spec leaves it open), then the longest
///    `PathPrefix` by characters;
/// 3. a method match present;
/// 4. more header matches; 5. more query parameter matches;
/// 6. the oldest route by `creationTimestamp`; 7. `namespace/name` alphabetically;
/// 8. rule order, then match order within the route.
///
/// Everything except the hostname is request-independent, so matches are sorted once at construction and a
/// request scans them in order, stopping at the first hit in the best hostname tier.
///
/// ```swift
/// let router = HTTPRouter(routes: try routes.map { try $0.compile() })
/// if let match = router.route(request) {
///     forward(to: match.rule.backends, timeout: match.rule.requestTimeout)
/// }
/// ```
public struct HTTPRouter: Sendable {
    private struct Candidate: Sendable {
        let routeIndex: Int
        let ruleIndex: Int
        let matchIndex: Int
        let matcher: RequestMatcher
    }

    /// The routes, in the order given.
    public let routes: [CompiledHTTPRoute]
    private let candidates: [Candidate]

    public init(routes: [CompiledHTTPRoute]) {
        self.routes = routes
        var candidates: [Candidate] = []
        for (routeIndex, route) in routes.enumerated() {
            for (ruleIndex, rule) in route.rules.enumerated() {
                for (matchIndex, matcher) in rule.matches.enumerated() {
                    candidates.append(
                        Candidate(
                            routeIndex: routeIndex, ruleIndex: ruleIndex, matchIndex: matchIndex, matcher: matcher))
                }
            }
        }
        let keys = routes.map(\.key.description)
        candidates.sort { a, b in
            let x = a.matcher
            let y = b.matcher
            if x.pathRank != y.pathRank { return x.pathRank > y.pathRank }
            if x.pathLength != y.pathLength { return x.pathLength > y.pathLength }
            if (x.method != nil) != (y.method != nil) { return x.method != nil }
            if x.headers.count != y.headers.count { return x.headers.count > y.headers.count }
            if x.queryParams.count != y.queryParams.count { return x.queryParams.count > y.queryParams.count }
            if a.routeIndex != b.routeIndex {
                switch (routes[a.routeIndex].creationTimestamp, routes[b.routeIndex].creationTimestamp) {
                case (let t?, let u?) where t != u: return t < u
                case (.some, nil): return true
                case (nil, .some): return false
                default: break
                }
                if keys[a.routeIndex] != keys[b.routeIndex] { return keys[a.routeIndex] < keys[b.routeIndex] }
                return a.routeIndex < b.routeIndex
            }
            if a.ruleIndex != b.ruleIndex { return a.ruleIndex < b.ruleIndex }
            return a.matchIndex < b.matchIndex
        }
        self.candidates = candidates
    }

    /// The winning route and rule for `request`, or nil when no rule matches (the proxy answers 404).
    ///
    /// The request host is `hostname` when given, else ``RouteRequest/authority`` or the `Host` header, with
    /// any port and trailing dot removed.
    public func route(_ request: RouteRequest, hostname: String? = nil) -> HTTPRouteMatch? {
        let host = Self.normalizedHost(hostname ?? request.authority ?? request.headers.first("host"))
        var scores: [Int?] = []
        scores.reserveCapacity(routes.count)
        var bestPossible = -1
        for route in routes {
            let score = Self.hostScore(route.hostnames, host: host)
            scores.append(score)
            if let score { bestPossible = max(bestPossible, score) }
        }
        guard bestPossible >= 0 else { return nil }
        var best: (score: Int, candidate: Candidate)?
        for candidate in candidates {
            guard let score = scores[candidate.routeIndex] else { continue }
            if let best, score <= best.score { continue }
            if candidate.matcher.matches(request) {
                best = (score, candidate)
                if score == bestPossible { break }
            }
        }
        guard let best else { return nil }
        return HTTPRouteMatch(
            route: routes[best.candidate.routeIndex], ruleIndex: best.candidate.ruleIndex,
            matchIndex: best.candidate.matchIndex)
    }

    /// nil when the route does not apply to `host`; otherwise higher is more specific.
    static func hostScore(_ hostnames: [String], host: String?) -> Int? {
        if hostnames.isEmpty { return 0 }
        guard let host else { return nil }
        var best: Int?
        for hostname in hostnames {
            if hostname.hasPrefix("*.") {
                let suffix = hostname.dropFirst(1)  // ".example.com"
                if host.count > suffix.count, host.hasSuffix(suffix) { best = max(best ?? 0, 1_000 + suffix.count) }
            } else if hostname == host {
                best = max(best ?? 0, 10_000 + hostname.count)
            }
        }
        return best
    }

    static func normalizedHost(_ authority: String?) -> String? {
        guard let authority, !authority.isEmpty else { return nil }
        var text = Substring(authority)
        if text.hasPrefix("[") {
            if let close = text.firstIndex(of: "]") { text = text[...close] }
        } else if let colon = text.lastIndex(of: ":") {
            text = text[..<colon]
        }
        if text.hasSuffix(".") { text = text.dropLast() }
        return text.lowercased()
    }
}

/// The result of ``HTTPRouter/route(_:hostname:)``: which route, rule and match won.
public struct HTTPRouteMatch: Sendable {
    public let route: CompiledHTTPRoute
    /// Index into `route.rules` (and `spec.rules`).
    public let ruleIndex: Int
    /// Index into the rule's `matches`; 0 for a rule without matches (its implicit `PathPrefix /`).
    public let matchIndex: Int

    /// The winning rule: its filters, backends and timeouts.
    public var rule: CompiledHTTPRoute.Rule { route.rules[ruleIndex] }
}
