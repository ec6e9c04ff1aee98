import ApusCore
import Foundation
import NIOConcurrencyHelpers

/// ServiceAccount tokens minted by the test server, as the TokenRequest API issues them, and the TokenReview
/// answers a real API server gives for them.
///
/// A token is an opaque random string (real ones are JWTs; nothing in Apus looks inside them). It carries the
/// audiences it was minted for and an expiry. Reviews follow kube-apiserver's rules:
/// - a review without `spec.audiences` checks the token against the API server's own audience
///   (``apiServerAudience``), the audience a token minted without audiences gets;
/// - a review with `spec.audiences` needs at least one of them in the token's audiences, and answers the overlap
///   in `status.audiences`; otherwise `authenticated: false` with the API server's error text
///   `token audiences [...] is invalid for the target audiences [...]`;
/// - an expired token is `authenticated: false` with `service account token has expired`.
final class ServiceAccountTokens: Sendable {
    struct Minted: Sendable {
        var namespace: String
        var serviceAccount: String
        var uid: String
        var audiences: [String]
        var expiry: Date
    }

    /// The audience kube-apiserver gives tokens minted without one (`--api-audiences`, by default the issuer).
    static let apiServerAudience = "https://kubernetes.default.svc.cluster.local"

    private let tokens = NIOLockedValueBox<[String: Minted]>([:])

    func mint(namespace: String, serviceAccount: String, audiences: [String], expiration: Duration) -> String {
        var generator = SystemRandomNumberGenerator()
        let random = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }
        let token = "apus-sa-token." + random.joined()
        let seconds = Double(expiration.components.seconds) + Double(expiration.components.attoseconds) * 1e-18
        let minted = Minted(
            namespace: namespace, serviceAccount: serviceAccount, uid: UUID().uuidString.lowercased(),
            audiences: audiences.isEmpty ? [Self.apiServerAudience] : audiences,
            expiry: Date().addingTimeInterval(seconds))
        tokens.withLockedValue { $0[token] = minted }
        return token
    }

    /// The review's `status` for a minted token, or nil when `token` was not minted here.
    func reviewStatus(token: String, requestedAudiences: [String], now: Date = Date()) -> JSONValue? {
        guard let minted = tokens.withLockedValue({ $0[token] }) else { return nil }
        guard minted.expiry > now else {
            return .object([
                "authenticated": .bool(false),
                "error": .string("[invalid bearer token, service account token has expired]"),
            ])
        }
        let targets = requestedAudiences.isEmpty ? [Self.apiServerAudience] : requestedAudiences
        let overlap = targets.filter { minted.audiences.contains($0) }
        guard !overlap.isEmpty else {
            func list(_ values: [String]) -> String {
                "[" + values.map { JSONValue.string($0).description }.joined(separator: " ") + "]"
            }
            return .object([
                "authenticated": .bool(false),
                "error": .string(
                    "[invalid bearer token, token audiences \(list(minted.audiences)) is invalid for the target "
                        + "audiences \(list(targets))]"),
            ])
        }
        let username = "system:serviceaccount:\(minted.namespace):\(minted.serviceAccount)"
        return .object([
            "authenticated": .bool(true),
            "audiences": .array(overlap.map { .string($0) }),
            "user": .object([
                "username": .string(username),
                "uid": .string(minted.uid),
                "groups": .array([
                    .string("system:serviceaccounts"), .string("system:serviceaccounts:\(minted.namespace)"),
                    .string("system:authenticated"),
                ]),
            ]),
        ])
    }
}
