import ApusCore
import KubernetesClient
import NIOConcurrencyHelpers
import ServiceLifecycle

/// The destination indexes fed from a ``ControllerManager``'s informers, each by one writer task.
///
/// ```
///  pods, services, endpointSlices informers ─► handler ─► AsyncStream ─► writer task ─► EndpointsIndex
///  serviceProfiles, httpRoutes, services    ─► handler ─► AsyncStream ─► writer task ─► ProfileIndex
/// ```
///
/// Handlers only enqueue (an unbounded stream: informer events must not be dropped, and the writer applies
/// them in microseconds); the writer task applies them in informer order. Construct before the manager runs.
public final class DestinationIndexes: ServiceLifecycle.Service, Sendable {
    /// The indexes and the server only read the manager's caches (pods, services, endpointslices,
    /// serviceprofiles, httproutes: list/watch, already in ``ControllerManager/requiredPermissions(options:)``);
    /// they make no API calls of their own.
    public static let requiredPermissions: [PermissionRule] = []

    public let endpoints: EndpointsIndex
    public let profiles: ProfileIndex
    private let endpointInputs: AsyncStream<EndpointsIndex.Input>
    private let profileInputs: AsyncStream<ProfileIndex.Input>
    private let manager: ControllerManager
    private let applied = NIOLockedValueBox<[String: Int]>([:])

    /// Registers handlers on `manager`'s informers; call before `manager.run()`.
    public init(manager: ControllerManager, configuration: DestinationConfiguration) throws {
        self.manager = manager
        self.endpoints = EndpointsIndex(configuration: configuration)
        self.profiles = ProfileIndex(configuration: configuration)
        let (endpointInputs, endpointSink) = AsyncStream.makeStream(of: EndpointsIndex.Input.self)
        let (profileInputs, profileSink) = AsyncStream.makeStream(of: ProfileIndex.Input.self)
        self.endpointInputs = endpointInputs
        self.profileInputs = profileInputs
        try manager.services.addHandler { event in
            endpointSink.yield(.service(event))
            // Services' retry/timeout/failure-accrual annotations shape their profiles.
            profileSink.yield(.service(event))
        }
        try manager.endpointSlices.addHandler { endpointSink.yield(.slice($0)) }
        try manager.pods.addHandler { endpointSink.yield(.pod($0)) }
        try manager.serviceProfiles.addHandler { profileSink.yield(.serviceProfile($0)) }
        try manager.httpRoutes.addHandler { profileSink.yield(.httpRoute($0)) }
    }

    /// Applies informer changes until graceful shutdown or cancellation. Run on every replica (every replica
    /// serves destinations).
    public func run() async {
        await cancelWhenGracefulShutdown { await self.applyUntilCancelled() }
    }

    private func applyUntilCancelled() async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                for await input in self.endpointInputs {
                    if Task.isCancelled { return }
                    self.endpoints.apply(input)
                    switch input {
                    case .service(let event): self.countApplied("services", event)
                    case .slice(let event): self.countApplied("endpointslices", event)
                    case .pod(let event): self.countApplied("pods", event)
                    }
                }
            }
            group.addTask {
                for await input in self.profileInputs {
                    if Task.isCancelled { return }
                    self.profiles.apply(input)
                    switch input {
                    case .serviceProfile(let event): self.countApplied("serviceprofiles", event)
                    case .httpRoute(let event): self.countApplied("httproutes", event)
                    case .service(let event): self.countApplied("services (profiles)", event)
                    }
                }
            }
        }
    }

    /// Returns once the caches synced and the indexes received at least the objects of the first lists (so a
    /// subscriber is not told "no such service" by an index that has not seen it yet).
    public func waitUntilReady() async {
        await manager.waitUntilSynced()
        let expected: [String: Int] = [
            "services": manager.services.store.count, "endpointslices": manager.endpointSlices.store.count,
            "pods": manager.pods.store.count, "serviceprofiles": manager.serviceProfiles.store.count,
            "httproutes": manager.httpRoutes.store.count, "services (profiles)": manager.services.store.count,
        ]
        while !Task.isCancelled {
            let seen = applied.withLockedValue { $0 }
            if expected.allSatisfy({ seen[$0.key, default: 0] >= $0.value }) { break }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Counts objects of the first lists as the writers apply them (adds only: the first list is all adds).
    private func countApplied<R>(_ kind: String, _ event: InformerEvent<R>) {
        if case .added = event { applied.withLockedValue { $0[kind, default: 0] += 1 } }
    }
}
