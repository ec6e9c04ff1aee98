import ApusController
import ApusDestinationClient
import ApusIdentity
import ApusIdentityClient
import ApusProxy
import ApusX509
import Foundation
import NIOCore
import NIOPosix
import Testing

/// The identity service of the controller (with local-mode tokens) certifying proxies configured the way the
/// injector configures them, and what the proxies then do with those certificates.
struct IdentityControlPlane {
    let anchorsPEM: String
    let issuer: IdentityIssuer
    let tokens: LocalTokenValidator
    let service: IdentityService
    let run: Task<Void, any Error>
    let port: Int
    let directory: URL

    static func start(leafLifetime: TimeInterval = 86400, clockSkew: TimeInterval = 20) async throws
        -> IdentityControlPlane
    {
        let roots = try TrustRootsGenerator.generate()
        let issuer = IdentityIssuer(leafLifetime: leafLifetime, clockSkew: clockSkew)
        let outcome = issuer.load(
            anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
            issuerKeyPEM: roots.issuerKeyPEM)
        guard case .updated = outcome else { throw IdentityError(.invalidIssuer, "test roots refused: \(outcome)") }
        let tokens = LocalTokenValidator()
        let service = IdentityService(
            options: IdentityServiceOptions(
                host: "127.0.0.1", port: 0, servingDNSNames: ["localhost"], servingLifetime: 3600,
                leafLifetime: leafLifetime, clockSkew: clockSkew),
            source: nil, validator: tokens, issuer: issuer)
        let run = Task { try await service.run() }
        let port = try await service.waitUntilListening()
        try await MeshWait.until { service.servingCertificate != nil }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("apus-identity-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return IdentityControlPlane(
            anchorsPEM: roots.anchorsPEM, issuer: issuer, tokens: tokens, service: service, run: run, port: port,
            directory: directory)
    }

    /// Mints a token for `serviceAccount` in `shop` and writes it where the proxy's token file would be.
    func tokenFile(for serviceAccount: String) throws -> String {
        let token = tokens.mint(for: IdentityName(serviceAccount: serviceAccount, namespace: "shop"))
        let path = directory.appendingPathComponent("\(serviceAccount).token").path
        try Data((token + "\n").utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// The proxy's environment as the injector writes it (identity part), plus listeners on free ports.
    func environment(for serviceAccount: String) throws -> [String: String] {
        [
            "APUS_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0",
            "APUS_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
            "APUS_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0",
            "APUS_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0",
            "APUS_PROXY_IDENTITY_DIR": directory.path,
            "APUS_PROXY_IDENTITY_TOKEN_FILE": try tokenFile(for: serviceAccount),
            "APUS_PROXY_IDENTITY_TRUST_ANCHORS": anchorsPEM,
            "APUS_PROXY_IDENTITY_LOCAL_NAME": MeshCA.identity(serviceAccount),
            "APUS_PROXY_IDENTITY_SVC_ADDR": "127.0.0.1:\(port)",
            "APUS_PROXY_IDENTITY_SVC_NAME": service.serverIdentity.description,
            "APUS_PROXY_SHUTDOWN_GRACE_PERIOD": "2s",
        ]
    }

    /// Credentials issued by the same CA, for a test client that talks to a proxy directly.
    func credentials(serviceAccount: String) throws -> IdentityCredentials {
        try MeshCA(anchorsPEM: anchorsPEM, issuer: issuer).credentials(serviceAccount: serviceAccount)
    }

    func stop() async {
        run.cancel()
        _ = await run.result
        try? FileManager.default.removeItem(at: directory)
    }
}

extension RunningProxy {
    static func start(environment: [String: String], _ configure: (inout ProxyConfiguration) -> Void = { _ in })
        async throws -> RunningProxy
    {
        var configuration = try ProxyConfiguration.fromEnvironment(environment)
        configure(&configuration)
        let server = try ProxyServer(configuration: configuration)
        let task = Task { try await server.run() }
        let ports = try await server.waitUntilListening()
        return RunningProxy(server: server, task: task, ports: ports)
    }
}

@Suite(.serialized) struct ProxyIdentityTests {
    @Test func proxiesCertifiedThroughTheIdentityServiceCarryARequestOverMutualTLS() async throws {
        let control = try await IdentityControlPlane.start()
        let echo = try await EchoServer.start(.http1)
        let server = try await RunningProxy.start(environment: try control.environment(for: "api")) {
            $0.inboundPolicy = .allAuthenticated
        }
        let apiIdentity = MeshCA.identity("api")
        let endpoint = Endpoint(
            address: "127.0.0.1", port: echo.port, identity: apiIdentity, opaqueTransportPort: server.ports.inbound)
        let client = try await RunningProxy.start(environment: try control.environment(for: "web")) {
            $0.staticEndpoints = ["api.test:8080": [endpoint]]
        }
        defer {
            Task {
                await client.stop()
                await server.stop()
                await echo.stop()
                await control.stop()
            }
        }

        // Both certify with their tokens; readiness follows.
        for proxy in [client, server] {
            try await MeshWait.until { proxy.server.readiness.isReady }
            #expect(proxy.server.meshTLS.localIdentity != nil)
            let ready = try curl(["http://127.0.0.1:\(proxy.ports.admin)/ready"])
            #expect(ready.status == 200)
        }
        #expect(server.server.meshTLS.localIdentity == apiIdentity)
        #expect(client.server.meshTLS.localIdentity == MeshCA.identity("web"))
        #expect(control.tokens.count == 2)

        let result = try curl(
            [
                "-x", "http://127.0.0.1:\(client.ports.outbound)", "--data-binary", "over mtls",
                "http://api.test:8080/id",
            ])
        #expect(result.status == 200)
        #expect(result.body == "over mtls")
        #expect(result.headers["x-echo-client-id"] == MeshCA.identity("web"))
        #expect(result.headers["x-echo-mesh-headers"] == "stripped")
    }

    @Test func readinessWaitsForTheFirstAnswerOfTheDestinationService() async throws {
        let control = try await IdentityControlPlane.start()
        let configuration = DestinationConfiguration(
            controlNamespace: "apus", trustDomain: "cluster.local", clusterDomain: "cluster.local")
        let destination = DestinationServer(
            endpoints: EndpointsIndex(configuration: configuration),
            profiles: ProfileIndex(configuration: configuration),
            configuration: .init(host: "127.0.0.1", port: 0, heartbeatInterval: .milliseconds(200)),
            certificates: ServingCertificates(
                issuer: control.issuer, configuration: DestinationServer.servingConfiguration()))
        let destinationRun = Task { try await destination.run() }
        let destinationPort = try await destination.port()
        // A port nothing listens on: the destination service is down.
        let unused = try await HardeningServer.start(http: false) { TCPEchoHandler() }
        let deadPort = unused.port
        await unused.stop()

        var answering = try control.environment(for: "web")
        answering["APUS_PROXY_DESTINATION_SVC_ADDR"] = "127.0.0.1:\(destinationPort)"
        answering["APUS_PROXY_DESTINATION_CONTEXT"] = #"{"ns":"shop","nodeName":"node-1","pod":"web-0"}"#
        var down = try control.environment(for: "api")
        down["APUS_PROXY_DESTINATION_SVC_ADDR"] = "127.0.0.1:\(deadPort)"
        down["APUS_PROXY_DESTINATION_CONTEXT"] = #"{"ns":"shop","nodeName":"node-1","pod":"api-0"}"#
        let ready = try await RunningProxy.start(environment: answering)
        let waiting = try await RunningProxy.start(environment: down)
        defer {
            Task {
                await ready.stop()
                await waiting.stop()
                destinationRun.cancel()
                await control.stop()
            }
        }

        try await MeshWait.until { ready.server.readiness.isReady }
        #expect(try curl(["http://127.0.0.1:\(ready.ports.admin)/ready"]).status == 200)
        // Certified, but without a destination answer it must not take traffic.
        try await MeshWait.until { waiting.server.meshTLS.isAvailable }
        try await Task.sleep(for: .milliseconds(500))
        #expect(waiting.server.readiness.waitingFor == ["destination config"])
        let notReady = try curl(["http://127.0.0.1:\(waiting.ports.admin)/ready"])
        #expect(notReady.status == 503)
        #expect(notReady.body.contains("destination config"))
    }

    @Test func rotationGivesNewConnectionsTheNewCertificateWhileAnOpenOneKeepsWorking() async throws {
        // Three-second leaves, refreshed after about two: a rotation within the test.
        let control = try await IdentityControlPlane.start(leafLifetime: 3, clockSkew: 1)
        let identity = IdentityName(serviceAccount: "api", namespace: "shop")
        let identityClient = try IdentityClient(
            configuration: IdentityClientConfiguration(
                identity: identity, tokenPath: try control.tokenFile(for: "api"),
                trustAnchorsPEM: control.anchorsPEM,
                endpoint: CertifyEndpoint(
                    host: "127.0.0.1", port: control.port, serverIdentity: control.service.serverIdentity.description),
                refresh: RefreshPolicy(minimumRefresh: .milliseconds(300), initialBackoff: .milliseconds(100))))
        let refreshing = Task { await identityClient.run() }
        _ = try await identityClient.waitForCredentials()
        let tcpEcho = try await HardeningServer.start(http: false) { TCPEchoHandler() }
        let proxy = try await RunningProxy.start(
            { $0.inboundPolicy = .allAuthenticated }, meshTLS: MeshTLS(identity: identityClient))
        defer {
            Task {
                await proxy.stop()
                await tcpEcho.stop()
                refreshing.cancel()
                await control.stop()
            }
        }

        // An opaque stream between meshed peers: TLS with the transport ALPN, then the transport header naming
        // the app port, then the bytes.
        func openTransport() async throws -> (MeshClientConnection, [UInt8]) {
            let caller = MeshTLS(credentials: try control.credentials(serviceAccount: "web"))
            let connection = try await MeshClientConnection.connect(
                port: proxy.ports.inbound, tls: caller, expectedIdentity: identity.description,
                alpn: [MeshTLS.alpnTransport])
            let outcome = try await connection.handshake.get()
            var header = ByteBuffer()
            try TransportHeader(port: tcpEcho.port).encode(into: &header)
            try await connection.channel.writeAndFlush(header)
            return (connection, outcome.peerCertificate ?? [])
        }

        let (first, firstCertificate) = try await openTransport()
        let initialLeaf = try #require(try identityClient.credentials?.leaf.der)
        #expect(firstCertificate == initialLeaf)
        #expect(try await first.roundTrip("before rotation"))

        try await MeshWait.until(timeout: .seconds(15)) {
            try identityClient.credentials?.leaf.der != initialLeaf
        }
        let rotatedLeaf = try #require(try identityClient.credentials?.leaf.der)
        let (second, secondCertificate) = try await openTransport()
        #expect(secondCertificate == rotatedLeaf)
        #expect(secondCertificate != firstCertificate)
        #expect(try await second.roundTrip("with the new certificate"))
        // The connection made before the rotation is untouched.
        #expect(try await first.roundTrip("after rotation"))
        try await first.channel.close()
        try await second.channel.close()
    }
}
