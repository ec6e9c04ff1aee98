import ApusCore
import Foundation
import Testing

@Suite struct GoDurationTests {
    @Test(arguments: [
        ("300ms", Int64(300_000_000)),
        ("1m30s", 90_000_000_000),
        ("10s", 10_000_000_000),
        ("1h", 3_600_000_000_000),
        ("1.5s", 1_500_000_000),
        ("0", 0),
        ("-0", 0),
        ("0s", 0),
        ("100us", 100_000),
        ("100µs", 100_000),
        ("100μs", 100_000),
        ("42ns", 42),
        ("-1.5h", -5_400_000_000_000),
        ("+5s", 5_000_000_000),
        (".5s", 500_000_000),
        ("1.s", 1_000_000_000),
        ("0.1s", 100_000_000),
        ("1h2m3s4ms5us6ns", 3_723_004_005_006),
        ("2562047h47m16.854775807s", Int64.max),
        ("-2562047h47m16.854775808s", Int64.min),
        ("1.0000000001s", 1_000_000_000),
    ])
    func parsesLikeGo(text: String, nanoseconds: Int64) throws {
        #expect(try GoDuration(parsing: text).nanoseconds == nanoseconds)
    }

    @Test(arguments: [
        ("", GoDurationError.Problem.empty),
        ("10x", .unknownUnit("x")),
        ("10", .missingUnit),
        ("1.5", .missingUnit),
        ("s", .invalidSyntax),
        ("-", .invalidSyntax),
        (".s", .invalidSyntax),
        ("1h-2m", .unknownUnit("h-")),
        ("10 s", .unknownUnit(" s")),
        ("3sec", .unknownUnit("sec")),
        ("2562047h47m16.854775808s", .overflow),
        ("9999999999999999999h", .overflow),
    ])
    func rejectsWithTypedProblem(text: String, problem: GoDurationError.Problem) {
        do {
            let parsed = try GoDuration(parsing: text)
            Issue.record("'\(text)' parsed as \(parsed)")
        } catch {
            #expect(error.problem == problem)
            #expect(error.text == text)
        }
    }

    @Test func unknownUnitMessageNamesTheUnit() {
        do {
            _ = try GoDuration(parsing: "10x")
            Issue.record("expected an error")
        } catch {
            #expect(error.description.contains("'10x' has unknown unit 'x'"))
        }
    }

    @Test(arguments: [
        (Int64(0), "0s"),
        (1, "1ns"),
        (1_100, "1.1µs"),
        (2_200_000, "2.2ms"),
        (300_000_000, "300ms"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (3_723_004_005_006, "1h2m3.004005006s"),
        (-1_500_000_000, "-1.5s"),
        (Int64.min, "-2562047h47m16.854775808s"),
        (Int64.max, "2562047h47m16.854775807s"),
    ])
    func formatsLikeGo(nanoseconds: Int64, text: String) throws {
        let duration = GoDuration(nanoseconds: nanoseconds)
        #expect(duration.description == text)
        #expect(try GoDuration(parsing: text) == duration)
    }

    @Test func convertsToSwiftDurationAndSeconds() throws {
        let duration = try GoDuration(parsing: "1m30.25s")
        #expect(duration.duration == .milliseconds(90_250))
        #expect(duration.seconds == 90.25)
    }

    @Test func codableAsCanonicalString() throws {
        struct Wrapper: Codable, Equatable { var timeout: GoDuration }
        let decoded = try JSONDecoder().decode(Wrapper.self, from: Data(#"{"timeout":"90s"}"#.utf8))
        #expect(decoded.timeout.nanoseconds == 90_000_000_000)
        let encoded = try JSONEncoder().encode(decoded)
        #expect(String(decoding: encoded, as: UTF8.self) == #"{"timeout":"1m30s"}"#)
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(Wrapper.self, from: Data(#"{"timeout":"10x"}"#.utf8))
        }
    }
}
