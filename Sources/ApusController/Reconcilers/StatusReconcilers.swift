import ApusCore
import KubernetesClient
import Logging
import NIOConcurrencyHelpers

/// The leader-only status writers for ServiceProfiles and HTTPRoutes (and the Warning Events for invalid Service
/// policy annotations), wired to a ``ControllerManager``'s caches.
///
/// Construct it before the manager runs (it registers informer handlers, which must precede `run()`), and pass
/// ``runAsLeader(_:)`` as a `LeaderComponent`. Every replica's handlers see the changes, but only the leader has
/// work queues: each time this replica gains leadership it creates fresh queues, enqueues every cached object
/// (level-based: whatever happened while it was not leading is caught up), and reconciles until leadership is
/// lost.
///
/// ```swift
/// let statuses = try StatusReconcilers(manager: manager)   // before manager.run()
/// let manager = ControllerManager(client: client, leaderComponents: [statuses.runAsLeader])
/// ```
/// (In practice build the manager first and pass the component through a closure that captures `statuses`.)
public final class StatusReconcilers: Sendable {
    /// API calls made by the reconcilers (on top of the manager's list/watch and Event rules).
    public static let requiredPermissions: [PermissionRule] = [
        PermissionRule(ServiceProfile.resourceType, subresource: "status", verbs: ["patch"], scope: .cluster),
        PermissionRule(HTTPRoute.resourceType, subresource: "status", verbs: ["patch"], scope: .cluster),
    ]

    public let profileReconciler: ServiceProfileStatusReconciler
    public let routeReconciler: HTTPRouteStatusReconciler
    public let serviceReconciler: ServiceAnnotationReconciler
    private let queues = NIOLockedValueBox<
        (profiles: WorkQueue<ObjectKey>, routes: WorkQueue<ObjectKey>, services: WorkQueue<ObjectKey>)?
    >(nil)
    private let profileStore: Store<ServiceProfile>
    private let routeStore: Store<HTTPRoute>
    private let serviceStore: Store<ApusCore.Service>
    private let workers: Int
    private let logger: Logger

    /// Registers the handlers on `manager`'s informers. Call before `manager.run()`.
    public convenience init(
        manager: ControllerManager, clusterDomain: String = "cluster.local", workers: Int = 2,
        logger: Logger = Logger(label: "apus.status")
    ) throws {
        try self.init(
            client: manager.client, profiles: manager.serviceProfiles, routes: manager.httpRoutes,
            services: manager.services, events: manager.events, clusterDomain: clusterDomain, workers: workers,
            logger: logger)
    }

    public init(
        client: KubernetesClient, profiles: Informer<ServiceProfile>, routes: Informer<HTTPRoute>,
        services: Informer<ApusCore.Service>, events: EventRecorder, clusterDomain: String = "cluster.local",
        workers: Int = 2, logger: Logger = Logger(label: "apus.status")
    ) throws {
        self.profileReconciler = ServiceProfileStatusReconciler(
            client: client, profiles: profiles.store, events: events)
        self.routeReconciler = HTTPRouteStatusReconciler(
            client: client, routes: routes.store, services: services.store, profiles: profiles.store, events: events,
            clusterDomain: clusterDomain)
        self.serviceReconciler = ServiceAnnotationReconciler(services: services.store, events: events)
        self.profileStore = profiles.store
        self.routeStore = routes.store
        self.serviceStore = services.store
        self.workers = workers
        self.logger = logger
        let queues = self.queues
        let routeStore = routes.store
        try profiles.addHandler { event in
            guard let current = queues.withLockedValue({ $0 }) else { return }
            await current.profiles.add(event.object.objectKey)
            // A profile for a Service's FQDN overrides (or stops overriding) its routes.
            let name = event.object.metadata.name ?? ""
            let suffix = ".svc.\(clusterDomain)"
            if name.hasSuffix(suffix) {
                let labels = name.dropLast(suffix.count).split(separator: ".")
                if labels.count == 2 {
                    let service = ObjectKey(namespace: String(labels[1]), name: String(labels[0]))
                    for key in HTTPRouteStatusReconciler.routes(referencing: service, in: routeStore) {
                        await current.routes.add(key)
                    }
                }
            }
        }
        try routes.addHandler { event in
            guard let current = queues.withLockedValue({ $0 }) else { return }
            await current.routes.add(event.object.objectKey)
        }
        try services.addHandler { event in
            guard let current = queues.withLockedValue({ $0 }) else { return }
            if case .updated(let old, let new) = event, old == new { return }
            if case .deleted = event {} else { await current.services.add(event.object.objectKey) }
            for key in HTTPRouteStatusReconciler.routes(referencing: event.object.objectKey, in: routeStore) {
                await current.routes.add(key)
            }
        }
    }

    /// Reconciles until the calling task is cancelled (leadership lost or shutdown). A `LeaderComponent`.
    public func runAsLeader(_ manager: ControllerManager) async {
        await runWhileLeading()
    }

    /// Same as ``runAsLeader(_:)`` without a manager, for callers that wire informers themselves.
    public func runWhileLeading() async {
        let profiles = Controller(
            name: "serviceprofile-status", reconciler: profileReconciler, workers: workers, logger: logger)
        let routes = Controller(name: "httproute-status", reconciler: routeReconciler, workers: workers, logger: logger)
        let services = Controller(
            name: "service-annotations", reconciler: serviceReconciler, workers: 1, logger: logger)
        queues.withLockedValue { $0 = (profiles.queue, routes.queue, services.queue) }
        defer { queues.withLockedValue { $0 = nil } }
        for profile in profileStore.list() { await profiles.enqueue(profile.objectKey) }
        for route in routeStore.list() { await routes.enqueue(route.objectKey) }
        for service in serviceStore.list() { await services.enqueue(service.objectKey) }
        await withDiscardingTaskGroup { group in
            group.addTask { await profiles.run() }
            group.addTask { await routes.run() }
            group.addTask { await services.run() }
        }
    }
}
