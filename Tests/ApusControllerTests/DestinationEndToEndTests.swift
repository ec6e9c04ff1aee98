import ApusController
import ApusCore
import ApusDestinationClient
import ApusIdentity
import ApusIdentityClient
import ApusX509
import Foundation
import KubernetesClient
import KubernetesTestServer
import NIOSSL
import Testing

/// A test identity CA (ApusIdentity) in place of the controller's: its ``IdentityIssuer`` issues the destination
/// server's certificate through ``ServingCertificates``, and it issues proxies' credentials as Certify would.
struct TestMesh {
    let roots: TrustRoots
    let issuer: IdentityIssuer

    static func make() throws -> TestMesh {
        let mesh = TestMesh(roots: try TrustRoots.generate(), issuer: IdentityIssuer())
        try mesh.load(mesh.roots)
        return mesh
    }

    /// Switches the issuer to `roots` (a rotation when it already has credentials).
    func load(_ roots: TrustRoots) throws {
        let outcome = issuer.load(
            anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
            issuerKeyPEM: roots.issuerKeyPEM)
        guard case .updated = outcome else { throw IdentityError(.invalidIssuer, "test roots refused: \(outcome)") }
    }

    /// The destination server's certificates, as `apus-controller` configures them.
    func servingCertificates() -> ServingCertificates {
        ServingCertificates(issuer: issuer, configuration: DestinationServer.servingConfiguration())
    }

    /// What Certify returns to a proxy of `serviceAccount` in `namespace`, checked as the identity client does.
    func proxyCredentials(serviceAccount: String = "client", namespace: String = "client") throws
        -> IdentityCredentials
    {
        let identity = IdentityName(serviceAccount: serviceAccount, namespace: namespace)
        let key = try PrivateKey.generateP256()
        let csr = try CertificateSigningRequest(key: key, dnsName: identity.description)
        let response = try issuer.authority().issue(csrDER: try csr.der, identity: identity)
        let leaf = try Certificate(der: response.leafCertificate)
        let intermediates = try response.intermediateCertificates.map { try Certificate(der: $0) }
        guard let anchors = issuer.credentials?.anchors else {
            throw IdentityError(.issuerNotReady, "the test issuer has no credentials")
        }
        try leaf.verify(anchors: anchors, intermediates: intermediates)
        return IdentityCredentials(
            identity: identity, privateKey: key, leaf: leaf, intermediates: intermediates,
            validUntil: response.validUntil, anchors: anchors)
    }

    static let proxyIdentity = "client.client.serviceaccount.identity.apus.cluster.local"
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
        fixture: ControllerManagerTests.Fixture, mesh: TestMesh, port: Int
    ) throws -> (server: DestinationServer, task: Task<Void, Never>, client: KubernetesClient) {
        let client = try fixture.controllerClient()
        let manager = ControllerManager(
            client: client, options: ControllerOptions(leaderElection: false, identity: "replica", resyncPeriod: nil))
        let indexes = try DestinationIndexes(manager: manager, configuration: Fixtures.configuration)
        let server = DestinationServer(
            indexes: indexes,
            configuration: .init(host: "127.0.0.1", port: port, heartbeatInterval: .milliseconds(200)),
            certificates: mesh.servingCertificates())
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

        let mesh = try TestMesh.make()
        let controller = try Self.startController(fixture: fixture, mesh: mesh, port: 0)
        let port = try await controller.server.port()
        // The proxy presents its identity and checks the server's: apus-destination.apus.serviceaccount...
        let proxy = DestinationClient(
            configuration: .init(
                host: "127.0.0.1", port: port, tls: .credentials(try mesh.proxyCredentials()), namespace: "client",
                pod: "client-0", initialBackoff: .milliseconds(50), maximumBackoff: .milliseconds(200),
                idleTimeout: .seconds(2)))
        let endpoints = proxy.watchEndpoints(authority: "web.shop:80")
        let profile = proxy.watchProfile(authority: "web.shop.svc.cluster.local:80")

        try await eventually { Self.endpointKeys(endpoints.latest) == ["10.0.0.1:8080", "10.0.0.2:8080"] }
        guard case .endpoints(let set)? = endpoints.latest else { throw CancellationError() }
        #expect(set["10.0.0.1:8080"]?.identity == "web.shop.serviceaccount.identity.apus.cluster.local")
        #expect(set["10.0.0.1:8080"]?.labels["deployment"] == "web")
        try await eventually { profile.latest?.routes.map(\.name) == ["GET /books/{id}"] }
        // The server knows who is watching: both streams are counted under the proxy's certificate identity.
        #expect(controller.server.currentMetrics.streamsActiveByClient == [TestMesh.proxyIdentity: 2])
        #expect(controller.server.currentMetrics.connectionsAccepted == 1)
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
        let restarted = try Self.startController(fixture: fixture, mesh: mesh, port: port)
        try await eventually(timeout: .seconds(15)) { Self.endpointKeys(endpoints.latest) == ["10.0.0.3:8080"] }
        try await eventually { profile.latest?.routes.map(\.name) == ["after restart"] }
        #expect(endpoints.isConnected && profile.isConnected)

        endpoints.cancel()
        profile.cancel()
        await proxy.shutdown()
        restarted.task.cancel()
        await restarted.task.value
        #expect(fixture.refusals.withLockedValue { $0 }.map(\.description) == [])
        try await fixture.shutdown()
    }

    @Test("bad requests get an HTTP error with a reason and the client keeps retrying without crashing")
    func rejectsBadAuthority() async throws {
        let endpoints = EndpointsIndex(configuration: Fixtures.configuration)
        let profiles = ProfileIndex(configuration: Fixtures.configuration)
        let mesh = try TestMesh.make()
        let server = DestinationServer(
            endpoints: endpoints, profiles: profiles,
            configuration: .init(host: "127.0.0.1", port: 0, heartbeatInterval: .milliseconds(100)),
            certificates: mesh.servingCertificates())
        let run = Task { try await server.run() }
        let port = try await server.port()
        let proxy = DestinationClient(
            configuration: .init(
                host: "127.0.0.1", port: port, tls: .credentials(try mesh.proxyCredentials()), namespace: "shop",
                initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(50)))
        let bad = proxy.watchEndpoints(authority: "web.shop:99999")
        let good = proxy.watchEndpoints(authority: "external.example.com.:443")
        // An authority outside the cluster: noEndpoints(exists: false), the proxy forwards as addressed.
        try await eventually { good.latest == .notFound }
        // The bad watch is retried (one good stream plus at least two bad attempts) and never gets a value.
        try await eventually { server.currentMetrics.streamsOpened >= 3 }
        #expect(bad.latest == nil && !bad.isConnected)
        bad.cancel()
        good.cancel()
        await proxy.shutdown()
        run.cancel()
        _ = await run.result
    }

    /// A server with one watched index (the default profile is always there) and a helper to watch it.
    struct MTLSServer {
        let server: DestinationServer
        let run: Task<Void, any Error>
        let port: Int

        static func start(_ mesh: TestMesh) async throws -> MTLSServer {
            let server = DestinationServer(
                endpoints: EndpointsIndex(configuration: Fixtures.configuration),
                profiles: ProfileIndex(configuration: Fixtures.configuration),
                configuration: .init(host: "127.0.0.1", port: 0, heartbeatInterval: .milliseconds(100)),
                certificates: mesh.servingCertificates())
            let run = Task { try await server.run() }
            return MTLSServer(server: server, run: run, port: try await server.port())
        }

        func client(_ tls: DestinationClientTLS, serverIdentity: String? = nil) -> DestinationClient {
            DestinationClient(
                configuration: .init(
                    host: "127.0.0.1", port: port, tls: tls,
                    serverIdentity: serverIdentity ?? DestinationProtocol.serverIdentity().description,
                    namespace: "client", initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(50)))
        }

        func stop() async {
            run.cancel()
            _ = await run.result
        }
    }

    static let watched = "web.shop.svc.cluster.local:80"

    @Test("the handshake refuses a proxy without a certificate or with one from another CA; a mesh proxy is served")
    func refusesClientsWithoutMeshIdentity() async throws {
        let mesh = try TestMesh.make()
        let foreign = try TestMesh.make()
        let running = try await MTLSServer.start(mesh)
        let anchors = try NIOSSLCertificate.fromPEMBytes(Array(mesh.roots.anchorsPEM.utf8))

        var anonymous = TLSConfiguration.makeClientConfiguration()
        anonymous.trustRoots = .certificates(anchors)
        let strangers = [
            running.client(.configuration(anonymous)),
            running.client(.credentials(try foreign.proxyCredentials())),
        ]
        let refusedWatches = strangers.map { $0.watchProfile(authority: Self.watched) }
        try await eventually { running.server.currentMetrics.connectionsRefused >= 4 }  // each retried at least once
        #expect(refusedWatches.allSatisfy { $0.latest == nil && !$0.isConnected })
        #expect(running.server.currentMetrics.streamsOpened == 0)

        // The proxy checks the server too: a server certificate naming another identity is not accepted.
        let wrongServer = running.client(
            .credentials(try mesh.proxyCredentials()),
            serverIdentity: "apus-identity.apus.serviceaccount.identity.apus.cluster.local")
        let misdirected = wrongServer.watchProfile(authority: Self.watched)

        // The same server serves a proxy of the mesh, here with its identity given as PEM (mounted files).
        let credentials = try mesh.proxyCredentials(serviceAccount: "web", namespace: "shop")
        let member = running.client(
            try .pem(
                certificateChainPEM: try credentials.certificateChainPEM,
                privateKeyPEM: try credentials.privateKey.pemPKCS8, trustAnchorsPEM: mesh.roots.anchorsPEM))
        let served = member.watchProfile(authority: Self.watched)
        try await eventually { served.latest?.source == .default }
        #expect(
            running.server.currentMetrics.streamsActiveByClient
                == ["web.shop.serviceaccount.identity.apus.cluster.local": 1])
        #expect(misdirected.latest == nil && !misdirected.isConnected)
        #expect(refusedWatches.allSatisfy { $0.latest == nil })

        for watch in refusedWatches + [misdirected, served] { watch.cancel() }
        for client in strangers + [wrongServer, member] { await client.shutdown() }
        await running.stop()
    }

    @Test("port() reports a server that stopped before listening instead of waiting forever")
    func portReportsAServerThatNeverListened() async throws {
        let mesh = try TestMesh.make()
        func server(port: Int, ready: @escaping @Sendable () async -> Void) -> DestinationServer {
            DestinationServer(
                endpoints: EndpointsIndex(configuration: Fixtures.configuration),
                profiles: ProfileIndex(configuration: Fixtures.configuration),
                configuration: .init(host: "127.0.0.1", port: port), certificates: mesh.servingCertificates(),
                ready: ready)
        }
        // Cancelled while waiting for the caches: never listened.
        let waiting = server(port: 0, ready: { try? await Task.sleep(for: .seconds(3600)) })
        let run = Task { try await waiting.run() }
        run.cancel()
        _ = await run.result
        await #expect(throws: DestinationServer.NotListeningError.self) { _ = try await waiting.port() }

        // The port is taken by another server: run() fails, and so does port().
        let first = try await MTLSServer.start(mesh)
        let second = server(port: first.port, ready: {})
        await #expect(throws: (any Error).self) { try await second.run() }
        await #expect(throws: DestinationServer.NotListeningError.self) { _ = try await second.port() }
        first.run.cancel()
        _ = await first.run.result
    }

    @Test("bad PEM for the client identity is a typed error naming the part that does not parse")
    func rejectsUnparsablePEM() throws {
        let mesh = try TestMesh.make()
        let credentials = try mesh.proxyCredentials()
        let chain = try credentials.certificateChainPEM
        let key = try credentials.privateKey.pemPKCS8
        let failures: [(String, String, String, String)] = [
            ("not a certificate", key, mesh.roots.anchorsPEM, "certificate chain"),
            (chain, "not a key", mesh.roots.anchorsPEM, "private key"),
            (chain, key, "", "trust anchors"),
        ]
        for (chainPEM, keyPEM, anchorsPEM, part) in failures {
            #expect {
                _ = try DestinationClientTLS.pem(
                    certificateChainPEM: chainPEM, privateKeyPEM: keyPEM, trustAnchorsPEM: anchorsPEM)
            } throws: { error in
                let failure = error as? DestinationClientError
                return failure?.code == .noClientCertificate && failure?.message.contains(part) == true
            }
        }
    }

    @Test("the destination certificate follows the issuer: untrusted until loaded, re-issued and re-anchored")
    func servingCertificateFollowsTheIssuer() async throws {
        let mesh = TestMesh(roots: try TrustRoots.generate(), issuer: IdentityIssuer())
        let running = try await MTLSServer.start(mesh)
        #expect(running.server.certificates.isTrusted == false)  // bootstrap certificate until the issuer loads

        let early = running.client(.configuration(try Self.clientConfiguration(for: mesh.roots)))
        let waiting = early.watchProfile(authority: Self.watched)
        try await eventually { running.server.currentMetrics.connectionsRefused >= 1 }
        #expect(waiting.latest == nil)

        try mesh.load(mesh.roots)
        try await eventually { running.server.certificates.isTrusted }
        let first = try #require(running.server.certificates.certificate)
        #expect(first.dnsNames.first == DestinationProtocol.serverIdentity().description)
        #expect(first.extendedKeyUsage == [.serverAuth])
        let oldProxy = try mesh.proxyCredentials()
        let before = running.client(.credentials(oldProxy))
        let beforeWatch = before.watchProfile(authority: Self.watched)
        try await eventually { beforeWatch.latest != nil }

        // Rotation to new, unrelated roots: a new serving certificate from the new issuer, and client certificates
        // are verified against the new anchors only.
        let rotated = try TrustRoots.generate()
        try mesh.load(rotated)
        let rotatedAnchors = try rotated.anchors
        let rotatedIssuer = try rotated.issuer
        try await eventually {
            (try? running.server.certificates.certificate?.verify(
                anchors: rotatedAnchors, intermediates: [rotatedIssuer])) != nil
        }
        let stale = running.client(.credentials(oldProxy))
        let staleWatch = stale.watchProfile(authority: Self.watched)
        let fresh = running.client(.credentials(try mesh.proxyCredentials()))
        let freshWatch = fresh.watchProfile(authority: Self.watched)
        try await eventually { freshWatch.latest != nil }
        #expect(staleWatch.latest == nil)
        // The connection opened before the rotation keeps its stream.
        #expect(beforeWatch.isConnected)

        for watch in [waiting, beforeWatch, staleWatch, freshWatch] { watch.cancel() }
        for client in [early, before, stale, fresh] { await client.shutdown() }
        await running.stop()
    }

    /// A client configuration presenting a leaf issued by `roots` (made without the issuer under test).
    static func clientConfiguration(for roots: TrustRoots) throws -> TLSConfiguration {
        let issuer = IdentityIssuer()
        issuer.load(
            anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
            issuerKeyPEM: roots.issuerKeyPEM)
        return try TestMesh(roots: roots, issuer: issuer).proxyCredentials().makeClientConfiguration()
    }
}
