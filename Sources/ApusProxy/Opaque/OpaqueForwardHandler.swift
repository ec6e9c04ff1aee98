import ApusDestinationClient
import NIOCore

/// Proxies one connection byte-for-byte (opaque ports, undetectable protocols, a detect timeout, the mesh
/// transport ALPN): connects upstream, replays what the client sent meanwhile (reads are held, so that is at most
/// one read batch), then becomes a ``GlueHandler`` pair.
///
/// - Outbound: the original destination (`SO_ORIGINAL_DST`) is resolved; a meshed endpoint is reached over mesh
///   TLS with ALPN `apus.transport/v1` and a ``TransportHeader`` naming the target port, anything else directly.
/// - Inbound: the app port is the original destination's, or the transport header's (mesh peers), or the default
///   inbound port; the connection goes to the inbound forward IP.
final class OpaqueForwardHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    enum Route {
        /// Outbound to the original destination.
        case outbound(SocketAddress?)
        /// Inbound plaintext (or TLS we do not terminate) to the app's port.
        case inbound(port: Int?)
        /// Inbound over mesh TLS: the transport header comes first.
        case inboundTransport(peer: String?)
    }

    private let shared: ForwardingContext
    private var route: Route
    private var buffered: ByteBuffer?
    private var connecting = false
    private var readHeld = false
    /// The client sent FIN before the upstream connection was glued (it wrote its request and half-closed at
    /// once); the FIN is passed on right after the bytes held meanwhile.
    private var inputClosed = false
    private var context: ChannelHandlerContext?
    private var tls: TLSStatus
    /// BALANCE: the balancer's claim on the endpoint being connected to.
    private var lease: EndpointLease?

    init(shared: ForwardingContext, route: Route, tls: TLSStatus) {
        self.shared = shared
        self.route = route
        self.tls = tls
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Without this a client's FIN arriving while the upstream connection is being made would close the
        // connection and drop the bytes held so far.
        try? context.channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        if case .inboundTransport = route { return }
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        if case .inboundTransport = route {} else { start(context: context) }
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if buffered == nil { buffered = bytes } else { buffered!.writeBuffer(&bytes) }
        guard case .inboundTransport(let peer) = route, !connecting else { return }
        do {
            guard let header = try TransportHeader.decode(from: &buffered!) else {
                if buffered!.readableBytes > TransportHeader.maximumEncodedLength { context.close(promise: nil) }
                return
            }
            route = .inbound(port: header.port)
            tls = .tls(peer: peer)
            start(context: context)
        } catch {
            shared.metrics.httpError(direction: shared.direction, reason: "bad_transport_header")
            context.close(promise: nil)
        }
    }

    func read(context: ChannelHandlerContext) {
        if connecting { readHeld = true } else { context.read() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? ChannelEvent, case .inputClosed = event else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        inputClosed = true
        // A peer that half-closes before completing the transport header never will.
        if case .inboundTransport = route, !connecting { context.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    private func start(context: ChannelHandlerContext) {
        guard !connecting else { return }
        connecting = true
        switch route {
        case .inboundTransport:
            return
        case .inbound(let port):
            guard let port = port ?? shared.configuration.inboundDefaultPort else {
                context.close(promise: nil)
                return
            }
            connect(
                UpstreamTarget(host: shared.configuration.inboundForwardIP, port: port, httpProtocol: .http1),
                header: nil, labels: [:])
        case .outbound(let original):
            guard let original, let ip = original.ipAddress, let port = original.port else {
                context.close(promise: nil)
                return
            }
            let authority = TargetAddress(host: ip, port: port).description
            guard let resolver = shared.resolver else {
                connect(UpstreamTarget(host: ip, port: port, httpProtocol: .http1), header: nil, labels: [:])
                return
            }
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            resolver.resolve(authority: authority, on: context.eventLoop).whenComplete { result in
                let handler = loopBound.value
                let direct = UpstreamTarget(host: ip, port: port, httpProtocol: .http1)
                // BALANCE: per connection, as Linkerd balances TCP; the lease completes when the connect does.
                guard case .success(let resolved) = result, case .endpoints(let set) = resolved.resolution else {
                    handler.connect(direct, header: nil, labels: [:])
                    return
                }
                guard let lease = handler.pickEndpoint(resolved, set: set) else {
                    // Falling back to the original address would send a meshed destination's bytes in plaintext
                    // past the identity check (every endpoint ejected by failure accrual): fail closed instead.
                    if set.values.contains(where: { $0.identity != nil }) {
                        handler.shared.metrics.httpError(
                            direction: handler.shared.direction, reason: ProxyError.Reason.noEndpoints.rawValue)
                        handler.context?.close(promise: nil)
                    } else {
                        handler.connect(direct, header: nil, labels: [:])
                    }
                    return
                }
                handler.lease = lease
                let endpoint = lease.endpoint
                if let identity = endpoint.identity {
                    let target = UpstreamTarget(
                        host: endpoint.address, port: endpoint.opaqueTransportPort ?? handler.shared.meshInboundPort,
                        httpProtocol: .http1, identity: identity)
                    handler.tls = .tls(peer: identity)
                    handler.connect(target, header: TransportHeader(port: endpoint.port), labels: endpoint.labels)
                } else {
                    handler.connect(
                        UpstreamTarget(host: endpoint.address, port: endpoint.port, httpProtocol: .http1),
                        header: nil, labels: endpoint.labels)
                }
            }
        }
    }

    /// Whether an outbound connection redirected to `original` is proxied as opaque TCP without protocol
    /// detection: discovery marks the port opaque (the profile's opaque ports, or an endpoint's `opaque` protocol
    /// hint), as Linkerd's outbound side consults discovery before detecting. Detecting would hold a
    /// server-speaks-first protocol (SMTP, MySQL) for the whole detect timeout, because its client sends nothing
    /// until the server's banner arrives, and the banner cannot arrive before the proxy connects upstream.
    ///
    /// Answers at once when discovery's answer is known (static endpoints, a destination already watched);
    /// otherwise after the first lookup, which the resolver bounds by its first-frame timeout. A connection that
    /// was not redirected (nothing to look up) or a proxy without discovery is never opaque by this rule.
    static func isOpaqueDestination(
        _ original: SocketAddress?, shared: ForwardingContext, on eventLoop: any EventLoop
    ) -> EventLoopFuture<Bool> {
        guard let original, let ip = original.ipAddress, let port = original.port, let resolver = shared.resolver
        else { return eventLoop.makeSucceededFuture(false) }
        let authority = TargetAddress(host: ip, port: port).description
        if let known = resolver.resolveImmediately(authority: authority) {
            return eventLoop.makeSucceededFuture(isOpaque(known, port: port))
        }
        return resolver.resolve(authority: authority, on: eventLoop).map { isOpaque($0, port: port) }
            .recover { _ in false }
    }

    /// Discovery says `port` of `resolved` carries an opaque protocol.
    static func isOpaque(_ resolved: ResolvedDestination, port: Int) -> Bool {
        if resolved.profile?.opaquePorts.contains(port) == true { return true }
        guard case .endpoints(let set) = resolved.resolution else { return false }
        return set.values.contains { $0.protocolHint == .opaque }
    }

    /// BALANCE: the destination's balancer picks without queueing (a TCP connection falls back to the
    /// original address when nothing is available, unless the destination is meshed).
    private func pickEndpoint(_ resolved: ResolvedDestination, set: EndpointSet) -> EndpointLease? {
        guard let loop = context?.eventLoop else { return nil }
        let balancer = shared.balancers.balancer(for: resolved.canonical?.description ?? resolved.authority, on: loop)
        balancer.update(set)
        balancer.update(failureAccrual: resolved.profile?.servicePolicy?.failureAccrual.map(FailureAccrualPolicy.init))
        return balancer.pick()
    }

    private func connect(_ target: UpstreamTarget, header: TransportHeader?, labels: [String: String]) {
        guard let context else {
            lease?.cancel()
            return
        }
        let pool =
            shared.pools.pool(for: context.eventLoop)
            ?? UpstreamPool(eventLoop: context.eventLoop, meshTLS: shared.meshTLS)
        pool.connect(target, timeout: shared.connectTimeout, alpn: [MeshTLS.alpnTransport]) { [self] result in
            if case .failure = result { lease?.complete(failed: true) } else { lease?.complete(failed: false) }
            lease = nil
            guard let context = self.context, context.channel.isActive else {
                if case .success(let channel) = result { channel.close(promise: nil) }
                return
            }
            switch result {
            case .failure(let error):
                shared.metrics.httpError(direction: shared.direction, reason: error.reason.rawValue)
                context.close(promise: nil)
            case .success(let upstream):
                glue(upstream, header: header, target: target, context: context)
            }
        }
    }

    private func glue(
        _ upstream: Channel, header: TransportHeader?, target: UpstreamTarget,
        context: ChannelHandlerContext
    ) {
        let metrics = shared.metrics.tcp(
            TCPTrafficLabels(direction: shared.direction, peer: .destination, tls: tls, targetAddress: target.address))
        metrics.opened()
        let (clientGlue, upstreamGlue) = GlueHandler.matchedPair(
            firstRead: { metrics.wrote($0) }, secondRead: { metrics.read($0) }, onClose: { metrics.closed(error: nil) })
        do {
            try upstream.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            try context.channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            try upstream.pipeline.syncOperations.addHandler(upstreamGlue)
            if let header {
                var bytes = ByteBuffer()
                try header.encode(into: &bytes)
                upstream.write(bytes, promise: nil)
            }
            if let bytes = buffered, bytes.readableBytes > 0 {
                buffered = nil
                metrics.wrote(bytes.readableBytes)
                upstream.write(bytes, promise: nil)
            }
            upstream.flush()
            if inputClosed { upstream.close(mode: .output, promise: nil) }
            try context.pipeline.syncOperations.addHandler(clientGlue, position: .after(self))
            connecting = false
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            upstream.close(promise: nil)
            context.close(promise: nil)
            return
        }
        upstream.read()
        context.channel.read()
    }
}
