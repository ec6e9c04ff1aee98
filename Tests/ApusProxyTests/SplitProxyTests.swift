import ApusController
import ApusCore
import ApusDestinationClient
import ApusProxy
import KubernetesClient
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// Traffic splits through a real in-process proxy: ServiceProfile `dstOverrides` from a static profile, and
/// from a real destination server whose profile changes while requests flow.
@Suite struct SplitProxyTests {
    static let web = "web.shop.svc.cluster.local:80"
    static let v1 = "web-v1.shop.svc.cluster.local:80"
    static let v2 = "web-v2.shop.svc.cluster.local:80"

    @Test("dstOverrides 900m/100m split 5,000 requests 90/10 within 3 %")
    func ninetyTen() async throws {
        let v1 = try await ControlledBackend.start("v1")
        let v2 = try await ControlledBackend.start("v2")
        let profile = DestinationProfile(
            fullyQualifiedName: "web.shop.svc.cluster.local", port: 80, source: .serviceProfile,
            dstOverrides: [.init(authority: Self.v1, weight: "900m"), .init(authority: Self.v2, weight: "100m")])
        let proxy = try await RunningProxy.start { configuration in
            configuration.staticEndpoints = [Self.web: [], Self.v1: [v1.endpoint], Self.v2: [v2.endpoint]]
            configuration.staticProfiles = [Self.web: profile]
        }
        let responses = try await sendRequests(
            port: proxy.ports.outbound, host: Self.web, total: 5_000, concurrency: 4)
        let counts = histogram(responses)
        #expect(responses.allSatisfy { $0.status == 200 })
        let share = Double(counts["v1", default: 0]) / 5_000
        #expect(abs(share - 0.9) <= 0.03, "\(counts)")
        #expect(counts.values.reduce(0, +) == 5_000)
        await proxy.stop()
        await v1.stop()
        await v2.stop()
    }

    @Test("HTTPRoute backendRefs weights 3:1 split the matched rule's requests 75/25 within 3 %")
    func httpRouteBackends() async throws {
        let v1 = try await ControlledBackend.start("v1")
        let v2 = try await ControlledBackend.start("v2")
        let route = HTTPRoute(
            metadata: ObjectMeta(name: "web-split", namespace: "shop"),
            spec: HTTPRoute.Spec(
                parentRefs: [HTTPRoute.ParentReference(group: "core", kind: "Service", name: "web", port: 80)],
                rules: [
                    HTTPRoute.Rule(backendRefs: [
                        HTTPRoute.BackendRef(name: "web-v1", port: 80, weight: 3),
                        HTTPRoute.BackendRef(name: "web-v2", port: 80, weight: 1),
                    ])
                ]))
        let profile = DestinationProfile(
            fullyQualifiedName: "web.shop.svc.cluster.local", port: 80, source: .httpRoute,
            resources: ["shop/web-split"], httpRoutes: [route])
        let proxy = try await RunningProxy.start { configuration in
            configuration.staticEndpoints = [Self.web: [], Self.v1: [v1.endpoint], Self.v2: [v2.endpoint]]
            configuration.staticProfiles = [Self.web: profile]
        }
        let responses = try await sendRequests(
            port: proxy.ports.outbound, host: Self.web, total: 2_000, concurrency: 4)
        let counts = histogram(responses)
        #expect(responses.allSatisfy { $0.status == 200 })
        #expect(abs(Double(counts["v1", default: 0]) / 2_000 - 0.75) <= 0.03, "\(counts)")
        await proxy.stop()
        await v1.stop()
        await v2.stop()
    }

    @Test("weights changed live in the ServiceProfile apply to new requests, with no failed request meanwhile")
    func liveWeights() async throws {
        let v1 = try await ControlledBackend.start("v1")
        let v2 = try await ControlledBackend.start("v2")
        let destination = try await SplitDestination.start()
        let resolver = DestinationResolver(
            client: try destination.client(),
            staticEndpoints: [Self.v1: [v1.endpoint], Self.v2: [v2.endpoint]], clusterDomain: "cluster.local",
            namespace: "front", idleTimeout: .seconds(60))
        destination.setWeights(v1: "900m", v2: "100m")
        let proxy = try await startProxy(resolver: resolver)
        let port = proxy.ports.outbound

        // Wait for the profile to reach the proxy (until then requests go to the apex's own endpoints).
        try await MeshWait.until {
            try await sendRequests(port: port, host: Self.web, total: 1, concurrency: 1)
                .first?.backend != nil
        }
        let before = histogram(try await sendRequests(port: port, host: Self.web, total: 1_000, concurrency: 2))
        #expect(abs(Double(before["v1", default: 0]) / 1_000 - 0.9) <= 0.03, "\(before)")

        // Change the weights while traffic keeps flowing.
        let background = Task { try await sendRequests(port: port, host: Self.web, total: 1_500, concurrency: 2) }
        try await Task.sleep(for: .milliseconds(100))
        destination.setWeights(v1: "200m", v2: "800m")
        try await MeshWait.until {
            let sample = histogram(try await sendRequests(port: port, host: Self.web, total: 50, concurrency: 1))
            return sample["v2", default: 0] >= 35
        }
        let after = histogram(try await sendRequests(port: port, host: Self.web, total: 1_000, concurrency: 2))
        #expect(abs(Double(after["v2", default: 0]) / 1_000 - 0.8) <= 0.03, "\(after)")
        let during = try await background.value
        #expect(during.count == 1_500 && during.allSatisfy { $0.status == 200 }, "\(histogram(during))")
        await proxy.stop()
        await destination.stop()
        await v1.stop()
        await v2.stop()
    }
}

/// A real destination server serving the `web` Service in `shop` with a ServiceProfile whose `dstOverrides` the
/// test changes; the split's backends are static endpoints of the proxy's resolver.
struct SplitDestination {
    let ca: MeshCA
    let profiles: ProfileIndex
    let server: DestinationServer
    let run: Task<Void, any Error>
    let port: Int
    let current = NIOLockedValueBox<ServiceProfile?>(nil)

    static func start() async throws -> SplitDestination {
        let ca = try MeshCA.make()
        let configuration = TestDestination.configuration
        let endpoints = EndpointsIndex(configuration: configuration)
        let profiles = ProfileIndex(configuration: configuration)
        var spec = ServiceSpec(selector: ["app": "web"], ports: [ServicePort(name: "http", port: 80)])
        spec.clusterIP = "10.96.0.10"
        let service = ApusCore.Service(metadata: ObjectMeta(name: "web", namespace: "shop"), spec: spec)
        endpoints.apply(.service(.added(service)))
        profiles.apply(.service(.added(service)))
        let server = DestinationServer(
            endpoints: endpoints, profiles: profiles,
            configuration: .init(host: "127.0.0.1", port: 0, heartbeatInterval: .milliseconds(200)),
            certificates: ServingCertificates(
                issuer: ca.issuer, configuration: DestinationServer.servingConfiguration()))
        let run = Task { try await server.run() }
        return SplitDestination(ca: ca, profiles: profiles, server: server, run: run, port: try await server.port())
    }

    func client() throws -> DestinationClient {
        DestinationClient(
            configuration: .init(
                host: "127.0.0.1", port: port, tls: .credentials(try ca.credentials(serviceAccount: "client")),
                namespace: "front", pod: "front-0", initialBackoff: .milliseconds(20),
                maximumBackoff: .milliseconds(100)))
    }

    func setWeights(v1: String, v2: String) {
        let profile = ServiceProfile(
            metadata: ObjectMeta(name: "web.shop.svc.cluster.local", namespace: "shop"),
            spec: ServiceProfile.Spec(dstOverrides: [
                .init(authority: SplitProxyTests.v1, weight: v1), .init(authority: SplitProxyTests.v2, weight: v2),
            ]))
        let old = current.withLockedValue { old in
            defer { old = profile }
            return old
        }
        if let old {
            profiles.apply(.serviceProfile(.updated(old: old, new: profile)))
        } else {
            profiles.apply(.serviceProfile(.added(profile)))
        }
    }

    func stop() async {
        run.cancel()
        _ = await run.result
    }
}
