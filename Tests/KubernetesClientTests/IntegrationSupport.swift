import ApusCore
import Foundation
import KubernetesClient
import KubernetesTestServer
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

/// The client-against-server integration tests. They run one at a time: several of them reason about timing
/// (lease expiry, reconnect backoff) and the churn test saturates the CPU, so running them side by side would
/// only make each slower and the timing-sensitive ones fragile.
@Suite("Client ⇄ test server integration", .serialized)
enum IntegrationTests {}

// MARK: - Server and client lifecycle

/// A started ``KubernetesTestServer`` plus a client built from its kubeconfig (HTTPS, bearer token).
struct IntegrationHarness: Sendable {
    let server: KubernetesTestServer
    let client: KubernetesClient
    let namespace: String

    /// Starts a server, creates `namespace` through the API, runs `body`, then shuts client and server down
    /// (also when `body` throws). Every additional client made with ``makeClient(configuration:)`` is shut down too.
    static func run(
        options: KubernetesTestServer.Options = KubernetesTestServer.Options(), namespace: String = "it",
        _ body: (IntegrationHarness) async throws -> Void
    ) async throws {
        let server = try await KubernetesTestServer.start(options)
        let extraClients = ClientRegistry()
        let client: KubernetesClient
        do {
            let configuration = try KubeConfig(yaml: server.kubeconfig(namespace: namespace)).configuration()
            client = try KubernetesClient(configuration: configuration)
        } catch {
            try? await server.shutdown()
            throw error
        }
        let harness = IntegrationHarness(server: server, client: client, namespace: namespace, extra: extraClients)
        var failure: (any Error)?
        do {
            _ = try await client.create(Namespace(metadata: ObjectMeta(name: namespace)))
            try await body(harness)
        } catch {
            failure = error
        }
        // The server goes first: closing its connections ends open watches, so no client waits on one.
        try? await server.shutdown()
        for extra in extraClients.all() { try? await extra.shutdown() }
        try? await client.shutdown()
        if let failure { throw failure }
    }

    /// Clients made with ``makeClient(configuration:)``; its privacy keeps the memberwise initializer private.
    private let extra: ClientRegistry

    /// Another client (another token, a client certificate, a proxy in between); shut down by ``run``.
    func makeClient(configuration: ClientConfiguration) throws -> KubernetesClient {
        let client = try KubernetesClient(configuration: configuration)
        extra.add(client)
        return client
    }

    /// A client from a kubeconfig text (e.g. `server.kubeconfig(token: "bad")`).
    func makeClient(kubeconfig: String) throws -> KubernetesClient {
        try makeClient(configuration: try KubeConfig(yaml: kubeconfig).configuration())
    }

    /// A client that reaches the server through `proxy` (same CA, token and namespace).
    func makeClient(through proxy: TCPProxy) throws -> KubernetesClient {
        var configuration = client.configuration
        guard var components = URLComponents(url: configuration.server, resolvingAgainstBaseURL: false) else {
            throw IntegrationFailure("server URL \(configuration.server) has no components")
        }
        components.port = proxy.port
        guard let url = components.url else { throw IntegrationFailure("cannot point \(components) at the proxy") }
        configuration.server = url
        return try makeClient(configuration: configuration)
    }
}

private final class ClientRegistry: Sendable {
    private let clients = NIOLockedValueBox<[KubernetesClient]>([])
    func add(_ client: KubernetesClient) { clients.withLockedValue { $0.append(client) } }
    func all() -> [KubernetesClient] { clients.withLockedValue { $0 } }
}

struct IntegrationFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Waiting for conditions

/// Polls `condition` until it holds; fails the test (by throwing) with `what` when `timeout` passes first.
///
/// The timeout is a hang guard, not an expectation about speed: conditions normally hold within milliseconds.
func eventually(
    _ what: @autoclosure () -> String, timeout: Duration = .seconds(20), pollEvery: Duration = .milliseconds(10),
    _ condition: () async throws -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while true {
        if try await condition() { return }
        guard clock.now < deadline else {
            throw IntegrationFailure("timed out after \(timeout) waiting for: \(what())")
        }
        try await Task.sleep(for: pollEvery)
    }
}

/// A thread-safe, append-only log that tests read snapshots of.
final class EventLog<Element: Sendable>: Sendable {
    private let elements = NIOLockedValueBox<[Element]>([])

    func append(_ element: Element) { elements.withLockedValue { $0.append(element) } }
    var all: [Element] { elements.withLockedValue { $0 } }
    var count: Int { elements.withLockedValue { $0.count } }
}

/// A small thread-safe value for flags and counters shared with handlers.
final class Shared<Value: Sendable>: Sendable {
    private let box: NIOLockedValueBox<Value>
    init(_ value: Value) { box = NIOLockedValueBox(value) }
    var value: Value { box.withLockedValue { $0 } }
    func set(_ value: Value) { box.withLockedValue { $0 = value } }
    @discardableResult
    func update<T: Sendable>(_ body: @Sendable (inout Value) -> T) -> T { box.withLockedValue { body(&$0) } }
}

// MARK: - Deterministic randomness

/// SplitMix64: a seeded generator, so a failing churn run can be replayed from the printed seed.
struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: - A TCP proxy that can partition the network

/// Forwards TCP connections to a target port on 127.0.0.1 and can cut them: ``cut()`` closes every forwarded
/// connection and refuses new ones until ``restore()``. TLS passes through untouched (the server certificate names
/// 127.0.0.1, so a client pointed at the proxy verifies it as usual).
///
/// `KubernetesTestServer.dropAllWatches()` lets a watcher reconnect at once; this keeps it disconnected for as long
/// as a test needs, so writes and compactions can happen "while the watcher is away" deterministically.
final class TCPProxy: Sendable {
    let port: Int
    private let serverChannel: any Channel
    private let state: NIOLockedValueBox<State>

    private struct State {
        var cut = false
        var connections: [ObjectIdentifier: any Channel] = [:]
    }

    private init(port: Int, serverChannel: any Channel, state: NIOLockedValueBox<State>) {
        self.port = port
        self.serverChannel = serverChannel
        self.state = state
    }

    static func start(forwardingTo targetPort: Int) async throws -> TCPProxy {
        let state = NIOLockedValueBox(State())
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { inbound in
                if state.withLockedValue({ $0.cut }) {
                    return inbound.eventLoop.makeFailedFuture(IntegrationFailure("proxy is cut"))
                }
                return ClientBootstrap(group: inbound.eventLoop)
                    .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                    .channelInitializer { outbound in
                        outbound.eventLoop.makeCompletedFuture {
                            try outbound.pipeline.syncOperations.addHandler(ForwardingHandler(peer: inbound))
                        }
                    }
                    .connect(host: "127.0.0.1", port: targetPort)
                    .flatMapThrowing { outbound in
                        try inbound.pipeline.syncOperations.addHandler(ForwardingHandler(peer: outbound))
                        let admitted = state.withLockedValue { state -> Bool in
                            guard !state.cut else { return false }
                            state.connections[ObjectIdentifier(inbound)] = inbound
                            state.connections[ObjectIdentifier(outbound)] = outbound
                            return true
                        }
                        guard admitted else {
                            outbound.close(promise: nil)
                            throw IntegrationFailure("proxy was cut while connecting")
                        }
                        for channel in [inbound, outbound] {
                            channel.closeFuture.whenComplete { _ in
                                _ = state.withLockedValue {
                                    $0.connections.removeValue(forKey: ObjectIdentifier(channel))
                                }
                            }
                        }
                    }
            }
        let channel = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        guard let port = channel.localAddress?.port else {
            try? await channel.close()
            throw IntegrationFailure("proxy has no local port")
        }
        return TCPProxy(port: port, serverChannel: channel, state: state)
    }

    /// Closes every forwarded connection and refuses new ones until ``restore()``.
    func cut() {
        let open = state.withLockedValue { state -> [any Channel] in
            state.cut = true
            defer { state.connections.removeAll() }
            return Array(state.connections.values)
        }
        for channel in open { channel.close(promise: nil) }
    }

    func restore() { state.withLockedValue { $0.cut = false } }

    func shutdown() async {
        cut()
        try? await serverChannel.close()
    }
}

/// Writes everything read on one side of a proxied connection to the other side; closing either closes both.
private final class ForwardingHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let peer: any Channel

    init(peer: any Channel) { self.peer = peer }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        peer.writeAndFlush(unwrapInboundIn(data), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

// MARK: - A scripted plain-HTTP API server for malformed responses

/// One request the scripted server received.
struct ScriptedRequest: Sendable, Hashable {
    var method: String
    var path: String
    var query: [String: String]
    var isWatch: Bool { query["watch"] == "true" || query["watch"] == "1" }
}

/// What the scripted server answers.
enum ScriptedReply: Sendable {
    /// A complete `200 OK` JSON response.
    case json(String)
    /// A chunked `200 OK` watch response writing `chunks` verbatim (so lines can be garbage, truncated or split);
    /// `thenEnd` ends the response afterwards, otherwise it stays open until the server shuts down.
    case stream(chunks: [String], thenEnd: Bool)
}

/// A minimal HTTP/1.1 server speaking just enough of the list/watch protocol to send what the real API server
/// never would: invalid JSON lines, truncated objects, unknown event types. Raw bytes on a real socket, so the
/// client's whole HTTP and decoding stack is exercised.
final class ScriptedAPIServer: Sendable {
    let port: Int
    private let channel: any Channel
    private let received: EventLog<ScriptedRequest>

    private init(port: Int, channel: any Channel, received: EventLog<ScriptedRequest>) {
        self.port = port
        self.channel = channel
        self.received = received
    }

    var requests: [ScriptedRequest] { received.all }

    /// A client configuration for this server (plain HTTP, no credentials).
    func clientConfiguration() throws -> ClientConfiguration {
        guard let url = URL(string: "http://127.0.0.1:\(port)") else {
            throw IntegrationFailure("bad scripted server URL")
        }
        return ClientConfiguration(server: url, namespace: "default", requestTimeout: .seconds(10))
    }

    static func start(_ respond: @escaping @Sendable (ScriptedRequest) -> ScriptedReply) async throws
        -> ScriptedAPIServer
    {
        let received = EventLog<ScriptedRequest>()
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ScriptedHTTPHandler(respond: respond, received: received))
                }
            }
        let channel = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        guard let port = channel.localAddress?.port else {
            try? await channel.close()
            throw IntegrationFailure("scripted server has no local port")
        }
        return ScriptedAPIServer(port: port, channel: channel, received: received)
    }

    func shutdown() async {
        try? await channel.close()
    }
}

private final class ScriptedHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let respond: @Sendable (ScriptedRequest) -> ScriptedReply
    private let received: EventLog<ScriptedRequest>
    private var buffer: [UInt8] = []
    private var streaming = false

    init(respond: @escaping @Sendable (ScriptedRequest) -> ScriptedReply, received: EventLog<ScriptedRequest>) {
        self.respond = respond
        self.received = received
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        buffer.append(contentsOf: unwrapInboundIn(data).readableBytesView)
        while !streaming, let request = takeRequest() {
            answer(request, context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// Removes one complete request (head plus `Content-Length` body) from the buffer.
    private func takeRequest() -> ScriptedRequest? {
        let terminator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let end = buffer.indices.dropLast(3).first(where: { Array(buffer[$0..<($0 + 4)]) == terminator })
        else { return nil }
        let head = String(decoding: buffer[..<end], as: UTF8.self)
        let lines = head.components(separatedBy: "\r\n")
        var bodyLength = 0
        for line in lines.dropFirst() {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "content-length" {
                bodyLength = Int(parts[1].trimmingCharacters(in: .whitespaces)) ?? 0
            }
        }
        guard buffer.count >= end + 4 + bodyLength else { return nil }
        buffer.removeFirst(end + 4 + bodyLength)
        let requestLine = lines.first?.split(separator: " ") ?? []
        let target = requestLine.count > 1 ? String(requestLine[1]) : "/"
        let components = URLComponents(string: target)
        var query: [String: String] = [:]
        for item in components?.queryItems ?? [] { query[item.name] = item.value ?? "" }
        return ScriptedRequest(
            method: requestLine.first.map(String.init) ?? "", path: components?.path ?? target, query: query)
    }

    private func answer(_ request: ScriptedRequest, context: ChannelHandlerContext) {
        received.append(request)
        switch respond(request) {
        case .json(let body):
            let bytes = Array(body.utf8)
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: \(bytes.count)\r\n\r\n"
            write(Array(head.utf8) + bytes, context: context)
        case .stream(let chunks, let thenEnd):
            streaming = true
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n"
                + "connection: close\r\n\r\n"
            write(Array(head.utf8), context: context)
            for chunk in chunks where !chunk.isEmpty {
                let bytes = Array(chunk.utf8)
                write(
                    Array("\(String(bytes.count, radix: 16))\r\n".utf8) + bytes + Array("\r\n".utf8), context: context)
            }
            if thenEnd {
                let done = context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: "0\r\n\r\n")))
                done.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            }
        }
    }

    private func write(_ bytes: [UInt8], context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
    }
}
