import NIOCore

/// The client side of a spliced exchange, as ``SplicedUpstreamHandler`` sees it (implemented by
/// ``HTTP1SpliceHandler``). All calls happen on the shared event loop.
protocol SplicedUpstreamDelegate: AnyObject {
    /// Whether the client can take more response bytes now; the upstream holds its reads while it cannot.
    var downstreamWritable: Bool { get }
    /// A response head as the upstream sent it (`bytes`), with the lines the client must not get (`dropped`,
    /// offsets into `bytes`). Informational (1xx) heads come first, then one final head.
    func upstreamResponseHead(_ head: HTTP1HeadScanner.Response, bytes: ByteBuffer, dropped: [Range<Int>])
    /// Response body bytes exactly as framed on the wire (chunk sizes and trailers included).
    func upstreamResponseBody(_ bytes: ByteBuffer)
    /// The response is complete.
    func upstreamResponseEnded()
    func upstreamReadComplete()
    func upstreamBecameWritable()
    /// The upstream went away, or sent something that is not a response, before the response ended.
    func upstreamFailed(_ error: ProxyError)
}

/// The last (and only) handler of a spliced upstream connection: raw bytes out, and back in, the response
/// head located with ``HTTP1HeadScanner`` and the body followed to its end by its framing (length, chunks, or
/// close), so that the connection goes back to the ``UpstreamPool`` only between complete exchanges. No codec:
/// the bytes the delegate gets are slices of what was read.
final class SplicedUpstreamHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// A response head larger than this is refused (as NIO's decoder refuses one over its limit).
    static let maximumResponseHeadBytes = 80 * 1024

    private enum Reading {
        case head
        case length(remaining: Int)
        case chunked(ChunkedBodyScanner)
        case untilClose
        case done
    }

    let target: UpstreamTarget
    private let pool: UpstreamPool?
    private var delegate: SplicedUpstreamDelegate?
    private var context: ChannelHandlerContext?
    private var reading = Reading.done
    private var requestIsHEAD = false
    /// Bytes of a response head that has not arrived whole.
    private var partialHead: ByteBuffer?
    private var dropped: [Range<Int>] = []
    private var flow = UpstreamFlow()
    private var reusable = true
    private var requestDone = false
    private var responseDone = false
    private var closeError: ProxyError?
    private var exchanges = 0

    init(target: UpstreamTarget, pool: UpstreamPool?) {
        self.target = target
        self.pool = pool
    }

    var isActive: Bool { context?.channel.isActive ?? false }
    var isWritable: Bool { context?.channel.isWritable ?? false }
    /// The connection served an earlier exchange (it was pooled keep-alive), so it may have gone stale.
    var isReused: Bool { exchanges > 1 }

    /// Starts an exchange for `delegate`.
    func begin(_ delegate: SplicedUpstreamDelegate, requestIsHEAD: Bool) {
        self.delegate = delegate
        self.requestIsHEAD = requestIsHEAD
        exchanges += 1
        requestDone = false
        responseDone = false
        reading = .head
        partialHead = nil
    }

    func write(_ bytes: ByteBuffer) {
        guard let context else { return }
        context.write(wrapOutboundOut(bytes), promise: nil)
        flow.wrote()
    }

    /// The request's last byte was written.
    func requestFinished() {
        requestDone = true
        finishIfComplete()
    }

    func flush() {
        flow.flush(context)
    }

    /// Releases a `read` held for backpressure (the client drained).
    func resumeReads() {
        flow.resumeReads(context)
    }

    /// Ends the exchange without completing it: the connection is closed, never reused.
    func abort() {
        delegate = nil
        reusable = false
        context?.close(promise: nil)
    }

    // MARK: ChannelHandler

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        guard let delegate else {
            // Bytes on an idle pooled connection answer nothing we sent: the connection is out of step.
            reusable = false
            context.close(promise: nil)
            return
        }
        while buffer.readableBytes > 0 {
            switch reading {
            case .head:
                if var partial = partialHead {
                    partial.writeBuffer(&buffer)
                    buffer = partial
                    partialHead = nil
                }
                let scan = buffer.withUnsafeReadableBytes {
                    HTTP1HeadScanner.scanResponse(
                        $0, requestIsHEAD: requestIsHEAD, maxHeaderBytes: Self.maximumResponseHeadBytes,
                        dropped: &dropped)
                }
                switch scan {
                case .incomplete:
                    partialHead = buffer
                    return
                case .malformed(let why):
                    fail(ProxyError(.upstreamReset, "malformed response from \(target): \(why)"), context: context)
                    return
                case .response(let head):
                    let headBytes = buffer.readSlice(length: head.length)!
                    if head.isInformational {
                        delegate.upstreamResponseHead(head, bytes: headBytes, dropped: dropped)
                        continue
                    }
                    if !head.reusable { reusable = false }
                    switch head.framing {
                    case .none: reading = .done
                    case .length(let length): reading = .length(remaining: length)
                    case .chunked: reading = .chunked(ChunkedBodyScanner())
                    case .untilClose: reading = .untilClose
                    }
                    delegate.upstreamResponseHead(head, bytes: headBytes, dropped: dropped)
                    if case .done = reading {
                        responseEnded(leftover: buffer.readableBytes)
                        return
                    }
                }
            case .length(let remaining):
                let take = min(remaining, buffer.readableBytes)
                let body = buffer.readSlice(length: take)!
                reading = take == remaining ? .done : .length(remaining: remaining - take)
                delegate.upstreamResponseBody(body)
                if case .done = reading {
                    responseEnded(leftover: buffer.readableBytes)
                    return
                }
            case .chunked(var scanner):
                guard let taken = buffer.withUnsafeReadableBytes({ scanner.consume($0) }) else {
                    fail(ProxyError(.upstreamReset, "malformed chunked body from \(target)"), context: context)
                    return
                }
                let body = buffer.readSlice(length: taken)!
                reading = scanner.isDone ? .done : .chunked(scanner)
                delegate.upstreamResponseBody(body)
                if scanner.isDone {
                    responseEnded(leftover: buffer.readableBytes)
                    return
                }
            case .untilClose:
                delegate.upstreamResponseBody(buffer)
                return
            case .done:
                // Bytes after the response that nothing asked for.
                reusable = false
                context.close(promise: nil)
                return
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        delegate?.upstreamReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { delegate?.upstreamBecameWritable() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        pool?.forgetSpliced(self)
        guard let delegate else { return }
        if case .untilClose = reading {
            // The close is the end of this body.
            reading = .done
            responseDone = true
            self.delegate = nil
            delegate.upstreamResponseEnded()
            return
        }
        self.delegate = nil
        delegate.upstreamFailed(
            closeError ?? ProxyError(.upstreamReset, "connection to \(target) closed before the response ended"))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        closeError = ProxyError(.upstreamReset, "connection to \(target) failed: \(error)")
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) {
        flow.read(context, downstreamWritable: delegate?.downstreamWritable ?? true)
    }

    // MARK: Exchange

    private func fail(_ error: ProxyError, context: ChannelHandlerContext) {
        reusable = false
        closeError = error
        let delegate = delegate
        self.delegate = nil
        context.close(promise: nil)
        delegate?.upstreamFailed(error)
    }

    /// The response ended: the connection returns to the pool once the request is complete too (the delegate is
    /// told last, as it may start its next exchange on this very connection).
    private func responseEnded(leftover: Int) {
        if leftover > 0 { reusable = false }
        responseDone = true
        let delegate = delegate
        finishIfComplete()
        delegate?.upstreamResponseEnded()
    }

    private func finishIfComplete() {
        guard requestDone && responseDone else { return }
        delegate = nil
        if let pool, reusable, isActive {
            pool.releaseSpliced(self)
        } else {
            context?.close(promise: nil)
        }
    }
}
