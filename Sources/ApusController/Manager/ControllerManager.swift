import ApusCore
import KubernetesClient
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// The controller-manager: the shared informer caches every control-plane component reads, leader election,
/// and the Event recorder.
///
/// ```
///                ┌─ Informer<Pod> ─────────┐
///  API server ──►├─ Informer<Service> ─────┤   caches (read-only Stores), warm on every replica
///   list+watch   ├─ Informer<EndpointSlice>┤──► components (destination, reconcilers, …)
///                ├─ Informer<Namespace> ───┤
///                ├─ Informer<ServiceProfile>
///                └─ Informer<HTTPRoute> ───┘
///  LeaderElector (Lease apus/apus-controller) ──► leader-only components run while this replica leads
/// ```
///
/// Caches run on every replica so a standby that wins the lease starts with warm state; components that write
/// (status, reconcilers) are leader-only. Each informer is the single owner of its cache.
public final class ControllerManager: ServiceLifecycle.Service {
    /// Work that may only run on the elected leader; cancelled when leadership is lost.
    public typealias LeaderComponent = @Sendable (ControllerManager) async -> Void

    public let options: ControllerOptions
    public let client: KubernetesClient
    public let events: EventRecorder
    public let pods: Informer<Pod>
    public let services: Informer<ApusCore.Service>
    public let endpointSlices: Informer<EndpointSlice>
    public let namespaces: Informer<Namespace>
    public let serviceProfiles: Informer<ServiceProfile>
    public let httpRoutes: Informer<HTTPRoute>
    public let elector: LeaderElector?
    private let leaderComponents: NIOLockedValueBox<[LeaderComponent]>
    private let logger: Logger

    public init(
        client: KubernetesClient, options: ControllerOptions = ControllerOptions(),
        leaderComponents: [LeaderComponent] = [], logger: Logger = Logger(label: "apus.controller")
    ) {
        self.client = client
        self.options = options
        self.leaderComponents = NIOLockedValueBox(leaderComponents)
        self.logger = logger
        self.events = EventRecorder(client: client, component: "apus-controller", host: options.identity)
        self.pods = Informer(
            client: client, Pod.self, resyncPeriod: options.resyncPeriod, transform: Self.podProjection)
        self.services = Informer(client: client, ApusCore.Service.self, resyncPeriod: options.resyncPeriod)
        self.endpointSlices = Informer(
            client: client, EndpointSlice.self, resyncPeriod: options.resyncPeriod,
            indexers: [.label(EndpointSlice.serviceNameLabel)])
        self.namespaces = Informer(client: client, Namespace.self, resyncPeriod: options.resyncPeriod)
        self.serviceProfiles = Informer(client: client, ServiceProfile.self, resyncPeriod: options.resyncPeriod)
        self.httpRoutes = Informer(client: client, HTTPRoute.self, resyncPeriod: options.resyncPeriod)
        self.elector =
            options.leaderElection
            ? LeaderElector(
                client: client,
                configuration: LeaderElectionConfiguration(
                    leaseName: options.leaseName, namespace: options.controlNamespace, identity: options.identity,
                    leaseDuration: options.leaseDuration, renewDeadline: options.renewDeadline,
                    retryPeriod: options.retryPeriod))
            : nil
    }

    /// The part of a Pod the ``pods`` cache keeps; everything else is dropped as soon as the Pod is decoded.
    ///
    /// A full Pod decodes to ~11 KB of heap (env, resources, mounts, probes, volumes, security contexts, container
    /// statuses…), and the cache holds every Pod of the cluster, so the controller stores only what its components
    /// read — like client-go's `SetTransform`. The contract: **a component that needs another Pod field adds it
    /// here** (and a test reading it through the manager), otherwise it silently sees `nil`.
    ///
    /// Kept today, and who reads it (`EndpointsIndex`: endpoint labels, identity, meshed detection, pod IPs):
    /// - metadata: name, namespace, uid, resourceVersion (the store's change detection), labels, annotations
    ///   (except `kubectl.kubernetes.io/last-applied-configuration`, a full copy of the object), ownerReferences,
    ///   deletionTimestamp;
    /// - spec: serviceAccountName, hostNetwork, and of `containers`/`initContainers` the name (proxy detection),
    ///   ports and restartPolicy (native sidecars);
    /// - status: phase, podIP, podIPs.
    ///
    /// Empty collections become `nil`, so an absent value costs no allocation.
    public static let podProjection: @Sendable (Pod) -> Pod = { pod in
        let source = pod.metadata
        var metadata = ObjectMeta(
            name: source.name, namespace: source.namespace, uid: source.uid, resourceVersion: source.resourceVersion,
            labels: nonEmpty(source.labels), ownerReferences: nonEmpty(source.ownerReferences),
            deletionTimestamp: source.deletionTimestamp)
        if var annotations = source.annotations {
            annotations[lastAppliedAnnotation] = nil
            metadata.annotations = nonEmpty(annotations)
        }
        var projected = Pod(metadata: metadata)
        projected.apiVersion = pod.apiVersion
        projected.kind = pod.kind
        if let spec = pod.spec {
            var kept = PodSpec(containers: spec.containers.map(projectContainer))
            kept.initContainers = nonEmpty(spec.initContainers?.map(projectContainer))
            kept.serviceAccountName = spec.serviceAccountName
            kept.hostNetwork = spec.hostNetwork
            projected.spec = kept
        }
        if let status = pod.status {
            var kept = PodStatus(phase: status.phase, podIP: status.podIP)
            kept.podIPs = nonEmpty(status.podIPs)
            projected.status = kept
        }
        return projected
    }

    private static let lastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

    private static func projectContainer(_ container: Container) -> Container {
        var kept = Container(name: container.name)
        kept.ports = nonEmpty(container.ports)
        kept.restartPolicy = container.restartPolicy
        return kept
    }

    private static func nonEmpty<C: Collection>(_ collection: C?) -> C? {
        guard let collection, !collection.isEmpty else { return nil }
        return collection
    }

    /// Every API call `apus-controller` makes: the manager's own parts plus each component it runs (each declares
    /// its calls next to its code). `config/rbac` must grant exactly these.
    public static func requiredPermissions(options: ControllerOptions = ControllerOptions()) -> [PermissionRule] {
        managerPermissions(options: options) + IdentityService.requiredPermissions
            + StatusReconcilers.requiredPermissions + DestinationIndexes.requiredPermissions
            + InjectorWebhookReconciler.requiredPermissions + UninjectedPodReporter.requiredPermissions
    }

    /// The calls of the caches, leader election and the Event recorder.
    static func managerPermissions(options: ControllerOptions) -> [PermissionRule] {
        let watch = ["list", "watch"]
        var rules: [PermissionRule] = [
            PermissionRule(Pod.resourceType, verbs: watch, scope: .cluster),
            PermissionRule(ApusCore.Service.resourceType, verbs: watch, scope: .cluster),
            PermissionRule(EndpointSlice.resourceType, verbs: watch, scope: .cluster),
            PermissionRule(Namespace.resourceType, verbs: watch, scope: .cluster),
            PermissionRule(ServiceProfile.resourceType, verbs: watch, scope: .cluster),
            PermissionRule(HTTPRoute.resourceType, verbs: watch, scope: .cluster),
            // EventRecorder: new Events are created, repeats bump `count` with a merge patch.
            PermissionRule(Event.resourceType, verbs: ["create", "patch"], scope: .cluster),
        ]
        // LeaderElector: create cannot be limited by name; reads and renewals can.
        rules.append(PermissionRule(Lease.resourceType, verbs: ["create"], scope: .namespace))
        rules.append(
            PermissionRule(Lease.resourceType, verbs: ["get", "update"], scope: .namespace, names: [options.leaseName]))
        return rules
    }

    /// Adds work that runs only while this replica leads. Components that need the manager's informers are built
    /// after it and register here, before ``run()``.
    public func addLeaderComponent(_ component: @escaping LeaderComponent) {
        leaderComponents.withLockedValue { $0.append(component) }
    }

    /// Whether every cache holds its first full list (readiness; never blocks).
    public var hasSynced: Bool {
        pods.hasSynced && services.hasSynced && endpointSlices.hasSynced && namespaces.hasSynced
            && serviceProfiles.hasSynced && httpRoutes.hasSynced
    }

    /// Waits until every cache holds its first full list.
    public func waitUntilSynced() async {
        await pods.waitUntilSynced()
        await services.waitUntilSynced()
        await endpointSlices.waitUntilSynced()
        await namespaces.waitUntilSynced()
        await serviceProfiles.waitUntilSynced()
        await httpRoutes.waitUntilSynced()
    }

    /// Runs the caches and, on the leader, the leader-only components, until the service group shuts down
    /// gracefully (SIGTERM) or the calling task is cancelled. Either way the lease is released on the way out so
    /// a standby takes over without waiting for it to expire.
    public func run() async {
        await cancelWhenGracefulShutdown { await self.runUntilCancelled() }
    }

    private func runUntilCancelled() async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.pods.run() }
            group.addTask { await self.services.run() }
            group.addTask { await self.endpointSlices.run() }
            group.addTask { await self.namespaces.run() }
            group.addTask { await self.serviceProfiles.run() }
            group.addTask { await self.httpRoutes.run() }
            group.addTask {
                await self.waitUntilSynced()
                self.logger.info(
                    "caches synced",
                    metadata: [
                        "pods": "\(self.pods.store.count)", "services": "\(self.services.store.count)",
                        "endpointslices": "\(self.endpointSlices.store.count)",
                        "namespaces": "\(self.namespaces.store.count)",
                        "serviceprofiles": "\(self.serviceProfiles.store.count)",
                        "httproutes": "\(self.httpRoutes.store.count)",
                    ])
                if let elector = self.elector {
                    await elector.run(
                        whileLeading: {
                            await self.recordLeadership()
                            await self.runLeaderComponents()
                        },
                        onStoppedLeading: {
                            if Task.isCancelled {
                                self.logger.info("stopped leading: shutting down")
                            } else {
                                self.logger.warning("lost leadership; leader-only components stopped")
                            }
                        },
                        onNewLeader: { leader in self.logger.info("leader is \(leader)") })
                } else {
                    await self.runLeaderComponents()
                }
            }
        }
    }

    /// Like client-go, an Event on the Lease says which replica took over, for `kubectl describe lease`.
    private func recordLeadership() async {
        let lease = ObjectReference(
            apiVersion: Lease.resourceType.apiVersion, kind: Lease.resourceType.kind,
            namespace: options.controlNamespace, name: options.leaseName)
        await events.record(
            involving: lease, type: .normal, reason: "LeaderElection", message: "\(options.identity) became leader")
    }

    private func runLeaderComponents() async {
        await withDiscardingTaskGroup { group in
            for component in leaderComponents.withLockedValue({ $0 }) {
                group.addTask { await component(self) }
            }
        }
    }
}
