import ApusCore
import Foundation
import Testing

@Suite struct QuantityTests {
    @Test(arguments: [
        ("500m", "0.5", Int64(500)),
        ("1", "1", 1000),
        ("0", "0", 0),
        ("1.5", "1.5", 1500),
        ("100", "100", 100_000),
        ("1Ki", "1024", 1_024_000),
        ("1.5Gi", "1610612736", 1_610_612_736_000),
        ("2k", "2000", 2_000_000),
        ("3M", "3000000", 3_000_000_000),
        ("1e3", "1000", 1_000_000),
        ("1E3", "1000", 1_000_000),
        ("5e-3", "0.005", 5),
        ("250u", "0.00025", 1),
        ("100n", "0.0000001", 1),
        ("+2", "2", 2000),
        ("-1", "-1", -1000),
        (".5", "0.5", 500),
    ])
    func parsesExactly(text: String, value: String, milli: Int64) throws {
        let quantity = try Quantity(parsing: text)
        #expect(quantity.value == Decimal(string: value, locale: Locale(identifier: "en_US_POSIX")))
        #expect(quantity.milliValue == milli)
        #expect(quantity.description == text)
    }

    @Test(arguments: ["", "m", "abc", "1x", "1K", "1ki", "1e", "1e3.5", "1 m", "1.2.3", "--1", "1e99"])
    func rejects(text: String) {
        #expect(throws: QuantityError.self) { try Quantity(parsing: text) }
    }

    @Test func equalityIsByValue() throws {
        #expect(try Quantity(parsing: "1000m") == Quantity(parsing: "1"))
        #expect(try Quantity(parsing: "1k") == Quantity(parsing: "1e3"))
        let set: Set<Quantity> = [
            try Quantity(parsing: "1Mi"), 1_048_576, try Quantity(parsing: "0.5"), try Quantity(parsing: "500m"),
        ]
        #expect(set.count == 2)
    }

    @Test func decodesNumbersAndStringsAndKeepsText() throws {
        struct Box: Codable { var q: [Quantity] }
        let box = try JSONDecoder().decode(Box.self, from: Data(#"{"q":[1,"500m",0.5,"2Gi"]}"#.utf8))
        #expect(box.q.map(\.description) == ["1", "500m", "0.5", "2Gi"])
        #expect(box.q[1] == box.q[2])
        let json = String(decoding: try JSONEncoder().encode(box), as: UTF8.self)
        #expect(json == #"{"q":["1","500m","0.5","2Gi"]}"#)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(Box.self, from: Data(#"{"q":["x"]}"#.utf8)) }
    }
}
