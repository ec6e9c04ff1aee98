import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOTLS

/// Upstream connections of one event loop, used only on that loop (no locks on the hot path).
///
/// - HTTP/1.1: a keep-alive pool per ``UpstreamTarget``; a connection is reused only after a complete response
///   with keep-alive on both sides (``UpstreamHandler``), and dropped on `Connection: close`, errors or when the
///   server closes it while idle.
/// - HTTP/2 (h2c to applications that speak it, h2 over mesh TLS to peers): one multiplexed connection per
///   target; each request is a stream through `HTTP2FramePayloadToHTTP1ClientCodec`. A GOAWAY takes the
///   connection out of the pool so new streams open a fresh connection while in-flight streams finish on the old.
final class UpstreamPool {
    typealias Completion = (Result<UpstreamHandler, ProxyError>) -> Void

    let eventLoop: EventLoop
    private let meshTLS: MeshTLS?
    /// Idle HTTP/1.1 connections kept per target; more are closed when released (bounded memory).
    private let maximumIdlePerTarget: Int
    /// Boxed per target: mutating an array inside the dictionary goes through `Dictionary`'s `_modify`
    /// coroutine, whose frame is heap-allocated — two mallocs per request on the acquire/release path.
    private var idle: [UpstreamTarget: IdleConnections<UpstreamHandler>] = [:]
    /// Idle connections of the spliced HTTP/1.1 path (``HTTP1SpliceHandler``): raw byte pipelines, not codecs.
    private var splicedIdle: [UpstreamTarget: IdleConnections<SplicedUpstreamHandler>] = [:]
    private var http2: [UpstreamTarget: HTTP2Upstream] = [:]

    init(eventLoop: EventLoop, meshTLS: MeshTLS?, maximumIdlePerTarget: Int = 128) {
        self.eventLoop = eventLoop
        self.meshTLS = meshTLS
        self.maximumIdlePerTarget = maximumIdlePerTarget
    }

    /// An upstream for one exchange to `target`; `dedicated` opens a connection of its own that never returns to
    /// the pool (Upgrade requests, which become byte streams); `fresh` skips the idle connections (the retry after
    /// a stale keep-alive connection). Completes on this loop.
    func acquire(
        _ target: UpstreamTarget, connectTimeout: TimeAmount, dedicated: Bool = false, fresh: Bool = false,
        _ completion: @escaping Completion
    ) {
        switch target.httpProtocol {
        case .http1:
            if !dedicated, !fresh {
                // An emptied list stays: dropping it would make the next `release` allocate a new one, a malloc
                // per request for a client that keeps one request in flight. `forget` prunes empty lists.
                if let handler = idle[target]?.takeActive() {
                    completion(.success(handler))
                    return
                }
            }
            let pool: UpstreamPool? = dedicated ? nil : self
            connect(target, timeout: connectTimeout, alpn: [MeshTLS.alpnHTTP1]) { result in
                completion(
                    result.flatMap { channel in
                        let handler = UpstreamHandler(target: target, pool: pool)
                        do {
                            let pipeline = channel.pipeline.syncOperations
                            try pipeline.addHandler(HTTPRequestEncoder())
                            try pipeline.addHandler(
                                ByteToMessageHandler(
                                    HTTPResponseDecoder(
                                        leftOverBytesStrategy: .forwardBytes, informationalResponseStrategy: .forward)))
                            try pipeline.addHandler(handler)
                        } catch {
                            channel.close(promise: nil)
                            return .failure(ProxyError(.connectRefused, "setting up \(target): \(error)"))
                        }
                        return .success(handler)
                    })
            }
        case .http2:
            let connection: HTTP2Upstream
            if let existing = http2[target], !existing.isDraining {
                connection = existing
            } else {
                connection = HTTP2Upstream(target: target)
                http2[target] = connection
                connect(target, timeout: connectTimeout, alpn: [MeshTLS.alpnHTTP2]) { [self] result in
                    switch result {
                    case .success(let channel):
                        do {
                            try connection.attach(channel, pool: self)
                        } catch {
                            channel.close(promise: nil)
                            forget(connection)
                            connection.fail(ProxyError(.connectRefused, "HTTP/2 to \(target): \(error)"))
                        }
                    case .failure(let error):
                        forget(connection)
                        connection.fail(error)
                    }
                }
            }
            connection.openStream(completion)
        }
    }

    /// Returns a keep-alive connection after a complete exchange.
    func release(_ handler: UpstreamHandler) {
        Self.release(handler, into: &idle, limit: maximumIdlePerTarget)
    }

    /// Drops a closed HTTP/1.1 connection from the idle list, and the list once it is empty (so a proxy that has
    /// talked to many targets keeps no entry for those without idle connections).
    func forget(_ handler: UpstreamHandler) {
        Self.forget(handler, in: &idle)
    }

    /// A spliced HTTP/1.1 connection (raw bytes, ``SplicedUpstreamHandler``) for one exchange to `target`, plain
    /// TCP only; `fresh` skips the idle ones. Completes on this loop.
    func acquireSpliced(
        _ target: UpstreamTarget, connectTimeout: TimeAmount, fresh: Bool = false,
        _ completion: @escaping (Result<SplicedUpstreamHandler, ProxyError>) -> Void
    ) {
        if !fresh, let handler = takeIdleSpliced(target) {
            completion(.success(handler))
            return
        }
        connect(target, timeout: connectTimeout, alpn: [MeshTLS.alpnHTTP1]) { [self] result in
            completion(
                result.flatMap { channel in
                    let handler = SplicedUpstreamHandler(target: target, pool: self)
                    do {
                        try channel.pipeline.syncOperations.addHandler(handler)
                    } catch {
                        channel.close(promise: nil)
                        return .failure(ProxyError(.connectRefused, "setting up \(target): \(error)"))
                    }
                    return .success(handler)
                })
        }
    }

    /// The most recently released open spliced connection to `target`, if any.
    func takeIdleSpliced(_ target: UpstreamTarget) -> SplicedUpstreamHandler? {
        splicedIdle[target]?.takeActive()
    }

    func releaseSpliced(_ handler: SplicedUpstreamHandler) {
        Self.release(handler, into: &splicedIdle, limit: maximumIdlePerTarget)
    }

    func forgetSpliced(_ handler: SplicedUpstreamHandler) {
        Self.forget(handler, in: &splicedIdle)
    }

    private static func release<Connection: PooledConnection>(
        _ connection: Connection, into idle: inout [UpstreamTarget: IdleConnections<Connection>], limit: Int
    ) {
        if let connections = idle[connection.target] {
            guard connections.connections.count < limit else {
                connection.abort()
                return
            }
            connections.connections.append(connection)
        } else if limit > 0 {
            idle[connection.target] = IdleConnections(connection)
        } else {
            connection.abort()
        }
    }

    private static func forget<Connection: PooledConnection>(
        _ connection: Connection, in idle: inout [UpstreamTarget: IdleConnections<Connection>]
    ) {
        guard let connections = idle[connection.target] else { return }
        if let index = connections.connections.firstIndex(where: { $0 === connection }) {
            connections.connections.remove(at: index)
        }
        if connections.connections.isEmpty { idle[connection.target] = nil }
    }

    /// Takes an HTTP/2 connection out of service (GOAWAY, closed, failed); its open streams continue.
    func forget(_ connection: HTTP2Upstream) {
        if let current = http2[connection.target], current === connection { http2[connection.target] = nil }
    }

    /// Closes every pooled connection (shutdown).
    func closeAll() {
        for connections in idle.values { for handler in connections.connections { handler.abort() } }
        idle.removeAll()
        for connections in splicedIdle.values { for handler in connections.connections { handler.abort() } }
        splicedIdle.removeAll()
        for connection in http2.values { connection.close() }
        http2.removeAll()
    }

    /// TCP connect (+ mesh TLS handshake when the target has an identity), on this loop.
    func connect(
        _ target: UpstreamTarget, timeout: TimeAmount, alpn: [String],
        _ completion: @escaping (Result<Channel, ProxyError>) -> Void
    ) {
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        let future: EventLoopFuture<Channel>
        if let address = try? SocketAddress(ipAddress: target.host, port: target.port) {
            future = bootstrap.connect(to: address)
        } else {
            future = bootstrap.connect(host: target.host, port: target.port)
        }
        let meshTLS = meshTLS
        future.assumeIsolated().whenComplete { result in
            switch result {
            case .failure(let error):
                completion(.failure(.connectFailure(error, target: target.address, identity: target.identity)))
            case .success(let channel):
                guard let identity = target.identity else {
                    completion(.success(channel))
                    return
                }
                do {
                    guard let meshTLS else { throw ProxyError(.tlsFailed, "mesh TLS is not configured") }
                    let tls = try meshTLS.makeClientHandler(expectedIdentity: identity, alpn: alpn)
                    let pipeline = channel.pipeline.syncOperations
                    try pipeline.addHandler(tls)
                    try pipeline.addHandler(
                        HandshakeWaiter { handshake in
                            completion(
                                handshake.map { channel }.mapError {
                                    .connectFailure($0, target: target.address, identity: identity)
                                })
                        })
                } catch let error as ProxyError {
                    channel.close(promise: nil)
                    completion(.failure(error))
                } catch {
                    channel.close(promise: nil)
                    completion(.failure(ProxyError(.tlsFailed, "mesh TLS to \(target): \(error)")))
                }
            }
        }
    }
}

/// An HTTP/1.1 upstream connection the pool keeps between exchanges.
protocol PooledConnection: AnyObject {
    var target: UpstreamTarget { get }
    var isActive: Bool { get }
    func abort()
}

extension UpstreamHandler: PooledConnection {}
extension SplicedUpstreamHandler: PooledConnection {}

/// The idle keep-alive connections to one target, most recently released last (reused first).
final class IdleConnections<Connection: PooledConnection> {
    var connections: [Connection]

    init(_ connection: Connection) {
        connections = [connection]
    }

    /// The most recently released connection that is still open; closed ones met on the way are dropped. An
    /// emptied list stays (see ``UpstreamPool/acquire(_:connectTimeout:dedicated:fresh:_:)``).
    func takeActive() -> Connection? {
        while let connection = connections.popLast() {
            if connection.isActive { return connection }
        }
        return nil
    }
}

/// Reports the end of a client TLS handshake once, then removes itself.
final class HandshakeWaiter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private var callback: ((Result<Void, Error>) -> Void)?

    init(_ callback: @escaping (Result<Void, Error>) -> Void) {
        self.callback = callback
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent, let callback {
            self.callback = nil
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            callback(.success(()))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let callback {
            self.callback = nil
            callback(.failure(error))
            context.close(promise: nil)
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let callback {
            self.callback = nil
            callback(.failure(ChannelError.ioOnClosedChannel))
        }
        context.fireChannelInactive()
    }
}

/// One multiplexed HTTP/2 connection to a target and the streams waiting for it to be ready.
final class HTTP2Upstream {
    let target: UpstreamTarget
    private(set) var isDraining = false
    private var channel: Channel?
    private var multiplexer: NIOHTTP2Handler.StreamMultiplexer?
    private var waiting: [UpstreamPool.Completion] = []
    private var failure: ProxyError?

    init(target: UpstreamTarget) {
        self.target = target
    }

    func attach(_ channel: Channel, pool: UpstreamPool) throws {
        let pipeline = channel.pipeline.syncOperations
        let multiplexer = try pipeline.configureHTTP2Pipeline(
            mode: .client, connectionConfiguration: .init(), streamConfiguration: .init(),
            inboundStreamInitializer: { stream in stream.close() })
        try pipeline.addHandler(
            HTTP2ConnectionObserver { [weak self, weak pool] in
                guard let self else { return }
                self.isDraining = true
                pool?.forget(self)
            })
        self.channel = channel
        self.multiplexer = multiplexer
        let waiting = self.waiting
        self.waiting = []
        for completion in waiting { openStream(completion) }
    }

    func fail(_ error: ProxyError) {
        failure = error
        isDraining = true
        let waiting = self.waiting
        self.waiting = []
        for completion in waiting { completion(.failure(error)) }
    }

    func close() {
        isDraining = true
        channel?.close(promise: nil)
    }

    func openStream(_ completion: @escaping UpstreamPool.Completion) {
        if let failure {
            completion(.failure(failure))
            return
        }
        guard let multiplexer, let channel else {
            waiting.append(completion)
            return
        }
        let target = target
        let promise = channel.eventLoop.makePromise(of: Channel.self)
        multiplexer.createStreamChannel(promise: promise) { stream in
            stream.eventLoop.makeCompletedFuture {
                let pipeline = stream.pipeline.syncOperations
                try pipeline.addHandler(HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http))
                try pipeline.addHandler(UpstreamHandler(target: target, pool: nil))
            }
        }
        promise.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let stream):
                if let handler = try? stream.pipeline.syncOperations.handler(type: UpstreamHandler.self) {
                    completion(.success(handler))
                } else {
                    completion(.failure(ProxyError(.upstreamReset, "HTTP/2 stream to \(target) closed at once")))
                }
            case .failure(let error):
                completion(.failure(ProxyError(.upstreamReset, "opening an HTTP/2 stream to \(target): \(error)")))
            }
        }
    }
}

/// Watches an upstream HTTP/2 connection for GOAWAY and close, so the pool stops handing it out.
final class HTTP2ConnectionObserver: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    private var onDone: (() -> Void)?

    init(onDone: @escaping () -> Void) {
        self.onDone = onDone
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .goAway = unwrapInboundIn(data).payload { done() }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        done()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        done()
        context.close(promise: nil)
    }

    private func done() {
        if let onDone {
            self.onDone = nil
            onDone()
        }
    }
}
