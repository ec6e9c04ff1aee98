import NIOCore
import NIOHTTP1

/// The spliced HTTP/1.1 path: forwards plain HTTP/1.1 requests to a plain HTTP/1.1 upstream as the bytes they
/// came in, without NIO's HTTP codec, on the connection's first handler after protocol detection.
///
/// ```
/// client ─bytes─► HTTP1SpliceHandler ─ head located by HTTP1HeadScanner, body by Content-Length ─► SplicedUpstream
///    ▲                                   (only the Connection line removed; no header list is built)       │
///    └──── head slices minus hop-by-hop lines, body as framed ◄──── SplicedUpstreamHandler (head, framing) ◄┘
/// ```
///
/// Parsing and re-encoding each head with NIO's codecs cost as much as the rest of a hop together (`make
/// bench-proxy`'s "NIO codecs only" floor row); this path costs about what a TCP relay does. It takes only the
/// requests that need nothing but forwarding: a request ``HTTP1HeadScanner`` accepts, to an authority that
/// passes through (standalone, unknown to discovery, `ExternalName`) or, inbound, from an unmeshed client the
/// policy admits, while nobody taps. Any other request — malformed, over a limit, chunked, `Expect`, an upgrade,
/// a meshed or balanced or routed destination, a tap running — turns the connection over to the codec path
/// (`install`, which builds the pipeline ``HTTPServerPipelines`` would have), replaying the bytes from that
/// request's first byte, between exchanges; the connection stays there. So every feature and every error answer
/// keeps its single implementation, and this path has to get only the common case right.
///
/// It keeps the codec path's contract for what it takes: hop-by-hop headers are not forwarded (the only one it
/// accepts in a request is `Connection: keep-alive|close`), pipelined requests are answered in order, one
/// exchange at a time, reads follow the other side's writability (memory per connection stays bounded),
/// connect failures are answered with `l5d-proxy-error`, a stale pooled connection is retried once for an
/// idempotent request without a body, metrics and the in-flight count are the same, and shutdown or a client's
/// half-close drain the connection after the response in flight.
final class HTTP1SpliceHandler: ChannelDuplexHandler, SplicedUpstreamDelegate, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Adds the codec path's handlers after this one (on the loop, synchronously).
    typealias InstallCodecPath = (Channel) throws -> Void

    /// Pipelined bytes held behind the exchange in flight before reading pauses.
    static let maximumPendingBytes = 64 * 1024

    private enum Phase {
        /// Between exchanges: the next head is awaited in ``pending``.
        case idle
        /// Waiting for discovery's first answer for the authority (the head is still at the front of `pending`).
        case resolving
        case connecting
        case forwarding(SplicedUpstreamHandler)
        /// Answered before the request ended (early response, local error): the rest of its body is dropped.
        case discarding
        case closed
        /// Turning the connection over to the codec path: reads pass through.
        case handingOver
    }

    /// Where the current request goes, decided from its head. A class: the same target is kept for the next request
    /// of a keep-alive client, and sharing it costs one retain where copying the struct retained each string in it.
    private final class Target {
        let upstream: UpstreamTarget
        let labels: HTTPTrafficLabels

        init(upstream: UpstreamTarget, labels: HTTPTrafficLabels) {
            self.upstream = upstream
            self.labels = labels
        }
    }

    private let shared: ForwardingContext
    private let client: ClientInfo
    private let install: InstallCodecPath
    /// The head limits, read once: reading them through `shared.configuration` per request copied the whole
    /// configuration.
    private let maxHeaderBytes: Int
    private let maxHeaderCount: Int
    private var context: ChannelHandlerContext?
    private var phase = Phase.idle
    /// Client bytes not forwarded yet: the current request's body, then pipelined requests.
    private var pending: ByteBuffer?
    private var request = HTTP1HeadScanner.Request(
        length: 0, host: 0..<0, contentLength: 0, close: false, isHEAD: false, isIdempotent: false)
    /// The current request's head as read, kept until a response starts (for the one stale-connection retry).
    private var requestHead: ByteBuffer?
    /// Lines of ``requestHead`` not forwarded; reused from request to request.
    private var requestDropped: [Range<Int>] = []
    private var target: Target?
    private var bodyRemaining = 0
    private var responseStarted = false
    private var responseFinished = false
    private var responseStatus = 0
    private var closeAfterResponse = false
    private var exchangeOpen = false
    private var retriedStale = false
    /// Shutdown or half-close: no request after the one in flight (a half-closed client's pipelined, complete
    /// requests are still answered).
    private var quiescing = false
    private var inputClosed = false
    private var readHeld = false
    private var clientFlushPending = false
    private var startedAt: UInt64 = 0
    private var firstByteNanos: UInt64 = 0
    private var metrics = ExchangeMetrics()
    /// The last passthrough authority and where it goes: a keep-alive client names the same one every time.
    private var lastAuthority: (authority: String, target: Target)?
    /// The connection's upstream pool (``UpstreamPools/pool(for:cache:meshTLS:)``).
    private var upstreamPool: UpstreamPool?
    /// Bumped per attempt, so the connect result of an abandoned attempt is ignored.
    private var attempt: UInt64 = 0

    init(shared: ForwardingContext, client: ClientInfo, install: @escaping InstallCodecPath) {
        self.shared = shared
        self.client = client
        self.install = install
        maxHeaderBytes = shared.configuration.maxHeaderBytes
        maxHeaderCount = shared.configuration.maxHeaderCount
    }

    /// Whether connections like `client`'s start on this path: plain HTTP/1.1 (mesh TLS connections carry
    /// identities and policies the codec path checks), unless `APUS_PROXY_HTTP1_SPLICE=false`.
    static func accepts(_ client: ClientInfo, configuration: ProxyConfiguration) -> Bool {
        configuration.http1Splice && client.httpProtocol == .http1 && !client.isMeshTLS
    }

    // MARK: Inbound (client → upstream)

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if case .closed = phase { return }
        if pending == nil || pending!.readableBytes == 0 {
            pending = bytes
        } else {
            pending!.writeBuffer(&bytes)
        }
        advance(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .forwarding(let upstream) = phase { upstream.flush() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, case .forwarding(let upstream) = phase { upstream.resumeReads() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .forwarding(let upstream) = phase { upstream.abort() }
        phase = .closed
        endExchange(error: .cancel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent:
            quiescing = true
            if !exchangeOpen { close(context: context) }
        case ChannelEvent.inputClosed:
            inputClosed = true
            if case .idle = phase { advance(context: context) }
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func read(context: ChannelHandlerContext) {
        if readsHeld {
            readHeld = true
        } else {
            context.read()
        }
    }

    private var readsHeld: Bool {
        switch phase {
        case .resolving, .connecting, .closed:
            return true
        case .forwarding(let upstream) where !upstream.isWritable:
            return true
        case .handingOver:
            return false
        default:
            return (pending?.readableBytes ?? 0) >= Self.maximumPendingBytes
        }
    }

    private func releaseHeldRead() {
        guard readHeld, !readsHeld, let context else { return }
        readHeld = false
        context.read()
    }

    // MARK: Exchange

    /// Moves the connection on with what ``pending`` holds: the next request when idle, body bytes when forwarding
    /// or discarding.
    private func advance(context: ChannelHandlerContext) {
        switch phase {
        case .idle:
            startNextRequest(context: context)
        case .forwarding(let upstream):
            forwardBody(to: upstream)
        case .discarding:
            discardBody(context: context)
        case .resolving, .connecting, .closed, .handingOver:
            break
        }
    }

    private func startNextRequest(context: ChannelHandlerContext) {
        guard !quiescing else {
            close(context: context)
            return
        }
        guard let pending, pending.readableBytes > 0 else {
            if inputClosed { close(context: context) }
            return
        }
        let scan = pending.withUnsafeReadableBytes {
            HTTP1HeadScanner.scanRequest(
                $0, maxHeaderBytes: maxHeaderBytes, maxHeaderCount: maxHeaderCount, dropped: &requestDropped)
        }
        switch scan {
        case .incomplete:
            // A half-closed client sent its last bytes: the codec path answers or closes as for any truncation.
            if inputClosed { handOver(context: context) }
        case .codecPath:
            handOver(context: context)
        case .request(let head):
            request = head
            route(context: context)
        }
    }

    /// Decides where the request at the front of ``pending`` goes, or hands the connection over.
    private func route(context: ChannelHandlerContext) {
        guard !shared.tap.isActive else { return handOver(context: context) }
        switch shared.direction {
        case .outbound:
            let host = request.host
            if let last = lastAuthority,
                pending!.withUnsafeReadableBytes({
                    last.authority.utf8.elementsEqual(UnsafeRawBufferPointer(rebasing: $0[host]))
                })
            {
                return start(last.target, context: context)
            }
            let authority = pending!.withUnsafeReadableBytes {
                String(decoding: UnsafeRawBufferPointer(rebasing: $0[host]), as: UTF8.self)
            }
            guard let resolver = shared.resolver else {
                return passThrough(to: authority, host: nil, context: context)
            }
            if let resolved = resolver.resolveImmediately(authority: authority) {
                return routeResolved(resolved, authority: authority, context: context)
            }
            phase = .resolving
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            resolver.resolve(authority: authority, on: context.eventLoop).whenComplete { result in
                let handler = loopBound.value
                guard case .resolving = handler.phase, let context = handler.context else { return }
                handler.phase = .idle
                switch result {
                case .success(let resolved): handler.routeResolved(resolved, authority: authority, context: context)
                case .failure: handler.passThrough(to: authority, host: nil, context: context)
                }
            }
        case .inbound:
            // Plaintext clients have no identity: only `all-unauthenticated` admits them (the codec path
            // answers the refusal).
            guard shared.configuration.inboundPolicy == .allUnauthenticated,
                let port = client.originalPort ?? shared.configuration.inboundDefaultPort, (1...65535).contains(port)
            else { return handOver(context: context) }
            let upstream = UpstreamTarget(host: shared.configuration.inboundForwardIP, port: port, httpProtocol: .http1)
            let labels = HTTPTrafficLabels(
                direction: .inbound, targetAddress: upstream.address, tls: client.tlsStatus)
            start(Target(upstream: upstream, labels: labels), context: context)
        }
    }

    private func routeResolved(_ resolved: ResolvedDestination, authority: String, context: ChannelHandlerContext) {
        // A profile (routes, retries, timeouts, traffic split) or endpoints to balance: the codec path's.
        guard resolved.profile == nil else { return handOver(context: context) }
        switch resolved.resolution {
        case .notFound:
            passThrough(to: authority, host: nil, context: context)
        case .external(let host, let port):
            passThrough(to: authority, host: TargetAddress(host: host, port: port), context: context)
        case .endpoints:
            handOver(context: context)
        }
    }

    /// Forwards to `host` (an `ExternalName`'s), else to the authority as given.
    private func passThrough(to authority: String, host: TargetAddress?, context: ChannelHandlerContext) {
        guard let address = host ?? TargetAddress.parse(authority) else {
            // Not a host:port: the codec path answers 400 with the reason.
            return handOver(context: context)
        }
        let upstream = UpstreamTarget(host: address.host, port: address.port, httpProtocol: .http1)
        let labels = HTTPTrafficLabels(
            direction: .outbound, authority: authority, targetAddress: upstream.address,
            tls: .none(reason: "not_provided_by_service_discovery"))
        let target = Target(upstream: upstream, labels: labels)
        // Discovery answers can change; only the standalone proxy's answer (parse the authority) is fixed.
        if shared.resolver == nil { lastAuthority = (authority, target) }
        start(target, context: context)
    }

    /// Takes the request's head off ``pending``, counts the request and connects.
    private func start(_ target: Target, context: ChannelHandlerContext) {
        self.target = target
        requestHead = pending!.readSlice(length: request.length)
        bodyRemaining = request.contentLength
        responseStarted = false
        responseFinished = false
        retriedStale = false
        closeAfterResponse = request.close
        exchangeOpen = true
        startedAt = NIODeadline.now().uptimeNanoseconds
        shared.inFlight.started()
        metrics.requestStarted(target.labels, registry: shared.metrics)
        acquire(fresh: false, context: context)
    }

    private func acquire(fresh: Bool, context: ChannelHandlerContext) {
        guard let target else { return }
        let pool = pool(for: context.eventLoop)
        // An idle pooled connection, without the callback the general acquire needs (its closure is a malloc).
        if !fresh, let upstream = pool.takeIdleSpliced(target.upstream) {
            return connected(upstream)
        }
        phase = .connecting
        attempt &+= 1
        let current = attempt
        pool.acquireSpliced(
            target.upstream, connectTimeout: shared.connectTimeout, fresh: fresh
        ) { [self] result in
            guard current == attempt, case .connecting = phase, self.context != nil else {
                if case .success(let upstream) = result { upstream.abort() }
                return
            }
            switch result {
            case .success(let upstream): connected(upstream)
            case .failure(let error): answerLocally(error)
            }
        }
    }

    private func pool(for eventLoop: EventLoop) -> UpstreamPool {
        shared.pools.pool(for: eventLoop, cache: &upstreamPool, meshTLS: shared.meshTLS)
    }

    private func connected(_ upstream: SplicedUpstreamHandler) {
        phase = .forwarding(upstream)
        upstream.begin(self, requestIsHEAD: request.isHEAD)
        if requestDropped.isEmpty {
            upstream.write(requestHead!)
        } else {
            var head = ByteBuffer()
            Self.append(requestHead!, without: requestDropped, to: &head)
            upstream.write(head)
        }
        if bodyRemaining == 0 { upstream.requestFinished() }
        forwardBody(to: upstream)
        upstream.flush()
        releaseHeldRead()
    }

    private func forwardBody(to upstream: SplicedUpstreamHandler) {
        guard bodyRemaining > 0, let available = pending?.readableBytes, available > 0 else { return }
        let take = min(bodyRemaining, available)
        let body = pending!.readSlice(length: take)!
        bodyRemaining -= take
        upstream.write(body)
        if bodyRemaining == 0 { upstream.requestFinished() }
    }

    private func discardBody(context: ChannelHandlerContext) {
        if bodyRemaining > 0, let available = pending?.readableBytes, available > 0 {
            let take = min(bodyRemaining, available)
            pending!.moveReaderIndex(forwardBy: take)
            bodyRemaining -= take
        }
        guard bodyRemaining == 0 else { return }
        phase = .idle
        endExchange(error: nil)
        releaseHeldRead()
        startNextRequest(context: context)
    }

    /// Appends the head `bytes` to `out` without the `dropped` line ranges (sorted, offsets into `bytes`), with
    /// `extraLine` before the final empty line, and with the status line's `HTTP/1.0` written as `HTTP/1.1`.
    private static func append(
        _ bytes: ByteBuffer, without dropped: [Range<Int>], extraLine: StaticString? = nil,
        upgradingVersion: Bool = false, to out: inout ByteBuffer
    ) {
        bytes.withUnsafeReadableBytes { head in
            var offset = 0
            if upgradingVersion {
                out.writeStaticString("HTTP/1.1")
                offset = 8
            }
            let end = head.count - 2  // the final CRLF
            for range in dropped {
                if range.lowerBound > offset {
                    out.writeBytes(UnsafeRawBufferPointer(rebasing: head[offset..<range.lowerBound]))
                }
                offset = range.upperBound
            }
            if end > offset { out.writeBytes(UnsafeRawBufferPointer(rebasing: head[offset..<end])) }
            if let extraLine { out.writeStaticString(extraLine) }
            out.writeStaticString("\r\n")
        }
    }

    // MARK: Response bytes to the client

    /// Response bytes gathered for one socket write: the head (edited, so copied) and the small body pieces
    /// read with it go out as one contiguous buffer — one `write`, no iovec list — whose storage is reused from
    /// response to response once the previous write has left it.
    private var outgoing = ByteBuffer()
    /// ``outgoing`` was handed to the channel: clear it (reusing the storage once the channel let go) before
    /// the next byte.
    private var outgoingWritten = true
    /// Body pieces up to this size are copied into ``outgoing``; larger ones go out as the slices they came in.
    static let coalescedBodyLimit = 4096

    private func prepareOutgoing() {
        guard outgoingWritten else { return }
        outgoingWritten = false
        outgoing.clear()
    }

    /// Hands what ``outgoing`` holds to the channel (not flushed).
    private func writeOutgoing(context: ChannelHandlerContext) {
        guard !outgoingWritten, outgoing.readableBytes > 0 else { return }
        outgoingWritten = true
        context.write(wrapOutboundOut(outgoing), promise: nil)
    }

    // MARK: Upstream events (SplicedUpstreamDelegate)

    var downstreamWritable: Bool { context?.channel.isWritable ?? false }

    func upstreamResponseHead(_ head: HTTP1HeadScanner.Response, bytes: ByteBuffer, dropped: [Range<Int>]) {
        prepareOutgoing()
        clientFlushPending = true
        guard !head.isInformational else {
            Self.append(bytes, without: dropped, upgradingVersion: head.isHTTP10, to: &outgoing)
            return
        }
        responseStarted = true
        responseStatus = head.status
        firstByteNanos = NIODeadline.now().uptimeNanoseconds &- startedAt
        requestHead = nil
        if quiescing || (inputClosed && (pending?.readableBytes ?? 0) == 0) || head.framing == .untilClose {
            closeAfterResponse = true
        }
        Self.append(
            bytes, without: dropped, extraLine: closeAfterResponse ? "connection: close\r\n" : nil,
            upgradingVersion: head.isHTTP10, to: &outgoing)
    }

    func upstreamResponseBody(_ bytes: ByteBuffer) {
        guard let context else { return }
        clientFlushPending = true
        if bytes.readableBytes <= Self.coalescedBodyLimit {
            prepareOutgoing()
            outgoing.writeImmutableBuffer(bytes)
        } else {
            writeOutgoing(context: context)
            context.write(wrapOutboundOut(bytes), promise: nil)
        }
    }

    func upstreamResponseEnded() {
        guard let context, case .forwarding(let upstream) = phase else { return }
        responseFinished = true
        clientFlushPending = false
        writeOutgoing(context: context)
        if closeAfterResponse {
            phase = .closed
            endExchange(error: nil)
            if bodyRemaining > 0 { upstream.abort() }
            close(context: context)
            return
        }
        context.flush()
        if bodyRemaining > 0 {
            // Early response (e.g. 413 before the upload finished): that upstream cannot be reused.
            upstream.abort()
            phase = .discarding
            discardBody(context: context)
            return
        }
        phase = .idle
        endExchange(error: nil)
        releaseHeldRead()
        startNextRequest(context: context)
    }

    func upstreamReadComplete() {
        guard clientFlushPending, let context else { return }
        clientFlushPending = false
        writeOutgoing(context: context)
        context.flush()
    }

    func upstreamBecameWritable() {
        releaseHeldRead()
    }

    func upstreamFailed(_ error: ProxyError) {
        guard let context, case .forwarding(let upstream) = phase else { return }
        if responseStarted {
            // Mid-response there is no way to report it but to cut the connection.
            shared.metrics.httpError(direction: shared.direction, reason: error.reason.rawValue)
            phase = .closed
            endExchange(error: ResponseError(error.reason))
            context.close(promise: nil)
            return
        }
        // A pooled connection the server closed while idle: an idempotent request without a body goes once
        // more on a new connection (as the codec path does, and hyper).
        if upstream.isReused, !retriedStale, request.contentLength == 0, request.isIdempotent {
            retriedStale = true
            acquire(fresh: true, context: context)
            return
        }
        answerLocally(error)
    }

    // MARK: Ending

    /// Answers with the proxy's own error response (`l5d-proxy-error` saying why), as the codec path does.
    private func answerLocally(_ error: ProxyError) {
        guard let context else { return }
        writeOutgoing(context: context)
        shared.metrics.httpError(direction: shared.direction, reason: error.reason.rawValue)
        let status = HTTPResponseStatus(statusCode: error.status)
        let message = String(
            decoding: error.message.utf8.map { $0 == 0x0D || $0 == 0x0A || $0 < 0x20 ? UInt8(ascii: " ") : $0 },
            as: UTF8.self)
        // As the codec path: a request whose body is still arriving is not drained, the connection closes.
        let closeAfter = closeAfterResponse || quiescing || bodyRemaining > (pending?.readableBytes ?? 0)
        var response = ByteBuffer()
        response.writeString("HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\n")
        response.writeString("\(ProxyHeaders.proxyError): \(message)\r\ncontent-length: 0\r\n")
        if closeAfter { response.writeString("connection: close\r\n") }
        response.writeString("\r\n")
        responseStarted = true
        responseFinished = true
        responseStatus = Int(status.code)
        firstByteNanos = NIODeadline.now().uptimeNanoseconds &- startedAt
        requestHead = nil
        context.writeAndFlush(wrapOutboundOut(response), promise: nil)
        if closeAfter {
            phase = .closed
            endExchange(error: nil)
            close(context: context)
            return
        }
        phase = .discarding
        discardBody(context: context)
    }

    /// Counts the exchange once, as ``HTTPForwardHandler`` does.
    private func endExchange(error: ResponseError?) {
        guard exchangeOpen else { return }
        exchangeOpen = false
        shared.inFlight.finished()
        metrics.exchangeEnded(
            status: responseStarted ? responseStatus : nil, grpcStatus: nil, latencyToFirstByteNanos: firstByteNanos,
            error: responseFinished ? nil : error)
    }

    /// Closes once what was written is out.
    private func close(context: ChannelHandlerContext) {
        phase = .closed
        pending = nil
        let flushed = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer()), promise: flushed)
        flushed.futureResult.assumeIsolated().whenComplete { [context] _ in context.close(promise: nil) }
    }

    /// Turns the connection over to the codec path from the request at the front of ``pending``: its handlers
    /// go in after this one, get the bytes (and a half-close) this one holds, and this one leaves.
    private func handOver(context: ChannelHandlerContext) {
        phase = .handingOver
        do {
            try install(context.channel)
        } catch {
            context.close(promise: nil)
            return
        }
        if let bytes = pending, bytes.readableBytes > 0 {
            pending = nil
            context.fireChannelRead(wrapInboundOut(bytes))
            context.fireChannelReadComplete()
        }
        if inputClosed { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        if readHeld {
            readHeld = false
            context.read()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
