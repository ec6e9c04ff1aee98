import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS

/// Accepts connections on the outbound and inbound listeners and builds each connection's pipeline:
///
/// ```
/// outbound  ─► detect ─┬─ HTTP/1 ───────────► HTTP/1 server codec ─► HTTPForwardHandler (one per connection)
///                      ├─ h2c preface ──────► HTTP/2 + per-stream codec ─► HTTPForwardHandler (one per stream)
///                      └─ TLS / other / timeout ─► OpaqueForwardHandler (original destination)
///           (no detection when discovery marks the original destination opaque: straight to OpaqueForwardHandler)
/// inbound   ─► opaque port? ─► OpaqueForwardHandler
///            └ detect ─┬─ TLS ─► mesh TLS server ─► ALPN h2 / http/1.1 / apus.transport/v1 (peer identity kept)
///                      ├─ HTTP/1, h2c ─► plaintext HTTP (policy decides per request: 403)
///                      └─ other ─► opaque to the app (refused unless the policy allows unauthenticated)
/// ```
enum ProxyListeners {
    /// The accepted connections of all listeners, so shutdown can ask each to quiesce and later close the rest.
    final class ConnectionRegistry: Sendable {
        private let channels = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])

        func add(_ channel: Channel) {
            let key = ObjectIdentifier(channel)
            channels.withLockedValue { $0[key] = channel }
            channel.closeFuture.whenComplete { [channels] _ in
                _ = channels.withLockedValue { $0.removeValue(forKey: key) }
            }
        }

        var count: Int { channels.withLockedValue { $0.count } }

        /// Sends `ChannelShouldQuiesceEvent`: HTTP/1 connections close after the response in flight (or at once
        /// when idle), HTTP/2 connections send GOAWAY and close after their streams.
        func quiesceAll() {
            for channel in channels.withLockedValue({ Array($0.values) }) {
                channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            }
        }

        func closeAll() {
            for channel in channels.withLockedValue({ Array($0.values) }) { channel.close(promise: nil) }
        }
    }

    static func bind(
        _ address: ListenAddress, group: EventLoopGroup, connections: ConnectionRegistry,
        initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
    ) async throws -> Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                connections.add(channel)
                return initializer(channel)
            }
            .bind(host: address.host, port: address.port)
            .get()
    }

    static func outboundInitializer(_ shared: ForwardingContext) -> @Sendable (Channel) -> EventLoopFuture<Void> {
        let timeout = TimeAmount(shared.configuration.outboundDetectTimeout)
        return { channel in
            // A destination discovery marks opaque skips detection (a server-speaks-first protocol would wait out
            // the detect timeout); the channel is registered, and so read, only once this future completes.
            let original = OriginalDestination.of(channel)
            return OpaqueForwardHandler.isOpaqueDestination(original, shared: shared, on: channel.eventLoop)
                .flatMapThrowing { opaque in
                    if opaque {
                        try channel.pipeline.syncOperations.addHandler(
                            OpaqueForwardHandler(
                                shared: shared, route: .outbound(original), tls: .none(reason: "opaque")))
                        return
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        ProtocolDetectHandler(timeout: timeout) { detected, channel in
                            let plain = ClientInfo(
                                httpProtocol: .http1, peerIdentity: nil, isMeshTLS: false, originalPort: nil)
                            switch detected {
                            case .http1:
                                try HTTPServerPipelines.configureHTTP1(channel, shared: shared, client: plain)
                            case .http2:
                                try HTTPServerPipelines.configureHTTP2(channel, shared: shared, client: plain)
                            case .tls, .opaque:
                                try channel.pipeline.syncOperations.addHandler(
                                    OpaqueForwardHandler(
                                        shared: shared, route: .outbound(original), tls: .none(reason: "opaque")))
                            }
                        })
                }
        }
    }

    static func inboundInitializer(_ shared: ForwardingContext) -> @Sendable (Channel) -> EventLoopFuture<Void> {
        let timeout = TimeAmount(shared.configuration.inboundDetectTimeout)
        return { channel in
            channel.eventLoop.makeCompletedFuture {
                let originalPort = OriginalDestination.of(channel)?.port
                let pipeline = channel.pipeline.syncOperations
                if let originalPort, shared.configuration.opaquePorts.contains(originalPort) {
                    guard shared.configuration.inboundPolicy == .allUnauthenticated else {
                        channel.close(promise: nil)
                        return
                    }
                    try pipeline.addHandler(
                        OpaqueForwardHandler(
                            shared: shared, route: .inbound(port: originalPort), tls: .none(reason: "opaque")))
                    return
                }
                try pipeline.addHandler(
                    ProtocolDetectHandler(timeout: timeout) { detected, channel in
                        try configureInbound(detected, channel: channel, originalPort: originalPort, shared: shared)
                    })
            }
        }
    }

    private static func configureInbound(
        _ detected: DetectedProtocol, channel: Channel, originalPort: Int?, shared: ForwardingContext
    ) throws {
        let pipeline = channel.pipeline.syncOperations
        let plain = ClientInfo(httpProtocol: .http1, peerIdentity: nil, isMeshTLS: false, originalPort: originalPort)
        switch detected {
        case .http1:
            try HTTPServerPipelines.configureHTTP1(channel, shared: shared, client: plain)
        case .http2:
            try HTTPServerPipelines.configureHTTP2(channel, shared: shared, client: plain)
        case .tls where shared.meshTLS.isAvailable:
            try pipeline.addHandler(try shared.meshTLS.makeServerHandler())
            try pipeline.addHandler(
                ApplicationProtocolNegotiationHandler { result, channel in
                    channel.eventLoop.makeCompletedFuture {
                        try configureMeshTLS(result, channel: channel, originalPort: originalPort, shared: shared)
                    }
                })
        case .tls, .opaque:
            guard shared.configuration.inboundPolicy == .allUnauthenticated else {
                shared.metrics.httpError(direction: .inbound, reason: "unauthorized")
                channel.close(promise: nil)
                return
            }
            try pipeline.addHandler(
                OpaqueForwardHandler(shared: shared, route: .inbound(port: originalPort), tls: .none(reason: "opaque")))
        }
    }

    /// After the mesh TLS handshake: the peer identity (nil without a client certificate) and the protocol by ALPN.
    private static func configureMeshTLS(
        _ result: ALPNResult, channel: Channel, originalPort: Int?, shared: ForwardingContext
    ) throws {
        let peer = PeerIdentity.ofVerifiedPeer(in: channel.pipeline)
        var client = ClientInfo(httpProtocol: .http1, peerIdentity: peer, isMeshTLS: true, originalPort: originalPort)
        switch result {
        case .negotiated(MeshTLS.alpnHTTP2):
            client.httpProtocol = .http2
            try HTTPServerPipelines.configureHTTP2(channel, shared: shared, client: client)
        case .negotiated(MeshTLS.alpnTransport):
            let policy = shared.configuration.inboundPolicy
            guard policy == .allUnauthenticated || (policy == .allAuthenticated && peer != nil) else {
                shared.metrics.httpError(direction: .inbound, reason: "unauthorized")
                channel.close(promise: nil)
                return
            }
            let route: OpaqueForwardHandler.Route =
                originalPort.map { .inbound(port: $0) } ?? .inboundTransport(peer: peer)
            try channel.pipeline.syncOperations.addHandler(
                OpaqueForwardHandler(shared: shared, route: route, tls: .tls(peer: peer)))
        default:
            try HTTPServerPipelines.configureHTTP1(channel, shared: shared, client: client)
        }
    }
}
