import ApusController
import ApusCore
import ApusDestinationClient
import ApusIdentity
import ApusIdentityClient
import ApusX509
import Foundation
import KubernetesClient
import KubernetesTestServer
import Testing

/// The shipped binaries as an operator runs them: `apus identity generate` writes the trust material,
/// `apus-controller` (a real process, kubeconfig file, RBAC-restricted user) serves Certify from it, a proxy-side
/// client gets a certificate and with it watches endpoints over mutual TLS, and SIGTERM shuts the controller down
/// cleanly.
@Suite struct ControllerProcessTests {
    /// Built products sit next to the test bundle (`.build/<config>/`).
    static func product(_ name: String) -> URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name)
    }

    static func run(_ executable: URL, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }

    /// A port that was free a moment ago; the controller binds it right after.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                guard bind(fd, raw, length) == 0, getsockname(fd, raw, &length) == 0 else {
                    throw CocoaError(.fileWriteUnknown)
                }
            }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    @Test("apus identity generate + apus-controller: a proxy certifies, watches endpoints over mTLS, SIGTERM stops")
    func controllerBinaryServesCertifyAndDestinationAndShutsDownOnSIGTERM() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("apus-process-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }

        let generate = try Self.run(
            Self.product("apus"), ["identity", "generate", "--output-dir", folder.appendingPathComponent("id").path])
        #expect(generate.status == 0, "\(generate.output)")
        let anchors = try String(contentsOf: folder.appendingPathComponent("id/ca-bundle.crt"), encoding: .utf8)
        let keyMode =
            try FileManager.default.attributesOfItem(
                atPath: folder.appendingPathComponent("id/issuer.key").path)[.posixPermissions] as? Int
        #expect(keyMode == 0o600)

        let fixture = try await ControllerManagerTests.Fixture.start(rules: ControllerManager.requiredPermissions())
        _ = try await fixture.admin.create(Namespace(metadata: ObjectMeta(name: "apus")))
        _ = try await fixture.admin.create(Namespace(metadata: ObjectMeta(name: "default")))
        _ = try await fixture.admin.create(Namespace(metadata: ObjectMeta(name: "shop")))
        let kubeconfig = folder.appendingPathComponent("kubeconfig")
        try fixture.server.kubeconfig(token: "controller-token").write(
            to: kubeconfig, atomically: true, encoding: .utf8)
        let tokenFile = folder.appendingPathComponent("token")
        try fixture.server.mintServiceAccountToken(
            namespace: "default", serviceAccount: "web", audiences: [TokenReviewValidator.audience]
        ).write(to: tokenFile, atomically: true, encoding: .utf8)

        let port = try Self.freePort()
        var destinationPort = try Self.freePort()
        while destinationPort == port { destinationPort = try Self.freePort() }
        var adminPort = try Self.freePort()
        while [port, destinationPort].contains(adminPort) { adminPort = try Self.freePort() }
        var injectorPort = try Self.freePort()
        while [port, destinationPort, adminPort].contains(injectorPort) { injectorPort = try Self.freePort() }
        let controller = Process()
        controller.executableURL = Self.product("apus-controller")
        controller.arguments = [
            "--kubeconfig", kubeconfig.path, "--identity-issuer-directory", folder.appendingPathComponent("id").path,
            "--identity-port", String(port), "--destination-port", String(destinationPort),
            "--admin-port", String(adminPort), "--injector-port", String(injectorPort),
            "--replica-name", "replica-a", "--log-level", "warning",
        ]
        let log = Pipe()
        controller.standardError = log
        controller.standardOutput = log
        try controller.run()

        let identity = IdentityName(serviceAccount: "web", namespace: "default")
        let client = try IdentityClient(
            configuration: IdentityClientConfiguration(
                identity: identity, tokenPath: tokenFile.path, trustAnchorsPEM: anchors,
                endpoint: CertifyEndpoint(
                    host: "127.0.0.1", port: port,
                    serverIdentity: IdentityServiceOptions().serverIdentity.description),
                requestTimeout: .seconds(2)))
        var credentials: IdentityCredentials?
        try await eventually(timeout: .seconds(20)) {
            credentials = try? await client.certify()
            return credentials != nil
        }
        let leaf = try #require(credentials).leaf
        #expect(leaf.dnsNames == ["web.default.serviceaccount.identity.apus.cluster.local"])
        try leaf.verify(
            anchors: Certificate.parseChain(pem: anchors), intermediates: try #require(credentials).intermediates)
        try await eventually {
            try await fixture.admin.get(Lease.self, name: "apus-controller", namespace: "apus").spec?.holderIdentity
                == "replica-a"
        }

        // The admin port: ready once the caches synced, and Prometheus metrics of the components that ran.
        try await eventually { try await AdminHTTPClient.request(.GET, "/ready", port: adminPort).status == .ok }
        let metrics = try await AdminHTTPClient.request(.GET, "/metrics", port: adminPort).body
        for series in [
            "issuer_cert_ttl_seconds", "apus_controller_destination_subscribers", "apus_controller_workqueue_depth",
        ] {
            #expect(metrics.contains(series), "\(series) missing from /metrics")
        }

        // The same identity opens the destination stream: the controller's destination certificate is issued by
        // the same CA for apus-destination.apus.serviceaccount.identity.apus.cluster.local, which the client checks.
        _ = try await fixture.admin.create(Fixtures.service(), namespace: "shop")
        _ = try await fixture.admin.create(Fixtures.pod("web-0", ip: "10.0.0.1"), namespace: "shop")
        _ = try await fixture.admin.create(
            DestinationEndToEndTests.slice([("web-0", "10.0.0.1")]), namespace: "shop")
        let destination = DestinationClient(
            configuration: .init(
                host: "127.0.0.1", port: destinationPort, tls: .identity(client), namespace: "default",
                pod: "web-client-0", initialBackoff: .milliseconds(100), maximumBackoff: .milliseconds(500)))
        let endpoints = destination.watchEndpoints(authority: "web.shop.svc.cluster.local:80")
        try await eventually(timeout: .seconds(10)) {
            DestinationEndToEndTests.endpointKeys(endpoints.latest) == ["10.0.0.1:8080"]
        }
        guard case .endpoints(let set)? = endpoints.latest else { throw CancellationError() }
        #expect(set["10.0.0.1:8080"]?.identity == "web.shop.serviceaccount.identity.apus.cluster.local")
        endpoints.cancel()
        await destination.shutdown()

        controller.terminate()  // SIGTERM
        try await eventually(timeout: .seconds(15)) { !controller.isRunning }
        let output = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(controller.terminationReason == .exit && controller.terminationStatus == 0, "\(output)")
        #expect(
            try await fixture.admin.get(Lease.self, name: "apus-controller", namespace: "apus").spec?.holderIdentity
                == nil)
        #expect(fixture.refusals.withLockedValue { $0 }.map(\.description) == [])
        try await fixture.shutdown()
    }
}
