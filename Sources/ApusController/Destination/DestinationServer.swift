import ApusCore
import ApusDestinationClient
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// Serves the destination protocol (``DestinationProtocol``, `docs/destination.md`) over HTTP/2 and TLS.
///
/// Each request is one HTTP/2 stream that subscribes to an index and writes NDJSON frames until either side
/// goes away:
///
/// ```
///  proxy ──TLS/h2──► stream ─► parse ?authority&ns&pod ─► index.subscribe(target) ─► latest value
///                                                        ▲                            │ FrameCache: encoded once
///               heartbeat every `heartbeatInterval` ─────┴── writes (await = flow control) ◄┘ per target version
/// ```
///
/// Flow control: writes await the stream's writability (HTTP/2 windows), and a subscription holds only the
/// newest value, so a slow proxy costs one pending value, never a growing buffer; when it catches up it gets
/// a snapshot (or the cached diff when it missed nothing).
public final class DestinationServer: ServiceLifecycle.Service, Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        /// TLS for the listener; ALPN `h2` is added. The identity issue provides the serving certificate.
        public var tls: TLSConfiguration
        public var heartbeatInterval: Duration

        public init(
            host: String = "0.0.0.0", port: Int = 8086, tls: TLSConfiguration,
            heartbeatInterval: Duration = .seconds(10)
        ) {
            self.host = host
            self.port = port
            self.tls = tls
            self.heartbeatInterval = heartbeatInterval
        }
    }

    typealias StreamChannel = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    public let configuration: Configuration
    private let endpoints: EndpointsIndex
    private let profiles: ProfileIndex
    private let destination: DestinationConfiguration
    private let ready: @Sendable () async -> Void
    private let logger: Logger
    private let bound = NIOLockedValueBox<(port: Int?, waiters: [CheckedContinuation<Int, Never>])>((nil, []))
    private let endpointFrames = FrameCache<EndpointTarget>()
    private let profileFrames = FrameCache<ProfileTarget>()
    private let metrics = NIOLockedValueBox(Metrics())

    /// Counters for the admin endpoint.
    public struct Metrics: Sendable, Hashable {
        public var streamsOpened = 0
        public var streamsActive = 0
        public var framesWritten = 0
    }

    /// Serves `indexes` once they are ready.
    public convenience init(
        indexes: DestinationIndexes, configuration: Configuration, logger: Logger = Logger(label: "apus.destination")
    ) {
        self.init(
            endpoints: indexes.endpoints, profiles: indexes.profiles, configuration: configuration,
            ready: { await indexes.waitUntilReady() }, logger: logger)
    }

    /// Serves the given indexes; `ready` is awaited before the port opens.
    public init(
        endpoints: EndpointsIndex, profiles: ProfileIndex, configuration: Configuration,
        ready: @escaping @Sendable () async -> Void = {}, logger: Logger = Logger(label: "apus.destination")
    ) {
        self.endpoints = endpoints
        self.profiles = profiles
        self.destination = endpoints.configuration
        self.configuration = configuration
        self.ready = ready
        self.logger = logger
    }

    public var currentMetrics: Metrics { metrics.withLockedValue { $0 } }

    /// The port the listener bound (useful with port 0); waits until it is bound.
    public func port() async -> Int {
        await withCheckedContinuation { continuation in
            let port = bound.withLockedValue { bound -> Int? in
                if bound.port == nil { bound.waiters.append(continuation) }
                return bound.port
            }
            if let port { continuation.resume(returning: port) }
        }
    }

    /// Listens until graceful shutdown or cancellation; open streams are closed on the way out.
    public func run() async throws {
        await ready()
        var tls = configuration.tls
        tls.applicationProtocols = ["h2"]
        let context = try NIOSSLContext(configuration: tls)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                }.flatMap {
                    channel.configureAsyncHTTP2Pipeline(mode: .server) { stream in
                        stream.eventLoop.makeCompletedFuture {
                            try stream.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                            return try StreamChannel(wrappingChannelSynchronously: stream)
                        }
                    }
                }
            }
        let port = server.channel.localAddress?.port ?? configuration.port
        let waiters = bound.withLockedValue { bound in
            bound.port = port
            defer { bound.waiters = [] }
            return bound.waiters
        }
        for waiter in waiters { waiter.resume(returning: port) }
        logger.info("destination server listening", metadata: ["port": "\(port)"])

        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                do {
                    try await server.executeThenClose { connections in
                        for try await connection in connections {
                            group.addTask { await self.serve(connection) }
                        }
                    }
                } catch {
                    self.logger.debug("listener closed", metadata: ["error": "\(error)"])
                }
                group.cancelAll()
            }
        }
    }

    private func serve(_ connection: NIOHTTP2Handler.AsyncStreamMultiplexer<StreamChannel>) async {
        await withDiscardingTaskGroup { group in
            do {
                for try await stream in connection.inbound {
                    group.addTask { await self.serve(stream) }
                }
            } catch {
                logger.debug("connection ended", metadata: ["error": "\(error)"])
            }
            group.cancelAll()
        }
    }

    private func serve(_ stream: StreamChannel) async {
        metrics.withLockedValue {
            $0.streamsOpened += 1
            $0.streamsActive += 1
        }
        defer { metrics.withLockedValue { $0.streamsActive -= 1 } }
        do {
            try await stream.executeThenClose { inbound, outbound in
                var requests = inbound.makeAsyncIterator()
                guard case .head(let head) = try await requests.next() else { return }
                let parsed = Result { () throws(Request.Failure) -> Request in
                    try Request(uri: head.uri, method: head.method, configuration: destination)
                }
                let request: Request
                switch parsed {
                case .success(let value): request = value
                case .failure(let failure):
                    try await Self.respond(outbound, status: failure.status, message: failure.message)
                    return
                }
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
