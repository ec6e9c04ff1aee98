import NIOCore
import NIOPosix

/// The kubelet's probe actions on a pod's address: an HTTP GET whose status is 200-399, or a TCP connect.
enum ReadinessCheck {
    static func tcp(
        host: String, port: Int, timeout: Duration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async -> Bool {
        do {
            let channel = try await ClientBootstrap(group: group)
                .connectTimeout(
                    .nanoseconds(
                        Int64(timeout.components.seconds) * 1_000_000_000
                            + Int64(timeout.components.attoseconds / 1_000_000_000))
                )
                .connect(host: host, port: port).get()
            try? await channel.close()
            return true
        } catch {
            return false
        }
    }

    static func http(
        host: String, port: Int, path: String, timeout: Duration,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async -> Bool {
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: Int?.self)
        let nanoseconds =
            Int64(timeout.components.seconds) * 1_000_000_000 + Int64(timeout.components.attoseconds / 1_000_000_000)
        let target = path.hasPrefix("/") ? path : "/\(path)"
        let request =
            "GET \(target) HTTP/1.1\r\nHost: \(host):\(port)\r\nUser-Agent: apus-local-probe\r\n"
            + "Connection: close\r\n\r\n"
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.nanoseconds(nanoseconds))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(StatusLineReader(promise: promise))
                }
            }
        let timeoutTask = eventLoop.scheduleTask(in: .nanoseconds(nanoseconds)) { promise.succeed(nil) }
        bootstrap.connect(host: host, port: port).whenComplete { result in
            switch result {
            case .success(let channel):
                channel.writeAndFlush(channel.allocator.buffer(string: request), promise: nil)
                promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
            case .failure:
                promise.succeed(nil)
            }
        }
        let status = (try? await promise.futureResult.get()) ?? nil
        timeoutTask.cancel()
        guard let code = status else { return false }
        return (200..<400).contains(code)
    }
}

/// Completes with the status code of the first response line (nil when the connection ends without one).
private final class StatusLineReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let promise: EventLoopPromise<Int?>
    private var received: [UInt8] = []

    init(promise: EventLoopPromise<Int?>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        received += buffer.readableBytesView
        if let end = received.firstIndex(of: UInt8(ascii: "\n")) {
            let line = String(decoding: received[..<end], as: UTF8.self)
            let parts = line.split(separator: " ")
            promise.succeed(parts.count >= 2 && parts[0].hasPrefix("HTTP/") ? Int(parts[1]) : nil)
        } else if received.count > 8192 {
            promise.succeed(nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.succeed(nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.succeed(nil)
        context.close(promise: nil)
    }
}
