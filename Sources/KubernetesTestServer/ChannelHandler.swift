import ApusX509
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOSSL

/// Tracks open connections so ``KubernetesTestServer/shutdown()`` can close every one of them.
final class ConnectionRegistry: Sendable {
    private let channels = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])

    func add(_ channel: any Channel) { channels.withLockedValue { $0[ObjectIdentifier(channel)] = channel } }

    func remove(_ channel: any Channel) {
        _ = channels.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    func all() -> [any Channel] { channels.withLockedValue { Array($0.values) } }
}

/// One HTTP connection: reads requests, answers them through ``ServerCore``, and streams watches.
///
/// All state lives on the channel's event loop. Watch events arrive through ``ChannelWatchSink``, which hops to
/// this loop; each stream has a token so events still queued for a stream that already ended are dropped instead
/// of being written after the response's end.
final class APIChannelHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private static let maxBodyBytes = 64 << 20

    private let core: ServerCore
    private let connections: ConnectionRegistry
    private let bookmarkInterval: TimeAmount
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var bodyTooLarge = false
    private var certificateChecked = false
    private var certificateUser: String?

    private var streamCounter = 0
    /// The token of the watch stream being written, if any.
    private var activeStream: Int?
    /// The state's id for the active stream, once registered.
    private var activeWatchID: Int?
    private var activeKeepAlive = true
    private var timeoutTimer: Scheduled<Void>?
    private var bookmarkTimer: Scheduled<Void>?

    init(core: ServerCore, connections: ConnectionRegistry, bookmarkInterval: TimeAmount) {
        self.core = core
        self.connections = connections
        self.bookmarkInterval = bookmarkInterval
    }

    func channelActive(context: ChannelHandlerContext) {
        connections.add(context.channel)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let id = activeWatchID { _ = core.state.withLockedValue { $0.stopWatch(id) } }
        endStreamState()
        connections.remove(context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body = []
            bodyTooLarge = false
        case .body(var buffer):
            if body.count + buffer.readableBytes > Self.maxBodyBytes {
                bodyTooLarge = true
            } else if let bytes = buffer.readBytes(length: buffer.readableBytes) {
                body.append(contentsOf: bytes)
            }
        case .end:
            guard let head else { return }
            self.head = nil
            process(context: context, head: head)
        }
    }

    private func process(context: ChannelHandlerContext, head: HTTPRequestHead) {
        if bodyTooLarge {
            perform(context: context, ServerCore.errorResponse(.requestEntityTooLarge()), keepAlive: false)
            return
        }
        let request = APIRequest(
            method: head.method, uri: head.uri, headers: head.headers, body: body,
            certificateUser: verifiedCertificateUser(context: context))
        body = []
        let keepAlive = head.isKeepAlive
        let delay = core.state.withLockedValue { $0.responseDelay }
        if delay > .zero {
            let (seconds, attoseconds) = delay.components
            let nanoseconds = seconds * 1_000_000_000 + attoseconds / 1_000_000_000
            context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(nanoseconds)) {
                guard context.channel.isActive else { return }
                self.perform(context: context, self.core.handle(request), keepAlive: keepAlive)
            }
        } else {
            perform(context: context, core.handle(request), keepAlive: keepAlive)
        }
    }

    /// The CN of a client certificate verified by the TLS layer against the client CA, read once per connection.
    private func verifiedCertificateUser(context: ChannelHandlerContext) -> String? {
        guard !certificateChecked else { return certificateUser }
        certificateChecked = true
        guard let clientCA = core.clientCA,
            let peer = try? context.pipeline.syncOperations.nioSSL_peerCertificate(),
            let der = try? peer.toDERBytes(),
            let certificate = try? Certificate(der: der),
            certificate.isSigned(by: clientCA)
        else { return nil }
        certificateUser = certificate.subjectCommonName
        return certificateUser
    }

    private func perform(context: ChannelHandlerContext, _ outcome: APIOutcome, keepAlive: Bool) {
        switch outcome {
        case .response(let status, var headers, let body):
            headers.replaceOrAdd(name: "content-length", value: String(body.count))
            if !keepAlive { headers.replaceOrAdd(name: "connection", value: "close") }
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                promise: nil)
            context.write(
                wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))),
                promise: nil)
            let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            if !keepAlive { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
        case .watch(let request, let timeout):
            startWatch(context: context, request, timeout: timeout, keepAlive: keepAlive)
        case .deferred(let work):
            // HTTP/1.1 pipelining holds the connection's next request until this response ends.
            let loop = context.eventLoop
            let bound = NIOLoopBound((handler: self, context: context), eventLoop: loop)
            Task {
                let outcome = await work()
                loop.execute {
                    guard bound.value.context.channel.isActive else { return }
                    bound.value.handler.perform(context: bound.value.context, outcome, keepAlive: keepAlive)
                }
            }
        }
    }

    private func startWatch(context: ChannelHandlerContext, _ request: WatchRequest, timeout: Int64?, keepAlive: Bool) {
        let headers: HTTPHeaders = ["content-type": "application/json", "transfer-encoding": "chunked"]
        context.writeAndFlush(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
        streamCounter += 1
        let token = streamCounter
        activeStream = token
        activeKeepAlive = keepAlive
        let sink = ChannelWatchSink(
            eventLoop: context.eventLoop, handler: NIOLoopBound(self, eventLoop: context.eventLoop),
            context: NIOLoopBound(context, eventLoop: context.eventLoop), token: token)
        guard let id = core.state.withLockedValue({ $0.startWatch(request, sink: sink) }) else { return }
        activeWatchID = id
        let loop = context.eventLoop.assumeIsolated()
        if let timeout {
            timeoutTimer = loop.scheduleTask(in: .seconds(timeout)) {
                guard self.activeStream == token else { return }
                if self.core.state.withLockedValue({ $0.stopWatch(id) }) {
                    self.finishStream(token: token, context: context)
                }
            }
        }
        if request.allowBookmarks { scheduleBookmark(id: id, token: token, context: context) }
    }

    private func scheduleBookmark(id: Int, token: Int, context: ChannelHandlerContext) {
        bookmarkTimer = context.eventLoop.assumeIsolated().scheduleTask(in: bookmarkInterval) {
            guard self.activeStream == token else { return }
            self.core.state.withLockedValue { $0.sendBookmark(id) }
            self.scheduleBookmark(id: id, token: token, context: context)
        }
    }

    fileprivate func writeStreamLine(token: Int, _ line: [UInt8], context: ChannelHandlerContext) {
        guard activeStream == token else { return }
        context.writeAndFlush(
            wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: line)))),
            promise: nil)
    }

    fileprivate func finishStream(token: Int, context: ChannelHandlerContext) {
        guard activeStream == token else { return }
        let keepAlive = activeKeepAlive
        endStreamState()
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
    }

    fileprivate func abortStream(token: Int, context: ChannelHandlerContext) {
        guard activeStream == token else { return }
        endStreamState()
        context.close(promise: nil)
    }

    private func endStreamState() {
        activeStream = nil
        activeWatchID = nil
        timeoutTimer?.cancel()
        bookmarkTimer?.cancel()
        timeoutTimer = nil
        bookmarkTimer = nil
    }
}

/// The state's handle on one watch stream; every call hops to the stream's event loop.
private struct ChannelWatchSink: WatchSink {
    let eventLoop: any EventLoop
    let handler: NIOLoopBound<APIChannelHandler>
    let context: NIOLoopBound<ChannelHandlerContext>
    let token: Int

    func send(_ line: [UInt8]) {
        eventLoop.execute {
            handler.value.writeStreamLine(token: token, line, context: context.value)
        }
    }

    func finish() {
        eventLoop.execute { handler.value.finishStream(token: token, context: context.value) }
    }

    func abort() {
        eventLoop.execute { handler.value.abortStream(token: token, context: context.value) }
    }
}
