import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// The admin port of `apus-controller` (Linkerd's controllers serve the same on 9990): liveness, readiness and
/// Prometheus metrics over plain HTTP/1.1, for the kubelet's probes and for scrapers.
///
/// | Request          | Answer                                                                               |
/// |------------------|--------------------------------------------------------------------------------------|
/// | `GET /live`      | 200 `ok` while the process's event loops answer at all                               |
/// | `GET /ready`     | 200 `ready`, or 503 `not ready: <reason>`, from the readiness closure                |
/// | `GET /metrics`   | 200, the registry in the Prometheus text format 0.0.4                                |
/// | other method     | 405 with `Allow: GET, HEAD` on the three paths above                                 |
/// | other path       | 404                                                                                  |
///
/// `HEAD` is answered like `GET` without a body. The query string is ignored. The port carries no secrets and no
/// write operations, so it is plain text (as Linkerd's admin ports are) and should not be exposed outside the
/// cluster network.
///
/// ```swift
/// let registry = PrometheusCollectorRegistry()
/// MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
/// let readiness = AdminReadinessGate(reason: "informer caches have not synced")
/// let admin = AdminServer(port: 9990, registry: registry, readiness: readiness.check)
/// // in the ServiceGroup next to the manager; elsewhere: await manager.waitUntilSynced(); readiness.markReady()
/// ```
///
/// `run()` serves until the service group shuts down gracefully or the task is cancelled, then closes the
/// listener and every open connection.
public final class AdminServer: ServiceLifecycle.Service, Sendable {
    public static let defaultPort = 9990

    public let host: String
    /// The requested port; 0 lets the system choose (see ``listeningAddress()``).
    public let port: Int
    private let registry: PrometheusCollectorRegistry
    private let readiness: @Sendable () -> AdminReadiness
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let state = NIOLockedValueBox(ListenState.starting(waiters: []))
    private let connections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])

    private enum ListenState {
        case starting(waiters: [CheckedContinuation<SocketAddress, any Error>])
        case listening(SocketAddress)
        case stopped(any Error)
    }

    /// - Parameters:
    ///   - readiness: asked on every `GET /ready`, on an event loop: it must return at once (read a flag, as
    ///     ``AdminReadinessGate/check()`` does), never block or wait.
    public init(
        host: String = "0.0.0.0", port: Int = AdminServer.defaultPort, registry: PrometheusCollectorRegistry,
        readiness: @escaping @Sendable () -> AdminReadiness = { .ready },
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "apus.admin")
    ) {
        self.host = host
        self.port = port
        self.registry = registry
        self.readiness = readiness
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
    }

    /// The address the server listens on, once it does (waits for ``run()`` to bind).
    /// - Throws: ``AdminServerError`` when binding failed or the server already stopped.
    public func listeningAddress() async throws -> SocketAddress {
        try await withCheckedThrowingContinuation { continuation in
            let outcome: Result<SocketAddress, any Error>? = state.withLockedValue { state in
                switch state {
                case .starting(var waiters):
                    waiters.append(continuation)
                    state = .starting(waiters: waiters)
                    return nil
                case .listening(let address): return .success(address)
                case .stopped(let error): return .failure(error)
                }
            }
            if let outcome { continuation.resume(with: outcome) }
        }
    }

    public func run() async throws {
        let channel: any Channel
        do {
            channel = try await bind()
        } catch {
            let failure = AdminServerError.bindFailed(host: host, port: port, underlying: "\(error)")
            finishStarting(.failure(failure))
            throw failure
        }
        guard let address = channel.localAddress else {
            channel.close(promise: nil)
            let failure = AdminServerError.bindFailed(host: host, port: port, underlying: "no local address")
            finishStarting(.failure(failure))
            throw failure
        }
        finishStarting(.success(address))
        logger.info("admin server listening", metadata: ["address": "\(address)"])
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                try? await channel.closeFuture.get()
            } onGracefulShutdown: {
                channel.close(promise: nil)
            }
        } onCancel: {
            channel.close(promise: nil)
        }
        channel.close(promise: nil)
        try? await channel.closeFuture.get()
        let open = connections.withLockedValue { connections in
            defer { connections.removeAll() }
            return Array(connections.values)
        }
        for connection in open { connection.close(promise: nil) }
        state.withLockedValue { $0 = .stopped(AdminServerError.stopped) }
        logger.info("admin server stopped")
    }

    private func bind() async throws -> any Channel {
        let registry = self.registry
        let readiness = self.readiness
        let connections = self.connections
        return try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let id = ObjectIdentifier(channel)
                    connections.withLockedValue { $0[id] = channel }
                    channel.closeFuture.whenComplete { _ in
                        _ = connections.withLockedValue { $0.removeValue(forKey: id) }
                    }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        AdminHTTPHandler(registry: registry, readiness: readiness))
                }
            }
            .bind(host: host, port: port).get()
    }

    private func finishStarting(_ outcome: Result<SocketAddress, any Error>) {
        let waiters = state.withLockedValue { state -> [CheckedContinuation<SocketAddress, any Error>] in
            guard case .starting(let waiters) = state else { return [] }
            switch outcome {
            case .success(let address): state = .listening(address)
            case .failure(let error): state = .stopped(error)
            }
            return waiters
        }
        for waiter in waiters { waiter.resume(with: outcome) }
    }
}

/// Why the admin server is not serving.
public enum AdminServerError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The listener could not be opened (port in use, bad host, no permission).
    case bindFailed(host: String, port: Int, underlying: String)
    /// ``AdminServer/run()`` already returned.
    case stopped

    public var description: String {
        switch self {
        case .bindFailed(let host, let port, let underlying):
            return "admin server cannot listen on \(host):\(port): \(underlying)"
        case .stopped:
            return "admin server has stopped"
        }
    }
}

/// Answers one request at a time per connection (HTTP/1.1 without pipelining overlap: NIO's server pipeline
/// holds later requests until the response to the current one is written).
final class AdminHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// The Prometheus text exposition format, as scrapers expect it.
    static let metricsContentType = "text/plain; version=0.0.4; charset=utf-8"
    static let paths: Set<String> = ["/live", "/ready", "/metrics"]

    private let registry: PrometheusCollectorRegistry
    private let readiness: @Sendable () -> AdminReadiness
    private var request: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry, readiness: @escaping @Sendable () -> AdminReadiness) {
        self.registry = registry
        self.readiness = readiness
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break  // no endpoint takes a body; it is read and discarded
        case .end:
            guard let head = request else { return }
            request = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = String(head.uri.prefix { $0 != "?" })
        var headers = HTTPHeaders()
        let status: HTTPResponseStatus
        var body: ByteBuffer
        if !Self.paths.contains(path) {
            status = .notFound
            body = ByteBuffer(string: "not found: \(path) (try /live, /ready or /metrics)\n")
        } else if head.method != .GET, head.method != .HEAD {
            status = .methodNotAllowed
            headers.add(name: "Allow", value: "GET, HEAD")
            body = ByteBuffer(string: "method \(head.method.rawValue) not allowed on \(path)\n")
        } else {
            switch path {
            case "/live":
                status = .ok
                body = ByteBuffer(string: "ok\n")
            case "/ready":
                switch readiness() {
                case .ready:
                    status = .ok
                    body = ByteBuffer(string: "ready\n")
                case .notReady(let reason):
                    status = .serviceUnavailable
                    body = ByteBuffer(string: "not ready: \(reason)\n")
                }
            default:
                status = .ok
                body = context.channel.allocator.buffer(capacity: registry.internalBufferCapacity())
                body.writeBytes(registry.emitToBuffer())
                headers.add(name: "Content-Type", value: Self.metricsContentType)
            }
        }
        if headers["Content-Type"].isEmpty {
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        }
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
            promise: nil)
        if head.method != .HEAD, body.readableBytes > 0 {
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
