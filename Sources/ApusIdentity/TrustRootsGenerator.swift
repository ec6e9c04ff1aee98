import ApusX509

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Generates a fresh trust root and issuer for `apus install` and local mode, shaped like the ones Linkerd's docs
/// make with `step certificate create`: an ECDSA P-256 root `root.<control-ns>.<trust-domain>` (CA, pathlen 1) and
/// an issuer `identity.<control-ns>.<trust-domain>` (CA, pathlen 0) signed by it, both with SKI, the issuer with AKI.
public enum TrustRootsGenerator {
    /// Returns the root as the anchors bundle, the issuer certificate and the issuer key (PKCS#8 PEM). The root's
    /// key is discarded: rotating the issuer later means generating a new root too, or bringing one's own.
    /// Both validities start one minute before `now`, so nodes with slightly late clocks accept them at once.
    public static func generate(
        trustDomain: String = "cluster.local", controlNamespace: String = "apus",
        rootValidity: TimeInterval = 10 * 365 * 86400, issuerValidity: TimeInterval = 365 * 86400, now: Date = Date()
    ) throws(IdentityError) -> (anchorsPEM: String, issuerCertificatePEM: String, issuerKeyPEM: String) {
        try IdentityName.checkLabel(controlNamespace, "control namespace")
        try IdentityName.checkTrustDomain(trustDomain)
        guard rootValidity > 0, issuerValidity > 0 else {
            throw IdentityError(.invalidIssuer, "root and issuer validity must be positive")
        }
        guard issuerValidity <= rootValidity else {
            throw IdentityError(
                .invalidIssuer,
                "issuer validity (\(issuerValidity) s) exceeds the root's (\(rootValidity) s); the issuer would "
                    + "outlive the root it chains to")
        }
        do {
            let rootKey = try PrivateKey.generateP256()
            var root = try CertificateBuilder.certificateAuthority(
                commonName: "root.\(controlNamespace).\(trustDomain)", key: rootKey, validity: rootValidity, now: now)
            root.basicConstraints = .certificateAuthority(pathLength: 1)
            let rootCertificate = try root.selfSigned(with: rootKey)

            let issuerKey = try PrivateKey.generateP256()
            var issuer = try CertificateBuilder.certificateAuthority(
                commonName: IdentityName.issuerName(controlNamespace: controlNamespace, trustDomain: trustDomain),
                key: issuerKey, validity: issuerValidity, now: now)
            issuer.basicConstraints = .certificateAuthority(pathLength: 0)
            let issuerCertificate = try issuer.signed(by: rootCertificate, key: rootKey)
            return (try rootCertificate.pem, try issuerCertificate.pem, try issuerKey.pemPKCS8)
        } catch {
            throw IdentityError(.invalidIssuer, "generating trust roots: \(error)")
        }
    }
}
