import NIOCore
import NIOHTTP1

/// The forwarding side of an exchange, as the upstream sees it (implemented by ``HTTPForwardHandler``). All calls
/// happen on the shared event loop.
protocol UpstreamDelegate: AnyObject {
    /// Whether the client can take more response bytes now; the upstream holds its reads while it cannot.
    var downstreamWritable: Bool { get }
    func upstreamRead(_ part: HTTPClientResponsePart)
    func upstreamReadComplete()
    /// The upstream channel drained its outbound buffer: client reads may resume.
    func upstreamBecameWritable()
    /// The upstream went away before the response ended.
    func upstreamFailed(_ error: ProxyError)
}

/// The last handler of an upstream pipeline (an HTTP/1.1 connection or an HTTP/2 stream behind
/// `HTTP2FramePayloadToHTTP1ClientCodec`): it carries request parts out and response parts back to its current
/// ``UpstreamDelegate``, holding `read`s while the client is not writable (backpressure from the client's socket
/// reaches the upstream's TCP window or HTTP/2 stream window).
///
/// An HTTP/1.1 handler is reused across the requests of a pooled connection: it goes back to its
/// ``UpstreamPool`` only after a complete request *and* response with keep-alive on both.
final class UpstreamHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    let target: UpstreamTarget
    /// Nil for HTTP/2 streams (one exchange each) and dedicated connections (Upgrade).
    private let pool: UpstreamPool?
    private var delegate: UpstreamDelegate?
    private(set) var context: ChannelHandlerContext?
    private var flow = UpstreamFlow()
    private var reusable = true
    private var requestDone = false
    private var responseDone = false
    private var closeError: ProxyError?
    /// Exchanges begun on this connection: above one, it came from the keep-alive pool, and a failure before any
    /// response byte may just mean the server closed it while idle (see ``isReused``).
    private var exchanges = 0

    init(target: UpstreamTarget, pool: UpstreamPool?) {
        self.target = target
        self.pool = pool
    }

    var channel: Channel? { context?.channel }
    var isActive: Bool { context?.channel.isActive ?? false }
    var isWritable: Bool { context?.channel.isWritable ?? false }
    /// The connection served an earlier exchange (it was pooled keep-alive), so it may have gone stale.
    var isReused: Bool { exchanges > 1 }

    /// Starts an exchange for `delegate`.
    func begin(_ delegate: UpstreamDelegate) {
        self.delegate = delegate
        exchanges += 1
        requestDone = false
        responseDone = false
    }

    func write(_ part: HTTPClientRequestPart) {
        guard let context else { return }
        switch part {
        case .head(let head):
            if !head.isKeepAlive { reusable = false }
        case .end:
            requestDone = true
        case .body:
            break
        }
        context.write(wrapOutboundOut(part), promise: nil)
        flow.wrote()
        if requestDone { finishIfComplete() }
    }

    /// Flushes what ``write(_:)`` queued; nothing when that is already out (the client side calls this on every
    /// read completion, and a flush through the pipeline is not free).
    func flush() {
        flow.flush(context)
    }

    /// Releases a `read` held for backpressure (the client drained).
    func resumeReads() {
        flow.resumeReads(context)
    }

    /// Ends the exchange without completing it (client went away, or the response ended before the request):
    /// the connection (or stream) is closed, never reused.
    func abort() {
        delegate = nil
        reusable = false
        context?.close(promise: nil)
    }

    /// After a `101 Switching Protocols`: removes the HTTP/1 codecs so the channel carries raw bytes, and returns
    /// it. Bytes the decoder already read past the response head are forwarded on removal.
    func detachForUpgrade() -> Channel? {
        guard let context else { return nil }
        delegate = nil
        reusable = false
        let pipeline = context.pipeline.syncOperations
        let channel = context.channel
        if let encoder = try? pipeline.handler(type: HTTPRequestEncoder.self) {
            pipeline.removeHandler(encoder, promise: nil)
        }
        if let decoder = try? pipeline.handler(type: ByteToMessageHandler<HTTPResponseDecoder>.self) {
            pipeline.removeHandler(decoder, promise: nil)
        }
        pipeline.removeHandler(context: context, promise: nil)
        return channel
    }

    // MARK: ChannelHandler

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch part {
        case .head(let head):
            if head.status.code >= 200 && !head.isKeepAlive { reusable = false }
            if head.status == .switchingProtocols { reusable = false }
        case .end:
            responseDone = true
        case .body:
            break
        }
        delegate?.upstreamRead(part)
        if responseDone { finishIfComplete() }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        delegate?.upstreamReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { delegate?.upstreamBecameWritable() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        pool?.forget(self)
        if let delegate {
            self.delegate = nil
            delegate.upstreamFailed(
                closeError ?? ProxyError(.upstreamReset, "connection to \(target) closed before the response ended"))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        closeError = ProxyError(.upstreamReset, "connection to \(target) failed: \(error)")
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) {
        flow.read(context, downstreamWritable: delegate?.downstreamWritable ?? true)
    }

    private func finishIfComplete() {
        guard requestDone && responseDone else { return }
        delegate = nil
        guard let pool else { return }
        if reusable && isActive {
            pool.release(self)
        } else {
            context?.close(promise: nil)
        }
    }
}
