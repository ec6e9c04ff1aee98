import NIOCore

/// The preface an outbound proxy writes on an opaque-transport connection (TLS, ALPN `apus.transport/v1`) to a
/// meshed peer's inbound port, before the application's bytes: which port on the peer's pod the connection is
/// for, and optionally the name the application addressed. It plays the role of Linkerd's transport header
/// (`linkerd/transport-header`), but the bytes are Apus's own; only Apus proxies read them.
///
/// Wire format (all integers big-endian):
///
/// ```
///  offset  size  field
///  0       7     magic "apus/th" (61 70 75 73 2F 74 68)
///  7       1     version, 0x01
///  8       2     L: length of the rest of the header (= 3 + N), 3...256
///  10      2     target port, 1...65535
///  12      1     N: name length, 0 = no name, at most 253
///  13      N     name (the authority the application addressed, e.g. "db.shop.svc.cluster.local:5432"),
///                visible ASCII 0x21...0x7E
///  13+N          the application's bytes follow
/// ```
///
/// The length prefix lets a reader know how many bytes to wait for before parsing; the decoder refuses
/// anything that is not exactly this shape (wrong magic, another version, lengths that disagree, port 0, a name
/// with control bytes or spaces), so a client that speaks something else is cut off after at most 8 bytes
/// instead of being forwarded with a misread port.
public struct TransportHeader: Hashable, Sendable {
    /// The port on the destination pod the application addressed.
    public var port: Int
    /// The authority the application addressed, when the outbound side knows one (logs, metrics).
    public var name: String?

    public init(port: Int, name: String? = nil) {
        self.port = port
        self.name = name
    }

    /// `apus/th`.
    public static let magic: [UInt8] = Array("apus/th".utf8)
    public static let version: UInt8 = 1
    /// Longest name carried (a DNS name's limit).
    public static let maximumNameLength = 253
    /// Bytes before the length-prefixed body: magic, version, length.
    static let prefixLength = magic.count + 1 + 2
    /// The longest possible header; a reader never needs to buffer more than this to decide.
    public static let maximumEncodedLength = prefixLength + 3 + maximumNameLength

    /// Appends the header to `buffer`.
    /// - Throws: ``TransportHeaderError`` when the port is out of range or the name is empty, too long or has
    ///   bytes outside visible ASCII (nothing is written then).
    public func encode(into buffer: inout ByteBuffer) throws(TransportHeaderError) {
        guard (1...65535).contains(port) else { throw TransportHeaderError(.invalidPort, "port \(port) out of range") }
        let nameBytes = Array((name ?? "").utf8)
        if name != nil { try Self.validate(name: nameBytes) }
        buffer.reserveCapacity(minimumWritableBytes: Self.prefixLength + 3 + nameBytes.count)
        buffer.writeBytes(Self.magic)
        buffer.writeInteger(Self.version)
        buffer.writeInteger(UInt16(3 + nameBytes.count))
        buffer.writeInteger(UInt16(port))
        buffer.writeInteger(UInt8(nameBytes.count))
        buffer.writeBytes(nameBytes)
    }

    /// The header as bytes.
    public func encoded() throws(TransportHeaderError) -> ByteBuffer {
        var buffer = ByteBuffer()
        try encode(into: &buffer)
        return buffer
    }

    /// Reads a header from the start of `buffer`'s readable bytes.
    ///
    /// - Returns: the header, with its bytes consumed (what follows is the application's data); or nil when
    ///   the bytes so far are a valid beginning but incomplete: nothing is consumed, call again with more.
    /// - Throws: ``TransportHeaderError`` as soon as the bytes cannot be a header (nothing is consumed).
    public static func decode(from buffer: inout ByteBuffer) throws(TransportHeaderError) -> TransportHeader? {
        let start = buffer.readerIndex
        let available = buffer.readableBytes
        // The magic is checked byte by byte as it arrives, so garbage is refused without waiting for more.
        let magicSeen = min(available, magic.count)
        for index in 0..<magicSeen where buffer.getInteger(at: start + index, as: UInt8.self) != magic[index] {
            throw TransportHeaderError(.badMagic, "the connection does not start with the transport header magic")
        }
        guard available > magic.count, let version = buffer.getInteger(at: start + magic.count, as: UInt8.self)
        else { return nil }
        guard version == Self.version else {
            throw TransportHeaderError(.unsupportedVersion, "transport header version \(version), expected 1")
        }
        guard let length = buffer.getInteger(at: start + magic.count + 1, as: UInt16.self) else { return nil }
        guard (3...(3 + maximumNameLength)).contains(Int(length)) else {
            throw TransportHeaderError(.invalidLength, "transport header length \(length) outside 3...256")
        }
        guard available >= prefixLength + Int(length) else { return nil }
        let body = start + prefixLength
        guard let port = buffer.getInteger(at: body, as: UInt16.self),
            let nameLength = buffer.getInteger(at: body + 2, as: UInt8.self)
        else { return nil }
        guard Int(nameLength) == Int(length) - 3 else {
            throw TransportHeaderError(
                .invalidLength, "transport header length \(length) disagrees with name length \(nameLength)")
        }
        guard port != 0 else { throw TransportHeaderError(.invalidPort, "transport header names port 0") }
        var name: String?
        if nameLength > 0 {
            guard let bytes = buffer.getBytes(at: body + 3, length: Int(nameLength)) else { return nil }
            try validate(name: bytes)
            name = String(decoding: bytes, as: UTF8.self)
        }
        buffer.moveReaderIndex(forwardBy: prefixLength + Int(length))
        return TransportHeader(port: Int(port), name: name)
    }

    private static func validate(name bytes: [UInt8]) throws(TransportHeaderError) {
        guard !bytes.isEmpty, bytes.count <= maximumNameLength else {
            throw TransportHeaderError(.invalidName, "name length \(bytes.count) outside 1...\(maximumNameLength)")
        }
        guard bytes.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            throw TransportHeaderError(.invalidName, "name has bytes outside visible ASCII")
        }
    }
}

/// Why bytes are not a valid ``TransportHeader`` (or a header cannot be written).
public struct TransportHeaderError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        case badMagic
        case unsupportedVersion
        case invalidLength
        case invalidPort
        case invalidName
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
