import Testing

@testable import ApusCore

/// The per-request fast paths of route matching (regex shortcuts, byte-level authority parsing) must decide
/// exactly as the general code does: these tests run both over many generated inputs, including the edge cases
/// (non-ASCII, newlines, combining marks, case, empty parts) where a byte-level shortcut could drift.
@Suite struct RouteMatchingShortcutTests {
    /// A small deterministic generator (SplitMix64), so a failure reproduces.
    struct Generator {
        var state: UInt64

        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var value = state
            value = (value ^ (value >> 30)) &* 0xBF58_476D_1CE4_E5B9
            value = (value ^ (value >> 27)) &* 0x94D0_49BB_1331_11EB
            return value ^ (value >> 31)
        }

        mutating func pick<T>(_ items: [T]) -> T { items[Int(next() % UInt64(items.count))] }

        /// Up to `maxParts` tokens joined.
        mutating func text(from tokens: [String], maxParts: Int) -> String {
            let count = Int(next() % UInt64(maxParts + 1))
            var result = ""
            for _ in 0..<count { result += pick(tokens) }
            return result
        }
    }

    static let patterns = [
        "/api/v1/resource1/[0-9]+", "/.*", "/healthz", "", ".*", "(?s).*", "/api/.*", "^/api/v1/.*$", "/books/\\d+",
        "/books/\\d{2,}", "(/api)/v1/[^/]*", "/a|/b", "/a$/b", "(?m)^/a.*", "(?i)/API/.*", "/API/(?i:x)y+",
        "/ü/.*", "/e\u{301}/.*", "/api/v[12]/books", "/x*", "/\\p{L}+", "/[^/]+/reviews", "^$", "/api/(v1|v2)/.*",
        "/\\bapi.*", "/a.*b", "/api/v1/resource1/[0-9]+$", "(?s)/api/.*", "/\\n.*",
    ]

    static let pathTokens = [
        "/", "/", "/api", "/v1", "/v2", "/resource1", "/books", "api", "v1", "1", "42", "x", "y", "A", "API", "b",
        "ü", "u\u{308}", "e", "\u{301}", "é", "٤", "\n", "\r\n", "-", ".", "?", "reviews", "healthz", "a", "",
    ]

    @Test(arguments: patterns)
    func regexShortcutsAgreeWithTheNFA(pattern: String) throws {
        let regex = try RouteRegex(pattern)
        var generator = Generator(state: pattern.utf8.reduce(42) { $0 &* 31 &+ UInt64($1) })
        var samples = ["", "/", "/api/v1/resource1/7", "/api/v1/resource1/", "/healthz", "/books/42", "/books/4"]
        for _ in 0..<3000 { samples.append(generator.text(from: Self.pathTokens, maxParts: 8)) }
        var disagreements: [String] = []
        for path in samples {
            if regex.matchesWhole(path) != regex.matchesWholeBySimulation(path) { disagreements.append(path) }
            // The same text as a Substring in the middle of a larger string (newlines never join a neighbour).
            let slice = ("\n\n" + path + "\n\n").dropFirst(2).dropLast(2)
            #expect(String(slice) == path)
            if regex.matchesWhole(slice) != regex.matchesWholeBySimulation(path) { disagreements.append(path) }
        }
        #expect(disagreements.isEmpty, "\(pattern) decides differently for \(disagreements.prefix(5))")
    }

    /// The benchmark's shape: a literal prefix that rejects on the first bytes, and a `prefix.*` catch-all.
    @Test func shortcutsStillMatchAndReject() throws {
        let numbered = try RouteRegex("/api/v1/resource1/[0-9]+")
        #expect(numbered.matchesWhole("/api/v1/resource1/123"))
        #expect(!numbered.matchesWhole("/api/v1/resource1/"))
        #expect(!numbered.matchesWhole("/api/v1/resource1/12a"))
        #expect(!numbered.matchesWhole("/"))
        let everything = try RouteRegex("/.*")
        #expect(everything.matchesWhole("/"))
        #expect(everything.matchesWhole("/any/thing"))
        #expect(!everything.matchesWhole("/multi\nline"))  // `.` excludes newline without (?s)
        #expect(!everything.matchesWhole("relative"))
        let anchored = try RouteRegex("^/api/.*$")
        #expect(anchored.matchesWhole("/api/x"))
        #expect(!anchored.matchesWhole("/apx"))
    }

    static let authorityTokens = [
        "web", "Web", "WEB", "emojivoto", "svc", "cluster", "local", ".", ".", ":", "80", "8080", "0", "65535",
        "65536", "0080", "9999999", "@", "user", "1", "127", "255", "256", "-", "_", "[", "]", "::1", "ü", "K",
        "example", "com", "\r\n", " ", "a",
    ]

    @Test func byteLevelAuthorityParsingAgreesWithTheGeneralParser() {
        var generator = Generator(state: 7)
        var samples = [
            "bench.default.svc.cluster.local:80", "127.0.0.1:8080", "web", "web.emojivoto", "web.emojivoto.svc",
            "Web.Emojivoto.SVC.cluster.local.:80", "user@web:81", "[::1]:80", "web:", ":80", "", "1.2.3.4.",
            "a..b", "web.:80", "-web", "web-", "web_1.ns", String(repeating: "a", count: 64), "1.2.3", "01.2.3.4",
        ]
        for _ in 0..<5000 { samples.append(generator.text(from: Self.authorityTokens, maxParts: 7)) }
        var disagreements: [String] = []
        var decidedByBytes = 0
        for authority in samples {
            let fast = DestinationAuthority.parsedASCII(
                authority, clientNamespace: "default", clusterDomain: "cluster.local", defaultPort: 80)
            if fast != nil { decidedByBytes += 1 }
            for (namespace, domain) in [
                ("default", "cluster.local"), ("shop", "cluster.local."), ("x", "Corp.Example"),
            ] {
                let general = Result { () throws(AuthorityError) in
                    try DestinationAuthority(
                        parsingGeneral: authority, clientNamespace: namespace, clusterDomain: domain)
                }
                let viaPublicInit = Result { () throws(AuthorityError) in
                    try DestinationAuthority(parsing: authority, clientNamespace: namespace, clusterDomain: domain)
                }
                if general != viaPublicInit { disagreements.append("\(authority) (\(domain))") }
            }
        }
        #expect(disagreements.isEmpty, "decided differently: \(disagreements.prefix(5))")
        // The comparison covers both paths: many samples take the byte-level one, many fall back.
        #expect(decidedByBytes > samples.count / 10)
        #expect(decidedByBytes < samples.count * 9 / 10)
    }

    @Test func byteLevelAuthorityParsingQualifiesNames() throws {
        let cases: [(String, String, Int)] = [
            ("web", "web.default.svc.cluster.local", 80),
            ("Web.Shop:8080", "web.shop.svc.cluster.local", 8080),
            ("web.shop.svc", "web.shop.svc.cluster.local", 80),
            ("bench.default.svc.cluster.local:80", "bench.default.svc.cluster.local", 80),
            ("example.com.:443", "example.com", 443),
            ("10.0.0.1:9090", "10.0.0.1", 9090),
        ]
        for (authority, host, port) in cases {
            let parsed = try #require(
                DestinationAuthority.parsedASCII(
                    authority, clientNamespace: "default", clusterDomain: "cluster.local", defaultPort: 80))
            #expect(parsed.host == host)
            #expect(parsed.port == port)
        }
    }

    /// The request-target split as first written (character-wise), the reference for the byte-level fast path.
    static func referenceSplit(_ target: String) -> (path: String, query: String?, authority: String?) {
        var rest = Substring(target)
        var targetAuthority: Substring?
        if !rest.hasPrefix("/"), let scheme = rest.firstRange(of: "://") {
            rest = rest[scheme.upperBound...]
            let end = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
            targetAuthority = rest[..<end]
            rest = rest[end...]
        }
        var path: String
        var query: String?
        if let mark = rest.firstIndex(of: "?") {
            path = String(rest[..<mark])
            query = String(rest[rest.index(after: mark)...])
        } else {
            path = String(rest)
        }
        if path.isEmpty { path = "/" }
        return (path, query, targetAuthority.map(String.init))
    }

    @Test func requestTargetSplitAgreesWithTheCharacterWiseSplit() {
        var generator = Generator(state: 11)
        let tokens = ["/", "/books", "?", "a=1", "&", "b", "http://", "web:80", "\u{301}", "é", "\r\n", "", "%20"]
        var samples = ["/", "/books/7?format=json", "?x", "", "http://web/x?y", "/?\u{301}", "/a?b?c"]
        for _ in 0..<3000 { samples.append(generator.text(from: tokens, maxParts: 6)) }
        var disagreements: [String] = []
        for target in samples {
            let request = RouteRequest(method: "GET", target: target)
            let reference = Self.referenceSplit(target)
            if request.path != reference.path || request.query != reference.query
                || request.authority != reference.authority
            {
                disagreements.append(target)
            }
        }
        #expect(disagreements.isEmpty, "split differently: \(disagreements.prefix(5))")
    }

    /// A route whose condition is not a plain conjunction (`any`, `not`) keeps the general evaluation, and both
    /// kinds pick the same first route as the condition tree would.
    @Test func flatAndTreeConditionsPickTheSameRoute() throws {
        func route(_ name: String, _ condition: ServiceProfile.RequestMatch) -> ServiceProfile.Route {
            ServiceProfile.Route(name: name, condition: condition)
        }
        let profile = ServiceProfile(
            metadata: ObjectMeta(name: "web.shop.svc.cluster.local"),
            spec: ServiceProfile.Spec(routes: [
                route("post books", .init(pathRegex: "/books/[0-9]+", method: "POST")),
                route("not get", .init(not: .init(method: "GET"))),
                route("nested", .init(all: [.init(method: "GET"), .init(all: [.init(pathRegex: "/a/.*")])])),
                route("two methods", .init(all: [.init(method: "GET"), .init(method: "HEAD")])),
                route("any", .init(any: [.init(pathRegex: "/x"), .init(pathRegex: "/y")])),
                route("get", .init(method: "GET")),
            ]))
        let compiled = try profile.compile()
        let cases: [(String, String, String?)] = [
            ("POST", "/books/12", "post books"), ("PUT", "/books/12", "not get"), ("GET", "/a/b", "nested"),
            ("GET", "/x", "any"), ("GET", "/z", "get"), ("GET", "/books/12", "get"),
        ]
        for (method, target, expected) in cases {
            let request = RouteRequest(method: method, target: target)
            #expect(compiled.route(for: request)?.name == expected, "\(method) \(target)")
            let tree = compiled.routes.first { $0.condition.matches(request) }
            #expect(tree?.name == expected)
        }
        #expect(compiled.routes.map { $0.flatCondition != nil } == [true, false, true, false, false, true])
    }
}
