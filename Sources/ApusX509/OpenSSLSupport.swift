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
