import NIOCore
import NIOHTTP1

/// The connection-level half of the client-facing HTTP/1 server, between NIO's codec and the
/// ``HTTPForwardHandler``. It replaces NIO's `HTTPServerPipelineHandler` and the former limits handler in one
/// pipeline hop:
///
/// - **One exchange at a time.** Requests a client pipelines behind one still being answered are held here and
///   delivered, in order, right after that response's `.end` is written. Unlike NIO's handler, reading does not
///   stop at every request end: NIO's toggles read interest twice per request (two `epoll_ctl` calls, a few µs of
///   system time per keep-alive request). Reads stop only while the held requests exceed
///   ``maximumBufferedRequests`` or ``maximumBufferedBytes`` of body, so a client pipelining without reading costs
///   at most those plus one read batch.
/// - **Malformed requests** are answered before the connection closes: 431 for a head over the size or count
///   limits, 400 for everything else — including a request with both `Content-Length` and `Transfer-Encoding` or
///   with two `Content-Length`s (llhttp refuses both), which is exactly the request-smuggling pair. No byte after
///   a malformed head is ever interpreted. A parse error behind a response in flight waits for that response.
/// - **Graceful drain.** `ChannelShouldQuiesceEvent` (proxy shutdown) and a client half-close (`inputClosed`)
///   both mean "no request after the current one": an idle connection closes at once, otherwise after the
///   response in flight (which says `Connection: close`); requests held behind it are dropped unanswered, as
///   the client may retry requests a closing connection never answered.
final class HTTP1ServerConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Pipelined requests held before reading pauses.
    static let maximumBufferedRequests = 8
    /// Body bytes of pipelined requests held before reading pauses.
    static let maximumBufferedBytes = 64 * 1024

    private enum Exchange {
        case idle
        /// A request head was delivered; neither its end nor its response's end has passed.
        case requestAndResponse
        /// The request ended; its response has not (later requests are held).
        case response
        /// The response ended before its request (an early answer); the rest of the request still passes.
        case request
    }

    private enum Held {
        case part(HTTPServerRequestPart)
        case parseError(HTTPParserError)
        case inputClosed
    }

    private enum Lifecycle {
        case open
        /// Quiescing or half-closed mid-request: that request may still finish, nothing after it.
        case closeAfterRequest
        /// Close once the response in flight is written.
        case closeAfterResponse
        case closed
    }

    private var exchange = Exchange.idle
    private var lifecycle = Lifecycle.open
    private var held = CircularBuffer<Held>(initialCapacity: 0)
    private var heldRequests = 0
    private var heldBytes = 0
    private var readPending = false
    /// A final response head is written and its `.end` is not: a parse error can no longer be answered with 400.
    private var responseStarted = false
    private let onParseError: (String) -> Void

    /// - Parameter onParseError: told `bad_request` or `headers_too_large` for each malformed request (metrics).
    init(onParseError: @escaping (String) -> Void) {
        self.onParseError = onParseError
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch lifecycle {
        case .closeAfterResponse, .closed:
            return
        case .open, .closeAfterRequest:
            break
        }
        if held.isEmpty && exchange != .response {
            deliver(unwrapInboundIn(data), context: context)
            return
        }
        let part = unwrapInboundIn(data)
        switch part {
        case .head: heldRequests += 1
        case .body(let body): heldBytes += body.readableBytes
        case .end: break
        }
        held.append(.part(part))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let parseError = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        if !held.isEmpty || exchange == .response {
            held.append(.parseError(parseError))
        } else {
            answer(parseError, context: context)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent:
            // Consumed here: this handler is the one that turns it into a close.
            drain(context: context)
        case ChannelEvent.inputClosed:
            if !held.isEmpty || exchange == .response {
                held.append(.inputClosed)
            } else {
                drain(context: context)
            }
            context.fireUserInboundEventTriggered(event)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Held requests die with the connection; `handlerRemoved` must not deliver them afterwards.
        dropHeld()
        lifecycle = .closed
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // Removed after a 101 (the connection becomes a byte stream): whatever was held goes on, so no event is
        // lost, and a held `read` is released.
        let remaining = held
        dropHeld()
        for event in remaining {
            switch event {
            case .part(let part): context.fireChannelRead(wrapInboundOut(part))
            case .parseError(let error): context.fireErrorCaught(error)
            case .inputClosed: context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            }
        }
        if readPending {
            readPending = false
            context.read()
        }
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head) where head.status.code >= 200 || head.status == .switchingProtocols:
            responseStarted = true
            if lifecycle != .open && head.isKeepAlive {
                head.headers.replaceOrAdd(name: "connection", value: "close")
                context.write(wrapOutboundOut(.head(head)), promise: promise)
                return
            }
            context.write(data, promise: promise)
        case .head, .body:
            context.write(data, promise: promise)
        case .end:
            responseStarted = false
            responseEnded(data, context: context, promise: promise)
        }
    }

    func read(context: ChannelHandlerContext) {
        switch lifecycle {
        case .closeAfterResponse, .closed:
            return
        case .open, .closeAfterRequest:
            break
        }
        if heldRequests >= Self.maximumBufferedRequests || heldBytes >= Self.maximumBufferedBytes {
            readPending = true
        } else {
            context.read()
        }
    }

    // MARK: Exchange

    private func deliver(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head:
            exchange = .requestAndResponse
        case .body:
            break
        case .end:
            exchange = exchange == .requestAndResponse ? .response : .idle
            if lifecycle == .closeAfterRequest {
                lifecycle = .closeAfterResponse
                dropHeld()
            }
        }
        context.fireChannelRead(wrapInboundOut(part))
        if case .end = part, exchange == .idle, lifecycle == .closeAfterResponse {
            lifecycle = .closed
            context.close(promise: nil)
        }
    }

    private func responseEnded(_ data: NIOAny, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        switch exchange {
        case .requestAndResponse: exchange = .request
        case .response: exchange = .idle
        case .idle, .request: break
        }
        // A half-close held right behind this response means it was the last one; closing only once it is written
        // (a close now would discard the response, which is not even flushed yet).
        var halfClosedAfter = false
        if case .inputClosed = held.first { halfClosedAfter = true }
        if exchange == .idle && (lifecycle == .closeAfterResponse || halfClosedAfter) {
            lifecycle = .closed
            dropHeld()
            let written = promise ?? context.eventLoop.makePromise(of: Void.self)
            context.write(data, promise: written)
            written.futureResult.assumeIsolated().whenComplete { [context] _ in context.close(promise: nil) }
            return
        }
        context.write(data, promise: promise)
        deliverHeld(context: context)
    }

    /// Delivers held events until the next request ends (its response must come first), then resumes reading if
    /// it was paused for the held requests.
    private func deliverHeld(context: ChannelHandlerContext) {
        var delivered = false
        while exchange != .response, lifecycle != .closed, let event = held.popFirst() {
            switch event {
            case .part(let part):
                switch part {
                case .head: heldRequests -= 1
                case .body(let body): heldBytes -= body.readableBytes
                case .end: break
                }
                deliver(part, context: context)
                delivered = true
            case .parseError(let error):
                answer(error, context: context)
            case .inputClosed:
                drain(context: context)
            }
        }
        if delivered { context.fireChannelReadComplete() }
        if readPending, lifecycle == .open || lifecycle == .closeAfterRequest,
            heldRequests < Self.maximumBufferedRequests, heldBytes < Self.maximumBufferedBytes
        {
            readPending = false
            context.read()
        }
    }

    /// No request after the current one: close now when idle, else after the request (if still arriving) and its
    /// response.
    private func drain(context: ChannelHandlerContext) {
        switch exchange {
        case .idle:
            lifecycle = .closed
            dropHeld()
            context.close(promise: nil)
        case .response:
            lifecycle = .closeAfterResponse
            dropHeld()
        case .requestAndResponse, .request:
            if lifecycle == .open { lifecycle = .closeAfterRequest }
        }
    }

    /// Answers a malformed request (unless a response is already under way) and closes the connection.
    private func answer(_ error: HTTPParserError, context: ChannelHandlerContext) {
        let status: HTTPResponseStatus = error == .headerOverflow ? .requestHeaderFieldsTooLarge : .badRequest
        onParseError(status == .badRequest ? "bad_request" : "headers_too_large")
        lifecycle = .closed
        dropHeld()
        if !responseStarted {
            var headers = HTTPHeaders()
            headers.add(name: "connection", value: "close")
            headers.add(name: "content-length", value: "0")
            headers.add(name: ProxyHeaders.proxyError, value: "malformed request: \(error)")
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        context.close(promise: nil)
    }

    private func dropHeld() {
        held.removeAll()
        heldRequests = 0
        heldBytes = 0
    }
}
