import ApusController
import ApusCore
import ApusDestinationClient
import ApusProxy
import KubernetesClient
import NIOCore
import NIOPosix
import Testing

@Suite struct DiscoveryResolverTests {
    static let loop = MultiThreadedEventLoopGroup.singleton.next()

    @Test("static table: keys and lookups are normalized alike; unknown and unparsable authorities pass through")
    func staticTable() async throws {
        let endpoint = Endpoint(address: "10.1.0.5", port: 8080, identity: MeshCA.identity("web"))
        let resolver = DestinationResolver(
            client: nil, staticEndpoints: ["web.shop:80": [endpoint]], clusterDomain: "cluster.local",
            namespace: "front")

        let full = try await resolver.resolve(authority: "web.shop.svc.cluster.local:80", on: Self.loop).get()
        #expect(full.resolution == .endpoints([endpoint.key: endpoint]))
        #expect(full.authority == "web.shop.svc.cluster.local:80")
        #expect(full.canonical?.description == "web.shop.svc.cluster.local:80")
        #expect(try await resolver.resolve(authority: "web.shop:80", on: Self.loop).get().resolution == full.resolution)
        // A short name expands in the proxy's own namespace, where there is no such entry.
        let short = try await resolver.resolve(authority: "web:80", on: Self.loop).get()
        #expect(short.isPassthrough && short.canonical?.description == "web.front.svc.cluster.local:80")
        let external = try await resolver.resolve(authority: "example.com.:443", on: Self.loop).get()
        #expect(external.isPassthrough && external.authority == "example.com.:443")
        let garbage = try await resolver.resolve(authority: "bad host!:x", on: Self.loop).get()
        #expect(garbage.isPassthrough && garbage.canonical == nil && garbage.authority == "bad host!:x")
        #expect(resolver.watchedAuthorities.isEmpty)
    }

    @Test(
        "against a real destination server: first lookup waits for endpoints, later ones hit the cache, updates apply")
    func realDestination() async throws {
        let destination = try await TestDestination.start()
        // The first answer may take a while on a loaded 2-core machine (TLS handshake, the server's first
        // frames); the test is about what the answer is, so the wait is generous instead of the proxy's 3 s.
        let resolver = DestinationResolver(
            client: try destination.client(), staticEndpoints: [:], clusterDomain: "cluster.local", namespace: "front",
            firstFrameTimeout: .seconds(30), idleTimeout: .seconds(60))

        let first = try await resolver.resolve(authority: "web.shop:80", on: Self.loop).get()
        guard case .endpoints(let set) = first.resolution else {
            Issue.record("expected endpoints, got \(first.resolution)")
            return
        }
        #expect(set.keys.sorted() == ["10.0.0.1:8080", "10.0.0.2:8080"])
        #expect(set["10.0.0.1:8080"]?.identity == MeshCA.identity("web"))
        #expect(first.authority == "web.shop:80")
        #expect(resolver.watchedAuthorities == ["web.shop.svc.cluster.local:80"])
        // Another spelling of the same destination shares the cached watch: no new streams are opened.
        try await MeshWait.until { destination.server.currentMetrics.streamsActive == 2 }
        let opened = destination.server.currentMetrics.streamsOpened
        let again = try await resolver.resolve(authority: "web.shop.svc.cluster.local:80", on: Self.loop).get()
        #expect(again.resolution == first.resolution)
        #expect(destination.server.currentMetrics.streamsOpened == opened)
        // The profile arrives on its own stream and is attached.
        try await MeshWait.until {
            try await resolver.resolve(authority: "web.shop:80", on: Self.loop).get().profile?.fullyQualifiedName
                == "web.shop.svc.cluster.local"
        }

        // Scale up: the cached answer follows the cluster.
        destination.scale(to: [("web-0", "10.0.0.1"), ("web-1", "10.0.0.2"), ("web-2", "10.0.0.3")])
        try await MeshWait.until {
            let resolved = try await resolver.resolve(authority: "web.shop:80", on: Self.loop).get()
            guard case .endpoints(let set) = resolved.resolution else { return false }
            return set.count == 3
        }

        // A name the cluster does not know: the destination says so, the proxy passes through.
        let unknown = try await resolver.resolve(authority: "nothing.shop:80", on: Self.loop).get()
        #expect(unknown.isPassthrough)

        resolver.shutdown()
        try await MeshWait.until { destination.server.currentMetrics.streamsActive == 0 }
        #expect(try await resolver.resolve(authority: "web.shop:80", on: Self.loop).get().isPassthrough)
        await destination.stop()
    }

    @Test("watches unused for the idle timeout are cancelled; the next lookup starts them again")
    func idleWatches() async throws {
        let destination = try await TestDestination.start()
        let resolver = DestinationResolver(
            client: try destination.client(), staticEndpoints: [:], clusterDomain: "cluster.local", namespace: "front",
            // A loaded `make test` has delayed the first answer past the 3 s default.
            firstFrameTimeout: .seconds(30), idleTimeout: .milliseconds(300))
        let first = try await resolver.resolve(authority: "web.shop:80", on: Self.loop).get()
        #expect(!first.isPassthrough)
        try await MeshWait.until { destination.server.currentMetrics.streamsActive == 2 }
        try await MeshWait.until { resolver.watchedAuthorities.isEmpty }
        try await MeshWait.until { destination.server.currentMetrics.streamsActive == 0 }

        let again = try await resolver.resolve(authority: "web.shop:80", on: Self.loop).get()
        #expect(again.resolution == first.resolution)
        resolver.shutdown()
        await destination.stop()
    }

    @Test(
        "a destination service that never answers: the first lookup passes through after the bound, later ones at once")
    func unreachable() async throws {
        // A destination service that accepts connections and never answers (a hung controller).
        let silent = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(silent.localAddress?.port)
        let ca = try MeshCA.make()
        let client = DestinationClient(
            configuration: .init(
                host: "127.0.0.1", port: port, tls: .credentials(try ca.credentials(serviceAccount: "client")),
                namespace: "front", initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(50)))
        let resolver = DestinationResolver(
            client: client, staticEndpoints: [:], clusterDomain: "cluster.local", namespace: "front",
            firstFrameTimeout: .seconds(3))

        let clock = ContinuousClock()
        let started = clock.now
        let concurrent = (0..<3).map { _ in resolver.resolve(authority: "web.shop:80", on: Self.loop) }
        for future in concurrent { #expect(try await future.get().isPassthrough) }
        let waited = clock.now - started
        #expect(waited >= .seconds(3) && waited < .seconds(15))
        // A later lookup does not wait for the bound again (it would take ≥ 3 s if it did).
        let later = clock.now
        #expect(try await resolver.resolve(authority: "web.shop:80", on: Self.loop).get().isPassthrough)
        #expect(clock.now - later < .seconds(2))
        resolver.shutdown()
        await client.shutdown()
        try await silent.close()
    }
}

/// A real destination server (ApusController) over its indexes, fed directly with a `web` Service in `shop`
/// (two meshed pods behind it), serving mTLS with a certificate from an in-process CA.
struct TestDestination {
    let ca: MeshCA
    let endpoints: EndpointsIndex
    let server: DestinationServer
    let run: Task<Void, any Error>
    let port: Int

    static let configuration = DestinationConfiguration(
        controlNamespace: "apus", trustDomain: "cluster.local", clusterDomain: "cluster.local")

    static func start() async throws -> TestDestination {
        let ca = try MeshCA.make()
        let endpoints = EndpointsIndex(configuration: configuration)
        var spec = ServiceSpec(selector: ["app": "web"], ports: [ServicePort(name: "http", port: 80)])
        spec.clusterIP = "10.96.0.10"
        endpoints.apply(
            .service(.added(ApusCore.Service(metadata: ObjectMeta(name: "web", namespace: "shop"), spec: spec))))
        for (name, ip) in [("web-0", "10.0.0.1"), ("web-1", "10.0.0.2"), ("web-2", "10.0.0.3")] {
            endpoints.apply(.pod(.added(pod(name, ip: ip))))
        }
        endpoints.apply(.slice(.added(slice([("web-0", "10.0.0.1"), ("web-1", "10.0.0.2")]))))
        let server = DestinationServer(
            endpoints: endpoints, profiles: ProfileIndex(configuration: configuration),
            configuration: .init(host: "127.0.0.1", port: 0, heartbeatInterval: .milliseconds(200)),
            certificates: ServingCertificates(
                issuer: ca.issuer, configuration: DestinationServer.servingConfiguration()))
        let run = Task { try await server.run() }
        return TestDestination(ca: ca, endpoints: endpoints, server: server, run: run, port: try await server.port())
    }

    /// A destination client for a proxy in namespace `front`, with credentials from the same CA.
    func client() throws -> DestinationClient {
        DestinationClient(
            configuration: .init(
                host: "127.0.0.1", port: port, tls: .credentials(try ca.credentials(serviceAccount: "client")),
                namespace: "front", pod: "front-0", initialBackoff: .milliseconds(20),
                maximumBackoff: .milliseconds(100)))
    }

    func scale(to pods: [(String, String)]) {
        endpoints.apply(.slice(.updated(old: Self.slice([]), new: Self.slice(pods))))
    }

    func stop() async {
        run.cancel()
        _ = await run.result
    }

    static func pod(_ name: String, ip: String) -> Pod {
        var spec = PodSpec(containers: [Container(name: "web", image: "nginx")])
        spec.serviceAccountName = "web"
        return Pod(
            metadata: ObjectMeta(
                name: name, namespace: "shop", labels: ["app": "web"],
                annotations: ["linkerd.io/proxy-version": "apus-0.1"]),
            spec: spec, status: PodStatus(phase: "Running", podIP: ip))
    }

    static func slice(_ pods: [(String, String)]) -> EndpointSlice {
        EndpointSlice(
            metadata: ObjectMeta(
                name: "web-abc12", namespace: "shop", labels: [EndpointSlice.serviceNameLabel: "web"]),
            endpoints: pods.map { pod, address in
                var endpoint = EndpointSlice.Endpoint(addresses: [address])
                endpoint.conditions = EndpointSlice.Conditions(ready: true, serving: true, terminating: false)
                endpoint.targetRef = ObjectReference(kind: "Pod", namespace: "shop", name: pod)
                return endpoint
            },
            ports: [EndpointSlice.Port(name: "http", port: 8080)])
    }
}
