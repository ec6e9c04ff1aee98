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
    /// How often informers re-deliver every object to level-based handlers.
    public var resyncPeriod: Duration?

    public init(
        controlNamespace: String = "apus", leaderElection: Bool = true, leaseName: String = "apus-controller",
        identity: String = ControllerOptions.defaultIdentity(), resyncPeriod: Duration? = .seconds(600)
    ) {
        self.controlNamespace = controlNamespace
        self.leaderElection = leaderElection
        self.leaseName = leaseName
        self.identity = identity
        self.resyncPeriod = resyncPeriod
    }

    /// `POD_NAME` when the downward API provides it, else the host name plus the process id.
    public static func defaultIdentity(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let pod = environment["POD_NAME"], !pod.isEmpty { return pod }
        return "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
    }
}
