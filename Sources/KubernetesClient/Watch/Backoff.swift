/// Exponential backoff with jitter and a ceiling, reset after a success.
///
/// Used between watch/list retries so a flapping API server is not hammered by every informer at once; the
/// jitter spreads reconnects of many clients that lost the server at the same moment.
///
/// ```swift
/// var backoff = ExponentialBackoff(initial: .milliseconds(800), maximum: .seconds(30))
/// try await Task.sleep(for: backoff.next())   // ~0.8 s, then ~1.6 s, … up to 30 s
/// backoff.reset()                              // after a successful call
/// ```
public struct ExponentialBackoff: Sendable, Hashable {
    public var initial: Duration
    public var maximum: Duration
    public var multiplier: Double
    /// Fraction of each delay that is randomized: 0.5 means a delay `d` becomes uniformly `0.5d…1.5d`
    /// (capped at ``maximum``).
    public var jitter: Double
    private var attempt = 0

    public init(
        initial: Duration = .milliseconds(800), maximum: Duration = .seconds(30), multiplier: Double = 2,
        jitter: Double = 0.5
    ) {
        self.initial = initial
        self.maximum = maximum
        self.multiplier = max(1, multiplier)
        self.jitter = min(max(0, jitter), 1)
    }

    /// How many delays were handed out since the last reset.
    public var attempts: Int { attempt }

    /// The next delay; each call grows the base delay until ``maximum``.
    public mutating func next() -> Duration {
        var generator = SystemRandomNumberGenerator()
        return next(using: &generator)
    }

    public mutating func next<G: RandomNumberGenerator>(using generator: inout G) -> Duration {
        let base = baseDelay(attempt: attempt)
        attempt += 1
        guard jitter > 0 else { return base }
        let factor = Double.random(in: (1 - jitter)...(1 + jitter), using: &generator)
        return min(base * factor, maximum)
    }

    public mutating func reset() { attempt = 0 }

    /// The un-jittered delay of an attempt: `initial × multiplier^attempt`, capped.
    public func baseDelay(attempt: Int) -> Duration {
        let initialSeconds = initial.secondsDouble
        let maximumSeconds = maximum.secondsDouble
        // Stop multiplying once capped so large attempt counts cannot overflow to infinity.
        var seconds = initialSeconds
        var step = 0
        while step < attempt, seconds < maximumSeconds {
            seconds *= multiplier
            step += 1
        }
        return seconds >= maximumSeconds ? maximum : .nanoseconds(Int64(seconds * 1e9))
    }
}

extension Duration {
    var secondsDouble: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
