import ApusProxy
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@Suite struct MeshOriginalDestinationTests {
    /// What the accepted side of a connection reported, read on its own event loop as the listeners will.
    final class Probe: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let result: EventLoopPromise<(sync: SocketAddress?, local: SocketAddress?)>

        init(result: EventLoopPromise<(sync: SocketAddress?, local: SocketAddress?)>) { self.result = result }

        func channelActive(context: ChannelHandlerContext) {
            result.succeed((OriginalDestination.of(context.channel), context.channel.localAddress))
            context.fireChannelActive()
        }
    }

    @Test("a connection that iptables did not redirect has no original destination (nil, not the listener)")
    func notRedirected() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let probes = NIOLockedValueBox<[EventLoopFuture<(sync: SocketAddress?, local: SocketAddress?)>]>([])
        let channels = NIOLockedValueBox<[any Channel]>([])
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let promise = channel.eventLoop.makePromise(of: (sync: SocketAddress?, local: SocketAddress?).self)
                    probes.withLockedValue { $0.append(promise.futureResult) }
                    channels.withLockedValue { $0.append(channel) }
                    try channel.pipeline.syncOperations.addHandler(Probe(result: promise))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(server.localAddress?.port)
        let client = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: port).get()
        try await MeshWait.until { probes.withLockedValue { $0.count } == 1 }

        let seen = try await probes.withLockedValue { $0[0] }.get()
        #expect(seen.sync == nil)
        #expect(seen.local?.port == port)
        let accepted = try #require(channels.withLockedValue { $0.first })
        // From outside the loop: the future variant gives the same answer; the synchronous one refuses to block.
        #expect(try await OriginalDestination.future(of: accepted).get() == nil)
        #expect(OriginalDestination.of(accepted) == nil)

        try await client.close()
        try await server.close()
    }
}
