import ApusCore
import KubernetesClient

/// Tells the owner of a Service when its Linkerd policy annotations (`retry.linkerd.io/*`, `timeout.linkerd.io/*`,
/// `balancer.linkerd.io/failure-accrual*`) have invalid values.
///
/// The destination index drops only the invalid keys and keeps serving the rest; without this, the dropped keys
/// would vanish silently. A Service has no status Apus may write, so the report is a Warning Event
/// `InvalidAnnotation` on the Service, naming each key (`metadata.annotations[retry.linkerd.io/limit]`) and the
/// problem. The recorder de-duplicates repeats, so re-reconciling an unchanged Service only bumps the Event's count.
public struct ServiceAnnotationReconciler: Reconciler {
    public static let invalidAnnotationReason = "InvalidAnnotation"

    private let services: Store<ApusCore.Service>
    private let events: EventRecorder

    public init(services: Store<ApusCore.Service>, events: EventRecorder) {
        self.services = services
        self.events = events
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        guard let service = services.get(key) else { return .done }
        let issues = RoutePolicyAnnotations.parse(service.metadata.annotations, on: .service).issues
        guard !issues.isEmpty else { return .done }
        let message = "ignored invalid policy annotations: " + ValidationError(issues: issues).description
        await events.record(
            object: service, type: .warning, reason: Self.invalidAnnotationReason, message: message)
        return .done
    }
}
