import NIOCore
import NIOSSL

/// Why the proxy answered a request itself instead of the application: the HTTP status it sends and the text of
/// its `l5d-proxy-error` header (and the `error` label of `*_http_errors_total`).
///
/// Status codes follow Linkerd: a refused or reset connection is 502 (bad gateway), a connect that does not
/// finish within the connect timeout is **504** (Linkerd answers connect timeouts with 504 gateway timeout, not
/// 502, so callers can tell a slow network from a dead endpoint), a destination without ready endpoints is 503,
/// policy refusals are 403, an inbound request with no port to forward to is 400.
public struct ProxyError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: String, Hashable, Sendable {
        case connectRefused = "connect_refused"
        case connectTimeout = "connect_timeout"
        case tlsFailed = "tls_failed"
        case noEndpoints = "no_endpoints"
        case unauthorized = "unauthorized"
        case noTargetPort = "no_target_port"
        case badTarget = "bad_target"
        case upstreamReset = "upstream_reset"
        /// A route timeout expired (ServiceProfile `timeout`, HTTPRoute `timeouts`, `timeout.linkerd.io/*`).
        case requestTimeout = "request_timeout"
        /// The matched HTTPRoute rule uses a filter Apus does not implement: it fails closed.
        case unsupportedRoute = "unsupported_route"
    }

    public let reason: Reason
    public let message: String

    public init(_ reason: Reason, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var status: HTTPStatusCodeValue {
        switch reason {
        case .connectRefused, .tlsFailed, .upstreamReset: 502
        case .connectTimeout, .requestTimeout: 504
        case .unsupportedRoute: 500
        case .noEndpoints: 503
        case .unauthorized: 403
        case .noTargetPort, .badTarget: 400
        }
    }

    public var description: String { message }

    /// Maps a connect/handshake failure to the reason a caller sees.
    static func connectFailure(_ error: Error, target: String, identity: String?) -> ProxyError {
        if let channelError = error as? ChannelError, case .connectTimeout(let amount) = channelError {
            let millis = amount.nanoseconds / 1_000_000
            return ProxyError(.connectTimeout, "connect to \(target) timed out after \(millis)ms")
        }
        if error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError {
            let expected = identity.map { " expecting identity \($0)" } ?? ""
            return ProxyError(.tlsFailed, "TLS handshake with \(target)\(expected) failed: \(error)")
        }
        return ProxyError(.connectRefused, "connect to \(target) failed: \(error)")
    }
}

/// HTTP status as an integer literal-friendly value.
public typealias HTTPStatusCodeValue = Int
