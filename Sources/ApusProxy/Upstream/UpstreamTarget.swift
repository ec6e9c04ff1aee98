/// The HTTP version spoken to an upstream.
public enum UpstreamProtocol: Hashable, Sendable {
    case http1
    case http2
}

/// Where one request goes: an address, the HTTP version, and for a meshed peer the identity its certificate must
/// carry (mesh TLS). Also the key of the upstream pools: requests for equal targets share connections.
public struct UpstreamTarget: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var httpProtocol: UpstreamProtocol
    /// Non-nil: connect with mesh TLS and require this identity (the peer's inbound proxy).
    public var identity: String?

    public init(host: String, port: Int, httpProtocol: UpstreamProtocol, identity: String? = nil) {
        self.host = host
        self.port = port
        self.httpProtocol = httpProtocol
        self.identity = identity
    }

    /// `host:port`, brackets around an IPv6 host. On the hot path (metrics labels per request): the byte scan
    /// avoids Foundation's `contains(_: StringProtocol)`, which bridges to `NSString` and costs more than the rest.
    public var address: String {
        host.utf8.contains(UInt8(ascii: ":")) ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
    public var description: String { identity.map { "\(address) (\($0))" } ?? address }
}
