import ApusCore

/// Consecutive-failures circuit breaking for one destination's endpoints, as Linkerd's
/// `balancer.linkerd.io/failure-accrual: consecutive` configures it.
///
/// After ``maxFailures`` failed responses in a row an endpoint leaves the balancer for a penalty; when the
/// penalty is over it gets exactly one request (the probe): success puts it back, failure ejects it again for a
/// doubled penalty (up to ``maxPenaltyNanos``). Jitter spreads the probes of many proxies ejecting the same
/// endpoint, so a recovering endpoint is not hit by all of them at once.
public struct FailureAccrualPolicy: Sendable, Hashable {
    public var maxFailures: Int
    public var minPenaltyNanos: UInt64
    public var maxPenaltyNanos: UInt64
    /// Each penalty is lengthened by up to this fraction of itself, at random.
    public var jitterRatio: Double

    public init(
        maxFailures: Int = 7, minPenaltyNanos: UInt64 = 1_000_000_000, maxPenaltyNanos: UInt64 = 60_000_000_000,
        jitterRatio: Double = 0.5
    ) {
        self.maxFailures = max(1, maxFailures)
        self.minPenaltyNanos = max(1, minPenaltyNanos)
        self.maxPenaltyNanos = max(max(1, minPenaltyNanos), maxPenaltyNanos)
        self.jitterRatio = jitterRatio.isFinite ? max(0, jitterRatio) : 0
    }

    /// The policy a destination profile's annotations configure (`servicePolicy.failureAccrual`).
    public init(_ accrual: RoutePolicy.FailureAccrual) {
        self.init(
            maxFailures: accrual.consecutiveMaxFailures,
            minPenaltyNanos: UInt64(clamping: accrual.minPenalty.nanoseconds),
            maxPenaltyNanos: UInt64(clamping: accrual.maxPenalty.nanoseconds), jitterRatio: accrual.jitterRatio)
    }

    /// The penalty after `ejections` earlier back-to-back ejections (0 for the first): `min × 2^ejections`, capped
    /// at the maximum, plus up to `jitterRatio` of itself; never beyond the maximum.
    func penaltyNanos(ejections: Int, random: inout BalancerRandom) -> UInt64 {
        var base = minPenaltyNanos
        var doublings = ejections
        while doublings > 0 && base < maxPenaltyNanos {
            base = base > maxPenaltyNanos / 2 ? maxPenaltyNanos : base * 2
            doublings -= 1
        }
        base = min(base, maxPenaltyNanos)
        let jitter = Double(base) * jitterRatio * random.unit()
        let total = Double(base) + jitter
        return total >= Double(maxPenaltyNanos) ? maxPenaltyNanos : UInt64(total)
    }
}
