import ApusController
import ApusCore
import ApusDestinationClient
import Foundation
import KubernetesClient
import Testing

/// `ControllerManager.podProjection`: the Pod cache keeps only what the controller reads, and the destination
/// index answers exactly as it would from the full Pod.
@Suite struct PodProjectionTests {
    /// A meshed Deployment replica as `kubectl get pod -o json` shows it, with a native-sidecar proxy (recognized
    /// by its container name only) and everything the projection is meant to drop.
    static func fullPod(name: String = "web-5d8f9c7b6-x2x7k", ip: String = "10.0.0.7") throws -> Pod {
        let json = """
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "\(name)", "namespace": "shop", "uid": "uid-1", "resourceVersion": "42",
               "generateName": "web-5d8f9c7b6-", "creationTimestamp": "2025-03-14T09:26:53Z",
               "labels": {"app": "web", "pod-template-hash": "5d8f9c7b6"},
               "annotations": {"config.linkerd.io/opaque-ports": "8080",
                 "kubectl.kubernetes.io/last-applied-configuration": "{\\"huge\\": true}"},
               "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f9c7b6",
                 "uid": "rs-1", "controller": true}],
               "finalizers": ["example.com/keep"]},
             "spec": {"serviceAccountName": "web", "nodeName": "worker-1", "restartPolicy": "Always",
               "volumes": [{"name": "config", "configMap": {"name": "web"}}],
               "securityContext": {"runAsNonRoot": true},
               "initContainers": [{"name": "linkerd-proxy", "image": "proxy:1", "restartPolicy": "Always",
                 "ports": [{"name": "linkerd-proxy", "containerPort": 4143}],
                 "env": [{"name": "LOG", "value": "info"}]}],
               "containers": [{"name": "web", "image": "nginx:1", "args": ["--port", "8080"],
                 "env": [{"name": "PORT", "value": "8080"}],
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                 "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}],
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                 "securityContext": {"readOnlyRootFilesystem": true}}]},
             "status": {"phase": "Running", "podIP": "\(ip)", "podIPs": [{"ip": "\(ip)"}, {"ip": "fd00::7"}],
               "hostIP": "192.168.0.10", "startTime": "2025-03-14T09:26:55Z",
               "conditions": [{"type": "Ready", "status": "True"}],
               "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "image": "nginx:1"}]}}
            """
        return try JSONDecoder().decode(Pod.self, from: Data(json.utf8))
    }

    @Test("keeps identity, labels, owners, service account, host network, container names and ports, phase and IPs")
    func keepsWhatTheControllerReads() throws {
        let projected = ControllerManager.podProjection(try Self.fullPod())
        let metadata = projected.metadata
        #expect(metadata.name == "web-5d8f9c7b6-x2x7k" && metadata.namespace == "shop")
        #expect(metadata.uid == "uid-1" && metadata.resourceVersion == "42")
        #expect(metadata.labels == ["app": "web", "pod-template-hash": "5d8f9c7b6"])
        #expect(metadata.annotations == ["config.linkerd.io/opaque-ports": "8080"])
        #expect(metadata.ownerReferences?.first?.name == "web-5d8f9c7b6")
        #expect(projected.apiVersion == "v1" && projected.kind == "Pod")
        let spec = try #require(projected.spec)
        #expect(spec.serviceAccountName == "web")
        #expect(spec.containers.map(\.name) == ["web"])
        #expect(spec.containers.first?.ports == [ContainerPort(name: "http", containerPort: 8080, protocol: "TCP")])
        #expect(spec.initContainers?.map(\.name) == ["linkerd-proxy"])
        #expect(spec.initContainers?.first?.restartPolicy == "Always")
        let status = try #require(projected.status)
        #expect(status.phase == "Running" && status.podIP == "10.0.0.7")
        #expect(status.podIPs?.map(\.ip) == ["10.0.0.7", "fd00::7"])
    }

    @Test("drops env, resources, mounts, probes, volumes, security contexts, statuses and last-applied config")
    func dropsWhatNobodyReads() throws {
        let projected = ControllerManager.podProjection(try Self.fullPod())
        let container = try #require(projected.spec?.containers.first)
        #expect(container.image == nil && container.args == nil && container.env == nil)
        #expect(container.resources == nil && container.volumeMounts == nil && container.readinessProbe == nil)
        #expect(container.securityContext == nil)
        #expect(projected.spec?.initContainers?.first?.env == nil)
        #expect(projected.spec?.volumes == nil && projected.spec?.securityContext == nil)
        #expect(projected.spec?.nodeName == nil)
        #expect(projected.status?.conditions == nil && projected.status?.containerStatuses == nil)
        #expect(projected.status?.hostIP == nil)
        #expect(projected.metadata.finalizers == nil && projected.metadata.generateName == nil)
        let encoded = try JSONEncoder().encode(projected)
        let full = try JSONEncoder().encode(try Self.fullPod())
        #expect(encoded.count * 2 < full.count, "projection \(encoded.count) B of \(full.count) B")
    }

    @Test("empty collections become nil and a projection of a projection changes nothing")
    func emptyCollectionsAndIdempotence() throws {
        var pod = Pod(
            metadata: ObjectMeta(name: "bare", namespace: "shop", labels: [:], annotations: [:], ownerReferences: []),
            spec: PodSpec(containers: [Container(name: "app")]), status: PodStatus(phase: "Pending"))
        pod.spec?.initContainers = []
        pod.spec?.containers[0].ports = []
        pod.status?.podIPs = []
        let projected = ControllerManager.podProjection(pod)
        #expect(projected.metadata.labels == nil && projected.metadata.annotations == nil)
        #expect(projected.metadata.ownerReferences == nil)
        #expect(projected.spec?.initContainers == nil && projected.spec?.containers.first?.ports == nil)
        #expect(projected.status?.podIPs == nil)
        let full = ControllerManager.podProjection(try Self.fullPod())
        #expect(ControllerManager.podProjection(full) == full)
    }

    @Test("the endpoints index resolves the same endpoints from projected pods as from full ones")
    func endpointsIndexAnswersTheSame() throws {
        let service = Fixtures.service()
        let slice = Fixtures.slice([("web-a", "10.0.0.7", true, true, false), ("web-b", "10.0.0.8", true, true, false)])
        let full = [try Self.fullPod(name: "web-a", ip: "10.0.0.7"), Fixtures.pod("web-b", ip: "10.0.0.8")]
        let targets: [EndpointTarget] = [
            .service(ObjectKey(namespace: "shop", name: "web"), port: 80), .ip("10.0.0.7", port: 8080),
            .ip("fd00::7", port: 8080), .ip("10.0.0.8", port: 9090),
        ]
        var answers: [[Resolution]] = []
        for transform in [{ $0 }, ControllerManager.podProjection] as [@Sendable (Pod) -> Pod] {
            let index = EndpointsIndex(configuration: Fixtures.configuration)
            index.apply(.service(.added(service)))
            for pod in full { index.apply(.pod(.added(transform(pod)))) }
            index.apply(.slice(.added(slice)))
            answers.append(targets.map(index.resolve))
        }
        #expect(answers[0] == answers[1])
        guard case .endpoints(let byIP) = answers[1][1] else {
            Issue.record("no endpoint for the pod IP: \(answers[1][1])")
            return
        }
        let endpoint = try #require(byIP.values.first)
        #expect(endpoint.identity == "web.shop.serviceaccount.identity.apus.cluster.local", "meshed by container name")
        #expect(endpoint.protocolHint == .opaque, "opaque port from the kept annotation")
    }
}
