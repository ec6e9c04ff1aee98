import ApusX509

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// The trust anchors and the issuer (an intermediate CA certificate and its key) the CA signs with, checked once
/// when loaded so a misconfiguration is reported when the Secret or file is read, not on the first Certify call.
///
/// Checks: every anchor and the issuer are CAs (basicConstraints `CA:TRUE`), the issuer is valid at `now`, the key
/// is the issuer certificate's key, and the issuer chains to an anchor through the certificates that follow it in
/// `issuerCertificatePEM` (a cert-manager `tls.crt` may carry the chain). Failures are ``IdentityError/Code/invalidIssuer``
/// with a message naming the certificate and the reason; messages never contain key material.
public struct IssuerCredentials: Sendable {
    public let anchors: [Certificate]
    public let issuer: Certificate
    /// Certificates between the issuer and the anchors (often none), in chain order.
    public let intermediates: [Certificate]
    let key: PrivateKey
    /// DER of the issuer followed by ``intermediates``: the `intermediateCertificates` of every Certify response,
    /// encoded once here instead of per request.
    let chainDER: [[UInt8]]
    /// The anchors re-encoded as one PEM bundle (what proxies and `ca-bundle.crt` need).
    public let anchorsPEM: String
    /// The issuer followed by ``intermediates`` as PEM, for serving certificates' chains.
    public let issuerChainPEM: String

    public var issuerExpiry: Date { issuer.notAfter }

    /// Parses and validates PEM text as found in the `apus-identity-trust-roots` ConfigMap and the
    /// `apus-identity-issuer` Secret.
    public init(anchorsPEM: String, issuerCertificatePEM: String, issuerKeyPEM: String, now: Date = Date())
        throws(IdentityError)
    {
        let anchors: [Certificate]
        let chain: [Certificate]
        let key: PrivateKey
        do {
            anchors = try Certificate.parseChain(pem: anchorsPEM)
        } catch {
            throw IdentityError(.invalidIssuer, "trust anchors: not a PEM certificate bundle (\(error))")
        }
        do {
            chain = try Certificate.parseChain(pem: issuerCertificatePEM)
        } catch {
            throw IdentityError(.invalidIssuer, "issuer certificate: not PEM certificates (\(error))")
        }
        do {
            key = try PrivateKey(pem: issuerKeyPEM)
        } catch {
            // The error carries OpenSSL's reason only, never the PEM text.
            throw IdentityError(.invalidIssuer, "issuer key: not an unencrypted PEM private key (\(error))")
        }
        guard let issuer = chain.first else {
            throw IdentityError(.invalidIssuer, "issuer certificate: no certificate")
        }
        try self.init(anchors: anchors, issuer: issuer, intermediates: Array(chain.dropFirst()), key: key, now: now)
    }

    /// Validates already parsed credentials (e.g. freshly generated ones).
    public init(
        anchors: [Certificate], issuer: Certificate, intermediates: [Certificate] = [], key: PrivateKey,
        now: Date = Date()
    ) throws(IdentityError) {
        guard !anchors.isEmpty else { throw IdentityError(.invalidIssuer, "trust anchors: the bundle is empty") }
        for anchor in anchors where !anchor.isCA {
            throw IdentityError(
                .invalidIssuer, "trust anchor '\(Self.name(anchor))' is not a CA (basicConstraints CA:TRUE missing)")
        }
        let issuerName = Self.name(issuer)
        guard issuer.isCA else {
            throw IdentityError(
                .invalidIssuer, "issuer '\(issuerName)' is not a CA (basicConstraints CA:TRUE missing)")
        }
        guard issuer.notAfter > now else {
            throw IdentityError(
                .invalidIssuer, "issuer '\(issuerName)' expired at \(Self.format(issuer.notAfter))")
        }
        guard issuer.notBefore <= now else {
            throw IdentityError(
                .invalidIssuer, "issuer '\(issuerName)' is not valid before \(Self.format(issuer.notBefore))")
        }
        guard issuer.matches(privateKey: key) else {
            throw IdentityError(
                .invalidIssuer, "issuer key does not match the public key of issuer certificate '\(issuerName)'")
        }
        do {
            try issuer.verify(anchors: anchors, intermediates: intermediates, at: now)
        } catch {
            let reason = error.openSSLErrors.joined(separator: "; ")
            throw IdentityError(
                .invalidIssuer,
                "issuer '\(issuerName)' does not chain to the trust anchors: \(reason) (\(error.operation))")
        }
        do {
            chainDER = try ([issuer] + intermediates).map { try $0.der }
            anchorsPEM = try anchors.map { try $0.pem }.joined()
            issuerChainPEM = try ([issuer] + intermediates).map { try $0.pem }.joined()
        } catch {
            throw IdentityError(.invalidIssuer, "encoding the issuer chain: \(error)")
        }
        self.anchors = anchors
        self.issuer = issuer
        self.intermediates = intermediates
        self.key = key
    }

    /// The issuer's private key as PKCS#8 PEM, for writing the issuer Secret right after generating it. Keep it out
    /// of logs and Events.
    public var issuerKeyPEM: String {
        get throws(IdentityError) {
            do { return try key.pemPKCS8 } catch {
                throw IdentityError(.invalidIssuer, "encoding the issuer key: \(error)")
            }
        }
    }

    static func name(_ certificate: Certificate) -> String {
        certificate.subjectCommonName ?? certificate.dnsNames.first ?? "serial \(certificate.serialNumber)"
    }

    static func format(_ date: Date) -> String { date.formatted(.iso8601) }
}
