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

/// When the proxy asks for its next certificate, as linkerd2-proxy does: at 70 % of the leaf's lifetime, clamped
/// to 10 s … 24 h, moved earlier by a random jitter so proxies started together do not refresh together; after a
/// failure, exponential backoff, never later than shortly before the current certificate expires.
///
/// Pure and deterministic for a given random source, so schedules are unit-testable; every bound is injectable
/// so tests can run with second-long leaves.
///
/// ```swift
/// let policy = RefreshPolicy()
/// policy.refreshDelay(validFrom: now, validUntil: now + 86400)   // ≈ 16.8 h (70 %), minus up to 10 % jitter
/// policy.retryDelay(attempt: 3, validUntil: leafExpiry, now: now) // 8 s (1 s · 2³), capped, jittered
/// ```
public struct RefreshPolicy: Sendable, Hashable {
    /// Fraction of the lifetime after which to refresh (Linkerd: 0.7).
    public var lifetimeFraction: Double
    /// Lower bound of the refresh delay (Linkerd: 10 s).
    public var minimumRefresh: Duration
    /// Upper bound of the refresh delay (Linkerd: 24 h).
    public var maximumRefresh: Duration
    /// Up to this fraction of the delay is taken off at random.
    public var jitter: Double
    /// First retry delay after a failed refresh; doubles per attempt up to ``maximumBackoff``.
    public var initialBackoff: Duration
    public var maximumBackoff: Duration
    /// Retry at the latest this long before the current certificate expires, however long the backoff would be.
    public var expiryMargin: Duration

    public init(
        lifetimeFraction: Double = 0.7, minimumRefresh: Duration = .seconds(10),
        maximumRefresh: Duration = .seconds(86400),
        jitter: Double = 0.1, initialBackoff: Duration = .seconds(1), maximumBackoff: Duration = .seconds(60),
        expiryMargin: Duration = .seconds(1)
    ) {
        self.lifetimeFraction = lifetimeFraction
        self.minimumRefresh = minimumRefresh
        self.maximumRefresh = maximumRefresh
        self.jitter = jitter
        self.initialBackoff = initialBackoff
        self.maximumBackoff = maximumBackoff
        self.expiryMargin = expiryMargin
    }

    /// The delay from `validFrom` (when the certificate arrived) to the next refresh. `random` is in `0..<1`.
    public func refreshDelay(validFrom: Date, validUntil: Date, random: Double = Double.random(in: 0..<1)) -> Duration {
        let lifetime = max(0, validUntil.timeIntervalSince(validFrom))
        let base = lifetime * lifetimeFraction * (1 - min(max(jitter, 0), 1) * min(max(random, 0), 1))
        return clamp(milliseconds(base), minimumRefresh, maximumRefresh)
    }

    /// The delay before retry number `attempt` (1 for the first retry) after a failure. While a certificate is
    /// still valid (`validUntil` in the future) the retry is pulled in so it happens before expiry.
    public func retryDelay(
        attempt: Int, validUntil: Date? = nil, now: Date = Date(), random: Double = Double.random(in: 0..<1)
    ) -> Duration {
        let exponent = min(max(attempt - 1, 0), 30)
        let backoff = min(seconds(initialBackoff) * pow(2, Double(exponent)), seconds(maximumBackoff))
        // "Equal jitter": between half and all of the backoff, so retries spread but never collapse to zero.
        var delay = backoff * (0.5 + 0.5 * min(max(random, 0), 1))
        if let validUntil {
            let left = validUntil.timeIntervalSince(now) - seconds(expiryMargin)
            if left > 0 { delay = min(delay, left) }
        }
        return milliseconds(max(delay, 0.01))
    }

    /// Whole milliseconds: plenty of precision for a schedule, and no floating-point residue in the result.
    private func milliseconds(_ seconds: Double) -> Duration {
        .milliseconds(Int64((min(seconds, 1e12) * 1000).rounded()))
    }

    private func clamp(_ value: Duration, _ lower: Duration, _ upper: Duration) -> Duration {
        min(max(value, lower), max(lower, upper))
    }

    private func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
    }
}
