import ApusIdentity
import ApusX509
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOSSL

/// The TLS server context of one of the controller's endpoints (identity, destination, webhook), with a serving
/// certificate issued by the identity CA and kept fresh.
///
/// ```
///  IdentityIssuer ── updates() ──► renew at once (new issuer or anchors) ─┐
///  timer: renewalFraction of the lifetime ──► renew when due ─────────────┼─► NIOSSLContext ─► new connections
///  no issuer yet ──► self-signed bootstrap certificate (trusted by nobody) ┘
/// ```
///
/// Each endpoint has its own instance: its certificate names the endpoint's identity, so a proxy that verifies
/// "the destination service" cannot be answered by "the identity service" and vice versa. Connections take
/// ``context`` when they are accepted; a renewal only affects later connections, so nothing is dropped.
///
/// With ``ClientCertificates/required`` the context demands a client certificate chaining to the *current* trust
/// anchors (rebuilt with them whenever the issuer's credentials change): a peer without one, or with one from
/// another CA, fails the handshake. While no issuer is loaded there are no anchors, so every client is refused.
///
/// Renewal failures are logged and retried after ``Configuration/retryDelay`` while the current certificate keeps
/// serving. Call ``prepare()`` before the listener accepts connections and run ``run()`` for as long as it does.
public final class ServingCertificates: Sendable {
    /// Whether the endpoint asks its clients for certificates.
    public enum ClientCertificates: Sendable, Hashable {
        /// No client certificate is requested (the identity service: proxies asking for their first
        /// certificate have none).
        case notRequested
        /// A client certificate chaining to the trust anchors is required; its DNS SAN is the client's identity.
        case required
    }

    /// Where the certificate comes from.
    public enum Source: Sendable, Hashable {
        /// Issued by the identity CA for ``Configuration/identity`` plus the extra names.
        case issued
        /// A chain and key from outside (e.g. a cert-manager Secret), used as is; client certificates, if
        /// required, are still verified against the issuer's anchors.
        case provided(certificateChainPEM: String, privateKeyPEM: String)
    }

    public struct Configuration: Sendable {
        /// The endpoint's identity: the first DNS name of the certificate, which clients verify.
        public var identity: IdentityName
        public var source: Source
        /// More names for an issued certificate (e.g. `apus-destination.apus.svc`, `localhost`).
        public var dnsNames: [String]
        public var ipAddresses: [String]
        /// Lifetime of an issued certificate (nil: the issuer's leaf lifetime).
        public var lifetime: TimeInterval?
        /// Renew after this fraction of the lifetime (clamped to 0.1...0.95).
        public var renewalFraction: Double
        public var clientCertificates: ClientCertificates
        /// ALPN protocols offered, e.g. `["h2"]`.
        public var applicationProtocols: [String]
        public var minimumTLSVersion: TLSVersion
        /// Wait before retrying a failed renewal.
        public var retryDelay: Duration

        public init(
            identity: IdentityName, source: Source = .issued, dnsNames: [String] = [], ipAddresses: [String] = [],
            lifetime: TimeInterval? = nil, renewalFraction: Double = 0.5,
            clientCertificates: ClientCertificates = .notRequested, applicationProtocols: [String] = [],
            minimumTLSVersion: TLSVersion = .tlsv12, retryDelay: Duration = .seconds(5)
        ) {
            self.identity = identity
            self.source = source
            self.dnsNames = dnsNames
            self.ipAddresses = ipAddresses
            self.lifetime = lifetime
            self.renewalFraction = renewalFraction
            self.clientCertificates = clientCertificates
            self.applicationProtocols = applicationProtocols
            self.minimumTLSVersion = minimumTLSVersion
            self.retryDelay = retryDelay
        }
    }

    private struct State {
        var context: NIOSSLContext?
        /// The CA-issued or provided certificate in use; nil for the bootstrap certificate.
        var certificate: Certificate?
        var renewAt = Date.distantFuture
        /// ``IdentityIssuer/generation`` of the credentials the context was built with (-1: none).
        var issuerGeneration = -1
    }

    public let configuration: Configuration
    public let issuer: IdentityIssuer
    private let state = NIOLockedValueBox(State())
    private let logger: Logger

    public init(
        issuer: IdentityIssuer, configuration: Configuration,
        logger: Logger = Logger(label: "apus.identity.serving")
    ) {
        self.issuer = issuer
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "servingIdentity"] = "\(configuration.identity)"
        self.logger = logger
    }

    /// The context for a connection accepted now; nil before ``prepare()``.
    public var context: NIOSSLContext? { state.withLockedValue { $0.context } }

    /// The certificate new connections are served with; nil before ``prepare()`` and while the bootstrap
    /// certificate is in use.
    public var certificate: Certificate? { state.withLockedValue { $0.certificate } }

    /// Whether clients can trust the endpoint yet (an issued or provided certificate, not the bootstrap one).
    public var isTrusted: Bool { certificate != nil }

    /// Builds the first context: the provided certificate, or one issued now when an issuer is loaded, or a
    /// self-signed bootstrap certificate until one is.
    /// - Throws: when a provided certificate or key does not parse, or the bootstrap certificate cannot be made.
    public func prepare() throws {
        switch configuration.source {
        case .provided(let chainPEM, let keyPEM):
            let certificate = try Certificate.parseChain(pem: chainPEM).first
            let generation = issuer.generation
            let context = try makeContext(
                chain: try NIOSSLCertificate.fromPEMBytes(Array(chainPEM.utf8)),
                key: try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem), anchors: issuer.credentials?.anchors
            )
            state.withLockedValue {
                $0 = State(context: context, certificate: certificate, issuerGeneration: generation)
            }
        case .issued:
            if issuer.isReady, renew(reason: "startup") { return }
            let key = try PrivateKey.generateP256()
            var builder = CertificateBuilder(
                commonName: "\(configuration.identity.serviceAccount) bootstrap (issuer not ready)",
                publicKey: try key.publicKey, validity: 365 * 86400)
            builder.dnsNames = [configuration.identity.description]
            builder.extendedKeyUsage = [.serverAuth]
            let certificate = try builder.selfSigned(with: key)
            let context = try makeContext(
                chain: [try NIOSSLCertificate(bytes: try certificate.der, format: .der)],
                key: try NIOSSLPrivateKey(bytes: Array(try key.pemPKCS8.utf8), format: .pem), anchors: nil)
            state.withLockedValue { state in
                // A renewal may have won the race with a freshly loaded issuer; keep its certificate.
                if state.context == nil { state = State(context: context) }
            }
        }
    }

    /// Keeps the context current until cancelled: a new certificate whenever the issuer changes and when the
    /// current one is due; a provided certificate only gets new anchors for client verification.
    public func run() async {
        switch configuration.source {
        case .provided:
            guard configuration.clientCertificates == .required else { return }
            for await _ in issuer.updates() where issuer.generation != generation {
                reloadProvidedAnchors()
            }
        case .issued:
            await withDiscardingTaskGroup { group in
                group.addTask {
                    for await _ in self.issuer.updates() where self.issuer.generation != self.generation {
                        self.renew(reason: "issuer changed")
                    }
                }
                group.addTask { await self.renewWhenDue() }
            }
        }
    }

    private var generation: Int { state.withLockedValue { $0.issuerGeneration } }

    private func renewWhenDue() async {
        while !Task.isCancelled {
            let renewAt = state.withLockedValue { $0.renewAt }
            let wait = min(max(renewAt.timeIntervalSinceNow, 0.05), 60)
            do { try await Task.sleep(for: .seconds(wait)) } catch { return }
            let due = state.withLockedValue { $0.renewAt } <= Date()
            if due, issuer.isReady, !renew(reason: "due") {
                let retry = Date().addingTimeInterval(
                    Double(configuration.retryDelay.components.seconds)
                        + Double(configuration.retryDelay.components.attoseconds) / 1e18)
                state.withLockedValue { $0.renewAt = retry }
            }
        }
    }

    /// Issues a new certificate from the current issuer and switches new connections to it.
    @discardableResult
    private func renew(reason: String) -> Bool {
        do {
            let generation = issuer.generation
            let authority = try issuer.authority()
            let issued = try authority.issueServingCertificate(
                dnsNames: [configuration.identity.description] + configuration.dnsNames,
                ipAddresses: configuration.ipAddresses, lifetime: configuration.lifetime)
            let context = try makeContext(
                chain: try NIOSSLCertificate.fromPEMBytes(Array(issued.certificateChainPEM.utf8)),
                key: try NIOSSLPrivateKey(bytes: Array(try issued.privateKeyPEM.utf8), format: .pem),
                anchors: authority.credentials.anchors)
            let lifetime = issued.notAfter.timeIntervalSince(issued.certificate.notBefore)
            let renewAt = issued.certificate.notBefore.addingTimeInterval(
                lifetime * min(max(configuration.renewalFraction, 0.1), 0.95))
            state.withLockedValue {
                $0 = State(
                    context: context, certificate: issued.certificate, renewAt: renewAt, issuerGeneration: generation)
            }
            logger.info(
                "serving certificate issued",
                metadata: ["reason": "\(reason)", "certificate": "\(issued)", "renewAt": "\(renewAt)"])
            return true
        } catch {
            logger.error("could not issue the serving certificate", metadata: ["error": "\(error)"])
            return false
        }
    }

    private func reloadProvidedAnchors() {
        guard case .provided(let chainPEM, let keyPEM) = configuration.source else { return }
        do {
            let generation = issuer.generation
            let context = try makeContext(
                chain: try NIOSSLCertificate.fromPEMBytes(Array(chainPEM.utf8)),
                key: try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem), anchors: issuer.credentials?.anchors
            )
            state.withLockedValue {
                $0.context = context
                $0.issuerGeneration = generation
            }
            logger.info("client verification switched to the new trust anchors")
        } catch {
            logger.error("could not rebuild the TLS context with the new anchors", metadata: ["error": "\(error)"])
        }
    }

    /// `anchors` nil with required client certificates: nothing can be verified yet, so every client is refused.
    private func makeContext(chain: [NIOSSLCertificate], key: NIOSSLPrivateKey, anchors: [Certificate]?) throws
        -> NIOSSLContext
    {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        tls.minimumTLSVersion = configuration.minimumTLSVersion
        tls.applicationProtocols = configuration.applicationProtocols
        switch configuration.clientCertificates {
        case .notRequested:
            tls.certificateVerification = .none
        case .required:
            // Clients are identified by their certificate's DNS SAN, not by a hostname.
            tls.certificateVerification = .noHostnameVerification
            tls.trustRoots = .certificates(
                try (anchors ?? []).map { try NIOSSLCertificate(bytes: $0.der, format: .der) })
        }
        return try NIOSSLContext(configuration: tls)
    }
}
