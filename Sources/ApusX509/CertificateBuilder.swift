import COpenSSL

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Describes a certificate to issue, then signs it (self-signed or by an issuer).
///
/// The extensions follow what Linkerd's identity issues: ECDSA-SHA256 signatures, a random positive 128-bit
/// serial, SKI/AKI, critical basicConstraints, critical keyUsage (certSign+cRLSign for CAs, digitalSignature for
/// leaves) and an extendedKeyUsage when one is requested.
///
/// ```swift
/// let caKey = try PrivateKey.generateP256()
/// let ca = try CertificateBuilder.certificateAuthority(commonName: "root.linkerd.cluster.local", key: caKey)
///     .selfSigned(with: caKey)
/// let leafKey = try PrivateKey.generateP256()
/// var leaf = try CertificateBuilder(commonName: "web", publicKey: leafKey.publicKey)
/// leaf.dnsNames = ["web.default.svc"]
/// leaf.extendedKeyUsage = [.serverAuth, .clientAuth]
/// let certificate = try leaf.signed(by: ca, key: caKey)
/// ```
public struct CertificateBuilder: Sendable {
    public enum ExtendedKeyUsage: String, Sendable, Hashable, CaseIterable {
        case serverAuth
        case clientAuth
    }

    /// The basicConstraints extension to write.
    public enum BasicConstraints: Sendable, Hashable {
        /// `CA:FALSE`, an end-entity certificate.
        case endEntity
        /// `CA:TRUE`, optionally limiting how many intermediates may follow.
        case certificateAuthority(pathLength: Int?)
    }

    public var commonName: String
    public var publicKey: PublicKey
    public var dnsNames: [String] = []
    /// Textual IPv4 or IPv6 addresses.
    public var ipAddresses: [String] = []
    public var extendedKeyUsage: Set<ExtendedKeyUsage> = []
    public var basicConstraints: BasicConstraints = .endEntity
    public var notBefore: Date
    public var notAfter: Date

    /// An end-entity certificate valid from one minute ago (tolerating clock skew between peers) for `validity`.
    public init(commonName: String, publicKey: PublicKey, validity: TimeInterval = 24 * 3600, now: Date = Date()) {
        self.commonName = commonName
        self.publicKey = publicKey
        self.notBefore = now.addingTimeInterval(-60)
        self.notAfter = now.addingTimeInterval(validity)
    }

    /// A root CA description: `CA:TRUE` without a path length limit, valid for `validity` (default one year).
    public static func certificateAuthority(
        commonName: String, key: PrivateKey, validity: TimeInterval = 365 * 24 * 3600, now: Date = Date()
    ) throws -> CertificateBuilder {
        var builder = CertificateBuilder(
            commonName: commonName, publicKey: try key.publicKey, validity: validity, now: now)
        builder.basicConstraints = .certificateAuthority(pathLength: nil)
        return builder
    }

    /// Signs the certificate with its own key, issuer = subject (a trust anchor). `key` must match ``publicKey``.
    public func selfSigned(with key: PrivateKey) throws -> Certificate {
        try build(issuer: nil, issuerKey: key)
    }

    /// Signs the certificate by `issuer`, whose private key is `key`.
    public func signed(by issuer: Certificate, key: PrivateKey) throws -> Certificate {
        try build(issuer: issuer, issuerKey: key)
    }

    /// Signs the certificate by `issuer` and returns only its DER encoding: the fast path for a CA that hands the
    /// bytes to a client. It writes EC public keys straight into the certificate instead of through
    /// `X509_set_pubkey` (see `SubjectPublicKeyInfoWriter`), which roughly halves the cost of issuing; the
    /// certificate object that skips OpenSSL's key cache never leaves this call.
    public func signedDER(by issuer: Certificate, key: PrivateKey) throws -> [UInt8] {
        try build(issuer: issuer, issuerKey: key, encodeKeyDirectly: true).der
    }

    private func build(issuer: Certificate?, issuerKey: PrivateKey, encodeKeyDirectly: Bool = false) throws
        -> Certificate
    {
        OpenSSLErrorQueue.clear()
        // An end-entity certificate may identify its subject by subjectAltName alone (a workload identity longer
        // than the 64 characters X.509 allows in a common name); anything else needs a name.
        let namedBySAN = basicConstraints == .endEntity && !(dnsNames.isEmpty && ipAddresses.isEmpty)
        guard !commonName.isEmpty || namedBySAN else {
            throw X509Error(
                .invalidInput, "building a certificate: the common name is empty and there is no subjectAltName",
                openSSLErrors: [])
        }
        guard notBefore < notAfter else {
            throw X509Error(
                .invalidInput, "building a certificate: notBefore is not before notAfter", openSSLErrors: [])
        }
        if issuer == nil {
            guard try issuerKey.publicKey == publicKey else {
                throw X509Error(
                    .invalidInput, "self-signing: the signing key does not match the certificate's public key",
                    openSSLErrors: [])
            }
        }
        let operation = "building certificate for \(commonName.isEmpty ? dnsNames.first ?? "" : commonName)"
        guard let x509 = X509_new() else { throw X509Error.fromQueue(.signingFailed, operation) }
        let certificate = Certificate(taking: x509)  // owns x509 from here on, also on error paths

        func check(_ result: Int32, _ step: String) throws {
            guard result == 1 else { throw X509Error.fromQueue(.signingFailed, "\(operation): \(step)") }
        }
        try check(X509_set_version(x509, 2), "setting version")  // 2 means X.509 v3
        try setRandomSerial(x509, operation: operation)
        try SubjectPublicKeyInfoWriter.write(
            publicKey.pointer, into: encodeKeyDirectly ? X509_get_X509_PUBKEY(x509) : nil,
            fallback: { X509_set_pubkey(x509, publicKey.pointer) }, operation: operation)
        try setSubject(x509, operation: operation)
        let issuerName = issuer.map { X509_get_subject_name($0.pointer) } ?? X509_get_subject_name(x509)
        try check(X509_set_issuer_name(x509, issuerName), "setting issuer name")
        guard ASN1_TIME_set(X509_getm_notBefore(x509), Self.epochSeconds(notBefore)) != nil,
            ASN1_TIME_set(X509_getm_notAfter(x509), Self.epochSeconds(notAfter)) != nil
        else { throw X509Error.fromQueue(.signingFailed, "\(operation): setting validity") }

        var context = X509V3_CTX()
        X509V3_set_ctx(&context, issuer?.pointer ?? x509, x509, nil, nil, 0)
        try check(X509V3_set_issuer_pkey(&context, issuerKey.pointer), "setting issuer key")
        switch basicConstraints {
        case .endEntity:
            try addExtension(x509, &context, NID_basic_constraints, "critical,CA:FALSE", operation)
            try addExtension(x509, &context, NID_key_usage, "critical,digitalSignature", operation)
        case .certificateAuthority(let pathLength):
            let value = pathLength.map { "critical,CA:TRUE,pathlen:\(max(0, $0))" } ?? "critical,CA:TRUE"
            try addExtension(x509, &context, NID_basic_constraints, value, operation)
            try addExtension(x509, &context, NID_key_usage, "critical,keyCertSign,cRLSign", operation)
        }
        if !extendedKeyUsage.isEmpty {
            let value = ExtendedKeyUsage.allCases.filter(extendedKeyUsage.contains).map(\.rawValue)
            try addExtension(x509, &context, NID_ext_key_usage, value.joined(separator: ","), operation)
        }
        try addExtension(x509, &context, NID_subject_key_identifier, "hash", operation)
        if issuer != nil {
            try addExtension(x509, &context, NID_authority_key_identifier, "keyid:always", operation)
        }
        try addSubjectAltNames(x509, operation: operation)
        guard X509_sign(x509, issuerKey.pointer, EVP_sha256()) > 0 else {
            throw X509Error.fromQueue(.signingFailed, "\(operation): signing")
        }
        return certificate
    }

    private static func epochSeconds(_ date: Date) -> Int {
        Int(date.timeIntervalSince1970.rounded(.down))
    }

    private func setRandomSerial(_ x509: OpaquePointer, operation: String) throws {
        var bytes = [UInt8](repeating: 0, count: 16)
        guard RAND_bytes(&bytes, Int32(bytes.count)) == 1 else {
            throw X509Error.fromQueue(.signingFailed, "\(operation): generating serial")
        }
        // Serials must be positive; also keep the top byte non-zero so every serial is a full 128 bits.
        bytes[0] = (bytes[0] & 0x7f) | 0x40
        guard let number = BN_bin2bn(bytes, Int32(bytes.count), nil) else {
            throw X509Error.fromQueue(.signingFailed, "\(operation): generating serial")
        }
        defer { BN_free(number) }
        guard BN_to_ASN1_INTEGER(number, X509_get_serialNumber(x509)) != nil else {
            throw X509Error.fromQueue(.signingFailed, "\(operation): setting serial")
        }
    }

    private func setSubject(_ x509: OpaquePointer, operation: String) throws {
        guard let name = X509_NAME_new() else { throw X509Error.fromQueue(.signingFailed, operation) }
        defer { X509_NAME_free(name) }
        let bytes = Array(commonName.utf8)
        guard
            bytes.isEmpty
                || X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, bytes, Int32(bytes.count), -1, 0)
                    == 1
        else {
            throw X509Error.fromQueue(.invalidInput, "\(operation): common name rejected (at most 64 characters)")
        }
        guard X509_set_subject_name(x509, name) == 1 else {
            throw X509Error.fromQueue(.signingFailed, "\(operation): setting subject")
        }
    }

    private func addExtension(
        _ x509: OpaquePointer, _ context: inout X509V3_CTX, _ nid: Int32, _ value: String, _ operation: String
    ) throws {
        guard let extensionValue = X509V3_EXT_conf_nid(nil, &context, nid, value) else {
            throw X509Error.fromQueue(.signingFailed, "\(operation): extension \(value)")
        }
        defer { X509_EXTENSION_free(extensionValue) }
        guard X509_add_ext(x509, extensionValue, -1) == 1 else {
            throw X509Error.fromQueue(.signingFailed, "\(operation): adding extension \(value)")
        }
    }

    /// Writes the SAN extension; critical when the subject is empty, as RFC 5280 §4.2.1.6 requires.
    private func addSubjectAltNames(_ x509: OpaquePointer, operation: String) throws {
        let names = dnsNames.map(SubjectAltName.dns) + ipAddresses.map(SubjectAltName.ipAddress)
        guard !names.isEmpty else { return }
        let stack = try GeneralNames.make(names, operation: operation)
        defer { GENERAL_NAMES_free(stack) }
        let critical: Int32 = commonName.isEmpty ? 1 : 0
        guard
            X509_add1_ext_i2d(
                x509, NID_subject_alt_name, UnsafeMutableRawPointer(stack), critical, UInt(X509V3_ADD_DEFAULT))
                == 1
        else { throw X509Error.fromQueue(.signingFailed, "\(operation): adding subjectAltName") }
    }
}
