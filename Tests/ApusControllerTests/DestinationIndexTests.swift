import ApusController
import ApusCore
import ApusDestinationClient
import Foundation
import KubernetesClient
import Testing

/// Fixtures for the index tests: a `web` Service in `shop` backed by Deployment pods.
enum Fixtures {
    static let configuration = DestinationConfiguration(
        controlNamespace: "apus", trustDomain: "cluster.local", clusterDomain: "cluster.local")

    static func service(
        _ name: String = "web", namespace: String = "shop", port: Int = 80, clusterIP: String? = "10.96.0.10",
        annotations: [String: String]? = nil
    ) -> ApusCore.Service {
        var spec = ServiceSpec(selector: ["app": name], ports: [ServicePort(name: "http", port: port)])
        spec.clusterIP = clusterIP
        return ApusCore.Service(
            metadata: ObjectMeta(name: name, namespace: namespace, annotations: annotations), spec: spec)
    }

    static func pod(
        _ name: String, ip: String, namespace: String = "shop", serviceAccount: String = "web", meshed: Bool = true,
        annotations: [String: String] = [:]
    ) -> Pod {
        var annotations = annotations
        if meshed { annotations["linkerd.io/proxy-version"] = "apus-0.1" }
        var spec = PodSpec(containers: [Container(name: "web", image: "nginx")])
        spec.serviceAccountName = serviceAccount
        return Pod(
            metadata: ObjectMeta(
                name: name, namespace: namespace, labels: ["app": "web", "pod-template-hash": "5d8f9c7b6"],
                annotations: annotations,
                ownerReferences: [
                    OwnerReference(
                        apiVersion: "apps/v1", kind: "ReplicaSet", name: "web-5d8f9c7b6", uid: "rs-1", controller: true)
                ]),
            spec: spec, status: PodStatus(phase: "Running", podIP: ip))
    }

    /// `(pod name, address, ready, serving, terminating)`.
    static func slice(
        name: String = "web-abc12", service: String = "web", namespace: String = "shop", targetPort: Int = 8080,
        _ endpoints: [(String, String, Bool?, Bool?, Bool?)]
    ) -> EndpointSlice {
        EndpointSlice(
            metadata: ObjectMeta(name: name, namespace: namespace, labels: [EndpointSlice.serviceNameLabel: service]),
            endpoints: endpoints.map { pod, address, ready, serving, terminating in
                var endpoint = EndpointSlice.Endpoint(addresses: [address])
                endpoint.conditions = EndpointSlice.Conditions(ready: ready, serving: serving, terminating: terminating)
                endpoint.targetRef = ObjectReference(kind: "Pod", namespace: namespace, name: pod)
                return endpoint
            },
            ports: [EndpointSlice.Port(name: "http", port: targetPort)])
    }
}

/// Reads the published values of one subscription, asserting versions only ever increase.
struct Subscription<Value: Sendable> {
    var iterator: AsyncStream<Versioned<Value>>.AsyncIterator
    var lastVersion: UInt64 = 0

    init(_ stream: AsyncStream<Versioned<Value>>) { iterator = stream.makeAsyncIterator() }

    /// The next value (values published since the last read collapse to the newest).
    mutating func next(sourceLocation: SourceLocation = #_sourceLocation) async throws -> Versioned<Value> {
        let value = try #require(await iterator.next(), sourceLocation: sourceLocation)
        #expect(value.version > lastVersion, "never stale after newer", sourceLocation: sourceLocation)
        lastVersion = value.version
        return value
    }
}

@Suite struct EndpointsIndexTests {
    static let target = EndpointTarget.service(ObjectKey(namespace: "shop", name: "web"), port: 80)

    static func endpoints(_ resolution: Resolution) throws -> EndpointSet {
        guard case .endpoints(let set) = resolution else {
            Issue.record("expected endpoints, got \(resolution)")
            throw CancellationError()
        }
        return set
    }

    static func seeded() -> EndpointsIndex {
        let index = EndpointsIndex(configuration: Fixtures.configuration)
        index.apply(.service(.added(Fixtures.service())))
        for (name, ip) in [("web-0", "10.0.0.1"), ("web-1", "10.0.0.2"), ("web-2", "10.0.0.3")] {
            index.apply(.pod(.added(Fixtures.pod(name, ip: ip))))
        }
        return index
    }

    @Test("only ready endpoints are published, each with identity, h2 hint, weight and metric labels")
    func readyEndpointsWithMetadata() async throws {
        let index = Self.seeded()
        index.apply(
            .slice(
                .added(
                    Fixtures.slice([
                        ("web-0", "10.0.0.1", true, true, false), ("web-1", "10.0.0.2", nil, nil, nil),
                        ("web-2", "10.0.0.3", false, false, false),
                    ]))))
        var subscription = Subscription(index.subscribe(Self.target))
        let set = try Self.endpoints(try await subscription.next().value)
        #expect(set.keys.sorted() == ["10.0.0.1:8080", "10.0.0.2:8080"])
        let endpoint = try #require(set["10.0.0.1:8080"])
        #expect(endpoint.identity == "web.shop.serviceaccount.identity.apus.cluster.local")
        #expect(endpoint.protocolHint == .http2)
        #expect(endpoint.weight == 10_000)
        #expect(
            endpoint.labels == [
                "namespace": "shop", "service": "web", "pod": "web-0", "serviceaccount": "web",
                "deployment": "web", "pod_template_hash": "5d8f9c7b6",
            ])
    }

    @Test("scaling up and down publishes sets whose diffs are exactly the added and removed endpoints")
    func scaleUpAndDown() async throws {
        let index = Self.seeded()
        index.apply(.slice(.added(Fixtures.slice([("web-0", "10.0.0.1", true, true, false)]))))
        var subscription = Subscription(index.subscribe(Self.target))
        let first = try await subscription.next()
        #expect(try Self.endpoints(first.value).count == 1)

        let two = Fixtures.slice([("web-0", "10.0.0.1", true, true, false), ("web-1", "10.0.0.2", true, true, false)])
        index.apply(.slice(.updated(old: Fixtures.slice([]), new: two)))
        let second = try await subscription.next()
        #expect(
            EndpointFrame.frames(from: first.value, to: second.value, version: second.version).map(Self.describe)
                == ["add 10.0.0.2:8080"])

        // web-0 becomes not ready, then the slice loses web-1 as well: scale down to nothing.
        let down = Fixtures.slice([
            ("web-0", "10.0.0.1", false, false, false), ("web-1", "10.0.0.2", true, true, false),
        ])
        index.apply(.slice(.updated(old: two, new: down)))
        let third = try await subscription.next()
        #expect(
            EndpointFrame.frames(from: second.value, to: third.value, version: third.version).map(Self.describe)
                == ["remove 10.0.0.1:8080"])
        index.apply(.slice(.deleted(down)))
        let fourth = try await subscription.next()
        #expect(try Self.endpoints(fourth.value).isEmpty)
        #expect(
            EndpointFrame.frames(from: third.value, to: fourth.value, version: fourth.version).map(Self.describe)
                == ["remove 10.0.0.2:8080"])
    }

    @Test("a pod's new service account re-adds its endpoint with the new identity and removes nothing")
    func podIdentityChange() async throws {
        let index = Self.seeded()
        index.apply(.slice(.added(Fixtures.slice([("web-0", "10.0.0.1", true, true, false)]))))
        var subscription = Subscription(index.subscribe(Self.target))
        let before = try await subscription.next()
        let old = Fixtures.pod("web-0", ip: "10.0.0.1")
        index.apply(.pod(.updated(old: old, new: Fixtures.pod("web-0", ip: "10.0.0.1", serviceAccount: "web-v2"))))
        let after = try await subscription.next()
        let diff = EndpointDiff.between(try Self.endpoints(before.value), try Self.endpoints(after.value))
        #expect(diff.removed.isEmpty)
        #expect(diff.added.map(\.identity) == ["web-v2.shop.serviceaccount.identity.apus.cluster.local"])
        #expect(diff.added.first?.labels["serviceaccount"] == "web-v2")

        // Unmeshing the pod drops identity and hint.
        index.apply(
            .pod(
                .updated(
                    old: Fixtures.pod("web-0", ip: "10.0.0.1", serviceAccount: "web-v2"),
                    new: Fixtures.pod("web-0", ip: "10.0.0.1", serviceAccount: "web-v2", meshed: false))))
        let unmeshed = try #require(try Self.endpoints(try await subscription.next().value)["10.0.0.1:8080"])
        #expect(unmeshed.identity == nil && unmeshed.protocolHint == nil)
    }

    @Test("unrelated changes publish nothing; a slow subscriber reads only the newest of many updates")
    func latestValueOnly() async throws {
        let index = Self.seeded()
        var slice = Fixtures.slice([("web-0", "10.0.0.1", true, true, false)])
        index.apply(.slice(.added(slice)))
        var subscription = Subscription(index.subscribe(Self.target))
        #expect(try await subscription.next().version == 1)
        // Another service's pod and a resync (same object again) do not produce a version.
        index.apply(.pod(.added(Fixtures.pod("other-0", ip: "10.0.9.9", namespace: "other"))))
        index.apply(.slice(.updated(old: slice, new: slice)))
        for count in 2...20 {
            let old = slice
            slice = Fixtures.slice((0..<count).map { ("web-\($0)", "10.0.1.\($0)", true, true, false) })
            index.apply(.slice(.updated(old: old, new: slice)))
        }
        let latest = try await subscription.next()
        #expect(latest.version == 20)
        #expect(try Self.endpoints(latest.value).count == 20)
    }

    @Test("when no endpoint is ready, serving endpoints that are terminating keep receiving traffic")
    func drainingFallback() async throws {
        let index = Self.seeded()
        index.apply(
            .slice(
                .added(
                    Fixtures.slice([
                        ("web-0", "10.0.0.1", false, true, true), ("web-1", "10.0.0.2", false, false, true),
                    ]))))
        #expect(try Self.endpoints(index.resolve(Self.target)).keys.sorted() == ["10.0.0.1:8080"])
    }

    @Test("opaque ports from the pod or Service annotation give the opaque hint and transport port")
    func opaquePorts() async throws {
        let index = EndpointsIndex(configuration: Fixtures.configuration)
        index.apply(.service(.added(Fixtures.service("db", port: 5432))))
        index.apply(
            .pod(
                .added(
                    Fixtures.pod(
                        "db-0", ip: "10.0.2.1", annotations: ["config.linkerd.io/opaque-ports": "3306, 5000-5500"]))))
        index.apply(
            .slice(.added(Fixtures.slice(service: "db", targetPort: 5432, [("db-0", "10.0.2.1", true, nil, nil)]))))
        let endpoint = try #require(
            try Self.endpoints(index.resolve(.service(ObjectKey(namespace: "shop", name: "db"), port: 5432)))
                .values.first)
        #expect(endpoint.protocolHint == .opaque)
        #expect(endpoint.opaqueTransportPort == 4143)
    }

    @Test("ExternalName resolves to its DNS name, unknown Services to notFound, IPs to the Service or the pod")
    func otherTargets() async throws {
        let index = Self.seeded()
        index.apply(.slice(.added(Fixtures.slice([("web-0", "10.0.0.1", true, true, false)]))))
        var external = ServiceSpec(type: "ExternalName")
        external.externalName = "db.example.com"
        index.apply(
            .service(.added(ApusCore.Service(metadata: ObjectMeta(name: "db", namespace: "shop"), spec: external))))
        #expect(
            index.resolve(.service(ObjectKey(namespace: "shop", name: "db"), port: 5432))
                == .external(host: "db.example.com", port: 5432))
        #expect(index.resolve(.service(ObjectKey(namespace: "shop", name: "nope"), port: 80)) == .notFound)
        #expect(try Self.endpoints(index.resolve(.ip("10.96.0.10", port: 80))).keys.sorted() == ["10.0.0.1:8080"])
        let pod = try Self.endpoints(index.resolve(.ip("10.0.0.3", port: 9090)))
        #expect(pod.keys.sorted() == ["10.0.0.3:9090"])
        #expect(pod.values.first?.labels["pod"] == "web-2")
        #expect(index.resolve(.ip("192.0.2.1", port: 80)) == .notFound)
    }

    @Test("a subscriber to a Service that appears later gets notFound, then its endpoints; deletion ends them")
    func serviceLifecycle() async throws {
        let index = EndpointsIndex(configuration: Fixtures.configuration)
        var subscription = Subscription(index.subscribe(Self.target))
        #expect(try await subscription.next().value == .notFound)
        index.apply(.service(.added(Fixtures.service())))
        #expect(try await subscription.next().value == .endpoints([:]))
        index.apply(.slice(.added(Fixtures.slice([("web-0", "10.0.0.1", true, true, false)]))))
        #expect(try Self.endpoints(try await subscription.next().value).count == 1)
        // The pod shows up after its slice: its metadata is filled in.
        index.apply(.pod(.added(Fixtures.pod("web-0", ip: "10.0.0.1"))))
        #expect(try Self.endpoints(try await subscription.next().value)["10.0.0.1:8080"]?.identity != nil)
        index.apply(.service(.deleted(Fixtures.service())))
        #expect(try await subscription.next().value == .notFound)
        #expect(index.subscriberCount == 1)
    }

    static func describe(_ frame: EndpointFrame) -> String {
        switch frame {
        case .add(_, let endpoints): return "add " + endpoints.map(\.key).joined(separator: ",")
        case .remove(_, let keys): return "remove " + keys.joined(separator: ",")
        default: return "\(frame)"
        }
    }
}

@Suite struct ProfileIndexTests {
    static let host = "web.shop.svc.cluster.local"
    static let fromShop = ProfileTarget(host: host, port: 80, clientNamespace: "shop")
    static let fromClient = ProfileTarget(host: host, port: 80, clientNamespace: "client")

    static func profile(namespace: String, routeName: String, pathRegex: String = "/books/\\d+") -> ServiceProfile {
        ServiceProfile(
            metadata: ObjectMeta(name: host, namespace: namespace),
            spec: ServiceProfile.Spec(routes: [
                ServiceProfile.Route(
                    name: routeName, condition: ServiceProfile.RequestMatch(pathRegex: pathRegex, method: "GET"),
                    timeout: "300ms")
            ]))
    }

    static func route(_ name: String = "web-split", port: Int? = 80, service: String = "web") -> HTTPRoute {
        HTTPRoute(
            metadata: ObjectMeta(name: name, namespace: "shop", uid: "u-\(name)", resourceVersion: "7"),
            spec: HTTPRoute.Spec(
                parentRefs: [HTTPRoute.ParentReference(group: "core", kind: "Service", name: service, port: port)],
                rules: [HTTPRoute.Rule(backendRefs: [HTTPRoute.BackendRef(name: "web-v2", port: 80)])]))
    }

    @Test("no profile: the default, with no routes and the 0.2 / 10 / 10s budget")
    func defaultProfile() {
        let index = ProfileIndex(configuration: Fixtures.configuration)
        let profile = index.resolve(Self.fromShop)
        #expect(profile.source == .default)
        #expect(profile.routes.isEmpty && profile.httpRoutes.isEmpty)
        #expect(profile.retryBudget == ServiceProfile.RetryBudget(retryRatio: 0.2, minRetriesPerSecond: 10, ttl: "10s"))
    }

    @Test("the client namespace's profile wins over the service namespace's; removing it falls back")
    func clientNamespaceWins() async throws {
        let index = ProfileIndex(configuration: Fixtures.configuration)
        var fromClient = Subscription(index.subscribe(Self.fromClient))
        var fromShop = Subscription(index.subscribe(Self.fromShop))
        #expect(try await fromClient.next().value.source == .default)
        #expect(try await fromShop.next().value.source == .default)

        index.apply(.serviceProfile(.added(Self.profile(namespace: "shop", routeName: "server-side"))))
        #expect(try await fromClient.next().value.routes.map(\.name) == ["server-side"])
        #expect(try await fromShop.next().value.resources == ["shop/\(Self.host)"])

        let override = Self.profile(namespace: "client", routeName: "client-side")
        index.apply(.serviceProfile(.added(override)))
        let overridden = try await fromClient.next().value
        #expect(overridden.routes.map(\.name) == ["client-side"])
        #expect(overridden.resources == ["client/\(Self.host)"])
        // Clients in other namespaces keep the server-side profile.
        #expect(index.resolve(Self.fromShop).routes.map(\.name) == ["server-side"])

        index.apply(.serviceProfile(.deleted(override)))
        #expect(try await fromClient.next().value.routes.map(\.name) == ["server-side"])
    }

    @Test("an invalid update keeps the last valid table; a never-valid profile is ignored; deletion → default")
    func invalidKeepsLastGood() async throws {
        let index = ProfileIndex(configuration: Fixtures.configuration)
        var subscription = Subscription(index.subscribe(Self.fromShop))
        _ = try await subscription.next()
        let good = Self.profile(namespace: "shop", routeName: "good")
        index.apply(.serviceProfile(.added(good)))
        let published = try await subscription.next()
        #expect(published.value.routes.map(\.name) == ["good"])
        #expect(
            try published.value.compiledServiceProfile().routes.first?.timeout == GoDuration(nanoseconds: 300_000_000))

        let bad = Self.profile(namespace: "shop", routeName: "bad", pathRegex: "/books/(")
        index.apply(.serviceProfile(.updated(old: good, new: bad)))
        #expect(index.resolve(Self.fromShop).routes.map(\.name) == ["good"])

        index.apply(.serviceProfile(.deleted(bad)))
        #expect(try await subscription.next().value.source == .default)
        index.apply(.serviceProfile(.added(bad)))
        #expect(index.resolve(Self.fromShop).source == .default)
        #expect(subscription.lastVersion == 3)
    }

    @Test("an HTTPRoute attached to the Service port is served; other ports and detaching give the default")
    func httpRouteAttachDetach() async throws {
        let index = ProfileIndex(configuration: Fixtures.configuration)
        var subscription = Subscription(index.subscribe(Self.fromShop))
        _ = try await subscription.next()
        let route = Self.route()
        index.apply(.httpRoute(.added(route)))
        let attached = try await subscription.next().value
        #expect(attached.source == .httpRoute)
        #expect(attached.resources == ["shop/web-split"])
        let router = try attached.compiledHTTPRoutes()
        #expect(router.route(RouteRequest(method: "GET", target: "/"))?.rule.backends.map(\.name) == ["web-v2"])
        #expect(attached.httpRoutes.first?.metadata.uid == nil)  // trimmed to what precedence needs
        #expect(index.resolve(ProfileTarget(host: Self.host, port: 8080, clientNamespace: "shop")).source == .default)

        // Re-pointing the route at another Service detaches it from this one.
        index.apply(.httpRoute(.updated(old: route, new: Self.route(service: "api"))))
        #expect(try await subscription.next().value.source == .default)
        // A route without a port attaches to every port.
        index.apply(.httpRoute(.added(Self.route("all-ports", port: nil))))
        #expect(try await subscription.next().value.resources == ["shop/all-ports"])
        index.apply(.httpRoute(.deleted(Self.route("all-ports", port: nil))))
        #expect(try await subscription.next().value.source == .default)
    }

    @Test("a ServiceProfile overrides HTTPRoutes for the same Service, and the index says which one")
    func profileOverridesRoutes() async throws {
        let index = ProfileIndex(configuration: Fixtures.configuration)
        index.apply(.httpRoute(.added(Self.route())))
        let service = ObjectKey(namespace: "shop", name: "web")
        #expect(index.overridingProfile(for: service) == nil)
        index.apply(.serviceProfile(.added(Self.profile(namespace: "shop", routeName: "sp"))))
        #expect(index.resolve(Self.fromShop).source == .serviceProfile)
        #expect(index.overridingProfile(for: service) == ObjectKey(namespace: "shop", name: Self.host))
    }

    @Test("Service policy annotations reach subscribers on change; a route's retry keys win; bad keys are reported")
    func serviceAnnotationsRepublish() async throws {
        let index = ProfileIndex(configuration: Fixtures.configuration)
        var subscription = Subscription(index.subscribe(Self.fromShop))
        #expect(try await subscription.next().value.servicePolicy == nil)

        let plain = Fixtures.service()
        index.apply(.service(.added(plain)))
        let annotated = Fixtures.service(annotations: [
            "retry.linkerd.io/http": "gateway-error", "timeout.linkerd.io/request": "5s",
            "balancer.linkerd.io/failure-accrual": "consecutive",
            "balancer.linkerd.io/failure-accrual-consecutive-max-failures": "many",
        ])
        index.apply(.service(.updated(old: plain, new: annotated)))
        // Without routes the default profile carries the Service's policy (the default route's).
        let withPolicy = try await subscription.next().value
        #expect(withPolicy.source == .default)
        let policy = try #require(withPolicy.servicePolicy)
        #expect(policy.retry == RoutePolicy.Retry(limit: 1, httpStatuses: [.gatewayErrors]))
        #expect(policy.timeouts.request == GoDuration(nanoseconds: 5_000_000_000))
        #expect(policy.failureAccrual?.consecutiveMaxFailures == 7)  // the invalid value fell back to the default
        let service = ObjectKey(namespace: "shop", name: "web")
        #expect(
            index.annotationIssues(service: service).map(\.field) == [
                "metadata.annotations[balancer.linkerd.io/failure-accrual-consecutive-max-failures]"
            ])

        var route = Self.route()
        route.metadata.annotations = ["retry.linkerd.io/limit": "3", "retry.linkerd.io/timeout": "nope"]
        index.apply(.httpRoute(.added(route)))
        let routed = try await subscription.next().value
        #expect(routed.source == .httpRoute)
        let routePolicy = try #require(routed.routePolicies?["shop/web-split"])
        // The route's retry group replaces the Service's; the Service's timeouts and accrual still apply.
        #expect(routePolicy.retry == RoutePolicy.Retry(limit: 3, httpStatuses: [.serverErrors]))
        #expect(routePolicy.timeouts.request == GoDuration(nanoseconds: 5_000_000_000))
        #expect(routed.servicePolicy == policy)
        #expect(
            index.annotationIssues(route: route.objectKey).map(\.field) == [
                "metadata.annotations[retry.linkerd.io/timeout]"
            ])
        // What the proxy applies to a request matched to the route's rule.
        let match = try routed.compiledHTTPRoutes().route(RouteRequest(method: "GET", target: "/"))
        #expect(routed.policy(for: match).retry?.limit == 3)

        // An annotation-only change of the Service republishes; removing them all clears the policies.
        index.apply(.service(.updated(old: annotated, new: plain)))
        let cleared = try await subscription.next().value
        #expect(cleared.servicePolicy == nil)
        #expect(cleared.routePolicies?["shop/web-split"]?.timeouts.request == nil)
        #expect(index.annotationIssues(service: service).isEmpty)
        // A Service change that touches no policy annotation publishes nothing.
        index.apply(.service(.updated(old: plain, new: Fixtures.service(clusterIP: "10.96.0.11"))))
        index.apply(.httpRoute(.deleted(route)))
        #expect(try await subscription.next().value.source == .default)
        #expect(subscription.lastVersion == 5)
    }

    @Test("a route that turns the Service's retries off is listed, so proxies do not fall back to them")
    func routeDisablesServiceRetries() throws {
        let index = ProfileIndex(configuration: Fixtures.configuration)
        index.apply(.service(.added(Fixtures.service(annotations: ["retry.linkerd.io/http": "5xx"]))))
        // `/payments` requests must not be retried; everything else keeps the Service's retries.
        var off = Self.route("no-retries")
        off.metadata.annotations = ["retry.linkerd.io/limit": "0"]
        let payments = HTTPRoute.Match(path: HTTPRoute.PathMatch(type: "PathPrefix", value: "/payments"))
        off.spec.rules?[0].matches = [payments]
        index.apply(.httpRoute(.added(off)))
        index.apply(.httpRoute(.added(Self.route("inherits"))))
        let profile = index.resolve(Self.fromShop)
        #expect(profile.servicePolicy?.retry?.limit == 1)
        #expect(profile.routePolicies == ["shop/no-retries": RoutePolicy()])
        let router = try profile.compiledHTTPRoutes()
        let payment = router.route(RouteRequest(method: "POST", target: "/payments/1"))
        #expect(payment?.route.key.name == "no-retries")
        #expect(profile.policy(for: payment).retry == nil)
        #expect(profile.policy(for: router.route(RouteRequest(method: "GET", target: "/"))).retry?.limit == 1)
        #expect(profile.policy(for: nil).retry?.limit == 1)  // no route matched: the Service's policy
    }

    @Test("profiles with the new policy fields round-trip, and v1 frames without them still decode")
    func policyWireCompatibility() throws {
        var profile = DestinationProfile.defaultProfile(fullyQualifiedName: Self.host, port: 80)
        let old = try DestinationProtocol.encodeLine(ProfileFrame.profile(version: 1, profile: profile))
        #expect(!String(decoding: old, as: UTF8.self).contains("Policy"))  // absent fields are not sent
        profile.servicePolicy = RoutePolicy(timeouts: RoutePolicy.Timeouts(idle: GoDuration(nanoseconds: 1_000)))
        profile.routePolicies = ["shop/web-split": RoutePolicy(retry: RoutePolicy.Retry(limit: 2))]
        let frame = ProfileFrame.profile(version: 2, profile: profile)
        let line = try DestinationProtocol.encodeLine(frame)
        #expect(try JSONDecoder().decode(ProfileFrame.self, from: line) == frame)
        let decodedOld = try JSONDecoder().decode(ProfileFrame.self, from: old)
        guard case .profile(_, let decoded) = decodedOld else { throw CancellationError() }
        #expect(decoded.servicePolicy == nil && decoded.routePolicies == nil)
    }
}
