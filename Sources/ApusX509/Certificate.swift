import COpenSSL

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A parsed X.509 certificate.
///
/// Wraps an OpenSSL `X509` freed on deinit. `@unchecked Sendable` is sound because a `Certificate` is never
/// mutated once parsed or signed: every accessor only reads, and OpenSSL 3 computes its lazily cached extension data
/// under the certificate's own lock.
///
/// ```swift
/// let certificate = try Certificate(pem: pem)
/// certificate.subjectCommonName   // "web.default.serviceaccount.identity.linkerd.cluster.local"
/// certificate.isSigned(by: issuer)
/// ```
public final class Certificate: @unchecked Sendable, Equatable, CustomStringConvertible {
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit { X509_free(pointer) }

    /// Parses the first `CERTIFICATE` block of a PEM text.
    public convenience init(pem: String) throws {
        OpenSSLErrorQueue.clear()
        let operation = "parsing certificate PEM"
        let certificate = try MemoryBIO.reading(Array(pem.utf8), operation: operation) { bio in
            PEM_read_bio_X509(bio, nil, nil, nil)
        }
        guard let certificate else { throw X509Error.fromQueue(.invalidPEM, operation) }
        self.init(taking: certificate)
    }

    /// Parses DER.
    public convenience init(der: [UInt8]) throws {
        OpenSSLErrorQueue.clear()
        let certificate = der.withUnsafeBufferPointer { buffer -> OpaquePointer? in
            var cursor = buffer.baseAddress
            return d2i_X509(nil, &cursor, buffer.count)
        }
        guard let certificate else { throw X509Error.fromQueue(.invalidDER, "parsing certificate DER") }
        self.init(taking: certificate)
    }

    /// Parses every `CERTIFICATE` block of a bundle (a chain or a set of trust anchors), in order.
    ///
    /// Throws ``X509Error/Code/invalidPEM`` when the text holds no certificate at all or a block is corrupt; a
    /// bundle is all-or-nothing so a truncated trust bundle is never silently accepted.
    public static func parseChain(pem: String) throws -> [Certificate] {
        OpenSSLErrorQueue.clear()
        let operation = "parsing certificate bundle PEM"
        let blocks = pem.components(separatedBy: "-----BEGIN CERTIFICATE-----").dropFirst()
        guard !blocks.isEmpty else { throw X509Error(.invalidPEM, operation, openSSLErrors: ["no CERTIFICATE block"]) }
        return try blocks.map { try Certificate(pem: "-----BEGIN CERTIFICATE-----" + $0) }
    }

    /// PEM `-----BEGIN CERTIFICATE-----` text, newline-terminated.
    public var pem: String {
        get throws {
            OpenSSLErrorQueue.clear()
            let bytes = try MemoryBIO.writing(operation: "writing certificate PEM") { PEM_write_bio_X509($0, pointer) }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    /// DER encoding.
    public var der: [UInt8] {
        get throws {
            OpenSSLErrorQueue.clear()
            return try encodeDER(operation: "encoding certificate DER") { i2d_X509(pointer, $0) }
        }
    }

    /// The subject's first common name, or `nil` when the subject has none.
    public var subjectCommonName: String? { Self.commonName(of: X509_get_subject_name(pointer)) }

    /// The issuer's first common name.
    public var issuerCommonName: String? { Self.commonName(of: X509_get_issuer_name(pointer)) }

    /// Every subjectAltName entry, in certificate order.
    public var subjectAltNames: [SubjectAltName] {
        guard let raw = X509_get_ext_d2i(pointer, NID_subject_alt_name, nil, nil) else {
            OpenSSLErrorQueue.clear()
            return []
        }
        let names = OpaquePointer(raw)
        defer { GENERAL_NAMES_free(names) }
        return GeneralNames.read(names)
    }

    /// DNS names from the subjectAltName extension, in certificate order.
    public var dnsNames: [String] {
        subjectAltNames.compactMap { if case .dns(let name) = $0 { name } else { nil } }
    }

    /// IP addresses from the subjectAltName extension in textual form (`10.0.0.1`, `::1`).
    public var ipAddresses: [String] {
        subjectAltNames.compactMap { if case .ipAddress(let address) = $0 { address } else { nil } }
    }

    /// The extendedKeyUsage purposes this module knows, empty when the extension is absent.
    public var extendedKeyUsage: Set<CertificateBuilder.ExtendedKeyUsage> {
        let flags = X509_get_extended_key_usage(pointer)
        // Without the extension OpenSSL reports every purpose as allowed (UINT32_MAX); report what is written.
        guard X509_get_ext_by_NID(pointer, NID_ext_key_usage, -1) >= 0 else { return [] }
        var usages: Set<CertificateBuilder.ExtendedKeyUsage> = []
        if flags & UInt32(XKU_SSL_SERVER) != 0 { usages.insert(.serverAuth) }
        if flags & UInt32(XKU_SSL_CLIENT) != 0 { usages.insert(.clientAuth) }
        return usages
    }

    public var notBefore: Date { Self.date(X509_get0_notBefore(pointer)) }

    public var notAfter: Date { Self.date(X509_get0_notAfter(pointer)) }

    /// Whether basicConstraints says `CA:TRUE`. Certificates without the extension are not CAs here, unlike
    /// OpenSSL's `X509_check_ca`, which also trusts v1 self-signed certificates: a mesh never issues those.
    public var isCA: Bool { basicConstraints?.isCA ?? false }

    /// The basicConstraints pathLenConstraint, when the certificate is a CA and sets one.
    public var pathLengthConstraint: Int? { basicConstraints?.pathLength }

    /// The serial number as lower-case hex without separators or leading zero bytes.
    public var serialNumber: String {
        guard let serial = X509_get0_serialNumber(pointer),
            let number = ASN1_INTEGER_to_BN(serial, nil)
        else { return "" }
        defer { BN_free(number) }
        var bytes = [UInt8](repeating: 0, count: Int((BN_num_bits(number) + 7) / 8))
        _ = BN_bn2bin(number, &bytes)
        return bytes.isEmpty ? "0" : hexString(bytes)
    }

    /// The subjectKeyIdentifier extension bytes, if present.
    public var subjectKeyIdentifier: [UInt8]? {
        X509_get0_subject_key_id(pointer).map { asn1Bytes($0) }
    }

    /// The keyIdentifier of the authorityKeyIdentifier extension, if present; equals the issuer's
    /// ``subjectKeyIdentifier`` for certificates this module issues.
    public var authorityKeyIdentifier: [UInt8]? {
        X509_get0_authority_key_id(pointer).map { asn1Bytes($0) }
    }

    /// The certified public key.
    public var publicKey: PublicKey {
        get throws {
            guard let key = X509_get_pubkey(pointer) else {
                throw X509Error.fromQueue(.invalidDER, "reading the certificate's public key")
            }
            return PublicKey(taking: key)
        }
    }

    /// Whether `key` is the private key of this certificate's public key (`X509_check_private_key`).
    public func matches(privateKey key: PrivateKey) -> Bool {
        let matches = X509_check_private_key(pointer, key.pointer) == 1
        OpenSSLErrorQueue.clear()
        return matches
    }

    /// Whether this certificate's signature verifies with `issuer`'s public key (`X509_verify`).
    ///
    /// Checks the signature only, not validity dates, names or chain policy; it answers "did this CA sign it".
    public func isSigned(by issuer: Certificate) -> Bool {
        guard let key = X509_get0_pubkey(issuer.pointer) else {
            OpenSSLErrorQueue.clear()
            return false
        }
        let verified = X509_verify(pointer, key) == 1
        // A failed verification leaves entries on the queue; they are an answer, not an error.
        OpenSSLErrorQueue.clear()
        return verified
    }

    public var description: String {
        "Certificate(subject: \(subjectCommonName ?? "-"), issuer: \(issuerCommonName ?? "-"), serial: \(serialNumber))"
    }

    /// Certificates are equal when their encodings are (`X509_cmp`).
    public static func == (lhs: Certificate, rhs: Certificate) -> Bool { X509_cmp(lhs.pointer, rhs.pointer) == 0 }

    // MARK: - Decoding helpers

    private var basicConstraints: (isCA: Bool, pathLength: Int?)? {
        guard let raw = X509_get_ext_d2i(pointer, NID_basic_constraints, nil, nil) else {
            OpenSSLErrorQueue.clear()
            return nil
        }
        let constraints = raw.assumingMemoryBound(to: BASIC_CONSTRAINTS.self)
        defer { BASIC_CONSTRAINTS_free(constraints) }
        let pathLength = constraints.pointee.pathlen.map { Int(ASN1_INTEGER_get($0)) }
        return (constraints.pointee.ca != 0, pathLength)
    }

    static func commonName(of name: OpaquePointer?) -> String? {
        guard let name else { return nil }
        let index = X509_NAME_get_index_by_NID(name, NID_commonName, -1)
        guard index >= 0, let entry = X509_NAME_get_entry(name, index),
            let data = X509_NAME_ENTRY_get_data(entry)
        else { return nil }
        var utf8: UnsafeMutablePointer<UInt8>?
        let length = ASN1_STRING_to_UTF8(&utf8, data)
        guard length >= 0, let utf8 else {
            OpenSSLErrorQueue.clear()
            return nil
        }
        defer { CRYPTO_free(utf8, #fileID, #line) }
        return String(decoding: UnsafeBufferPointer(start: utf8, count: Int(length)), as: UTF8.self)
    }

    private static func date(_ time: UnsafePointer<ASN1_TIME>?) -> Date {
        var parts = tm()
        guard let time, ASN1_TIME_to_tm(time, &parts) == 1 else { return Date(timeIntervalSince1970: 0) }
        return Date(timeIntervalSince1970: TimeInterval(timegm(&parts)))
    }
}
