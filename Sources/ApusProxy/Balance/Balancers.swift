import ApusCore
import ApusDestinationClient
import NIOConcurrencyHelpers
import NIOCore

/// The balancers and traffic splits of one listener, one per destination per event loop, so the per-request
/// path touches only loop-confined state (one lock-protected dictionary read to find the loop's table).
///
/// ```swift
/// // on the connection's event loop, per request:
/// let balancer = balancers.balancer(for: "web.shop.svc.cluster.local:80", on: loop)
/// balancer.update(endpointSet)                       // O(1) when the resolver's set did not change
/// balancer.update(failureAccrual: policy)            // from the profile's servicePolicy
/// balancer.acquire { result in … lease.complete(failed: status >= 500) … }
/// ```
///
/// A destination unused for ``idleTimeout`` with nothing in flight or queued is forgotten (its latency
/// estimates and ejections with it), checked at most once a minute per loop, so a proxy that talked to many
/// destinations once does not keep them all.
public final class Balancers: Sendable {
    public let settings: BalancerSettings
    public let idleTimeout: Duration
    private let seed: UInt64?
    private let gauges: BalancerEndpointGauges?
    private let tables = NIOLockedValueBox<[ObjectIdentifier: NIOLoopBoundBox<LoopTable>]>([:])

    final class LoopTable {
        var balancers: [String: LoadBalancer] = [:]
        var splits: [String: (split: TrafficSplit, lastUsed: UInt64)] = [:]
        var overrides: [String: (source: [ServiceProfile.WeightedDestination], split: TrafficSplit)] = [:]
        var lastSweep: UInt64
        var created: UInt64 = 0

        init(now: UInt64) {
            lastSweep = now
        }
    }

    /// - Parameters:
    ///   - seed: makes every balancer's random choices reproducible (tests); nil seeds from the system.
    ///   - gauges: where balancers report their ready/pending endpoint counts (the outbound listener's).
    public init(
        settings: BalancerSettings = .outbound, idleTimeout: Duration = .seconds(300), seed: UInt64? = nil,
        gauges: BalancerEndpointGauges? = nil
    ) {
        self.settings = settings
        self.gauges = gauges
        self.idleTimeout = idleTimeout
        self.seed = seed
    }

    /// The balancer for `destination` on `loop`; call on `loop` and use the result only there.
    public func balancer(for destination: String, on loop: EventLoop) -> LoadBalancer {
        let table = table(for: loop)
        if let balancer = table.balancers[destination] { return balancer }
        sweepIfDue(table)
        table.created &+= 1
        let random = seed.map { BalancerRandom(seed: $0 &+ table.created) } ?? BalancerRandom()
        let balancer = LoadBalancer(
            settings: settings, eventLoop: loop, random: random, gauges: gauges, destination: destination)
        table.balancers[destination] = balancer
        return balancer
    }

    /// The traffic split for `destination` on `loop`, updated to `backends`; call on `loop`.
    public func split(for destination: String, backends: [WeightedBackend], on loop: EventLoop) -> TrafficSplit {
        let table = table(for: loop)
        let now = NIODeadline.now().uptimeNanoseconds
        if let entry = table.splits[destination] {
            entry.split.update(backends)
            table.splits[destination]?.lastUsed = now
            return entry.split
        }
        sweepIfDue(table)
        let split = TrafficSplit(backends)
        table.splits[destination] = (split, now)
        return split
    }

    /// The split of a ServiceProfile's `dstOverrides` for `destination` on `loop`; the quantities are parsed
    /// again only when the overrides change (the resolver hands out the same array until then, so the check is
    /// an identity comparison).
    public func split(
        for destination: String, dstOverrides: [ServiceProfile.WeightedDestination], on loop: EventLoop
    ) -> TrafficSplit {
        let table = table(for: loop)
        if let cached = table.overrides[destination], cached.source == dstOverrides {
            table.splits[destination]?.lastUsed = NIODeadline.now().uptimeNanoseconds
            return cached.split
        }
        let split = split(for: destination, backends: WeightedBackend.from(dstOverrides: dstOverrides), on: loop)
        table.overrides[destination] = (dstOverrides, split)
        return split
    }

    /// Ready and ejected endpoint counts over every balancer (`outbound_http_balancer_endpoints`); a snapshot
    /// taken on each loop in turn.
    public func endpointCounts() async -> (ready: Int, pending: Int) {
        let boxes = tables.withLockedValue { Array($0.values) }
        var ready = 0
        var pending = 0
        for box in boxes {
            let counts = try? await box.eventLoop.submit {
                box.value.balancers.values.reduce((0, 0)) { ($0.0 + $1.readyCount, $0.1 + $1.pendingCount) }
            }.get()
            ready += counts?.0 ?? 0
            pending += counts?.1 ?? 0
        }
        return (ready, pending)
    }

    private func table(for loop: EventLoop) -> LoopTable {
        let key = ObjectIdentifier(loop)
        if let box = tables.withLockedValue({ $0[key] }) { return box.value }
        let box = NIOLoopBoundBox(LoopTable(now: NIODeadline.now().uptimeNanoseconds), eventLoop: loop)
        return tables.withLockedValue { tables in
            if let existing = tables[key] { return existing.value }
            tables[key] = box
            return box.value
        }
    }

    private func sweepIfDue(_ table: LoopTable) {
        let now = NIODeadline.now().uptimeNanoseconds
        guard now &- table.lastSweep >= 60_000_000_000 else { return }
        table.lastSweep = now
        let (seconds, attoseconds) = idleTimeout.components
        let idle = UInt64(clamping: max(seconds, 0)) &* 1_000_000_000 &+ UInt64(max(attoseconds, 0) / 1_000_000_000)
        table.balancers = table.balancers.filter { _, balancer in
            let keep = balancer.inFlightCount > 0 || balancer.queuedCount > 0 || now &- balancer.lastUsedNanos < idle
            if !keep { balancer.retire() }
            return keep
        }
        table.splits = table.splits.filter { now &- $0.value.lastUsed < idle }
        table.overrides = table.overrides.filter { table.splits[$0.key] != nil }
    }
}
