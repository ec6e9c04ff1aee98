import ApusCore
import BenchmarkSupport

/// The Services and EndpointSlices of the benchmark cluster, derived from indexes like the Pods, so the parent and
/// the server child agree on every name without talking.
///
/// Service `s` (of `S`) lives in the namespace of Pod `s` and is backed by Pods `s, s+S, s+2S, …` (same namespace
/// because `S` is a multiple of the namespace count), through one EndpointSlice that names each Pod by address
/// and `targetRef`, as the endpoints controller writes it. Each Service exposes port 80 (`http`) → 8080.
enum Topology {
    static let servicePort = 80
    static let targetPort = 8080

    static func serviceName(_ service: Int) -> String { "svc-" + String(service).leftPadded(to: 4) }

    static func serviceKey(_ service: Int) -> ObjectKey {
        ObjectKey(namespace: PodFactory.namespace(index: service), name: serviceName(service))
    }

    static func sliceName(_ service: Int) -> String { serviceName(service) + "-x7k2p" }

    static func podIndexes(service: Int, services: Int, pods: Int) -> [Int] {
        Array(stride(from: service, to: pods, by: services))
    }

    static func service(_ service: Int) -> JSONValue {
        .object([
            "apiVersion": .string("v1"), "kind": .string("Service"),
            "metadata": .object([
                "name": .string(serviceName(service)), "namespace": .string(PodFactory.namespace(index: service)),
                "labels": .object(["app": .string(serviceName(service))]),
            ]),
            "spec": .object([
                "type": .string("ClusterIP"),
                "clusterIP": .string("10.96.\(service / 256).\(service % 256)"),
                "selector": .object(["app": .string(serviceName(service))]),
                "ports": .array([
                    .object([
                        "name": .string("http"), "port": .number(Double(servicePort)),
                        "targetPort": .number(Double(targetPort)), "protocol": .string("TCP"),
                    ])
                ]),
            ]),
        ])
    }

    /// The slice with every endpoint ready except, when `firstReady` is false, the first one.
    static func slice(_ service: Int, services: Int, pods: Int, firstReady: Bool = true) -> JSONValue {
        let namespace = PodFactory.namespace(index: service)
        let endpoints: [JSONValue] = podIndexes(service: service, services: services, pods: pods).enumerated().map {
            position, pod in
            let ready = position == 0 ? firstReady : true
            return .object([
                "addresses": .array([.string(PodFactory.podIP(index: pod))]),
                "conditions": .object([
                    "ready": .bool(ready), "serving": .bool(ready), "terminating": .bool(false),
                ]),
                "nodeName": .string("worker-\(pod % 50)"),
                "targetRef": .object([
                    "kind": .string("Pod"), "namespace": .string(namespace),
                    "name": .string(PodFactory.name(index: pod)),
                ]),
            ])
        }
        return .object([
            "apiVersion": .string("discovery.k8s.io/v1"), "kind": .string("EndpointSlice"),
            "metadata": .object([
                "name": .string(sliceName(service)), "namespace": .string(namespace),
                "labels": .object([
                    "kubernetes.io/service-name": .string(serviceName(service)),
                    "endpointslice.kubernetes.io/managed-by": .string("endpointslice-controller.k8s.io"),
                ]),
            ]),
            "addressType": .string("IPv4"),
            "endpoints": .array(endpoints),
            "ports": .array([
                .object([
                    "name": .string("http"), "port": .number(Double(targetPort)), "protocol": .string("TCP"),
                ])
            ]),
        ])
    }
}
