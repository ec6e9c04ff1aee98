import ApusController
import ApusCore
import ApusDestinationClient
import ApusX509
import Foundation
import KubernetesClient
import KubernetesTestServer
import NIOSSL
import Testing

/// Test certificates until the identity issue provides the controller's serving certificate.
struct DestinationTLS {
    let server: TLSConfiguration
    let client: TLSConfiguration

    static func make() throws -> DestinationTLS {
        let caKey = try PrivateKey.generateP256()
        let ca = try CertificateBuilder.certificateAuthority(commonName: "apus-test-identity-ca", key: caKey)
            .selfSigned(with: caKey)
        let key = try PrivateKey.generateP256()
        var serving = CertificateBuilder(commonName: "apus-destination", publicKey: try key.publicKey)
        serving.dnsNames = ["localhost", "apus-destination.apus.svc"]
        serving.ipAddresses = ["127.0.0.1"]
        serving.extendedKeyUsage = [.serverAuth]
        let certificate = try serving.signed(by: ca, key: caKey)
        var server = TLSConfiguration.makeServerConfiguration(
            certificateChain: [
                .certificate(try NIOSSLCertificate(bytes: Array(try certificate.pem.utf8), format: .pem))
            ],
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(try key.pemPKCS8.utf8), format: .pem)))
        server.shutdownTimeout = .milliseconds(200)
        var client = TLSConfiguration.makeClientConfiguration()
        client.trustRoots = .certificates([try NIOSSLCertificate(bytes: Array(try ca.pem.utf8), format: .pem)])
        client.shutdownTimeout = .milliseconds(200)
        return DestinationTLS(server: server, client: client)
    }
}

@Suite struct DestinationEndToEndTests {
    static let host = "web.shop.svc.cluster.local"

    static func profile(route: String) -> ServiceProfile {
        ServiceProfile(
            metadata: ObjectMeta(name: host, namespace: "shop"),
            spec: ServiceProfile.Spec(routes: [
                ServiceProfile.Route(
                    name: route, condition: ServiceProfile.RequestMatch(pathRegex: "/books/\\d+", method: "GET"))
            ]))
    }

    static func slice(_ pods: [(String, String)]) -> EndpointSlice {
        var slice = Fixtures.slice(pods.map { ($0.0, $0.1, true, true, false) })
        slice.metadata.namespace = "shop"
        return slice
    }

    static func endpointKeys(_ resolution: Resolution?) -> [String] {
        guard case .endpoints(let set)? = resolution else { return [] }
        return set.keys.sorted()
    }

    /// A manager, its indexes and a destination server on `port` (0: any), run until the returned task is
    /// cancelled.
    static func startController(
        fixture: ControllerManagerTests.Fixture, tls: DestinationTLS, port: Int
    ) throws -> (server: DestinationServer, task: Task<Void, Never>, client: KubernetesClient) {
        let client = try fixture.controllerClient()
        let manager = ControllerManager(
            client: client, options: ControllerOptions(leaderElection: false, identity: "replica", resyncPeriod: nil))
        let indexes = try DestinationIndexes(manager: manager, configuration: Fixtures.configuration)
        let server = DestinationServer(
            indexes: indexes,
            configuration: .init(
                host: "127.0.0.1", port: port, tls: tls.server, heartbeatInterval: .milliseconds(200)))
        let task = Task {
            await withDiscardingTaskGroup { group in
                group.addTask { await manager.run() }
                group.addTask { await indexes.run() }
                group.addTask { try? await server.run() }
            }
        }
        return (server, task, client)
    }

    @Test("a proxy client receives endpoints and routes, follows updates, and falls back to the default profile")
    func endToEnd() async throws {
        let fixture = try await ControllerManagerTests.Fixture.start(rules: try ControllerManagerTests.checkedInRules())
        let admin = fixture.admin
        _ = try await admin.create(Namespace(metadata: ObjectMeta(name: "apus")))
        _ = try await admin.create(Namespace(metadata: ObjectMeta(name: "shop")))
        _ = try await admin.create(Fixtures.service(), namespace: "shop")
        for (name, ip) in [("web-0", "10.0.0.1"), ("web-1", "10.0.0.2"), ("web-2", "10.0.0.3")] {
            _ = try await admin.create(Fixtures.pod(name, ip: ip), namespace: "shop")
        }
        let initialSlice = try await admin.create(
            Self.slice([("web-0", "10.0.0.1"), ("web-1", "10.0.0.2")]), namespace: "shop")
        _ = try await admin.create(Self.profile(route: "GET /books/{id}"), namespace: "shop")

        let tls = try DestinationTLS.make()
        let controller = try Self.startController(fixture: fixture, tls: tls, port: 0)
        let port = await controller.server.port()
        let proxy = try DestinationClient(
            configuration: .init(
                host: "127.0.0.1", port: port, tls: tls.client, serverHostname: "localhost", namespace: "client",
                pod: "client-0", initialBackoff: .milliseconds(50), maximumBackoff: .milliseconds(200),
                idleTimeout: .seconds(2)))
        let endpoints = proxy.watchEndpoints(authority: "web.shop:80")
        let profile = proxy.watchProfile(authority: "web.shop.svc.cluster.local:80")

        try await eventually { Self.endpointKeys(endpoints.latest) == ["10.0.0.1:8080", "10.0.0.2:8080"] }
        guard case .endpoints(let set)? = endpoints.latest else { throw CancellationError() }
        #expect(set["10.0.0.1:8080"]?.identity == "web.shop.serviceaccount.identity.apus.cluster.local")
        #expect(set["10.0.0.1:8080"]?.labels["deployment"] == "web")
        try await eventually { profile.latest?.routes.map(\.name) == ["GET /books/{id}"] }
        let compiled = try #require(try profile.latest?.compiledServiceProfile())
        #expect(compiled.route(for: RouteRequest(method: "GET", target: "/books/7"))?.name == "GET /books/{id}")

        // Scale up: the client applies the add diff.
        var scaled = Self.slice([("web-0", "10.0.0.1"), ("web-1", "10.0.0.2"), ("web-2", "10.0.0.3")])
        scaled.metadata.resourceVersion = initialSlice.metadata.resourceVersion
        _ = try await admin.update(scaled)
        try await eventually { Self.endpointKeys(endpoints.latest).count == 3 }

        // Update the profile → new table; delete it → the default profile.
        var stored = try await admin.get(ServiceProfile.self, name: Self.host, namespace: "shop")
        stored.spec = Self.profile(route: "GET /books/{id} v2").spec
        _ = try await admin.update(stored)
        try await eventually { profile.latest?.routes.map(\.name) == ["GET /books/{id} v2"] }
        try await admin.delete(ServiceProfile.self, name: Self.host, namespace: "shop")
        try await eventually { profile.latest?.source == .default && profile.latest?.routes.isEmpty == true }
        #expect(profile.latest?.retryBudget == DestinationProfile.defaultBudget)

        // Must-show 4: the controller dies while the client holds streams. The client keeps its last config…
        controller.task.cancel()
        await controller.task.value
        try await eventually { !endpoints.isConnected && !profile.isConnected }
        #expect(Self.endpointKeys(endpoints.latest).count == 3)
        #expect(profile.latest?.source == .default)
        // …the cluster changes meanwhile…
        _ = try await admin.create(Self.profile(route: "after restart"), namespace: "shop")
        let current = try await admin.get(EndpointSlice.self, name: "web-abc12", namespace: "shop")
        var shrunk = Self.slice([("web-2", "10.0.0.3")])
        shrunk.metadata.resourceVersion = current.metadata.resourceVersion
        _ = try await admin.update(shrunk)
        try await Task.sleep(for: .milliseconds(300))
        #expect(Self.endpointKeys(endpoints.latest).count == 3)  // still the last known state while down

        // …and a new controller on the same address brings the client to the current state.
        let restarted = try Self.startController(fixture: fixture, tls: tls, port: port)
        try await eventually(timeout: .seconds(15)) { Self.endpointKeys(endpoints.latest) == ["10.0.0.3:8080"] }
        try await eventually { profile.latest?.routes.map(\.name) == ["after restart"] }
        #expect(endpoints.isConnected && profile.isConnected)

        endpoints.cancel()
        profile.cancel()
        await proxy.shutdown()
        restarted.task.cancel()
        await restarted.task.value
        try await controller.client.shutdown()
        try await restarted.client.shutdown()
        #expect(fixture.refusals.withLockedValue { $0 }.map(\.description) == [])
        try await fixture.shutdown()
    }

    @Test("bad requests get an HTTP error with a reason and the client keeps retrying without crashing")
    func rejectsBadAuthority() async throws {
        let endpoints = EndpointsIndex(configuration: Fixtures.configuration)
        let profiles = ProfileIndex(configuration: Fixtures.configuration)
        let tls = try DestinationTLS.make()
        let server = DestinationServer(
            endpoints: endpoints, profiles: profiles,
            configuration: .init(host: "127.0.0.1", port: 0, tls: tls.server, heartbeatInterval: .milliseconds(100)))
        let run = Task { try await server.run() }
        let port = await server.port()
        let proxy = try DestinationClient(
            configuration: .init(
                host: "127.0.0.1", port: port, tls: tls.client, serverHostname: "localhost", namespace: "shop",
                initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(50)))
        let bad = proxy.watchEndpoints(authority: "web.shop:99999")
        let good = proxy.watchEndpoints(authority: "external.example.com.:443")
        // An authority outside the cluster: noEndpoints(exists: false), the proxy forwards as addressed.
        try await eventually { good.latest == .notFound }
        try await Task.sleep(for: .milliseconds(200))
        #expect(bad.latest == nil && !bad.isConnected)
        #expect(server.currentMetrics.streamsOpened >= 3)  // the bad watch was retried
        bad.cancel()
        good.cancel()
        await proxy.shutdown()
        run.cancel()
        _ = await run.result
    }
}
