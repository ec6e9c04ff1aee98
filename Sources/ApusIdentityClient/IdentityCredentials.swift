import ApusIdentity
import ApusX509
import NIOSSL

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The proxy's current identity: its private key (generated in memory, never sent anywhere), the leaf the
/// controller issued for it, and the chain up to (not including) the trust anchors.
///
/// A value: each refresh produces a new one, so a TLS context built from one never changes under a connection.
/// `description` leaves the key out.
public struct IdentityCredentials: Sendable, CustomStringConvertible {
    public let identity: IdentityName
    public let privateKey: PrivateKey
    public let leaf: Certificate
    public let intermediates: [Certificate]
    /// The leaf's notAfter, as the controller reported it.
    public let validUntil: Date
    /// The trust anchors peers' certificates must chain to.
    public let anchors: [Certificate]

    public init(
        identity: IdentityName, privateKey: PrivateKey, leaf: Certificate, intermediates: [Certificate],
        validUntil: Date, anchors: [Certificate]
    ) {
        self.identity = identity
        self.privateKey = privateKey
        self.leaf = leaf
        self.intermediates = intermediates
        self.validUntil = validUntil
        self.anchors = anchors
    }

    /// Whether the leaf has expired at `now`.
    public func isExpired(at now: Date = Date()) -> Bool { validUntil <= now }

    /// The leaf followed by the intermediates, PEM, as a TLS endpoint presents them.
    public var certificateChainPEM: String {
        get throws { try ([leaf] + intermediates).map { try $0.pem }.joined() }
    }

    public var description: String {
        "IdentityCredentials(\(identity), validUntil: \(validUntil.formatted(.iso8601)), "
            + "chain: \(1 + intermediates.count) certificates)"
    }

    // MARK: - TLS

    /// A server context for mesh traffic: presents this identity, TLS 1.3 only (as Linkerd's proxies), and
    /// verifies client certificates against the anchors, required or optional.
    ///
    /// Build a new context for each new set of credentials and give it to *new* connections only; connections
    /// already established keep the context (and certificate) they started with, so rotation drops nothing.
    /// The identity a peer proves is its certificate's DNS SAN, which the caller checks after the handshake.
    public func makeServerContext(requireClientCertificate: Bool = true) throws -> NIOSSLContext {
        try NIOSSLContext(
            configuration: try makeServerConfiguration(requireClientCertificate: requireClientCertificate))
    }

    /// The configuration behind ``makeServerContext(requireClientCertificate:)``, for callers that add to it
    /// (e.g. the ALPN protocols a proxy's inbound listener offers).
    public func makeServerConfiguration(requireClientCertificate: Bool = true) throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try sslCertificateChain(), privateKey: .privateKey(try sslPrivateKey()))
        configuration.minimumTLSVersion = .tlsv13
        configuration.trustRoots = .certificates(try sslAnchors())
        configuration.certificateVerification =
            requireClientCertificate ? .noHostnameVerification : .optionalVerification
        return configuration
    }

    /// A client context for mesh traffic: presents this identity and verifies the server against the anchors.
    /// Pass the identity expected of the server as `serverHostname` of the `NIOSSLClientHandler`; the handshake
    /// then fails unless the server's certificate names exactly that identity.
    public func makeClientContext() throws -> NIOSSLContext {
        try NIOSSLContext(configuration: try makeClientConfiguration())
    }

    /// The configuration behind ``makeClientContext()``, for callers that add to it (e.g. ALPN `h2`).
    public func makeClientConfiguration() throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv13
        configuration.certificateChain = try sslCertificateChain()
        configuration.privateKey = .privateKey(try sslPrivateKey())
        configuration.trustRoots = .certificates(try sslAnchors())
        configuration.certificateVerification = .fullVerification
        return configuration
    }

    private func sslCertificateChain() throws -> [NIOSSLCertificateSource] {
        try ([leaf] + intermediates).map { .certificate(try NIOSSLCertificate(bytes: try $0.der, format: .der)) }
    }

    private func sslPrivateKey() throws -> NIOSSLPrivateKey {
        try NIOSSLPrivateKey(bytes: Array(try privateKey.pemPKCS8.utf8), format: .pem)
    }

    private func sslAnchors() throws -> [NIOSSLCertificate] {
        try anchors.map { try NIOSSLCertificate(bytes: try $0.der, format: .der) }
    }
}
