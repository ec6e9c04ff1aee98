import ApusCore
import ApusInjector

/// Local mode's use of the injector: the webhook's own decision (``ProxyInjector/decide(pod:namespace:)``: the
/// pod's `linkerd.io/inject` over its namespace's, host-network and already-injected pods skipped) and the proxy
/// container's environment the webhook would render, which the kubelet then points at the pod's own address and the
/// local control plane.
public struct LocalInjection: Sendable {
    /// What the webhook stamps on the pods it injected; the destination service reads it to call a pod meshed.
    public static let proxyVersionAnnotation = InjectorNames.proxyVersion
    public let injector: ProxyInjector

    public init(
        controlNamespace: String = "apus", trustDomain: String = "cluster.local",
        clusterDomain: String = "cluster.local"
    ) {
        injector = ProxyInjector(
            defaults: InjectorDefaults(
                controlPlaneNamespace: controlNamespace, trustDomain: trustDomain, clusterDomain: clusterDomain))
    }

    public func shouldInject(pod: Pod, namespace: Namespace?) -> Bool {
        if case .inject = injector.decide(pod: pod, namespace: namespace) { return true }
        return false
    }

    /// The `env` of the proxy container the webhook would add to `pod` (downward-API references unresolved), or
    /// nil when it would not inject.
    public func proxyEnvironment(pod: Pod, namespace: Namespace?) -> [EnvVar]? {
        let result = injector.inject(pod: pod, namespace: namespace)
        guard case .inject = result.decision, let injected = result.injectedPod?.spec else { return nil }
        let containers = (injected.initContainers ?? []) + injected.containers
        return containers.first { InjectorNames.proxyContainerNames.contains($0.name) }?.env
    }
}
