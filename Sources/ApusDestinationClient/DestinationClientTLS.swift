import ApusIdentity
import ApusIdentityClient
import NIOSSL

/// The proxy's side of the mutual TLS with the destination server: the client certificate it presents and the
/// anchors it verifies the server with.
///
/// Read again for every new connection, so a proxy whose ``IdentityClient`` refreshed its certificate uses the new
/// one on the next (re)connection while open streams keep theirs. The server refuses a connection without a
/// certificate chaining to the trust anchors; the certificate's DNS SAN is the identity the server records.
public struct DestinationClientTLS: Sendable {
    let makeConfiguration: @Sendable () throws -> TLSConfiguration

    /// A configuration made elsewhere; it should present a client certificate and verify the server fully.
    public static func configuration(_ configuration: TLSConfiguration) -> DestinationClientTLS {
        DestinationClientTLS { configuration }
    }

    /// Fixed credentials, e.g. a certificate obtained once with ``IdentityClient/certify()``.
    public static func credentials(_ credentials: IdentityCredentials) -> DestinationClientTLS {
        DestinationClientTLS { try credentials.makeClientConfiguration() }
    }

    /// Whatever `client` last certified; a connection attempt before its first certificate fails with
    /// ``DestinationClientError/Code/noClientCertificate`` and is retried with the usual backoff.
    public static func identity(_ client: IdentityClient) -> DestinationClientTLS {
        DestinationClientTLS {
            guard let credentials = client.credentials else {
                let reason = client.lastError.map { "\($0)" } ?? "not certified yet"
                throw DestinationClientError(.noClientCertificate, "the proxy has no identity certificate: \(reason)")
            }
            return try credentials.makeClientConfiguration()
        }
    }

    /// A client certificate chain (leaf first), its key and the trust anchors, as PEM (e.g. files mounted into
    /// the pod). Parsed now, so a bad file is reported at construction rather than on every reconnection.
    /// - Throws: ``DestinationClientError/Code/noClientCertificate`` naming what does not parse.
    public static func pem(
        certificateChainPEM: String, privateKeyPEM: String, trustAnchorsPEM: String
    ) throws(DestinationClientError) -> DestinationClientTLS {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        let anchors: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMBytes(Array(certificateChainPEM.utf8))
        } catch {
            throw DestinationClientError(.noClientCertificate, "the client certificate chain does not parse: \(error)")
        }
        do {
            key = try NIOSSLPrivateKey(bytes: Array(privateKeyPEM.utf8), format: .pem)
        } catch {
            throw DestinationClientError(.noClientCertificate, "the client private key does not parse: \(error)")
        }
        do {
            anchors = try NIOSSLCertificate.fromPEMBytes(Array(trustAnchorsPEM.utf8))
        } catch {
            throw DestinationClientError(.noClientCertificate, "the trust anchors do not parse: \(error)")
        }
        guard !chain.isEmpty else {
            throw DestinationClientError(.noClientCertificate, "the client certificate chain holds no certificate")
        }
        guard !anchors.isEmpty else {
            throw DestinationClientError(.noClientCertificate, "the trust anchors bundle holds no certificate")
        }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.certificateVerification = .fullVerification
        configuration.certificateChain = chain.map { .certificate($0) }
        configuration.privateKey = .privateKey(key)
        configuration.trustRoots = .certificates(anchors)
        return .configuration(configuration)
    }
}

extension DestinationProtocol {
    /// The ServiceAccount part of the destination server's identity (Linkerd's is `linkerd-destination`).
    public static let serverServiceAccount = "apus-destination"

    /// The identity the destination server's certificate names and proxies verify:
    /// `apus-destination.<control-ns>.serviceaccount.identity.<control-ns>.<trust-domain>`.
    public static func serverIdentity(controlNamespace: String = "apus", trustDomain: String = "cluster.local")
        -> IdentityName
    {
        IdentityName(
            serviceAccount: serverServiceAccount, namespace: controlNamespace, controlNamespace: controlNamespace,
            trustDomain: trustDomain)
    }
}
