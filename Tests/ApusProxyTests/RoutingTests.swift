import ApusCore
import ApusDestinationClient
import ApusProxy
import Foundation
import NIOCore
import Testing

/// Route selection and HTTPRoute filters through a real proxy, plus the retry budget's arithmetic.
@Suite(.serialized) struct RoutingTests {
    static let authority = "web.default.svc.cluster.local:80"

    /// ServiceProfile routes match first to last; what none matches is `[DEFAULT]`; each request is counted
    /// once under its route name.
    @Test func serviceProfileRoutesNameRequestsFirstMatchWins() async throws {
        let backend = try await ScriptedBackend.start()
        let profile = DestinationProfile(
            fullyQualifiedName: "web.default.svc.cluster.local", port: 80, source: .serviceProfile,
            routes: [
                RoutingFixture.route("GET /books/{id}", pathRegex: "/books/\\d+", method: "GET"),
                RoutingFixture.route("books", pathRegex: "/books.*"),
            ])
        let proxy = try await RoutingFixture.proxy(Self.authority, backend: backend, profile: profile)
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let books = try RoutingFixture.statuses(proxy: proxy, host: Self.authority, path: "/books/7", count: 2)
        #expect(books == [200, 200])
        #expect(
            try RoutingFixture.statuses(proxy: proxy, host: Self.authority, path: "/books/7", count: 1, method: "POST")
                == [200])
        #expect(try RoutingFixture.statuses(proxy: proxy, host: Self.authority, path: "/authors", count: 3).count == 3)

        let metrics = try RoutingFixture.metrics(proxy)
        let dst = "dst=\"\(Self.authority)\""
        #expect(RoutingFixture.sample(metrics, "route_request_total", [dst, "rt_route=\"GET /books/{id}\""]) == 2)
        #expect(RoutingFixture.sample(metrics, "route_request_total", [dst, "rt_route=\"books\""]) == 1)
        #expect(RoutingFixture.sample(metrics, "route_request_total", [dst, "rt_route=\"[DEFAULT]\""]) == 3)
        #expect(
            RoutingFixture.sample(
                metrics, "route_response_total",
                [dst, "rt_route=\"GET /books/{id}\"", "classification=\"success\"", "status_code=\"200\""]) == 2)
        #expect(metrics.contains("route_response_latency_ms_bucket{direction=\"outbound\",\(dst)"))
    }

    /// HTTPRoute rules: header modifiers on request and response, a redirect answered by the proxy, and a rule
    /// with a filter Apus does not implement failing closed with 500 and an `l5d-proxy-error` naming it.
    @Test func httpRouteFiltersAndUnsupportedFiltersFailClosed() async throws {
        let backend = try await ScriptedBackend.start()
        func rule(_ prefix: String, _ filters: [HTTPRoute.Filter]) -> HTTPRoute.Rule {
            HTTPRoute.Rule(
                matches: [HTTPRoute.Match(path: HTTPRoute.PathMatch(type: "PathPrefix", value: prefix))],
                filters: filters)
        }
        let route = HTTPRoute(
            metadata: ObjectMeta(name: "web", namespace: "default"),
            spec: HTTPRoute.Spec(
                parentRefs: [HTTPRoute.ParentReference(kind: "Service", name: "web", port: 80)],
                rules: [
                    rule(
                        "/api",
                        [
                            HTTPRoute.Filter(
                                type: "RequestHeaderModifier",
                                requestHeaderModifier: HTTPRoute.HeaderModifier(
                                    set: [HTTPRoute.Header(name: "x-tenant", value: "blue")], remove: ["x-drop"])),
                            HTTPRoute.Filter(
                                type: "ResponseHeaderModifier",
                                responseHeaderModifier: HTTPRoute.HeaderModifier(
                                    add: [HTTPRoute.Header(name: "x-served-by", value: "apus")])),
                        ]),
                    rule(
                        "/old",
                        [
                            HTTPRoute.Filter(
                                type: "RequestRedirect",
                                requestRedirect: HTTPRoute.RequestRedirect(
                                    path: HTTPRoute.PathModifier(
                                        type: "ReplacePrefixMatch", replacePrefixMatch: "/new"),
                                    statusCode: 301))
                        ]),
                    rule("/rewrite", [HTTPRoute.Filter(type: "URLRewrite", other: ["urlRewrite": .object([:])])]),
                ]))
        let profile = DestinationProfile(
            fullyQualifiedName: "web.default.svc.cluster.local", port: 80, source: .httpRoute,
            resources: ["default/web"], httpRoutes: [route])
        let proxy = try await RoutingFixture.proxy(Self.authority, backend: backend, profile: profile)
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }
        let url = "http://127.0.0.1:\(proxy.ports.outbound)"

        let api = try curl(["-H", "Host: \(Self.authority)", "-H", "x-tenant: red", "-H", "x-drop: 1", "\(url)/api/x"])
        #expect(api.status == 200)
        #expect(api.headers["x-echo-tenant"] == "blue")
        #expect(api.headers["x-echo-drop"] == nil)
        #expect(api.headers["x-served-by"] == "apus")

        let old = try curl(["-H", "Host: \(Self.authority)", "\(url)/old/page?q=1"])
        #expect(old.status == 301)
        #expect(old.headers["location"] == "http://web.default.svc.cluster.local/new/page?q=1")

        let rewrite = try curl(["-H", "Host: \(Self.authority)", "\(url)/rewrite/x"])
        #expect(rewrite.status == 500)
        #expect(rewrite.headers["l5d-proxy-error"]?.contains("URLRewrite") == true)
        // Neither the redirect nor the failed-closed rule reached the backend.
        #expect(backend.received() == 1)
    }

    /// `APUS_PROXY_OUTBOUND_STATIC_PROFILES` carries `GetProfile` profiles by authority; a profile that does not
    /// compile is refused at startup with the field that is wrong.
    @Test func staticProfilesFromTheEnvironment() throws {
        let valid = """
            {"web.shop:80": {"fullyQualifiedName": "web.shop.svc.cluster.local", "port": 80,
              "source": "serviceProfile", "resources": [], "routes": [{"name": "GET /", "condition":
              {"method": "GET", "pathRegex": "/"}, "timeout": "100ms"}], "retryBudget": {"retryRatio": 0.2,
              "minRetriesPerSecond": 10, "ttl": "10s"}, "dstOverrides": [], "opaquePorts": [], "httpRoutes": []}}
            """
        let configuration = try ProxyConfiguration.fromEnvironment(["APUS_PROXY_OUTBOUND_STATIC_PROFILES": valid])
        let profile = try #require(configuration.staticProfiles["web.shop:80"])
        #expect(profile.routes.first?.timeout == "100ms")

        let invalid = valid.replacingOccurrences(of: "\"100ms\"", with: "\"soon\"")
        #expect {
            try ProxyConfiguration.fromEnvironment(["APUS_PROXY_OUTBOUND_STATIC_PROFILES": invalid])
        } throws: { error in
            "\(error)".contains("spec.routes[0].timeout")
        }
    }

    /// Retries may add `retryRatio` × the requests of the window plus `minRetriesPerSecond` per second of the
    /// budget's age; deposits older than `ttl` stop funding retries.
    @Test func retryBudgetArithmetic() {
        let second: UInt64 = 1_000_000_000
        let budget = RetryBudget(
            CompiledServiceProfile.RetryBudget(
                retryRatio: 0.2, minRetriesPerSecond: 10, ttl: GoDuration(nanoseconds: 10_000_000_000)),
            now: 100 * second)
        let start = 100 * second
        // At creation nothing is available: no burst of retries before any traffic.
        #expect(!budget.withdraw(now: start))
        for _ in 0..<50 { budget.deposit(now: start) }
        // 50 requests fund 10 retries.
        var granted = 0
        while budget.withdraw(now: start) { granted += 1 }
        #expect(granted == 10)
        // Half a second later the per-second floor added 5 more.
        granted = 0
        while budget.withdraw(now: start + second / 2) { granted += 1 }
        #expect(granted == 5)
        // Past the ttl the deposits and withdrawals expired; the floor is capped at ttl × 10 = 100.
        #expect(budget.available(now: start + 30 * second) == 100)
    }
}
