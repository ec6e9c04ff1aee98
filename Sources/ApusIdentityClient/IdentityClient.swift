import ApusIdentity
import ApusX509
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// What an ``IdentityClient`` needs: who it is, how it proves it, and where to ask.
public struct IdentityClientConfiguration: Sendable {
    /// The identity to request (`LINKERD2_PROXY_IDENTITY_LOCAL_NAME`).
    public var identity: IdentityName
    /// The projected ServiceAccount token file (`LINKERD2_PROXY_IDENTITY_TOKEN_FILE`); read before every request
    /// because the kubelet rotates it.
    public var tokenPath: String
    /// The trust anchors bundle (`LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS`).
    public var trustAnchorsPEM: String
    public var endpoint: CertifyEndpoint
    public var refresh: RefreshPolicy
    /// Limit for one Certify exchange, connection and handshake included.
    public var requestTimeout: Duration
    /// Whether the server context from ``IdentityClient/serverContext`` requires client certificates; when
    /// optional, unauthenticated TLS clients are accepted and simply have no identity.
    public var requireClientCertificate: Bool

    public init(
        identity: IdentityName, tokenPath: String, trustAnchorsPEM: String, endpoint: CertifyEndpoint,
        refresh: RefreshPolicy = RefreshPolicy(), requestTimeout: Duration = .seconds(10),
        requireClientCertificate: Bool = false
    ) {
        self.identity = identity
        self.tokenPath = tokenPath
        self.trustAnchorsPEM = trustAnchorsPEM
        self.endpoint = endpoint
        self.refresh = refresh
        self.requestTimeout = requestTimeout
        self.requireClientCertificate = requireClientCertificate
    }
}

/// The proxy side of identity: keeps a valid certificate for this proxy's identity, issued by the controller.
///
/// ```
///  token file ──┐                      ┌──► credentials (key + leaf + chain), updates() stream
///  key + CSR ───┼─► Certify (HTTPS) ───┤
///  (in memory)  │   controller verified└──► serverContext / clientContext (new connections only)
///  anchors ─────┘   by anchors + name       gauges: identity_cert_expiration_timestamp_seconds,
///                                                   identity_cert_refresh_count
/// ```
///
/// At creation it generates an ECDSA P-256 key in memory and the CSR for its identity; the key never leaves the
/// process. ``run()`` certifies, then refreshes at 70 % of each leaf's lifetime (see ``RefreshPolicy``). When a
/// refresh fails it retries with exponential backoff and keeps the current certificate, which stays in use
/// until it expires. Every response is checked before use: the leaf must carry our public key and exactly our
/// identity, and chain to the anchors.
///
/// New credentials are published as a value (``credentials``), on ``updates()``, and as ready-made TLS
/// contexts. Contexts are only handed to new connections: connections already open keep theirs, so rotating
/// the certificate never drops a connection.
///
/// ```swift
/// let client = try IdentityClient(configuration: configuration)
/// Task { await client.run() }
/// let credentials = try await client.waitForCredentials()
/// let handler = NIOSSLServerHandler(context: try #require(client.serverContext))
/// ```
public final class IdentityClient: Sendable {
    private struct State {
        var credentials: IdentityCredentials?
        var serverContext: NIOSSLContext?
        var clientContext: NIOSSLContext?
        var subscribers: [Int: AsyncStream<IdentityCredentials>.Continuation] = [:]
        var nextSubscriber = 0
        var lastError: IdentityClientError?
    }

    public let configuration: IdentityClientConfiguration
    public let anchors: [Certificate]
    private let privateKey: PrivateKey
    private let csrDER: [UInt8]
    private let transport: CertifyTransport
    private let state = NIOLockedValueBox(State())
    private let expirationGauge: Gauge
    private let refreshCounter: Counter
    private let logger: Logger

    /// Parses the anchors, generates the key and CSR. Nothing is sent until ``run()`` or ``certify()``.
    public init(
        configuration: IdentityClientConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        metricsFactory: any MetricsFactory = MetricsSystem.factory,
        logger: Logger = Logger(label: "apus.identity.client")
    ) throws(IdentityClientError) {
        do {
            anchors = try Certificate.parseChain(pem: configuration.trustAnchorsPEM)
        } catch {
            throw IdentityClientError(.local, "the trust anchors are not a PEM certificate bundle: \(error)")
        }
        guard !anchors.isEmpty else { throw IdentityClientError(.local, "the trust anchors bundle is empty") }
        do {
            privateKey = try PrivateKey.generateP256()
            csrDER = try CertificateSigningRequest(key: privateKey, dnsName: configuration.identity.description).der
            transport = try CertifyTransport(
                endpoint: configuration.endpoint, anchors: anchors, group: group,
                timeout: configuration.requestTimeout)
        } catch {
            throw IdentityClientError(.local, "preparing the key, CSR and TLS configuration: \(error)")
        }
        self.configuration = configuration
        self.expirationGauge = Gauge(label: "identity_cert_expiration_timestamp_seconds", factory: metricsFactory)
        self.refreshCounter = Counter(label: "identity_cert_refresh_count", factory: metricsFactory)
        self.logger = logger
    }

    // MARK: - Current state

    /// The latest credentials (possibly expired if every refresh since failed), or nil before the first.
    public var credentials: IdentityCredentials? { state.withLockedValue { $0.credentials } }

    /// A TLS server context presenting the latest credentials, for new inbound connections.
    public var serverContext: NIOSSLContext? { state.withLockedValue { $0.serverContext } }

    /// A TLS client context presenting the latest credentials, for new outbound connections.
    public var clientContext: NIOSSLContext? { state.withLockedValue { $0.clientContext } }

    /// Why the last attempt failed, nil after a success.
    public var lastError: IdentityClientError? { state.withLockedValue { $0.lastError } }

    /// Every new set of credentials, starting with the current one when there is one. A slow consumer only
    /// misses intermediate values, never the newest.
    public func updates() -> AsyncStream<IdentityCredentials> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: IdentityCredentials.self, bufferingPolicy: .bufferingNewest(1))
        let id = state.withLockedValue { state in
            let id = state.nextSubscriber
            state.nextSubscriber += 1
            state.subscribers[id] = continuation
            if let credentials = state.credentials { continuation.yield(credentials) }
            return id
        }
        continuation.onTermination = { [weak self] _ in
            self?.state.withLockedValue { _ = $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// The first credentials; returns at once when there are some.
    /// - Throws: `CancellationError` when the calling task is cancelled first.
    public func waitForCredentials() async throws -> IdentityCredentials {
        for await credentials in updates() { return credentials }
        throw CancellationError()
    }

    // MARK: - Certify

    /// Certifies until the calling task is cancelled: the first request at once, then refreshes as the
    /// ``RefreshPolicy`` says, retrying failures with backoff.
    public func run() async {
        var failures = 0
        while !Task.isCancelled {
            let delay: Duration
            do {
                let credentials = try await certify()
                failures = 0
                delay = configuration.refresh.refreshDelay(validFrom: Date(), validUntil: credentials.validUntil)
                logger.debug("next identity refresh scheduled", metadata: ["in": "\(delay)"])
            } catch {
                failures += 1
                let current = credentials
                delay = configuration.refresh.retryDelay(attempt: failures, validUntil: current?.validUntil)
                logger.warning(
                    "identity certification failed; retrying",
                    metadata: [
                        "error": "\(error)", "attempt": "\(failures)", "retryIn": "\(delay)",
                        "current":
                            "\(current.map { $0.isExpired() ? "expired" : "valid until \($0.validUntil)" } ?? "none")",
                    ])
            }
            do { try await Task.sleep(for: delay) } catch { break }
        }
    }

    /// One Certify exchange; on success the new credentials are installed and returned.
    @discardableResult
    public func certify() async throws(IdentityClientError) -> IdentityCredentials {
        do {
            let token = try readToken()
            let request = CertifyRequest(
                identity: configuration.identity.description, token: token, certificateSigningRequest: csrDER)
            let response = try await transport.certify(request)
            let credentials = try check(response)
            try install(credentials)
            return credentials
        } catch {
            state.withLockedValue { $0.lastError = error }
            throw error
        }
    }

    private func readToken() throws(IdentityClientError) -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: configuration.tokenPath) else {
            throw IdentityClientError(.tokenUnreadable, "cannot read the token file \(configuration.tokenPath)")
        }
        var bytes = [UInt8](data)
        while let last = bytes.last, last == 0x0A || last == 0x0D || last == 0x20 || last == 0x09 {
            bytes.removeLast()
        }
        guard !bytes.isEmpty else {
            throw IdentityClientError(.tokenUnreadable, "the token file \(configuration.tokenPath) is empty")
        }
        return bytes
    }

    /// Refuses a response that would not work (or would be unsafe) as this proxy's identity.
    private func check(_ response: CertifyResponse) throws(IdentityClientError) -> IdentityCredentials {
        let identity = configuration.identity
        do {
            let leaf = try Certificate(der: response.leafCertificate)
            let intermediates = try response.intermediateCertificates.map { try Certificate(der: $0) }
            guard try leaf.publicKey == privateKey.publicKey else {
                throw IdentityClientError(.invalidResponse, "the issued leaf does not carry this proxy's public key")
            }
            guard leaf.dnsNames == [identity.description] else {
                throw IdentityClientError(
                    .invalidResponse,
                    "the issued leaf names \(leaf.dnsNames), expected exactly \(identity.description)")
            }
            try leaf.verify(anchors: anchors, intermediates: intermediates, at: Date())
            return IdentityCredentials(
                identity: identity, privateKey: privateKey, leaf: leaf, intermediates: intermediates,
                validUntil: min(response.validUntil, leaf.notAfter), anchors: anchors)
        } catch let error as IdentityClientError {
            throw error
        } catch {
            throw IdentityClientError(.invalidResponse, "the issued certificate is unusable: \(error)")
        }
    }

    private func install(_ credentials: IdentityCredentials) throws(IdentityClientError) {
        let server: NIOSSLContext
        let client: NIOSSLContext
        do {
            server = try credentials.makeServerContext(
                requireClientCertificate: configuration.requireClientCertificate)
            client = try credentials.makeClientContext()
        } catch {
            throw IdentityClientError(.local, "building TLS contexts for the new certificate: \(error)")
        }
        let subscribers = state.withLockedValue { state in
            state.credentials = credentials
            state.serverContext = server
            state.clientContext = client
            state.lastError = nil
            return Array(state.subscribers.values)
        }
        expirationGauge.record(credentials.validUntil.timeIntervalSince1970)
        refreshCounter.increment()
        for subscriber in subscribers { subscriber.yield(credentials) }
        logger.info(
            "identity certified",
            metadata: ["identity": "\(credentials.identity)", "validUntil": "\(credentials.validUntil)"])
    }
}
