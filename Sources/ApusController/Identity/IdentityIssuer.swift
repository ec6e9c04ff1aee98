import ApusIdentity
import ApusX509
import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers

/// The issuer the identity service signs with right now, swapped atomically when its source changes.
///
/// An ``IssuerSource`` offers credentials (PEM texts) with ``load(anchorsPEM:issuerCertificatePEM:issuerKeyPEM:)``;
/// they are validated (``IssuerCredentials``: the issuer is a CA, chains to an anchor, is not expired, the key
/// matches) and, when valid, replace the current ``CertificateAuthority`` in one step. Requests already running
/// finish with the authority they started with; the next request uses the new one. Invalid credentials never
/// replace valid ones: the old issuer keeps signing and the outcome says why the new one was refused.
///
/// Until the first valid credentials arrive, ``authority()`` throws `issuerNotReady` naming the reason the
/// source gave (``markNotReady(_:)``) or the last validation failure, so a proxy's 503 and the controller's log
/// say what is missing.
///
/// Publishes the gauge `issuer_cert_ttl_seconds` (seconds until the issuer certificate expires; refreshed on
/// every change and by ``refreshGauge(now:)``).
public final class IdentityIssuer: Sendable {
    /// What ``load(anchorsPEM:issuerCertificatePEM:issuerKeyPEM:)`` did.
    public enum LoadOutcome: Sendable {
        /// The credentials are now in use.
        case updated(IssuerCredentials)
        /// Identical to the credentials in use: nothing changed.
        case unchanged
        /// Refused; the previous issuer (if any) stays. `repeated` is true when the very same texts were already
        /// refused, so sources can avoid repeating Events and log lines on every poll.
        case rejected(IdentityError, repeated: Bool)
    }

    /// The current credentials with everything needed to sign.
    struct Active: Sendable {
        var authority: CertificateAuthority
        var credentials: IssuerCredentials
        var fingerprint: Fingerprint
    }

    struct Fingerprint: Hashable, Sendable {
        var anchors: String
        var certificate: String
        var key: String
    }

    private struct State: Sendable {
        var active: Active?
        var generation = 0
        var notReadyReason = "no issuer credentials have been loaded yet"
        var lastRejected: Fingerprint?
        var subscribers: [Int: AsyncStream<IssuerCredentials>.Continuation] = [:]
        var nextSubscriber = 0
    }

    public let leafLifetime: TimeInterval
    public let clockSkew: TimeInterval
    private let state = NIOLockedValueBox(State())
    private let ttlGauge: Gauge
    private let logger: Logger

    /// - Parameters:
    ///   - leafLifetime: validity of issued leaves (Linkerd: 24 h).
    ///   - clockSkew: leaves are valid this long before issuance and after their lifetime (Linkerd: 20 s).
    public init(
        leafLifetime: TimeInterval = 86400, clockSkew: TimeInterval = 20,
        metricsFactory: any MetricsFactory = MetricsSystem.factory,
        logger: Logger = Logger(label: "apus.identity.issuer")
    ) {
        self.leafLifetime = leafLifetime
        self.clockSkew = clockSkew
        self.ttlGauge = Gauge(label: "issuer_cert_ttl_seconds", factory: metricsFactory)
        self.logger = logger
    }

    /// The authority to issue with.
    /// - Throws: `issuerNotReady` with the reason while no valid credentials have been loaded.
    public func authority() throws(IdentityError) -> CertificateAuthority {
        try active().authority
    }

    func active() throws(IdentityError) -> Active {
        let (active, reason) = state.withLockedValue { ($0.active, $0.notReadyReason) }
        guard let active else { throw IdentityError(.issuerNotReady, "the identity issuer is not ready: \(reason)") }
        return active
    }

    /// The credentials in use, or nil before the first valid ones.
    public var credentials: IssuerCredentials? { state.withLockedValue { $0.active?.credentials } }

    public var isReady: Bool { state.withLockedValue { $0.active != nil } }

    /// Bumped on every switch of credentials.
    public var generation: Int { state.withLockedValue { $0.generation } }

    /// Validates and, when valid and different, switches to the given credentials.
    @discardableResult
    public func load(
        anchorsPEM: String, issuerCertificatePEM: String, issuerKeyPEM: String, now: Date = Date()
    ) -> LoadOutcome {
        let fingerprint = Fingerprint(anchors: anchorsPEM, certificate: issuerCertificatePEM, key: issuerKeyPEM)
        let known = state.withLockedValue { state -> LoadOutcome? in
            if state.active?.fingerprint == fingerprint { return .unchanged }
            return nil
        }
        if let known { return known }
        let next: Active
        do throws(IdentityError) {
            let credentials = try IssuerCredentials(
                anchorsPEM: anchorsPEM, issuerCertificatePEM: issuerCertificatePEM, issuerKeyPEM: issuerKeyPEM,
                now: now)
            next = Active(
                authority: CertificateAuthority(
                    credentials: credentials, leafLifetime: leafLifetime, clockSkew: clockSkew),
                credentials: credentials, fingerprint: fingerprint)
        } catch {
            return reject(error, fingerprint: fingerprint)
        }
        let subscribers = state.withLockedValue { state in
            state.active = next
            state.generation += 1
            state.lastRejected = nil
            return Array(state.subscribers.values)
        }
        refreshGauge(now: now)
        for subscriber in subscribers { subscriber.yield(next.credentials) }
        logger.info(
            "identity issuer loaded",
            metadata: [
                "issuer": "\(next.credentials.issuer.subjectCommonName ?? "")",
                "expires": "\(next.credentials.issuerExpiry)",
                "anchors": "\(next.credentials.anchors.count)",
            ])
        return .updated(next.credentials)
    }

    private func reject(_ error: IdentityError, fingerprint: Fingerprint) -> LoadOutcome {
        let (repeated, ready) = state.withLockedValue { state in
            let repeated = state.lastRejected == fingerprint
            state.lastRejected = fingerprint
            if state.active == nil { state.notReadyReason = "the issuer credentials are invalid: \(error.message)" }
            return (repeated, state.active != nil)
        }
        if !repeated {
            logger.error(
                ready
                    ? "new identity issuer credentials are invalid; keeping the current issuer"
                    : "identity issuer credentials are invalid; Certify answers issuerNotReady until they are fixed",
                metadata: ["error": "\(error.message)"])
        }
        return .rejected(error, repeated: repeated)
    }

    /// Records why there are no credentials yet (e.g. "Secret apus/apus-identity-issuer not found"); ignored once
    /// an issuer is loaded, which stays in use when its source disappears.
    public func markNotReady(_ reason: String) {
        let changed = state.withLockedValue { state -> Bool in
            guard state.active == nil, state.notReadyReason != reason else { return false }
            state.notReadyReason = reason
            return true
        }
        if changed {
            logger.warning(
                "identity issuer not ready; Certify answers issuerNotReady", metadata: ["reason": "\(reason)"])
        }
    }

    /// Sets `issuer_cert_ttl_seconds` to the time left on the issuer certificate (negative once expired).
    public func refreshGauge(now: Date = Date()) {
        guard let expiry = state.withLockedValue({ $0.active?.credentials.issuerExpiry }) else { return }
        ttlGauge.record(expiry.timeIntervalSince(now))
    }

    /// Every new set of credentials, starting with the current one if there is one. Only the newest undelivered
    /// value is kept for a slow consumer.
    public func updates() -> AsyncStream<IssuerCredentials> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: IssuerCredentials.self, bufferingPolicy: .bufferingNewest(1))
        let id = state.withLockedValue { state in
            let id = state.nextSubscriber
            state.nextSubscriber += 1
            state.subscribers[id] = continuation
            if let active = state.active { continuation.yield(active.credentials) }
            return id
        }
        continuation.onTermination = { [weak self] _ in
            self?.state.withLockedValue { _ = $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }
}
