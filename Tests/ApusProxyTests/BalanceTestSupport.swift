import ApusController
import ApusCore
import ApusDestinationClient
import ApusProxy
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// An HTTP/1.1 application whose latency and status a test changes while it runs; answers with `x-backend:
/// <name>` and counts the requests it received.
final class ControlledBackend: Sendable {
    let name: String
    let channel: Channel
    private let behaviour: NIOLockedValueBox<(delay: TimeAmount, status: Int)>
    private let received: NIOLockedValueBox<Int>

    var port: Int { channel.localAddress?.port ?? 0 }
    var endpoint: Endpoint { Endpoint(address: "127.0.0.1", port: port) }
    var requests: Int { received.withLockedValue { $0 } }

    private init(
        name: String, channel: Channel, behaviour: NIOLockedValueBox<(delay: TimeAmount, status: Int)>,
        received: NIOLockedValueBox<Int>
    ) {
        self.name = name
        self.channel = channel
        self.behaviour = behaviour
        self.received = received
    }

    static func start(_ name: String, delay: TimeAmount = .zero, status: Int = 200) async throws -> ControlledBackend {
        let behaviour = NIOLockedValueBox((delay: delay, status: status))
        let received = NIOLockedValueBox(0)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.configureHTTPServerPipeline()
                    try sync.addHandler(
                        ControlledBackendHandler(name: name, behaviour: behaviour, received: received))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return ControlledBackend(name: name, channel: channel, behaviour: behaviour, received: received)
    }

    func set(delay: TimeAmount? = nil, status: Int? = nil) {
        behaviour.withLockedValue { behaviour in
            if let delay { behaviour.delay = delay }
            if let status { behaviour.status = status }
        }
    }

    func stop() async {
        try? await channel.close()
    }
}

private final class ControlledBackendHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let name: String
    let behaviour: NIOLockedValueBox<(delay: TimeAmount, status: Int)>
    let received: NIOLockedValueBox<Int>

    init(name: String, behaviour: NIOLockedValueBox<(delay: TimeAmount, status: Int)>, received: NIOLockedValueBox<Int>)
    {
        self.name = name
        self.behaviour = behaviour
        self.received = received
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        received.withLockedValue { $0 += 1 }
        let (delay, status) = behaviour.withLockedValue { ($0.delay, $0.status) }
        let respond = { [name] in
            var headers = HTTPHeaders()
            headers.add(name: "x-backend", value: name)
            headers.add(name: "content-length", value: "0")
            let head = HTTPResponseHead(
                version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers)
            context.write(self.wrapOutboundOut(.head(head)), promise: nil)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        }
        if delay == .zero {
            respond()
        } else {
            context.eventLoop.assumeIsolated().scheduleTask(in: delay) { respond() }
        }
    }
}

/// One keep-alive HTTP/1.1 client connection to the proxy's outbound port, sending one request at a time.
final class ProxyClientConnection: Sendable {
    struct Response: Sendable {
        var status: Int
        var backend: String?
        var proxyError: String?
    }

    let channel: Channel

    private init(channel: Channel) {
        self.channel = channel
    }

    static func connect(port: Int) async throws -> ProxyClientConnection {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(ResponseCollector())
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return ProxyClientConnection(channel: channel)
    }

    func get(host: String, path: String = "/") async throws -> Response {
        try await channel.eventLoop.flatSubmit { [channel] in
            let promise = channel.eventLoop.makePromise(of: Response.self)
            do {
                let collector = try channel.pipeline.syncOperations.handler(type: ResponseCollector.self)
                collector.pending = promise
            } catch {
                promise.fail(error)
                return promise.futureResult
            }
            var headers = HTTPHeaders()
            headers.add(name: "host", value: host)
            let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            return promise.futureResult
        }.get()
    }

    func close() async {
        try? await channel.close()
    }
}

private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    struct ConnectionClosed: Error {}

    var pending: EventLoopPromise<ProxyClientConnection.Response>?
    private var response = ProxyClientConnection.Response(status: 0)

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            response = .init(
                status: Int(head.status.code), backend: head.headers.first(name: "x-backend"),
                proxyError: head.headers.first(name: ProxyHeaders.proxyError))
        case .body:
            break
        case .end:
            let promise = pending
            pending = nil
            promise?.succeed(response)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        pending?.fail(ConnectionClosed())
        pending = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        pending?.fail(error)
        pending = nil
        context.close(promise: nil)
    }
}

/// Sends `total` requests for `host` through the proxy over `concurrency` connections; returns the responses in
/// completion order.
func sendRequests(
    port: Int, host: String, total: Int, concurrency: Int
) async throws -> [ProxyClientConnection.Response] {
    let next = NIOLockedValueBox(0)
    return try await withThrowingTaskGroup(of: [ProxyClientConnection.Response].self) { group in
        for _ in 0..<concurrency {
            group.addTask {
                let connection = try await ProxyClientConnection.connect(port: port)
                var responses: [ProxyClientConnection.Response] = []
                while next.withLockedValue({ count -> Bool in
                    guard count < total else { return false }
                    count += 1
                    return true
                }) {
                    responses.append(try await connection.get(host: host))
                }
                await connection.close()
                return responses
            }
        }
        var all: [ProxyClientConnection.Response] = []
        for try await part in group { all += part }
        return all
    }
}

/// Counts responses per `x-backend`.
func histogram(_ responses: [ProxyClientConnection.Response]) -> [String: Int] {
    responses.reduce(into: [:]) { $0[$1.backend ?? "status \($1.status)", default: 0] += 1 }
}

/// A proxy on free ports that discovers through `resolver` (a real destination server) instead of its
/// configuration.
func startProxy(resolver: DestinationResolver) async throws -> RunningProxy {
    var configuration = ProxyConfiguration()
    configuration.outboundListen = ListenAddress(host: "127.0.0.1", port: 0)
    configuration.inboundListen = ListenAddress(host: "127.0.0.1", port: 0)
    configuration.adminListen = ListenAddress(host: "127.0.0.1", port: 0)
    configuration.shutdownGracePeriod = .seconds(2)
    let server = try ProxyServer(configuration: configuration, resolver: resolver)
    let task = Task { try await server.run() }
    let ports = try await server.waitUntilListening()
    return RunningProxy(server: server, task: task, ports: ports)
}
