/// Why the identity CA refused a request or cannot issue.
///
/// `code` is the stable, machine-readable part (it is what the Certify API puts on the wire and what decides the
/// HTTP status); `message` names the problem for a human, including the offending value where there is one.
public struct IdentityError: Error, Hashable, Sendable, CustomStringConvertible, Codable {
    public enum Code: String, Codable, Sendable, CaseIterable {
        /// The request lacks the identity, the token or the CSR.
        case missingField
        /// The CSR is not DER PKCS#10, its signature does not verify, or it asks for names other than the identity.
        case badCSR
        /// The ServiceAccount token was rejected by the token validator.
        case tokenInvalid
        /// The requested identity is not the one the token (or the CSR) proves.
        case identityMismatch
        /// No valid issuer is loaded (missing, expired), so nothing can be issued right now; retry later.
        case issuerNotReady
        /// The configured trust anchors or issuer are unusable (not a CA, no chain to the anchors, key mismatch).
        case invalidIssuer
        /// A name is not a valid `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>` identity.
        case invalidName
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The status the Certify API answers with: client mistakes are 4xx, an issuer problem is the server's (5xx),
    /// and `issuerNotReady` is 503 so clients back off and retry.
    public var httpStatus: Int {
        switch code {
        case .missingField, .badCSR, .invalidName: 400
        case .tokenInvalid: 401
        case .identityMismatch: 403
        case .issuerNotReady: 503
        case .invalidIssuer: 500
        }
    }

    public var description: String { "\(code.rawValue): \(message)" }
}
