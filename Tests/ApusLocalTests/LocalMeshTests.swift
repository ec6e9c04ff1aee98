import ApusCore
import Foundation
import KubernetesClient
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Local mode as a user runs it: the real `apus-controller --local` process spawning real `apus-demo` apps and
/// `apus-proxy` proxies, with mTLS between the proxies from the controller's CA.
@Suite(.serialized) struct LocalMeshTests {
    /// hello calls world through its outbound proxy; world's `/whoami` echoes the headers world's app received, so
    /// hello's answer shows what crossed the mesh.
    static func manifests(marker: String, worldPod: String = "world") -> String {
        MeshManifests.file(
            MeshManifests.namespace, MeshManifests.serviceAccount("hello"), MeshManifests.serviceAccount("world"),
            MeshManifests.helloPod(marker: marker, worldURL: "http://world.mesh.svc.cluster.local:7101/whoami"),
            MeshManifests.worldPod(name: worldPod, marker: marker), MeshManifests.service("hello", port: 7100),
            MeshManifests.service("world", port: 7101),
            """
            apiVersion: linkerd.io/v1alpha2
            kind: ServiceProfile
            metadata: {name: world.mesh.svc.cluster.local, namespace: mesh}
            spec:
              routes:
              - name: GET /whoami
                condition: {method: GET, pathRegex: /whoami}
            """)
    }

    static let helloIdentity = "hello.mesh.serviceaccount.identity.apus.cluster.local"
    static let worldIdentity = "world.mesh.serviceaccount.identity.apus.cluster.local"

    @Test("app → outbound proxy → mTLS → inbound proxy → app: the server sees the caller's identity; kubectl works")
    func meshedRequestCarriesTheCallersIdentity() async throws {
        let mesh = try LocalMeshRun(firstPodAddress: "127.0.51.1")
        defer { mesh.cleanUp() }
        try mesh.writeManifests(Self.manifests(marker: mesh.marker))
        try mesh.startController()
        defer { mesh.stopController() }

        let hello = try await mesh.readyPodIP("hello")
        let world = try await mesh.readyPodIP("world")
        var answer = ""
        try await eventually(timeout: .seconds(30)) {
            answer = (try? httpGet("http://\(hello):7100/"))?.body ?? ""
            return answer.hasPrefix("hello {")
        }
        // What world's app received: the caller's identity, as world's inbound proxy verified it from the client
        // certificate of the mTLS connection (the header is the proxy's, not hello's: hello's app never sets it).
        let whoami = try JSONValue(json: Data(answer.dropFirst("hello ".count).utf8))
        #expect(whoami["service"]?.stringValue == "world")
        #expect(whoami["headers"]?["l5d-client-id"]?.stringValue == Self.helloIdentity)

        // The bytes between the proxies were TLS: world's proxy counted hello's request on its inbound side as
        // mTLS with hello's identity, and no inbound request without it (the kubelet's probes go to the app port,
        // so every request on the inbound port came from a meshed peer). hello's proxy counted the outbound call
        // as mTLS to world's identity.
        let worldMetrics = try httpGet("http://\(world):4191/metrics").body
        let inbound = worldMetrics.split(separator: "\n").filter {
            $0.hasPrefix("request_total{") && $0.contains("direction=\"inbound\"")
        }
        #expect(!inbound.isEmpty)
        #expect(inbound.contains { $0.contains("tls=\"true\"") && $0.contains("client_id=\"\(Self.helloIdentity)\"") })
        #expect(inbound.allSatisfy { $0.contains("tls=\"true\"") }, "plaintext inbound requests: \(inbound)")
        let helloMetrics = try httpGet("http://\(hello):4191/metrics").body
        #expect(
            helloMetrics.split(separator: "\n").contains {
                $0.hasPrefix("request_total{") && $0.contains("direction=\"outbound\"")
                    && $0.contains("tls=\"true\"") && $0.contains("server_id=\"\(Self.worldIdentity)\"")
            })

        // kubectl finds the resources through the embedded API server's discovery documents.
        let pods = try mesh.kubectl(["get", "pods", "-A"])
        #expect(pods.status == 0, "\(pods.output)")
        #expect(pods.output.contains("hello") && pods.output.contains("world"))
        let profiles = try mesh.kubectl(["get", "serviceprofiles", "-n", "mesh"])
        #expect(profiles.status == 0, "\(profiles.output)")
        #expect(profiles.output.contains("world.mesh.svc.cluster.local"))
        let short = try mesh.kubectl(["get", "sp", "-n", "mesh", "-o", "name"])
        #expect(short.output.contains("serviceprofile.linkerd.io/world.mesh.svc.cluster.local"), "\(short.output)")
        let resources = try mesh.kubectl(["api-resources"])
        #expect(resources.status == 0, "\(resources.output)")
        #expect(resources.output.contains("serviceprofiles") && resources.output.contains("linkerd.io/v1alpha2"))
    }

    @Test("kill -9 the controller: traffic keeps flowing; a restart adopts the pods; SIGINT leaves no process")
    func podsSurviveAControllerCrashAndAreAdopted() async throws {
        let mesh = try LocalMeshRun(firstPodAddress: "127.0.52.1")
        defer { mesh.cleanUp() }
        try mesh.writeManifests(Self.manifests(marker: mesh.marker))
        try mesh.startController()
        defer { mesh.stopController() }

        let hello = try await mesh.readyPodIP("hello")
        _ = try await mesh.readyPodIP("world")
        try await eventually(timeout: .seconds(30)) {
            (try? httpGet("http://\(hello):7100/"))?.body.hasPrefix("hello {") == true
        }
        let before = mesh.processesOfThisRun()
        // hello's app, world's app and their two proxies.
        #expect(before.count == 4, "\(before)")

        // The controller dies outright; the pods and proxies keep serving on what they know.
        try mesh.killController()
        var failures = 0
        for _ in 0..<20 {
            if (try? httpGet("http://\(hello):7100/"))?.body.hasPrefix("hello {") != true { failures += 1 }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(failures == 0, "\(failures) of 20 requests failed with the controller down")
        #expect(mesh.processesOfThisRun() == before)

        // A new controller on the same state directory adopts every process (same pids) instead of starting
        // them again, and traffic never stops meanwhile.
        let traffic = Task {
            var results: [Bool] = []
            while !Task.isCancelled {
                results.append((try? httpGet("http://\(hello):7100/"))?.body.hasPrefix("hello {") == true)
                try? await Task.sleep(for: .milliseconds(100))
            }
            return results
        }
        try mesh.startController()
        _ = try await mesh.readyPodIP("hello")
        _ = try await mesh.readyPodIP("world")
        try await Task.sleep(for: .seconds(2))
        traffic.cancel()
        let results = await traffic.value
        #expect(results.count > 10)
        #expect(results.allSatisfy { $0 }, "\(results.filter { !$0 }.count) of \(results.count) requests failed")
        #expect(mesh.processesOfThisRun() == before)
        #expect(mesh.controllerLog().contains("adopted"))

        // The proxies are connected to the new controller: a replacement world pod (new name, new address) is
        // reached only through endpoints the new destination service streams to hello's proxy.
        try mesh.writeManifests(Self.manifests(marker: mesh.marker, worldPod: "world-b"))
        let replacement = try await mesh.readyPodIP("world-b")
        try await eventually(timeout: .seconds(20)) {
            guard let body = (try? httpGet("http://\(hello):7100/"))?.body, body.hasPrefix("hello {") else {
                return false
            }
            let whoami = try JSONValue(json: Data(body.dropFirst("hello ".count).utf8))
            return whoami["podIP"]?.stringValue == replacement
                && whoami["headers"]?["l5d-client-id"]?.stringValue == Self.helloIdentity
        }

        // Ctrl-C stops everything: no process of this run is left.
        try mesh.interruptController()
        try await eventually(timeout: .seconds(15)) { mesh.processesOfThisRun().isEmpty }
    }
}

/// One `apus-controller --local` run on a temporary folder.
final class LocalMeshRun {
    let folder: URL
    let marker = UUID().uuidString
    let firstPodAddress: String
    let identityPort: Int
    let destinationPort: Int
    let adminPort: Int
    private var controller: Process?
    private var logIndex = 0

    init(firstPodAddress: String) throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("apus-mesh-\(UUID().uuidString)")
        try FileManager.default.createDirectory(
            at: folder.appendingPathComponent("manifests"), withIntermediateDirectories: true)
        self.firstPodAddress = firstPodAddress
        let ports = try freePorts(3)
        (identityPort, destinationPort, adminPort) = (ports[0], ports[1], ports[2])
    }

    var statePath: String { folder.appendingPathComponent("state").path }
    var kubeconfigPath: String { folder.appendingPathComponent("state/kubeconfig").path }

    static func product(_ name: String) -> URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name)
    }

    func writeManifests(_ text: String, to file: String = "mesh.yaml") throws {
        try Data(text.utf8).write(to: folder.appendingPathComponent("manifests/\(file)"), options: .atomic)
    }

    func startController() throws {
        try? FileManager.default.removeItem(atPath: kubeconfigPath)
        logIndex += 1
        let log = folder.appendingPathComponent("controller-\(logIndex).log")
        guard FileManager.default.createFile(atPath: log.path, contents: nil) else {
            throw CurlFailure(url: log.path, output: "cannot create the controller's log file")
        }
        let output = try FileHandle(forWritingTo: log)
        let process = Process()
        process.executableURL = Self.product("apus-controller")
        process.arguments = [
            "--local", folder.appendingPathComponent("manifests").path, "--state-dir", statePath,
            "--identity-port", String(identityPort), "--destination-port", String(destinationPort),
            "--admin-port", String(adminPort), "--local-first-pod-address", firstPodAddress,
        ]
        process.standardOutput = output
        process.standardError = output
        try process.run()
        controller = process
    }

    /// All the controller's output so far (every start).
    func controllerLog() -> String {
        (1...max(1, logIndex)).map {
            (try? String(contentsOf: folder.appendingPathComponent("controller-\($0).log"), encoding: .utf8)) ?? ""
        }.joined()
    }

    func killController() throws {
        let process = try #require(controller)
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        controller = nil
    }

    func interruptController() throws {
        let process = try #require(controller)
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        controller = nil
    }

    func stopController() {
        guard let process = controller, process.isRunning else { return }
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        controller = nil
    }

    /// Waits for the pod to be Ready in the (current) API server and returns its address.
    func readyPodIP(_ name: String) async throws -> String {
        try await eventually(timeout: .seconds(30)) { FileManager.default.fileExists(atPath: kubeconfigPath) }
        let client = try KubernetesClient(configuration: try KubeConfig.load(path: kubeconfigPath).configuration())
        var ip: String?
        do {
            try await eventually(timeout: .seconds(60)) {
                let pod = try await client.get(Pod.self, name: name, namespace: "mesh")
                ip = pod.status?.podIP
                return pod.isReady && ip != nil
            }
        } catch {
            try? await client.shutdown()
            throw error
        }
        try? await client.shutdown()
        return try #require(ip)
    }

    func kubectl(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try run(["kubectl", "--kubeconfig", kubeconfigPath] + arguments)
    }

    /// The pids of processes started for this run: the apps carry its marker in their environment, the proxies
    /// its state directory (their token file).
    func processesOfThisRun() -> Set<Int32> {
        var found: Set<Int32> = []
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = Int32(entry), pid != getpid(),
                let data = FileManager.default.contents(atPath: "/proc/\(entry)/environ")
            else { continue }
            let environment = String(decoding: data, as: UTF8.self)
            guard environment.contains("MESH_TEST_RUN=\(marker)") || environment.contains(statePath + "/pods/")
            else { continue }
            // A zombie is gone for every purpose but its parent's bookkeeping.
            let status = (try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8)) ?? ""
            if let close = status.lastIndex(of: ")"), status[status.index(after: close)...].hasPrefix(" Z") {
                continue
            }
            found.insert(pid)
        }
        return found
    }

    func cleanUp() {
        stopController()
        // Whatever a failed test left running must not outlive it.
        for pid in processesOfThisRun() { kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(at: folder)
    }
}

/// `curl`'s view of a GET: status and body.
func httpGet(_ url: String) throws -> (status: Int, body: String) {
    let result = try run(["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", url])
    guard result.status == 0, let newline = result.output.lastIndex(of: "\n") else {
        throw CurlFailure(url: url, output: result.output)
    }
    return (Int(result.output[result.output.index(after: newline)...]) ?? 0, String(result.output[..<newline]))
}

struct CurlFailure: Error {
    var url: String
    var output: String
}

/// Runs a command found on PATH, returning its exit status and combined output.
func run(_ command: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = command
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: output, as: UTF8.self))
}

/// Ports free on 127.0.0.1 right now (bound to port 0, then released).
func freePorts(_ count: Int) throws -> [Int] {
    var sockets: [Int32] = []
    defer { for socket in sockets { close(socket) } }
    var ports: [Int] = []
    for _ in 0..<count {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw CurlFailure(url: "socket", output: String(cString: strerror(errno))) }
        sockets.append(descriptor)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
                bind(descriptor, generic, length) == 0 && getsockname(descriptor, generic, &length) == 0
            }
        }
        guard bound else { throw CurlFailure(url: "bind", output: String(cString: strerror(errno))) }
        ports.append(Int(UInt16(bigEndian: address.sin_port)))
    }
    return ports
}
