import ApusCore
import ApusIdentity
import ApusX509
import Foundation
import KubernetesClient
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// The controller's identity service: the Certify API over HTTPS, backed by a hot-reloaded issuer.
///
/// ```
///  proxy ── HTTPS POST /apus.identity.v1.Identity/Certify {identity, token, CSR} ──┐
///                                                                                   ▼
///   NIO event loops: TLS (serving cert from the CA) + HTTP/1.1, bounded body ──► request task
///                                                                                   │ 1. fields present
///   IssuerSource (Secret+ConfigMap informers │ files) ──► IdentityIssuer ──────────►│ 2. issuer ready
///        validate, swap atomically, Events, issuer_cert_ttl_seconds                 │ 3. identity parses
///                                                                                   │ 4. TokenValidator
///   TokenValidator (TokenReview │ local tokens) ─────────────────────────────────────►│ 5. token == requested
///                                                                                   │ 6. CA.issue (CSR checks)
///   EventRecorder ◄── IssuedLeafCertificate on the ServiceAccount ◄─────────────────┘ 7. JSON response
/// ```
///
/// **Threads.** Sockets, TLS and HTTP framing run on the NIO event loops. Each connection is served by its own
/// Swift task on the cooperative thread pool, so the TokenReview round trip and the CPU-bound CSR check and
/// signing (a fraction of a millisecond of ECDSA work) never run on an event loop and never stall other
/// connections' I/O; the pool is as wide as the machine has cores, which bounds signing concurrency without a
/// dedicated thread pool.
///
/// **Failures** are typed ``IdentityError``s answered with their HTTP status and `{"code", "message"}`; protocol
/// mistakes (wrong path or method, malformed JSON, oversized body) are 4xx with codes `notFound`,
/// `methodNotAllowed`, `malformedRequest`, `payloadTooLarge`. Nothing a client sends can crash the service.
///
/// Runs until the service group shuts down gracefully or its task is cancelled; the issuer source, the serving
/// certificate renewal and the gauge refresh run inside ``run()``.
public final class IdentityService: ServiceLifecycle.Service {
    public static let certifyPath = "/apus.identity.v1.Identity/Certify"

    public let options: IdentityServiceOptions
    /// The issuer in use; exposed for the serving certificates of the controller's other endpoints.
    public let issuer: IdentityIssuer
    private let source: (any IssuerSource)?
    private let validator: any TokenValidator
    private let events: EventRecorder?
    private let group: any EventLoopGroup
    /// The Certify endpoint's serving certificate (issued from ``issuer`` or provided), for new connections.
    public let serving: ServingCertificates
    private let listening = NIOLockedValueBox(ListeningState.pending([]))
    let logger: Logger

    enum ListeningState {
        case pending([CheckedContinuation<Int, any Error>])
        case listening(Int)
        case failed(any Error)
    }

    /// - Parameters:
    ///   - source: feeds ``issuer``; nil when the caller loads the issuer itself.
    ///   - validator: ``TokenReviewValidator`` in a cluster, ``LocalTokenValidator`` in local mode.
    ///   - events: records `IssuedLeafCertificate` on ServiceAccounts; nil in local mode.
    ///   - issuer: the issuer to serve from; by default a new one with the options' lifetimes.
    public init(
        options: IdentityServiceOptions = IdentityServiceOptions(), source: (any IssuerSource)?,
        validator: any TokenValidator, events: EventRecorder? = nil, issuer: IdentityIssuer? = nil,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        metricsFactory: any MetricsFactory = MetricsSystem.factory,
        logger: Logger = Logger(label: "apus.identity")
    ) {
        self.options = options
        self.source = source
        self.validator = validator
        self.events = events
        self.group = group
        self.logger = logger
        let issuer =
            issuer
            ?? IdentityIssuer(
                leafLifetime: options.leafLifetime, clockSkew: options.clockSkew, metricsFactory: metricsFactory,
                logger: logger)
        self.issuer = issuer
        self.serving = ServingCertificates(issuer: issuer, configuration: options.servingConfiguration, logger: logger)
    }

    /// The identity proxies expect of this service's serving certificate.
    public var serverIdentity: IdentityName { options.serverIdentity }

    /// The certificate new connections are served with (nil before ``run()`` prepared one).
    public var servingCertificate: Certificate? { serving.certificate }

    /// The port once the service listens (useful with port 0).
    /// - Throws: the bind error when listening failed.
    public func waitUntilListening() async throws -> Int {
        try await withCheckedThrowingContinuation { continuation in
            let resume: (() -> Void)? = listening.withLockedValue { state in
                switch state {
                case .pending(var waiters):
                    waiters.append(continuation)
                    state = .pending(waiters)
                    return nil
                case .listening(let port):
                    return { continuation.resume(returning: port) }
                case .failed(let error):
                    return { continuation.resume(throwing: error) }
                }
            }
            resume?()
        }
    }

    private func setListening(_ result: Result<Int, any Error>) {
        let waiters = listening.withLockedValue { state -> [CheckedContinuation<Int, any Error>] in
            guard case .pending(let waiters) = state else { return [] }
            switch result {
            case .success(let port): state = .listening(port)
            case .failure(let error): state = .failed(error)
            }
            return waiters
        }
        for waiter in waiters { waiter.resume(with: result) }
    }

    // MARK: - Certify

    /// Checks and answers one Certify request, as the HTTPS endpoint does (without the Event).
    ///
    /// Order, as Linkerd: all three fields present; an issuer is ready; the requested identity parses; the
    /// token proves an identity; it is the requested one; the CA checks the CSR and issues.
    public func certify(_ request: CertifyRequest) async throws(IdentityError) -> CertifyResponse {
        try request.validate()
        let authority = try issuer.authority()
        let requested = try IdentityName(parsing: request.identity)
        let proven = try await validator.validate(token: request.token)
        guard proven == requested else {
            throw IdentityError(
                .identityMismatch, "the token proves '\(proven)' but the request asks for '\(requested)'")
        }
        return try authority.issue(csrDER: request.certificateSigningRequest, identity: proven)
    }

    /// Records `IssuedLeafCertificate` on the ServiceAccount whose identity was certified.
    func recordIssued(_ identity: IdentityName, validUntil: Date) async {
        guard let events else { return }
        let serviceAccount = ObjectReference(
            apiVersion: ServiceAccount.resourceType.apiVersion, kind: ServiceAccount.resourceType.kind,
            namespace: identity.namespace, name: identity.serviceAccount)
        await events.record(
            involving: serviceAccount, type: .normal, reason: "IssuedLeafCertificate",
            message: "issued certificate for \(identity) until \(validUntil.formatted(.iso8601))")
    }

    // MARK: - Lifecycle

    /// Serves until graceful shutdown or cancellation.
    /// - Throws: when the listening socket cannot be bound or the bootstrap certificate cannot be made.
    public func run() async throws {
        try await cancelWhenGracefulShutdown { try await self.runUntilCancelled() }
    }

    private func runUntilCancelled() async throws {
        let serverChannel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
        do {
            try serving.prepare()
            serverChannel = try await bind()
        } catch {
            setListening(.failure(error))
            throw error
        }
        let port = serverChannel.channel.localAddress?.port ?? options.port
        setListening(.success(port))
        logger.info(
            "identity service listening",
            metadata: ["address": "\(options.host):\(port)", "identity": "\(serverIdentity)"])
        try await withThrowingDiscardingTaskGroup { group in
            if let source {
                group.addTask { await source.run(issuer: self.issuer) }
            }
            group.addTask { await self.serving.run() }
            group.addTask { await self.refreshGaugePeriodically() }
            do {
                try await serverChannel.executeThenClose { inbound in
                    try await withThrowingDiscardingTaskGroup { connections in
                        for try await connection in inbound {
                            connections.addTask { await self.serve(connection) }
                        }
                    }
                }
            } catch is CancellationError {
                // Shutdown (graceful or cancelled) ends the accept loop this way; it is not a failure.
            }
            group.cancelAll()
        }
        logger.info("identity service stopped")
    }

    private func bind() async throws
        -> NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
    {
        let serving = self.serving
        let idleTimeout = TimeAmount.nanoseconds(
            Int64(options.idleTimeout.components.seconds) * 1_000_000_000
                + options.idleTimeout.components.attoseconds / 1_000_000_000)
        return try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .bind(host: options.host, port: options.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Each connection takes the context current when it arrives; renewals affect new ones only.
                    guard let context = serving.context else {
                        throw ChannelError.ioOnClosedChannel
                    }
                    let pipeline = channel.pipeline.syncOperations
                    try pipeline.addHandler(NIOSSLServerHandler(context: context))
                    try pipeline.addHandler(IdleStateHandler(readTimeout: idleTimeout))
                    try pipeline.addHandler(CloseOnIdleHandler())
                    try pipeline.configureHTTPServerPipeline(withErrorHandling: true)
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                        wrappingChannelSynchronously: channel)
                }
            }
    }

    private func refreshGaugePeriodically() async {
        while !Task.isCancelled {
            issuer.refreshGauge()
            do { try await Task.sleep(for: options.gaugeInterval) } catch { return }
        }
    }
}

/// Closes a connection on which nothing was read for the idle timeout.
private final class CloseOnIdleHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
