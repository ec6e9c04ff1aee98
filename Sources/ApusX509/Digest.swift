import COpenSSL

/// Message digests from OpenSSL, so modules that need a fingerprint (the injector's `linkerd.io/trust-root-sha256`)
/// do not carry their own hash implementation.
public enum Digest {
    /// The SHA-256 of `bytes` (32 bytes).
    public static func sha256(_ bytes: [UInt8]) throws(X509Error) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let status = bytes.withUnsafeBytes { input in
            output.withUnsafeMutableBufferPointer { out in
                EVP_Digest(input.baseAddress, input.count, out.baseAddress, &length, EVP_sha256(), nil)
            }
        }
        guard status == 1, length == 32 else { throw X509Error.fromQueue(.encodingFailed, "computing SHA-256") }
        return Array(output.prefix(Int(length)))
    }

    /// Lower-case hex of the SHA-256 of `text`'s UTF-8 bytes.
    public static func sha256Hex(_ text: String) throws(X509Error) -> String {
        hexString(try sha256(Array(text.utf8)))
    }
}
