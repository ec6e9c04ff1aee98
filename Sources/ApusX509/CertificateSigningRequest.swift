import COpenSSL

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A PKCS#10 certificate signing request: the public key a workload wants certified plus the names it asks for,
/// signed with the matching private key so the CA knows the requester holds it.
///
/// Wraps an OpenSSL `X509_REQ` freed on deinit. `@unchecked Sendable` for the same reason as ``Certificate``: it is
/// never mutated after being parsed or signed.
///
/// ```swift
/// let key = try PrivateKey.generateP256()   // stays with the workload
/// let csr = try CertificateSigningRequest(key: key, dnsName: "web.default.serviceaccount.identity.apus.cluster.local")
/// let der = try csr.der                     // what the Certify API carries
/// let parsed = try CertificateSigningRequest(der: der)
/// parsed.isSignatureValid                   // true
/// ```
public final class CertificateSigningRequest: @unchecked Sendable, CustomStringConvertible {
    let pointer: OpaquePointer

    private init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit { X509_REQ_free(pointer) }

    /// Builds and signs a request for one DNS name, the shape of an Apus/Linkerd identity CSR. The common name is
    /// left empty: the identity lives in the SAN, and may be longer than the 64 characters a CN allows.
    public convenience init(key: PrivateKey, dnsName: String) throws {
        try self.init(key: key, commonName: nil, subjectAltNames: [.dns(dnsName)])
    }

    /// Builds and signs a request with an optional common name and any SANs (including kinds a CA may refuse, which
    /// is what tests of that CA need).
    public convenience init(key: PrivateKey, commonName: String?, subjectAltNames: [SubjectAltName]) throws {
        OpenSSLErrorQueue.clear()
        let operation = "building a certificate signing request"
        guard let request = X509_REQ_new() else { throw X509Error.fromQueue(.signingFailed, operation) }
        self.init(taking: request)  // owns the request from here on, also on error paths

        guard X509_REQ_set_version(request, 0) == 1 else {  // 0 means PKCS#10 v1, the only version
            throw X509Error.fromQueue(.signingFailed, operation)
        }
        guard X509_REQ_set_pubkey(request, key.pointer) == 1 else {
            throw X509Error.fromQueue(.signingFailed, "\(operation): setting public key")
        }
        if let commonName, !commonName.isEmpty {
            guard let name = X509_NAME_new() else { throw X509Error.fromQueue(.signingFailed, operation) }
            defer { X509_NAME_free(name) }
            let bytes = Array(commonName.utf8)
            guard
                X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, bytes, Int32(bytes.count), -1, 0) == 1
            else {
                throw X509Error.fromQueue(.invalidInput, "\(operation): common name rejected (at most 64 characters)")
            }
            guard X509_REQ_set_subject_name(request, name) == 1 else {
                throw X509Error.fromQueue(.signingFailed, operation)
            }
        }
        if !subjectAltNames.isEmpty {
            let names = try GeneralNames.make(subjectAltNames, operation: operation)
            defer { GENERAL_NAMES_free(names) }
            guard let sanExtension = X509V3_EXT_i2d(NID_subject_alt_name, 0, UnsafeMutableRawPointer(names)) else {
                throw X509Error.fromQueue(.signingFailed, "\(operation): encoding subjectAltName")
            }
            defer { X509_EXTENSION_free(sanExtension) }
            guard let extensions = OPENSSL_sk_new_null() else { throw X509Error.fromQueue(.signingFailed, operation) }
            // The stack only borrows the extension; X509_REQ_add_extensions copies what it needs.
            defer { OPENSSL_sk_free(extensions) }
            guard OPENSSL_sk_push(extensions, UnsafeRawPointer(sanExtension)) > 0,
                X509_REQ_add_extensions(request, extensions) == 1
            else { throw X509Error.fromQueue(.signingFailed, "\(operation): adding subjectAltName") }
        }
        guard X509_REQ_sign(request, key.pointer, EVP_sha256()) > 0 else {
            throw X509Error.fromQueue(.signingFailed, "\(operation): signing")
        }
    }

    /// Parses DER (what the Certify API carries).
    public convenience init(der: [UInt8]) throws {
        OpenSSLErrorQueue.clear()
        guard !der.isEmpty else {
            throw X509Error(.invalidDER, "parsing certificate signing request DER", openSSLErrors: ["no bytes"])
        }
        let request = der.withUnsafeBufferPointer { buffer -> OpaquePointer? in
            var cursor = buffer.baseAddress
            let parsed = d2i_X509_REQ(nil, &cursor, buffer.count)
            // Trailing bytes after the structure mean the input is not one CSR; refuse rather than ignore them.
            if let parsed, let start = buffer.baseAddress, cursor != start + buffer.count {
                X509_REQ_free(parsed)
                return nil
            }
            return parsed
        }
        guard let request else { throw X509Error.fromQueue(.invalidDER, "parsing certificate signing request DER") }
        self.init(taking: request)
    }

    /// Parses the first `CERTIFICATE REQUEST` block of a PEM text.
    public convenience init(pem: String) throws {
        OpenSSLErrorQueue.clear()
        let operation = "parsing certificate signing request PEM"
        let request = try MemoryBIO.reading(Array(pem.utf8), operation: operation) { bio in
            PEM_read_bio_X509_REQ(bio, nil, nil, nil)
        }
        guard let request else { throw X509Error.fromQueue(.invalidPEM, operation) }
        self.init(taking: request)
    }

    /// DER encoding.
    public var der: [UInt8] {
        get throws {
            OpenSSLErrorQueue.clear()
            return try encodeDER(operation: "encoding certificate signing request DER") { i2d_X509_REQ(pointer, $0) }
        }
    }

    /// PEM `-----BEGIN CERTIFICATE REQUEST-----` text.
    public var pem: String {
        get throws {
            OpenSSLErrorQueue.clear()
            let bytes = try MemoryBIO.writing(operation: "writing certificate signing request PEM") {
                PEM_write_bio_X509_REQ($0, pointer)
            }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    /// Whether the request's signature verifies with the public key it carries: proof that whoever sent it holds
    /// the private key. Says nothing about the names requested.
    public var isSignatureValid: Bool {
        guard let key = X509_REQ_get0_pubkey(pointer) else {
            OpenSSLErrorQueue.clear()
            return false
        }
        let verified = X509_REQ_verify(pointer, key) == 1
        // A failed verification leaves entries on the queue; they are an answer, not an error.
        OpenSSLErrorQueue.clear()
        return verified
    }

    /// The public key to certify.
    public var publicKey: PublicKey {
        get throws {
            guard let key = X509_REQ_get_pubkey(pointer) else {
                throw X509Error.fromQueue(.invalidDER, "reading the certificate signing request's public key")
            }
            return PublicKey(taking: key)
        }
    }

    /// The subject's first common name, or `nil` when the subject has none.
    public var subjectCommonName: String? { Certificate.commonName(of: X509_REQ_get_subject_name(pointer)) }

    /// Every subjectAltName entry of the requested extensions, in request order.
    public var subjectAltNames: [SubjectAltName] {
        guard let extensions = X509_REQ_get_extensions(pointer) else {
            OpenSSLErrorQueue.clear()
            return []
        }
        defer { OPENSSL_sk_pop_free(extensions) { X509_EXTENSION_free(OpaquePointer($0)) } }
        guard let raw = X509V3_get_d2i(extensions, NID_subject_alt_name, nil, nil) else {
            OpenSSLErrorQueue.clear()
            return []
        }
        let names = OpaquePointer(raw)
        defer { GENERAL_NAMES_free(names) }
        return GeneralNames.read(names)
    }

    public var dnsNames: [String] { subjectAltNames.compactMap { if case .dns(let name) = $0 { name } else { nil } } }

    public var ipAddresses: [String] {
        subjectAltNames.compactMap { if case .ipAddress(let address) = $0 { address } else { nil } }
    }

    public var uris: [String] { subjectAltNames.compactMap { if case .uri(let uri) = $0 { uri } else { nil } } }

    public var emailAddresses: [String] {
        subjectAltNames.compactMap { if case .email(let email) = $0 { email } else { nil } }
    }

    public var description: String {
        let names = subjectAltNames.map(\.description).joined(separator: ", ")
        return "CertificateSigningRequest(subject: \(subjectCommonName ?? "-"), names: [\(names)])"
    }
}

extension CertificateBuilder {
    /// An end-entity certificate for the key in `request`, valid `[now - backdate, now + validity]`.
    ///
    /// Only the key is taken from the request: names, extensions and validity are the caller's decision, so a
    /// requester cannot smuggle in `CA:TRUE` or extra names. Throws ``X509Error/Code/invalidInput`` when the request's
    /// signature does not verify with its own key.
    public init(
        certifying request: CertificateSigningRequest, commonName: String, validity: TimeInterval = 24 * 3600,
        backdate: TimeInterval = 60, now: Date = Date()
    ) throws {
        guard request.isSignatureValid else {
            throw X509Error(
                .invalidInput, "certifying a request: its signature does not verify with its own public key",
                openSSLErrors: [])
        }
        self.init(commonName: commonName, publicKey: try request.publicKey, validity: validity, now: now)
        notBefore = now.addingTimeInterval(-backdate)
    }
}
