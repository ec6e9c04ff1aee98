import NIOCore

/// One side of a tapped exchange: its socket address and what is known about the workload there (`pod`,
/// `namespace`, `deployment`, `serviceaccount`, … — destination metadata for endpoints, `POD_NAME` /
/// `POD_NAMESPACE` for this proxy's own pod, the verified identity for a meshed caller).
public struct TapPeer: Sendable, Hashable {
    public var address: String
    public var labels: [String: String]

    public init(address: String, labels: [String: String] = [:]) {
        self.address = address
        self.labels = labels
    }
}

/// Identifies one exchange: the client connection (numbered per proxy) and the request on it (the HTTP/2 stream
/// id, or the position of the request on an HTTP/1.1 connection).
public struct TapExchangeID: Sendable, Hashable {
    public var connection: UInt64
    public var stream: UInt64

    public init(connection: UInt64, stream: UInt64) {
        self.connection = connection
        self.stream = stream
    }
}

/// What the request event says; shared (immutable) by all events of the exchange so a response or end event
/// costs one small allocation.
public final class TapRequestInfo: Sendable {
    public let id: TapExchangeID
    public let direction: TrafficDirection
    public let source: TapPeer
    public let destination: TapPeer
    /// Whether the hop this proxy controls is mesh TLS (inbound: the caller's connection; outbound: the
    /// connection to the endpoint).
    public let tls: Bool
    public let clientIdentity: String?
    public let serverIdentity: String?
    public let method: String
    public let authority: String?
    /// The request target as forwarded (origin form, query included).
    public let path: String
    /// The route that served the request (`rt_route`), `[DEFAULT]` when no route matched.
    public let route: String

    public init(
        id: TapExchangeID, direction: TrafficDirection, source: TapPeer, destination: TapPeer, tls: Bool,
        clientIdentity: String?, serverIdentity: String?, method: String, authority: String?, path: String,
        route: String
    ) {
        self.id = id
        self.direction = direction
        self.source = source
        self.destination = destination
        self.tls = tls
        self.clientIdentity = clientIdentity
        self.serverIdentity = serverIdentity
        self.method = method
        self.authority = authority
        self.path = path
        self.route = route
    }

    /// The path without its query, which path filters match against.
    var pathWithoutQuery: Substring {
        path.firstIndex(of: "?").map { path[..<$0] } ?? path[...]
    }
}

/// One tap event: the request head (`req`), the response head (`rsp`) or the end of the exchange (`end`).
public struct TapEvent: Sendable {
    public enum Kind: Sendable, Hashable {
        case request
        /// The response head reached the client `latencyToFirstByteNanos` after the request head arrived.
        case response(status: Int, latencyToFirstByteNanos: UInt64)
        /// The exchange is over: the response (or the failure) is complete. `status` is nil when no response was
        /// sent at all (the client went away or the upstream failed before a head).
        case end(
            status: Int?, latencyToFirstByteNanos: UInt64, durationNanos: UInt64, responseBytes: UInt64,
            error: Bool)
    }

    public let request: TapRequestInfo
    public let kind: Kind

    public init(request: TapRequestInfo, kind: Kind) {
        self.request = request
        self.kind = kind
    }

    /// The `type` field of the event's JSON.
    public var type: String {
        switch kind {
        case .request: "req"
        case .response: "rsp"
        case .end: "end"
        }
    }

    /// Appends the event as one NDJSON line (the format `docs/tap.md` documents).
    func writeJSONLine(into buffer: inout ByteBuffer) {
        var json = JSONLineWriter(buffer: buffer)
        json.open()
        json.field("type", type)
        json.key("id")
        json.open()
        json.field("connection", request.id.connection)
        json.field("stream", request.id.stream)
        json.close()
        json.field("direction", request.direction.rawValue)
        json.key("src")
        json.peer(request.source)
        json.key("dst")
        json.peer(request.destination)
        json.field("tls", request.tls)
        json.field("clientIdentity", request.clientIdentity)
        json.field("serverIdentity", request.serverIdentity)
        json.field("method", request.method)
        json.field("authority", request.authority)
        json.field("path", request.path)
        json.field("route", request.route)
        switch kind {
        case .request:
            break
        case .response(let status, let ttfb):
            json.field("status", UInt64(max(0, status)))
            json.field("latencyToFirstByteMs", Self.milliseconds(ttfb))
        case .end(let status, let ttfb, let duration, let bytes, let error):
            json.field("status", status.map { UInt64(max(0, $0)) })
            json.field("latencyToFirstByteMs", Self.milliseconds(ttfb))
            json.field("durationMs", Self.milliseconds(duration))
            json.field("responseBytes", bytes)
            json.field("error", error)
        }
        json.close()
        json.newline()
        buffer = json.buffer
    }

    /// Milliseconds with microsecond resolution, as text ready for JSON (no Foundation number formatting).
    static func milliseconds(_ nanos: UInt64) -> JSONNumber {
        let micros = nanos / 1000
        let fraction = micros % 1000
        var text = String(micros / 1000)
        text += "."
        if fraction < 100 { text += fraction < 10 ? "00" : "0" }
        text += String(fraction)
        return JSONNumber(text: text)
    }
}

/// A number already rendered as JSON text.
struct JSONNumber {
    var text: String
}

/// Writes one JSON object into a `ByteBuffer` with string escaping per RFC 8259; just enough for tap lines.
struct JSONLineWriter {
    var buffer: ByteBuffer
    private var needsComma = false

    init(buffer: ByteBuffer) {
        self.buffer = buffer
    }

    mutating func open() {
        buffer.writeInteger(UInt8(ascii: "{"))
        needsComma = false
    }

    mutating func close() {
        buffer.writeInteger(UInt8(ascii: "}"))
        needsComma = true
    }

    mutating func newline() {
        buffer.writeInteger(UInt8(ascii: "\n"))
    }

    mutating func key(_ name: String) {
        if needsComma { buffer.writeInteger(UInt8(ascii: ",")) }
        string(name)
        buffer.writeInteger(UInt8(ascii: ":"))
        needsComma = false
    }

    mutating func field(_ name: String, _ value: String?) {
        key(name)
        if let value { string(value) } else { buffer.writeStaticString("null") }
        needsComma = true
    }

    mutating func field(_ name: String, _ value: UInt64?) {
        key(name)
        if let value { buffer.writeString(String(value)) } else { buffer.writeStaticString("null") }
        needsComma = true
    }

    mutating func field(_ name: String, _ value: JSONNumber) {
        key(name)
        buffer.writeString(value.text)
        needsComma = true
    }

    mutating func field(_ name: String, _ value: Bool) {
        key(name)
        buffer.writeStaticString(value ? "true" : "false")
        needsComma = true
    }

    mutating func peer(_ peer: TapPeer) {
        open()
        field("address", peer.address)
        key("labels")
        open()
        for (name, value) in peer.labels.sorted(by: { $0.key < $1.key }) { field(name, value) }
        close()
        close()
    }

    private mutating func string(_ text: String) {
        buffer.writeInteger(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): buffer.writeStaticString("\\\"")
            case UInt8(ascii: "\\"): buffer.writeStaticString("\\\\")
            case UInt8(ascii: "\n"): buffer.writeStaticString("\\n")
            case UInt8(ascii: "\r"): buffer.writeStaticString("\\r")
            case UInt8(ascii: "\t"): buffer.writeStaticString("\\t")
            case 0..<0x20:
                let hex: [UInt8] = Array("0123456789abcdef".utf8)
                buffer.writeStaticString("\\u00")
                buffer.writeInteger(hex[Int(byte >> 4)])
                buffer.writeInteger(hex[Int(byte & 0x0F)])
            default:
                buffer.writeInteger(byte)
            }
        }
        buffer.writeInteger(UInt8(ascii: "\""))
    }
}
