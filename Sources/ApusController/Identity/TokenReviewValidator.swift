import ApusCore
import ApusIdentity
import Foundation
import KubernetesClient
import Logging

/// Validates projected ServiceAccount tokens with a TokenReview (`authentication.k8s.io/v1`), as Linkerd's
/// identity controller does.
///
/// The review asks for the audience proxies' tokens are minted for (`identity.l5d.io`). When the API server
/// refuses the token *because of its audiences*, the review is repeated without audiences, which lets the API
/// server check the token against its own audience: that is how Linkerd keeps accepting the default
/// ServiceAccount token older proxies send. Set `retryWithoutAudiences` to `false` to require the audience.
///
/// The authenticated user must be `system:serviceaccount:<namespace>:<name>` with both parts DNS-1123 labels; the
/// identity is then `<name>.<namespace>.serviceaccount.identity.<controlNamespace>.<trustDomain>`.
///
/// Needs `create` on `tokenreviews` (see ``IdentityService/requiredPermissions``).
public struct TokenReviewValidator: TokenValidator {
    /// The audience of the projected token volume injected into meshed pods.
    public static let audience = "identity.l5d.io"

    public let client: KubernetesClient
    public let controlNamespace: String
    public let trustDomain: String
    public let audiences: [String]
    public let retryWithoutAudiences: Bool
    private let logger: Logger

    public init(
        client: KubernetesClient, controlNamespace: String = "apus", trustDomain: String = "cluster.local",
        audiences: [String] = [TokenReviewValidator.audience], retryWithoutAudiences: Bool = true,
        logger: Logger = Logger(label: "apus.identity.tokenreview")
    ) {
        self.client = client
        self.controlNamespace = controlNamespace
        self.trustDomain = trustDomain
        self.audiences = audiences
        self.retryWithoutAudiences = retryWithoutAudiences
        self.logger = logger
    }

    public func validate(token: [UInt8]) async throws(IdentityError) -> IdentityName {
        let text = String(decoding: token, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty else { throw IdentityError(.missingField, "token: the token is empty") }
        var status = try await review(text, audiences: audiences)
        if status.authenticated != true, retryWithoutAudiences, !audiences.isEmpty,
            (status.error ?? "").localizedCaseInsensitiveContains("audience")
        {
            logger.debug("token refused for its audiences; retrying the review without audiences")
            status = try await review(text, audiences: nil)
        }
        guard status.authenticated == true else {
            let reason = status.error.flatMap { $0.isEmpty ? nil : $0 } ?? "the API server did not authenticate it"
            throw IdentityError(.tokenInvalid, "token review failed: \(reason)")
        }
        let username = status.user?.username ?? ""
        return try Self.identity(
            username: username, controlNamespace: controlNamespace, trustDomain: trustDomain)
    }

    /// The identity of a ServiceAccount user name, or `tokenInvalid` for any other user.
    static func identity(
        username: String, controlNamespace: String, trustDomain: String
    ) throws(IdentityError) -> IdentityName {
        let parts = username.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 4, parts[0] == "system", parts[1] == "serviceaccount" else {
            throw IdentityError(
                .tokenInvalid, "the token authenticates \"\(username)\", not system:serviceaccount:<namespace>:<name>")
        }
        for label in parts[2...] where !isDNS1123Label(label) {
            throw IdentityError(.tokenInvalid, "\"\(label)\" in \"\(username)\" is not a DNS-1123 label")
        }
        return IdentityName(
            serviceAccount: parts[3], namespace: parts[2], controlNamespace: controlNamespace,
            trustDomain: trustDomain)
    }

    /// RFC 1123 label as Kubernetes checks it: 1–63 lowercase alphanumerics or '-', alphanumeric at both ends.
    static func isDNS1123Label(_ value: String) -> Bool {
        let bytes = Array(value.utf8)
        guard !bytes.isEmpty, bytes.count <= 63 else { return false }
        func alphanumeric(_ byte: UInt8) -> Bool { (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39) }
        guard let first = bytes.first, let last = bytes.last, alphanumeric(first), alphanumeric(last) else {
            return false
        }
        return bytes.allSatisfy { alphanumeric($0) || $0 == 0x2D }
    }

    private func review(_ token: String, audiences: [String]?) async throws(IdentityError) -> TokenReview.Status {
        let request = TokenReview(spec: TokenReview.Spec(token: token, audiences: audiences))
        do {
            let answer = try await client.create(request)
            return answer.status ?? TokenReview.Status(authenticated: false, error: "the review has no status")
        } catch {
            // The API server is unreachable or refused the review itself (e.g. RBAC): not the proxy's fault, and
            // worth retrying, so it is reported like an issuer that is not ready yet (503).
            logger.error("TokenReview failed", metadata: ["error": "\(error)"])
            throw IdentityError(.issuerNotReady, "the token could not be reviewed: \(error)")
        }
    }
}
