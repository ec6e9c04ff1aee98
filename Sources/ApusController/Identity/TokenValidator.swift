import ApusIdentity
import Foundation
import NIOConcurrencyHelpers

/// Decides which workload a Certify request comes from, from the token the proxy sends with it.
///
/// The identity service never trusts the identity a proxy asks for: it derives the identity from the token and
/// refuses a mismatch. In a cluster the token is a projected ServiceAccount token checked by a TokenReview
/// (``TokenReviewValidator``); in local mode, where there is no API server, the controller hands each proxy it
/// spawns a random token and checks it itself (``LocalTokenValidator``).
public protocol TokenValidator: Sendable {
    /// The identity the token proves.
    /// - Throws: `tokenInvalid` when the token does not authenticate a ServiceAccount (unknown, expired, wrong
    ///   audience, not a ServiceAccount user); `missingField` for an empty token; `issuerNotReady` when the
    ///   authority that checks tokens cannot be reached (the request may be retried).
    func validate(token: [UInt8]) async throws(IdentityError) -> IdentityName
}

/// The tokens of local mode: random 256-bit secrets the controller mints for the proxies it spawns, each bound to
/// the identity that proxy may claim.
///
/// Local mode runs the controller and proxies as processes on one machine with no API server to run a
/// TokenReview. The controller mints a token per proxy (``mint(for:)``), writes it to that proxy's token file,
/// and this validator maps it back to the identity. Tokens live in memory only: a restarted controller mints new
/// ones for the proxies it starts again. ``revoke(_:)`` forgets a token when its proxy exits.
///
/// ```swift
/// let validator = LocalTokenValidator()
/// let token = validator.mint(for: IdentityName(serviceAccount: "web", namespace: "default"))
/// try token.write(toFile: tokenPath, atomically: true, encoding: .utf8)
/// ```
public final class LocalTokenValidator: TokenValidator {
    private let tokens = NIOLockedValueBox<[String: IdentityName]>([:])

    public init() {}

    /// A new token for `identity`: 32 random bytes, hex-encoded (64 characters, no padding or line breaks).
    public func mint(for identity: IdentityName) -> String {
        var generator = SystemRandomNumberGenerator()
        let token = (0..<4).map { _ in
            let word = generator.next() as UInt64
            let hex = String(word, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
        tokens.withLockedValue { $0[token] = identity }
        return token
    }

    /// Accepts a token minted earlier (by this validator before a restart) for `identity` again: local mode's
    /// restarted controller re-registers the tokens of the proxies it adopts, which still hold them in files.
    public func register(_ token: String, for identity: IdentityName) {
        tokens.withLockedValue { $0[token] = identity }
    }

    /// Forgets `token`; Certify requests carrying it fail with `tokenInvalid` from now on.
    public func revoke(_ token: String) {
        tokens.withLockedValue { $0[token] = nil }
    }

    /// How many tokens are currently valid.
    public var count: Int { tokens.withLockedValue { $0.count } }

    public func validate(token: [UInt8]) async throws(IdentityError) -> IdentityName {
        let text = String(decoding: token, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty else { throw IdentityError(.missingField, "token: the token is empty") }
        guard let identity = tokens.withLockedValue({ $0[text] }) else {
            throw IdentityError(.tokenInvalid, "the token was not issued by this controller (or was revoked)")
        }
        return identity
    }
}
