import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOTLS

/// The proxy's control port (Linkerd's :4190): the streaming tap endpoint.
///
/// `POST /apus.tap.v1/Observe` with a ``TapFilter`` JSON body answers `200` with `application/x-ndjson`: one
/// ``TapEvent`` per line, for as long as the caller keeps the response open (`docs/tap.md` has the format). The
/// port speaks HTTP/1.1 (chunked) and HTTP/2, in plaintext or over mesh TLS (ALPN `h2` or `http/1.1`); who may
/// tap is the ``TapAuthorizer``'s call, made per request with the connection's verified peer identity.
///
/// A subscriber that reads slowly only fills its own bounded buffer (see ``TapHub``): the server writes while the
/// connection is writable and otherwise leaves events to be dropped and counted. The count is reported in the
/// stream as `{"type":"dropped","dropped":N,"total":T}` before the next events.
public final class TapServer: Sendable {
    public static let observePath = "/apus.tap.v1/Observe"
    /// A filter is a few hundred bytes; anything much larger is not one.
    static let maxBodyBytes = 64 * 1024

    private let listen: ListenAddress
    private let hub: TapHub
    private let authorizer: TapAuthorizer
    private let meshTLS: MeshTLS
    private let group: EventLoopGroup
    private let detectTimeout: TimeAmount
    private let logger: Logger
    private let listener = TrackedListener()

    public init(
        listen: ListenAddress, hub: TapHub, authorizer: TapAuthorizer, meshTLS: MeshTLS, group: EventLoopGroup,
        detectTimeout: Duration = .seconds(10), logger: Logger = Logger(label: "apus.proxy.tap")
    ) {
        self.listen = listen
        self.hub = hub
        self.authorizer = authorizer
        self.meshTLS = meshTLS
        self.group = group
        self.detectTimeout = TimeAmount(detectTimeout)
        self.logger = logger
    }

    /// Binds the control port; returns the bound address.
    /// - Throws: ``TapServerError`` when the address cannot be bound or the server was stopped.
    @discardableResult
    public func start() async throws(TapServerError) -> SocketAddress {
        let context = TapConnectionContext(hub: hub, authorizer: authorizer, meshTLS: meshTLS, logger: logger)
        let timeout = detectTimeout
        let local: SocketAddress
        do {
            local = try await listener.bind(listen, group: group) { channel in
                try channel.pipeline.syncOperations.addHandler(
                    ProtocolDetectHandler(timeout: timeout) { detected, channel in
                        try context.configure(detected, channel: channel)
                    })
            }
        } catch {
            switch error {
            case .bindFailed(let reason): throw .bindFailed(address: listen, underlying: reason)
            case .stopped: throw .stopped
            }
        }
        logger.info("tap server listening", metadata: ["address": "\(local)"])
        return local
    }

    /// Closes the port and every tap stream; idempotent.
    public func stop() async { await listener.stop() }
}

/// Why the tap server is not serving.
public enum TapServerError: Error, Sendable, Hashable, CustomStringConvertible {
    case bindFailed(address: ListenAddress, underlying: String)
    case stopped

    public var description: String {
        switch self {
        case .bindFailed(let address, let underlying): "tap server cannot listen on \(address): \(underlying)"
        case .stopped: "tap server has stopped"
        }
    }
}

/// What every tap connection needs to build its pipeline.
private struct TapConnectionContext: Sendable {
    let hub: TapHub
    let authorizer: TapAuthorizer
    let meshTLS: MeshTLS
    let logger: Logger

    func configure(_ detected: DetectedProtocol, channel: Channel) throws {
        switch detected {
        case .http1:
            try configureHTTP1(channel, peerIdentity: nil)
        case .http2:
            try configureHTTP2(channel, peerIdentity: nil)
        case .tls where meshTLS.isAvailable:
            let pipeline = channel.pipeline.syncOperations
            try pipeline.addHandler(try meshTLS.makeServerHandler())
            try pipeline.addHandler(
                ApplicationProtocolNegotiationHandler { result, channel in
                    channel.eventLoop.makeCompletedFuture {
                        let peer = PeerIdentity.ofVerifiedPeer(in: channel.pipeline)
                        if case .negotiated(MeshTLS.alpnHTTP2) = result {
                            try configureHTTP2(channel, peerIdentity: peer)
                        } else {
                            try configureHTTP1(channel, peerIdentity: peer)
                        }
                    }
                })
        case .tls, .opaque:
            channel.close(promise: nil)
        }
    }

    private func configureHTTP1(_ channel: Channel, peerIdentity: String?) throws {
        let pipeline = channel.pipeline.syncOperations
        // No pipelining assistance: it stops reading while a response is open, and a tap response stays open, so
        // the caller's close (a TLS close_notify, or EOF) would go unnoticed until the next write failed.
        try pipeline.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true)
        try pipeline.addHandler(
            TapStreamHandler(
                hub: hub, authorizer: authorizer, peerIdentity: peerIdentity, logger: logger))
    }

    private func configureHTTP2(_ channel: Channel, peerIdentity: String?) throws {
        let (hub, authorizer, logger) = (self.hub, self.authorizer, self.logger)
        _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: .init(), streamConfiguration: .init(),
            inboundStreamInitializer: { stream in
                stream.eventLoop.makeCompletedFuture {
                    let pipeline = stream.pipeline.syncOperations
                    try pipeline.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                    try pipeline.addHandler(
                        TapStreamHandler(
                            hub: hub, authorizer: authorizer, peerIdentity: peerIdentity, logger: logger))
                }
            })
    }
}

/// One tap request: checks it, then streams the subscriber's events while the connection is writable.
final class TapStreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// Events written per batch before checking writability again.
    private static let batchSize = 64

    private let hub: TapHub
    private let authorizer: TapAuthorizer
    private let peerIdentity: String?
    private let logger: Logger
    private var context: ChannelHandlerContext?
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    private var bodyTooLarge = false
    private var subscription: TapSubscription?
    private var reportedDropped: UInt64 = 0

    init(hub: TapHub, authorizer: TapAuthorizer, peerIdentity: String?, logger: Logger) {
        self.hub = hub
        self.authorizer = authorizer
        self.peerIdentity = peerIdentity
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        endSubscription()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        endSubscription()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { drain() }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let requestHead):
            guard subscription == nil else { return }
            head = requestHead
            body = nil
            bodyTooLarge = false
        case .body(var chunk):
            guard head != nil, !bodyTooLarge else { return }
            if (body?.readableBytes ?? 0) + chunk.readableBytes > TapServer.maxBodyBytes {
                bodyTooLarge = true
                body = nil
            } else if body == nil {
                body = chunk
            } else {
                body?.writeBuffer(&chunk)
            }
        case .end:
            guard let requestHead = head else { return }
            head = nil
            respond(to: requestHead, context: context)
        }
    }

    private func respond(to requestHead: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = requestHead.uri.prefix { $0 != "?" }
        guard path == TapServer.observePath else {
            return reject(.notFound, "not found: \(path) (tap is POST \(TapServer.observePath))", context: context)
        }
        guard requestHead.method == .POST else {
            return reject(.methodNotAllowed, "\(TapServer.observePath) only accepts POST", context: context)
        }
        if bodyTooLarge {
            return reject(
                .payloadTooLarge, "the tap filter is over \(TapServer.maxBodyBytes) bytes", context: context)
        }
        switch authorizer.authorize(
            peerIdentity: peerIdentity, authorization: requestHead.headers.first(name: "authorization"))
        {
        case .allowed:
            break
        case .disabled(let reason):
            return reject(.notFound, reason, context: context)
        case .denied(let reason):
            let remote = context.channel.remoteAddress?.description ?? "unknown"
            logger.warning("tap refused", metadata: ["peer": "\(peerIdentity ?? "none")", "remote": "\(remote)"])
            return reject(.forbidden, reason, context: context)
        }
        let filter: TapFilter
        do throws(TapFilterError) {
            filter = try TapFilter.parse(json: body.map { Array($0.readableBytesView) } ?? [])
        } catch {
            return reject(.badRequest, error.description, context: context)
        }
        body = nil

        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/x-ndjson")
        headers.add(name: "cache-control", value: "no-store")
        context.writeAndFlush(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        subscription = hub.subscribe(filter) {
            loop.execute { loopBound.value.drain() }
        }
        logger.info("tap started", metadata: ["peer": "\(peerIdentity ?? "none")"])
        drain()
    }

    private func reject(_ status: HTTPResponseStatus, _ message: String, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        let text = message + "\n"
        headers.add(name: "content-type", value: "text/plain; charset=utf-8")
        headers.add(name: "content-length", value: String(text.utf8.count))
        if status == .methodNotAllowed { headers.add(name: "allow", value: "POST") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        body = nil
    }

    /// Writes buffered events while the connection takes them; stops (and lets the buffer fill and drop) when it
    /// does not.
    private func drain() {
        guard let context, let subscription else { return }
        var wrote = false
        while context.channel.isWritable {
            let (events, droppedTotal) = subscription.take(limit: Self.batchSize)
            var buffer = context.channel.allocator.buffer(capacity: 512 * (events.count + 1))
            if droppedTotal > reportedDropped {
                var json = JSONLineWriter(buffer: buffer)
                json.open()
                json.field("type", "dropped")
                json.field("dropped", droppedTotal - reportedDropped)
                json.field("total", droppedTotal)
                json.close()
                json.newline()
                buffer = json.buffer
                reportedDropped = droppedTotal
            }
            for event in events { event.writeJSONLine(into: &buffer) }
            guard buffer.readableBytes > 0 else { break }
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            wrote = true
            if events.count < Self.batchSize { break }
        }
        if wrote { context.flush() }
    }

    private func endSubscription() {
        guard let subscription else { return }
        self.subscription = nil
        hub.unsubscribe(subscription)
        logger.info(
            "tap ended",
            metadata: [
                "peer": "\(peerIdentity ?? "none")", "delivered": "\(subscription.deliveredCount)",
                "dropped": "\(subscription.droppedCount)",
            ])
    }
}
