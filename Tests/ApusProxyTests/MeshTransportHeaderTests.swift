import ApusProxy
import NIOCore
import Testing

@Suite struct MeshTransportHeaderTests {
    static let samples = [
        TransportHeader(port: 5432, name: "db.shop.svc.cluster.local:5432"),
        TransportHeader(port: 1),
        TransportHeader(port: 65535, name: String(repeating: "a", count: TransportHeader.maximumNameLength)),
    ]

    @Test("the documented bytes: magic, version, length, port, name length, name")
    func wireBytes() throws {
        let bytes = Array(try TransportHeader(port: 8080, name: "web:80").encoded().readableBytesView)
        #expect(
            bytes == Array("apus/th".utf8) + [0x01, 0x00, 0x09, 0x1F, 0x90, 0x06] + Array("web:80".utf8))
        #expect(Array(try TransportHeader(port: 25).encoded().readableBytesView).suffix(6) == [1, 0, 3, 0, 25, 0])
    }

    @Test("round trip, and the application's bytes after the header are left in the buffer", arguments: samples)
    func roundTrip(header: TransportHeader) throws {
        var buffer = try header.encoded()
        buffer.writeString("GET / HTTP/1.1\r\n")
        #expect(try TransportHeader.decode(from: &buffer) == header)
        #expect(buffer.readString(length: buffer.readableBytes) == "GET / HTTP/1.1\r\n")
    }

    @Test("every split of the input: needs-more (nothing consumed) until complete, then the same header")
    func partialInput() throws {
        var generator = MeshSeededGenerator(seed: 42)
        for header in Self.samples {
            let encoded = Array(try header.encoded().readableBytesView)
            for cut in 0..<encoded.count {
                var prefix = ByteBuffer(bytes: encoded[..<cut])
                #expect(try TransportHeader.decode(from: &prefix) == nil, "cut at \(cut)")
                #expect(prefix.readableBytes == cut)
            }
            // Feed it in random chunks as a connection would deliver it.
            for _ in 0..<50 {
                var accumulated = ByteBuffer()
                var offset = 0
                var decoded: TransportHeader?
                while offset < encoded.count {
                    let size = Int.random(in: 1...max(1, encoded.count - offset), using: &generator)
                    accumulated.writeBytes(encoded[offset..<(offset + size)])
                    offset += size
                    decoded = try TransportHeader.decode(from: &accumulated)
                    #expect((decoded != nil) == (offset == encoded.count))
                }
                #expect(decoded == header)
                #expect(accumulated.readableBytes == 0)
            }
        }
    }

    @Test("garbage is refused early with a typed error and nothing consumed")
    func garbage() throws {
        func code(_ bytes: [UInt8]) -> TransportHeaderError.Code? {
            var buffer = ByteBuffer(bytes: bytes)
            do {
                _ = try TransportHeader.decode(from: &buffer)
                return nil
            } catch {
                #expect(buffer.readableBytes == bytes.count)
                return error.code
            }
        }
        let magic = Array("apus/th".utf8)
        // HTTP, TLS ClientHello and an HTTP/2 preface are refused on their first byte.
        #expect(code(Array("GET / HTTP/1.1\r\n".utf8)) == .badMagic)
        #expect(code([0x16, 0x03, 0x01]) == .badMagic)
        #expect(code(Array("PRI".utf8)) == .badMagic)
        #expect(code(Array("apus/tx".utf8)) == .badMagic)
        #expect(code(magic + [0x02]) == .unsupportedVersion)
        #expect(code(magic + [0x01, 0x00, 0x02]) == .invalidLength)
        #expect(code(magic + [0x01, 0x01, 0x01]) == .invalidLength)  // 257: oversize
        #expect(code(magic + [0x01, 0xFF, 0xFF]) == .invalidLength)
        #expect(code(magic + [0x01, 0x00, 0x05, 0x00, 0x50, 0x01, 0x41, 0x42]) == .invalidLength)
        #expect(code(magic + [0x01, 0x00, 0x03, 0x00, 0x00, 0x00]) == .invalidPort)
        #expect(code(magic + [0x01, 0x00, 0x05, 0x00, 0x50, 0x02, 0x41, 0x0A]) == .invalidName)
        #expect(code(magic + [0x01, 0x00, 0x05, 0x00, 0x50, 0x02, 0x20, 0x41]) == .invalidName)

        // Random bytes never crash; whatever is not refused must be a well-formed header prefix.
        var generator = MeshSeededGenerator(seed: 7)
        for _ in 0..<2_000 {
            let length = Int.random(in: 0...40, using: &generator)
            var bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if Bool.random(using: &generator) { bytes = magic + [0x01] + bytes }  // reach the later checks
            var buffer = ByteBuffer(bytes: bytes)
            if let header = try? TransportHeader.decode(from: &buffer) {
                #expect((1...65535).contains(header.port))
                #expect(header.name.map { !$0.isEmpty && $0.utf8.allSatisfy { (0x21...0x7E).contains($0) } } ?? true)
            }
        }
    }

    @Test("encoding refuses what decoding would refuse")
    func encodeValidation() {
        var buffer = ByteBuffer()
        #expect(throws: TransportHeaderError.self) { try TransportHeader(port: 0).encode(into: &buffer) }
        #expect(throws: TransportHeaderError.self) { try TransportHeader(port: 70_000).encode(into: &buffer) }
        #expect(throws: TransportHeaderError.self) { try TransportHeader(port: 80, name: "").encode(into: &buffer) }
        #expect(throws: TransportHeaderError.self) {
            try TransportHeader(port: 80, name: "a b").encode(into: &buffer)
        }
        #expect(throws: TransportHeaderError.self) {
            try TransportHeader(port: 80, name: String(repeating: "x", count: 254)).encode(into: &buffer)
        }
        #expect(buffer.readableBytes == 0)
    }
}

/// SplitMix64: reproducible "random" input so a failure can be replayed.
struct MeshSeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
