import Foundation
import NIOConcurrencyHelpers

/// Supplies the bearer token for each request.
///
/// A token from a file is cached and read again once it is older than the refresh interval, or at once after
/// the server answered 401: the kubelet rotates projected service account tokens in place, and a client that
/// read the file once at startup starts failing about an hour later.
///
/// ```swift
/// let tokens = TokenProvider(.tokenFile("/var/run/secrets/kubernetes.io/serviceaccount/token"),
///                            refreshInterval: .seconds(60))
/// let header = try tokens.token().map { "Bearer \($0)" }
/// ```
public final class TokenProvider: Sendable {
    private struct Cached {
        var token: String
        var readAt: ContinuousClock.Instant
    }

    private let authentication: ClientConfiguration.Authentication
    private let refreshInterval: Duration
    private let now: @Sendable () -> ContinuousClock.Instant
    private let cache = NIOLockedValueBox<Cached?>(nil)

    /// - Parameter now: the clock, injectable so tests can age the cache without sleeping.
    public init(
        _ authentication: ClientConfiguration.Authentication, refreshInterval: Duration = .seconds(60),
        now: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }
    ) {
        self.authentication = authentication
        self.refreshInterval = refreshInterval
        self.now = now
    }

    /// The current token, or `nil` when the configuration has none.
    ///
    /// - Throws: ``KubeConfigError`` `.unreadableFile` when the token file cannot be read and no earlier
    ///   token is cached (a transient read failure during rotation keeps using the previous token).
    public func token() throws -> String? {
        switch authentication {
        case .none: return nil
        case .bearer(let token): return token
        case .tokenFile(let path):
            let instant = now()
            if let cached = cache.withLockedValue({ $0 }), cached.readAt.duration(to: instant) < refreshInterval {
                return cached.token
            }
            do {
                let token = try ClientConfiguration.readFile(path).trimmingCharacters(in: .whitespacesAndNewlines)
                cache.withLockedValue { $0 = Cached(token: token, readAt: instant) }
                return token
            } catch {
                if let previous = cache.withLockedValue({ $0?.token }) { return previous }
                throw error
            }
        }
    }

    /// Forgets the cached token so the next ``token()`` reads the file again; called after a 401.
    /// Returns whether a re-read can change anything (only file-based tokens can).
    @discardableResult
    public func invalidate() -> Bool {
        guard case .tokenFile = authentication else { return false }
        cache.withLockedValue { $0 = nil }
        return true
    }
}
