import ApusCore
import Foundation
import KubernetesClient
import ServiceLifecycle
import Testing

@testable import ApusLocal

/// What a restarted controller does with an earlier one's pod records, in-process: leftovers of pods that are gone
/// are stopped, a pod whose spec changed meanwhile starts afresh, unreadable records are dropped.
@Suite(.serialized) struct LocalMeshAdoptionTests {
    @Test("records of vanished pods are stopped and removed; a changed pod restarts; the kept address is reused")
    func leftoversAreStoppedAndChangedPodsRestart() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("apus-adopt-\(UUID().uuidString)")
        let manifests = folder.appendingPathComponent("manifests")
        let state = folder.appendingPathComponent("state")
        try FileManager.default.createDirectory(at: manifests, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }

        // Two processes "an earlier controller" left running: one for a pod no manifest mentions any more, one for
        // a pod that still exists but whose spec has changed since.
        let spawner = ProcessLauncher(sink: { _, _ in })
        let environment = ["PATH": "/usr/bin:/bin"]
        let ghost = try await spawner.launch(
            LaunchSpecification(command: ["sleep", "600"], environment: environment, logSource: "ghost"))
        let stale = try await spawner.launch(
            LaunchSpecification(command: ["sleep", "601"], environment: environment, logSource: "stale"))
        defer {
            ghost.signalGroup(SIGKILL)
            stale.signalGroup(SIGKILL)
        }
        let store = PodRecordStore(stateDirectory: state.path)
        let oldSpec = PodSpec(containers: [Container(name: "app", command: ["sleep", "601"])])
        try store.save(
            PodRecord(
                namespace: "default", name: "ghost", address: "127.0.53.9", spec: oldSpec, proxied: false,
                proxyToken: nil,
                processes: [.init(container: "app", pid: ghost.pid, startTime: try #require(ghost.startTime))]))
        try store.save(
            PodRecord(
                namespace: "default", name: "web", address: "127.0.53.7", spec: oldSpec, proxied: false,
                proxyToken: nil,
                processes: [.init(container: "app", pid: stale.pid, startTime: try #require(stale.startTime))]))
        let garbage = state.appendingPathComponent("pods/default/garbage")
        try FileManager.default.createDirectory(at: garbage, withIntermediateDirectories: true)
        try Data("{not json".utf8).write(to: garbage.appendingPathComponent("pod.json"))
        try """
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: default}
        spec:
          containers:
          - name: app
            command: ["sleep", "602"]
        """.write(to: manifests.appendingPathComponent("web.yaml"), atomically: true, encoding: .utf8)

        let cluster = try await LocalCluster.start(
            LocalModeOptions(
                manifestDirectory: manifests.path, stateDirectory: state.path, identityPort: 0, destinationPort: 0,
                spawnProxies: false, manifestPollInterval: .milliseconds(100), logSink: { _, _ in },
                firstPodAddress: "127.0.53.1"))
        let group = ServiceGroup(services: cluster.services.map(\.service), logger: .init(label: "test"))
        let running = Task { try await group.run() }
        defer {
            Task {
                await group.triggerGracefulShutdown()
                _ = try? await running.value
                await cluster.shutdown()
            }
        }

        // The vanished pod's process is stopped and its folder removed; so is the unreadable record's.
        try await eventually(timeout: .seconds(15)) { ghost.hasExited }
        let ghostFolder = store.directory(of: ObjectKey(namespace: "default", name: "ghost"))
        try await eventually { !FileManager.default.fileExists(atPath: ghostFolder.path) }
        #expect(!FileManager.default.fileExists(atPath: garbage.path))
        // The changed pod's old process is stopped and a new one runs the new spec, on the address it had.
        try await eventually(timeout: .seconds(15)) { stale.hasExited }
        let key = ObjectKey(namespace: "default", name: "web")
        var pid: Int32?
        try await eventually(timeout: .seconds(15)) {
            pid = await cluster.kubelet.processID(pod: key, container: "app")
            return pid != nil
        }
        #expect(pid != stale.pid)
        #expect(cluster.kubelet.address(of: key) == "127.0.53.7")
        // Its new record names the new process, so the next controller can adopt it.
        try await eventually {
            let data = FileManager.default.contents(
                atPath: store.directory(of: key).appendingPathComponent("pod.json").path)
            let record = try data.map { try JSONDecoder().decode(PodRecord.self, from: $0) }
            return record?.processes.map(\.pid) == [pid].compactMap { $0 }
                && record?.spec?.containers.first?.command == ["sleep", "602"]
        }
        await spawner.shutdown()
    }

    @Test("the process table names a process by pid and start time; a zombie or another start time is not it")
    func processIdentity() async throws {
        let launcher = ProcessLauncher(sink: { _, _ in })
        defer { Task { await launcher.shutdown() } }
        let process = try await launcher.launch(
            LaunchSpecification(command: ["sleep", "600"], environment: ["PATH": "/usr/bin:/bin"], logSource: "t"))
        let startTime = try #require(process.startTime)
        #expect(ProcessTable.isAlive(pid: process.pid, startTime: startTime))
        #expect(!ProcessTable.isAlive(pid: process.pid, startTime: startTime + 1))
        #expect(RunningProcess.adopt(pid: process.pid, startTime: startTime + 1) == nil)
        let adopted = try #require(RunningProcess.adopt(pid: process.pid, startTime: startTime))
        // Stopping through the adopted handle ends the process; its real parent (the launcher) reaps it.
        #expect(await adopted.stop(grace: .seconds(2)) == .lost)
        #expect(await process.waitForExit() == .signaled(signal: SIGTERM))
        #expect(!ProcessTable.isAlive(pid: process.pid, startTime: startTime))
    }
}
