import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A listening socket that remembers its open connections, so the small servers beside the data path (admin, tap)
/// can stop *everything* they accepted — a scrape or a tap stream left open would otherwise keep the process alive
/// through shutdown.
final class TrackedListener: Sendable {
    /// Why binding did not leave a listener behind.
    enum Failure: Error {
        case bindFailed(String)
        case stopped
    }

    private let state = NIOLockedValueBox(State())

    private struct State {
        var listener: (any Channel)?
        var connections: [ObjectIdentifier: any Channel] = [:]
        var stopped = false
    }

    /// The bound address, once ``bind(_:group:configure:)`` returned.
    var localAddress: SocketAddress? { state.withLockedValue { $0.listener?.localAddress } }

    /// Binds `address`; every accepted connection is tracked, then handed to `configure` to build its pipeline.
    func bind(
        _ address: ListenAddress, group: any EventLoopGroup,
        configure: @escaping @Sendable (any Channel) throws -> Void
    ) async throws(Failure) -> SocketAddress {
        let state = self.state
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let id = ObjectIdentifier(channel)
                        let accepted = state.withLockedValue { state -> Bool in
                            guard !state.stopped else { return false }
                            state.connections[id] = channel
                            return true
                        }
                        guard accepted else { throw Failure.stopped }
                        channel.closeFuture.whenComplete { _ in
                            _ = state.withLockedValue { $0.connections.removeValue(forKey: id) }
                        }
                        try configure(channel)
                    }
                }
                .bind(host: address.host, port: address.port).get()
        } catch {
            throw .bindFailed("\(error)")
        }
        let keep = state.withLockedValue { state -> Bool in
            guard !state.stopped, state.listener == nil else { return false }
            state.listener = channel
            return true
        }
        guard keep, let local = channel.localAddress else {
            try? await channel.close()
            throw .stopped
        }
        return local
    }

    /// Closes the listener and every open connection; idempotent.
    func stop() async {
        let (listener, open) = state.withLockedValue { state -> ((any Channel)?, [any Channel]) in
            state.stopped = true
            defer {
                state.listener = nil
                state.connections.removeAll()
            }
            return (state.listener, Array(state.connections.values))
        }
        try? await listener?.close()
        for connection in open { try? await connection.close() }
    }
}
