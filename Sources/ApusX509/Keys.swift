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

    /// Keys are equal when their public parameters are (`EVP_PKEY_eq`).
    public static func == (lhs: PublicKey, rhs: PublicKey) -> Bool { EVP_PKEY_eq(lhs.pointer, rhs.pointer) == 1 }
}
