import ApusCore
import Foundation
import Testing
import Yams

@Suite struct HTTPRouteTests {
    static let meshRoute = #"""
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata:
          name: books-split
          namespace: booksapp
          creationTimestamp: "2024-03-01T10:00:00Z"
          managedFields: [{manager: kubectl}]
        spec:
          parentRefs:
          - group: core
            kind: Service
            name: books
            port: 7002
          rules:
          - matches:
            - path: {type: Exact, value: /books.json}
              method: GET
            - path: {type: PathPrefix, value: /api/}
              headers:
              - {name: X-Canary, value: "true"}
              - {type: RegularExpression, name: x-user, value: "qa-[0-9]+"}
              queryParams:
              - {name: debug, value: "1"}
            filters:
            - type: RequestHeaderModifier
              requestHeaderModifier:
                set: [{name: x-route, value: canary}]
                add: [{name: x-trace, value: "yes"}]
                remove: [x-internal]
            - type: ResponseHeaderModifier
              responseHeaderModifier:
                set: [{name: cache-control, value: no-store}]
            backendRefs:
            - {name: books-v2, port: 7002, weight: 90}
            - {name: books-v3, port: 7002}
            timeouts: {request: 10s, backendRequest: 2s}
          - backendRefs:
            - {name: books, port: 7002}
          - matches:
            - path: {type: PathPrefix, value: /old}
            filters:
            - type: RequestRedirect
              requestRedirect:
                scheme: https
                hostname: books.example.com
                path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
                port: 443
                statusCode: 302
        status:
          parents:
          - parentRef: {group: core, kind: Service, name: books, port: 7002}
            controllerName: apus.dev/controller
            conditions:
            - {type: Accepted, status: "True", reason: Accepted, lastTransitionTime: "2024-03-01T10:00:01.250Z"}
        """#

    static let unsupportedRoute = #"""
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: rewrite, namespace: web}
        spec:
          parentRefs: [{name: web, kind: Service, group: ""}]
          hostnames: ["web.example.com", "bad_host"]
          rules:
          - matches:
            - path: {type: RegularExpression, value: "/users/(\\d+"}
            - path: {type: Wildcard, value: /x}
            - path: {value: relative}
              method: FETCH
              headers: [{type: Prefix, name: x, value: y}]
            filters:
            - type: URLRewrite
              urlRewrite:
                path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
            - type: RequestMirror
              requestMirror: {backendRef: {name: shadow, port: 80}}
            - type: ExtensionRef
              extensionRef: {group: example.com, kind: Thing, name: t}
            - type: RequestRedirect
              requestRedirect: {statusCode: 418, scheme: ftp}
            backendRefs:
            - {name: web}
            - {name: bucket, group: storage.example.com, kind: Bucket}
            - {name: web, port: 80, weight: -1}
            timeouts: {request: 1s, backendRequest: 5s}
          - timeouts: {request: 1.5s}
        """#

    @Test func decodesRouteWithStatusAndIgnoresUnknownFields() throws {
        let route = try YAMLDecoder().decode(HTTPRoute.self, from: Self.meshRoute)
        #expect(HTTPRoute.resourceType.apiVersion == "gateway.networking.k8s.io/v1")
        #expect(HTTPRoute.resourceType.plural == "httproutes")
        #expect(route.spec.parentRefs?.first == .init(group: "core", kind: "Service", name: "books", port: 7002))
        let rule = try #require(route.spec.rules?.first)
        #expect(rule.matches?[1].headers?[1] == .init(type: "RegularExpression", name: "x-user", value: "qa-[0-9]+"))
        #expect(rule.filters?[0].requestHeaderModifier?.remove == ["x-internal"])
        #expect(rule.timeouts == .init(request: "10s", backendRequest: "2s"))
        let parent = try #require(route.status?.parents?.first)
        #expect(parent.controllerName == "apus.dev/controller")
        let condition = try #require(parent.conditions?.first)
        #expect(condition.lastTransitionTime == Timestamp(rfc3339: "2024-03-01T10:00:01.25Z"))
        let again = try JSONDecoder().decode(HTTPRoute.self, from: try JSONEncoder().encode(route))
        #expect(again == route)
    }

    @Test func compilesWithSpecDefaults() throws {
        let route = try YAMLDecoder().decode(HTTPRoute.self, from: Self.meshRoute)
        let compiled = try route.compile()
        #expect(compiled.key == ObjectKey(namespace: "booksapp", name: "books-split"))
        let first = compiled.rules[0]
        #expect(first.backends.map(\.weight) == [90, 1])
        let defaulted = first.backends[1]
        #expect(defaulted.group == "" && defaulted.kind == "Service" && defaulted.name == "books-v3")
        #expect(defaulted.namespace == "booksapp" && defaulted.port == 7002 && defaulted.weight == 1)
        #expect(first.requestTimeout?.description == "10s")
        #expect(first.backendRequestTimeout?.description == "2s")
        #expect(first.filters.count == 2)
        guard case .requestRedirect(let redirect) = compiled.rules[2].filters.first else {
            Issue.record("expected a redirect filter")
            return
        }
        #expect(redirect.statusCode == 302)

        let router = HTTPRouter(routes: [compiled])
        // A rule without matches is PathPrefix "/".
        let fallback = try #require(router.route(RouteRequest(method: "DELETE", target: "/anything")))
        #expect(fallback.ruleIndex == 1)
        let canary = RouteRequest(
            method: "GET", target: "/api/books?debug=1&x=2",
            headers: [("x-canary", "true"), ("X-User", "qa-17")])
        #expect(router.route(canary)?.ruleIndex == 0)
        #expect(router.route(canary)?.matchIndex == 1)
        var wrongUser = canary
        wrongUser.headers = ["x-canary": "true", "x-user": "qa-x"]
        #expect(router.route(wrongUser)?.ruleIndex == 1)
        let exact = try #require(router.route(RouteRequest(method: "GET", target: "/books.json")))
        #expect(exact.ruleIndex == 0)
        #expect(exact.rule.backends.map(\.name) == ["books-v2", "books-v3"])
        #expect(router.route(RouteRequest(method: "POST", target: "/books.json"))?.ruleIndex == 1)
        #expect(router.route(RouteRequest(method: "GET", target: "/old/page"))?.ruleIndex == 2)
        #expect(router.route(RouteRequest(method: "GET", target: "/older"))?.ruleIndex == 1)
    }

    @Test func unsupportedFeaturesAreDecodedKeptAndReported() throws {
        let route = try YAMLDecoder().decode(HTTPRoute.self, from: Self.unsupportedRoute)
        let filters = try #require(route.spec.rules?.first?.filters)
        #expect(filters[0].other["urlRewrite"]?["path"]?["replacePrefixMatch"] == .string("/v2"))
        #expect(filters[1].other["requestMirror"]?["backendRef"]?["name"] == .string("shadow"))
        let reencoded = try JSONValue(encoding: route)
        let urlRewrite = reencoded["spec"]?["rules"]?.arrayValue?.first?["filters"]?.arrayValue?.first?["urlRewrite"]
        #expect(urlRewrite?["path"]?["type"] == .string("ReplacePrefixMatch"))
        do {
            _ = try route.compile()
            Issue.record("route with unsupported features compiled")
        } catch {
            #expect(
                error.issues.map(\.field) == [
                    "spec.hostnames[1]",
                    "spec.rules[0].matches[0].path.value",
                    "spec.rules[0].matches[1].path.type",
                    "spec.rules[0].matches[2].path.value",
                    "spec.rules[0].matches[2].method",
                    "spec.rules[0].matches[2].headers[0].type",
                    "spec.rules[0].filters[0].type",
                    "spec.rules[0].filters[1].type",
                    "spec.rules[0].filters[2].type",
                    "spec.rules[0].filters[3].requestRedirect.scheme",
                    "spec.rules[0].filters[3].requestRedirect.statusCode",
                    "spec.rules[0].backendRefs[0].port",
                    "spec.rules[0].backendRefs[1].kind",
                    "spec.rules[0].backendRefs[2].weight",
                    "spec.rules[0].timeouts.backendRequest",
                    "spec.rules[1].timeouts.request",
                ])
            #expect(error.issues[6].message == "filter type 'URLRewrite' is not supported")
            #expect(error.issues[7].message == "filter type 'RequestMirror' is not supported")
            #expect(error.issues[8].message == "filter type 'ExtensionRef' is not supported")
        }
    }

    @Test(arguments: [
        ("/foo", "/foo", true), ("/foo", "/foo/", true), ("/foo", "/foo/bar", true), ("/foo", "/foobar", false),
        ("/foo/", "/foo", true), ("/foo/", "/foo/bar", true), ("/foo/", "/foobar", false), ("/", "/x", true),
        ("/foo/bar", "/foo", false), ("/foo", "/Foo", false),
    ])
    func pathPrefixMatchesOnElementBoundaries(prefix: String, path: String, expected: Bool) throws {
        let route = Self.route("r", rules: [.init(matches: [.init(path: .init(type: "PathPrefix", value: prefix))])])
        let router = HTTPRouter(routes: [try route.compile()])
        #expect((router.route(RouteRequest(method: "GET", target: path)) != nil) == expected)
    }

    static func route(
        _ name: String, namespace: String = "default", created: String? = nil, hostnames: [String]? = nil,
        rules: [HTTPRoute.Rule]
    ) -> HTTPRoute {
        HTTPRoute(
            metadata: ObjectMeta(
                name: name, namespace: namespace, creationTimestamp: created.flatMap { Timestamp(rfc3339: $0) }),
            spec: .init(
                parentRefs: [.init(group: "core", kind: "Service", name: "svc")], hostnames: hostnames,
                rules: rules))
    }

    static func match(
        _ path: String, type: String = "PathPrefix", method: String? = nil, headers: [String] = [],
        query: [String] = []
    ) -> HTTPRoute.Match {
        HTTPRoute.Match(
            path: .init(type: type, value: path),
            headers: headers.isEmpty ? nil : headers.map { .init(name: $0, value: "1") },
            queryParams: query.isEmpty ? nil : query.map { .init(name: $0, value: "1") }, method: method)
    }

    struct PrecedenceCase: Sendable, CustomTestStringConvertible {
        var name: String
        var routes: [HTTPRoute]
        var request: RouteRequest
        /// `namespace/name#rule`, or nil for no match.
        var winner: String?
        var testDescription: String { name }
    }

    static let precedenceCases: [PrecedenceCase] = [
        PrecedenceCase(
            name: "exact path beats a longer prefix",
            routes: [
                route("prefix", rules: [.init(matches: [match("/foo/bar/baz/")])]),
                route("exact", rules: [.init(matches: [match("/foo/bar/baz", type: "Exact")])]),
            ],
            request: RouteRequest(method: "GET", target: "/foo/bar/baz"), winner: "default/exact#0"),
        PrecedenceCase(
            name: "longest prefix by characters wins",
            routes: [
                route("short", rules: [.init(matches: [match("/foo")])]),
                route("long", rules: [.init(matches: [match("/foo/bar")])]),
            ],
            request: RouteRequest(method: "GET", target: "/foo/bar/x"), winner: "default/long#0"),
        PrecedenceCase(
            name: "prefix respects element boundaries",
            routes: [
                route("foo", rules: [.init(matches: [match("/foo")])]),
                route("root", rules: [.init(matches: [match("/")])]),
            ],
            request: RouteRequest(method: "GET", target: "/foobar"), winner: "default/root#0"),
        PrecedenceCase(
            name: "method match beats none on equal paths",
            routes: [
                route("any", rules: [.init(matches: [match("/api")])]),
                route("get", rules: [.init(matches: [match("/api", method: "GET")])]),
            ],
            request: RouteRequest(method: "GET", target: "/api/x"), winner: "default/get#0"),
        PrecedenceCase(
            name: "non-matching method falls through",
            routes: [
                route("any", rules: [.init(matches: [match("/api")])]),
                route("get", rules: [.init(matches: [match("/api", method: "GET")])]),
            ],
            request: RouteRequest(method: "POST", target: "/api/x"), winner: "default/any#0"),
        PrecedenceCase(
            name: "more header matches win",
            routes: [
                route("one", rules: [.init(matches: [match("/api", headers: ["a"])])]),
                route("two", rules: [.init(matches: [match("/api", headers: ["a", "b"])])]),
            ],
            request: RouteRequest(method: "GET", target: "/api", headers: [("A", "1"), ("b", "1")]),
            winner: "default/two#0"),
        PrecedenceCase(
            name: "path length beats header count",
            routes: [
                route("headers", rules: [.init(matches: [match("/api", headers: ["a", "b"])])]),
                route("longer", rules: [.init(matches: [match("/api/v1")])]),
            ],
            request: RouteRequest(method: "GET", target: "/api/v1", headers: [("a", "1"), ("b", "1")]),
            winner: "default/longer#0"),
        PrecedenceCase(
            name: "method beats header count",
            routes: [
                route("headers", rules: [.init(matches: [match("/api", headers: ["a", "b"])])]),
                route("method", rules: [.init(matches: [match("/api", method: "GET")])]),
            ],
            request: RouteRequest(method: "GET", target: "/api", headers: [("a", "1"), ("b", "1")]),
            winner: "default/method#0"),
        PrecedenceCase(
            name: "more query param matches win",
            routes: [
                route("none", rules: [.init(matches: [match("/api")])]),
                route("query", rules: [.init(matches: [match("/api", query: ["q"])])]),
            ],
            request: RouteRequest(method: "GET", target: "/api?q=1"), winner: "default/query#0"),
        PrecedenceCase(
            name: "header count beats query count",
            routes: [
                route("query", rules: [.init(matches: [match("/api", query: ["q", "r"])])]),
                route("header", rules: [.init(matches: [match("/api", headers: ["h"])])]),
            ],
            request: RouteRequest(method: "GET", target: "/api?q=1&r=1", headers: [("h", "1")]),
            winner: "default/header#0"),
        PrecedenceCase(
            name: "tie: oldest creationTimestamp wins",
            routes: [
                route("aaa-new", created: "2024-02-01T00:00:00Z", rules: [.init(matches: [match("/api")])]),
                route("zzz-old", created: "2024-01-01T00:00:00Z", rules: [.init(matches: [match("/api")])]),
            ],
            request: RouteRequest(method: "GET", target: "/api"), winner: "default/zzz-old#0"),
        PrecedenceCase(
            name: "tie: same age, alphabetical namespace/name",
            routes: [
                route("r", namespace: "b-ns", created: "2024-01-01T00:00:00Z", rules: [.init(matches: [match("/")])]),
                route("r", namespace: "a-ns", created: "2024-01-01T00:00:00Z", rules: [.init(matches: [match("/")])]),
            ],
            request: RouteRequest(method: "GET", target: "/x"), winner: "a-ns/r#0"),
        PrecedenceCase(
            name: "tie within a route: first rule wins",
            routes: [
                route("r", rules: [.init(matches: [match("/api")]), .init(matches: [match("/api")])])
            ],
            request: RouteRequest(method: "GET", target: "/api"), winner: "default/r#0"),
        PrecedenceCase(
            name: "a later rule with a more specific match beats an earlier rule",
            routes: [
                route("r", rules: [.init(matches: [match("/api")]), .init(matches: [match("/api", type: "Exact")])])
            ],
            request: RouteRequest(method: "GET", target: "/api"), winner: "default/r#1"),
        PrecedenceCase(
            name: "regular expression ranks above prefix",
            routes: [
                route("prefix", rules: [.init(matches: [match("/users/alice")])]),
                route("regex", rules: [.init(matches: [match("/users/[a-z]+", type: "RegularExpression")])]),
            ],
            request: RouteRequest(method: "GET", target: "/users/alice"), winner: "default/regex#0"),
        PrecedenceCase(
            name: "exact hostname beats wildcard",
            routes: [
                route("wild", hostnames: ["*.example.com"], rules: [.init(matches: [match("/x", type: "Exact")])]),
                route("exact", hostnames: ["api.example.com"], rules: [.init(matches: [match("/")])]),
            ],
            request: RouteRequest(method: "GET", target: "/x", headers: [("Host", "API.example.com:8080")]),
            winner: "default/exact#0"),
        PrecedenceCase(
            name: "wildcard hostname matches subdomains only",
            routes: [
                route("wild", hostnames: ["*.example.com"], rules: [.init(matches: [match("/")])])
            ],
            request: RouteRequest(method: "GET", target: "/", headers: [("Host", "example.com")]), winner: nil),
        PrecedenceCase(
            name: "no rule matches",
            routes: [route("exact", rules: [.init(matches: [match("/x", type: "Exact")])])],
            request: RouteRequest(method: "GET", target: "/y"), winner: nil),
    ]

    @Test(arguments: precedenceCases)
    func precedence(_ testCase: PrecedenceCase) throws {
        let router = HTTPRouter(routes: try testCase.routes.map { try $0.compile() })
        let result = router.route(testCase.request)
        #expect(result.map { "\($0.route.key)#\($0.ruleIndex)" } == testCase.winner)
    }

    @Test func precedenceDoesNotDependOnInputOrder() throws {
        for testCase in Self.precedenceCases {
            let router = HTTPRouter(routes: try testCase.routes.reversed().map { try $0.compile() })
            #expect(router.route(testCase.request).map { "\($0.route.key)#\($0.ruleIndex)" } == testCase.winner)
        }
    }

    @Test func headerNamesAreCaseInsensitiveAndQueryNamesAreNot() throws {
        let route = Self.route(
            "r",
            rules: [
                .init(matches: [
                    .init(
                        headers: [.init(name: "X-Canary", value: "On")],
                        queryParams: [.init(name: "Mode", value: "a b")])
                ])
            ])
        let router = HTTPRouter(routes: [try route.compile()])
        #expect(router.route(RouteRequest(method: "GET", target: "/?Mode=a+b", headers: [("x-canary", "On")])) != nil)
        #expect(router.route(RouteRequest(method: "GET", target: "/?Mode=a%20b", headers: [("X-CANARY", "On")])) != nil)
        #expect(router.route(RouteRequest(method: "GET", target: "/?mode=a+b", headers: [("x-canary", "On")])) == nil)
        #expect(router.route(RouteRequest(method: "GET", target: "/?Mode=a+b", headers: [("x-canary", "on")])) == nil)
    }
}
