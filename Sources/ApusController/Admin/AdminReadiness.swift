import NIOConcurrencyHelpers

/// What `GET /ready` answers.
public enum AdminReadiness: Sendable, Hashable {
    case ready
    /// Not ready; `reason` is the plain-text body of the 503, for whoever reads the probe's output.
    case notReady(reason: String)
}

/// A readiness flag that starts "not ready" and is flipped by whoever knows when the process can serve, e.g.
/// once the controller-manager's caches have synced:
///
/// ```swift
/// let readiness = AdminReadinessGate(reason: "informer caches have not synced")
/// group.addTask { await manager.waitUntilSynced(); readiness.markReady() }
/// let admin = AdminServer(registry: registry, readiness: readiness.check)
/// ```
///
/// It can go back to not ready (``markNotReady(reason:)``), e.g. while shutting down, so the load balancer stops
/// sending before the listeners close.
public final class AdminReadinessGate: Sendable {
    private let state: NIOLockedValueBox<AdminReadiness>

    public init(reason: String) {
        self.state = NIOLockedValueBox(.notReady(reason: reason))
    }

    public func markReady() { state.withLockedValue { $0 = .ready } }

    public func markNotReady(reason: String) { state.withLockedValue { $0 = .notReady(reason: reason) } }

    /// The current state; pass `gate.check` as the server's readiness closure.
    @Sendable public func check() -> AdminReadiness { state.withLockedValue { $0 } }
}
