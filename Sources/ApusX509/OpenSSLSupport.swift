import COpenSSL

/// Memory BIO helpers. BIOs never escape these functions, so callers cannot leak them.
enum MemoryBIO {
    /// Runs `body` with a read-only BIO over `bytes`.
    static func reading<T>(
        _ bytes: [UInt8], operation: String, _ body: (OpaquePointer) throws -> T
    ) throws -> T {
        guard bytes.count <= Int(Int32.max) else { throw X509Error(.invalidInput, operation, openSSLErrors: []) }
        return try bytes.withUnsafeBytes { buffer in
            guard let bio = BIO_new_mem_buf(buffer.baseAddress, Int32(buffer.count)) else {
                throw X509Error.fromQueue(.encodingFailed, operation)
            }
            defer { BIO_free(bio) }
            return try body(bio)
        }
    }

    /// Runs `write` against a growable memory BIO and returns what it wrote.
    static func writing(operation: String, _ write: (OpaquePointer) -> Int32) throws -> [UInt8] {
        guard let bio = BIO_new(BIO_s_mem()) else { throw X509Error.fromQueue(.encodingFailed, operation) }
        defer { BIO_free(bio) }
        guard write(bio) == 1 else { throw X509Error.fromQueue(.encodingFailed, operation) }
        var data: UnsafeMutablePointer<CChar>?
        let length = BIO_ctrl(bio, BIO_CTRL_INFO, 0, &data)
        guard length >= 0, let data else { return [] }
        return data.withMemoryRebound(to: UInt8.self, capacity: length) {
            Array(UnsafeBufferPointer(start: $0, count: length))
        }
    }
}

/// DER encoding via an OpenSSL `i2d_*` function (called once for the size, once to write).
func encodeDER(
    operation: String, _ i2d: (UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?) -> Int32
) throws -> [UInt8] {
    let length = i2d(nil)
    guard length > 0 else { throw X509Error.fromQueue(.encodingFailed, operation) }
    var bytes = [UInt8](repeating: 0, count: Int(length))
    let written = bytes.withUnsafeMutableBufferPointer { buffer -> Int32 in
        var cursor = buffer.baseAddress
        return i2d(&cursor)
    }
    guard written == length else { throw X509Error.fromQueue(.encodingFailed, operation) }
    return bytes
}

/// The bytes of an ASN1_STRING (also ASN1_OCTET_STRING / ASN1_IA5STRING).
func asn1Bytes(_ string: UnsafePointer<ASN1_STRING>) -> [UInt8] {
    let length = Int(ASN1_STRING_length(string))
    guard length > 0, let data = ASN1_STRING_get0_data(string) else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: length))
}

/// Lower-case hex without separators, the usual way to print serial numbers and key identifiers.
func hexString(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0x0f)])
    }
    return String(decoding: out, as: UTF8.self)
}

extension String {
    /// Whether the text contains at least one PEM block header, to tell "not PEM" from "PEM of another type".
    var containsPEMHeader: Bool { contains("-----BEGIN ") }
}

/// Writes a public key into a certificate's `X509_PUBKEY`.
///
/// `X509_set_pubkey` in OpenSSL 3.0 serializes the key with the encoder framework and parses it back with a freshly
/// built decoder context: about 2 million instructions, a third of issuing a leaf. For EC keys on a named curve the
/// SubjectPublicKeyInfo is just (id-ecPublicKey, curve OID, encoded point), written here directly; other keys, and
/// a nil `info`, take OpenSSL's general path.
///
/// The direct path leaves OpenSSL's cached `EVP_PKEY` of the structure empty, and OpenSSL 3.0 cannot rebuild it
/// lazily (`X509_get0_pubkey` then fails). Only use it on an object that is encoded and dropped, never verified or
/// handed out.
enum SubjectPublicKeyInfoWriter {
    static func write(
        _ key: OpaquePointer, into info: OpaquePointer?, fallback: () -> Int32, operation: String
    ) throws {
        if let info, writeEC(key, into: info) { return }
        OpenSSLErrorQueue.clear()
        guard fallback() == 1 else { throw X509Error.fromQueue(.signingFailed, "\(operation): setting public key") }
    }

    private static func writeEC(_ key: OpaquePointer, into info: OpaquePointer) -> Bool {
        guard EVP_PKEY_get_base_id(key) == EVP_PKEY_EC else { return false }
        var name = [CChar](repeating: 0, count: 64)
        var nameLength = 0
        guard EVP_PKEY_get_group_name(key, &name, name.count, &nameLength) == 1 else { return false }
        let curve = OBJ_sn2nid(name)
        guard curve != NID_undef, let curveObject = OBJ_nid2obj(curve),
            let algorithm = OBJ_nid2obj(NID_X9_62_id_ecPublicKey)
        else { return false }
        var point: UnsafeMutablePointer<UInt8>?
        let length = EVP_PKEY_get1_encoded_public_key(key, &point)
        guard length > 0, length <= Int(Int32.max), let point else {
            CRYPTO_free(point, #fileID, #line)
            return false
        }
        // Takes ownership of `point`; the OIDs are OpenSSL's static table entries.
        guard
            X509_PUBKEY_set0_param(
                info, algorithm, V_ASN1_OBJECT, UnsafeMutableRawPointer(curveObject), point, Int32(length)) == 1
        else {
            CRYPTO_free(point, #fileID, #line)
            return false
        }
        return true
    }
}
