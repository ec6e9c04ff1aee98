import COpenSSL

/// A private key (in practice ECDSA P-256, the only kind Apus generates).
///
/// Wraps an OpenSSL `EVP_PKEY` that is freed when the last reference goes away. `@unchecked Sendable` is sound
/// because the key is never mutated after creation: every operation (export, signing) only reads it, and OpenSSL 3
/// allows concurrent read-only use of one `EVP_PKEY` (it guards its internal caches with its own lock).
///
/// ```swift
/// let key = try PrivateKey.generateP256()
/// let pem = try key.pemPKCS8            // "-----BEGIN PRIVATE KEY-----..."
/// let same = try PrivateKey(pem: pem)
/// ```
public final class PrivateKey: @unchecked Sendable {
    let pointer: OpaquePointer

    private init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit { EVP_PKEY_free(pointer) }

    /// Generates a fresh ECDSA key on the NIST P-256 curve, the curve Linkerd uses for workload identities.
    public static func generateP256() throws -> PrivateKey {
        OpenSSLErrorQueue.clear()
        let operation = "generating a P-256 key"
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else {
            throw X509Error.fromQueue(.keyGenerationFailed, operation)
        }
        defer { EVP_PKEY_CTX_free(context) }
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_CTX_set_group_name(context, "P-256") == 1 else {
            throw X509Error.fromQueue(.keyGenerationFailed, operation)
        }
        var key: OpaquePointer?
        guard EVP_PKEY_generate(context, &key) == 1, let key else {
            throw X509Error.fromQueue(.keyGenerationFailed, operation)
        }
        return PrivateKey(taking: key)
    }

    /// Parses a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) or the traditional `BEGIN EC PRIVATE KEY` form.
    /// Encrypted keys are rejected with ``X509Error/Code/invalidPEM`` (there is no passphrase).
    public convenience init(pem: String) throws {
        OpenSSLErrorQueue.clear()
        let operation = "parsing private key PEM"
        let key = try MemoryBIO.reading(Array(pem.utf8), operation: operation) { bio in
            // An explicit "no passphrase" callback: with nil, OpenSSL would prompt on the terminal for
            // encrypted keys and block the process.
            PEM_read_bio_PrivateKey(bio, nil, { _, _, _, _ in 0 }, nil)
        }
        guard let key else { throw X509Error.fromQueue(.invalidPEM, operation) }
        self.init(taking: key)
    }

    /// The key as unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the format Kubernetes TLS secrets use.
    public var pemPKCS8: String {
        get throws {
            OpenSSLErrorQueue.clear()
            let bytes = try MemoryBIO.writing(operation: "writing private key PEM") { bio in
                PEM_write_bio_PKCS8PrivateKey(bio, pointer, nil, nil, 0, nil, nil)
            }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    /// The matching public key (a separate object holding no private material).
    public var publicKey: PublicKey {
        get throws { try PublicKey(der: publicKeyDER) }
    }

    /// The public key as DER `SubjectPublicKeyInfo`.
    public var publicKeyDER: [UInt8] {
        get throws {
            OpenSSLErrorQueue.clear()
            return try encodeDER(operation: "encoding public key DER") { i2d_PUBKEY(pointer, $0) }
        }
    }

    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`).
    public var publicKeyPEM: String {
        get throws { try publicKey.pem }
    }

    /// An ECDSA-SHA256 signature (DER `ECDSA-Sig-Value`) of `message`, the operation every certificate issue ends
    /// with; benchmarks use it as the cost floor of issuing.
    public func signature(for message: [UInt8]) throws -> [UInt8] {
        OpenSSLErrorQueue.clear()
        let operation = "signing"
        guard let context = EVP_MD_CTX_new() else { throw X509Error.fromQueue(.signingFailed, operation) }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestSignInit(context, nil, EVP_sha256(), nil, pointer) == 1 else {
            throw X509Error.fromQueue(.signingFailed, operation)
        }
        var length = 0
        guard EVP_DigestSign(context, nil, &length, message, message.count) == 1 else {
            throw X509Error.fromQueue(.signingFailed, operation)
        }
        var signature = [UInt8](repeating: 0, count: length)
        guard EVP_DigestSign(context, &signature, &length, message, message.count) == 1 else {
            throw X509Error.fromQueue(.signingFailed, operation)
        }
        return Array(signature.prefix(length))
    }
}

/// A public key, e.g. the subject key to put in a certificate being issued.
///
/// `@unchecked Sendable` for the same reason as ``PrivateKey``: immutable after creation.
public final class PublicKey: @unchecked Sendable, Equatable {
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit { EVP_PKEY_free(pointer) }

    /// Parses DER `SubjectPublicKeyInfo`.
    public convenience init(der: [UInt8]) throws {
        OpenSSLErrorQueue.clear()
        let key = der.withUnsafeBufferPointer { buffer -> OpaquePointer? in
            var cursor = buffer.baseAddress
            return d2i_PUBKEY(nil, &cursor, buffer.count)
        }
        guard let key else { throw X509Error.fromQueue(.invalidDER, "parsing public key DER") }
        self.init(taking: key)
    }

    /// Parses PEM (`-----BEGIN PUBLIC KEY-----`).
    public convenience init(pem: String) throws {
        OpenSSLErrorQueue.clear()
        let operation = "parsing public key PEM"
        let key = try MemoryBIO.reading(Array(pem.utf8), operation: operation) { bio in
            PEM_read_bio_PUBKEY(bio, nil, nil, nil)
        }
        guard let key else { throw X509Error.fromQueue(.invalidPEM, operation) }
        self.init(taking: key)
    }

    /// DER `SubjectPublicKeyInfo`.
    public var der: [UInt8] {
        get throws {
            OpenSSLErrorQueue.clear()
            return try encodeDER(operation: "encoding public key DER") { i2d_PUBKEY(pointer, $0) }
        }
    }

    /// PEM `-----BEGIN PUBLIC KEY-----`.
    public var pem: String {
        get throws {
            OpenSSLErrorQueue.clear()
            let bytes = try MemoryBIO.writing(operation: "writing public key PEM") { bio in
                PEM_write_bio_PUBKEY(bio, pointer)
            }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    /// The elliptic curve's name (`P-256`, `P-384`), or `nil` for a key that is not an EC key.
    public var curveName: String? {
        guard EVP_PKEY_get_base_id(pointer) == EVP_PKEY_EC else { return nil }
        var buffer = [CChar](repeating: 0, count: 64)
        var length = 0
        guard EVP_PKEY_get_group_name(pointer, &buffer, buffer.count, &length) == 1 else {
            OpenSSLErrorQueue.clear()
            return nil
        }
        let name = String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // OpenSSL reports the SN ("prime256v1", "secp384r1"); use the NIST names everyone writes.
        switch name {
        case "prime256v1": return "P-256"
        case "secp384r1": return "P-384"
        case "secp521r1": return "P-521"
        default: return name
        }
    }

    /// Whether `signature` is a valid ECDSA-SHA256 signature of `message` under this key.
    public func isValidSignature(_ signature: [UInt8], for message: [UInt8]) -> Bool {
        defer { OpenSSLErrorQueue.clear() }
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, EVP_sha256(), nil, pointer) == 1 else { return false }
        return EVP_DigestVerify(context, signature, signature.count, message, message.count) == 1
    }

    /// Keys are equal when their public parameters are (`EVP_PKEY_eq`).
    public static func == (lhs: PublicKey, rhs: PublicKey) -> Bool { EVP_PKEY_eq(lhs.pointer, rhs.pointer) == 1 }
}
