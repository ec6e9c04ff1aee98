import ApusController
import ApusCore
import Foundation
import KubernetesClient
import KubernetesTestServer
import NIOConcurrencyHelpers
import ServiceLifecycleTestKit
import Testing

/// The controller-manager against the API test server, authenticated as its ServiceAccount and authorized by the
/// checked-in `config/rbac` rules: what a cluster admin installs is exactly what the code needs.
@Suite struct ControllerManagerTests {
    static let controllerUser = "system:serviceaccount:apus:apus-controller"

    /// Runs a test server whose authorizer applies `rules` to the controller's user (the admin may do anything),
    /// and records every refusal.
    struct Fixture {
        let server: KubernetesTestServer
        let admin: KubernetesClient
        let refusals: NIOLockedValueBox<[AuthorizationAttributes]>
        /// The controller clients handed out, shut down with the fixture.
        private let clients = NIOLockedValueBox<[KubernetesClient]>([])

        /// Runs `body` with a fixture and shuts it down after, also when `body` throws: a test whose `eventually`
        /// times out then reports that, instead of crashing the whole run on an HTTP client released without
        /// shutdown.
        static func with(rules: [PermissionRule], _ body: (Fixture) async throws -> Void) async throws {
            let fixture = try await start(rules: rules)
            do {
                try await body(fixture)
            } catch {
                try? await fixture.shutdown()
                throw error
            }
            try await fixture.shutdown()
        }

        static func start(rules: [PermissionRule]) async throws -> Fixture {
            let refusals = NIOLockedValueBox<[AuthorizationAttributes]>([])
            var options = KubernetesTestServer.Options()
            options.bearerTokens = ["admin-token": "admin", "controller-token": ControllerManagerTests.controllerUser]
            options.authorizer = { request in
                guard request.user != "admin" else { return true }
                let allowed = rules.contains { $0.allows(request, controlNamespace: "apus") }
                if !allowed { refusals.withLockedValue { $0.append(request) } }
                return allowed
            }
            let server = try await KubernetesTestServer.start(options)
            let admin = try client(server, token: "admin-token")
            return Fixture(server: server, admin: admin, refusals: refusals)
        }

        static func client(_ server: KubernetesTestServer, token: String) throws -> KubernetesClient {
            let configuration = try KubeConfig(yaml: server.kubeconfig(token: token)).configuration()
            return try KubernetesClient(configuration: configuration)
        }

        func controllerClient() throws -> KubernetesClient {
            let client = try Self.client(server, token: "controller-token")
            clients.withLockedValue { $0.append(client) }
            return client
        }

        func shutdown() async throws {
            for client in clients.withLockedValue({ $0 }) { try await client.shutdown() }
            try await admin.shutdown()
            try await server.shutdown()
        }
    }

    static func checkedInRules() throws -> [PermissionRule] {
        let file = PermissionsTests.repositoryRoot.appendingPathComponent("config/rbac/permissions.json")
        return try JSONDecoder().decode([PermissionRule].self, from: Data(contentsOf: file))
    }

    static func options(identity: String) -> ControllerOptions {
        ControllerOptions(
            identity: identity, leaseDuration: .seconds(4), renewDeadline: .seconds(3), retryPeriod: .milliseconds(100),
            resyncPeriod: nil)
    }

    /// A small meshed application: namespace, pod, service, slice, profile and route.
    static func seedApplication(_ admin: KubernetesClient) async throws {
        _ = try await admin.create(Namespace(metadata: ObjectMeta(name: "apus")))
        _ = try await admin.create(
            Namespace(metadata: ObjectMeta(name: "shop", annotations: ["linkerd.io/inject": "enabled"])))
        for index in 0..<3 {
            let pod = Pod(
                metadata: ObjectMeta(name: "web-\(index)", namespace: "shop", labels: ["app": "web"]),
                spec: PodSpec(containers: [Container(name: "web", image: "nginx")]))
            _ = try await admin.create(pod, namespace: "shop")
        }
        let service = Service(
            metadata: ObjectMeta(name: "web", namespace: "shop"),
            spec: ServiceSpec(selector: ["app": "web"], ports: [ServicePort(name: "http", port: 80)]))
        _ = try await admin.create(service, namespace: "shop")
        let slice = EndpointSlice(
            metadata: ObjectMeta(name: "web-abc12", namespace: "shop", labels: [EndpointSlice.serviceNameLabel: "web"]),
            endpoints: [EndpointSlice.Endpoint(addresses: ["10.0.0.1"])],
            ports: [EndpointSlice.Port(name: "http", port: 80)])
        _ = try await admin.create(slice, namespace: "shop")
        let profile = try JSONValue(
            json: Data(
                #"""
                {"apiVersion": "linkerd.io/v1alpha2", "kind": "ServiceProfile",
                 "metadata": {"name": "web.shop.svc.cluster.local", "namespace": "shop"},
                 "spec": {"routes": [{"name": "GET /", "condition": {"method": "GET", "pathRegex": "/"}}]}}
                """#.utf8))
        _ = try await admin.create(ServiceProfile.resourceType, profile, namespace: "shop")
        let route = try JSONValue(
            json: Data(
                #"""
                {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                 "metadata": {"name": "web", "namespace": "shop"},
                 "spec": {"parentRefs": [{"group": "core", "kind": "Service", "name": "web", "port": 80}],
                          "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}
                """#.utf8))
        _ = try await admin.create(HTTPRoute.resourceType, route, namespace: "shop")
    }

    @Test("with exactly config/rbac's permissions the caches sync, one replica leads and records it, none is refused")
    func runsWithCheckedInRBAC() async throws {
        try await Fixture.with(rules: try Self.checkedInRules()) { fixture in
            try await Self.seedApplication(fixture.admin)
            let clientA = try fixture.controllerClient()
            let clientB = try fixture.controllerClient()
            let managerA = ControllerManager(client: clientA, options: Self.options(identity: "replica-a"))
            let managerB = ControllerManager(client: clientB, options: Self.options(identity: "replica-b"))

            let runA = Task { await managerA.run() }
            try await eventually { managerA.elector?.isLeader == true }
            let runB = Task { await managerB.run() }
            await managerA.waitUntilSynced()
            await managerB.waitUntilSynced()

            for manager in [managerA, managerB] {
                #expect(manager.pods.store.count == 3)
                #expect(manager.services.store.count == 1)
                #expect(manager.namespaces.store.count == 2)  // apus and shop
                #expect(manager.endpointSlices.store.count == 1)
                #expect(
                    try manager.endpointSlices.store.byIndex(
                        name: Store<EndpointSlice>.labelIndexName(EndpointSlice.serviceNameLabel), value: "web"
                    ).count == 1)
                #expect(manager.serviceProfiles.store.get(ObjectKey("shop/web.shop.svc.cluster.local")) != nil)
                #expect(manager.httpRoutes.store.get(ObjectKey("shop/web")) != nil)
            }
            // Changes reach both caches.
            _ = try await fixture.admin.create(
                Pod(
                    metadata: ObjectMeta(name: "web-3", namespace: "shop"),
                    spec: PodSpec(containers: [Container(name: "w")])),
                namespace: "shop")
            try await eventually { managerA.pods.store.count == 4 && managerB.pods.store.count == 4 }

            // One leader; the standby takes over as soon as the leader shuts down and releases the lease.
            #expect(managerB.elector?.isLeader == false)
            #expect(
                try await fixture.admin.get(Lease.self, name: "apus-controller", namespace: "apus").spec?
                    .holderIdentity == "replica-a")
            runA.cancel()
            await runA.value
            try await eventually(timeout: .seconds(3)) { managerB.elector?.isLeader == true }
            #expect(
                try await fixture.admin.get(Lease.self, name: "apus-controller", namespace: "apus").spec?
                    .holderIdentity == "replica-b")

            // Each new leader says so in an Event on the Lease.
            try await eventually {
                let events = try await fixture.admin.list(Event.self, namespace: "apus").items
                let messages = Set(events.filter { $0.reason == "LeaderElection" }.compactMap(\.message))
                return messages == ["replica-a became leader", "replica-b became leader"]
            }
            let leaseEvent = try #require(try await fixture.admin.list(Event.self, namespace: "apus").items.first)
            #expect(leaseEvent.involvedObject.kind == "Lease" && leaseEvent.involvedObject.name == "apus-controller")

            runB.cancel()
            await runB.value
            #expect(fixture.refusals.withLockedValue { $0 }.map(\.description) == [])
        }
    }

    @Test("a graceful shutdown, as SIGTERM triggers in the ServiceGroup, stops the manager and releases the lease")
    func gracefulShutdownReleasesTheLease() async throws {
        try await Fixture.with(rules: try Self.checkedInRules()) { fixture in
            try await Self.seedApplication(fixture.admin)
            let client = try fixture.controllerClient()
            let manager = ControllerManager(client: client, options: Self.options(identity: "replica-a"))
            try await testGracefulShutdown { trigger in
                let run = Task { await manager.run() }
                try await eventually { manager.elector?.isLeader == true }
                trigger.triggerGracefulShutdown()
                await run.value
            }
            #expect(manager.elector?.isLeader == false)
            let lease = try await fixture.admin.get(Lease.self, name: "apus-controller", namespace: "apus")
            #expect(lease.spec?.holderIdentity == nil)
        }
    }

    @Test("a role missing a rule the code needs is caught: the request is refused and that cache never syncs")
    func missingPermissionIsRefused() async throws {
        let rules = try Self.checkedInRules().filter { $0.resource != "httproutes" }
        try await Fixture.with(rules: rules) { fixture in
            try await Self.seedApplication(fixture.admin)
            let client = try fixture.controllerClient()
            let manager = ControllerManager(client: client, options: Self.options(identity: "replica-a"))
            let run = Task { await manager.run() }
            await manager.pods.waitUntilSynced()
            try await eventually {
                fixture.refusals.withLockedValue { refused in
                    refused.contains { $0.resource == "httproutes" && $0.verb == "list" }
                }
            }
            #expect(!manager.httpRoutes.hasSynced)
            await #expect(throws: KubernetesError.forbidden) {
                _ = try await client.list(HTTPRoute.self, namespace: "shop")
            }
            run.cancel()
            await run.value
        }
    }
}

extension PermissionRule {
    /// RBAC's decision for one rule: group, resource (with subresource), verb, scope and, when the rule names
    /// objects, the object's name (list/watch carry it through a `metadata.name` field selector).
    func allows(_ request: AuthorizationAttributes, controlNamespace: String) -> Bool {
        guard apiGroup == request.apiGroup, resource == request.resourcePath, verbs.contains(request.verb) else {
            return false
        }
        if scope == .namespace, request.namespace != controlNamespace { return false }
        if let resourceNames {
            guard let name = request.name, resourceNames.contains(name) else { return false }
        }
        return true
    }
}

/// Polls `condition` until it holds or `timeout` passes; waits on state, never on a guessed sleep.
func eventually(
    timeout: Duration = .seconds(10), sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if (try? await condition()) == true { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    Issue.record("condition not met within \(timeout)", sourceLocation: sourceLocation)
    throw CancellationError()
}
