import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

/// A TCP server on 127.0.0.1 (free port) whose accepted connections each get a new handler from `makeHandler`;
/// `http` puts NIO's HTTP/1 server pipeline in front of it.
final class HardeningServer: Sendable {
    let channel: any Channel
    var port: Int { channel.localAddress?.port ?? 0 }

    private init(channel: any Channel) {
        self.channel = channel
    }

    static func start(http: Bool, _ makeHandler: @escaping @Sendable () -> any ChannelHandler) async throws
        -> HardeningServer
    {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if http { try channel.pipeline.syncOperations.configureHTTPServerPipeline() }
                    try channel.pipeline.syncOperations.addHandler(makeHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return HardeningServer(channel: channel)
    }

    func stop() async {
        try? await channel.close()
    }
}

/// Echoes raw bytes (an opaque TCP application).
final class TCPEchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
}

/// An HTTP/1.1 application that answers the first request of each connection (`200`, body `ok`, keep-alive) and
/// closes the connection when a second request arrives on it, without answering: what a pooled keep-alive
/// connection looks like when the server's idle timeout closed it just as the proxy reused it.
final class ClosesReusedConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let connections: NIOLockedValueBox<Int>
    private var answered = false
    private var pending = ""

    init(connections: NIOLockedValueBox<Int>) {
        self.connections = connections
    }

    func channelActive(context: ChannelHandlerContext) {
        connections.withLockedValue { $0 += 1 }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        pending += String(buffer: unwrapInboundIn(data))
        guard pending.contains("\r\n\r\n") else { return }
        pending = ""
        if answered {
            context.close(promise: nil)
            return
        }
        answered = true
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: response)), promise: nil)
    }
}

/// Sends `100 Continue` when asked to, then answers with how many body bytes arrived.
final class ContinueHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private var received = 0

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            received = 0
            if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
                let interim = HTTPResponseHead(version: .http1_1, status: .continue)
                context.writeAndFlush(wrapOutboundOut(.head(interim)), promise: nil)
            }
        case .body(let body):
            received += body.readableBytes
        case .end:
            let text = "received=\(received)"
            var headers = HTTPHeaders()
            headers.add(name: "content-length", value: String(text.utf8.count))
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))),
                promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: text)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}

/// Answers every request with `slow` after `delay` (an in-flight request during a drain).
final class SlowHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let delay: TimeAmount

    init(delay: TimeAmount) {
        self.delay = delay
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: delay) {
            let context = bound.value
            var headers = HTTPHeaders()
            headers.add(name: "content-length", value: "4")
            context.write(
                NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))),
                promise: nil)
            context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: "slow")))), promise: nil)
            context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: nil)
        }
    }
}

/// Answers the first request with a `total`-byte body, written only as fast as its socket drains; `sent` counts
/// the bytes the kernel accepted.
final class FloodHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let total: Int
    private let sent: NIOLockedValueBox<Int>
    private var queued = 0
    private var started = false
    private let chunk = ByteBuffer(repeating: UInt8(ascii: "a"), count: 64 * 1024)

    init(total: Int, sent: NIOLockedValueBox<Int>) {
        self.total = total
        self.sent = sent
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !started else { return }
        started = true
        let head = "HTTP/1.1 200 OK\r\nContent-Length: \(total)\r\n\r\n"
        context.write(wrapOutboundOut(ByteBuffer(string: head)), promise: nil)
        pump(context: context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if started { pump(context: context) }
        context.fireChannelWritabilityChanged()
    }

    private func pump(context: ChannelHandlerContext) {
        while context.channel.isWritable && queued < total {
            let count = min(chunk.readableBytes, total - queued)
            queued += count
            let promise = context.eventLoop.makePromise(of: Void.self)
            promise.futureResult.whenSuccess { [sent] in sent.withLockedValue { $0 += count } }
            context.write(
                wrapOutboundOut(chunk.getSlice(at: chunk.readerIndex, length: count) ?? chunk), promise: promise)
        }
        context.flush()
    }
}

/// A plain TCP connection for tests that speak bytes (opaque protocols, raw HTTP/1).
struct RawConnection {
    let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>

    static func connect(port: Int) async throws -> RawConnection {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return RawConnection(channel: channel)
    }

    /// Writes `bytes`, then reads until `until` holds for everything received or the peer closes.
    func exchange(_ bytes: [UInt8], until: ([UInt8]) -> Bool) async throws -> [UInt8] {
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(bytes: bytes))
            var received: [UInt8] = []
            for try await buffer in inbound {
                received += Array(buffer.readableBytesView)
                if until(received) { break }
            }
            return received
        }
    }
}

/// Whether a TCP connection to `port` on 127.0.0.1 is accepted now.
func acceptsConnections(port: Int) async -> Bool {
    do {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(1))
            .connect(host: "127.0.0.1", port: port).get()
        try? await channel.close()
        return true
    } catch {
        return false
    }
}

/// The path of an executable built next to the test bundle (`.build/<config>/<name>`).
func builtExecutable(_ name: String) -> String {
    URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name).path
}

/// Runs `path` with `arguments`; returns the exit status and standard error.
func runProcess(_ path: String, _ arguments: [String]) throws -> (status: Int32, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let errors = Pipe()
    process.standardError = errors
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    let text = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: text, as: UTF8.self))
}
