/// A validated ServiceProfile ready for per-request use: regexes compiled, durations and weights parsed.
///
/// Built once per profile change by ``ServiceProfile/compile()`` and then shared read-only by every request,
/// so ``route(for:)`` does no parsing and no allocation beyond what the caller passes in.
///
/// ```swift
/// let compiled = try profile.compile()
/// if let route = compiled.route(for: request) {
///     route.timeout          // GoDuration? (nil: no per-route timeout)
///     route.isRetryable
///     route.isFailure(status: 503)
/// }
/// ```
public struct CompiledServiceProfile: Sendable {
    /// Routes in profile order.
    public let routes: [Route]
    /// The profile's retry budget, or ``RetryBudget/linkerdDefault`` when it sets none.
    public let retryBudget: RetryBudget
    /// Traffic-split targets in profile order; empty when the profile does not split.
    public let destinationOverrides: [DestinationOverride]
    /// Ports the profile marks as opaque (no protocol detection).
    public let opaquePorts: Set<UInt16>
    /// Each route's condition, apart from the routes so the per-request scan touches only what it tests.
    private let matchers: [RouteMatcher]

    init(
        routes: [Route], retryBudget: RetryBudget, destinationOverrides: [DestinationOverride],
        opaquePorts: Set<UInt16>
    ) {
        self.routes = routes
        self.retryBudget = retryBudget
        self.destinationOverrides = destinationOverrides
        self.opaquePorts = opaquePorts
        self.matchers = routes.map { RouteMatcher(flat: $0.flatCondition, tree: $0.condition) }
    }

    /// The first route whose condition matches, or nil (the request is then unrouted: default classification,
    /// no timeout, not retryable).
    public func route(for request: RouteRequest) -> Route? {
        routeIndex(for: request).map { routes[$0] }
    }

    /// The index in ``routes`` of ``route(for:)``, for callers that keep per-route data alongside.
    public func routeIndex(for request: RouteRequest) -> Int? {
        for (index, matcher) in matchers.enumerated() where matcher.matches(request) { return index }
        return nil
    }

    /// One route's condition in the form matching uses. A class, so the scan over the routes retains one
    /// reference per route instead of copying (and retaining every field of) a struct.
    private final class RouteMatcher: Sendable {
        private let method: String?
        private let path: RouteRegex?
        private let otherPaths: [RouteRegex]
        /// Set when the condition is not a flat conjunction.
        private let tree: RequestCondition?

        init(flat: FlatRequestCondition?, tree: RequestCondition) {
            method = flat?.method
            path = flat?.path
            otherPaths = flat?.otherPaths ?? []
            self.tree = flat == nil ? tree : nil
        }

        func matches(_ request: RouteRequest) -> Bool {
            if tree != nil { return tree?.matches(request) == true }
            if method != nil, request.method != method { return false }
            if path?.matchesWhole(request.path) == false { return false }
            for path in otherPaths where !path.matchesWhole(request.path) { return false }
            return true
        }
    }

    /// Linkerd's classification when no route or response class applies: any 5xx is a failure.
    public static func defaultIsFailure(status: Int) -> Bool { (500...599).contains(status) }

    /// A compiled route.
    public struct Route: Sendable {
        /// The route name, used as the `rt_route` metric label.
        public let name: String
        /// nil when the route sets no timeout or sets `0`.
        public let timeout: GoDuration?
        public let isRetryable: Bool
        let condition: RequestCondition
        let responseClasses: [(condition: ResponseCondition, isFailure: Bool)]
        /// ``condition`` as a flat conjunction, when it is one (nearly every route: `method` and/or `pathRegex`).
        let flatCondition: FlatRequestCondition?

        init(
            name: String, timeout: GoDuration?, isRetryable: Bool, condition: RequestCondition,
            responseClasses: [(condition: ResponseCondition, isFailure: Bool)]
        ) {
            self.name = name
            self.timeout = timeout
            self.isRetryable = isRetryable
            self.condition = condition
            self.responseClasses = responseClasses
            self.flatCondition = FlatRequestCondition(condition)
        }

        /// Whether a response with `status` counts as a failure: the first response class whose condition
        /// matches decides; with none matching, 5xx is a failure.
        public func isFailure(status: Int) -> Bool {
            for responseClass in responseClasses where responseClass.condition.matches(status: status) {
                return responseClass.isFailure
            }
            return CompiledServiceProfile.defaultIsFailure(status: status)
        }
    }

    /// A validated retry budget.
    public struct RetryBudget: Hashable, Sendable {
        public let retryRatio: Double
        public let minRetriesPerSecond: UInt32
        public let ttl: GoDuration

        public init(retryRatio: Double, minRetriesPerSecond: UInt32, ttl: GoDuration) {
            self.retryRatio = retryRatio
            self.minRetriesPerSecond = minRetriesPerSecond
            self.ttl = ttl
        }

        /// What Linkerd's destination service sends when a profile has no budget: 20 %, 10/s, over 10 s.
        public static let linkerdDefault = RetryBudget(
            retryRatio: 0.2, minRetriesPerSecond: 10, ttl: GoDuration(nanoseconds: 10_000_000_000))
    }

    /// A validated traffic-split target.
    public struct DestinationOverride: Hashable, Sendable {
        /// The authority as written with the host's trailing dot removed (`web-v2.ns.svc.cluster.local:8080`).
        public let authority: String
        public let weight: Quantity
    }
}

/// Request predicate tree; `all`/`any`/`not` recurse.
indirect enum RequestCondition: Sendable {
    case method(String)
    case path(RouteRegex)
    case all([RequestCondition])
    case any([RequestCondition])
    case not(RequestCondition)

    func matches(_ request: RouteRequest) -> Bool {
        switch self {
        case .method(let method): return request.method == method
        case .path(let regex): return regex.matchesWhole(request.path)
        case .all(let conditions): return conditions.allSatisfy { $0.matches(request) }
        case .any(let conditions): return conditions.contains { $0.matches(request) }
        case .not(let condition): return !condition.matches(request)
        }
    }
}

/// A ``RequestCondition`` that only ANDs at most one method with path regexes, read flat: every request tries the
/// routes in order, and walking the indirect `all` tree (a closure call and reference counting per node) cost more
/// than the regex prefix tests that reject most routes. Conditions with `any`, `not` or two methods keep the tree.
/// The result is the same as the tree's: a conjunction of pure tests does not depend on their order.
struct FlatRequestCondition: Sendable {
    let method: String?
    /// The first path regex apart, so the usual single one is tested without iterating an array.
    let path: RouteRegex?
    let otherPaths: [RouteRegex]

    init?(_ condition: RequestCondition) {
        var method: String?
        var paths: [RouteRegex] = []
        func collect(_ condition: RequestCondition) -> Bool {
            switch condition {
            case .method(let value):
                guard method == nil else { return false }
                method = value
                return true
            case .path(let regex):
                paths.append(regex)
                return true
            case .all(let conditions):
                return conditions.allSatisfy(collect)
            case .any, .not:
                return false
            }
        }
        guard collect(condition) else { return nil }
        self.method = method
        self.path = paths.first
        self.otherPaths = Array(paths.dropFirst())
    }
}

/// Response predicate tree.
indirect enum ResponseCondition: Sendable {
    case status(ClosedRange<Int>)
    case all([ResponseCondition])
    case any([ResponseCondition])
    case not(ResponseCondition)

    func matches(status: Int) -> Bool {
        switch self {
        case .status(let range): return range.contains(status)
        case .all(let conditions): return conditions.allSatisfy { $0.matches(status: status) }
        case .any(let conditions): return conditions.contains { $0.matches(status: status) }
        case .not(let condition): return !condition.matches(status: status)
        }
    }
}

extension ServiceProfile {
    /// Validates the profile and builds its matching form.
    ///
    /// Checks what Linkerd's sp-validator checks (route names and conditions present, regexes and durations
    /// valid, status ranges within 100...599 with min ≤ max, non-negative budget, readable weights) and reports
    /// every problem at once with its field path, e.g. `spec.routes[2].condition.pathRegex`.
    public func compile() throws(ValidationError) -> CompiledServiceProfile {
        var issues = IssueCollector()
        var routes: [CompiledServiceProfile.Route] = []
        for (index, route) in (spec.routes ?? []).enumerated() {
            if let compiled = Self.compileRoute(route, field: "spec.routes[\(index)]", issues: &issues) {
                routes.append(compiled)
            }
        }
        let budget = Self.compileBudget(spec.retryBudget, issues: &issues)
        var overrides: [CompiledServiceProfile.DestinationOverride] = []
        for (index, destination) in (spec.dstOverrides ?? []).enumerated() {
            let field = "spec.dstOverrides[\(index)]"
            var authority = destination.authority ?? ""
            if authority.isEmpty {
                issues.add("\(field).authority", "authority is required")
            }
            authority = Self.withoutTrailingDot(authority)
            guard let text = destination.weight else {
                issues.add("\(field).weight", "weight is required")
                continue
            }
            do {
                let weight = try Quantity(parsing: text)
                if weight.value < 0 {
                    issues.add("\(field).weight", "weight '\(text)' must not be negative")
                } else if !authority.isEmpty {
                    overrides.append(.init(authority: authority, weight: weight))
                }
            } catch {
                issues.add("\(field).weight", error.description)
            }
        }
        var opaquePorts: Set<UInt16> = []
        for key in (spec.opaquePorts ?? [:]).keys.sorted() {
            if let port = UInt16(key), port > 0 {
                opaquePorts.insert(port)
            } else {
                issues.add("spec.opaquePorts[\(key)]", "'\(key)' is not a port number (1-65535)")
            }
        }
        try issues.throwIfAny()
        return CompiledServiceProfile(
            routes: routes, retryBudget: budget, destinationOverrides: overrides, opaquePorts: opaquePorts)
    }

    /// `host.:port` → `host:port`, `host.` → `host`: the absolute-name dot is not part of the destination.
    private static func withoutTrailingDot(_ authority: String) -> String {
        var host = Substring(authority)
        var port: Substring = ""
        if let colon = host.lastIndex(of: ":"), host[host.index(after: colon)...].allSatisfy(\.isASCII),
            host[host.index(after: colon)...].allSatisfy(\.isNumber)
        {
            port = host[colon...]
            host = host[..<colon]
        }
        if host.hasSuffix(".") { host = host.dropLast() }
        return String(host + port)
    }

    private static func compileRoute(
        _ route: Route, field: String, issues: inout IssueCollector
    ) -> CompiledServiceProfile.Route? {
        let before = issues.issues.count
        let name = route.name ?? ""
        if name.isEmpty { issues.add("\(field).name", "route name is required") }
        var condition: RequestCondition?
        if let match = route.condition {
            condition = compileRequestMatch(match, field: "\(field).condition", issues: &issues)
        } else {
            issues.add("\(field).condition", "route condition is required")
        }
        var timeout: GoDuration?
        if let text = route.timeout {
            timeout = parseDuration(text, field: "\(field).timeout", issues: &issues)
            if timeout == .zero { timeout = nil }
        }
        var classes: [(condition: ResponseCondition, isFailure: Bool)] = []
        for (index, responseClass) in (route.responseClasses ?? []).enumerated() {
            let classField = "\(field).responseClasses[\(index)].condition"
            guard let match = responseClass.condition else {
                issues.add(classField, "response class condition is required")
                continue
            }
            if let compiled = compileResponseMatch(match, field: classField, issues: &issues) {
                classes.append((compiled, responseClass.isFailure ?? false))
            }
        }
        guard issues.issues.count == before, let condition else { return nil }
        return CompiledServiceProfile.Route(
            name: name, timeout: timeout, isRetryable: route.isRetryable ?? false, condition: condition,
            responseClasses: classes)
    }

    private static func parseDuration(_ text: String, field: String, issues: inout IssueCollector) -> GoDuration? {
        do {
            let duration = try GoDuration(parsing: text)
            if duration < .zero {
                issues.add(field, "duration '\(text)' must not be negative")
                return nil
            }
            return duration
        } catch {
            issues.add(field, error.description)
            return nil
        }
    }

    private static func compileRequestMatch(
        _ match: RequestMatch, field: String, issues: inout IssueCollector
    ) -> RequestCondition? {
        var parts: [RequestCondition] = []
        var failed = false
        if let method = match.method, !method.isEmpty {
            if method.utf8.allSatisfy(isTokenByte) {
                parts.append(.method(method))
            } else {
                issues.add("\(field).method", "'\(method)' is not an HTTP method token")
                failed = true
            }
        }
        if let pattern = match.pathRegex {
            do {
                parts.append(.path(try RouteRegex(pattern)))
            } catch {
                issues.add("\(field).pathRegex", error.description)
                failed = true
            }
        }
        if let all = match.all {
            var children: [RequestCondition] = []
            for (index, child) in all.enumerated() {
                if let compiled = compileRequestMatch(child, field: "\(field).all[\(index)]", issues: &issues) {
                    children.append(compiled)
                } else {
                    failed = true
                }
            }
            parts.append(.all(children))
        }
        if let any = match.any {
            var children: [RequestCondition] = []
            for (index, child) in any.enumerated() {
                if let compiled = compileRequestMatch(child, field: "\(field).any[\(index)]", issues: &issues) {
                    children.append(compiled)
                } else {
                    failed = true
                }
            }
            parts.append(.any(children))
        }
        if let not = match.not {
            if let compiled = compileRequestMatch(not, field: "\(field).not", issues: &issues) {
                parts.append(.not(compiled))
            } else {
                failed = true
            }
        }
        if parts.isEmpty, !failed {
            issues.add(field, "a request match must set at least one of method, pathRegex, all, any or not")
            return nil
        }
        if failed { return nil }
        return parts.count == 1 ? parts[0] : .all(parts)
    }

    private static func compileResponseMatch(
        _ match: ResponseMatch, field: String, issues: inout IssueCollector
    ) -> ResponseCondition? {
        var parts: [ResponseCondition] = []
        var failed = false
        if let status = match.status {
            let low = status.min ?? 0
            let high = status.max ?? 0
            if low != 0, !(100...599).contains(low) {
                issues.add("\(field).status.min", "status \(low) is outside 100-599")
                failed = true
            }
            if high != 0, !(100...599).contains(high) {
                issues.add("\(field).status.max", "status \(high) is outside 100-599")
                failed = true
            }
            if low != 0, high != 0, high < low {
                issues.add("\(field).status", "max \(high) is smaller than min \(low)")
                failed = true
            }
            if !failed { parts.append(.status((low == 0 ? 100 : low)...(high == 0 ? 599 : high))) }
        }
        if let all = match.all {
            var children: [ResponseCondition] = []
            for (index, child) in all.enumerated() {
                if let compiled = compileResponseMatch(child, field: "\(field).all[\(index)]", issues: &issues) {
                    children.append(compiled)
                } else {
                    failed = true
                }
            }
            parts.append(.all(children))
        }
        if let any = match.any {
            var children: [ResponseCondition] = []
            for (index, child) in any.enumerated() {
                if let compiled = compileResponseMatch(child, field: "\(field).any[\(index)]", issues: &issues) {
                    children.append(compiled)
                } else {
                    failed = true
                }
            }
            parts.append(.any(children))
        }
        if let not = match.not {
            if let compiled = compileResponseMatch(not, field: "\(field).not", issues: &issues) {
                parts.append(.not(compiled))
            } else {
                failed = true
            }
        }
        if parts.isEmpty, !failed {
            issues.add(field, "a response match must set at least one of status, all, any or not")
            return nil
        }
        if failed { return nil }
        return parts.count == 1 ? parts[0] : .all(parts)
    }

    private static func compileBudget(
        _ budget: RetryBudget?, issues: inout IssueCollector
    ) -> CompiledServiceProfile.RetryBudget {
        guard let budget else { return .linkerdDefault }
        let ratio = budget.retryRatio ?? 0
        if ratio < 0 || !ratio.isFinite {
            issues.add("spec.retryBudget.retryRatio", "retryRatio \(ratio) must be a non-negative number")
        }
        let minimum = budget.minRetriesPerSecond ?? 0
        if minimum < 0 || minimum > Int(UInt32.max) {
            issues.add("spec.retryBudget.minRetriesPerSecond", "minRetriesPerSecond \(minimum) must be 0 or more")
        }
        var ttl = GoDuration.zero
        if let text = budget.ttl {
            if let parsed = parseDuration(text, field: "spec.retryBudget.ttl", issues: &issues) {
                if parsed == .zero {
                    issues.add("spec.retryBudget.ttl", "ttl must be positive")
                }
                ttl = parsed
            }
        } else {
            issues.add("spec.retryBudget.ttl", "ttl is required")
        }
        return CompiledServiceProfile.RetryBudget(
            retryRatio: max(ratio, 0), minRetriesPerSecond: UInt32(clamping: minimum), ttl: ttl)
    }
}

/// RFC 9110 `tchar`: the bytes an HTTP method token may contain.
func isTokenByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
        UInt8(ascii: "0")...UInt8(ascii: "9"):
        return true
    default:
        return "!#$%&'*+-.^_`|~".utf8.contains(byte)
    }
}
