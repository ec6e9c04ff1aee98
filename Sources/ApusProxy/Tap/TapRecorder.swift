import ApusIdentity
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2

/// The tap side of one ``HTTPForwardHandler``: builds the request event when someone taps and reports the response
/// and end of the same exchange. Lives on the handler's event loop, so it needs no locks of its own; when nobody
/// taps, ``request(_:)`` returns after one atomic load and the other calls find no exchange.
struct TapRecorder {
    /// What the forwarding path knows when it has chosen (or failed to choose) a target.
    struct Request {
        var head: HTTPRequestHead
        var authority: String?
        /// `host:port` of the chosen upstream; nil when the request is answered without one.
        var targetAddress: String?
        /// The identity the upstream must prove (outbound to a meshed endpoint).
        var targetIdentity: String?
        var destinationLabels: [String: String]
        var route: String
    }

    /// The `rt_route` of requests no route matched.
    static let defaultRoute = "[DEFAULT]"

    private var connectionID: UInt64?
    private var exchangeCount: UInt64 = 0
    private var exchange: TapExchange?
    /// The client's request head, kept only while tapping, for requests answered before a target is chosen.
    private var pendingHead: HTTPRequestHead?
    private var status: Int?
    private var latencyToFirstByte: UInt64 = 0
    private var responseBytes: UInt64 = 0

    /// Whether the current exchange is being tapped (callers skip byte counting otherwise).
    var isRecording: Bool { exchange != nil }

    /// Publishes the request event if a subscriber wants it; a second call for the same exchange is ignored.
    mutating func request(
        _ request: Request, shared: ForwardingContext, client: ClientInfo, channel: Channel
    ) {
        guard shared.tap.isActive, exchange == nil else { return }
        pendingHead = nil
        status = nil
        latencyToFirstByte = 0
        responseBytes = 0
        // An HTTP/2 exchange runs on a stream channel whose parent is the client connection; an HTTP/1.1 one on the
        // connection itself (whose parent is the listening socket).
        let isStream = client.httpProtocol == .http2
        let connection = isStream ? (channel.parent ?? channel) : channel
        let id = TapExchangeID(
            connection: connectionID ?? shared.tap.connectionID(for: connection),
            stream: (isStream ? Self.streamID(of: channel) : nil) ?? exchangeCount)
        connectionID = id.connection
        let local = shared.tap.localLabels
        let localIdentity = shared.meshTLS.localIdentity
        let clientAddress = connection.remoteAddress.map(Self.format) ?? "unknown"
        let info: TapRequestInfo
        switch shared.direction {
        case .outbound:
            let tls = request.targetIdentity != nil
            info = TapRequestInfo(
                id: id, direction: .outbound, source: TapPeer(address: clientAddress, labels: local),
                destination: TapPeer(
                    address: request.targetAddress ?? request.authority ?? "unknown",
                    labels: request.destinationLabels),
                tls: tls, clientIdentity: tls ? localIdentity : nil, serverIdentity: request.targetIdentity,
                method: request.head.method.rawValue, authority: request.authority, path: request.head.uri,
                route: request.route)
        case .inbound:
            let localAddress = connection.localAddress.map(Self.format) ?? "unknown"
            info = TapRequestInfo(
                id: id, direction: .inbound,
                source: TapPeer(address: clientAddress, labels: Self.labels(ofIdentity: client.peerIdentity)),
                destination: TapPeer(address: request.targetAddress ?? localAddress, labels: local),
                tls: client.isMeshTLS, clientIdentity: client.peerIdentity,
                serverIdentity: client.isMeshTLS ? localIdentity : nil, method: request.head.method.rawValue,
                authority: request.authority, path: request.head.uri, route: request.route)
        }
        exchange = shared.tap.begin(info)
    }

    /// Starts a new exchange (HTTP/1.1 stream numbering); call once per request head.
    mutating func nextExchange(_ head: HTTPRequestHead, shared: ForwardingContext) {
        exchangeCount &+= 1
        exchange = nil
        pendingHead = shared.tap.isActive ? head : nil
    }

    /// Publishes the request event for a request answered by the proxy itself (policy, no endpoints, bad
    /// target) if it was not published yet.
    mutating func requestWithoutTarget(shared: ForwardingContext, client: ClientInfo, channel: Channel) {
        guard exchange == nil, let head = pendingHead else { return }
        let authority = head.headers.first(name: "host") ?? HTTPHeadRewriting.targetAuthority(of: head)
        request(
            Request(
                head: head, authority: authority, targetAddress: nil, targetIdentity: nil, destinationLabels: [:],
                route: Self.defaultRoute),
            shared: shared, client: client, channel: channel)
    }

    mutating func responded(status: Int, latencyToFirstByteNanos: UInt64) {
        guard let exchange else { return }
        self.status = status
        latencyToFirstByte = latencyToFirstByteNanos
        exchange.publish(.response(status: status, latencyToFirstByteNanos: latencyToFirstByteNanos))
    }

    mutating func responseBody(_ bytes: Int) {
        responseBytes &+= UInt64(bytes)
    }

    mutating func ended(durationNanos: UInt64, error: Bool) {
        guard let exchange else { return }
        self.exchange = nil
        exchange.publish(
            .end(
                status: status, latencyToFirstByteNanos: latencyToFirstByte, durationNanos: durationNanos,
                responseBytes: responseBytes, error: error))
    }

    /// Call only on an HTTP/2 stream channel: socket channels treat options they do not know as a programming
    /// error.
    private static func streamID(of channel: Channel) -> UInt64? {
        guard let id = try? channel.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID) else { return nil }
        return UInt64(Int(id))
    }

    static func format(_ address: SocketAddress) -> String {
        guard let ip = address.ipAddress, let port = address.port else { return "\(address)" }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    /// `serviceaccount` and `namespace` of a verified Linkerd-style identity, so `from` filters work inbound.
    static func labels(ofIdentity identity: String?) -> [String: String] {
        guard let identity, let name = try? IdentityName(parsing: identity) else { return [:] }
        return ["serviceaccount": name.serviceAccount, "namespace": name.namespace]
    }
}

extension TapHub {
    /// A stable number per client TCP connection while it is open (HTTP/2 streams share their connection's).
    func connectionID(for channel: Channel) -> UInt64 {
        let key = ObjectIdentifier(channel)
        if let known = connectionNumbers.withLockedValue({ $0[key] }) { return known }
        let id = nextConnectionID()
        connectionNumbers.withLockedValue { $0[key] = id }
        channel.closeFuture.whenComplete { [connectionNumbers] _ in
            _ = connectionNumbers.withLockedValue { $0.removeValue(forKey: key) }
        }
        return id
    }
}
