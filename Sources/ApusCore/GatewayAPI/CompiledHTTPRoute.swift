/// A validated HTTPRoute with defaults applied and regexes compiled, ready for an ``HTTPRouter``.
///
/// ```swift
/// let compiled = try route.compile()
/// let router = HTTPRouter(routes: [compiled])
/// router.route(RouteRequest(method: "GET", target: "/api/users"))?.rule.backends
/// ```
public struct CompiledHTTPRoute: Sendable {
    /// The route's namespace/name, used in the alphabetical tie-break and in metrics labels.
    public let key: ObjectKey
    /// Used in the oldest-wins tie-break; nil sorts after every dated route.
    public let creationTimestamp: Timestamp?
    /// Lower-cased host names; empty means the route applies to every host.
    public let hostnames: [String]
    /// Rules in route order.
    public let rules: [Rule]

    /// One rule of the route.
    public struct Rule: Sendable {
        /// Position in `spec.rules`.
        public let index: Int
        public let name: String?
        /// The rule's filters in order (request header edits, response header edits, redirect).
        public let filters: [Filter]
        /// Backends with defaults applied; empty means requests get a 500 (no backend), per the spec.
        public let backends: [Backend]
        /// nil when unset or `0s` (no timeout).
        public let requestTimeout: GoDuration?
        public let backendRequestTimeout: GoDuration?
        let matches: [RequestMatcher]
    }

    /// A filter Apus implements.
    public enum Filter: Hashable, Sendable {
        case requestHeaderModifier(HTTPRoute.HeaderModifier)
        case responseHeaderModifier(HTTPRoute.HeaderModifier)
        case requestRedirect(HTTPRoute.RequestRedirect)
    }

    /// A backend with defaults resolved: group `""`, kind `Service`, the route's namespace, weight 1.
    public struct Backend: Hashable, Sendable {
        public let group: String
        public let kind: String
        public let name: String
        public let namespace: String
        public let port: Int?
        public let weight: Int
        public let filters: [Filter]
    }
}

/// A compiled `HTTPRouteMatch`, with the precomputed attributes precedence sorts by.
struct RequestMatcher: Sendable {
    enum Path: Sendable {
        case exact(String)
        /// Prefix without trailing slashes; empty string for `/`, which matches every path.
        case prefix(String)
        case regex(RouteRegex)
    }

    enum Value: Sendable {
        case exact(String)
        case regex(RouteRegex)

        func matches(_ value: String) -> Bool {
            switch self {
            case .exact(let expected): return value == expected
            case .regex(let regex): return regex.matchesWhole(value)
            }
        }
    }

    let path: Path
    /// Characters of the path value as written, for "longest prefix wins".
    let pathLength: Int
    let method: String?
    let headers: [(name: String, value: Value)]
    let queryParams: [(name: String, value: Value)]

    /// Exact > RegularExpression > PathPrefix, as Linkerd ranks them (the spec leaves regex ranking open).
    var pathRank: Int {
        switch path {
        case .exact: return 2
        case .regex: return 1
        case .prefix: return 0
        }
    }

    static let defaultMatch = RequestMatcher(
        path: .prefix(""), pathLength: 1, method: nil, headers: [], queryParams: [])

    func matches(_ request: RouteRequest) -> Bool {
        switch path {
        case .exact(let value):
            guard request.path == value else { return false }
        case .prefix(let prefix):
            guard Self.pathHasPrefix(request.path, prefix) else { return false }
        case .regex(let regex):
            guard regex.matchesWhole(request.path) else { return false }
        }
        if let method, request.method != method { return false }
        for header in headers {
            // A header sent several times matches when any of its values does.
            let values = request.headers.values(header.name)
            guard values.contains(where: header.value.matches) else { return false }
        }
        for param in queryParams {
            guard let value = request.queryValue(param.name), param.value.matches(value) else { return false }
        }
        return true
    }

    /// Prefix match on path-element boundaries: `/foo` matches `/foo`, `/foo/`, `/foo/bar`, not `/foobar`.
    static func pathHasPrefix(_ path: String, _ prefix: String) -> Bool {
        guard !prefix.isEmpty else { return true }
        let pathBytes = path.utf8
        let prefixBytes = prefix.utf8
        guard pathBytes.starts(with: prefixBytes) else { return false }
        if pathBytes.count == prefixBytes.count { return true }
        return pathBytes[pathBytes.index(pathBytes.startIndex, offsetBy: prefixBytes.count)] == UInt8(ascii: "/")
    }
}

extension HTTPRoute {
    /// The path match types of the standard channel.
    public static let pathMatchTypes: Set<String> = ["Exact", "PathPrefix", "RegularExpression"]
    /// Filter types Apus implements; any other type is reported as unsupported by ``compile()``.
    public static let supportedFilterTypes: Set<String> = [
        "RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect",
    ]
    /// Methods an `HTTPRouteMatch.method` may name (the Gateway API enum).
    public static let methods: Set<String> = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ]

    /// Validates the route, applies the spec's defaults and compiles matches.
    ///
    /// Reports every problem with its field path, including filters Apus does not implement (`URLRewrite`,
    /// `RequestMirror`, `ExtensionRef`, …: `spec.rules[0].filters[1].type`), so the controller can set
    /// `Accepted=False` with a precise message instead of routing differently than the user wrote.
    public func compile() throws(ValidationError) -> CompiledHTTPRoute {
        var issues = IssueCollector()
        let namespace = metadata.namespace ?? "default"
        var hostnames: [String] = []
        for (index, hostname) in (spec.hostnames ?? []).enumerated() {
            if Self.isValidHostname(hostname) {
                hostnames.append(hostname.lowercased())
            } else {
                issues.add("spec.hostnames[\(index)]", "'\(hostname)' is not a valid host name or wildcard")
            }
        }
        for (index, parent) in (spec.parentRefs ?? []).enumerated() {
            if parent.name.isEmpty { issues.add("spec.parentRefs[\(index)].name", "name is required") }
            if let port = parent.port, !(1...65535).contains(port) {
                issues.add("spec.parentRefs[\(index)].port", "port \(port) is outside 1-65535")
            }
        }
        var rules: [CompiledHTTPRoute.Rule] = []
        for (index, rule) in (spec.rules ?? []).enumerated() {
            let field = "spec.rules[\(index)]"
            var matchers: [RequestMatcher] = []
            for (matchIndex, match) in (rule.matches ?? []).enumerated() {
                if let matcher = Self.compileMatch(match, field: "\(field).matches[\(matchIndex)]", issues: &issues) {
                    matchers.append(matcher)
                }
            }
            if rule.matches?.isEmpty ?? true { matchers = [.defaultMatch] }
            let filters = Self.compileFilters(rule.filters, field: "\(field).filters", issues: &issues)
            var backends: [CompiledHTTPRoute.Backend] = []
            for (backendIndex, backend) in (rule.backendRefs ?? []).enumerated() {
                let backendField = "\(field).backendRefs[\(backendIndex)]"
                let group = backend.group ?? ""
                let kind = backend.kind ?? "Service"
                if (group == "" || group == "core") && kind == "Service" {
                    if backend.port == nil { issues.add("\(backendField).port", "port is required for a Service") }
                } else {
                    issues.add("\(backendField).kind", "backend kind '\(group)/\(kind)' is not supported")
                }
                if let port = backend.port, !(1...65535).contains(port) {
                    issues.add("\(backendField).port", "port \(port) is outside 1-65535")
                }
                let weight = backend.weight ?? 1
                if !(0...1_000_000).contains(weight) {
                    issues.add("\(backendField).weight", "weight \(weight) is outside 0-1000000")
                }
                if backend.name.isEmpty { issues.add("\(backendField).name", "name is required") }
                let backendFilters = Self.compileFilters(
                    backend.filters, field: "\(backendField).filters", issues: &issues)
                backends.append(
                    .init(
                        group: group == "core" ? "" : group, kind: kind, name: backend.name,
                        namespace: backend.namespace ?? namespace, port: backend.port, weight: weight,
                        filters: backendFilters))
            }
            let request = Self.parseTimeout(rule.timeouts?.request, field: "\(field).timeouts.request", &issues)
            let backendRequest = Self.parseTimeout(
                rule.timeouts?.backendRequest, field: "\(field).timeouts.backendRequest", &issues)
            if let request, let backendRequest, backendRequest > request {
                issues.add(
                    "\(field).timeouts.backendRequest",
                    "backendRequest \(backendRequest) must not exceed request \(request)")
            }
            rules.append(
                .init(
                    index: index, name: rule.name, filters: filters, backends: backends, requestTimeout: request,
                    backendRequestTimeout: backendRequest, matches: matchers))
        }
        try issues.throwIfAny()
        return CompiledHTTPRoute(
            key: objectKey, creationTimestamp: metadata.creationTimestamp, hostnames: hostnames, rules: rules)
    }

    private static func compileMatch(
        _ match: Match, field: String, issues: inout IssueCollector
    ) -> RequestMatcher? {
        let before = issues.issues.count
        let type = match.path?.type ?? "PathPrefix"
        let value = match.path?.value ?? "/"
        var path = RequestMatcher.Path.prefix("")
        switch type {
        case "Exact", "PathPrefix":
            if !value.hasPrefix("/") || value.contains("?") || value.contains("#") {
                issues.add("\(field).path.value", "'\(value)' must be an absolute path without query or fragment")
            } else if type == "Exact" {
                path = .exact(value)
            } else {
                var prefix = Substring(value)
                while prefix.hasSuffix("/") { prefix = prefix.dropLast() }
                path = .prefix(String(prefix))
            }
        case "RegularExpression":
            do {
                path = .regex(try RouteRegex(value))
            } catch {
                issues.add("\(field).path.value", error.description)
            }
        default:
            issues.add("\(field).path.type", "path match type '\(type)' is not supported")
        }
        if let method = match.method, !methods.contains(method) {
            issues.add("\(field).method", "'\(method)' is not a supported method")
        }
        let headers = compileValueMatches(
            match.headers, field: "\(field).headers", caseInsensitiveNames: true, issues: &issues)
        let query = compileValueMatches(
            match.queryParams, field: "\(field).queryParams", caseInsensitiveNames: false, issues: &issues)
        guard issues.issues.count == before else { return nil }
        return RequestMatcher(
            path: path, pathLength: value.count, method: match.method, headers: headers, queryParams: query)
    }

    private static func compileValueMatches(
        _ matches: [HeaderMatch]?, field: String, caseInsensitiveNames: Bool, issues: inout IssueCollector
    ) -> [(name: String, value: RequestMatcher.Value)] {
        var result: [(name: String, value: RequestMatcher.Value)] = []
        for (index, match) in (matches ?? []).enumerated() {
            if match.name.isEmpty || (caseInsensitiveNames && !match.name.utf8.allSatisfy(isTokenByte)) {
                issues.add("\(field)[\(index)].name", "'\(match.name)' is not a valid name")
                continue
            }
            // The spec: when names repeat, only the first entry counts.
            let duplicate = result.contains {
                caseInsensitiveNames ? RouteHeaders.namesEqual($0.name, match.name) : $0.name == match.name
            }
            switch match.type ?? "Exact" {
            case "Exact":
                if !duplicate { result.append((match.name, .exact(match.value))) }
            case "RegularExpression":
                do {
                    let regex = try RouteRegex(match.value)
                    if !duplicate { result.append((match.name, .regex(regex))) }
                } catch {
                    issues.add("\(field)[\(index)].value", error.description)
                }
            default:
                issues.add("\(field)[\(index)].type", "match type '\(match.type ?? "")' is not supported")
            }
        }
        return result
    }

    private static func compileFilters(
        _ filters: [Filter]?, field: String, issues: inout IssueCollector
    ) -> [CompiledHTTPRoute.Filter] {
        var result: [CompiledHTTPRoute.Filter] = []
        for (index, filter) in (filters ?? []).enumerated() {
            let filterField = "\(field)[\(index)]"
            switch filter.type {
            case "RequestHeaderModifier", "ResponseHeaderModifier":
                let isRequest = filter.type == "RequestHeaderModifier"
                let member = isRequest ? "requestHeaderModifier" : "responseHeaderModifier"
                guard let modifier = isRequest ? filter.requestHeaderModifier : filter.responseHeaderModifier else {
                    issues.add("\(filterField).\(member)", "required for type \(filter.type)")
                    continue
                }
                validateModifier(modifier, field: "\(filterField).\(member)", issues: &issues)
                result.append(isRequest ? .requestHeaderModifier(modifier) : .responseHeaderModifier(modifier))
            case "RequestRedirect":
                guard let redirect = filter.requestRedirect else {
                    issues.add("\(filterField).requestRedirect", "required for type RequestRedirect")
                    continue
                }
                validateRedirect(redirect, field: "\(filterField).requestRedirect", issues: &issues)
                result.append(.requestRedirect(redirect))
            default:
                issues.add("\(filterField).type", "filter type '\(filter.type)' is not supported")
            }
        }
        return result
    }

    private static func validateModifier(
        _ modifier: HeaderModifier, field: String, issues: inout IssueCollector
    ) {
        for (list, headers) in [("set", modifier.set), ("add", modifier.add)] {
            for (index, header) in (headers ?? []).enumerated()
            where header.name.isEmpty || !header.name.utf8.allSatisfy(isTokenByte) {
                issues.add("\(field).\(list)[\(index)].name", "'\(header.name)' is not a valid header name")
            }
        }
        for (index, name) in (modifier.remove ?? []).enumerated()
        where name.isEmpty || !name.utf8.allSatisfy(isTokenByte) {
            issues.add("\(field).remove[\(index)]", "'\(name)' is not a valid header name")
        }
    }

    private static func validateRedirect(
        _ redirect: RequestRedirect, field: String, issues: inout IssueCollector
    ) {
        if let scheme = redirect.scheme, scheme != "http", scheme != "https" {
            issues.add("\(field).scheme", "scheme '\(scheme)' must be http or https")
        }
        if let hostname = redirect.hostname, hostname.hasPrefix("*") || !isValidHostname(hostname) {
            issues.add("\(field).hostname", "'\(hostname)' is not a valid host name")
        }
        if let port = redirect.port, !(1...65535).contains(port) {
            issues.add("\(field).port", "port \(port) is outside 1-65535")
        }
        if let status = redirect.statusCode, ![301, 302, 303, 307, 308].contains(status) {
            issues.add("\(field).statusCode", "status \(status) must be 301, 302, 303, 307 or 308")
        }
        if let path = redirect.path {
            switch path.type {
            case "ReplaceFullPath":
                if path.replaceFullPath == nil {
                    issues.add("\(field).path.replaceFullPath", "required for type ReplaceFullPath")
                }
            case "ReplacePrefixMatch":
                if path.replacePrefixMatch == nil {
                    issues.add("\(field).path.replacePrefixMatch", "required for type ReplacePrefixMatch")
                }
            default:
                issues.add("\(field).path.type", "path modifier type '\(path.type)' is not supported")
            }
        }
    }

    /// Gateway API durations (GEP-2257) are a strict subset of Go's: up to four `<1-5 digits><h|m|s|ms>`.
    private static let gatewayDuration = try? RouteRegex("([0-9]{1,5}(h|m|s|ms)){1,4}")

    private static func parseTimeout(
        _ text: String?, field: String, _ issues: inout IssueCollector
    ) -> GoDuration? {
        guard let text else { return nil }
        guard gatewayDuration?.matchesWhole(text) ?? true else {
            issues.add(field, "'\(text)' is not a Gateway API duration (e.g. 10s, 500ms, 1h30m)")
            return nil
        }
        do {
            let duration = try GoDuration(parsing: text)
            return duration == .zero ? nil : duration
        } catch {
            issues.add(field, error.description)
            return nil
        }
    }

    /// RFC 1123 subdomain, optionally with a single leading `*.` wildcard label; IP addresses are not allowed.
    static func isValidHostname(_ hostname: String) -> Bool {
        var name = Substring(hostname.lowercased())
        if name.hasPrefix("*.") { name = name.dropFirst(2) }
        guard !name.isEmpty, name.utf8.count <= 253, !DestinationAuthority.isIPv4(name) else { return false }
        return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            guard let first = label.utf8.first, let last = label.utf8.last, label.utf8.count <= 63 else { return false }
            func alnum(_ byte: UInt8) -> Bool {
                (byte >= 48 && byte <= 57) || (byte >= 97 && byte <= 122)
            }
            return alnum(first) && alnum(last) && label.utf8.allSatisfy { alnum($0) || $0 == UInt8(ascii: "-") }
        }
    }
}
