import NIOCore
import NIOHTTP1
import NIOPosix

/// The floor under apus-proxy's one hop: the same SwiftNIO HTTP/1 codecs on both sides of a keep-alive hop, one
/// event-loop thread, and nothing else — no discovery, routing, metrics, tap, header rewriting, pooling or
/// error handling. What apus-proxy costs above this row is Apus's own work; what this row costs above HAProxy is
/// the price of NIO's HTTP/1 codec and channel pipeline, which only a codec of our own would lower.
///
/// The `tcp` mode relays bytes without any HTTP codec: the cost of SwiftNIO's channels, event loop and syscalls
/// alone, i.e. the best a byte-level HTTP/1 forwarder on NIO could approach.
///
/// Runs as the benchmark's `--serve nio-floor <http|tcp> <listen port> <backend port>` child, so its CPU and
/// memory are measured like every other proxy's. Each client connection gets one upstream connection to the
/// backend, made before the client's first byte is read; parts (or reads) are passed on as they come and flushed
/// at each message's end (or read's).
enum NIOFloorProxy {
    static let serveName = "nio-floor"

    enum Mode: String {
        case http, tcp
    }

    static func run(mode: Mode, listenPort: Int, backendPort: Int) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { client in
                ClientBootstrap(group: client.eventLoop)
                    .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                    .channelInitializer { upstream in
                        upstream.eventLoop.makeCompletedFuture {
                            let pipeline = upstream.pipeline.syncOperations
                            guard mode == .http else {
                                try pipeline.addHandler(ByteRelay(peer: client))
                                return
                            }
                            try pipeline.addHandler(HTTPRequestEncoder())
                            try pipeline.addHandler(
                                ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes)))
                            try pipeline.addHandler(PartRelay<HTTPResponseHead>(peer: client))
                        }
                    }
                    .connect(host: "127.0.0.1", port: backendPort)
                    .flatMapThrowing { upstream in
                        let pipeline = client.pipeline.syncOperations
                        guard mode == .http else {
                            try pipeline.addHandler(ByteRelay(peer: upstream))
                            return
                        }
                        try pipeline.configureHTTPServerPipeline(
                            withPipeliningAssistance: false, withErrorHandling: false)
                        try pipeline.addHandler(PartRelay<HTTPRequestHead>(peer: upstream))
                    }
            }
            .bind(host: "127.0.0.1", port: listenPort).get()
        print("listening on 127.0.0.1:\(listenPort)")
        try await server.closeFuture.get()
    }
}

/// Either side of the `http` mode: each decoded part is written to the peer as the same part for its encoder
/// (request parts client → upstream, response parts upstream → client), flushed at the message's end; closing
/// either side closes the other.
private final class PartRelay<Head: Equatable & Sendable>: ChannelInboundHandler {
    typealias InboundIn = HTTPPart<Head, ByteBuffer>

    private let peer: any Channel

    init(peer: any Channel) {
        self.peer = peer
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            peer.write(HTTPPart<Head, IOData>.head(head), promise: nil)
        case .body(let body):
            peer.write(HTTPPart<Head, IOData>.body(.byteBuffer(body)), promise: nil)
        case .end(let trailers):
            peer.writeAndFlush(HTTPPart<Head, IOData>.end(trailers), promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Either side of the `tcp` mode: each read is written to the peer and flushed.
private final class ByteRelay: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let peer: any Channel

    init(peer: any Channel) {
        self.peer = peer
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        peer.writeAndFlush(unwrapInboundIn(data), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
