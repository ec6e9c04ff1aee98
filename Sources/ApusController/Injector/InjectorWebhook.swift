import ApusCore
import ApusIdentity
import ApusInjector
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

/// The proxy injector: a mutating admission webhook that adds the Apus proxy to pods as they are created.
///
/// ```
///  kube-apiserver ── HTTPS POST /inject (AdmissionReview v1, Pod CREATE) ──┐
///      verifies the serving certificate with the webhook configuration's   ▼
///      caBundle (= the trust anchors, kept by InjectorWebhookReconciler)   NIO: TLS + HTTP/1.1, body ≤ 3 MiB
///                                                                          │ connection task
///  ControllerManager.namespaces (informer cache) ─► namespace ────────────►│ InjectorReview (decode, decide)
///  IdentityIssuer ─► anchors PEM ─► InjectorDefaults.trustAnchorsPEM ─────►│ ProxyInjector.inject
///                                                                          ▼
///                               200 {uid, allowed: true, patchType: JSONPatch, patch: base64, warnings}
/// ```
///
/// The namespace comes from the manager's cache, never from an API call, so a request costs only CPU (decode,
/// decide, encode: well under a millisecond). The serving certificate is issued by the identity CA for
/// `<service>.<ns>.svc` (what the API server verifies) and renewed on rotation by ``run()``, like the identity
/// and destination endpoints' (see ``ServingCertificates``); until an issuer is loaded it is a self-signed
/// bootstrap certificate, which the API server rejects, so `failurePolicy` applies.
///
/// Answers (see ``InjectorReview`` for the AdmissionReview cases): `POST /inject` 200 or 400; a body over
/// ``Configuration/maximumRequestBytes`` 413 (the connection is closed); other paths 404; other methods 405.
///
/// Metrics (swift-metrics, exposed by the admin server):
/// - `apus_controller_injector_pods_injected_total`
/// - `apus_controller_injector_pods_skipped_total{reason}`: the injector's ``SkipReason``s as `not_enabled`,
///   `disabled_by_pod`, `host_network`, `already_injected`, …
/// - `apus_controller_injector_errors_total{reason}`: `malformed`, `unsupported_version`, `too_large`,
///   `not_found`, `method_not_allowed`, `missing_object`, `undecodable_pod`
/// - `apus_controller_injector_request_duration_seconds`: time from the complete body to the encoded answer
public final class InjectorWebhook: ServiceLifecycle.Service, Sendable {
    public static let path = "/inject"
    /// The Service the MutatingWebhookConfiguration points at, in the control namespace.
    public static let serviceName = "apus-injector"
    public static let serviceAccount = "apus-injector"

    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        /// Kubernetes refuses requests over 3 MiB itself, so a larger review cannot come from the API server.
        public var maximumRequestBytes: Int
        /// Connections silent for this long are closed.
        public var idleTimeout: Duration

        public init(
            host: String = "0.0.0.0", port: Int = 8443, maximumRequestBytes: Int = 3 << 20,
            idleTimeout: Duration = .seconds(90)
        ) {
            self.host = host
            self.port = port
            self.maximumRequestBytes = maximumRequestBytes
            self.idleTimeout = idleTimeout
        }
    }

    /// The webhook's TLS: issued for `apus-injector.<ns>.serviceaccount.identity.<ns>.<td>` plus the Service's DNS
    /// names (`apus-injector.<ns>.svc` is the one kube-apiserver verifies), no client certificates (the API
    /// server does not present one by default).
    public static func servingConfiguration(
        controlNamespace: String = "apus", trustDomain: String = "cluster.local",
        clusterDomain: String = "cluster.local", dnsNames: [String] = [], ipAddresses: [String] = []
    ) -> ServingCertificates.Configuration {
        let service = "\(serviceName).\(controlNamespace)"
        return ServingCertificates.Configuration(
            identity: IdentityName(
                serviceAccount: serviceAccount, namespace: controlNamespace, controlNamespace: controlNamespace,
                trustDomain: trustDomain),
            dnsNames: [service, "\(service).svc", "\(service).svc.\(clusterDomain)"] + dnsNames,
            ipAddresses: ipAddresses, clientCertificates: .notRequested)
    }

    public let configuration: Configuration
    public let certificates: ServingCertificates
    private let defaults: InjectorDefaults
    private let review: InjectorReview
    private let ready: @Sendable () async -> Void
    private let metrics: InjectorMetrics
    private let logger: Logger
    private let listening = NIOLockedValueBox(Listening.pending([]))

    private enum Listening {
        case pending([CheckedContinuation<Int, any Error>])
        case bound(Int)
        case stopped(any Error)
    }

    /// Why ``port()`` gave up: the webhook stopped before it listened.
    public struct NotListeningError: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { "the injector webhook stopped before listening: \(reason)" }
    }

    /// A webhook reading namespaces from `manager`'s cache; it opens its port once that cache has synced.
    public convenience init(
        manager: ControllerManager, defaults: InjectorDefaults, certificates: ServingCertificates,
        configuration: Configuration = Configuration(), metricsFactory: any MetricsFactory = MetricsSystem.factory,
        logger: Logger = Logger(label: "apus.injector")
    ) {
        let store = manager.namespaces.store
        self.init(
            defaults: defaults, certificates: certificates, configuration: configuration,
            namespace: { store.get(ObjectKey(namespace: nil, name: $0)) },
            ready: { await manager.namespaces.waitUntilSynced() }, metricsFactory: metricsFactory, logger: logger)
    }

    /// - Parameters:
    ///   - defaults: the injection settings; `trustAnchorsPEM` is replaced by the issuer's current anchors.
    ///   - namespace: a cache lookup by name (it must not block or call the API).
    ///   - ready: awaited before the port opens.
    public init(
        defaults: InjectorDefaults, certificates: ServingCertificates, configuration: Configuration = Configuration(),
        namespace: @escaping @Sendable (String) -> Namespace?, ready: @escaping @Sendable () async -> Void = {},
        metricsFactory: any MetricsFactory = MetricsSystem.factory, logger: Logger = Logger(label: "apus.injector")
    ) {
        self.configuration = configuration
        self.certificates = certificates
        self.defaults = defaults
        self.ready = ready
        self.logger = logger
        self.metrics = InjectorMetrics(factory: metricsFactory)
        let cache = InjectorCache(defaults: defaults, issuer: certificates.issuer)
        self.review = InjectorReview(injector: { cache.current() }, namespace: namespace)
    }

    /// Answers one AdmissionReview body as `POST /inject` does (without HTTP), recording the same metrics.
    /// - Returns: the HTTP status and the response body.
    public func answer(reviewBody body: [UInt8]) -> (status: Int, body: [UInt8]) {
        let answer = timedAnswer(body)
        return (Int(answer.status.code), answer.body)
    }

    /// The bound port (useful with port 0); waits until the webhook listens.
    /// - Throws: ``NotListeningError`` when ``run()`` ended before it listened.
    public func port() async throws -> Int {
        try await withCheckedThrowingContinuation { continuation in
            let state = listening.withLockedValue { state -> Listening in
                if case .pending(var waiters) = state {
                    waiters.append(continuation)
                    state = .pending(waiters)
                }
                return state
            }
            switch state {
            case .pending: break
            case .bound(let port): continuation.resume(returning: port)
            case .stopped(let error): continuation.resume(throwing: NotListeningError(reason: "\(error)"))
            }
        }
    }

    private func settle(_ outcome: Result<Int, any Error>) {
        let waiters = listening.withLockedValue { state -> [CheckedContinuation<Int, any Error>] in
            guard case .pending(let waiters) = state else { return [] }
            switch outcome {
            case .success(let port): state = .bound(port)
            case .failure(let error): state = .stopped(error)
            }
            return waiters
        }
        for waiter in waiters {
            switch outcome {
            case .success(let port): waiter.resume(returning: port)
            case .failure(let error): waiter.resume(throwing: NotListeningError(reason: "\(error)"))
            }
        }
    }

    /// Serves until graceful shutdown or cancellation, renewing the serving certificate meanwhile.
    /// - Throws: when the port cannot be bound or the bootstrap certificate cannot be made.
    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await self.runUntilCancelled() }
        } catch {
            settle(.failure(error))
            throw error
        }
        settle(.failure(CancellationError()))
    }

    private typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    private func runUntilCancelled() async throws {
        await ready()
        if Task.isCancelled { return }
        try certificates.prepare()
        let server = try await bind()
        let port = server.channel.localAddress?.port ?? configuration.port
        settle(.success(port))
        logger.info(
            "proxy injector listening",
            metadata: ["port": "\(port)", "path": "\(Self.path)", "identity": "\(certificates.configuration.identity)"])
        await withDiscardingTaskGroup { group in
            group.addTask { await self.certificates.run() }
            do {
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        group.addTask { await self.serve(connection) }
                    }
                }
            } catch {
                logger.debug("injector listener closed", metadata: ["error": "\(error)"])
            }
            group.cancelAll()
        }
        logger.info("proxy injector stopped")
    }

    private func bind() async throws -> NIOAsyncChannel<Connection, Never> {
        let certificates = self.certificates
        let idle = configuration.idleTimeout.components
        let idleTimeout = TimeAmount.nanoseconds(idle.seconds * 1_000_000_000 + idle.attoseconds / 1_000_000_000)
        return try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .bind(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Each connection takes the context current when it arrives; renewals affect new ones only.
                    guard let context = certificates.context else { throw ChannelError.ioOnClosedChannel }
                    let pipeline = channel.pipeline.syncOperations
                    try pipeline.addHandler(NIOSSLServerHandler(context: context))
                    try pipeline.addHandler(IdleStateHandler(readTimeout: idleTimeout))
                    try pipeline.addHandler(InjectorIdleCloser())
                    try pipeline.configureHTTPServerPipeline(withErrorHandling: true)
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
    }

    /// Serves requests on one connection until the client closes it, asks to, or sends too much.
    private func serve(_ connection: Connection) async {
        let limit = configuration.maximumRequestBytes
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var body: [UInt8] = []
                for try await part in inbound {
                    switch part {
                    case .head(let requestHead):
                        head = requestHead
                        body = []
                        if let length = requestHead.headers.first(name: "content-length").flatMap({ Int($0) }),
                            length > limit
                        {
                            try await write(tooLarge(limit), to: outbound, keepAlive: false)
                            return
                        }
                    case .body(let buffer):
                        guard body.count + buffer.readableBytes <= limit else {
                            try await write(tooLarge(limit), to: outbound, keepAlive: false)
                            return
                        }
                        body += buffer.readableBytesView
                    case .end:
                        guard let request = head else { return }
                        head = nil
                        let answer = route(request, body: body)
                        body = []
                        let keepAlive = request.isKeepAlive
                        try await write(answer, to: outbound, keepAlive: keepAlive)
                        if !keepAlive { return }
                    }
                }
            }
        } catch {
            // TLS failures (an API server that does not trust the bootstrap certificate yet), resets, idle closes.
            logger.debug("injector connection ended", metadata: ["error": "\(error)"])
        }
    }

    private func route(_ head: HTTPRequestHead, body: [UInt8]) -> InjectorReview.Answer {
        let path = String(head.uri.prefix { $0 != "?" })
        guard path == Self.path else {
            let answer = InjectorReview.reject(
                "no such endpoint: \(path) (the injector serves POST \(Self.path))",
                status: .notFound)
            metrics.record(answer.outcome, errorReason: "not_found")
            return answer
        }
        guard head.method == .POST else {
            let answer = InjectorReview.reject(
                "\(Self.path) accepts POST only, not \(head.method)",
                status: .methodNotAllowed)
            metrics.record(answer.outcome, errorReason: "method_not_allowed")
            return answer
        }
        return timedAnswer(body)
    }

    private func timedAnswer(_ body: [UInt8]) -> InjectorReview.Answer {
        let start = ContinuousClock.now
        let answer = review.answer(body)
        metrics.duration.recordNanoseconds(
            Int64((ContinuousClock.now - start) / .nanoseconds(1)))
        metrics.record(answer.outcome, errorReason: nil)
        switch answer.outcome {
        case .injected(let pod):
            logger.info("injected the proxy", metadata: ["pod": "\(pod)"])
        case .skipped(let pod, let reason):
            logger.debug("not injecting", metadata: ["pod": "\(pod)", "reason": "\(reason)"])
        case .ignored(let reason):
            logger.debug("review ignored", metadata: ["reason": "\(reason)"])
        case .failedOpen(let reason):
            logger.warning("admitted a pod without a proxy", metadata: ["reason": "\(reason)"])
        case .rejected(let status, let reason):
            logger.notice("review refused", metadata: ["status": "\(status.code)", "reason": "\(reason)"])
        }
        return answer
    }

    private func tooLarge(_ limit: Int) -> InjectorReview.Answer {
        let answer = InjectorReview.reject(
            "the request body exceeds the limit of \(limit) bytes", status: .payloadTooLarge)
        metrics.record(answer.outcome, errorReason: "too_large")
        return answer
    }

    private func write(
        _ answer: InjectorReview.Answer, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>,
        keepAlive: Bool
    ) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: answer.contentType)
        headers.add(name: "content-length", value: String(answer.body.count))
        if !keepAlive { headers.add(name: "connection", value: "close") }
        try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: answer.status, headers: headers)))
        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: answer.body))))
        try await outbound.write(.end(nil))
    }
}

/// The ``ProxyInjector`` for the issuer's current anchors, rebuilt only when the issuer changes.
private final class InjectorCache: Sendable {
    private let defaults: InjectorDefaults
    private let issuer: IdentityIssuer
    private let cached = NIOLockedValueBox<(generation: Int, injector: ProxyInjector)?>(nil)

    init(defaults: InjectorDefaults, issuer: IdentityIssuer) {
        self.defaults = defaults
        self.issuer = issuer
    }

    func current() -> ProxyInjector {
        let generation = issuer.generation
        if let cached = cached.withLockedValue({ $0 }), cached.generation == generation { return cached.injector }
        var defaults = self.defaults
        if let anchors = issuer.credentials?.anchorsPEM { defaults.trustAnchorsPEM = anchors }
        let injector = ProxyInjector(defaults: defaults)
        cached.withLockedValue { $0 = (generation, injector) }
        return injector
    }
}

/// The webhook's counters and request timer.
struct InjectorMetrics: Sendable {
    let injected: Counter
    let duration: Metrics.Timer
    private let factory: any MetricsFactory
    private let counters = NIOLockedValueBox<[String: Counter]>([:])

    init(factory: any MetricsFactory) {
        self.factory = factory
        injected = Counter(label: "apus_controller_injector_pods_injected_total", factory: factory)
        duration = Metrics.Timer(
            label: "apus_controller_injector_request_duration_seconds", preferredDisplayUnit: .seconds,
            factory: factory)
    }

    func record(_ outcome: InjectorReview.Outcome, errorReason: String?) {
        switch outcome {
        case .injected: injected.increment()
        case .skipped(_, let reason):
            counter("apus_controller_injector_pods_skipped_total", reason: Self.reasonLabel(reason)).increment()
        case .ignored: break
        case .failedOpen(let reason):
            counter(
                "apus_controller_injector_errors_total",
                reason: reason == "missing object" ? "missing_object" : "undecodable_pod"
            ).increment()
        case .rejected(let status, let reason):
            let label =
                errorReason
                ?? (reason.hasPrefix("unsupported review")
                    ? "unsupported_version"
                    : status == .payloadTooLarge
                        ? "too_large" : "malformed")
            counter("apus_controller_injector_errors_total", reason: label).increment()
        }
    }

    /// The injector's fixed skip reasons as short label values (anything else is `other`).
    static func reasonLabel(_ reason: String) -> String {
        switch reason {
        case SkipReason.notEnabled: return "not_enabled"
        case SkipReason.disabledByPod: return "disabled_by_pod"
        case SkipReason.disabledByNamespace: return "disabled_by_namespace"
        case SkipReason.invalidAnnotation: return "invalid_annotation"
        case SkipReason.hostNetwork: return "host_network"
        case SkipReason.alreadyInjected, "already injected": return "already_injected"
        case SkipReason.kubeSystem: return "kube_system"
        case SkipReason.controlPlaneNamespace: return "control_plane_namespace"
        case SkipReason.noServiceAccountToken: return "no_service_account_token"
        case SkipReason.notAPod: return "not_a_pod"
        case SkipReason.patchFailed: return "patch_failed"
        default: return "other"
        }
    }

    private func counter(_ label: String, reason: String) -> Counter {
        let key = "\(label)|\(reason)"
        return counters.withLockedValue { counters in
            if let counter = counters[key] { return counter }
            let counter = Counter(label: label, dimensions: [("reason", reason)], factory: factory)
            counters[key] = counter
            return counter
        }
    }
}

/// Closes a connection on which nothing was read for the idle timeout.
private final class InjectorIdleCloser: ChannelInboundHandler, Sendable {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
