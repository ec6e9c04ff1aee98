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
///
/// Linkerd's retry, timeout and failure-accrual annotations (``RoutePolicyAnnotations``) on the Service and on
/// each attached HTTPRoute are compiled into the profile's `servicePolicy` and `routePolicies` (not with a
/// ServiceProfile, which Linkerd also lets win). A Service whose annotations change republishes its targets.
/// An invalid annotation drops only its own key; the issue is kept for status and Events
/// (``annotationIssues(service:)``, ``annotationIssues(route:)``).
public final class ProfileIndex: Sendable {
    public enum Input: Sendable {
        case serviceProfile(InformerEvent<ServiceProfile>)
        case httpRoute(InformerEvent<HTTPRoute>)
        /// Services, for their policy annotations only (endpoints come from ``EndpointsIndex``).
        case service(InformerEvent<ApusCore.Service>)
    }

    /// One object's parsed policy annotations and the keys that were dropped as invalid.
    struct ParsedAnnotations: Hashable {
        var annotations: RoutePolicyAnnotations
        var issues: [ValidationIssue]
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
        /// Policy annotations of Services that have any (valid or not), by Service.
        var serviceAnnotations: [ObjectKey: ParsedAnnotations] = [:]
        /// Policy annotations of the valid HTTPRoutes that have any, by route.
        var routeAnnotations: [ObjectKey: ParsedAnnotations] = [:]
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

    /// The Service's invalid (ignored) policy annotations, fields `metadata.annotations[<key>]`; empty when
    /// all are valid or the index has not seen the Service.
    public func annotationIssues(service: ObjectKey) -> [ValidationIssue] {
        state.withLockedValue { $0.serviceAnnotations[service]?.issues ?? [] }
    }

    /// The HTTPRoute's invalid (ignored) policy annotations, as ``annotationIssues(service:)``; empty for a
    /// route that failed validation (the index holds nothing of it).
    public func annotationIssues(route: ObjectKey) -> [ValidationIssue] {
        state.withLockedValue { $0.routeAnnotations[route]?.issues ?? [] }
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
                if state.routeAnnotations.removeValue(forKey: key) != nil { changed = true }
                if case .deleted = event { return changed }
                guard (try? route.compile()) != nil else { return changed }
                let trimmed = Self.trimmed(route)
                state.routeAnnotations[key] = Self.parsedAnnotations(route.metadata.annotations, on: .route)
                for parent in Self.serviceParents(of: route) {
                    state.routesByService[parent, default: [:]][key] = trimmed
                    changed = true
                }
                return changed
            case .service(let event):
                let key = event.object.objectKey
                let before = state.serviceAnnotations[key]
                if case .deleted = event {
                    state.serviceAnnotations[key] = nil
                } else {
                    state.serviceAnnotations[key] = Self.parsedAnnotations(
                        event.object.metadata.annotations, on: .service)
                }
                // Issues alone change nothing proxies see.
                return state.serviceAnnotations[key]?.annotations != before?.annotations
            }
        }
        guard changed else { return }
        // Profiles and routes can affect any target naming their FQDN from any client namespace; subscribed
        // targets are few compared with objects, and unchanged results are not published.
        for target in publisher.keys {
            publisher.publish(target, resolve(target))
        }
    }

    /// nil when the object has no policy annotation at all, so Services without any cost no memory.
    static func parsedAnnotations(
        _ annotations: [String: String]?, on resource: RoutePolicyAnnotations.Resource
    ) -> ParsedAnnotations? {
        let parsed = RoutePolicyAnnotations.parse(annotations, on: resource)
        guard parsed.annotations != RoutePolicyAnnotations() || !parsed.issues.isEmpty else { return nil }
        return ParsedAnnotations(annotations: parsed.annotations, issues: parsed.issues)
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
        let serviceAnnotations = serviceKey.flatMap { state.serviceAnnotations[$0]?.annotations }
        let servicePolicy = serviceAnnotations.map(\.policy).flatMap { $0.isEmpty ? nil : $0 }
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
                var routePolicies: [String: RoutePolicy] = [:]
                for route in routes {
                    let own = state.routeAnnotations[route.objectKey]?.annotations ?? RoutePolicyAnnotations()
                    let policy = (serviceAnnotations ?? RoutePolicyAnnotations()).overridden(by: own).policy
                    // Omitted routes fall back to `servicePolicy`, so a route that turns the Service's retries
                    // off (limit 0) must be listed even though its policy is empty.
                    if policy != servicePolicy ?? RoutePolicy() { routePolicies[route.objectKey.description] = policy }
                }
                return DestinationProfile(
                    fullyQualifiedName: target.host, port: target.port, source: .httpRoute,
                    resources: routes.map(\.objectKey.description), httpRoutes: routes, servicePolicy: servicePolicy,
                    routePolicies: routePolicies.isEmpty ? nil : routePolicies)
            }
        }
        var profile = DestinationProfile.defaultProfile(fullyQualifiedName: target.host, port: target.port)
        profile.servicePolicy = servicePolicy
        return profile
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
