import ApusCore
import Testing

/// `milliValue` and `doubleValue` work on `Decimal`'s text (FoundationEssentials, which the proxy links, has no
/// NSDecimalNumber or NSDecimalRound): signs, fractions below a milli, and values beyond `Int64` must survive that.
@Suite struct QuantityConversionTests {
    @Test(arguments: [
        ("-1500u", Int64(-1)),  // -1.5 milli rounds up, towards +∞, as NSDecimalRound(.up) did
        ("-250u", 0),
        ("1001u", 2),
        ("999m", 999),
        ("8Ei", Int64.max),  // 9.2e21 milli does not fit: clamped
        ("-8Ei", Int64.min),
    ])
    func milliValueRoundsUpAndClamps(text: String, milli: Int64) throws {
        #expect(try Quantity(parsing: text).milliValue == milli)
    }

    @Test(arguments: [("500m", 0.5), ("1.5", 1.5), ("-2k", -2000.0), ("1Ki", 1024.0), ("100n", 1e-7), ("0", 0.0)])
    func doubleValueIsTheNumber(text: String, value: Double) throws {
        #expect(try Quantity(parsing: text).doubleValue == value)
    }
}
