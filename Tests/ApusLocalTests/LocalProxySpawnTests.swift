import ApusCore
import ApusIdentity
import Foundation
import KubernetesClient
import Testing

@testable import ApusLocal

/// Injected pods get a proxy process beside them with the proxy contract's environment, a Certify token the
/// controller's identity service accepts, and the proxy's `/ready` gates the pod's readiness. A stand-in script
/// plays the proxy here, so this holds independently of the data path.
@Suite(.serialized) struct LocalProxySpawnTests {
    /// Dumps its environment, then serves `/ready` on the admin port once `ready` exists in its folder.
    static func standInProxy(in folder: URL) throws -> String {
        let directory = folder.appendingPathComponent("fake-proxy")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let script = directory.appendingPathComponent("fake-apus-proxy")
        try """
        #!/bin/sh
        env | sort > "\(directory.path)/env-$POD_NAME"
        cd "\(directory.path)/www" && exec python3 -m http.server --bind "$POD_IP" 4191
        """.write(to: script, atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(
            at: directory.appendingPathComponent("www"), withIntermediateDirectories: true)
        _ = chmod(script.path, 0o755)
        return script.path
    }

    @Test("an injected pod runs a proxy on its address with the contract's env; proxy readiness gates Ready")
    func injectedPodGetsAProxy() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("apus-proxy-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let proxy = try Self.standInProxy(in: folder)
        let fixture = try await LocalFixture.start(
            firstPodAddress: "127.0.41.1", spawnProxies: true, proxyExecutable: proxy)
        defer { Task { await fixture.stop() } }
        try fixture.write(
            """
            apiVersion: v1
            kind: Namespace
            metadata:
              name: meshed
              annotations: {linkerd.io/inject: enabled}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: api, namespace: meshed}
            spec:
              serviceAccountName: api-sa
              containers:
              - name: app
                command: ["/bin/sh", "-c", "echo proxy=$APUS_OUTBOUND_PROXY http_proxy=$http_proxy; exec sleep 600"]
                ports: [{containerPort: 7001}]
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: plain, namespace: meshed, annotations: {linkerd.io/inject: disabled}}
            spec:
              containers:
              - name: app
                command: ["/bin/sh", "-c", "echo proxy=$APUS_OUTBOUND_PROXY; exec sleep 600"]
            """, to: "meshed.yaml")

        let key = ObjectKey(namespace: "meshed", name: "api")
        var pod: Pod?
        try await eventually(timeout: .seconds(20)) {
            pod = try await fixture.client.get(Pod.self, name: "api", namespace: "meshed")
            return pod?.status?.podIP != nil && pod?.status?.initContainerStatuses?.first?.started == true
        }
        let ip = try #require(pod?.status?.podIP)
        // Admission stamped the pod as injected, so the destination service treats it as meshed.
        #expect(pod?.metadata.annotations?[LocalInjection.proxyVersionAnnotation] == ApusVersion.current)
        #expect(await fixture.cluster.kubelet.processID(pod: key, container: "linkerd-proxy") != nil)

        // The proxy's environment: listeners on the pod's address, local identity and destination.
        let envFile = folder.appendingPathComponent("fake-proxy/env-api")
        try await eventually { FileManager.default.fileExists(atPath: envFile.path) }
        var environment: [String: String] = [:]
        try await eventually {
            let text = (try? String(contentsOf: envFile, encoding: .utf8)) ?? ""
            environment = Dictionary(
                text.split(separator: "\n").compactMap { line -> (String, String)? in
                    guard let equals = line.firstIndex(of: "=") else { return nil }
                    return (String(line[..<equals]), String(line[line.index(after: equals)...]))
                }, uniquingKeysWith: { _, last in last })
            return environment["POD_NAME"] == "api"
        }
        #expect(environment["POD_NAMESPACE"] == "meshed")
        #expect(environment["APUS_PROXY_INBOUND_LISTEN_ADDR"] == "\(ip):4143")
        #expect(environment["APUS_PROXY_OUTBOUND_LISTEN_ADDR"] == "\(ip):4140")
        #expect(environment["APUS_PROXY_ADMIN_LISTEN_ADDR"] == "\(ip):4191")
        #expect(environment["APUS_PROXY_INBOUND_FORWARD_IP"] == ip)
        #expect(environment["APUS_PROXY_INBOUND_DEFAULT_PORT"] == "7001")
        #expect(
            environment["APUS_PROXY_IDENTITY_LOCAL_NAME"]
                == "api-sa.meshed.serviceaccount.identity.apus.cluster.local")
        #expect(environment["APUS_PROXY_IDENTITY_TRUST_ANCHORS_FILE"] == fixture.cluster.trustAnchorsPath)
        #expect(environment["APUS_PROXY_IDENTITY_TRUST_ANCHORS"] == nil)
        let identityPort = try await fixture.cluster.identity.waitUntilListening()
        let destinationPort = try await fixture.cluster.destination.port()
        #expect(environment["APUS_PROXY_IDENTITY_SVC_ADDR"] == "127.0.0.1:\(identityPort)")
        #expect(environment["APUS_PROXY_DESTINATION_SVC_ADDR"] == "127.0.0.1:\(destinationPort)")
        #expect(
            environment["APUS_PROXY_DESTINATION_SVC_NAME"]
                == "apus-destination.apus.serviceaccount.identity.apus.cluster.local")
        let context = try JSONValue(json: Data((environment["APUS_PROXY_DESTINATION_CONTEXT"] ?? "").utf8))
        #expect(context["ns"]?.stringValue == "meshed" && context["pod"]?.stringValue == "api")
        // The token file holds a token the identity service accepts for exactly this pod's identity.
        let tokenPath = try #require(environment["APUS_PROXY_IDENTITY_TOKEN_FILE"])
        let token = try #require(FileManager.default.contents(atPath: tokenPath))
        let proven = try await fixture.cluster.tokens.validate(token: Array(token))
        #expect(proven.description == "api-sa.meshed.serviceaccount.identity.apus.cluster.local")

        // The app reaches others through its proxy; the uninjected pod has no proxy and no such variables.
        try await eventually {
            fixture.logs.lines.contains(
                "[meshed/api/app] proxy=\(ip):4140 http_proxy=http://\(ip):4140")
        }
        try await eventually { fixture.logs.lines.contains("[meshed/plain/app] proxy=") }
        #expect(
            await fixture.cluster.kubelet.processID(
                pod: ObjectKey(namespace: "meshed", name: "plain"), container: "linkerd-proxy") == nil)

        // The app runs, but the pod is Ready only once its proxy answers /ready.
        try await Task.sleep(for: .milliseconds(500))
        var current = try await fixture.client.get(Pod.self, name: "api", namespace: "meshed")
        #expect(current.status?.conditions?.first { $0.type == "ContainersReady" }?.status == "True")
        #expect(!current.isReady)
        try Data("ok".utf8).write(to: folder.appendingPathComponent("fake-proxy/www/ready"))
        try await eventually(timeout: .seconds(5)) {
            current = try await fixture.client.get(Pod.self, name: "api", namespace: "meshed")
            return current.isReady
        }
    }
}
