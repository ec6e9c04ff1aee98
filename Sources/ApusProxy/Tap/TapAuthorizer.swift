#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Decides who may tap. Tap shows every request's method, authority and path, so it is off unless configured:
/// - **Identity** (`APUS_PROXY_TAP_SVC_NAME`, Linkerd's `LINKERD2_PROXY_TAP_SVC_NAME`): the caller connected over
///   mesh TLS and its verified certificate names exactly this identity (the controller's, in a cluster).
/// - **Token** (`APUS_PROXY_TAP_TOKEN_FILE`, local mode): the caller sends `Authorization: Bearer <token>` with the
///   file's content (read on every tap request, so the file can be rotated).
///
/// Either one admits a caller when both are configured. Neither configured: tap is disabled.
public struct TapAuthorizer: Sendable, Hashable {
    public enum Decision: Sendable, Hashable {
        case allowed
        /// Tap is not configured on this proxy (404).
        case disabled(String)
        /// The caller did not prove it may tap (403).
        case denied(String)
    }

    public var identity: String?
    public var tokenFile: String?

    public init(identity: String?, tokenFile: String?) {
        self.identity = identity
        self.tokenFile = tokenFile
    }

    public var isEnabled: Bool { identity != nil || tokenFile != nil }

    /// - Parameters:
    ///   - peerIdentity: the caller's verified mesh identity, nil for plaintext or no client certificate.
    ///   - authorization: the `Authorization` header, if any.
    public func authorize(peerIdentity: String?, authorization: String?) -> Decision {
        guard isEnabled else {
            return .disabled(
                "tap is disabled on this proxy: neither APUS_PROXY_TAP_SVC_NAME (the identity allowed to tap) nor "
                    + "APUS_PROXY_TAP_TOKEN_FILE (a bearer token) is configured")
        }
        if let identity, let peerIdentity, peerIdentity == identity { return .allowed }
        var reasons: [String] = []
        if let identity {
            reasons.append(
                "tap requires the mesh TLS identity \(identity), the caller "
                    + (peerIdentity.map { "is \($0)" } ?? "presented no verified identity"))
        }
        if let tokenFile {
            switch readToken(tokenFile) {
            case .none:
                reasons.append("the tap token file \(tokenFile) cannot be read or is empty")
            case .some(let token):
                if let presented = Self.bearerToken(authorization) {
                    if Self.constantTimeEqual(Array(presented.utf8), Array(token.utf8)) { return .allowed }
                    reasons.append("the bearer token does not match")
                } else {
                    reasons.append("no 'Authorization: Bearer' token was presented")
                }
            }
        }
        return .denied(reasons.joined(separator: "; "))
    }

    private func readToken(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let token = Self.trimmed(String(decoding: data, as: UTF8.self))
        return token.isEmpty ? nil : token
    }

    static func bearerToken(_ header: String?) -> String? {
        guard let header else { return nil }
        let trimmed = Self.trimmed(header)
        guard trimmed.count > 7, trimmed.prefix(7).lowercased() == "bearer " else { return nil }
        let token = Self.trimmed(trimmed.dropFirst(7))
        return token.isEmpty ? nil : token
    }

    /// Without leading and trailing whitespace and newlines (FoundationEssentials, which the proxy links to stay
    /// clear of ICU, has no `trimmingCharacters(in:)`).
    static func trimmed(_ text: some StringProtocol) -> String {
        guard let first = text.firstIndex(where: { !$0.isWhitespace }),
            let last = text.lastIndex(where: { !$0.isWhitespace })
        else { return "" }
        return String(text[first...last])
    }

    /// Compares without an early exit, so response timing does not reveal how much of a guess was right.
    static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: lhs.count ^ rhs.count)
        for index in 0..<max(lhs.count, rhs.count) {
            let left = index < lhs.count ? lhs[index] : 0
            let right = index < rhs.count ? rhs[index] : 0
            difference |= left ^ right
        }
        return difference == 0 && lhs.count == rhs.count
    }
}
