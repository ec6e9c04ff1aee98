import ApusCore
import Foundation
import KubernetesClient
import NIOConcurrencyHelpers
import ServiceLifecycle
import Testing

@testable import ApusLocal

/// Local mode in-process: a manifests folder, the embedded API server, the controller's components and the local
/// kubelet running real processes (python3's http.server stands in for an application).
@Suite(.serialized) struct LocalModeTests {
    @Test("manifests → pods as processes on their own addresses with their env; slices track readiness; kill -9")
    func podsRunAsProcessesAndEndpointsFollowReadiness() async throws {
        let fixture = try await LocalFixture.start(firstPodAddress: "127.0.21.1")
        try fixture.write(Self.webApp, to: "web/app.yaml")
        defer { Task { await fixture.stop() } }

        // Two pods, each Running and Ready on a loopback address of its own.
        var pods: [Pod] = []
        try await eventually(timeout: .seconds(30)) {
            pods = try await fixture.client.list(Pod.self, namespace: "shop").items
            return pods.count == 2 && pods.allSatisfy(\.isReady)
        }
        let addresses = pods.compactMap(\.status?.podIP)
        #expect(Set(addresses).count == 2)
        #expect(addresses.allSatisfy { $0.hasPrefix("127.0.21.") })
        for pod in pods {
            let name = try #require(pod.metadata.name)
            let ip = try #require(pod.status?.podIP)
            #expect(name.hasPrefix("web-"))
            #expect(pod.metadata.labels?["pod-template-hash"] != nil)
            // The environment the process saw, from its own output (prefixed with the container's path).
            try await eventually {
                fixture.logs.lines.contains(
                    "[shop/\(name)/server] env POD_IP=\(ip) POD_NAME=\(name) POD_NAMESPACE=shop GREETING=hi-\(name)")
            }
            // The process serves on the pod's address.
            #expect(await ReadinessCheck.http(host: ip, port: 8080, path: "/", timeout: .seconds(2)))
        }

        // The EndpointSlice the controller derived: both pods, ready, with targetRefs and the resolved port.
        var slice: EndpointSlice?
        try await eventually {
            slice = try await fixture.client.list(EndpointSlice.self, namespace: "shop").items.first
            return slice?.endpoints.count == 2 && slice?.endpoints.allSatisfy { $0.conditions?.ready == true } == true
        }
        #expect(slice?.metadata.labels?[EndpointSlice.serviceNameLabel] == "web")
        #expect(slice?.ports?.map(\.port) == [8080])
        #expect(Set(slice?.endpoints.compactMap(\.targetRef?.name) ?? []) == Set(pods.compactMap(\.metadata.name)))

        // kill -9 one app: its endpoint goes not-ready, then ready again within 2 s, restartCount 1.
        let victim = pods[0]
        let victimIP = try #require(victim.status?.podIP)
        let pid = try #require(await fixture.cluster.kubelet.processID(pod: victim.objectKey, container: "server"))
        let killed = ContinuousClock.now
        #expect(kill(pid, SIGKILL) == 0)
        try await eventually(timeout: .seconds(2)) {
            try await fixture.endpointReady(service: "web", ip: victimIP) == false
        }
        try await eventually(timeout: .seconds(2)) {
            try await fixture.endpointReady(service: "web", ip: victimIP) == true
        }
        #expect(ContinuousClock.now - killed < .seconds(2.5))
        let restarted = try await fixture.client.get(Pod.self, name: victim.metadata.name ?? "", namespace: "shop")
        #expect(restarted.status?.containerStatuses?.first?.restartCount == 1)
        #expect(restarted.status?.podIP == victimIP)
        let newPID = await fixture.cluster.kubelet.processID(pod: victim.objectKey, container: "server")
        #expect(newPID != nil && newPID != pid)
    }

    @Test("a file edit is MODIFIED (process kept), a removed file DELETED (process stopped); bad files reported")
    func fileChangesBecomeWatchEvents() async throws {
        let fixture = try await LocalFixture.start(firstPodAddress: "127.0.31.1")
        defer { Task { await fixture.stop() } }
        let events = NIOLockedValueBox<[String]>([])
        let watch = Task {
            let stream = try await fixture.client.watch(Pod.self, namespace: "default")
            for try await event in stream {
                switch event {
                case .added(let pod): events.withLockedValue { $0.append("ADDED \(pod.metadata.name ?? "")") }
                case .modified(let pod): events.withLockedValue { $0.append("MODIFIED \(pod.metadata.name ?? "")") }
                case .deleted(let pod): events.withLockedValue { $0.append("DELETED \(pod.metadata.name ?? "")") }
                default: break
                }
            }
        }
        defer { watch.cancel() }
        try await Task.sleep(for: .milliseconds(300))
        try fixture.write(Self.sleeper(label: "one"), to: "sleeper.yaml")
        let key = ObjectKey(namespace: "default", name: "sleeper")
        var pid: Int32?
        try await eventually(timeout: .seconds(20)) {
            pid = await fixture.cluster.kubelet.processID(pod: key, container: "main")
            return pid != nil
        }
        #expect(events.withLockedValue { $0 }.first == "ADDED sleeper")

        // A label edit: MODIFIED, same process.
        try fixture.write(Self.sleeper(label: "two"), to: "sleeper.yaml")
        try await eventually {
            try await fixture.client.get(Pod.self, name: "sleeper", namespace: "default").metadata.labels?["rev"]
                == "two"
        }
        #expect(events.withLockedValue { $0 }.contains("MODIFIED sleeper"))
        #expect(await fixture.cluster.kubelet.processID(pod: key, container: "main") == pid)

        // A malformed file is reported with file and document; the rest keeps running.
        try fixture.write("apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\n---\nkind: [oops\n", to: "broken.yaml")
        try await eventually {
            fixture.cluster.manifests.currentErrors.contains {
                $0.file == "broken.yaml" && $0.document == 2 && $0.code == .invalidSyntax
            }
        }
        // A half-saved edit of a running workload's file keeps its objects.
        try fixture.write("apiVersion: v1\nkind: Pod\nmetadata: {name: sleeper\n", to: "sleeper.yaml")
        try await eventually { fixture.cluster.manifests.currentErrors.contains { $0.file == "sleeper.yaml" } }
        try await Task.sleep(for: .milliseconds(600))
        #expect(await fixture.cluster.kubelet.processID(pod: key, container: "main") == pid)
        #expect(!events.withLockedValue { $0 }.contains("DELETED sleeper"))
        // An unsupported kind is reported and skipped; the file's other documents apply.
        try fixture.write(
            "apiVersion: example.com/v1\nkind: Gizmo\nmetadata: {name: g}\n---\n"
                + "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n", to: "mixed.yaml")
        try await eventually {
            (try? await fixture.client.get(ConfigMap.self, name: "settings", namespace: "default")) != nil
        }
        #expect(
            fixture.cluster.manifests.currentErrors.contains {
                $0.file == "mixed.yaml" && $0.document == 1 && $0.code == .unsupportedKind
            })

        // Removing the file: DELETED, and the process is stopped.
        try fixture.remove("sleeper.yaml")
        try await eventually { events.withLockedValue { $0 }.contains("DELETED sleeper") }
        let stoppedPID = try #require(pid)
        try await eventually(timeout: .seconds(10)) { kill(stoppedPID, 0) != 0 }
        #expect(fixture.cluster.manifests.currentErrors.allSatisfy { $0.file != "sleeper.yaml" })
    }

    static func sleeper(label: String) -> String {
        """
        apiVersion: v1
        kind: Pod
        metadata:
          name: sleeper
          labels: {rev: \(label)}
        spec:
          containers:
          - name: main
            command: ["/bin/sh", "-c", "exec sleep 600"]
        """
    }

    static let webApp = """
        apiVersion: v1
        kind: Namespace
        metadata:
          name: shop
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: web
          namespace: shop
        spec:
          replicas: 2
          selector:
            matchLabels: {app: web}
          template:
            metadata:
              labels: {app: web}
            spec:
              containers:
              - name: server
                command: ["/bin/sh", "-c"]
                args:
                - echo "env POD_IP=$POD_IP POD_NAME=$POD_NAME POD_NAMESPACE=$POD_NAMESPACE GREETING=$GREETING";
                  exec python3 -m http.server --bind "$POD_IP" 8080
                env:
                - {name: GREETING, value: "hi-$(POD_NAME)"}
                ports:
                - {name: http, containerPort: 8080}
                readinessProbe:
                  httpGet: {path: /, port: http}
                  periodSeconds: 1
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          namespace: shop
        spec:
          selector: {app: web}
          ports:
          - {port: 80, targetPort: http}
        """
}

extension Pod {
    var isReady: Bool { status?.conditions?.first { $0.type == "Ready" }?.status == "True" }
}

/// Collects process output lines as the kubelet prefixes them.
final class LogCapture: Sendable {
    private let storage = NIOLockedValueBox<[String]>([])
    var lines: [String] { storage.withLockedValue { $0 } }
    var sink: ProcessLogSink { { source, line in self.storage.withLockedValue { $0.append("[\(source)] \(line)") } } }
}

/// A running local cluster on a temporary manifests folder.
struct LocalFixture {
    let folder: URL
    let cluster: LocalCluster
    let client: KubernetesClient
    let logs: LogCapture
    let group: ServiceGroup
    let running: Task<Void, any Error>

    static func start(
        firstPodAddress: String, spawnProxies: Bool = false, proxyExecutable: String = "apus-proxy"
    ) async throws -> LocalFixture {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("apus-local-\(UUID().uuidString)")
        try FileManager.default.createDirectory(
            at: folder.appendingPathComponent("manifests"), withIntermediateDirectories: true)
        let logs = LogCapture()
        let cluster = try await LocalCluster.start(
            LocalModeOptions(
                manifestDirectory: folder.appendingPathComponent("manifests").path,
                stateDirectory: folder.appendingPathComponent("state").path, identityPort: 0, destinationPort: 0,
                spawnProxies: spawnProxies, manifestPollInterval: .milliseconds(100), logSink: logs.sink,
                firstPodAddress: firstPodAddress, proxyExecutable: proxyExecutable))
        // The kubeconfig the state directory offers is enough to reach the API server.
        let client = try KubernetesClient(
            configuration: try KubeConfig.load(path: cluster.kubeconfigPath).configuration())
        let group = ServiceGroup(services: cluster.services.map(\.service), logger: .init(label: "test"))
        let running = Task { try await group.run() }
        return LocalFixture(
            folder: folder, cluster: cluster, client: client, logs: logs, group: group, running: running)
    }

    func write(_ text: String, to relative: String) throws {
        let url = folder.appendingPathComponent("manifests").appendingPathComponent(relative)
        try FileManager.default.createDirectory(
            at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: url, options: .atomic)
    }

    func remove(_ relative: String) throws {
        try FileManager.default.removeItem(
            at: folder.appendingPathComponent("manifests").appendingPathComponent(relative))
    }

    func endpointReady(service: String, ip: String) async throws -> Bool? {
        let slices = try await client.list(
            EndpointSlice.self, namespace: nil,
            options: ListOptions(labelSelector: "\(EndpointSlice.serviceNameLabel)=\(service)"))
        return slices.items.flatMap(\.endpoints).first { $0.addresses.contains(ip) }?.conditions?.ready
    }

    func stop() async {
        await group.triggerGracefulShutdown()
        _ = try? await running.value
        try? await client.shutdown()
        await cluster.shutdown()
        try? FileManager.default.removeItem(at: folder)
    }
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(
    timeout: Duration = .seconds(10), sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if (try? await condition()) == true { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    Issue.record("condition not met within \(timeout)", sourceLocation: sourceLocation)
    throw CancellationError()
}
