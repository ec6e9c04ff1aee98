import ApusDestinationClient
import ApusIdentity
import ApusIdentityClient
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The whole proxy as one `Service`: identity client, destination client, admin server and the outbound and
/// inbound listeners on a dedicated event-loop group (`threads` loops; the data path never leaves them).
///
/// Startup: the admin server first (so `/live` answers and `/ready` says what is missing), then the identity
/// client (readiness waits for the first certificate; inbound mesh TLS is unavailable until then), then the
/// listeners. Shutdown (SIGTERM through `ServiceGroup`, or `POST /shutdown`): the listeners stop accepting,
/// every connection is asked to quiesce (HTTP/1 closes after its response, HTTP/2 sends GOAWAY), in-flight
/// requests get up to `shutdownGracePeriod`, then whatever is left is closed.
public final class ProxyServer: Service, Sendable {
    /// The ports actually bound (configure port 0 in tests).
    public struct BoundPorts: Sendable, Hashable {
        public var outbound: Int
        public var inbound: Int
        public var admin: Int
        /// The tap port; nil when tap is not configured (the control port is not opened then).
        public var control: Int? = nil
    }

    public let configuration: ProxyConfiguration
    public let metrics: ProxyMetrics
    public let readiness: ProxyReadiness
    public let logLevel: LogLevelController
    public let meshTLS: MeshTLS
    public let identityClient: IdentityClient?
    /// Tap subscribers; the forwarding path publishes here and the control port's tap server subscribes.
    public let tap: TapHub
    private let destinationClient: DestinationClient?
    private let resolver: DestinationResolver
    /// Whether discovery can ever answer anything but "pass through" (a destination service, static endpoints or
    /// profiles, or an injected resolver). Standalone it cannot, and the outbound path skips the lookup (a future,
    /// a callback and an authority parse per request).
    private let discoveryConfigured: Bool
    private let group: EventLoopGroup
    private let ownsGroup: Bool
    private let logger: Logger
    private let inFlight = InFlightRequests()
    private let connections = ProxyListeners.ConnectionRegistry()
    private let state = NIOLockedValueBox(State())
    private let shutdownSignal: AsyncStream<Void>
    private let shutdownContinuation: AsyncStream<Void>.Continuation

    private struct State {
        var ports: BoundPorts?
        var listeners: [Channel] = []
    }

    /// - Parameters:
    ///   - meshTLS: fixed mesh TLS (tests, benchmarks); nil builds it from `configuration.identity` (an identity
    ///     client certifying against the identity service) or runs standalone without one.
    ///   - group: the data-path loops; nil creates `configuration.threads` loops owned (and shut down) by the server.
    ///   - resolver: a discovery resolver to use instead of one built from `configuration` (tests drive a real
    ///     destination server through it without an identity service); shut down with the proxy.
    /// - Throws: ``IdentityClientError`` when the identity settings cannot be used (bad anchors, bad name).
    public init(
        configuration: ProxyConfiguration, meshTLS: MeshTLS? = nil, group: EventLoopGroup? = nil,
        metrics: ProxyMetrics? = nil, logLevel: LogLevelController? = nil, resolver: DestinationResolver? = nil,
        logger: Logger = Logger(label: "apus.proxy")
    ) throws {
        self.configuration = configuration
        self.metrics = metrics ?? ProxyMetrics(retainIdle: configuration.metricsRetainIdle)
        self.logLevel = logLevel ?? LogLevelController(configuration.logFilter)
        self.logger = logger
        if let group {
            self.group = group
            ownsGroup = false
        } else {
            self.group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.threads))
            ownsGroup = true
        }
        var identityClient: IdentityClient?
        if let meshTLS {
            self.meshTLS = meshTLS
        } else if let identity = configuration.identity {
            let name: IdentityName
            do {
                name = try IdentityName(parsing: identity.localName)
            } catch {
                throw IdentityClientError(.local, "APUS_PROXY_IDENTITY_LOCAL_NAME '\(identity.localName)': \(error)")
            }
            let client = try IdentityClient(
                configuration: IdentityClientConfiguration(
                    identity: name, tokenPath: identity.tokenFile, trustAnchorsPEM: identity.trustAnchorsPEM,
                    endpoint: CertifyEndpoint(
                        host: identity.serviceAddress.host, port: identity.serviceAddress.port,
                        serverIdentity: identity.serviceName)),
                group: self.group, logger: Logger(label: "apus.proxy.identity"))
            identityClient = client
            self.meshTLS = MeshTLS(identity: client)
        } else {
            self.meshTLS = MeshTLS(identity: nil)
        }
        self.identityClient = identityClient
        readiness = ProxyReadiness(
            requiresIdentity: identityClient != nil, requiresConfig: configuration.destination != nil)
        if let destination = configuration.destination, let identityClient {
            destinationClient = DestinationClient(
                configuration: DestinationClient.Configuration(
                    host: destination.address.host, port: destination.address.port, tls: .identity(identityClient),
                    serverIdentity: destination.serviceName ?? DestinationProtocol.serverIdentity().description,
                    namespace: destination.contextNamespace ?? configuration.namespace ?? "default",
                    pod: destination.contextPod),
                logger: Logger(label: "apus.proxy.destination"))
        } else {
            destinationClient = nil
        }
        discoveryConfigured =
            resolver != nil || destinationClient != nil || !configuration.staticEndpoints.isEmpty
            || !configuration.staticProfiles.isEmpty
        self.resolver =
            resolver
            ?? DestinationResolver(
                client: destinationClient, staticEndpoints: configuration.staticEndpoints,
                clusterDomain: configuration.clusterDomain, namespace: configuration.namespace,
                staticProfiles: configuration.staticProfiles)
        var tapLabels: [String: String] = [:]
        tapLabels["pod"] = configuration.podName
        tapLabels["namespace"] = configuration.namespace
        if let identity = self.meshTLS.localIdentity ?? configuration.identity?.localName,
            let name = try? IdentityName(parsing: identity)
        {
            tapLabels["serviceaccount"] = name.serviceAccount
        }
        tap = TapHub(localLabels: tapLabels)
        (shutdownSignal, shutdownContinuation) = AsyncStream<Void>.makeStream()
    }

    /// The bound ports once ``run()`` is listening, nil before.
    public var boundPorts: BoundPorts? { state.withLockedValue { $0.ports } }

    /// Requests in flight on both listeners (drain progress).
    public var requestsInFlight: Int { inFlight.current }

    /// Waits until ``run()`` listens (polls; for tests and the binary's startup log).
    public func waitUntilListening(timeout: Duration = .seconds(30)) async throws -> BoundPorts {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let ports = boundPorts { return ports }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw ProxyError(.badTarget, "the proxy did not start listening within \(timeout)")
    }

    /// Starts a graceful shutdown as SIGTERM would (`POST /shutdown`).
    public func triggerShutdown() {
        shutdownContinuation.yield()
    }

    public func run() async throws {
        let admin = AdminServer(
            configuration: configuration, metrics: metrics, readiness: readiness, logLevel: logLevel,
            onShutdownRequest: { [shutdownContinuation] in shutdownContinuation.yield() },
            eventLoopGroup: group, logger: Logger(label: "apus.proxy.admin"))
        let pools = UpstreamPools(group: group, meshTLS: meshTLS)
        var failure: (any Error)?
        do {
            try await serve(admin: admin, pools: pools)
        } catch {
            failure = error
        }
        // Pooled upstream connections are closed on their own loops, so before those loops stop.
        pools.closeAll()
        if ownsGroup { try? await group.shutdownGracefully() }
        if let failure { throw failure }
        logger.info("apus-proxy stopped")
    }

    private func serve(admin: AdminServer, pools: UpstreamPools) async throws {
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            let adminAddress = try await admin.start()
            if let identityClient {
                tasks.addTask { await identityClient.run() }
                tasks.addTask { [readiness, logger] in
                    _ = try await identityClient.waitForCredentials()
                    readiness.markIdentityReady()
                    logger.info(
                        "identity certified", metadata: ["identity": "\(identityClient.configuration.identity)"])
                }
            } else if meshTLS.isAvailable {
                readiness.markIdentityReady()
            }
            if let destinationClient, let destination = configuration.destination {
                let authority = "\(destination.address.host):\(destination.address.port)"
                tasks.addTask { [readiness] in
                    await Self.awaitFirstDestinationAnswer(destinationClient, authority: authority, readiness)
                }
            } else {
                readiness.markConfigReady()
            }

            let outbound = ForwardingContext(
                direction: .outbound, configuration: configuration, resolver: discoveryConfigured ? resolver : nil,
                meshTLS: meshTLS, metrics: metrics, pools: pools, inFlight: inFlight, tap: tap)
            let inbound = ForwardingContext(
                direction: .inbound, configuration: configuration, resolver: nil, meshTLS: meshTLS,
                metrics: metrics, pools: pools, inFlight: inFlight, tap: tap)
            let outboundChannel = try await ProxyListeners.bind(
                configuration.outboundListen, group: group, connections: connections,
                initializer: ProxyListeners.outboundInitializer(outbound))
            let inboundChannel = try await ProxyListeners.bind(
                configuration.inboundListen, group: group, connections: connections,
                initializer: ProxyListeners.inboundInitializer(inbound))
            let tapAuthorizer = TapAuthorizer(
                identity: configuration.tapIdentity, tokenFile: configuration.tapTokenFile)
            let tapServer =
                tapAuthorizer.isEnabled
                ? TapServer(
                    listen: configuration.controlListen, hub: tap, authorizer: tapAuthorizer, meshTLS: meshTLS,
                    group: group, detectTimeout: configuration.inboundDetectTimeout,
                    logger: Logger(label: "apus.proxy.tap"))
                : nil
            let tapAddress = try await tapServer?.start()
            let ports = BoundPorts(
                outbound: outboundChannel.localAddress?.port ?? configuration.outboundListen.port,
                inbound: inboundChannel.localAddress?.port ?? configuration.inboundListen.port,
                admin: adminAddress.port ?? configuration.adminListen.port,
                control: tapAddress.map { $0.port ?? configuration.controlListen.port })
            state.withLockedValue {
                $0.ports = ports
                $0.listeners = [outboundChannel, inboundChannel]
            }
            let localIdentity = meshTLS.localIdentity ?? identityClient?.configuration.identity.description
            logger.info(
                "apus-proxy listening",
                metadata: [
                    "outbound": "\(ports.outbound)", "inbound": "\(ports.inbound)", "admin": "\(ports.admin)",
                    "tap": "\(ports.control.map(String.init) ?? "disabled")",
                    "identity": "\(localIdentity ?? "none")",
                ])

            await waitForShutdownRequest()
            logger.info("draining", metadata: ["requests": "\(inFlight.current)"])
            for listener in [outboundChannel, inboundChannel] { try? await listener.close() }
            connections.quiesceAll()
            let deadline = ContinuousClock.now + configuration.shutdownGracePeriod
            while ContinuousClock.now < deadline && (inFlight.current > 0 || connections.count > 0) {
                try? await Task.sleep(for: .milliseconds(20))
            }
            connections.closeAll()
            await tapServer?.stop()
            await admin.stop()
            resolver.shutdown()
            await destinationClient?.shutdown()
            tasks.cancelAll()
        }
    }

    /// Readiness waits for discovery to work end to end (mTLS with our certificate, the destination service
    /// answering), not just for the process to start: a profile watch is opened (the destination service
    /// answers every authority, with a default profile for names it does not know) and its first frame marks
    /// config ready. The watch then ends; the resolver opens its own per destination.
    private static func awaitFirstDestinationAnswer(
        _ client: DestinationClient, authority: String, _ readiness: ProxyReadiness
    ) async {
        let watch = client.watchProfile(authority: authority)
        defer { watch.cancel() }
        while !Task.isCancelled {
            if watch.isConnected || watch.latest != nil {
                readiness.markConfigReady()
                return
            }
            try? await Task.sleep(for: .milliseconds(25))
        }
    }

    /// Returns on graceful shutdown (SIGTERM via `ServiceGroup`), `POST /shutdown`, or cancellation.
    private func waitForShutdownRequest() async {
        let signal = shutdownSignal
        await withTaskGroup(of: Void.self) { waiters in
            waiters.addTask { try? await gracefulShutdown() }
            waiters.addTask {
                for await _ in signal { return }
            }
            await waiters.next()
            waiters.cancelAll()
        }
    }
}
