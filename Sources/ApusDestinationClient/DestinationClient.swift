import ApusCore
import ApusIdentity
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The proxy side of the destination protocol: watches destinations over one shared HTTP/2 connection with
/// mutual TLS.
///
/// The proxy presents its identity certificate (``DestinationClientTLS``, re-read at every connection so a
/// refreshed identity is picked up) and verifies that the server's certificate chains to the trust anchors and
/// names ``Configuration/serverIdentity`` (by default
/// `apus-destination.<control-ns>.serviceaccount.identity.<control-ns>.<trust-domain>`); the address it dials
/// plays no part in that check.
///
/// Each watch keeps its last known value while the controller is unreachable (the proxy keeps routing with
/// it) and reconnects with capped, jittered exponential backoff; after reconnecting, the new stream's first
/// frame (a snapshot) replaces the kept value, so the watch converges to the current state even if the new
/// controller is a different replica with different version numbers.
///
/// ```swift
/// let client = DestinationClient(configuration: .init(host: "apus-dst.apus.svc", port: 8086,
///                                                     tls: .identity(identityClient),
///                                                     namespace: "shop", pod: "web-0"))
/// let watch = client.watchEndpoints(authority: "api.shop.svc.cluster.local:80")
/// for await resolution in watch.updates { balancer.update(resolution) }
/// ```
public final class DestinationClient: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var tls: DestinationClientTLS
        /// The identity the server's certificate must name; also sent as SNI and `host`.
        public var serverIdentity: String
        /// The proxy's pod namespace and name (`ns`/`pod` of every request; the namespace picks client-side
        /// profiles and expands short names).
        public var namespace: String
        public var pod: String?
        public var initialBackoff: Duration
        public var maximumBackoff: Duration
        /// A stream with no frame for this long is considered dead (servers send heartbeats well within it).
        public var idleTimeout: Duration

        public init(
            host: String, port: Int, tls: DestinationClientTLS,
            serverIdentity: String = DestinationProtocol.serverIdentity().description, namespace: String,
            pod: String? = nil, initialBackoff: Duration = .milliseconds(100), maximumBackoff: Duration = .seconds(10),
            idleTimeout: Duration = .seconds(35)
        ) {
            self.host = host
            self.port = port
            self.tls = tls
            self.serverIdentity = serverIdentity
            self.namespace = namespace
            self.pod = pod
            self.initialBackoff = initialBackoff
            self.maximumBackoff = maximumBackoff
            self.idleTimeout = idleTimeout
        }
    }

    typealias StreamChannel = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
    typealias Multiplexer = NIOHTTP2Handler.AsyncStreamMultiplexer<Void>

    public let configuration: Configuration
    private let connection: SharedConnection
    private let logger: Logger

    /// Nothing is sent until a watch starts.
    public init(configuration: Configuration, logger: Logger = Logger(label: "apus.destination-client")) {
        self.configuration = configuration
        self.logger = logger
        self.connection = SharedConnection()
    }

    /// Watches the endpoints of `authority` (`host:port`, as the application addressed it).
    public func watchEndpoints(authority: String) -> DestinationWatch<Resolution> {
        let watch = DestinationWatch<Resolution>()
        let path = requestPath(DestinationProtocol.getPath, authority: authority)
        let task = Task {
            var state = EndpointStreamState()
            await self.maintain(watch: watch, path: path) { lines in
                var changed = false
                for line in lines {
                    let frame: EndpointFrame
                    do {
                        frame = try JSONDecoder().decode(EndpointFrame.self, from: line)
                    } catch {
                        throw DestinationClientError(.protocolViolation, "undecodable frame: \(error)")
                    }
                    if try state.apply(frame) { changed = true }
                }
                return changed ? state.resolution : nil
            } onNewStream: {
                state.resetVersion()
            }
        }
        watch.attach(task)
        return watch
    }

    /// Watches the route configuration of `authority`.
    public func watchProfile(authority: String) -> DestinationWatch<DestinationProfile> {
        let watch = DestinationWatch<DestinationProfile>()
        let path = requestPath(DestinationProtocol.getProfilePath, authority: authority)
        let task = Task {
            await self.maintain(watch: watch, path: path) { lines in
                var latest: DestinationProfile?
                for line in lines {
                    do {
                        if case .profile(_, let profile) = try JSONDecoder().decode(ProfileFrame.self, from: line) {
                            latest = profile
                        }
                    } catch {
                        throw DestinationClientError(.protocolViolation, "undecodable frame: \(error)")
                    }
                }
                return latest
            } onNewStream: {
            }
        }
        watch.attach(task)
        return watch
    }

    /// Closes the shared connection; watches keep their values and reconnect unless cancelled.
    public func shutdown() async {
        await connection.close()
    }

    private func requestPath(_ path: String, authority: String) -> String {
        var components = URLComponents()
        components.path = path
        components.queryItems =
            [
                URLQueryItem(name: "authority", value: authority),
                URLQueryItem(name: "ns", value: configuration.namespace),
            ] + (configuration.pod.map { [URLQueryItem(name: "pod", value: $0)] } ?? [])
        return components.string ?? path
    }

    /// Keeps one watch's stream open: connect, read, and on any failure back off and try again.
    private func maintain<Value: Sendable>(
        watch: DestinationWatch<Value>, path: String,
        handle: @escaping ([Data]) throws -> Value?, onNewStream: () -> Void
    ) async {
        var backoff = configuration.initialBackoff
        while !Task.isCancelled {
            var receivedFrames = false
            do {
                onNewStream()
                try await stream(path: path) { lines in
                    receivedFrames = true
                    watch.markConnected(true)
                    if let value = try handle(lines) { watch.publish(value) }
                }
            } catch {
                logger.debug("destination stream failed", metadata: ["path": "\(path)", "error": "\(error)"])
            }
            watch.markConnected(false)
            if Task.isCancelled { break }
            if receivedFrames { backoff = configuration.initialBackoff }
            let jittered = backoff * Double.random(in: 0.5...1.0)
            do { try await Task.sleep(for: jittered) } catch { break }
            backoff = min(backoff * 2, configuration.maximumBackoff)
        }
        watch.finish()
    }

    /// Runs one stream until it fails; `onLines` gets complete frames as they arrive.
    private func stream(path: String, onLines: ([Data]) throws -> Void) async throws {
        let (id, multiplexer) = try await connection.multiplexer { try await self.connect() }
        let stream: StreamChannel
        do {
            stream = try await multiplexer.openStream { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .https))
                    return try StreamChannel(wrappingChannelSynchronously: channel)
                }
            }
        } catch {
            await connection.invalidate(id)
            throw error
        }
        let idleTimeout = configuration.idleTimeout
        let host = configuration.serverIdentity
        do {
            try await stream.executeThenClose { inbound, outbound in
                var head = HTTPRequestHead(version: .http2, method: .GET, uri: path)
                head.headers.add(name: "host", value: host)
                head.headers.add(name: "accept", value: DestinationProtocol.contentType)
                try await outbound.write(.head(head))
                try await outbound.write(.end(nil))
                let lastActivity = NIOLockedValueBox(ContinuousClock.now)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        while true {
                            try await Task.sleep(for: idleTimeout / 4)
                            if lastActivity.withLockedValue({ $0 }).duration(to: .now) > idleTimeout {
                                throw DestinationClientError(.idleTimeout, "no frame for \(idleTimeout)")
                            }
                        }
                    }
                    group.addTask {
                        // Cancelling the read (idle timeout) must close the stream so the read returns.
                        try await withTaskCancellationHandler {
                            try await Task.sleep(for: .seconds(86_400 * 365))
                        } onCancel: {
                            stream.channel.close(promise: nil)
                        }
                    }
                    defer { group.cancelAll() }
                    var splitter = LineSplitter()
                    var status: HTTPResponseStatus?
                    var errorBody = Data()
                    for try await part in inbound {
                        lastActivity.withLockedValue { $0 = .now }
                        switch part {
                        case .head(let response):
                            status = response.status
                        case .body(let buffer):
                            if status == .ok {
                                try onLines(try splitter.append(buffer.readableBytesView))
                            } else {
                                errorBody.append(contentsOf: buffer.readableBytesView)
                            }
                        case .end:
                            if let status, status != .ok {
                                throw DestinationClientError(
                                    .rejected, "\(status.code): \(String(decoding: errorBody, as: UTF8.self))")
                            }
                            throw DestinationClientError(.streamEnded, "the server ended the stream")
                        }
                    }
                    throw DestinationClientError(.streamEnded, "the stream closed")
                }
            }
        } catch let error as DestinationClientError {
            throw error
        } catch {
            // Transport failure: the connection is likely gone; the next stream reconnects.
            await connection.invalidate(id)
            throw error
        }
    }

    private func connect() async throws -> (Channel, Multiplexer) {
        var tls = try configuration.tls.makeConfiguration()
        tls.applicationProtocols = ["h2"]
        let context = try NIOSSLContext(configuration: tls)
        // The hostname check of the handshake is the identity check: the certificate must name this identity.
        let hostname = configuration.serverIdentity
        let sni = DestinationClient.isIPAddress(hostname) ? nil : hostname
        return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .connect(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = try NIOSSLClientHandler(context: context, serverHostname: sni)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }.flatMap {
                    channel.configureAsyncHTTP2Pipeline(mode: .client) { stream in
                        stream.eventLoop.makeSucceededVoidFuture()
                    }
                }.map { (channel, $0) }
            }
    }

    static func isIPAddress(_ host: String) -> Bool {
        host.contains(":") || host.split(separator: ".").count == 4 && host.allSatisfy { $0.isNumber || $0 == "." }
    }
}

/// One HTTP/2 connection shared by every watch of a client; replaced after it fails.
///
/// Watches that need a connection while one is being made wait for that attempt instead of dialling their own.
actor SharedConnection {
    typealias Connection = (id: Int, channel: Channel, multiplexer: DestinationClient.Multiplexer)

    private var current: Connection?
    private var connecting: Task<Connection, any Error>?
    private var nextID = 0

    func multiplexer(
        connect: @escaping @Sendable () async throws -> (Channel, DestinationClient.Multiplexer)
    ) async throws -> (Int, DestinationClient.Multiplexer) {
        if let current, current.channel.isActive { return (current.id, current.multiplexer) }
        let attempt: Task<Connection, any Error>
        if let connecting {
            attempt = connecting
        } else {
            nextID += 1
            let id = nextID
            attempt = Task {
                let (channel, multiplexer) = try await connect()
                return (id, channel, multiplexer)
            }
            connecting = attempt
        }
        do {
            let made = try await attempt.value
            // The first waiter to resume installs the connection; the others find it already installed.
            if connecting == attempt {
                connecting = nil
                current = made
            }
            return (made.id, made.multiplexer)
        } catch {
            if connecting == attempt { connecting = nil }
            throw error
        }
    }

    func invalidate(_ id: Int) {
        guard let current, current.id == id else { return }
        current.channel.close(promise: nil)
        self.current = nil
    }

    func close() {
        current?.channel.close(promise: nil)
        current = nil
    }
}

/// A destination being watched: its last known value (kept while disconnected) and a stream of changes.
public final class DestinationWatch<Value: Sendable>: Sendable {
    private struct State {
        var latest: Value?
        var connected = false
        var task: Task<Void, Never>?
        var cancelled = false
    }

    private let state = NIOLockedValueBox(State())
    private let continuation: AsyncStream<Value>.Continuation
    /// Every new value; a slow reader gets the newest (`.bufferingNewest(1)`). Ends when cancelled.
    public let updates: AsyncStream<Value>

    init() {
        (updates, continuation) = AsyncStream.makeStream(of: Value.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// The last value received, kept across disconnects; nil until the first arrives.
    public var latest: Value? { state.withLockedValue { $0.latest } }

    /// Whether a stream is currently delivering frames.
    public var isConnected: Bool { state.withLockedValue { $0.connected } }

    /// Stops watching.
    public func cancel() {
        let task = state.withLockedValue { state -> Task<Void, Never>? in
            state.cancelled = true
            return state.task
        }
        task?.cancel()
        continuation.finish()
    }

    func attach(_ task: Task<Void, Never>) {
        let cancelled = state.withLockedValue { state -> Bool in
            state.task = task
            return state.cancelled
        }
        if cancelled { task.cancel() }
    }

    func publish(_ value: Value) {
        state.withLockedValue { state in
            state.latest = value
            continuation.yield(value)
        }
    }

    func markConnected(_ connected: Bool) { state.withLockedValue { $0.connected = connected } }

    func finish() { continuation.finish() }

    deinit { state.withLockedValue { $0.task }?.cancel() }
}
