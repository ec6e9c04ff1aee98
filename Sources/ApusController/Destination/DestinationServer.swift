import ApusCore
import ApusDestinationClient
import ApusIdentity
import ApusIdentityClient
import ApusX509
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOTLS
import ServiceLifecycle

/// Serves the destination protocol (``DestinationProtocol``, `docs/destination.md`) over HTTP/2 with mutual TLS.
///
/// Each request is one HTTP/2 stream that subscribes to an index and writes NDJSON frames until either side
/// goes away:
///
/// ```
///  proxy ──mTLS/h2──► stream ─► parse ?authority&ns&pod ─► index.subscribe(target) ─► latest value
///    │                                                   ▲                            │ FrameCache: encoded once
///    │          heartbeat every `heartbeatInterval` ─────┴── writes (await = flow control) ◄┘ per target version
///    └─ client certificate → DNS SAN = the proxy's identity (logged, counted per identity in ``Metrics``)
/// ```
///
/// **TLS.** The server presents the certificate of a ``ServingCertificates`` (issued by the identity CA for
/// `apus-destination.<ns>.serviceaccount.identity.<ns>.<trust-domain>` and renewed by this server's ``run()``;
/// see ``servingConfiguration(controlNamespace:trustDomain:dnsNames:ipAddresses:)``) and requires a client
/// certificate chaining to the current trust anchors: a client without one, or with one from another CA, fails
/// the handshake and is counted in ``Metrics/connectionsRefused``. Each connection takes the context current when
/// it is accepted.
///
/// Flow control: writes await the stream's writability (HTTP/2 windows), and a subscription holds only the
/// newest value, so a slow proxy costs one pending value, never a growing buffer; when it catches up it gets
/// a snapshot (or the cached diff when it missed nothing).
public final class DestinationServer: ServiceLifecycle.Service, Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var heartbeatInterval: Duration

        public init(host: String = "0.0.0.0", port: Int = 8086, heartbeatInterval: Duration = .seconds(10)) {
            self.host = host
            self.port = port
            self.heartbeatInterval = heartbeatInterval
        }
    }

    /// What the destination endpoint's ``ServingCertificates`` must be: the identity proxies verify
    /// (``DestinationProtocol/serverIdentity(controlNamespace:trustDomain:)``,
    /// `apus-destination.<ns>.serviceaccount.identity.<ns>.<trust-domain>`) first, client certificates required,
    /// ALPN `h2`, TLS 1.2 or later.
    public static func servingConfiguration(
        controlNamespace: String = "apus", trustDomain: String = "cluster.local", dnsNames: [String] = [],
        ipAddresses: [String] = []
    ) -> ServingCertificates.Configuration {
        ServingCertificates.Configuration(
            identity: DestinationProtocol.serverIdentity(controlNamespace: controlNamespace, trustDomain: trustDomain),
            dnsNames: dnsNames, ipAddresses: ipAddresses, clientCertificates: .required, applicationProtocols: ["h2"])
    }

    typealias StreamChannel = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    public let configuration: Configuration
    /// The serving certificate and client verification; renewed by ``run()``, so give each server its own.
    public let certificates: ServingCertificates
    private let endpoints: EndpointsIndex
    private let profiles: ProfileIndex
    private let destination: DestinationConfiguration
    private let ready: @Sendable () async -> Void
    private let logger: Logger
    /// The bound port, or why there will never be one; callers of ``port()`` wait on it.
    private enum Listening {
        case pending(waiters: [CheckedContinuation<Int, any Error>])
        case bound(Int)
        case stopped(any Error & Sendable)
    }

    /// Why ``port()`` gave up: the server stopped before it was listening (cancelled during cache sync, or the bind or
    /// bootstrap certificate failed; the reason is in ``underlying``).
    public struct NotListeningError: Error, CustomStringConvertible {
        public let underlying: any Error & Sendable
        public var description: String { "the destination server stopped before listening: \(underlying)" }
    }

    private let listening = NIOLockedValueBox(Listening.pending(waiters: []))
    private let endpointFrames = FrameCache<EndpointTarget>()
    private let profileFrames = FrameCache<ProfileTarget>()
    private let metrics = NIOLockedValueBox(Metrics())

    /// Counters for the admin endpoint.
    public struct Metrics: Sendable, Hashable {
        public var streamsOpened = 0
        public var streamsActive = 0
        public var framesWritten = 0
        /// Open streams per client identity (the DNS SAN of the proxy's certificate); identities without open
        /// streams are left out, so the map is bounded by the connected proxies.
        public var streamsActiveByClient: [String: Int] = [:]
        /// Connections accepted after the handshake proved a client identity.
        public var connectionsAccepted = 0
        /// Connections whose TLS handshake failed (no client certificate, another CA, expired, not TLS at all)
        /// or whose certificate names no identity.
        public var connectionsRefused = 0
    }

    /// Serves `indexes` once they are ready.
    public convenience init(
        indexes: DestinationIndexes, configuration: Configuration, certificates: ServingCertificates,
        logger: Logger = Logger(label: "apus.destination")
    ) {
        self.init(
            endpoints: indexes.endpoints, profiles: indexes.profiles, configuration: configuration,
            certificates: certificates, ready: { await indexes.waitUntilReady() }, logger: logger)
    }

    /// Serves the given indexes; `ready` is awaited before the port opens.
    public init(
        endpoints: EndpointsIndex, profiles: ProfileIndex, configuration: Configuration,
        certificates: ServingCertificates, ready: @escaping @Sendable () async -> Void = {},
        logger: Logger = Logger(label: "apus.destination")
    ) {
        self.endpoints = endpoints
        self.profiles = profiles
        self.destination = endpoints.configuration
        self.configuration = configuration
        self.certificates = certificates
        self.ready = ready
        self.logger = logger
    }

    public var currentMetrics: Metrics { metrics.withLockedValue { $0 } }

    /// The port the listener bound (useful with port 0); waits until it is bound.
    /// - Throws: ``NotListeningError`` when ``run()`` ended before the port was bound.
    public func port() async throws -> Int {
        try await withCheckedThrowingContinuation { continuation in
            let state = listening.withLockedValue { listening -> Listening in
                if case .pending(var waiters) = listening {
                    waiters.append(continuation)
                    listening = .pending(waiters: waiters)
                }
                return listening
            }
            switch state {
            case .pending: break
            case .bound(let port): continuation.resume(returning: port)
            case .stopped(let error): continuation.resume(throwing: NotListeningError(underlying: error))
            }
        }
    }

    /// Settles the listening state once; waiters of ``port()`` get the outcome.
    private func settleListening(_ outcome: Result<Int, any Error & Sendable>) {
        let waiters = listening.withLockedValue { listening -> [CheckedContinuation<Int, any Error>] in
            guard case .pending(let waiters) = listening else { return [] }
            switch outcome {
            case .success(let port): listening = .bound(port)
            case .failure(let error): listening = .stopped(error)
            }
            return waiters
        }
        for waiter in waiters {
            switch outcome {
            case .success(let port): waiter.resume(returning: port)
            case .failure(let error): waiter.resume(throwing: NotListeningError(underlying: error))
            }
        }
    }

    /// Listens until graceful shutdown or cancellation; open streams are closed on the way out.
    /// - Throws: when the port cannot be bound or the bootstrap certificate cannot be made.
    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await self.runUntilCancelled() }
        } catch {
            settleListening(.failure(error))
            throw error
        }
        settleListening(.failure(CancellationError()))  // a no-op when it was listening
    }

    private func runUntilCancelled() async throws {
        await ready()
        if Task.isCancelled { return }
        try certificates.prepare()
        let certificates = self.certificates
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture { () throws -> ConnectionPeer in
                    // Each connection takes the context current when it arrives; renewals affect new ones only.
                    guard let context = certificates.context else { throw ChannelError.ioOnClosedChannel }
                    let peer = ConnectionPeer()
                    let pipeline = channel.pipeline.syncOperations
                    try pipeline.addHandler(NIOSSLServerHandler(context: context))
                    try pipeline.addHandler(PeerIdentityHandler(peer: peer) { self.refused($0, channel: channel) })
                    return peer
                }.flatMap { peer in
                    channel.configureAsyncHTTP2Pipeline(mode: .server) { stream in
                        stream.eventLoop.makeCompletedFuture {
                            try stream.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                            return try StreamChannel(wrappingChannelSynchronously: stream)
                        }
                    }.map { (peer, $0) }
                }
            }
        let port = server.channel.localAddress?.port ?? configuration.port
        settleListening(.success(port))
        logger.info(
            "destination server listening",
            metadata: ["port": "\(port)", "identity": "\(certificates.configuration.identity)"])

        await withDiscardingTaskGroup { group in
            group.addTask { await certificates.run() }
            do {
                try await server.executeThenClose { connections in
                    for try await (peer, connection) in connections {
                        group.addTask { await self.serve(connection, peer: peer) }
                    }
                }
            } catch {
                self.logger.debug("listener closed", metadata: ["error": "\(error)"])
            }
            group.cancelAll()
        }
        logger.info("destination server stopped")
    }

    private func refused(_ reason: String, channel: Channel) {
        metrics.withLockedValue { $0.connectionsRefused += 1 }
        logger.notice(
            "destination connection refused",
            metadata: ["remote": "\(channel.remoteAddress.map { "\($0)" } ?? "unknown")", "reason": "\(reason)"])
    }

    private func serve(_ connection: NIOHTTP2Handler.AsyncStreamMultiplexer<StreamChannel>, peer: ConnectionPeer)
        async
    {
        var client: String?
        await withDiscardingTaskGroup { group in
            do {
                for try await stream in connection.inbound {
                    // Streams only arrive after the handshake, which recorded the identity.
                    guard let identity = client ?? peer.identity else {
                        stream.channel.close(promise: nil)
                        continue
                    }
                    if client == nil {
                        client = identity
                        metrics.withLockedValue { $0.connectionsAccepted += 1 }
                        logger.info("proxy connected", metadata: ["client": "\(identity)"])
                    }
                    group.addTask { await self.serve(stream, client: identity) }
                }
            } catch {
                logger.debug(
                    "connection ended", metadata: ["client": "\(client ?? "unidentified")", "error": "\(error)"])
            }
            group.cancelAll()
        }
    }

    private func serve(_ stream: StreamChannel, client: String) async {
        metrics.withLockedValue {
            $0.streamsOpened += 1
            $0.streamsActive += 1
            $0.streamsActiveByClient[client, default: 0] += 1
        }
        defer {
            metrics.withLockedValue { metrics in
                metrics.streamsActive -= 1
                let left = metrics.streamsActiveByClient[client, default: 1] - 1
                metrics.streamsActiveByClient[client] = left > 0 ? left : nil
            }
        }
        var logger = self.logger
        logger[metadataKey: "client"] = "\(client)"
        do {
            try await stream.executeThenClose { inbound, outbound in
                var requests = inbound.makeAsyncIterator()
                guard case .head(let head) = try await requests.next() else { return }
                logger[metadataKey: "request"] = "\(head.uri)"
                let parsed = Result { () throws(Request.Failure) -> Request in
                    try Request(uri: head.uri, method: head.method, configuration: destination)
                }
                let request: Request
                switch parsed {
                case .success(let value): request = value
                case .failure(let failure):
                    logger.debug("destination request refused", metadata: ["reason": "\(failure.message)"])
                    try await Self.respond(outbound, status: failure.status, message: failure.message)
                    return
                }
                logger.debug("destination stream opened")
                var headers = HTTPHeaders()
                headers.add(name: "content-type", value: DestinationProtocol.contentType)
                headers.add(name: "apus-destination-version", value: DestinationProtocol.version)
                try await outbound.write(.head(HTTPResponseHead(version: .http2, status: .ok, headers: headers)))
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await self.stream(request, to: outbound) }
                    group.addTask { try await self.heartbeats(to: outbound) }
                    // The client ending or resetting its side (or the connection closing) ends the subscription.
                    // After the request's end, the stream lives until a write fails (reset) or we shut down.
                    while let part = try await requests.next() {
                        if case .end = part {
                            _ = try await group.next()
                            break
                        }
                    }
                    group.cancelAll()
                }
            }
        } catch {
            logger.debug("stream ended", metadata: ["error": "\(error)"])
        }
    }

    private func stream(
        _ request: Request, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    ) async throws {
        switch request.kind {
        case .endpoints(let target):
            guard let target else {
                try await write(EndpointFrame.noEndpoints(version: 1, exists: false), to: outbound)
                try await Task.sleep(for: .seconds(86_400 * 365))
                return
            }
            var last: Versioned<Resolution>?
            endpointFrames.retain(target)
            defer { endpointFrames.release(target) }
            for await published in endpoints.subscribe(target) {
                let bytes = try endpointFrames.endpointBytes(target, published: published, subscriberLast: last)
                if !bytes.isEmpty { try await write(bytes, to: outbound) }
                last = published
            }
        case .profile(let target):
            profileFrames.retain(target)
            defer { profileFrames.release(target) }
            for await published in profiles.subscribe(target) {
                try await write(try profileFrames.profileBytes(target, published: published), to: outbound)
            }
        }
    }

    private func heartbeats(to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        let frame = try DestinationProtocol.encodeLine(EndpointFrame.heartbeat)
        while true {
            try await Task.sleep(for: configuration.heartbeatInterval)
            try await write(frame, to: outbound)
        }
    }

    private func write(_ frame: EndpointFrame, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>)
        async throws
    {
        try await write(try DestinationProtocol.encodeLine(frame), to: outbound)
    }

    private func write(_ bytes: Data, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: bytes))))
        metrics.withLockedValue { $0.framesWritten += 1 }
    }

    private static func respond(
        _ outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, status: HTTPResponseStatus, message: String
    ) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        let body = try JSONEncoder().encode(["error": message])
        try await outbound.write(.head(HTTPResponseHead(version: .http2, status: status, headers: headers)))
        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
        try await outbound.write(.end(nil))
    }
}

/// The identity a connection's client proved in the TLS handshake; written once on its event loop, read by
/// the connection's task when streams arrive.
final class ConnectionPeer: Sendable {
    private let box = NIOLockedValueBox<String?>(nil)

    var identity: String? { box.withLockedValue { $0 } }

    func identify(_ identity: String) { box.withLockedValue { $0 = identity } }
}

/// Sits behind the TLS handler: on a completed handshake records the client certificate's first DNS SAN as the
/// connection's identity; a failed handshake, or a certificate that names no identity, is reported and closes
/// the connection before any HTTP/2 frame is read.
final class PeerIdentityHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let peer: ConnectionPeer
    private let onRefused: (String) -> Void
    private var handshakeDone = false

    init(peer: ConnectionPeer, onRefused: @escaping (String) -> Void) {
        self.peer = peer
        self.onRefused = onRefused
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted? = event as? TLSUserEvent, !handshakeDone {
            handshakeDone = true
            switch Self.identity(of: try? context.pipeline.syncOperations.nioSSL_peerCertificate()) {
            case .success(let identity):
                peer.identify(identity)
            case .failure(let reason):
                onRefused(reason.message)
                context.close(promise: nil)
                return
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !handshakeDone {
            handshakeDone = true
            onRefused("TLS handshake failed: \(error)")
        }
        context.fireErrorCaught(error)
    }

    struct Refusal: Error {
        var message: String
    }

    /// The first DNS SAN of the client certificate (the handshake already verified its chain); the same reading
    /// as the proxy's inbound side (``PeerCertificateIdentity``).
    static func identity(of certificate: NIOSSLCertificate?) -> Result<String, Refusal> {
        PeerCertificateIdentity.identity(of: certificate).mapError { Refusal(message: $0.description) }
    }
}

/// A parsed destination request.
struct Request: Sendable {
    enum Kind: Sendable {
        /// nil target: the authority is not a cluster name; the proxy forwards as given.
        case endpoints(EndpointTarget?)
        case profile(ProfileTarget)
    }

    struct Failure: Error {
        var status: HTTPResponseStatus
        var message: String
    }

    let kind: Kind

    init(uri: String, method: HTTPMethod, configuration: DestinationConfiguration) throws(Failure) {
        guard let components = URLComponents(string: uri) else {
            throw Failure(status: .badRequest, message: "request target '\(uri)' is not a valid URI")
        }
        guard method == .GET else {
            throw Failure(status: .methodNotAllowed, message: "destination requests use GET")
        }
        let query = Dictionary(
            (components.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { first, _ in first })
        guard let authority = query["authority"], !authority.isEmpty else {
            throw Failure(status: .badRequest, message: "query parameter 'authority' (host:port) is required")
        }
        let namespace = query["ns"].flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        let parsed: DestinationAuthority
        do {
            parsed = try DestinationAuthority(
                parsing: authority, clientNamespace: namespace, clusterDomain: configuration.clusterDomain)
        } catch {
            throw Failure(status: .badRequest, message: error.description)
        }
        switch components.path {
        case DestinationProtocol.getPath:
            if parsed.isIPAddress {
                kind = .endpoints(.ip(parsed.host, port: parsed.port))
            } else if let service = parsed.service(clusterDomain: configuration.clusterDomain) {
                kind = .endpoints(.service(service, port: parsed.port))
            } else {
                kind = .endpoints(nil)
            }
        case DestinationProtocol.getProfilePath:
            kind = .profile(ProfileTarget(host: parsed.host, port: parsed.port, clientNamespace: namespace))
        default:
            throw Failure(status: .notFound, message: "no destination API at '\(components.path)'")
        }
    }
}

/// Encoded frames per target version, shared by every subscriber of the target on this server: a change is
/// encoded once (snapshot and the diff from the previous version) however many proxies watch it.
final class FrameCache<Target: Hashable & Sendable>: Sendable {
    private struct Entry {
        var users = 0
        var version: UInt64 = 0
        var resolution: Resolution?
        var snapshot = Data()
        var delta: Data?
    }

    private let entries = NIOLockedValueBox<[Target: Entry]>([:])

    func retain(_ target: Target) { entries.withLockedValue { $0[target, default: Entry()].users += 1 } }

    func release(_ target: Target) {
        entries.withLockedValue { entries in
            entries[target]?.users -= 1
            if (entries[target]?.users ?? 0) <= 0 { entries[target] = nil }
        }
    }

    /// The bytes that bring a subscriber from `subscriberLast` to `published`: the shared diff when it saw the
    /// previous version, else the shared snapshot.
    func endpointBytes(
        _ target: Target, published: Versioned<Resolution>, subscriberLast: Versioned<Resolution>?
    ) throws -> Data {
        let version = published.version
        let cached: (snapshot: Data, delta: Data?)? = try entries.withLockedValue { entries in
            guard var entry = entries[target] else { return nil }
            if entry.version == version { return (entry.snapshot, entry.delta) }
            guard version > entry.version else { return nil }  // an older version: do not regress the cache
            let previous = entry.version == version - 1 ? entry.resolution : nil
            entry.snapshot = try DestinationProtocol.encodeLine(
                EndpointFrame.snapshot(of: published.value, version: version))
            entry.delta = try previous.map { try Self.encode(from: $0, to: published.value, version: version) }
            entry.version = version
            entry.resolution = published.value
            entries[target] = entry
            return (entry.snapshot, entry.delta)
        }
        if let last = subscriberLast, last.version == version - 1 {
            if let delta = cached?.delta { return delta }
            return try Self.encode(from: last.value, to: published.value, version: version)
        }
        if let snapshot = cached?.snapshot { return snapshot }
        return try DestinationProtocol.encodeLine(EndpointFrame.snapshot(of: published.value, version: version))
    }

    func profileBytes(_ target: Target, published: Versioned<DestinationProfile>) throws -> Data {
        try entries.withLockedValue { entries in
            if let entry = entries[target], entry.version == published.version { return entry.snapshot }
            let bytes = try DestinationProtocol.encodeLine(
                ProfileFrame.profile(version: published.version, profile: published.value))
            if var entry = entries[target], published.version > entry.version {
                entry.version = published.version
                entry.snapshot = bytes
                entries[target] = entry
            }
            return bytes
        }
    }

    private static func encode(from old: Resolution, to new: Resolution, version: UInt64) throws -> Data {
        var data = Data()
        for frame in EndpointFrame.frames(from: old, to: new, version: version) {
            data.append(try DestinationProtocol.encodeLine(frame))
        }
        return data
    }
}
