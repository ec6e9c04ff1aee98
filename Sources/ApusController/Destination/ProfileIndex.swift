import ApusCore
import ApusDestinationClient
import KubernetesClient
import Metrics
import NIOConcurrencyHelpers

/// What a `GetProfile` stream watches: a destination FQDN and port, as seen from a client namespace (a profile
/// in the client's namespace overrides the service's own).
public struct ProfileTarget: Hashable, Sendable, CustomStringConvertible {
    /// Lower-case FQDN without trailing dot (`web.shop.svc.cluster.local`), or an IP.
    public var host: String
    public var port: Int
    public var clientNamespace: String

    public init(host: String, port: Int, clientNamespace: String) {
        self.host = host
        self.port = port
        self.clientNamespace = clientNamespace
    }

    public var description: String { "\(host):\(port) from \(clientNamespace)" }
}

/// Route configuration per destination, built from ServiceProfiles and HTTPRoutes and published to subscribers.
///
/// Precedence for a destination `host:port` asked for from namespace `c` (first that applies wins):
/// 1. the ServiceProfile named `host` in namespace `c` (a client-side override);
/// 2. the ServiceProfile named `host` in the Service's namespace;
/// 3. the HTTPRoutes whose `parentRefs` name the Service (`group: core`/`""`, `kind: Service`) with no port or
///    this port (GAMMA), all of them together, ordered by the HTTPRoute precedence rules;
/// 4. the default profile: no routes, retry budget 0.2 / 10 per s / 10 s.
///
/// **A ServiceProfile overrides HTTPRoutes for the same Service**, as Linkerd's proxies do (they ignore outbound
/// policy when a profile exists). Linkerd does so silently; Apus says so: the route status reconciler sets an
/// `Overridden` condition on each such HTTPRoute naming the ServiceProfile (``overridingProfile(for:)``).
///
/// Validity: a ServiceProfile that fails ``ServiceProfile/compile()`` does not replace the last valid version of
/// the same object, so proxies keep the last good table while the status says what is wrong; one that was never
/// valid is ignored. Invalid HTTPRoutes are left out (their status says why).
public final class ProfileIndex: Sendable {
    public enum Input: Sendable {
        case serviceProfile(InformerEvent<ServiceProfile>)
        case httpRoute(InformerEvent<HTTPRoute>)
    }

    struct ValidProfile: Hashable {
        var spec: ServiceProfile.Spec
        var opaquePorts: [Int]
    }

    struct State {
        /// The last valid spec of every ServiceProfile object (invalid updates do not replace it).
        var profiles: [ObjectKey: ValidProfile] = [:]
        /// Valid HTTPRoutes, trimmed, by the Services they attach to.
        var routesByService: [ObjectKey: [ObjectKey: HTTPRoute]] = [:]
    }

    public let configuration: DestinationConfiguration
    private let state = NIOLockedValueBox(State())
    private let publisher: TopicPublisher<ProfileTarget, DestinationProfile>

    /// - Parameter metricsFactory: where the `index="profiles"` publisher metrics go
    ///   (``DestinationPublisherMetrics``); the process's bootstrapped backend unless a test injects one.
    public init(
        configuration: DestinationConfiguration = DestinationConfiguration(),
        metricsFactory: (any MetricsFactory)? = nil
    ) {
        self.configuration = configuration
        self.publisher = TopicPublisher(
            metrics: DestinationPublisherMetrics(index: "profiles", factory: metricsFactory ?? MetricsSystem.factory))
    }

    public func subscribe(_ target: ProfileTarget) -> AsyncStream<Versioned<DestinationProfile>> {
        publisher.subscribe(target) { resolve(target) }
    }

    public var subscriberCount: Int { publisher.subscriberCount }

    /// The profile in force for `target` now.
    public func resolve(_ target: ProfileTarget) -> DestinationProfile {
        state.withLockedValue { Self.resolve(target, in: $0, clusterDomain: configuration.clusterDomain) }
    }

    /// The ServiceProfile (namespace/name) that overrides HTTPRoutes attached to `service` for every client, i.e.
    /// a valid profile in the Service's own namespace; nil when the routes are in force.
    public func overridingProfile(for service: ObjectKey) -> ObjectKey? {
        let fqdn = "\(service.name).\(service.namespace ?? "default").svc.\(configuration.clusterDomain)"
        let key = ObjectKey(namespace: service.namespace, name: fqdn)
        return state.withLockedValue { $0.profiles[key] != nil ? key : nil }
    }

    /// Applies one informer change and publishes the profiles it changed. Call from a single writer.
    public func apply(_ input: Input) {
        let changed: Bool = state.withLockedValue { state in
            switch input {
            case .serviceProfile(let event):
                let profile = event.object
                let key = profile.objectKey
                let before = state.profiles[key]
                if case .deleted = event {
                    state.profiles[key] = nil
                } else if let compiled = try? profile.compile() {
                    state.profiles[key] = ValidProfile(
                        spec: profile.spec, opaquePorts: compiled.opaquePorts.map(Int.init).sorted())
                }
                return state.profiles[key] != before
            case .httpRoute(let event):
                let route = event.object
                let key = route.objectKey
                var changed = false
                for service in Array(state.routesByService.keys) where state.routesByService[service]?[key] != nil {
                    state.routesByService[service]?[key] = nil
                    if state.routesByService[service]?.isEmpty == true { state.routesByService[service] = nil }
                    changed = true
                }
                if case .deleted = event { return changed }
                guard (try? route.compile()) != nil else { return changed }
                let trimmed = Self.trimmed(route)
                for parent in Self.serviceParents(of: route) {
                    state.routesByService[parent, default: [:]][key] = trimmed
                    changed = true
                }
                return changed
            }
        }
        guard changed else { return }
        // Profiles and routes can affect any target naming their FQDN from any client namespace; subscribed
        // targets are few compared with objects, and unchanged results are not published.
        for target in publisher.keys {
            publisher.publish(target, resolve(target))
        }
    }

    /// Services a route attaches to (GAMMA parents); other parents (Gateways) are not the mesh's.
    static func serviceParents(of route: HTTPRoute) -> Set<ObjectKey> {
        var parents: Set<ObjectKey> = []
        for parent in route.spec.parentRefs ?? [] where isServiceParent(parent) {
            parents.insert(ObjectKey(namespace: parent.namespace ?? route.metadata.namespace, name: parent.name))
        }
        return parents
    }

    static func isServiceParent(_ parent: HTTPRoute.ParentReference) -> Bool {
        let group = parent.group ?? "gateway.networking.k8s.io"
        return (group == "" || group == "core") && parent.kind == "Service"
    }

    /// The route as proxies need it: metadata cut to name, namespace and creation time (precedence inputs).
    static func trimmed(_ route: HTTPRoute) -> HTTPRoute {
        HTTPRoute(
            metadata: ObjectMeta(
                name: route.metadata.name, namespace: route.metadata.namespace,
                creationTimestamp: route.metadata.creationTimestamp),
            spec: route.spec)
    }

    static func resolve(_ target: ProfileTarget, in state: State, clusterDomain: String) -> DestinationProfile {
        let serviceKey = serviceKey(host: target.host, clusterDomain: clusterDomain)
        var candidates = [ObjectKey(namespace: target.clientNamespace, name: target.host)]
        if let serviceKey, serviceKey.namespace != target.clientNamespace {
            candidates.append(ObjectKey(namespace: serviceKey.namespace, name: target.host))
        }
        for key in candidates {
            guard let profile = state.profiles[key] else { continue }
            return DestinationProfile(
                fullyQualifiedName: target.host, port: target.port, source: .serviceProfile,
                resources: [key.description], routes: profile.spec.routes ?? [],
                retryBudget: profile.spec.retryBudget ?? DestinationProfile.defaultBudget,
                dstOverrides: profile.spec.dstOverrides ?? [], opaquePorts: profile.opaquePorts)
        }
        if let serviceKey {
            let routes = (state.routesByService[serviceKey] ?? [:]).values.filter { route in
                (route.spec.parentRefs ?? []).contains { parent in
                    isServiceParent(parent)
                        && ObjectKey(namespace: parent.namespace ?? route.metadata.namespace, name: parent.name)
                            == serviceKey
                        && (parent.port == nil || parent.port == target.port)
                }
            }.sorted { $0.objectKey < $1.objectKey }
            if !routes.isEmpty {
                return DestinationProfile(
                    fullyQualifiedName: target.host, port: target.port, source: .httpRoute,
                    resources: routes.map(\.objectKey.description), httpRoutes: routes)
            }
        }
        return .defaultProfile(fullyQualifiedName: target.host, port: target.port)
    }

    /// `web.shop.svc.<domain>` → `shop/web`.
    static func serviceKey(host: String, clusterDomain: String) -> ObjectKey? {
        let suffix = ".svc.\(clusterDomain)"
        guard host.hasSuffix(suffix) else { return nil }
        let labels = host.dropLast(suffix.count).split(separator: ".")
        guard labels.count == 2 else { return nil }
        return ObjectKey(namespace: String(labels[1]), name: String(labels[0]))
    }
}
