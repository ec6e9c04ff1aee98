import ApusCore
import Foundation
import KubernetesClient
import NIOConcurrencyHelpers
import Testing

@testable import ApusLocal

#if canImport(Glibc)
    import Glibc
#endif

/// `apus tap` against local mode, as a user runs it: the real controller spawns meshed pods, the built `apus`
/// binary finds the target's pods through `.apus/kubeconfig` and taps their proxies with `.apus/tap-token`.
@Suite(.serialized) struct LocalTapTests {
    /// hello calls the world Deployment's `/whoami` through the mesh; `quiet` is meshed with tap disabled.
    static func manifests(marker: String) -> String {
        MeshManifests.file(
            MeshManifests.namespace,
            MeshManifests.helloPod(
                marker: marker, worldURL: "http://world.mesh.svc.cluster.local:7101/whoami", serviceAccount: false),
            MeshManifests.worldDeployment(marker: marker),
            MeshManifests.worldPod(
                name: "quiet", app: "quiet", marker: marker, serviceAccount: false,
                annotations: "config.linkerd.io/disable-tap: \"true\"", readiness: false),
            MeshManifests.service("world", port: 7101))
    }

    @Test("apus tap deploy/world --path /whoami prints req/rsp/end of matching requests only; a wrong token is refused")
    func tapALocalDeployment() async throws {
        let mesh = try LocalMeshRun(firstPodAddress: "127.0.57.1")
        defer { mesh.cleanUp() }
        try mesh.writeManifests(Self.manifests(marker: mesh.marker))
        try mesh.startController()
        defer { mesh.stopController() }

        let hello = try await mesh.readyPodIP("hello")
        let world = try await Self.readyPodIP(of: "world", kubeconfig: mesh.kubeconfigPath)
        try await eventually(timeout: .seconds(30)) {
            (try? httpGet("http://\(hello):7100/"))?.body.hasPrefix("hello {") == true
        }

        // The token: generated once into the state directory, 32 random bytes in hex, for the owner only.
        let tokenPath = mesh.statePath + "/tap-token"
        let token = try String(contentsOfFile: tokenPath, encoding: .utf8)
        #expect(token.count == 64 && token.allSatisfy(\.isHexDigit))
        let mode = try #require(FileManager.default.attributesOfItem(atPath: tokenPath)[.posixPermissions] as? Int)
        #expect(mode == 0o600)
        #expect(!mesh.controllerLog().contains(token))

        let tap = try StreamingProcess(
            LocalMeshRun.product("apus"),
            ["tap", "deploy/world", "-n", "mesh", "--path", "/whoami", "--kubeconfig", mesh.kubeconfigPath])
        defer { tap.stop() }
        // Traffic through world's inbound proxy: /whoami (hello's calls) matches the filter, /healthz sent through
        // hello's outbound proxy does not.
        var lines: [String] = []
        try await eventually(timeout: .seconds(30)) {
            _ = try? httpGet("http://\(hello):7100/")
            _ = try? run([
                "curl", "-s", "--max-time", "5", "-x", "http://\(hello):4140",
                "http://world.mesh.svc.cluster.local:7101/healthz",
            ])
            try? await Task.sleep(for: .milliseconds(200))
            lines = tap.output.split(separator: "\n").map(String.init)
            return Self.completeExchange(in: lines) != nil || !tap.isRunning
        }
        #expect(tap.isRunning, "apus tap exited: \(tap.errorOutput)")
        let exchange = try #require(Self.completeExchange(in: lines), "output: \(lines) stderr: \(tap.errorOutput)")
        #expect(exchange.request.contains("proxy=in"), "\(exchange.request)")
        #expect(exchange.request.contains("tls=true"), "\(exchange.request)")
        #expect(exchange.request.contains(":method=GET"), "\(exchange.request)")
        #expect(exchange.request.contains("dst=\(world):"), "\(exchange.request)")
        #expect(exchange.response.contains(":status=200"), "\(exchange.response)")
        #expect(exchange.response.contains("latency="), "\(exchange.response)")
        #expect(exchange.end.contains("duration=") && exchange.end.contains("response-length="), "\(exchange.end)")
        #expect(!lines.contains { $0.contains("/healthz") }, "\(lines)")
        #expect(lines.allSatisfy { $0.hasPrefix("req ") || $0.hasPrefix("rsp ") || $0.hasPrefix("end ") }, "\(lines)")
        tap.stop()

        // JSON output: the proxy's events with the pod in front.
        let json = try StreamingProcess(
            LocalMeshRun.product("apus"),
            [
                "tap", "deploy/world", "-n", "mesh", "--path", "/whoami", "-o", "json", "--kubeconfig",
                mesh.kubeconfigPath,
            ]
        )
        defer { json.stop() }
        var event: JSONValue?
        try await eventually(timeout: .seconds(30)) {
            _ = try? httpGet("http://\(hello):7100/")
            try? await Task.sleep(for: .milliseconds(200))
            event = json.output.split(separator: "\n").compactMap { try? JSONValue(json: Data($0.utf8)) }.first {
                $0["type"]?.stringValue == "end"
            }
            return event != nil || !json.isRunning
        }
        let end = try #require(event, "stderr: \(json.errorOutput)")
        #expect(end["pod"]?.stringValue?.hasPrefix("mesh/world-") == true)
        #expect(end["path"]?.stringValue == "/whoami")
        #expect(end["status"]?.doubleValue == 200)
        json.stop()

        // A wrong token: every proxy refuses, and the command says so.
        let wrongToken = mesh.folder.appendingPathComponent("wrong-token")
        try Data(String(repeating: "0", count: 64).utf8).write(to: wrongToken)
        let refused = try run([
            LocalMeshRun.product("apus").path, "tap", "deploy/world", "-n", "mesh", "--token-file", wrongToken.path,
            "--kubeconfig", mesh.kubeconfigPath,
        ])
        #expect(refused.status != 0)
        #expect(refused.output.contains("not authorized to tap pod/world-"), "\(refused.output)")
        #expect(refused.output.contains("the bearer token does not match"), "\(refused.output)")

        // Resources that cannot be tapped.
        let unknown = try run([
            LocalMeshRun.product("apus").path, "tap", "frob/world", "--kubeconfig", mesh.kubeconfigPath,
        ])
        #expect(unknown.status != 0)
        #expect(unknown.output.contains("unknown resource type 'frob'"), "\(unknown.output)")
        let missing = try run([
            LocalMeshRun.product("apus").path, "tap", "deploy/nothing", "-n", "mesh", "--kubeconfig",
            mesh.kubeconfigPath,
        ])
        #expect(missing.status != 0)
        #expect(missing.output.contains("deployment nothing not found in namespace mesh"), "\(missing.output)")
        // disable-tap: the proxy opens no control port, so there is nothing to tap.
        _ = try await mesh.readyPodIP("quiet")
        let quiet = try run([
            LocalMeshRun.product("apus").path, "tap", "pod/quiet", "-n", "mesh", "--kubeconfig", mesh.kubeconfigPath,
        ])
        #expect(quiet.status != 0)
        #expect(quiet.output.contains("cannot tap pod/quiet"), "\(quiet.output)")
    }

    @Test("the tap token is created once per state directory, 0600, and kept across starts")
    func tapTokenIsKept() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("apus-tap-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let state = try LocalStateDirectory(path: folder.path)
        let path = try state.ensureTapToken()
        let first = try String(contentsOfFile: path, encoding: .utf8)
        #expect(first.count == 64 && first.allSatisfy(\.isHexDigit))
        let mode = try #require(FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
        #expect(mode == 0o600)
        // A restarted controller reads the same token, so proxies it adopts keep accepting `apus tap`.
        #expect(
            try String(contentsOfFile: try LocalStateDirectory(path: folder.path).ensureTapToken(), encoding: .utf8)
                == first)
        // Another state directory has its own token.
        let other = folder.appendingPathComponent("other")
        let second = try String(
            contentsOfFile: try LocalStateDirectory(path: other.path).ensureTapToken(), encoding: .utf8)
        #expect(second != first)
    }

    /// A `req`, `rsp` and `end` line of one exchange (same id and proxy) for `/whoami`.
    static func completeExchange(in lines: [String]) -> (request: String, response: String, end: String)? {
        func prefix(_ line: String) -> String {
            // "req id=3:1 proxy=in src=… dst=… tls=…": what identifies the exchange on every line.
            line.split(separator: " ").prefix(6).dropFirst().joined(separator: " ")
        }
        for request in lines where request.hasPrefix("req ") && request.contains(":path=/whoami") {
            let key = prefix(request)
            guard let response = lines.first(where: { $0.hasPrefix("rsp ") && prefix($0) == key }),
                let end = lines.first(where: { $0.hasPrefix("end ") && prefix($0) == key })
            else { continue }
            return (request, response, end)
        }
        return nil
    }

    /// The address of the Deployment's Ready pod (its name carries a template hash).
    static func readyPodIP(of deployment: String, kubeconfig: String) async throws -> String {
        let client = try KubernetesClient(configuration: try KubeConfig.load(path: kubeconfig).configuration())
        defer { Task { try? await client.shutdown() } }
        var ip: String?
        try await eventually(timeout: .seconds(60)) {
            let pods = try await client.list(Pod.self, namespace: "mesh").items
            let pod = pods.first { $0.metadata.name?.hasPrefix("\(deployment)-") == true && $0.isReady }
            ip = pod?.status?.podIP
            return ip != nil
        }
        return try #require(ip)
    }
}

/// A child process whose output is collected while it runs (`apus tap` streams until stopped).
final class StreamingProcess {
    private let process: Process
    private let stdout = NIOLockedValueBox(Data())
    private let stderr = NIOLockedValueBox(Data())

    init(_ executable: URL, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let stdout = stdout
        let stderr = stderr
        out.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty { handle.readabilityHandler = nil }
            stdout.withLockedValue { $0.append(data) }
        }
        err.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty { handle.readabilityHandler = nil }
            stderr.withLockedValue { $0.append(data) }
        }
        try process.run()
        self.process = process
    }

    var output: String { stdout.withLockedValue { String(decoding: $0, as: UTF8.self) } }
    var errorOutput: String { stderr.withLockedValue { String(decoding: $0, as: UTF8.self) } }
    var isRunning: Bool { process.isRunning }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
    }
}
