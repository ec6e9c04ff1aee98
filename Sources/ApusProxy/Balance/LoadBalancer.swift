import ApusDestinationClient
import NIOCore

/// The load-balancing defaults Linkerd ships, overridable for tests and tuning.
public struct BalancerSettings: Sendable, Hashable {
    /// The latency estimate of an endpoint that has not answered yet.
    public var defaultRTT: Duration
    /// The peak-EWMA decay time constant.
    public var decay: Duration
    /// Requests that may wait for an endpoint at once; more are refused at once with 503.
    public var queueCapacity: Int
    /// How long a request waits for an endpoint before it is refused with 503.
    public var failFastTimeout: Duration

    public init(
        defaultRTT: Duration = .milliseconds(30), decay: Duration = .seconds(10), queueCapacity: Int = 10_000,
        failFastTimeout: Duration = .seconds(3)
    ) {
        self.defaultRTT = defaultRTT
        self.decay = decay
        self.queueCapacity = queueCapacity
        self.failFastTimeout = failFastTimeout
    }

    /// Linkerd's outbound defaults: queue 10,000, fail-fast after 3 s.
    public static let outbound = BalancerSettings()
    /// Linkerd's inbound defaults: fail-fast after 1 s.
    public static let inbound = BalancerSettings(failFastTimeout: .seconds(1))
}

/// Why a request got no endpoint; the forwarding path answers 503 with ``message`` in `l5d-proxy-error`.
public struct BalancerError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: String, Hashable, Sendable {
        /// No endpoint became available within the fail-fast timeout.
        case failFast = "fail_fast"
        /// The queue of waiting requests is full.
        case queueFull = "queue_full"
    }

    public let reason: Reason
    public let message: String

    public var description: String { message }
}

/// The balancer's view of one endpoint. A class so that a request picked before the endpoint was removed from
/// the set still completes against it (its in-flight request finishes normally; the result is just not used).
final class BalancedEndpoint {
    var endpoint: Endpoint
    var ewma: PeakEWMA
    var pending = 0
    var consecutiveFailures = 0
    /// Back-to-back ejections so far (the backoff exponent); reset by a successful probe.
    var ejections = 0
    /// Set while the endpoint is out of the balancer; it may be probed once `now >= ejectedUntil`.
    var ejectedUntil: UInt64?
    /// The probe request is in flight.
    var probing = false
    var removed = false

    init(_ endpoint: Endpoint, ewma: PeakEWMA) {
        self.endpoint = endpoint
        self.ewma = ewma
    }

    var isReady: Bool { ejectedUntil == nil }
}

/// One request's claim on an endpoint. Complete it exactly once, when the response head arrives (or the attempt
/// fails): that is the round trip peak-EWMA learns from, and what failure accrual classifies. ``cancel()`` gives
/// the claim back without a verdict (the client went away first). Later calls are ignored, so the forwarding
/// path may call both on its error paths.
public final class EndpointLease {
    public let endpoint: Endpoint
    /// This request is the single probe of an endpoint that failure accrual ejected.
    public let isProbe: Bool
    let state: BalancedEndpoint
    let startedAt: UInt64
    private let balancer: LoadBalancer
    public private(set) var isDone = false

    init(state: BalancedEndpoint, isProbe: Bool, startedAt: UInt64, balancer: LoadBalancer) {
        self.endpoint = state.endpoint
        self.state = state
        self.isProbe = isProbe
        self.startedAt = startedAt
        self.balancer = balancer
    }

    /// The response head arrived (`failed` when it is a failure, e.g. 5xx) or the attempt failed (`failed`).
    public func complete(failed: Bool) {
        guard !isDone else { return }
        isDone = true
        balancer.complete(self, failed: failed)
    }

    /// Releases the endpoint without a verdict.
    public func cancel() {
        guard !isDone else { return }
        isDone = true
        balancer.cancel(self)
    }
}

/// Picks endpoints for one destination on one event loop: power of two choices over peak-EWMA latency, with
/// Linkerd's pending-request penalty, consecutive-failure accrual, and a bounded queue for requests that arrive
/// while no endpoint is available.
///
/// ```
/// acquire ─► probe due? ──yes──► that endpoint (its single probe)
///              │ no
///              ▼
///            ready endpoints: 0 ─► queue (≤ capacity) ── endpoint appears ─► served, FIFO
///              │ 1 ─► it                         └──── fail-fast timeout ─► 503
///              ▼ ≥2
///            two distinct at random; lower  ewma × (pending + 1)  wins
/// ```
///
/// Cost is what tower's `PeakEwma` computes: the estimate decays toward zero between reads, a slower response
/// raises it at once, and each request still in flight multiplies it, so a slow or busy endpoint loses most
/// comparisons while still being tried now and then (a decayed estimate) to notice it got faster.
///
/// Not thread-safe by design: one balancer per destination per event loop (``Balancers``), so picking costs no
/// lock. Endpoint-set updates keep the state of endpoints that stay; requests already sent to an endpoint that
/// leaves the set finish normally.
public final class LoadBalancer {
    public let settings: BalancerSettings
    public private(set) var failureAccrual: FailureAccrualPolicy?
    private let eventLoop: EventLoop?
    private let clock: () -> UInt64
    private var random: BalancerRandom
    private var endpoints: [String: BalancedEndpoint] = [:]
    /// Endpoints in the balancer (not ejected), in key order so seeded runs are reproducible.
    private var ready: [BalancedEndpoint] = []
    private var ejectedCount = 0
    private var lastSet: EndpointSet?
    private var waiters = CircularBuffer<Waiter>()
    private var activeWaiters = 0
    private var wakeup: (at: UInt64, task: Scheduled<Void>)?
    private let defaultRTTNanos: UInt64
    private let decayNanos: UInt64
    /// The clock reading of the last pick or completion, for idle eviction by ``Balancers``.
    public private(set) var lastUsedNanos: UInt64
    /// Where ready/pending counts are reported (``BalancerEndpointGauges``), under `gaugeKey`.
    private let gauges: BalancerEndpointGauges?
    private let gaugeKey: String
    private var reported = (ready: 0, pending: 0)

    private final class Waiter {
        let callback: (Result<EndpointLease, BalancerError>) -> Void
        var timeout: Scheduled<Void>?
        var isDone = false

        init(callback: @escaping (Result<EndpointLease, BalancerError>) -> Void) {
            self.callback = callback
        }
    }

    /// - Parameters:
    ///   - eventLoop: where queue timeouts and ejection wake-ups are scheduled; the balancer must only be used
    ///     on it. nil: no queue (``acquire(_:)`` fails at once when nothing is available), for pure unit use.
    ///   - clock: monotonic nanoseconds; injectable so tests drive EWMA decay and penalties.
    ///   - random: the P2C and jitter source; seed it for reproducible tests.
    ///   - gauges: where to report endpoint counts, labelled by `destination`.
    public init(
        settings: BalancerSettings = .outbound, failureAccrual: FailureAccrualPolicy? = nil,
        eventLoop: EventLoop? = nil, clock: @escaping () -> UInt64 = { NIODeadline.now().uptimeNanoseconds },
        random: BalancerRandom = BalancerRandom(), gauges: BalancerEndpointGauges? = nil, destination: String = ""
    ) {
        self.gauges = gauges
        gaugeKey = destination
        self.settings = settings
        self.failureAccrual = failureAccrual
        self.eventLoop = eventLoop
        self.clock = clock
        self.random = random
        defaultRTTNanos = Self.nanos(settings.defaultRTT)
        decayNanos = Self.nanos(settings.decay)
        lastUsedNanos = clock()
    }

    // MARK: Configuration

    /// Applies the destination's current endpoints. Cheap when `set` is the same dictionary as last time (the
    /// resolver hands out its cached value, so equality short-cuts on identical storage).
    public func update(_ set: EndpointSet) {
        if let lastSet, lastSet == set { return }
        lastSet = set
        let now = clock()
        var next: [String: BalancedEndpoint] = [:]
        next.reserveCapacity(set.count)
        for (key, endpoint) in set {
            if let existing = endpoints[key] {
                existing.endpoint = endpoint
                next[key] = existing
            } else {
                next[key] = BalancedEndpoint(
                    endpoint, ewma: PeakEWMA(defaultRTTNanos: defaultRTTNanos, decayNanos: decayNanos, now: now))
            }
        }
        for (key, old) in endpoints where next[key] == nil { old.removed = true }
        endpoints = next
        rebuildReady()
        drainQueue()
    }

    /// Changes (or turns off, with nil) failure accrual; turning it off or changing it returns every ejected
    /// endpoint to the balancer, so a policy edit never strands endpoints under an old penalty.
    public func update(failureAccrual policy: FailureAccrualPolicy?) {
        guard policy != failureAccrual else { return }
        failureAccrual = policy
        for state in endpoints.values {
            state.ejectedUntil = nil
            state.ejections = 0
            state.consecutiveFailures = 0
            state.probing = false
        }
        rebuildReady()
        drainQueue()
    }

    // MARK: Picking

    /// Endpoints currently in the balancer.
    public var readyCount: Int { ready.count }
    /// Endpoints ejected by failure accrual (Linkerd's `endpoint_state="pending"`).
    public var pendingCount: Int { ejectedCount }
    /// Requests waiting in the queue.
    public var queuedCount: Int { activeWaiters }
    /// Requests picked and not yet completed or cancelled.
    public var inFlightCount: Int { endpoints.values.reduce(0) { $0 + $1.pending } }

    /// An endpoint for one request now, or nil when none is available (empty set, or all ejected and no probe
    /// due).
    public func pick() -> EndpointLease? {
        let now = clock()
        lastUsedNanos = now
        if ejectedCount > 0, let probe = dueProbe(now: now) {
            probe.probing = true
            probe.pending += 1
            return EndpointLease(state: probe, isProbe: true, startedAt: now, balancer: self)
        }
        let chosen: BalancedEndpoint
        switch ready.count {
        case 0:
            return nil
        case 1:
            chosen = ready[0]
        default:
            let count = ready.count
            let first = Int(random.next() % UInt64(count))
            var second = Int(random.next() % UInt64(count - 1))
            if second >= first { second += 1 }
            let a = ready[first]
            let b = ready[second]
            chosen = cost(a, now: now) <= cost(b, now: now) ? a : b
        }
        chosen.pending += 1
        return EndpointLease(state: chosen, isProbe: false, startedAt: now, balancer: self)
    }

    /// An endpoint now if one is available, else when one becomes available, in arrival order; fails with
    /// ``BalancerError`` when the queue is full or after the fail-fast timeout. The callback runs on the event
    /// loop, possibly before this returns.
    public func acquire(_ callback: @escaping (Result<EndpointLease, BalancerError>) -> Void) {
        if activeWaiters == 0, let lease = pick() {
            callback(.success(lease))
            return
        }
        guard let eventLoop else {
            callback(.failure(failFastError()))
            return
        }
        guard activeWaiters < settings.queueCapacity else {
            callback(
                .failure(
                    BalancerError(
                        reason: .queueFull,
                        message: "\(settings.queueCapacity) requests already wait for an endpoint; queue is full")))
            return
        }
        let waiter = Waiter(callback: callback)
        waiters.append(waiter)
        activeWaiters += 1
        waiter.timeout = eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(settings.failFastTimeout)) {
            [self] in
            guard !waiter.isDone else { return }
            waiter.isDone = true
            activeWaiters -= 1
            waiter.callback(.failure(failFastError()))
        }
        drainQueue()
    }

    private func failFastError() -> BalancerError {
        let why = endpoints.isEmpty ? "the destination has no endpoints" : "every endpoint is failing"
        return BalancerError(
            reason: .failFast, message: "no endpoint available within \(settings.failFastTimeout): \(why)")
    }

    /// Tower's load metric: the decayed estimate times (in-flight + 1).
    private func cost(_ state: BalancedEndpoint, now: UInt64) -> Double {
        state.ewma.decayed(now: now) * Double(state.pending + 1)
    }

    private func dueProbe(now: UInt64) -> BalancedEndpoint? {
        var due: (state: BalancedEndpoint, until: UInt64)?
        for state in endpoints.values {
            guard let until = state.ejectedUntil, until <= now, !state.probing else { continue }
            // The longest-waiting first, key order on ties, so the choice does not depend on hashing.
            if let best = due,
                best.until < until || (best.until == until && best.state.endpoint.key < state.endpoint.key)
            {
                continue
            }
            due = (state, until)
        }
        return due?.state
    }

    // MARK: Completion

    fileprivate func complete(_ lease: EndpointLease, failed: Bool) {
        let now = clock()
        lastUsedNanos = now
        let state = lease.state
        state.pending -= 1
        state.ewma.observe(rttNanos: now >= lease.startedAt ? now - lease.startedAt : 0, now: now)
        if let policy = failureAccrual, !state.removed {
            if lease.isProbe {
                state.probing = false
                if failed {
                    state.ejections += 1
                    eject(state, policy: policy, now: now)
                } else {
                    state.ejectedUntil = nil
                    state.ejections = 0
                    state.consecutiveFailures = 0
                    rebuildReady()
                }
            } else if state.isReady {
                if failed {
                    state.consecutiveFailures += 1
                    if state.consecutiveFailures >= policy.maxFailures {
                        state.ejections = 0
                        eject(state, policy: policy, now: now)
                    }
                } else {
                    state.consecutiveFailures = 0
                }
            }
        }
        drainQueue()
    }

    fileprivate func cancel(_ lease: EndpointLease) {
        lease.state.pending -= 1
        if lease.isProbe { lease.state.probing = false }
        drainQueue()
    }

    private func eject(_ state: BalancedEndpoint, policy: FailureAccrualPolicy, now: UInt64) {
        state.consecutiveFailures = 0
        state.ejectedUntil = now &+ policy.penaltyNanos(ejections: state.ejections, random: &random)
        rebuildReady()
    }

    private func rebuildReady() {
        ready = endpoints.values.filter(\.isReady).sorted { $0.endpoint.key < $1.endpoint.key }
        ejectedCount = endpoints.count - ready.count
        if let gauges {
            gauges.adjust(gaugeKey, ready: ready.count - reported.ready, pending: ejectedCount - reported.pending)
            reported = (ready.count, ejectedCount)
        }
        scheduleWakeup()
    }

    /// Withdraws this balancer's counts from the gauges (it is being discarded).
    func retire() {
        gauges?.adjust(gaugeKey, ready: -reported.ready, pending: -reported.pending)
        reported = (0, 0)
    }

    // MARK: Queue

    /// Serves waiting requests while endpoints are available.
    private func drainQueue() {
        while activeWaiters > 0, let waiter = waiters.first {
            if waiter.isDone {
                waiters.removeFirst()
                continue
            }
            guard let lease = pick() else { break }
            waiters.removeFirst()
            waiter.isDone = true
            activeWaiters -= 1
            waiter.timeout?.cancel()
            waiter.callback(.success(lease))
        }
        if activeWaiters == 0 { waiters.removeAll(keepingCapacity: waiters.capacity <= 64) }
        scheduleWakeup()
    }

    /// While requests wait and endpoints are ejected, wakes up when the earliest penalty ends so its probe is
    /// sent without waiting for another event.
    private func scheduleWakeup() {
        guard let eventLoop, activeWaiters > 0, ejectedCount > 0 else {
            wakeup?.task.cancel()
            wakeup = nil
            return
        }
        let earliest = endpoints.values.compactMap { $0.probing ? nil : $0.ejectedUntil }.min()
        guard let earliest else { return }
        if let wakeup, wakeup.at == earliest { return }
        wakeup?.task.cancel()
        let now = clock()
        let delay = earliest > now ? Int64(clamping: earliest - now) : 0
        let task = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(delay)) { [self] in
            wakeup = nil
            drainQueue()
        }
        wakeup = (earliest, task)
    }

    private static func nanos(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0 else { return 0 }
        return UInt64(clamping: seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
    }
}
