import ApusController
import ApusCore
import ApusDestinationClient
import ApusProxy
import KubernetesClient
import NIOCore
import NIOPosix
import Testing

/// Profiles from a real destination server (ApusController over its indexes, mTLS) are compiled into route
/// tables by the resolver once per profile version: every lookup between two versions gets the same table, and
/// a new version a new one.
@Suite struct RoutingDiscoveryTests {
    @Test func resolverCompilesEachProfileVersionOnce() async throws {
        let ca = try MeshCA.make()
        let configuration = TestDestination.configuration
        let endpoints = EndpointsIndex(configuration: configuration)
        var spec = ServiceSpec(selector: ["app": "web"], ports: [ServicePort(name: "http", port: 80)])
        spec.clusterIP = "10.96.0.10"
        endpoints.apply(
            .service(.added(ApusCore.Service(metadata: ObjectMeta(name: "web", namespace: "shop"), spec: spec))))
        endpoints.apply(.pod(.added(TestDestination.pod("web-0", ip: "10.0.0.1"))))
        endpoints.apply(.slice(.added(TestDestination.slice([("web-0", "10.0.0.1")]))))
        let profiles = ProfileIndex(configuration: configuration)
        func serviceProfile(timeout: String) -> ServiceProfile {
            ServiceProfile(
                metadata: ObjectMeta(name: "web.shop.svc.cluster.local", namespace: "shop"),
                spec: ServiceProfile.Spec(routes: [
                    RoutingFixture.route("GET /books", pathRegex: "/books", method: "GET", timeout: timeout)
                ]))
        }
        let first = serviceProfile(timeout: "100ms")
        profiles.apply(.serviceProfile(.added(first)))
        let server = DestinationServer(
            endpoints: endpoints, profiles: profiles,
            configuration: .init(host: "127.0.0.1", port: 0, heartbeatInterval: .milliseconds(200)),
            certificates: ServingCertificates(
                issuer: ca.issuer, configuration: DestinationServer.servingConfiguration()))
        let run = Task { try await server.run() }
        defer { run.cancel() }
        let client = DestinationClient(
            configuration: .init(
                host: "127.0.0.1", port: try await server.port(),
                tls: .credentials(try ca.credentials(serviceAccount: "client")), namespace: "front", pod: "front-0",
                initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(100)))
        let resolver = DestinationResolver(
            client: client, staticEndpoints: [:], clusterDomain: "cluster.local", namespace: "front",
            idleTimeout: .seconds(60))
        defer { resolver.shutdown() }
        let loop = MultiThreadedEventLoopGroup.singleton.next()

        func table() async throws -> RouteTable? {
            try await resolver.resolve(authority: "web.shop:80", on: loop).get().routeTable
        }
        try await MeshWait.until { try await table()?.profile.routes.first?.timeout == "100ms" }
        let compiled = try #require(try await table())
        #expect(compiled.problems.isEmpty)
        #expect(compiled.profile.source == .serviceProfile)
        for _ in 0..<5 { #expect(try await table() === compiled) }

        profiles.apply(.serviceProfile(.updated(old: first, new: serviceProfile(timeout: "250ms"))))
        try await MeshWait.until { try await table()?.profile.routes.first?.timeout == "250ms" }
        #expect(try await table() !== compiled)
    }
}
