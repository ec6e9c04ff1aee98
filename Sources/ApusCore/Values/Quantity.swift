#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A Kubernetes resource quantity (`500m`, `1.5Gi`, `2e3`, `100`), parsed exactly.
///
/// The value is kept as a `Decimal` so `500m` is exactly 0.5 (ServiceProfile `dstOverrides[].weight`) and
/// binary suffixes are exact powers of two. The original text is kept and re-encoded unchanged.
///
/// ```swift
/// try Quantity(parsing: "500m").value   // 0.5
/// try Quantity(parsing: "1Ki").value    // 1024
/// ```
public struct Quantity: Hashable, Sendable, Codable, CustomStringConvertible, ExpressibleByIntegerLiteral {
    public let value: Decimal
    /// The text as written in the manifest.
    public let string: String

    public init(parsing string: String) throws(QuantityError) {
        self.value = try Self.parse(string)
        self.string = string
    }

    public init(integerLiteral value: Int) {
        self.value = Decimal(value)
        self.string = String(value)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        // The API server writes quantities as strings; try that first, because every failed `decode` attempt
        // throws an error that builds its coding path (16 % of informer CPU on Pods when numbers came first).
        let text: String
        if let string = try? container.decode(String.self) {
            text = string
        } else if let number = try? container.decode(Int64.self) {
            text = String(number)
        } else {
            text = String(try container.decode(Double.self))
        }
        do {
            try self.init(parsing: text)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(string)
    }

    public var description: String { string }

    /// The value in thousandths, rounded up like `Quantity.MilliValue()`: `500m` → 500, `1` → 1000.
    /// Values beyond `Int64` clamp to its bounds.
    public var milliValue: Int64 {
        // FoundationEssentials (what the proxy links, to stay clear of ICU) has no NSDecimalRound or
        // NSDecimalNumber; `Decimal.description` is plain notation ("-1.5", "2500"), so round up on the text.
        let parts = (value * 1000).description.split(separator: ".", maxSplits: 1)
        guard let first = parts.first, let whole = Int64(first) else { return value.isSignMinus ? .min : .max }
        let hasFraction = parts.count == 2 && parts[1].contains { $0 != "0" }
        return hasFraction && !value.isSignMinus && whole < .max ? whole + 1 : whole
    }

    public var doubleValue: Double { Double(value.description) ?? .nan }

    public static func == (lhs: Quantity, rhs: Quantity) -> Bool { lhs.value == rhs.value }

    public func hash(into hasher: inout Hasher) { hasher.combine(value) }

    private static let binarySuffixes: [String: Int] = ["Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60]
    private static let decimalSuffixes: [String: Int] = [
        "n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18,
    ]

    private static func parse(_ text: String) throws(QuantityError) -> Decimal {
        let scalars = Array(text.unicodeScalars)
        guard !scalars.isEmpty else { throw QuantityError(text, "is empty") }
        var index = 0
        var negative = false
        if scalars[0] == "+" || scalars[0] == "-" {
            negative = scalars[0] == "-"
            index = 1
        }
        var digits = ""
        var sawDigit = false
        var sawPoint = false
        while index < scalars.count {
            let c = scalars[index]
            if ("0"..."9").contains(c) {
                digits.unicodeScalars.append(c)
                sawDigit = true
            } else if c == ".", !sawPoint {
                digits.unicodeScalars.append(c)
                sawPoint = true
            } else {
                break
            }
            index += 1
        }
        guard sawDigit else { throw QuantityError(text, "must start with a number") }
        guard var number = Decimal(string: digits, locale: Locale(identifier: "en_US_POSIX")) else {
            throw QuantityError(text, "has an unreadable number")
        }
        let suffix = String(String.UnicodeScalarView(scalars[index...]))
        if let power = binarySuffixes[suffix] {
            number *= pow(Decimal(2), power)
        } else if let exponent = decimalSuffixes[suffix] {
            number *= pow10(exponent)
        } else if let first = suffix.first, first == "e" || first == "E",
            let exponent = Int(suffix.dropFirst()), abs(exponent) <= 18,
            suffix.dropFirst().allSatisfy({ $0.isNumber || $0 == "-" || $0 == "+" })
        {
            number *= pow10(exponent)
        } else {
            throw QuantityError(
                text, "has unknown suffix '\(suffix)' (use n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or eN)")
        }
        return negative ? -number : number
    }

    private static func pow10(_ exponent: Int) -> Decimal {
        exponent >= 0 ? pow(Decimal(10), exponent) : 1 / pow(Decimal(10), -exponent)
    }
}

/// A quantity that could not be parsed; `description` says what is wrong with which text.
public struct QuantityError: Error, Hashable, Sendable, CustomStringConvertible {
    public let text: String
    public let reason: String

    init(_ text: String, _ reason: String) {
        self.text = text
        self.reason = reason
    }

    public var description: String { "quantity '\(text)' \(reason)" }
}
