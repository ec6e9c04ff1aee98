import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// The proxy's admin port (Linkerd's :4191): probes, metrics, runtime log level and the optional shutdown hook,
/// over plain HTTP/1.1.
///
/// | Request                   | Answer                                                                       |
/// |---------------------------|------------------------------------------------------------------------------|
/// | `GET /live`               | 200 `live`                                                                   |
/// | `GET /ready`              | 200 `ready`, or 503 `not ready: waiting for identity, destination config`   |
/// | `GET /metrics`            | 200, ``ProxyMetrics/render()`` as `text/plain; version=0.0.4`               |
/// | `GET /proxy-log-level`    | 200, the current log filter                                                  |
/// | `PUT /proxy-log-level`    | body `debug` or `warn,apus=debug`: 204 and applied at once; 400 if invalid   |
/// | `POST /shutdown`          | 200 and the shutdown closure runs, when enabled; 404 when not               |
/// | other method / path       | 405 with `Allow` / 404                                                       |
///
/// `HEAD` is answered like `GET` without a body. As in Linkerd, the two endpoints that change the proxy
/// (`PUT /proxy-log-level`, `POST /shutdown`) only accept callers on a loopback address (403 otherwise): the
/// admin port is reachable from the whole cluster network for probes and scrapes, but only the pod itself may
/// change the proxy. Metrics are rendered on NIO's thread pool, so a scrape never stalls the event loop that
/// may also carry the data path.
public final class AdminServer: Sendable {
    public let configuration: ProxyConfiguration
    private let routes: AdminRoutes
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let listener = TrackedListener()

    /// - Parameters:
    ///   - configuration: `adminListen` and `shutdownEndpointEnabled` are used.
    ///   - onShutdownRequest: runs (once per accepted `POST /shutdown`, after the 200 is written) on an event
    ///     loop; it should start the proxy's graceful shutdown and return.
    public init(
        configuration: ProxyConfiguration, metrics: ProxyMetrics, readiness: ProxyReadiness,
        logLevel: LogLevelController, onShutdownRequest: @escaping @Sendable () -> Void,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "apus.proxy.admin")
    ) {
        self.configuration = configuration
        self.routes = AdminRoutes(
            metrics: metrics, readiness: readiness, logLevel: logLevel,
            shutdownEnabled: configuration.shutdownEndpointEnabled, onShutdownRequest: onShutdownRequest,
            logger: logger)
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
    }

    /// Binds `adminListen` and starts serving; returns once the port is open.
    /// - Throws: ``AdminServerError/bindFailed(address:underlying:)`` when the address cannot be bound, or
    ///   ``AdminServerError/stopped`` after ``stop()``.
    @discardableResult
    public func start() async throws -> SocketAddress {
        let address = configuration.adminListen
        let routes = self.routes
        let local: SocketAddress
        do {
            local = try await listener.bind(address, group: eventLoopGroup) { channel in
                try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                try channel.pipeline.syncOperations.addHandler(AdminHTTPHandler(routes: routes))
            }
        } catch {
            switch error {
            case .bindFailed(let reason): throw AdminServerError.bindFailed(address: address, underlying: reason)
            case .stopped: throw AdminServerError.stopped
            }
        }
        logger.info("admin server listening", metadata: ["address": "\(local)"])
        return local
    }

    /// The bound address, once ``start()`` returned.
    public var localAddress: SocketAddress? { listener.localAddress }

    /// The bound port (the real one when `adminListen` asked for port 0).
    public var port: Int? { localAddress?.port }

    /// Closes the listener and every open admin connection; idempotent.
    public func stop() async { await listener.stop() }
}

/// Why the admin server is not serving.
public enum AdminServerError: Error, Sendable, Hashable, CustomStringConvertible {
    case bindFailed(address: ListenAddress, underlying: String)
    case stopped

    public var description: String {
        switch self {
        case .bindFailed(let address, let underlying):
            return "admin server cannot listen on \(address): \(underlying)"
        case .stopped:
            return "admin server has stopped"
        }
    }
}

/// What the admin endpoints do, separate from the NIO plumbing.
struct AdminRoutes: Sendable {
    let metrics: ProxyMetrics
    let readiness: ProxyReadiness
    let logLevel: LogLevelController
    let shutdownEnabled: Bool
    let onShutdownRequest: @Sendable () -> Void
    let logger: Logger

    /// A `PUT /proxy-log-level` body is a filter line; anything longer is not one.
    static let maxBodyBytes = 4096

    struct Response {
        var status: HTTPResponseStatus
        var body: String
        var contentType = "text/plain; charset=utf-8"
        var allow: String?
        /// Runs after the response was written (the shutdown hook).
        var afterWrite: (@Sendable () -> Void)?
        /// Rendered off the event loop (metrics).
        var deferredBody: (@Sendable () -> String)?
    }

    static let allowed: [String: [HTTPMethod]] = [
        "/live": [.GET, .HEAD],
        "/ready": [.GET, .HEAD],
        "/metrics": [.GET, .HEAD],
        "/proxy-log-level": [.GET, .HEAD, .PUT],
        "/shutdown": [.POST],
    ]

    func respond(method: HTTPMethod, path: String, body: String, remote: SocketAddress?) -> Response {
        if path == "/shutdown", !shutdownEnabled {
            return Response(status: .notFound, body: "shutdown endpoint is not enabled\n")
        }
        guard let methods = Self.allowed[path] else {
            return Response(status: .notFound, body: "not found: \(path)\n")
        }
        guard methods.contains(method) else {
            return Response(
                status: .methodNotAllowed, body: "method \(method.rawValue) not allowed on \(path)\n",
                allow: methods.map(\.rawValue).joined(separator: ", "))
        }
        switch (path, method) {
        case ("/live", _):
            return Response(status: .ok, body: "live\n")
        case ("/ready", _):
            let waiting = readiness.waitingFor
            if waiting.isEmpty { return Response(status: .ok, body: "ready\n") }
            return Response(
                status: .serviceUnavailable, body: "not ready: waiting for \(waiting.joined(separator: ", "))\n")
        case ("/metrics", _):
            let metrics = self.metrics
            return Response(
                status: .ok, body: "", contentType: PrometheusText.contentType, deferredBody: { metrics.render() })
        case ("/proxy-log-level", .PUT):
            guard Self.isLoopback(remote) else { return Self.forbidden(path) }
            do throws(LogFilterSyntaxError) {
                let filter = try logLevel.set(parsing: body)
                logger.info("log level changed", metadata: ["filter": "\(filter.text)"])
                return Response(status: .noContent, body: "")
            } catch {
                return Response(status: .badRequest, body: "\(error)\n")
            }
        case ("/proxy-log-level", _):
            return Response(status: .ok, body: logLevel.filter.text + "\n")
        default:  // POST /shutdown, enabled
            guard Self.isLoopback(remote) else { return Self.forbidden(path) }
            logger.notice("shutdown requested through the admin endpoint")
            return Response(status: .ok, body: "shutdown\n", afterWrite: onShutdownRequest)
        }
    }

    private static func forbidden(_ path: String) -> Response {
        Response(status: .forbidden, body: "\(path) only accepts requests from localhost\n")
    }

    /// 127.0.0.0/8, ::1 and IPv4-mapped loopback (`::ffff:127.0.0.1`, how a dual-stack `[::]` listener sees an
    /// IPv4 loopback caller).
    static func isLoopback(_ address: SocketAddress?) -> Bool {
        switch address {
        case .v4(let v4):
            return UInt32(bigEndian: v4.address.sin_addr.s_addr) >> 24 == 127
        case .v6:
            guard let ip = address?.ipAddress?.lowercased() else { return false }
            if ip == "::1" { return true }
            if ip.hasPrefix("::ffff:") { return ip.dropFirst("::ffff:".count).hasPrefix("127.") }
            return false
        case .unixDomainSocket:
            return true
        case .none:
            return false
        }
    }
}

/// One request at a time per connection: NIO's server pipeline holds pipelined requests until the response to the
/// current one has been written.
final class AdminHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let routes: AdminRoutes
    private var request: HTTPRequestHead?
    private var body: ByteBuffer?
    private var bodyTooLarge = false

    init(routes: AdminRoutes) {
        self.routes = routes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
            body = nil
            bodyTooLarge = false
        case .body(var chunk):
            guard !bodyTooLarge else { return }
            if (body?.readableBytes ?? 0) + chunk.readableBytes > AdminRoutes.maxBodyBytes {
                bodyTooLarge = true
                body = nil
            } else if body == nil {
                body = chunk
            } else {
                body!.writeBuffer(&chunk)
            }
        case .end:
            guard let head = request else { return }
            request = nil
            if bodyTooLarge {
                write(
                    AdminRoutes.Response(
                        status: .payloadTooLarge, body: "request body over \(AdminRoutes.maxBodyBytes) bytes\n"),
                    body: nil, head: head, keepAlive: false, context: context)
                return
            }
            let text = body.map { String(buffer: $0) } ?? ""
            body = nil
            let path = String(head.uri.prefix { $0 != "?" })
            let response = routes.respond(
                method: head.method, path: path, body: text, remote: context.channel.remoteAddress)
            guard let render = response.deferredBody else {
                write(response, body: nil, head: head, keepAlive: head.isKeepAlive, context: context)
                return
            }
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) { render() }.whenComplete { result in
                let (handler, context) = loopBound.value
                switch result {
                case .success(let text):
                    handler.write(response, body: text, head: head, keepAlive: head.isKeepAlive, context: context)
                case .failure:
                    handler.write(
                        AdminRoutes.Response(status: .serviceUnavailable, body: "metrics unavailable\n"),
                        body: nil, head: head, keepAlive: false, context: context)
                }
            }
        }
    }

    private func write(
        _ response: AdminRoutes.Response, body override: String?, head: HTTPRequestHead, keepAlive: Bool,
        context: ChannelHandlerContext
    ) {
        let text = override ?? response.body
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        if let allow = response.allow { headers.add(name: "Allow", value: allow) }
        if response.status != .noContent { headers.add(name: "Content-Length", value: String(text.utf8.count)) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: response.status, headers: headers))),
            promise: nil)
        if head.method != .HEAD, !text.isEmpty, response.status != .noContent {
            var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
            buffer.writeString(text)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let channel = context.channel
        let afterWrite = response.afterWrite
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
            afterWrite?()
        }
    }
}
