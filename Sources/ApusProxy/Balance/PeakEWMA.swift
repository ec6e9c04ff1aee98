#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Linkerd's (tower's) peak-EWMA latency estimate of one endpoint.
///
/// A slower observation replaces the estimate at once ("peak"), so an endpoint that turns slow is avoided from
/// its next response on; faster observations pull it down only as time passes (decay over wall time, not per
/// sample), so a few lucky fast responses do not make a slow endpoint attractive again. Reading the estimate also
/// decays it toward zero, which lets an endpoint nobody picked for a while be tried again.
public struct PeakEWMA: Sendable, Hashable {
    /// The current estimate in nanoseconds.
    public private(set) var estimateNanos: Double
    /// When the estimate was last updated (the caller's clock, nanoseconds).
    public private(set) var updatedAtNanos: UInt64
    /// The time constant of the decay in nanoseconds.
    public let decayNanos: Double

    /// - Parameters:
    ///   - defaultRTTNanos: the estimate before any response (Linkerd: 30 ms), so new endpoints are neither
    ///     swamped (zero) nor starved (infinite).
    ///   - decayNanos: the decay time constant (Linkerd: 10 s).
    public init(defaultRTTNanos: UInt64, decayNanos: UInt64, now: UInt64) {
        estimateNanos = Double(defaultRTTNanos)
        updatedAtNanos = now
        self.decayNanos = Double(max(decayNanos, 1))
    }

    /// Records a round trip of `rttNanos` observed at `now`; returns the new estimate.
    @discardableResult
    public mutating func observe(rttNanos: UInt64, now: UInt64) -> Double {
        let rtt = Double(rttNanos)
        if estimateNanos < rtt {
            estimateNanos = rtt
        } else {
            let elapsed = Double(now >= updatedAtNanos ? now - updatedAtNanos : 0)
            let decay = exp(-elapsed / decayNanos)
            estimateNanos = estimateNanos * decay + rtt * (1 - decay)
        }
        if now > updatedAtNanos { updatedAtNanos = now }
        return estimateNanos
    }

    /// The estimate decayed to `now` (an observation of zero), as tower does before each cost comparison.
    public mutating func decayed(now: UInt64) -> Double {
        observe(rttNanos: 0, now: now)
    }
}

/// A small, fast, seedable generator (SplitMix64) so balancer and split decisions are reproducible in tests
/// and cost no system call per request in production.
public struct BalancerRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    /// Seeded from the system generator.
    public init() {
        var system = SystemRandomNumberGenerator()
        state = system.next()
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    public mutating func unit() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }
}
