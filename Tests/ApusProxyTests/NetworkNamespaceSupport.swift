import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// Why a network namespace test bed could not be set up: the command, its exit status and what it printed.
struct TestbedError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// Host tools the namespace tests drive, found on `PATH` or in the sbin folders root's `PATH` usually has.
enum HostTools {
    static let searchPath: String = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path + ":/usr/local/sbin:/usr/sbin:/sbin"
    }()

    /// The absolute path of `name`, nil when it is not installed.
    static func find(_ name: String) -> String? {
        for folder in searchPath.split(separator: ":") {
            let candidate = "\(folder)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs `tool` (found with ``find(_:)``) with `arguments`; throws with its output when it fails.
    @discardableResult
    static func run(_ tool: String, _ arguments: [String]) throws -> String {
        guard let path = find(tool) else { throw TestbedError(message: "\(tool) is not installed") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = searchPath
        process.environment = environment
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestbedError(
                message: "`\(tool) \(arguments.joined(separator: " "))` exited \(process.terminationStatus): \(text)")
        }
        return text
    }
}

/// Runs code with the calling thread inside a named network namespace (`/var/run/netns/<name>`, as `ip netns`
/// makes them), so sockets created there belong to that namespace for their whole life and can then be handed
/// to NIO (whose own threads stay in the test's namespace).
///
/// `setns(2)` switches one thread only, so each call runs on a thread of its own that exits afterwards: no other
/// code ever runs on a thread that is in the wrong namespace, even when switching back fails.
enum NamespaceThread {
    private typealias SetNS = @convention(c) (CInt, CInt) -> CInt
    /// `CLONE_NEWNET` (`sched.h`; Glibc's Swift module does not export it, nor `setns`).
    private static let cloneNewNet: CInt = 0x4000_0000

    static func run<T: Sendable>(in namespace: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                continuation.resume(with: Result { try enterAndRun(namespace, body) })
            }
            thread.start()
        }
    }

    private static func enterAndRun<T>(_ namespace: String, _ body: () throws -> T) throws -> T {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setns") else {
            throw TestbedError(message: "the C library has no setns")
        }
        let setns = unsafeBitCast(symbol, to: SetNS.self)
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard original >= 0 else { throw TestbedError(message: "cannot open this thread's namespace: \(errno)") }
        defer { close(original) }
        let target = open("/var/run/netns/\(namespace)", O_RDONLY | O_CLOEXEC)
        guard target >= 0 else { throw TestbedError(message: "no network namespace \(namespace): errno \(errno)") }
        defer { close(target) }
        guard setns(target, cloneNewNet) == 0 else {
            throw TestbedError(message: "setns into \(namespace) failed: errno \(errno)")
        }
        defer { _ = setns(original, cloneNewNet) }
        return try body()
    }
}

/// Plain BSD sockets for the namespace tests: made on a ``NamespaceThread`` so they live in that namespace.
enum NamespaceSocket {
    static func address(_ host: String, _ port: Int) throws -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            throw TestbedError(message: "\(host) is not an IPv4 address")
        }
        return address
    }

    /// A listening TCP socket on `host:port`, ready for `ServerBootstrap.withBoundSocket`.
    static func listen(host: String, port: Int) throws -> CInt {
        let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestbedError(message: "socket: errno \(errno)") }
        var one: CInt = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        var address = try address(host, port)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, Glibc.listen(fd, 128) == 0 else {
            let code = errno
            close(fd)
            throw TestbedError(message: "listening on \(host):\(port): errno \(code)")
        }
        return fd
    }

    /// The port the kernel gave a socket bound to port 0.
    static func localPort(_ fd: CInt) -> Int {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// What a blocking client saw of one connection.
struct ClientExchange: Sendable {
    /// Bytes read before the client wrote anything (the server's banner).
    var beforeWriting: [UInt8] = []
    /// Bytes read after the client wrote its payload and half-closed.
    var afterWriting: [UInt8] = []
    /// `errno` of a failed write (EPIPE, ECONNRESET), nil when the whole payload was written.
    var writeError: CInt?
    /// The last read ended with EOF (true) rather than a reset or the read timeout.
    var endedWithEOF = false
    /// A read ran into the receive timeout.
    var timedOut = false
}

/// An application client inside a namespace: plain blocking `connect`/`read`/`write` on a ``NamespaceThread``,
/// so its connection goes through that namespace's iptables `OUTPUT` chain as an application's would.
enum BlockingClient {
    /// Connects to `host:port`; reads `expectBefore` bytes first (0: none), then writes `payload`, half-closes
    /// and reads until the peer closes. Every read gives up after `readTimeout` seconds.
    static func exchange(
        namespace: String, host: String, port: Int, expectBefore: Int, payload: [UInt8], readTimeout: Int
    ) async throws -> ClientExchange {
        try await NamespaceThread.run(in: namespace) {
            let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw TestbedError(message: "socket: errno \(errno)") }
            defer { close(fd) }
            var timeout = timeval(tv_sec: readTimeout, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = try NamespaceSocket.address(host, port)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard connected == 0 else { throw TestbedError(message: "connect \(host):\(port): errno \(errno)") }
            var result = ClientExchange()
            if expectBefore > 0 {
                result.beforeWriting = readAll(fd, limit: expectBefore, result: &result)
                guard result.beforeWriting.count == expectBefore else { return result }
            }
            var offset = 0
            while offset < payload.count {
                let written = payload[offset...].withUnsafeBytes {
                    send(fd, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL))
                }
                if written <= 0 {
                    result.writeError = errno
                    break
                }
                offset += written
            }
            shutdown(fd, CInt(SHUT_WR))
            result.afterWriting = readAll(fd, limit: Int.max, result: &result)
            return result
        }
    }

    private static func readAll(_ fd: CInt, limit: Int, result: inout ClientExchange) -> [UInt8] {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while received.count < limit {
            let wanted = min(chunk.count, limit - received.count)
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, wanted, 0) }
            if count > 0 {
                received += chunk[0..<count]
                continue
            }
            if count == 0 {
                result.endedWithEOF = true
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                result.timedOut = true
            } else if errno == EINTR {
                continue
            }
            break
        }
        return received
    }
}

/// A server-speaks-first application (an SMTP or MySQL stand-in) on a listening socket made in a namespace:
/// each connection gets ``banner`` at once, then the server reads until the client half-closes and answers with
/// ``response(to:)`` before closing. Every accepted connection and what it read is recorded.
final class BannerServer: Sendable {
    struct Accepted: Sendable {
        var received: [UInt8] = []
        /// The client's FIN arrived (half-close crossed both proxies).
        var sawEOF = false
    }

    let channel: any Channel
    let port: Int
    let banner: [UInt8]
    private let record: NIOLockedValueBox<[Accepted]>

    var accepted: [Accepted] { record.withLockedValue { $0 } }

    /// What the server writes after the client's EOF: the received bytes reversed and scrambled, so the client
    /// can tell that the server got exactly what it sent.
    static func response(to received: [UInt8]) -> [UInt8] { received.reversed().map { $0 ^ 0xA5 } }

    static func start(namespace: String, host: String, port: Int, banner: [UInt8]) async throws -> BannerServer {
        let fd = try await NamespaceThread.run(in: namespace) { try NamespaceSocket.listen(host: host, port: port) }
        let record = NIOLockedValueBox<[Accepted]>([])
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let index = record.withLockedValue {
                        $0.append(Accepted())
                        return $0.count - 1
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        BannerHandler(banner: banner, record: record, index: index))
                }
            }
            .withBoundSocket(fd).get()
        return BannerServer(channel: channel, port: port, banner: banner, record: record)
    }

    private init(channel: any Channel, port: Int, banner: [UInt8], record: NIOLockedValueBox<[Accepted]>) {
        self.channel = channel
        self.port = port
        self.banner = banner
        self.record = record
    }

    func stop() async {
        try? await channel.close()
    }
}

private final class BannerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let banner: [UInt8]
    private let record: NIOLockedValueBox<[BannerServer.Accepted]>
    private let index: Int
    private var received: [UInt8] = []

    init(banner: [UInt8], record: NIOLockedValueBox<[BannerServer.Accepted]>, index: Int) {
        self.banner = banner
        self.record = record
        self.index = index
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: banner)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += Array(unwrapInboundIn(data).readableBytesView)
        let snapshot = received
        record.withLockedValue { $0[index].received = snapshot }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? ChannelEvent, case .inputClosed = event else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        record.withLockedValue { $0[index].sawEOF = true }
        let response = BannerServer.response(to: received)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: response))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Forwards every connection accepted on a socket made in a namespace to `127.0.0.1:targetPort` in the test's
/// own namespace: how a proxy inside a test namespace reaches the identity service the test runs in-process.
final class NamespaceRelay: Sendable {
    let channel: any Channel
    let port: Int

    static func start(namespace: String, targetPort: Int) async throws -> NamespaceRelay {
        let fd = try await NamespaceThread.run(in: namespace) { try NamespaceSocket.listen(host: "127.0.0.1", port: 0) }
        let port = NamespaceSocket.localPort(fd)
        // The accepted connection is registered (and read) only once its initializer's future completes, so
        // nothing is read before the upstream connection and both handlers are in place.
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { accepted in
                ClientBootstrap(group: accepted.eventLoop)
                    .connect(host: "127.0.0.1", port: targetPort)
                    .flatMapThrowing { upstream in
                        let (first, second) = RelayHandler.pair()
                        try accepted.pipeline.syncOperations.addHandler(first)
                        try upstream.pipeline.syncOperations.addHandler(second)
                    }
            }
            .withBoundSocket(fd).get()
        return NamespaceRelay(channel: channel, port: port)
    }

    private init(channel: any Channel, port: Int) {
        self.channel = channel
        self.port = port
    }

    func stop() async {
        try? await channel.close()
    }
}

/// One side of ``NamespaceRelay``'s byte pipe (both channels share the accepted connection's event loop).
private final class RelayHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: RelayHandler?
    private var context: ChannelHandlerContext?

    static func pair() -> (RelayHandler, RelayHandler) {
        let first = RelayHandler()
        let second = RelayHandler()
        first.partner = second
        second.partner = first
        return (first, second)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        partner?.context?.writeAndFlush(data, promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        partner?.context?.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
