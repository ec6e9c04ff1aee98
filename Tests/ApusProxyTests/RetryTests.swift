import ApusCore
import ApusDestinationClient
import ApusProxy
import Foundation
import NIOCore
import Testing

/// Budgeted (ServiceProfile) and count-limited (HTTPRoute) retries end to end, against backends whose failures
/// the test scripts and counts.
@Suite(.serialized) struct RetryTests {
    static let authority = "books.default.svc.cluster.local:80"

    static func profile(
        _ routes: [ServiceProfile.Route], budget: ServiceProfile.RetryBudget = DestinationProfile.defaultBudget
    ) -> DestinationProfile {
        DestinationProfile(
            fullyQualifiedName: "books.default.svc.cluster.local", port: 80, source: .serviceProfile,
            routes: routes, retryBudget: budget)
    }

    /// 30 % of attempts fail (every third-ish, never twice in a row): retries within the default budget (20 % of
    /// requests plus 10/s) hide them. Requests are paced by the backend's 30 ms latency, as a service at ~30 req/s.
    @Test func retryableRouteHidesThirtyPercentFailures() async throws {
        let backend = try await ScriptedBackend.start()
        let pattern = [false, false, true, false, true, false, false, true, false, false]
        backend.set("/books", .init(delay: .milliseconds(30), failurePattern: pattern))
        let route = RoutingFixture.route("GET /books", pathRegex: "/books.*", method: "GET", retryable: true)
        let proxy = try await RoutingFixture.proxy(
            Self.authority, backend: backend, profile: Self.profile([route]))
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let statuses = try RoutingFixture.statuses(proxy: proxy, host: Self.authority, path: "/books/1", count: 100)
        #expect(statuses.count == 100)
        let succeeded = statuses.filter { $0 == 200 }.count
        #expect(succeeded >= 99, "\(succeeded) of 100 succeeded")
        // Every failed attempt was retried once: the backend saw the offered load plus the failures.
        #expect(backend.received() > 100)

        let metrics = try RoutingFixture.metrics(proxy)
        let labels = ["rt_route=\"GET /books\""]
        let retries = try #require(RoutingFixture.sample(metrics, "route_retries_total", labels))
        #expect(retries >= 29)
        #expect(RoutingFixture.sample(metrics, "route_retryable_total", labels) == 100)
        #expect(RoutingFixture.sample(metrics, "route_actual_request_total", labels) == 100 + retries)
        let failedAttempts = RoutingFixture.sample(
            metrics, "route_actual_response_total", labels + ["status_code=\"500\""])
        #expect((failedAttempts ?? 0) >= 29)
        #expect((RoutingFixture.sample(metrics, "route_response_total", labels + ["status_code=\"200\""]) ?? 0) >= 99)
    }

    /// A backend failing every request: retries stop at the budget, so the backend sees at most
    /// (1 + retryRatio) × offered + minRetriesPerSecond × duration requests, not a retry storm.
    @Test func failingBackendLoadStaysWithinTheBudget() async throws {
        let backend = try await ScriptedBackend.start()
        backend.set("/books", .init(delay: .milliseconds(5), failurePattern: [true]))
        // The budget exists (and its per-second floor accrues) from the proxy's start: the duration counts from
        // before it.
        let started = ContinuousClock.now
        let proxy = try await RoutingFixture.proxy(
            Self.authority, backend: backend,
            profile: Self.profile([RoutingFixture.route("GET /books", pathRegex: "/books.*", retryable: true)]))
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let statuses = try RoutingFixture.statuses(proxy: proxy, host: Self.authority, path: "/books/1", count: 200)
        let duration = ContinuousClock.now - started
        #expect(statuses.count == 200)
        #expect(statuses.allSatisfy { $0 == 500 })
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        let bound = 1.2 * 200 + 10 * seconds
        let load = backend.received()
        #expect(Double(load) <= bound, "backend saw \(load) requests, bound \(bound) over \(duration)")
        #expect(load > 200, "no retry was attempted at all")

        let metrics = try RoutingFixture.metrics(proxy)
        let skipped = RoutingFixture.sample(
            metrics, "route_retry_skipped_total", ["rt_route=\"GET /books\"", "reason=\"budget\""])
        #expect((skipped ?? 0) > 0)
    }

    /// A POST on a route that is not retryable goes to the backend exactly once, failing or not.
    @Test func postOnNonRetryableRouteIsNeverRetried() async throws {
        let backend = try await ScriptedBackend.start()
        backend.set("/orders", .init(failurePattern: [true], failStatus: 503))
        let proxy = try await RoutingFixture.proxy(
            Self.authority, backend: backend,
            profile: Self.profile([
                RoutingFixture.route("POST /orders", pathRegex: "/orders", method: "POST"),
                RoutingFixture.route("GET /books", pathRegex: "/books.*", retryable: true),
            ]))
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let statuses = try RoutingFixture.statuses(
            proxy: proxy, host: Self.authority, path: "/orders", count: 20, method: "POST", body: "order")
        #expect(statuses == Array(repeating: 503, count: 20))
        #expect(backend.received(method: "POST") == 20)
        let metrics = try RoutingFixture.metrics(proxy)
        #expect(RoutingFixture.sample(metrics, "route_retries_total", ["rt_route=\"POST /orders\""]) == 0)
    }

    /// Bodies are replayed from a 64 KiB buffer: a small POST on a retryable route is retried, a larger one is
    /// not (counted as skipped for its body). A ratio of 1 lets the very first request fund its retry.
    @Test func onlyBodiesThatFitTheReplayBufferAreRetried() async throws {
        let backend = try await ScriptedBackend.start()
        backend.set("/upload", .init(failurePattern: [true, false]))
        let proxy = try await RoutingFixture.proxy(
            Self.authority, backend: backend,
            profile: Self.profile(
                [RoutingFixture.route("upload", pathRegex: "/upload", retryable: true)],
                budget: ServiceProfile.RetryBudget(retryRatio: 1, minRetriesPerSecond: 10, ttl: "10s")))
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let small = try RoutingFixture.statuses(
            proxy: proxy, host: Self.authority, path: "/upload", count: 1, method: "POST", body: "small")
        #expect(small == [200])
        #expect(backend.received() == 2)

        let large = String(repeating: "x", count: 100 * 1024)
        let big = try RoutingFixture.statuses(
            proxy: proxy, host: Self.authority, path: "/upload", count: 1, method: "POST", body: large)
        #expect(big == [500])
        #expect(backend.received() == 3)
        let metrics = try RoutingFixture.metrics(proxy)
        #expect(
            RoutingFixture.sample(metrics, "route_retry_skipped_total", ["rt_route=\"upload\"", "reason=\"body\""])
                == 1)
    }

    /// HTTPRoute retries (`retry.linkerd.io/http`, `limit`): listed statuses are retried up to the limit, with
    /// backoff; other statuses are returned as they are.
    @Test func httpRouteRetriesUpToTheLimit() async throws {
        let backend = try await ScriptedBackend.start()
        backend.set("/twice", .init(failurePattern: [true, true, false], failStatus: 503))
        backend.set("/always", .init(failurePattern: [true], failStatus: 503))
        backend.set("/teapot", .init(failurePattern: [true], failStatus: 418))
        let route = HTTPRoute(
            metadata: ObjectMeta(name: "books", namespace: "default"),
            spec: HTTPRoute.Spec(
                parentRefs: [HTTPRoute.ParentReference(kind: "Service", name: "books", port: 80)],
                rules: [HTTPRoute.Rule(matches: [HTTPRoute.Match(path: HTTPRoute.PathMatch(value: "/"))])]))
        let policy = RoutePolicy(retry: RoutePolicy.Retry(limit: 2, httpStatuses: [.gatewayErrors]))
        let profile = DestinationProfile(
            fullyQualifiedName: "books.default.svc.cluster.local", port: 80, source: .httpRoute,
            resources: ["default/books"], httpRoutes: [route], routePolicies: ["default/books": policy])
        let proxy = try await RoutingFixture.proxy(Self.authority, backend: backend, profile: profile)
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        #expect(try RoutingFixture.statuses(proxy: proxy, host: Self.authority, path: "/twice", count: 1) == [200])
        #expect(backend.received() == 3)
        #expect(try RoutingFixture.statuses(proxy: proxy, host: Self.authority, path: "/always", count: 1) == [503])
        #expect(backend.received() == 6)
        #expect(try RoutingFixture.statuses(proxy: proxy, host: Self.authority, path: "/teapot", count: 1) == [418])
        #expect(backend.received() == 7)
    }
}
