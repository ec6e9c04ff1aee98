import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// One HTTP request as the demo services see it: the whole body is read first (bodies here are small JSON).
struct DemoRequest: Sendable {
    var method: HTTPMethod
    /// The request target as sent: origin-form (`/books/1?x=y`), or absolute-form when a client treats us as a
    /// proxy; `path` is normalized to the path alone either way.
    var uri: String
    var path: String
    var headers: HTTPHeaders
    var body: ByteBuffer

    init(method: HTTPMethod, uri: String, headers: HTTPHeaders, body: ByteBuffer) {
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body
        self.path = Self.path(of: uri)
    }

    /// The path segments after the leading slash: `/books/7` is `["books", "7"]`.
    var segments: [Substring] { path.split(separator: "/", omittingEmptySubsequences: true) }

    private static func path(of uri: String) -> String {
        var target = Substring(uri)
        if let scheme = target.range(of: "://") {
            let afterScheme = target[scheme.upperBound...]
            target = afterScheme.firstIndex(of: "/").map { afterScheme[$0...] } ?? "/"
        }
        if let query = target.firstIndex(where: { $0 == "?" || $0 == "#" }) { target = target[..<query] }
        return target.isEmpty ? "/" : String(target)
    }
}

/// A complete response; the server adds `content-length`, `x-served-by` and the connection header.
struct DemoResponse: Sendable {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: String

    init(status: HTTPResponseStatus = .ok, contentType: String, body: String) {
        self.status = status
        self.headers = ["content-type": contentType]
        self.body = body
    }

    static func text(_ body: String, status: HTTPResponseStatus = .ok) -> DemoResponse {
        DemoResponse(status: status, contentType: "text/plain; charset=utf-8", body: body)
    }

    static func html(_ body: String, status: HTTPResponseStatus = .ok) -> DemoResponse {
        DemoResponse(status: status, contentType: "text/html; charset=utf-8", body: body)
    }

    /// `value` as pretty, key-sorted JSON (stable output makes the demo's responses easy to diff and test).
    static func json(_ value: some Encodable, status: HTTPResponseStatus = .ok) -> DemoResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            let data = try encoder.encode(value)
            return DemoResponse(
                status: status, contentType: "application/json", body: String(decoding: data, as: UTF8.self) + "\n")
        } catch {
            return .error("cannot encode the response: \(error)", status: .internalServerError)
        }
    }

    /// A JSON error body `{"error": reason}`, so callers (and people reading curl output) see why.
    static func error(_ reason: String, status: HTTPResponseStatus) -> DemoResponse {
        json(["error": reason], status: status)
    }
}

/// The application part of a demo service; everything else (probes, `/whoami`, fault injection, logging) is the
/// server's, so every subcommand behaves the same way under the mesh.
typealias DemoResponder = @Sendable (DemoRequest) async -> DemoResponse

/// An HTTP/1.1 server on NIO for the demo services.
///
/// Answers `GET /healthz` and `GET /whoami` itself (never delayed or failed, so probes and tests see the mesh, not
/// the injected faults), applies ``FaultInjection`` to everything else, then calls the responder.
final class DemoServer: Sendable {
    /// Request bodies above this are refused with 413: the demo's bodies are a few hundred bytes.
    static let maximumBodyBytes = 1 << 20

    let channel: any Channel
    let address: String
    let port: Int

    private init(channel: any Channel, host: String, port: Int) {
        self.channel = channel
        self.address = host
        self.port = port
    }

    /// Binds `host:port` (port 0 picks a free one; the log line `listening on host:port` names it).
    static func start(
        host: String, port: Int, identity: ServerIdentity, faults: FaultInjection, logger: Logger,
        responder: @escaping DemoResponder
    ) async throws -> DemoServer {
        let context = HandlerContext(identity: identity, faults: faults, logger: logger, responder: responder)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: true)
                    try channel.pipeline.syncOperations.addHandler(DemoHTTPHandler(context: context))
                }
            }
            .bind(host: host, port: port)
            .get()
        let boundPort = channel.localAddress?.port ?? port
        logger.info("\(identity.service) listening on \(host):\(boundPort) as \(identity.podName) (\(faults))")
        return DemoServer(channel: channel, host: host, port: boundPort)
    }

    /// Returns when the listening socket closes.
    func wait() async throws {
        try await channel.closeFuture.get()
    }
}

/// Who is answering: the service (subcommand) and the pod (`POD_NAME`) and address it runs as.
struct ServerIdentity: Sendable {
    var service: String
    var podName: String
    var podIP: String
}

private struct HandlerContext: Sendable {
    let identity: ServerIdentity
    let faults: FaultInjection
    let logger: Logger
    let responder: DemoResponder
}

/// `GET /whoami`: what the server received, which is what the mesh made of the caller's request.
private struct WhoAmI: Encodable {
    var service: String
    var pod: String
    var podIP: String
    var method: String
    var uri: String
    /// Header names lower-cased; repeated headers joined with ", ".
    var headers: [String: String]
}

private final class DemoHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let context: HandlerContext
    private var head: HTTPRequestHead?
    private var body = ByteBuffer()
    private var bodyTooLarge = false

    init(context: HandlerContext) {
        self.context = context
    }

    func channelRead(context channelContext: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.clear()
            bodyTooLarge = false
        case .body(var chunk):
            if body.readableBytes + chunk.readableBytes > DemoServer.maximumBodyBytes {
                bodyTooLarge = true
            } else {
                body.writeBuffer(&chunk)
            }
        case .end:
            guard let head else { return }
            self.head = nil
            respond(to: head, context: channelContext)
        }
    }

    private func respond(to head: HTTPRequestHead, context channelContext: ChannelHandlerContext) {
        let started = ContinuousClock.now
        let request = DemoRequest(method: head.method, uri: head.uri, headers: head.headers, body: body)
        let keepAlive = head.isKeepAlive
        let version = head.version
        let shared = context
        if bodyTooLarge {
            write(
                .error("request body over \(DemoServer.maximumBodyBytes) bytes", status: .payloadTooLarge),
                request: request, version: version, keepAlive: false, started: started, context: channelContext)
            return
        }
        if let local = Self.localResponse(to: request, identity: shared.identity) {
            write(
                local, request: request, version: version, keepAlive: keepAlive, started: started,
                context: channelContext)
            return
        }
        let future = channelContext.eventLoop.makeFutureWithTask {
            if let injected = await shared.faults.apply() { return injected }
            return await shared.responder(request)
        }
        future.assumeIsolated().whenSuccess { response in
            self.write(
                response, request: request, version: version, keepAlive: keepAlive, started: started,
                context: channelContext)
        }
    }

    private static func localResponse(to request: DemoRequest, identity: ServerIdentity) -> DemoResponse? {
        guard request.method == .GET || request.method == .HEAD else { return nil }
        switch request.path {
        case "/healthz":
            return .text("ok\n")
        case "/whoami":
            var headers: [String: String] = [:]
            for (name, value) in request.headers {
                let key = name.lowercased()
                headers[key] = headers[key].map { "\($0), \(value)" } ?? value
            }
            return .json(
                WhoAmI(
                    service: identity.service, pod: identity.podName, podIP: identity.podIP,
                    method: request.method.rawValue, uri: request.uri, headers: headers))
        default:
            return nil
        }
    }

    private func write(
        _ response: DemoResponse, request: DemoRequest, version: HTTPVersion, keepAlive: Bool,
        started: ContinuousClock.Instant, context channelContext: ChannelHandlerContext
    ) {
        var headers = response.headers
        let body = ByteBuffer(string: response.body)
        headers.replaceOrAdd(name: "content-length", value: String(body.readableBytes))
        headers.replaceOrAdd(name: "x-served-by", value: context.identity.podName)
        if !keepAlive { headers.replaceOrAdd(name: "connection", value: "close") }
        let head = HTTPResponseHead(version: version, status: response.status, headers: headers)
        channelContext.write(wrapOutboundOut(.head(head)), promise: nil)
        if request.method != .HEAD {
            channelContext.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let done = channelContext.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            done.assumeIsolated().whenComplete { _ in channelContext.close(promise: nil) }
        }
        let elapsed = ContinuousClock.now - started
        let milliseconds = Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000
        let caller = request.headers.first(name: "l5d-client-id").map { " from \($0)" } ?? ""
        context.logger.info(
            "\(request.method.rawValue) \(request.uri) \(response.status.code) \(String(format: "%.1f", milliseconds)) ms\(caller)"
        )
    }

    func errorCaught(context channelContext: ChannelHandlerContext, error: any Error) {
        // Malformed HTTP from a client: the HTTP decoder already answered 400 where it could; drop the connection.
        context.logger.debug("closing a connection after an error: \(error)")
        channelContext.close(promise: nil)
    }
}
