import Foundation

/// Settings of the controller manager, mirroring the flags of `apus-controller`.
public struct ControllerOptions: Sendable, Hashable {
    /// The namespace the control plane runs in (Linkerd's `linkerd`); leases live here.
    public var controlNamespace: String
    /// Campaign for leadership on a Lease before running leader-only components. Off runs them at once,
    /// which is only safe with a single replica.
    public var leaderElection: Bool
    public var leaseName: String
    /// Unique per replica; the pod name in a cluster.
    public var identity: String
    /// Lease timing (client-go's defaults: 15 s / 10 s / 2 s). A standby takes over at most `leaseDuration`
    /// after the leader dies, at once when it shuts down cleanly (the lease is released).
    public var leaseDuration: Duration
    public var renewDeadline: Duration
    public var retryPeriod: Duration
    /// How often informers re-deliver every object to level-based handlers.
    public var resyncPeriod: Duration?

    public init(
        controlNamespace: String = "apus", leaderElection: Bool = true, leaseName: String = "apus-controller",
        identity: String = ControllerOptions.defaultIdentity(), leaseDuration: Duration = .seconds(15),
        renewDeadline: Duration = .seconds(10), retryPeriod: Duration = .seconds(2),
        resyncPeriod: Duration? = .seconds(600)
    ) {
        self.controlNamespace = controlNamespace
        self.leaderElection = leaderElection
        self.leaseName = leaseName
        self.identity = identity
        self.leaseDuration = leaseDuration
        self.renewDeadline = renewDeadline
        self.retryPeriod = retryPeriod
        self.resyncPeriod = resyncPeriod
    }

    /// `POD_NAME` when the downward API provides it, else the host name plus the process id.
    public static func defaultIdentity(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let pod = environment["POD_NAME"], !pod.isEmpty { return pod }
        return "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
    }
}
