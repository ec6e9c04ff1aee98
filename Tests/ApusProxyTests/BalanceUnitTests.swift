import ApusCore
import ApusDestinationClient
import NIOCore
import NIOEmbedded
import Testing

@testable import ApusProxy

/// A settable monotonic clock for the balancer.
final class FakeClock {
    var now: UInt64 = 1_000_000_000_000

    func advance(milliseconds: UInt64) { now += milliseconds * 1_000_000 }
}

private func endpoints(_ ports: [Int]) -> EndpointSet {
    Dictionary(
        uniqueKeysWithValues: ports.map { port in
            let endpoint = Endpoint(address: "10.0.0.1", port: port)
            return (endpoint.key, endpoint)
        })
}

private let noJitter = FailureAccrualPolicy(
    maxFailures: 7, minPenaltyNanos: 1_000_000_000, maxPenaltyNanos: 60_000_000_000, jitterRatio: 0)

@Suite struct BalanceUnitTests {
    @Test("peak-EWMA: a slower response raises the estimate at once, faster ones lower it only over time")
    func peakEWMA() {
        var ewma = PeakEWMA(defaultRTTNanos: 30_000_000, decayNanos: 10_000_000_000, now: 0)
        #expect(ewma.observe(rttNanos: 100_000_000, now: 1_000_000) == 100_000_000)
        // 1 ms later a 5 ms response barely moves it: the decay is over wall time, not per sample.
        let after = ewma.observe(rttNanos: 5_000_000, now: 2_000_000)
        #expect(after > 99_000_000 && after < 100_000_000)
        // Ten seconds (one time constant) later it has moved ~63 % of the way toward the new sample.
        let later = ewma.observe(rttNanos: 5_000_000, now: 10_002_000_000)
        #expect(abs(later - (5_000_000 + (after - 5_000_000) * 0.3679)) < 100_000)
        // Unpicked, the estimate decays toward zero so the endpoint is eventually tried again.
        #expect(ewma.decayed(now: 60_002_000_000) < 1_000_000)
    }

    @Test("P2C over peak-EWMA sends few requests to an endpoint 10x slower than the others")
    func slowEndpointAvoided() throws {
        let clock = FakeClock()
        let balancer = LoadBalancer(clock: { clock.now }, random: BalancerRandom(seed: 7))
        balancer.update(endpoints([1, 2, 3]))
        var picks: [Int: Int] = [:]
        for _ in 0..<3_000 {
            let lease = try #require(balancer.pick())
            picks[lease.endpoint.port, default: 0] += 1
            clock.advance(milliseconds: lease.endpoint.port == 3 ? 50 : 5)
            lease.complete(failed: false)
        }
        #expect(picks.values.reduce(0, +) == 3_000)
        #expect(picks[3, default: 0] < 3_000 * 5 / 100, "slow endpoint got \(picks[3, default: 0]) of 3000")
        #expect(picks[1, default: 0] > 1_000 && picks[2, default: 0] > 1_000)
    }

    @Test("requests in flight multiply an endpoint's cost, so equal endpoints take turns under load")
    func pendingPenalty() throws {
        let clock = FakeClock()
        let balancer = LoadBalancer(clock: { clock.now }, random: BalancerRandom(seed: 1))
        balancer.update(endpoints([1, 2]))
        let first = try #require(balancer.pick())
        let second = try #require(balancer.pick())
        #expect(first.endpoint != second.endpoint)
        let third = try #require(balancer.pick())
        let fourth = try #require(balancer.pick())
        #expect(third.endpoint != fourth.endpoint)
        #expect(balancer.inFlightCount == 4)
        for lease in [first, second, third, fourth] { lease.complete(failed: false) }
        #expect(balancer.inFlightCount == 0)
    }

    @Test("endpoint set updates apply live: in-flight requests to removed endpoints finish, state of kept ones stays")
    func liveUpdates() throws {
        let clock = FakeClock()
        let balancer = LoadBalancer(clock: { clock.now }, random: BalancerRandom(seed: 3))
        balancer.update(endpoints([1, 2]))
        // Endpoint 2 turns slow and is learned as such.
        var inFlightToOne: EndpointLease?
        for _ in 0..<20 {
            let lease = try #require(balancer.pick())
            clock.advance(milliseconds: lease.endpoint.port == 2 ? 200 : 2)
            if lease.endpoint.port == 1 && inFlightToOne == nil {
                inFlightToOne = lease
            } else {
                lease.complete(failed: false)
            }
        }
        let held = try #require(inFlightToOne)
        // 1 leaves and 3 joins while a request to 1 is still in flight.
        balancer.update(endpoints([2, 3]))
        #expect(balancer.readyCount == 2)
        held.complete(failed: false)
        var picks: [Int: Int] = [:]
        for _ in 0..<100 {
            let lease = try #require(balancer.pick())
            picks[lease.endpoint.port, default: 0] += 1
            clock.advance(milliseconds: 2)
            lease.complete(failed: false)
        }
        #expect(picks[1] == nil)
        #expect(picks[3, default: 0] > 90, "the slow endpoint kept its estimate across the update: \(picks)")
    }

    @Test("failure accrual: 7 consecutive failures eject an endpoint; one probe after the penalty; success returns it")
    func failureAccrualEjectsAndProbes() throws {
        let clock = FakeClock()
        let balancer = LoadBalancer(failureAccrual: noJitter, clock: { clock.now }, random: BalancerRandom(seed: 5))
        balancer.update(endpoints([1, 2, 3]))
        var failuresOfOne = 0
        while failuresOfOne < 7 {
            let lease = try #require(balancer.pick())
            clock.advance(milliseconds: 1)
            if lease.endpoint.port == 1 { failuresOfOne += 1 }
            lease.complete(failed: lease.endpoint.port == 1)
        }
        #expect(balancer.readyCount == 2 && balancer.pendingCount == 1)
        for _ in 0..<200 {
            let lease = try #require(balancer.pick())
            #expect(lease.endpoint.port != 1)
            lease.complete(failed: false)
        }
        // The penalty (1 s, no jitter) ends: the next request is the single probe.
        clock.advance(milliseconds: 1_000)
        let probe = try #require(balancer.pick())
        #expect(probe.endpoint.port == 1 && probe.isProbe)
        // While the probe is in flight the endpoint gets nothing else.
        for _ in 0..<50 {
            let lease = try #require(balancer.pick())
            #expect(lease.endpoint.port != 1)
            lease.complete(failed: false)
        }
        // A failed probe doubles the penalty: not probed again after 1 s, but after 2 s.
        probe.complete(failed: true)
        clock.advance(milliseconds: 1_500)
        let notYet = try #require(balancer.pick())
        #expect(notYet.endpoint.port != 1)
        notYet.complete(failed: false)
        clock.advance(milliseconds: 600)
        let second = try #require(balancer.pick())
        #expect(second.endpoint.port == 1 && second.isProbe)
        second.complete(failed: false)
        #expect(balancer.readyCount == 3 && balancer.pendingCount == 0)
    }

    @Test("a success resets the consecutive count; without a policy endpoints are never ejected")
    func consecutiveOnly() throws {
        let clock = FakeClock()
        let balancer = LoadBalancer(failureAccrual: noJitter, clock: { clock.now })
        balancer.update(endpoints([1]))
        for failed in Array(repeating: true, count: 6) + [false] + Array(repeating: true, count: 6) {
            try #require(balancer.pick()).complete(failed: failed)
        }
        #expect(balancer.readyCount == 1)
        try #require(balancer.pick()).complete(failed: true)
        #expect(balancer.readyCount == 0 && balancer.pick() == nil)

        let lenient = LoadBalancer(clock: { clock.now })
        lenient.update(endpoints([1]))
        for _ in 0..<50 { try #require(lenient.pick()).complete(failed: true) }
        #expect(lenient.readyCount == 1)
        // Turning accrual off returns ejected endpoints at once.
        balancer.update(failureAccrual: nil)
        #expect(balancer.readyCount == 1)
    }

    @Test("penalties grow from min to max with bounded jitter; annotations' policy converts")
    func penalties() {
        var random = BalancerRandom(seed: 9)
        let policy = FailureAccrualPolicy(
            RoutePolicy.FailureAccrual(
                consecutiveMaxFailures: 3, minPenalty: GoDuration(nanoseconds: 1_000_000_000),
                maxPenalty: GoDuration(nanoseconds: 10_000_000_000), jitterRatio: 0.5))
        #expect(policy.maxFailures == 3)
        for _ in 0..<100 {
            let first = policy.penaltyNanos(ejections: 0, random: &random)
            #expect(first >= 1_000_000_000 && first < 1_500_000_000)
            let third = policy.penaltyNanos(ejections: 2, random: &random)
            #expect(third >= 4_000_000_000 && third < 6_000_000_000)
            #expect(policy.penaltyNanos(ejections: 40, random: &random) == 10_000_000_000)
        }
    }

    @Test("queue: a request waits for an endpoint, fails fast after the timeout, and is refused when full")
    func queue() throws {
        let loop = EmbeddedEventLoop()
        let clock = FakeClock()
        let settings = BalancerSettings(queueCapacity: 2, failFastTimeout: .seconds(3))
        let balancer = LoadBalancer(settings: settings, eventLoop: loop, clock: { clock.now })
        var results: [Result<EndpointLease, BalancerError>] = []
        balancer.acquire { results.append($0) }
        balancer.acquire { results.append($0) }
        balancer.acquire { results.append($0) }
        #expect(results.count == 1)
        #expect(throws: BalancerError.self) { try results[0].get() }
        if case .failure(let error) = results[0] { #expect(error.reason == .queueFull) }
        #expect(balancer.queuedCount == 2)
        // Endpoints arrive within the timeout: both waiters are served, in order.
        loop.advanceTime(by: .seconds(1))
        balancer.update(endpoints([1]))
        #expect(results.count == 3 && balancer.queuedCount == 0)
        #expect(try results[1].get().endpoint.port == 1 && results[2].get().endpoint.port == 1)

        // No endpoint within 3 s: 503-worthy fail-fast error.
        balancer.update(endpoints([]))
        var late: Result<EndpointLease, BalancerError>?
        balancer.acquire { late = $0 }
        loop.advanceTime(by: .milliseconds(2_999))
        #expect(late == nil)
        loop.advanceTime(by: .milliseconds(1))
        guard case .failure(let error) = late else {
            Issue.record("expected fail-fast, got \(String(describing: late))")
            return
        }
        #expect(error.reason == .failFast && error.message.contains("no endpoints"))
        _ = try? loop.syncShutdownGracefully()
    }

    @Test("queue: while every endpoint is ejected, a waiting request becomes the probe when the penalty ends")
    func queuedProbe() throws {
        let loop = EmbeddedEventLoop()
        let clock = FakeClock()
        let balancer = LoadBalancer(failureAccrual: noJitter, eventLoop: loop, clock: { clock.now })
        balancer.update(endpoints([1]))
        for _ in 0..<7 { try #require(balancer.pick()).complete(failed: true) }
        var result: Result<EndpointLease, BalancerError>?
        balancer.acquire { result = $0 }
        #expect(result == nil)
        clock.advance(milliseconds: 1_000)
        loop.advanceTime(by: .seconds(1))
        let lease = try #require(try result?.get())
        #expect(lease.isProbe && lease.endpoint.port == 1)
        lease.complete(failed: false)
        #expect(balancer.readyCount == 1)
        _ = try? loop.syncShutdownGracefully()
    }

    @Test("traffic split: exact 90/10 proportions, spread out, and weights changed live apply to the next requests")
    func split() throws {
        let split = TrafficSplit([
            WeightedBackend(authority: "v1:80", weight: 900), WeightedBackend(authority: "v2:80", weight: 100),
        ])
        var counts: [String: Int] = [:]
        var longestRunOfV2 = 0
        var run = 0
        for _ in 0..<5_000 {
            let backend = try #require(split.pick()).authority
            counts[backend, default: 0] += 1
            run = backend == "v2:80" ? run + 1 : 0
            longestRunOfV2 = max(longestRunOfV2, run)
        }
        #expect(counts == ["v1:80": 4_500, "v2:80": 500])
        #expect(longestRunOfV2 == 1)
        split.update([WeightedBackend(authority: "v1:80", weight: 1), WeightedBackend(authority: "v2:80", weight: 1)])
        counts = [:]
        for _ in 0..<1_000 { counts[try #require(split.pick()).authority, default: 0] += 1 }
        #expect(counts == ["v1:80": 500, "v2:80": 500])
        split.update([WeightedBackend(authority: "v1:80", weight: 0), WeightedBackend(authority: "v3:80", weight: 2)])
        #expect(split.pick()?.authority == "v3:80")
        split.update([WeightedBackend(authority: "v1:80", weight: 0)])
        #expect(split.pick() == nil)
    }

    @Test("split backends: dstOverrides quantities and HTTPRoute backendRefs")
    func splitBackends() throws {
        let overrides = WeightedBackend.from(dstOverrides: [
            .init(authority: "web-v1.shop.svc.cluster.local.:80", weight: "500m"),
            .init(authority: "web-v2.shop.svc.cluster.local:80", weight: "1"),
            .init(authority: "broken:80", weight: "lots"),
            .init(authority: nil, weight: "1"),
        ])
        #expect(
            overrides == [
                WeightedBackend(authority: "web-v1.shop.svc.cluster.local:80", weight: 500),
                WeightedBackend(authority: "web-v2.shop.svc.cluster.local:80", weight: 1_000),
            ])
        let route = HTTPRoute(
            metadata: ObjectMeta(name: "web", namespace: "shop"),
            spec: HTTPRoute.Spec(
                parentRefs: [HTTPRoute.ParentReference(kind: "Service", name: "web", port: 80)],
                rules: [
                    HTTPRoute.Rule(backendRefs: [
                        HTTPRoute.BackendRef(name: "web-v1", port: 80, weight: 90),
                        HTTPRoute.BackendRef(name: "web-v2", namespace: "canary", port: 8080, weight: 10),
                    ])
                ]))
        let rule = try #require(try route.compile().rules.first)
        #expect(
            WeightedBackend.from(rule: rule, clusterDomain: "cluster.local") == [
                WeightedBackend(authority: "web-v1.shop.svc.cluster.local:80", weight: 90),
                WeightedBackend(authority: "web-v2.canary.svc.cluster.local:8080", weight: 10),
            ])
    }
}
