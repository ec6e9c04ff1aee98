import ApusX509

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Issues workload identities from one set of ``IssuerCredentials``.
///
/// Thread-safe: all state is immutable after `init` (OpenSSL 3 allows concurrent signing with one key), so callers
/// issue from any number of tasks at once. Issuing is CPU-only (parse + verify the CSR, build + sign the leaf);
/// swapping the issuer means building a new `CertificateAuthority`.
public final class CertificateAuthority: Sendable {
    public let credentials: IssuerCredentials
    /// How long a leaf is valid, before adding ``clockSkew`` on both sides.
    public let leafLifetime: TimeInterval
    /// Tolerance for clocks that differ between the CA and the peers checking the leaf.
    public let clockSkew: TimeInterval

    /// Curves accepted for workload keys. Linkerd's proxies use P-256; P-384 costs more but is as sound.
    static let acceptedCurves: Set<String> = ["P-256", "P-384"]

    public init(credentials: IssuerCredentials, leafLifetime: TimeInterval = 86400, clockSkew: TimeInterval = 20) {
        self.credentials = credentials
        self.leafLifetime = leafLifetime
        self.clockSkew = clockSkew
    }

    /// Checks the CSR (signature, exactly one DNS SAN equal to `identity`, CN empty or equal, no other SAN kinds,
    /// an EC P-256/P-384 key) and issues a leaf: EKU serverAuth+clientAuth, KU digitalSignature, the DNS SAN,
    /// validity `[now - skew, now + lifetime + skew]` cut at the issuer's own expiry (a leaf cannot outlive the
    /// certificate that vouches for it).
    ///
    /// Only the CSR's key is used: its other extensions (e.g. a requested `CA:TRUE`) are ignored, never copied.
    public func issue(csrDER: [UInt8], identity: IdentityName, now: Date = Date()) throws(IdentityError)
        -> CertifyResponse
    {
        let request = try checkedRequest(csrDER, identity: identity)
        let issuer = credentials.issuer
        guard issuer.notAfter > now else {
            throw IdentityError(
                .issuerNotReady,
                "issuer '\(IssuerCredentials.name(issuer))' expired at \(IssuerCredentials.format(issuer.notAfter)); "
                    + "load a new issuer")
        }
        let name = identity.description
        do {
            // X.509 limits a common name to 64 characters; longer identities live in the SAN alone. The builder is
            // given the key rather than the request: `checkedRequest` verified the signature already, and a second
            // verification would be a quarter of the cost of issuing.
            var builder = CertificateBuilder(
                commonName: name.utf8.count <= 64 ? name : "", publicKey: try request.publicKey,
                validity: leafLifetime + clockSkew, now: now)
            builder.notBefore = now.addingTimeInterval(-clockSkew)
            builder.notAfter = min(builder.notAfter, issuer.notAfter)
            builder.dnsNames = [name]
            builder.extendedKeyUsage = [.serverAuth, .clientAuth]
            let leaf = try builder.signedDER(by: issuer, key: credentials.key)
            // X.509 validity has whole seconds; the builder writes notAfter rounded down.
            let validUntil = Date(timeIntervalSince1970: builder.notAfter.timeIntervalSince1970.rounded(.down))
            return CertifyResponse(
                leafCertificate: leaf, intermediateCertificates: credentials.chainDER, validUntil: validUntil)
        } catch {
            throw IdentityError(.invalidIssuer, "issuing '\(name)' failed: \(error)")
        }
    }

    /// Issues a server certificate with a fresh P-256 key for the controller's own endpoints (webhook, destination,
    /// identity), from the same issuer so proxies trust it through the anchors they already have.
    public func issueServingCertificate(
        dnsNames: [String], ipAddresses: [String] = [], lifetime: TimeInterval? = nil, now: Date = Date()
    ) throws(IdentityError) -> ServingCertificate {
        guard let first = dnsNames.first ?? ipAddresses.first else {
            throw IdentityError(.invalidName, "a serving certificate needs at least one DNS name or IP address")
        }
        do {
            let key = try PrivateKey.generateP256()
            var builder = CertificateBuilder(
                commonName: first.utf8.count <= 64 ? first : "", publicKey: try key.publicKey,
                validity: (lifetime ?? leafLifetime) + clockSkew, now: now)
            builder.notBefore = now.addingTimeInterval(-clockSkew)
            builder.notAfter = min(builder.notAfter, credentials.issuer.notAfter)
            builder.dnsNames = dnsNames
            builder.ipAddresses = ipAddresses
            builder.extendedKeyUsage = [.serverAuth]
            let certificate = try builder.signed(by: credentials.issuer, key: credentials.key)
            return ServingCertificate(
                certificate: certificate, privateKey: key,
                certificateChainPEM: try certificate.pem + credentials.issuerChainPEM)
        } catch {
            throw IdentityError(.invalidName, "issuing a serving certificate for \(first): \(error)")
        }
    }

    /// Parses the CSR and applies every check that does not need the issuer.
    private func checkedRequest(_ der: [UInt8], identity: IdentityName) throws(IdentityError)
        -> CertificateSigningRequest
    {
        guard !der.isEmpty else {
            throw IdentityError(.missingField, "certificateSigningRequest is empty")
        }
        let request: CertificateSigningRequest
        do {
            request = try CertificateSigningRequest(der: der)
        } catch {
            if der.starts(with: Array("-----BEGIN".utf8)) {
                throw IdentityError(.badCSR, "the CSR is PEM text; the Certify API carries the DER bytes")
            }
            throw IdentityError(.badCSR, "the CSR is not DER-encoded PKCS#10 (\(error.openSSLSummary))")
        }
        guard request.isSignatureValid else {
            throw IdentityError(
                .badCSR,
                "the CSR's signature does not verify with the public key it carries (the sender does not prove it "
                    + "holds the private key)")
        }
        let curve = (try? request.publicKey)?.curveName
        guard let curve, Self.acceptedCurves.contains(curve) else {
            throw IdentityError(
                .badCSR, "the CSR's key is \(curve.map { "EC \($0)" } ?? "not an EC key"); identities use ECDSA P-256")
        }
        let names = request.subjectAltNames
        let others = names.filter { if case .dns = $0 { false } else { true } }
        guard others.isEmpty else {
            throw IdentityError(
                .badCSR,
                "the CSR asks for \(others.map(\.description).joined(separator: ", ")); only one DNS name, the "
                    + "identity, may be requested")
        }
        let expected = identity.description
        let dnsNames = request.dnsNames
        guard dnsNames.count == 1, let dnsName = dnsNames.first else {
            throw IdentityError(
                .badCSR,
                dnsNames.isEmpty
                    ? "the CSR has no DNS subjectAltName; it must name the identity '\(expected)'"
                    : "the CSR has \(dnsNames.count) DNS names (\(dnsNames.joined(separator: ", "))); exactly one, "
                        + "the identity '\(expected)', is allowed")
        }
        guard dnsName == expected else {
            throw IdentityError(
                .identityMismatch, "the CSR asks for '\(dnsName)' but the requester's identity is '\(expected)'")
        }
        if let commonName = request.subjectCommonName, !commonName.isEmpty, commonName != expected {
            throw IdentityError(
                .badCSR, "the CSR's common name '\(commonName)' differs from its DNS name '\(expected)'; leave it empty"
            )
        }
        return request
    }
}

/// A certificate and key for one of the controller's own TLS endpoints. `description` leaves the key out, so
/// logging the value is safe.
public struct ServingCertificate: Sendable, CustomStringConvertible {
    public let certificate: Certificate
    public let privateKey: PrivateKey
    /// The leaf followed by the issuer chain, as a TLS server presents it.
    public let certificateChainPEM: String

    public var notAfter: Date { certificate.notAfter }

    /// The key as PKCS#8 PEM, for `tls.key` or a NIOSSL context.
    public var privateKeyPEM: String {
        get throws(IdentityError) {
            do { return try privateKey.pemPKCS8 } catch {
                throw IdentityError(.invalidIssuer, "encoding a serving key: \(error)")
            }
        }
    }

    public var description: String {
        "ServingCertificate(names: \(certificate.dnsNames + certificate.ipAddresses), notAfter: "
            + "\(IssuerCredentials.format(notAfter)))"
    }
}

extension Error {
    /// OpenSSL's reasons for an ``X509Error``, otherwise the error's description.
    var openSSLSummary: String {
        guard let error = self as? X509Error else { return "\(self)" }
        return error.openSSLErrors.isEmpty ? error.operation : error.openSSLErrors.joined(separator: "; ")
    }
}
