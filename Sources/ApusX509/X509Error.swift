import COpenSSL

/// An X.509 or key operation failed.
///
/// Carries the OpenSSL error queue of the failing call (the queue is thread-local and drained into the error, so a
/// later call never reports a stale reason). Two errors are equal when their ``code`` is equal, so tests can compare
/// against a code without depending on OpenSSL's wording.
public struct X509Error: Error, Equatable, Sendable, CustomStringConvertible {
    /// What kind of failure happened; stable across OpenSSL versions.
    public enum Code: String, Sendable, Hashable {
        /// The input was not PEM of the expected type (missing `BEGIN` line, bad base64, wrong block type).
        case invalidPEM
        /// The input was not valid DER of the expected structure.
        case invalidDER
        /// A caller-supplied value was rejected, e.g. an IP SAN that is not an address or an empty common name.
        case invalidInput
        /// Key generation failed; only expected when OpenSSL is misconfigured (no EC provider).
        case keyGenerationFailed
        /// Building or signing a certificate failed inside OpenSSL.
        case signingFailed
        /// Serializing to PEM/DER failed; normally only on allocation failure.
        case encodingFailed
        /// A certificate does not chain to the trust anchors (bad signature, expired, not a CA, no path).
        case verificationFailed
    }

    public let code: Code
    /// What Apus was doing, e.g. "parsing certificate PEM".
    public let operation: String
    /// Lines from OpenSSL's error queue (`ERR_error_string_n`), oldest first; may be empty.
    public let openSSLErrors: [String]

    /// Public so callers and tests can build an expected error to compare codes with (`#expect(throws:)`).
    public init(_ code: Code, _ operation: String = "", openSSLErrors: [String] = []) {
        self.code = code
        self.operation = operation
        self.openSSLErrors = openSSLErrors
    }

    /// Builds an error from the current thread's OpenSSL error queue, emptying it.
    static func fromQueue(_ code: Code, _ operation: String) -> X509Error {
        X509Error(code, operation, openSSLErrors: OpenSSLErrorQueue.drain())
    }

    public var description: String {
        let detail = openSSLErrors.isEmpty ? "" : ": " + openSSLErrors.joined(separator: "; ")
        return "X509Error.\(code.rawValue) while \(operation)\(detail)"
    }

    public static func == (lhs: X509Error, rhs: X509Error) -> Bool { lhs.code == rhs.code }
}

enum OpenSSLErrorQueue {
    /// Empties the thread's error queue and returns its entries as text.
    static func drain() -> [String] {
        var messages: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            let length = buffer.firstIndex(of: 0) ?? buffer.count
            messages.append(String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return messages
    }

    /// Discards leftovers from earlier calls on this thread so a new error reports only its own causes.
    static func clear() { ERR_clear_error() }
}
