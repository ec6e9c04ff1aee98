import ApusCore
import KubernetesClient
import Logging
import ServiceLifecycle

/// Derives `EndpointSlice`s from Services and Pods, the job kube-controller-manager's endpointslice controller
/// does in a cluster, so the destination service reads the same objects locally as it does there.
///
/// For each Service with a selector: the pods of its namespace that match the selector, have an address and are
/// neither terminating nor finished become endpoints (`ready` from the pod's Ready condition, `targetRef` to the
/// pod). Pods are grouped by their resolved port numbers (named `targetPort`s may differ between pods), one slice
/// per group, named `<service>-<n>` and labelled `kubernetes.io/service-name` and
/// `endpointslice.kubernetes.io/managed-by: apus-local`. Services without a selector are left alone (their slices
/// are the user's). Level-based and idempotent; a failed write is retried with the work queue's backoff.
public final class EndpointSliceController: ServiceLifecycle.Service, Sendable {
    public static let managedByLabel = "endpointslice.kubernetes.io/managed-by"
    public static let managerName = "apus-local"

    let services: Informer<ApusCore.Service>
    let pods: Informer<Pod>
    let slices: Informer<EndpointSlice>
    private let controller: Controller<SliceReconciler>

    public init(client: KubernetesClient, logger: Logger = Logger(label: "apus.local.endpointslices")) throws {
        services = Informer(client: client, ApusCore.Service.self)
        pods = Informer(client: client, Pod.self, indexers: [.namespace])
        slices = Informer(client: client, EndpointSlice.self, indexers: [.label(EndpointSlice.serviceNameLabel)])
        controller = Controller(
            name: "local-endpointslices",
            reconciler: SliceReconciler(
                client: client, services: services.store, pods: pods.store, slices: slices.store),
            logger: logger)
        try controller.watch(services)
        let services = services.store
        // A pod change touches every Service of its namespace whose selector matches the pod (before or after).
        try controller.watch(pods) { pod in
            let namespace = pod.metadata.namespace ?? "default"
            return services.list(namespace: namespace).filter { service in
                guard let selector = service.spec?.selector, !selector.isEmpty else { return false }
                return selector.allSatisfy { pod.metadata.labels?[$0.key] == $0.value }
            }.map(\.objectKey)
        }
        try controller.watch(slices) { slice in
            guard slice.metadata.labels?[Self.managedByLabel] == Self.managerName,
                let service = slice.metadata.labels?[EndpointSlice.serviceNameLabel]
            else { return [] }
            return [ObjectKey(namespace: slice.metadata.namespace, name: service)]
        }
    }

    public func run() async {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.services.run() }
                group.addTask { await self.pods.run() }
                group.addTask { await self.slices.run() }
                group.addTask {
                    await self.services.waitUntilSynced()
                    await self.pods.waitUntilSynced()
                    await self.slices.waitUntilSynced()
                    await self.controller.run()
                }
            }
        }
    }
}

struct SliceReconciler: Reconciler {
    let client: KubernetesClient
    let services: Store<ApusCore.Service>
    let pods: Store<Pod>
    let slices: Store<EndpointSlice>

    func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        let namespace = key.namespace ?? "default"
        let existing = try slices.byIndex(
            name: Store<EndpointSlice>.labelIndexName(EndpointSlice.serviceNameLabel), value: key.name
        ).filter {
            $0.metadata.namespace == namespace
                && $0.metadata.labels?[EndpointSliceController.managedByLabel] == EndpointSliceController.managerName
        }
        var desired: [String: EndpointSlice] = [:]
        if let service = services.get(key), let selector = service.spec?.selector, !selector.isEmpty {
            desired = Self.desiredSlices(service: service, pods: pods.list(namespace: namespace))
        }
        for (name, slice) in desired.sorted(by: { $0.key < $1.key }) {
            if let current = existing.first(where: { $0.metadata.name == name }) {
                guard
                    current.endpoints != slice.endpoints || current.ports != slice.ports
                        || current.metadata.labels != slice.metadata.labels
                else { continue }
                // This controller is the slice's only writer: an unconditional replace cannot lose anyone's change,
                // and the cache's resourceVersion may lag our own last write.
                var updated = slice
                updated.metadata.uid = current.metadata.uid
                _ = try await client.update(updated)
            } else {
                _ = try await client.create(slice, namespace: namespace)
            }
        }
        for stale in existing where desired[stale.metadata.name ?? ""] == nil {
            do {
                try await client.delete(EndpointSlice.self, name: stale.metadata.name ?? "", namespace: namespace)
            } catch let error as KubernetesError where error.code == .notFound {
                continue
            }
        }
        return .done
    }

    static func desiredSlices(service: ApusCore.Service, pods: [Pod]) -> [String: EndpointSlice] {
        let selector = service.spec?.selector ?? [:]
        let servicePorts = service.spec?.ports ?? []
        let serviceName = service.metadata.name ?? ""
        var groups: [[EndpointSlice.Port]: [EndpointSlice.Endpoint]] = [:]
        for pod in pods.sorted(by: { ($0.metadata.name ?? "") < ($1.metadata.name ?? "") }) {
            guard selector.allSatisfy({ pod.metadata.labels?[$0.key] == $0.value }),
                let ip = pod.status?.podIP, !ip.isEmpty, pod.metadata.deletionTimestamp == nil,
                pod.status?.phase != "Succeeded", pod.status?.phase != "Failed"
            else { continue }
            let ports = servicePorts.compactMap { port -> EndpointSlice.Port? in
                guard let number = targetPort(port, pod: pod) else { return nil }
                return EndpointSlice.Port(
                    name: port.name ?? "", port: number, protocol: port.protocol ?? "TCP",
                    appProtocol: port.appProtocol)
            }
            let ready = pod.status?.conditions?.first { $0.type == "Ready" }?.status == "True"
            var endpoint = EndpointSlice.Endpoint(
                addresses: [ip], conditions: .init(ready: ready, serving: ready, terminating: false),
                targetRef: ObjectReference(
                    kind: "Pod", namespace: pod.metadata.namespace, name: pod.metadata.name, uid: pod.metadata.uid))
            endpoint.nodeName = "local"
            groups[ports, default: []].append(endpoint)
        }
        var slices: [String: EndpointSlice] = [:]
        let ordered = groups.sorted { lhs, rhs in
            lhs.key.map { "\($0.port ?? 0)" }.joined(separator: ",")
                < rhs.key.map { "\($0.port ?? 0)" }.joined(
                    separator: ",")
        }
        for (index, group) in ordered.enumerated() {
            let name = "\(serviceName)-\(index)"
            var labels = service.metadata.labels ?? [:]
            labels[EndpointSlice.serviceNameLabel] = serviceName
            labels[EndpointSliceController.managedByLabel] = EndpointSliceController.managerName
            slices[name] = EndpointSlice(
                metadata: ObjectMeta(name: name, namespace: service.metadata.namespace, labels: labels),
                endpoints: group.value, ports: group.key)
        }
        if slices.isEmpty {
            // An empty slice tells consumers the service exists with no endpoints (as the real controller does).
            var labels = service.metadata.labels ?? [:]
            labels[EndpointSlice.serviceNameLabel] = serviceName
            labels[EndpointSliceController.managedByLabel] = EndpointSliceController.managerName
            let name = "\(serviceName)-0"
            slices[name] = EndpointSlice(
                metadata: ObjectMeta(name: name, namespace: service.metadata.namespace, labels: labels),
                endpoints: [],
                ports: servicePorts.map {
                    EndpointSlice.Port(name: $0.name ?? "", port: nil, protocol: $0.protocol ?? "TCP")
                })
        }
        return slices
    }

    static func targetPort(_ port: ServicePort, pod: Pod) -> Int? {
        switch port.targetPort {
        case nil: return port.port
        case .int(let number)?: return number
        case .string(let name)?:
            for container in pod.spec?.containers ?? [] {
                if let match = container.ports?.first(where: { $0.name == name }) { return match.containerPort }
            }
            return nil
        }
    }
}
