/// A duration written the way Go's `time.ParseDuration` reads it (`300ms`, `1m30s`, `1.5s`, `-2h`, `100µs`).
///
/// ServiceProfile `timeout`/`ttl`, Gateway API `timeouts` and many Linkerd annotations use this syntax, so Apus
/// parses it exactly as Go does: the value is an integer count of nanoseconds (no floating-point drift, so
/// `0.1s` is exactly 100 ms), the same units are accepted, and ``description`` prints Go's canonical form
/// (`1h30m0s`, `1.5s`, `300ms`, `0s`), which is what `kubectl get` users see from Linkerd.
///
/// ```swift
/// let timeout = try GoDuration(parsing: "1m30s")
/// timeout.nanoseconds  // 90_000_000_000
/// timeout.description  // "1m30s"
/// timeout.duration     // Duration.seconds(90)
/// ```
public struct GoDuration: Hashable, Sendable, Comparable, Codable, CustomStringConvertible {
    /// The signed length in nanoseconds, the same range as Go's `time.Duration` (about ±292 years).
    public var nanoseconds: Int64

    /// The zero duration, printed as `0s`.
    public static let zero = GoDuration(nanoseconds: 0)

    public init(nanoseconds: Int64) {
        self.nanoseconds = nanoseconds
    }

    /// Parses Go duration syntax: an optional sign, then one or more `<decimal><unit>` pairs with units
    /// `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`. A bare `0` is accepted; any other number needs a unit.
    public init(parsing text: String) throws(GoDurationError) {
        self.nanoseconds = try Self.parse(text)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        do {
            try self.init(parsing: text)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    /// The same length as a Swift `Duration`, for sleeping and deadlines.
    public var duration: Duration { .nanoseconds(nanoseconds) }

    /// The length in seconds; loses precision only beyond 2^53 ns (about 104 days).
    public var seconds: Double { Double(nanoseconds) / 1e9 }

    public static func < (lhs: GoDuration, rhs: GoDuration) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    /// Go's `time.Duration.String()`: the largest units first, fractional seconds without trailing zeros,
    /// sub-second values in `ms`/`µs`/`ns`.
    public var description: String {
        if nanoseconds == 0 { return "0s" }
        let negative = nanoseconds < 0
        // Magnitude as UInt64 so Int64.min does not overflow when negated.
        let magnitude = nanoseconds.magnitude
        var result: String
        if magnitude < 1_000_000_000 {
            // Sub-second: choose the unit so the integer part is non-zero.
            if magnitude < 1_000 {
                result = "\(magnitude)ns"
            } else if magnitude < 1_000_000 {
                result = Self.fixed(magnitude, scale: 3) + "µs"
            } else {
                result = Self.fixed(magnitude, scale: 6) + "ms"
            }
        } else {
            let wholeSeconds = magnitude / 1_000_000_000
            let fraction = magnitude % 1_000_000_000
            var secondsText = String(wholeSeconds % 60)
            if fraction != 0 {
                secondsText += Self.fractionDigits(fraction, width: 9)
            }
            result = secondsText + "s"
            let minutes = wholeSeconds / 60
            if minutes > 0 {
                result = "\(minutes % 60)m" + result
                let hours = minutes / 60
                if hours > 0 {
                    result = "\(hours)h" + result
                }
            }
        }
        return negative ? "-" + result : result
    }

    /// `value / 10^scale` printed with the fraction trimmed of trailing zeros (`1500, 3` → `1.5`).
    private static func fixed(_ value: UInt64, scale: Int) -> String {
        var divisor: UInt64 = 1
        for _ in 0..<scale { divisor *= 10 }
        let whole = value / divisor
        let fraction = value % divisor
        return fraction == 0 ? String(whole) : String(whole) + fractionDigits(fraction, width: scale)
    }

    /// `.ddd` with exactly `width` digits before trailing zeros are removed.
    private static func fractionDigits(_ fraction: UInt64, width: Int) -> String {
        var digits = String(fraction)
        if digits.count < width {
            digits = String(repeating: "0", count: width - digits.count) + digits
        }
        while digits.last == "0" { digits.removeLast() }
        return "." + digits
    }

    private static let units: [(name: [UInt8], nanoseconds: UInt64)] = [
        (Array("ns".utf8), 1),
        (Array("us".utf8), 1_000),
        (Array("µs".utf8), 1_000),  // U+00B5 micro sign
        (Array("μs".utf8), 1_000),  // U+03BC Greek small letter mu
        (Array("ms".utf8), 1_000_000),
        (Array("s".utf8), 1_000_000_000),
        (Array("m".utf8), 60_000_000_000),
        (Array("h".utf8), 3_600_000_000_000),
    ]

    private static func parse(_ text: String) throws(GoDurationError) -> Int64 {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty else { throw GoDurationError(text: text, problem: .empty) }
        var index = 0
        var negative = false
        if bytes[0] == UInt8(ascii: "-") || bytes[0] == UInt8(ascii: "+") {
            negative = bytes[0] == UInt8(ascii: "-")
            index = 1
        }
        if index == bytes.count - 1, bytes[index] == UInt8(ascii: "0") { return 0 }
        guard index < bytes.count else { throw GoDurationError(text: text, problem: .invalidSyntax) }
        // Accumulate in UInt64 to admit exactly -2^63 like Go does.
        var total: UInt64 = 0
        let limit: UInt64 = negative ? UInt64(Int64.max) + 1 : UInt64(Int64.max)
        while index < bytes.count {
            // Integer part.
            var whole: UInt64 = 0
            var overflow = false
            let wholeStart = index
            while index < bytes.count, let digit = Self.digit(bytes[index]) {
                let (times10, o1) = whole.multipliedReportingOverflow(by: 10)
                let (sum, o2) = times10.addingReportingOverflow(digit)
                overflow = overflow || o1 || o2
                whole = sum
                index += 1
            }
            let sawWhole = index > wholeStart
            // Fractional part: keep as digits scaled later so the result is exact.
            var fraction: UInt64 = 0
            var fractionScale: UInt64 = 1
            var sawFraction = false
            if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
                index += 1
                let fractionStart = index
                while index < bytes.count, let digit = Self.digit(bytes[index]) {
                    // Digits beyond nanosecond resolution of the largest unit cannot change the result.
                    if fractionScale < 1_000_000_000_000_000_000 {
                        fraction = fraction * 10 + digit
                        fractionScale *= 10
                    }
                    index += 1
                }
                sawFraction = index > fractionStart
            }
            guard sawWhole || sawFraction else { throw GoDurationError(text: text, problem: .invalidSyntax) }
            if overflow { throw GoDurationError(text: text, problem: .overflow) }
            // Unit: everything up to the next digit or '.'.
            let unitStart = index
            while index < bytes.count, Self.digit(bytes[index]) == nil, bytes[index] != UInt8(ascii: ".") {
                index += 1
            }
            guard index > unitStart else { throw GoDurationError(text: text, problem: .missingUnit) }
            let unitBytes = Array(bytes[unitStart..<index])
            guard let unit = units.first(where: { $0.name == unitBytes }) else {
                let unitName = String(decoding: unitBytes, as: UTF8.self)
                throw GoDurationError(text: text, problem: .unknownUnit(unitName))
            }
            let (wholeNanos, o1) = whole.multipliedReportingOverflow(by: unit.nanoseconds)
            // The sub-unit remainder is computed in Double with Go's operation order so results agree bit for bit.
            let fractionNanos = UInt64(Double(fraction) * (Double(unit.nanoseconds) / Double(fractionScale)))
            let (component, o2) = wholeNanos.addingReportingOverflow(fractionNanos)
            let (newTotal, o3) = total.addingReportingOverflow(component)
            guard !o1, !o2, !o3, newTotal <= limit else {
                throw GoDurationError(text: text, problem: .overflow)
            }
            total = newTotal
        }
        if negative {
            return total == UInt64(Int64.max) + 1 ? Int64.min : -Int64(total)
        }
        return Int64(total)
    }

    private static func digit(_ byte: UInt8) -> UInt64? {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") ? UInt64(byte - UInt8(ascii: "0")) : nil
    }
}

/// A string that is not a Go duration; ``description`` names the text and what is wrong with it.
public struct GoDurationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What made the text unreadable.
    public enum Problem: Hashable, Sendable {
        /// The empty string.
        case empty
        /// Not `[-+]?(<number><unit>)+`, e.g. `abc`, `-`, `.s`.
        case invalidSyntax
        /// A number without a unit, e.g. `10` (only `0` may stand alone).
        case missingUnit
        /// A unit other than ns, us, µs, ms, s, m, h; carries the unit as written.
        case unknownUnit(String)
        /// More than about 292 years.
        case overflow
    }

    /// The text that failed to parse.
    public let text: String
    public let problem: Problem

    public var description: String {
        switch problem {
        case .empty: return "duration is empty"
        case .invalidSyntax: return "'\(text)' is not a duration (expected e.g. 300ms, 1m30s, 10s)"
        case .missingUnit: return "'\(text)' is missing a unit (use ns, us, ms, s, m or h)"
        case .unknownUnit(let unit):
            return "'\(text)' has unknown unit '\(unit)' (use ns, us, ms, s, m or h)"
        case .overflow: return "'\(text)' is too large for a duration"
        }
    }
}
