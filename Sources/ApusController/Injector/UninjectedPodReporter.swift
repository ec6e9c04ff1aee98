import ApusCore
import ApusInjector
import KubernetesClient
import Logging
import Metrics
import NIOConcurrencyHelpers

/// Finds pods that should have the proxy but were created without it — the webhook was down or unreachable and
/// its `failurePolicy: Ignore` let the pod through — and says so (leader only).
///
/// ```
///  pods informer ─► (leading) key ─► cached pod + cached namespace ─► ProxyInjector.decide == inject?
///                                                                      │ yes, first time: Warning Event
///                                                                      ▼ ProxyNotInjected on the pod
///                 apus_controller_injector_uninjected_pods (gauge), …_detected_total (counter)
/// ```
///
/// "Should have the proxy" is the injector's own decision on the pod as stored: a pod that already has the proxy
/// is skipped by it, so only pods in an injected namespace (or annotated themselves) without a proxy remain.
/// Pods the webhook configuration never sends to the injector (control-plane components, the
/// `config.linkerd.io/admission-webhooks: disabled` opt-out) are left alone. Linkerd users hit this silently:
/// the pod runs unmeshed until someone notices; the Event names the remedy (re-create the pod).
///
/// Reads only the manager's caches (the Pod projection keeps annotations, labels, hostNetwork and container
/// names, which is all the decision needs); writes only Events.
public final class UninjectedPodReporter: Sendable {
    public static let reason = "ProxyNotInjected"

    /// Reads caches and records Events: both are covered by the manager's permissions.
    public static let requiredPermissions: [PermissionRule] = []

    private enum Input: Sendable {
        case check(ObjectKey)
        case deleted(ObjectKey)
    }

    private let pods: Store<Pod>
    private let namespaces: Store<Namespace>
    private let events: EventRecorder
    private let injector: ProxyInjector
    private let sink = NIOLockedValueBox<AsyncStream<Input>.Continuation?>(nil)
    private let reported = NIOLockedValueBox<Set<ObjectKey>>([])
    private let gauge: Gauge
    private let detected: Counter
    private let logger: Logger

    /// Registers a handler on `manager`'s pod informer; call before `manager.run()`.
    public init(
        manager: ControllerManager, defaults: InjectorDefaults,
        metricsFactory: any MetricsFactory = MetricsSystem.factory,
        logger: Logger = Logger(label: "apus.injector.reporter")
    ) throws {
        self.pods = manager.pods.store
        self.namespaces = manager.namespaces.store
        self.events = manager.events
        self.injector = ProxyInjector(defaults: defaults)
        self.logger = logger
        self.gauge = Gauge(label: "apus_controller_injector_uninjected_pods", factory: metricsFactory)
        self.detected = Counter(
            label: "apus_controller_injector_uninjected_pods_detected_total", factory: metricsFactory)
        let sink = self.sink
        try manager.pods.addHandler { event in
            guard let continuation = sink.withLockedValue({ $0 }) else { return }
            switch event {
            case .deleted(let pod): continuation.yield(.deleted(pod.objectKey))
            default: continuation.yield(.check(event.object.objectKey))
            }
        }
    }

    /// Pods currently known to lack the proxy they should have, sorted.
    public var uninjectedPods: [ObjectKey] { reported.withLockedValue { $0.sorted() } }

    /// Checks every cached pod, then each change, until cancelled (leadership lost or shutdown). A
    /// `LeaderComponent`.
    public func runAsLeader(_ manager: ControllerManager) async {
        let (inputs, continuation) = AsyncStream.makeStream(of: Input.self)
        sink.withLockedValue { $0 = continuation }
        defer {
            sink.withLockedValue { $0 = nil }
            continuation.finish()
        }
        for pod in pods.list() { await check(pod.objectKey) }
        for await input in inputs {
            if Task.isCancelled { return }
            switch input {
            case .check(let key): await check(key)
            case .deleted(let key): forget(key)
            }
        }
    }

    /// Whether `pod` in `namespace` should carry the proxy but does not.
    public func lacksProxy(_ pod: Pod, namespace: Namespace?) -> Bool {
        guard pod.metadata.deletionTimestamp == nil else { return false }
        let optOut = InjectorWebhookReconciler.admissionWebhooksLabel
        if pod.metadata.labels?[InjectorWebhookReconciler.controlPlaneComponentLabel] != nil { return false }
        if pod.metadata.labels?[optOut] == "disabled" || namespace?.metadata.labels?[optOut] == "disabled" {
            return false
        }
        if case .inject = injector.decide(pod: pod, namespace: namespace) { return true }
        return false
    }

    private func check(_ key: ObjectKey) async {
        guard let pod = pods.get(key) else {
            forget(key)
            return
        }
        let namespace = namespaces.get(ObjectKey(namespace: nil, name: key.namespace ?? ""))
        guard lacksProxy(pod, namespace: namespace) else {
            forget(key)
            return
        }
        let isNew = reported.withLockedValue { reported -> Bool in
            let (inserted, _) = reported.insert(key)
            gauge.record(reported.count)
            return inserted
        }
        guard isNew else { return }
        detected.increment()
        let value =
            pod.metadata.annotations?[InjectorNames.inject] ?? namespace?.metadata.annotations?[InjectorNames.inject]
        let message =
            "pod was created without the Apus proxy although injection is requested (linkerd.io/inject="
            + "\(value ?? "enabled")): the proxy injector webhook was unavailable and its failurePolicy let the pod "
            + "through. Re-create the pod (e.g. kubectl rollout restart its workload) to inject it."
        logger.warning("pod lacks the proxy", metadata: ["pod": "\(key)"])
        await events.record(object: pod, type: .warning, reason: Self.reason, message: message)
    }

    private func forget(_ key: ObjectKey) {
        reported.withLockedValue { reported in
            if reported.remove(key) != nil { gauge.record(reported.count) }
        }
    }
}
