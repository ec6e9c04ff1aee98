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

/// A point in time as Kubernetes serializes it: RFC 3339 in UTC (`2024-05-01T12:00:00Z`).
///
/// Decoding accepts fractional seconds and numeric offsets (what `MicroTime` fields and other clients write);
/// encoding writes whole seconds unless the value was created as a ``precision`` `.micro` timestamp, as used
/// by `Lease.spec.renewTime` and `Event.eventTime`.
public struct Timestamp: Codable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public enum Precision: Sendable, Hashable { case seconds, micro }

    public var date: Date
    public var precision: Precision

    public init(_ date: Date, precision: Precision = .seconds) {
        self.date = date
        self.precision = precision
    }

    public static func now(precision: Precision = .seconds) -> Timestamp { Timestamp(Date(), precision: precision) }

    /// Parses an RFC 3339 string; `nil` if it is not one.
    public init?(rfc3339 string: String) {
        guard let parsed = Self.parse(string) else { return nil }
        self.date = parsed.date
        self.precision = parsed.fractional ? .micro : .seconds
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let string = try container.decode(String.self)
        guard let value = Timestamp(rfc3339: string) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "'\(string)' is not an RFC 3339 timestamp")
        }
        self = value
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public var description: String {
        var seconds = date.timeIntervalSince1970
        var micros = 0
        if precision == .micro {
            let whole = seconds.rounded(.down)
            micros = Int(((seconds - whole) * 1_000_000).rounded())
            if micros == 1_000_000 {
                micros = 0
                seconds = whole + 1
            } else {
                seconds = whole
            }
        }
        var time = time_t(seconds.rounded(.down))
        var parts = tm()
        gmtime_r(&time, &parts)
        var text = ""
        text.reserveCapacity(27)
        Self.append(Int(parts.tm_year) + 1900, width: 4, to: &text)
        text += "-"
        Self.append(Int(parts.tm_mon) + 1, width: 2, to: &text)
        text += "-"
        Self.append(Int(parts.tm_mday), width: 2, to: &text)
        text += "T"
        Self.append(Int(parts.tm_hour), width: 2, to: &text)
        text += ":"
        Self.append(Int(parts.tm_min), width: 2, to: &text)
        text += ":"
        Self.append(Int(parts.tm_sec), width: 2, to: &text)
        if precision == .micro {
            text += "."
            Self.append(micros, width: 6, to: &text)
        }
        return text + "Z"
    }

    /// `value` zero-padded to `width` digits (`%0*d`, which needs full Foundation's `String(format:)`).
    private static func append(_ value: Int, width: Int, to text: inout String) {
        let digits = String(value)
        if digits.count < width { text += String(repeating: "0", count: width - digits.count) }
        text += digits
    }

    public static func < (lhs: Timestamp, rhs: Timestamp) -> Bool { lhs.date < rhs.date }

    public static func == (lhs: Timestamp, rhs: Timestamp) -> Bool { lhs.date == rhs.date }

    public func hash(into hasher: inout Hasher) { hasher.combine(date) }

    private static func parse(_ s: String) -> (date: Date, fractional: Bool)? {
        let u = Array(s.utf8)
        func digits(_ start: Int, _ count: Int) -> Int? {
            guard start + count <= u.count else { return nil }
            var value = 0
            for i in start..<(start + count) {
                guard u[i] >= 48, u[i] <= 57 else { return nil }
                value = value * 10 + Int(u[i] - 48)
            }
            return value
        }
        guard u.count >= 20, let year = digits(0, 4), u[4] == 45, let month = digits(5, 2), u[7] == 45,
            let day = digits(8, 2), u[10] == 84 || u[10] == 116 || u[10] == 32, let hour = digits(11, 2),
            u[13] == 58, let minute = digits(14, 2), u[16] == 58, let second = digits(17, 2),
            (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var i = 19
        var fraction = 0.0
        var fractional = false
        if i < u.count, u[i] == 46 {
            i += 1
            var scale = 0.1
            let start = i
            while i < u.count, u[i] >= 48, u[i] <= 57 {
                fraction += Double(u[i] - 48) * scale
                scale /= 10
                i += 1
            }
            guard i > start else { return nil }
            fractional = true
        }
        guard i < u.count else { return nil }
        var offset = 0
        if u[i] == 90 || u[i] == 122 {
            i += 1
        } else if u[i] == 43 || u[i] == 45, let oh = digits(i + 1, 2), u.count > i + 3, u[i + 3] == 58,
            let om = digits(i + 4, 2)
        {
            offset = (oh * 3600 + om * 60) * (u[i] == 43 ? 1 : -1)
            i += 6
        } else {
            return nil
        }
        guard i == u.count else { return nil }
        // Days from civil (Howard Hinnant's algorithm), avoiding Calendar/DateFormatter costs on hot decode paths.
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146097 + doe - 719468
        let seconds = Double(days * 86400 + hour * 3600 + minute * 60 + second - offset) + fraction
        return (Date(timeIntervalSince1970: seconds), fractional)
    }
}
