import ApusCore
import ApusDestinationClient
import Foundation
import KubernetesClient
import Metrics
import NIOConcurrencyHelpers

/// Settings shared by the destination indexes and server.
public struct DestinationConfiguration: Sendable, Hashable {
    /// The control plane's namespace, part of every workload identity.
    public var controlNamespace: String
    public var trustDomain: String
    public var clusterDomain: String

    public init(
        controlNamespace: String = "apus", trustDomain: String = "cluster.local",
        clusterDomain: String = "cluster.local"
    ) {
        self.controlNamespace = controlNamespace
        self.trustDomain = trustDomain
        self.clusterDomain = clusterDomain
    }

    /// Linkerd's identity name for a pod's service account.
    public func identity(serviceAccount: String, namespace: String) -> String {
        "\(serviceAccount).\(namespace).serviceaccount.identity.\(controlNamespace).\(trustDomain)"
    }
}

/// What a `Get` stream watches: a Service port, or an IP (a Service's cluster IP or a pod IP).
public enum EndpointTarget: Hashable, Sendable, CustomStringConvertible {
    case service(ObjectKey, port: Int)
    case ip(String, port: Int)

    public var description: String {
        switch self {
        case .service(let key, let port): return "\(key):\(port)"
        case .ip(let address, let port): return address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)"
        }
    }
}

/// Endpoints per Service port, built from Services, EndpointSlices and Pods and published to subscribers.
///
/// ```
///  Informer<Service> ───────┐
///  Informer<EndpointSlice> ─┼─► apply(_:) (one writer) ─► state ─► resolve(target) ─► TopicPublisher
///  Informer<Pod> ───────────┘                                         per subscribed target, latest value
/// ```
///
/// Only targets someone subscribed to are computed; an event recomputes just the targets it can affect
/// (the Service's, the slice's Service's, or those that contain the pod) and publishes only real changes.
///
/// Resolution rules:
/// - Endpoints are the slice endpoints whose `conditions.ready` is not false. When none is ready, endpoints that
///   are `serving` while `terminating` are used instead, so a rollout that briefly has only draining pods keeps
///   sending to them (kube-proxy's behaviour) rather than failing every request.
/// - The port is the slice port named like the Service port (`targetPort` resolved by the endpoints controller).
/// - A pod is meshed when it has the `linkerd.io/proxy-version` annotation, a `linkerd-proxy`/`apus-proxy`
///   container or `linkerd.io/inject: enabled`; meshed endpoints carry the service account's identity and the
///   `h2` hint, or `opaque` (with transport port 4143) when the port is in `config.linkerd.io/opaque-ports` of
///   the pod or the Service.
/// - `ExternalName` Services resolve to `.external(host:port:)`; unknown Services and IPs to `.notFound`.
/// - An IP target is a Service's cluster IP (its endpoints on that port) or a running pod's IP (that pod alone).
public final class EndpointsIndex: Sendable {
    /// An informer change, tagged by kind so one writer can apply all three in order.
    public enum Input: Sendable {
        case service(InformerEvent<ApusCore.Service>)
        case slice(InformerEvent<EndpointSlice>)
        case pod(InformerEvent<Pod>)
    }

    struct State {
        var services: [ObjectKey: ApusCore.Service] = [:]
        /// Service key → slice key → slice.
        var slices: [ObjectKey: [ObjectKey: EndpointSlice]] = [:]
        var pods: [ObjectKey: Pod] = [:]
        var podsByIP: [String: ObjectKey] = [:]
        var servicesByClusterIP: [String: ObjectKey] = [:]
        /// Which subscribed targets currently contain a pod, so a pod change recomputes only those.
        var targetsByPod: [ObjectKey: Set<EndpointTarget>] = [:]
        /// The inverse of `targetsByPod`, so re-tracking one target costs its own pods, not every tracked pod.
        var podsByTarget: [EndpointTarget: Set<ObjectKey>] = [:]
    }

    public let configuration: DestinationConfiguration
    private let state = NIOLockedValueBox(State())
    private let publisher: TopicPublisher<EndpointTarget, Resolution>

    /// - Parameter metricsFactory: where the `index="endpoints"` publisher metrics go
    ///   (``DestinationPublisherMetrics``); the process's bootstrapped backend unless a test injects one.
    public init(
        configuration: DestinationConfiguration = DestinationConfiguration(),
        metricsFactory: (any MetricsFactory)? = nil
    ) {
        self.configuration = configuration
        let state = self.state
        let metrics = DestinationPublisherMetrics(
            index: "endpoints", factory: metricsFactory ?? MetricsSystem.factory)
        self.publisher = TopicPublisher(
            metrics: metrics,
            onIdle: { target in
                state.withLockedValue { state in
                    for pod in state.podsByTarget.removeValue(forKey: target) ?? [] {
                        state.targetsByPod[pod]?.remove(target)
                        if state.targetsByPod[pod]?.isEmpty == true { state.targetsByPod[pod] = nil }
                    }
                }
            })
    }

    /// Subscribes to `target`: the stream starts with the current resolution and then carries every change
    /// (latest wins for slow readers).
    public func subscribe(_ target: EndpointTarget) -> AsyncStream<Versioned<Resolution>> {
        publisher.subscribe(target) { resolveAndTrack(target) }
    }

    /// The current resolution of `target`, computed from the index (no subscription).
    public func resolve(_ target: EndpointTarget) -> Resolution {
        state.withLockedValue { Self.resolve(target, in: $0, configuration: configuration).resolution }
    }

    public var subscriberCount: Int { publisher.subscriberCount }

    /// Applies one informer change and publishes the resolutions it changed. Call from a single writer.
    public func apply(_ input: Input) {
        let affected: Set<EndpointTarget> = state.withLockedValue { state in
            var affected: Set<EndpointTarget> = []
            let subscribed = publisher.keys
            switch input {
            case .service(let event):
                let service = event.object
                let key = service.objectKey
                if let old = state.services[key]?.spec?.clusterIP { state.servicesByClusterIP[old] = nil }
                if case .deleted = event {
                    state.services[key] = nil
                } else {
                    state.services[key] = service
                    if let ip = service.spec?.clusterIP, !ip.isEmpty, ip != "None" {
                        state.servicesByClusterIP[ip] = key
                    }
                }
                for target in subscribed {
                    switch target {
                    case .service(let targetKey, _) where targetKey == key: affected.insert(target)
                    case .ip: affected.insert(target)
                    default: break
                    }
                }
            case .slice(let event):
                let slice = event.object
                var owners: Set<ObjectKey> = []
                if case .updated(let old, _) = event, let oldOwner = Self.owner(of: old) {
                    owners.insert(oldOwner)
                    state.slices[oldOwner]?[old.objectKey] = nil
                    if state.slices[oldOwner]?.isEmpty == true { state.slices[oldOwner] = nil }
                }
                if let owner = Self.owner(of: slice) {
                    owners.insert(owner)
                    if case .deleted = event {
                        state.slices[owner]?[slice.objectKey] = nil
                        if state.slices[owner]?.isEmpty == true { state.slices[owner] = nil }
                    } else {
                        state.slices[owner, default: [:]][slice.objectKey] = slice
                    }
                }
                for target in subscribed {
                    switch target {
                    case .service(let key, _) where owners.contains(key): affected.insert(target)
                    case .ip(let address, _) where state.servicesByClusterIP[address].map(owners.contains) == true:
                        affected.insert(target)
                    default: break
                    }
                }
            case .pod(let event):
                let pod = event.object
                let key = pod.objectKey
                for ip in Self.ips(of: state.pods[key]) where state.podsByIP[ip] == key { state.podsByIP[ip] = nil }
                if case .deleted = event {
                    state.pods[key] = nil
                } else {
                    state.pods[key] = pod
                    for ip in Self.ips(of: pod) { state.podsByIP[ip] = key }
                }
                affected.formUnion(state.targetsByPod[key] ?? [])
                for target in subscribed {
                    if case .ip(let address, _) = target,
                        state.podsByIP[address] == key || Self.ips(of: pod).contains(address)
                    {
                        affected.insert(target)
                    }
                }
                // A slice may name the pod before the pod is known; recompute its Services' targets.
                if case .added = event {
                    for target in subscribed {
                        if case .service(let serviceKey, _) = target, serviceKey.namespace == key.namespace,
                            (state.slices[serviceKey] ?? [:]).values.contains(where: { Self.references($0, key) })
                        {
                            affected.insert(target)
                        }
                    }
                }
            }
            return affected
        }
        for target in affected {
            publisher.publish(target, resolveAndTrack(target))
        }
    }

    private func resolveAndTrack(_ target: EndpointTarget) -> Resolution {
        state.withLockedValue { state in
            let (resolution, pods) = Self.resolve(target, in: state, configuration: configuration)
            let previous = state.podsByTarget[target] ?? []
            for pod in previous where !pods.contains(pod) {
                state.targetsByPod[pod]?.remove(target)
                if state.targetsByPod[pod]?.isEmpty == true { state.targetsByPod[pod] = nil }
            }
            for pod in pods where !previous.contains(pod) { state.targetsByPod[pod, default: []].insert(target) }
            state.podsByTarget[target] = pods.isEmpty ? nil : pods
            return resolution
        }
    }

    // MARK: - Resolution (pure)

    static func owner(of slice: EndpointSlice) -> ObjectKey? {
        guard let name = slice.metadata.labels?[EndpointSlice.serviceNameLabel], !name.isEmpty else { return nil }
        return ObjectKey(namespace: slice.metadata.namespace, name: name)
    }

    static func references(_ slice: EndpointSlice, _ pod: ObjectKey) -> Bool {
        slice.endpoints.contains { endpoint in
            endpoint.targetRef?.kind == "Pod" && endpoint.targetRef?.name == pod.name
        }
    }

    static func ips(of pod: Pod?) -> [String] {
        guard let status = pod?.status else { return [] }
        var ips = (status.podIPs ?? []).map(\.ip)
        if let ip = status.podIP, !ips.contains(ip) { ips.append(ip) }
        return ips.filter { !$0.isEmpty }
    }

    static func resolve(
        _ target: EndpointTarget, in state: State, configuration: DestinationConfiguration
    ) -> (resolution: Resolution, pods: Set<ObjectKey>) {
        switch target {
        case .service(let key, let port):
            return resolveService(key, port: port, in: state, configuration: configuration)
        case .ip(let address, let port):
            if let service = state.servicesByClusterIP[address] {
                return resolveService(service, port: port, in: state, configuration: configuration)
            }
            if let podKey = state.podsByIP[address], let pod = state.pods[podKey], pod.spec?.hostNetwork != true,
                pod.status?.phase != "Succeeded", pod.status?.phase != "Failed"
            {
                let endpoint = makeEndpoint(
                    address: address, port: port, pod: pod, service: nil, configuration: configuration)
                return (.endpoints([endpoint.key: endpoint]), [podKey])
            }
            return (.notFound, [])
        }
    }

    static func resolveService(
        _ key: ObjectKey, port: Int, in state: State, configuration: DestinationConfiguration
    ) -> (resolution: Resolution, pods: Set<ObjectKey>) {
        guard let service = state.services[key] else { return (.notFound, []) }
        if service.spec?.type == "ExternalName" {
            guard let name = service.spec?.externalName, !name.isEmpty else { return (.notFound, []) }
            return (.external(host: name, port: port), [])
        }
        let servicePort = service.spec?.ports?.first { $0.port == port }
        var ready: EndpointSet = [:]
        var draining: EndpointSet = [:]
        var readyPods: Set<ObjectKey> = []
        var drainingPods: Set<ObjectKey> = []
        for slice in (state.slices[key] ?? [:]).values {
            guard let targetPort = slicePort(slice, servicePort: servicePort, port: port) else { continue }
            for endpoint in slice.endpoints {
                let conditions = endpoint.conditions
                let isReady = conditions?.ready ?? true
                let isDraining = !isReady && (conditions?.serving ?? false) && (conditions?.terminating ?? false)
                guard isReady || isDraining else { continue }
                var pod: Pod?
                var podKey: ObjectKey?
                if let ref = endpoint.targetRef, ref.kind == "Pod", let name = ref.name {
                    let candidate = ObjectKey(namespace: ref.namespace ?? key.namespace, name: name)
                    podKey = candidate
                    pod = state.pods[candidate]
                }
                for address in endpoint.addresses {
                    let made = makeEndpoint(
                        address: address, port: targetPort, pod: pod, service: service, configuration: configuration)
                    if isReady {
                        ready[made.key] = made
                        if let podKey { readyPods.insert(podKey) }
                    } else {
                        draining[made.key] = made
                        if let podKey { drainingPods.insert(podKey) }
                    }
                }
            }
        }
        if ready.isEmpty, !draining.isEmpty { return (.endpoints(draining), drainingPods) }
        // Track draining pods too: one turning ready (or going away) changes which set is in force.
        return (.endpoints(ready), readyPods.union(drainingPods))
    }

    /// The slice's port for the Service port: matched by name (the endpoints controller names slice ports after
    /// Service ports); without a Service port entry, the requested port itself.
    static func slicePort(_ slice: EndpointSlice, servicePort: ServicePort?, port: Int) -> Int? {
        guard let servicePort else { return port }
        let name = servicePort.name ?? ""
        if let match = (slice.ports ?? []).first(where: { ($0.name ?? "") == name }) {
            return match.port ?? servicePort.targetPort?.intValue ?? servicePort.port
        }
        return nil
    }

    static func makeEndpoint(
        address: String, port: Int, pod: Pod?, service: ApusCore.Service?, configuration: DestinationConfiguration
    ) -> Endpoint {
        var endpoint = Endpoint(address: address, port: port)
        var labels: [String: String] = [:]
        if let service {
            labels["service"] = service.metadata.name
            labels["namespace"] = service.metadata.namespace
        }
        guard let pod else {
            endpoint.labels = labels
            return endpoint
        }
        let namespace = pod.metadata.namespace ?? "default"
        let serviceAccount = pod.spec?.serviceAccountName.flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        labels["namespace"] = namespace
        labels["pod"] = pod.metadata.name
        labels["serviceaccount"] = serviceAccount
        labels.merge(ownerLabels(pod)) { current, _ in current }
        endpoint.labels = labels
        if isMeshed(pod) {
            endpoint.identity = configuration.identity(serviceAccount: serviceAccount, namespace: namespace)
            let opaque =
                opaquePorts(pod.metadata.annotations).contains(port)
                || opaquePorts(service?.metadata.annotations).contains(port)
            endpoint.protocolHint = opaque ? .opaque : .http2
            if opaque { endpoint.opaqueTransportPort = DestinationProtocol.opaqueTransportPort }
        }
        return endpoint
    }

    /// Annotations and container names by which injected pods are recognized.
    public static let proxyVersionAnnotation = "linkerd.io/proxy-version"
    public static let injectAnnotation = "linkerd.io/inject"
    public static let opaquePortsAnnotation = "config.linkerd.io/opaque-ports"
    public static let proxyContainerNames: Set<String> = ["linkerd-proxy", "apus-proxy"]

    static func isMeshed(_ pod: Pod) -> Bool {
        let annotations = pod.metadata.annotations ?? [:]
        if annotations[proxyVersionAnnotation] != nil || annotations[injectAnnotation] == "enabled" { return true }
        let containers = (pod.spec?.containers ?? []) + (pod.spec?.initContainers ?? [])
        return containers.contains { proxyContainerNames.contains($0.name) }
    }

    /// `3306,5432,8000-8100` → the ports; malformed parts are ignored (the injector validates the annotation).
    static func opaquePorts(_ annotations: [String: String]?) -> Set<Int> {
        guard let text = annotations?[opaquePortsAnnotation] else { return [] }
        var ports: Set<Int> = []
        for part in text.split(separator: ",") {
            let trimmed = part.trimmingCharacters(in: .whitespaces)
            let bounds = trimmed.split(separator: "-", maxSplits: 1).compactMap { Int($0) }
            if bounds.count == 2, bounds[0] <= bounds[1], bounds[0] >= 1, bounds[1] <= 65535,
                bounds[1] - bounds[0] <= 65535
            {
                ports.formUnion(bounds[0]...bounds[1])
            } else if bounds.count == 1, !trimmed.contains("-"), (1...65535).contains(bounds[0]) {
                ports.insert(bounds[0])
            }
        }
        return ports
    }

    /// `deployment`/`statefulset`/`daemonset`/`job` and `pod_template_hash` from the controlling owner, as
    /// Linkerd's `dst_*` metric labels; a ReplicaSet's Deployment is its name minus the pod-template hash.
    static func ownerLabels(_ pod: Pod) -> [String: String] {
        var labels: [String: String] = [:]
        let hash = pod.metadata.labels?["pod-template-hash"]
        if let hash { labels["pod_template_hash"] = hash }
        let owners = pod.metadata.ownerReferences ?? []
        guard let owner = owners.first(where: { $0.controller == true }) ?? owners.first else { return labels }
        switch owner.kind {
        case "ReplicaSet":
            if let hash, owner.name.hasSuffix("-\(hash)") {
                labels["deployment"] = String(owner.name.dropLast(hash.count + 1))
            } else if let dash = owner.name.lastIndex(of: "-") {
                labels["deployment"] = String(owner.name[..<dash])
            } else {
                labels["replicaset"] = owner.name
            }
        case "StatefulSet": labels["statefulset"] = owner.name
        case "DaemonSet": labels["daemonset"] = owner.name
        case "Job": labels["job"] = owner.name
        case "ReplicationController": labels["replicationcontroller"] = owner.name
        default: break
        }
        return labels
    }
}

extension IntOrString {
    fileprivate var intValue: Int? {
        if case .int(let value) = self { return value }
        return nil
    }
}
