import ApusCore
import ApusDestinationClient
import ApusProxy
import Foundation
import NIOCore
import Testing

/// Route timeouts end to end: an in-process proxy with static endpoints and profiles, in-test backends with
/// controlled latency, `curl` as the client.
@Suite(.serialized) struct TimeoutTests {
    static let hello = "hello.default.svc.cluster.local:80"
    static let world = "world.default.svc.cluster.local:80"

    static func profile(_ authority: String, timeout: String) -> DestinationProfile {
        DestinationProfile(
            fullyQualifiedName: String(authority.prefix { $0 != ":" }), port: 80, source: .serviceProfile,
            routes: [RoutingFixture.route("GET /", pathRegex: "/.*", method: "GET", timeout: timeout)])
    }

    /// Seed 002: `world` answers in ~10 ms with a 100 ms route timeout, `hello` in 500 ms with 600 ms. Both
    /// succeed; slowed past their timeouts they answer 504 with `l5d-proxy-error`, when the timeout expires.
    @Test func seed002PerServiceTimeouts() async throws {
        let helloBackend = try await ScriptedBackend.start()
        let worldBackend = try await ScriptedBackend.start()
        helloBackend.set("/", .init(delay: .milliseconds(500)))
        worldBackend.set("/", .init(delay: .milliseconds(10)))
        let proxy = try await RunningProxy.start { configuration in
            configuration.staticEndpoints = [
                Self.hello: [RoutingFixture.endpoint(helloBackend)],
                Self.world: [RoutingFixture.endpoint(worldBackend)],
            ]
            configuration.staticProfiles = [
                Self.hello: Self.profile(Self.hello, timeout: "600ms"),
                Self.world: Self.profile(Self.world, timeout: "100ms"),
            ]
        }
        defer {
            Task {
                await proxy.stop()
                await helloBackend.stop()
                await worldBackend.stop()
            }
        }

        let (helloOK, _) = try RoutingFixture.timed(proxy: proxy, host: Self.hello, path: "/hello")
        let (worldOK, _) = try RoutingFixture.timed(proxy: proxy, host: Self.world, path: "/world")
        #expect(helloOK.status == 200)
        #expect(worldOK.status == 200)

        helloBackend.set("/", .init(delay: .milliseconds(650)))
        let (helloSlow, helloElapsed) = try RoutingFixture.timed(proxy: proxy, host: Self.hello, path: "/hello")
        #expect(helloSlow.status == 504)
        #expect(helloSlow.headers["l5d-proxy-error"] == "request timed out")
        #expect(helloElapsed >= .milliseconds(550) && helloElapsed <= .milliseconds(650), "took \(helloElapsed)")

        worldBackend.set("/", .init(delay: .milliseconds(150)))
        let (worldSlow, worldElapsed) = try RoutingFixture.timed(proxy: proxy, host: Self.world, path: "/world")
        #expect(worldSlow.status == 504)
        #expect(worldSlow.headers["l5d-proxy-error"] == "request timed out")
        #expect(worldElapsed >= .milliseconds(90) && worldElapsed <= .milliseconds(145), "took \(worldElapsed)")

        // The proxy is still healthy for the next request on the same route (the timed-out upstream connection
        // was closed, not handed to this request).
        worldBackend.set("/", .init(delay: .milliseconds(10)))
        let (worldAgain, _) = try RoutingFixture.timed(proxy: proxy, host: Self.world, path: "/world")
        #expect(worldAgain.status == 200)

        let metrics = try RoutingFixture.metrics(proxy)
        let hello = ["dst=\"\(Self.hello)\"", "rt_route=\"GET /\""]
        #expect(RoutingFixture.sample(metrics, "route_timeouts_total", hello) == 1)
        #expect(RoutingFixture.sample(metrics, "route_response_total", hello + ["status_code=\"504\""]) == 1)
        #expect(RoutingFixture.sample(metrics, "route_response_total", hello + ["status_code=\"200\""]) == 1)
        #expect(RoutingFixture.sample(metrics, "outbound_http_errors_total", ["error=\"request_timeout\""]) == 2)
    }

    /// The timed-out attempt is cancelled without harming others: over HTTP/2 only its stream is reset (the
    /// multiplexed upstream connection carries the next request), over HTTP/1.1 its connection is closed rather
    /// than pooled (the next request opens a new one).
    @Test(arguments: [false, true]) func timedOutAttemptIsCancelledOnItsStreamOrConnection(http2: Bool) async throws {
        let backend = try await ScriptedBackend.start(http2: http2)
        backend.set("/slow", .init(delay: .milliseconds(400)))
        let authority = "slow.default.svc.cluster.local:80"
        let profile = DestinationProfile(
            fullyQualifiedName: "slow.default.svc.cluster.local", port: 80, source: .serviceProfile,
            routes: [RoutingFixture.route("all", pathRegex: "/.*", timeout: "100ms")])
        let proxy = try await RoutingFixture.proxy(authority, backend: backend, profile: profile)
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let (fast, _) = try RoutingFixture.timed(proxy: proxy, host: authority, path: "/fast", http2: http2)
        #expect(fast.status == 200)
        let (slow, _) = try RoutingFixture.timed(proxy: proxy, host: authority, path: "/slow", http2: http2)
        #expect(slow.status == 504)
        #expect(slow.headers["l5d-proxy-error"] == "request timed out")
        let (again, _) = try RoutingFixture.timed(proxy: proxy, host: authority, path: "/fast", http2: http2)
        #expect(again.status == 200)
        #expect(backend.connections == (http2 ? 1 : 2))
    }

    /// HTTPRoute `timeouts.request` applies to the rule it is on; `[DEFAULT]` (no rule matched) has none.
    @Test func httpRouteRequestTimeoutAppliesToItsRule() async throws {
        let backend = try await ScriptedBackend.start()
        backend.set("/", .init(delay: .milliseconds(300)))
        let authority = "web.default.svc.cluster.local:80"
        let route = HTTPRoute(
            metadata: ObjectMeta(name: "web-api", namespace: "default"),
            spec: HTTPRoute.Spec(
                parentRefs: [HTTPRoute.ParentReference(kind: "Service", name: "web", port: 80)],
                rules: [
                    HTTPRoute.Rule(
                        matches: [HTTPRoute.Match(path: HTTPRoute.PathMatch(type: "PathPrefix", value: "/api"))],
                        timeouts: HTTPRoute.Timeouts(request: "100ms"))
                ]))
        let profile = DestinationProfile(
            fullyQualifiedName: "web.default.svc.cluster.local", port: 80, source: .httpRoute,
            resources: ["default/web-api"], httpRoutes: [route])
        let proxy = try await RoutingFixture.proxy(authority, backend: backend, profile: profile)
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let (api, apiElapsed) = try RoutingFixture.timed(proxy: proxy, host: authority, path: "/api/users")
        #expect(api.status == 504)
        #expect(api.headers["l5d-proxy-error"] == "request timed out")
        #expect(apiElapsed < .milliseconds(250), "took \(apiElapsed)")
        let (other, _) = try RoutingFixture.timed(proxy: proxy, host: authority, path: "/home")
        #expect(other.status == 200)

        let metrics = try RoutingFixture.metrics(proxy)
        #expect(RoutingFixture.sample(metrics, "route_timeouts_total", ["rt_route=\"web-api\""]) == 1)
        #expect(RoutingFixture.sample(metrics, "route_request_total", ["rt_route=\"[DEFAULT]\""]) == 1)
    }
}
