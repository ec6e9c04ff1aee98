import ApusController
import ApusCore
import Foundation
import KubernetesClient
import KubernetesTestServer
import Testing

/// The status reconcilers against the API test server, as the controller's ServiceAccount with the checked-in
/// RBAC plus ``StatusReconcilers/requiredPermissions``.
@Suite struct ReconcilerStatusTests {
    static let host = "web.shop.svc.cluster.local"

    static func json(_ text: String) throws -> JSONValue { try JSONValue(json: Data(text.utf8)) }

    static func profileJSON(pathRegex: String, ratio: Double) throws -> JSONValue {
        let regex = try String(decoding: JSONEncoder().encode(pathRegex), as: UTF8.self)
        return try json(
            """
            {"apiVersion": "linkerd.io/v1alpha2", "kind": "ServiceProfile",
             "metadata": {"name": "\(host)", "namespace": "shop"},
             "spec": {"routes": [{"name": "GET /books", "condition": {"method": "GET", "pathRegex": \(regex)}}],
                      "retryBudget": {"retryRatio": \(ratio), "minRetriesPerSecond": 10, "ttl": "10s"}}}
            """)
    }

    static func routeJSON(name: String, parent: String, backend: String, filterType: String? = nil) throws
        -> JSONValue
    {
        let filters = filterType.map { #", "filters": [{"type": "\#($0)", "urlRewrite": {}}]"# } ?? ""
        return try json(
            """
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "\(name)", "namespace": "shop"},
             "spec": {"parentRefs": [{"group": "core", "kind": "Service", "name": "\(parent)", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "\(backend)", "port": 80}]\(filters)}]}}
            """)
    }

    static func parentConditions(_ route: HTTPRoute) -> [String: Condition] {
        let ours = route.status?.parents?.first { $0.controllerName == "apus.io/controller" }
        return Dictionary((ours?.conditions ?? []).map { ($0.type, $0) }) { a, _ in a }
    }

    @Test("invalid profile and routes get Accepted/ResolvedRefs conditions and Events; fixing them flips them")
    func statusConditionsAndEvents() async throws {
        try await ControllerManagerTests.Fixture.with(
            rules: try ControllerManagerTests.checkedInRules() + StatusReconcilers.requiredPermissions
        ) { fixture in
            // The CRD has a status subresource; declare it on the test server the same way.
            fixture.server.registerResource(ServiceProfile.resourceType, hasStatusSubresource: true)
            let admin = fixture.admin
            _ = try await admin.create(Namespace(metadata: ObjectMeta(name: "apus")))
            _ = try await admin.create(Namespace(metadata: ObjectMeta(name: "shop")))
            _ = try await admin.create(
                ApusCore.Service(
                    metadata: ObjectMeta(name: "web", namespace: "shop"),
                    spec: ServiceSpec(selector: ["app": "web"], ports: [ServicePort(name: "http", port: 80)])),
                namespace: "shop")
            _ = try await admin.create(
                ServiceProfile.resourceType, try Self.profileJSON(pathRegex: "/books/(", ratio: -1), namespace: "shop")
            _ = try await admin.create(
                HTTPRoute.resourceType, try Self.routeJSON(name: "to-missing", parent: "web", backend: "web-v2"),
                namespace: "shop")
            _ = try await admin.create(
                HTTPRoute.resourceType, try Self.routeJSON(name: "no-parent", parent: "nope", backend: "web"),
                namespace: "shop")
            _ = try await admin.create(
                HTTPRoute.resourceType,
                try Self.routeJSON(name: "rewrite", parent: "web", backend: "web", filterType: "URLRewrite"),
                namespace: "shop")

            try await Self.withStatusReconcilers(fixture) { manager, statuses in

                // Invalid profile: Accepted=False/InvalidSpec listing every issue by field path, and a Warning Event.
                try await eventually {
                    let profile = try await admin.get(ServiceProfile.self, name: Self.host, namespace: "shop")
                    let condition = profile.status?.conditions?[type: "Accepted"]
                    return condition?.status == "False" && condition?.reason == "InvalidSpec"
                        && condition?.message?.contains("spec.routes[0].condition.pathRegex") == true
                        && condition?.message?.contains("spec.retryBudget.retryRatio") == true
                        && condition?.observedGeneration == 1
                }
                try await eventually {
                    let events = try await admin.list(Event.self, namespace: "shop").items
                    return events.contains {
                        $0.reason == "InvalidServiceProfile" && $0.type == "Warning"
                            && $0.involvedObject.name == Self.host
                    }
                }
                // Routes: missing backend, missing parent, unsupported filter.
                try await eventually {
                    let route = try await admin.get(HTTPRoute.self, name: "to-missing", namespace: "shop")
                    let conditions = Self.parentConditions(route)
                    return conditions["Accepted"]?.status == "True"
                        && conditions["ResolvedRefs"]?.reason == "BackendNotFound"
                        && conditions["ResolvedRefs"]?.message?.contains("spec.rules[0].backendRefs[0]") == true
                        && route.status?.parents?.first?.parentRef.name == "web"
                }
                try await eventually {
                    let route = try await admin.get(HTTPRoute.self, name: "no-parent", namespace: "shop")
                    return Self.parentConditions(route)["Accepted"]?.reason == "NoMatchingParent"
                }
                try await eventually {
                    let route = try await admin.get(HTTPRoute.self, name: "rewrite", namespace: "shop")
                    let accepted = Self.parentConditions(route)["Accepted"]
                    return accepted?.status == "False" && accepted?.reason == "UnsupportedValue"
                        && accepted?.message?.contains("spec.rules[0].filters[0].type") == true
                }
                try await eventually {
                    let events = try await admin.list(Event.self, namespace: "shop").items
                    return events.contains { $0.reason == "BackendNotFound" && $0.involvedObject.name == "to-missing" }
                        && events.contains { $0.reason == "NoMatchingParent" && $0.involvedObject.name == "no-parent" }
                        && events.contains { $0.reason == "UnsupportedValue" && $0.involvedObject.name == "rewrite" }
                }

                // Level-based and idempotent: reconciling converged objects again writes nothing. First let the
                // controller's own workers go quiet (on a loaded machine they may still be finishing), so only the explicit
                // reconciles below are measured.
                func patchCount() -> Int { fixture.server.requestLog.filter { $0.verb == "patch" }.count }
                var lastCount = patchCount()
                try await eventually {
                    try await Task.sleep(for: .milliseconds(300))
                    let count = patchCount()
                    defer { lastCount = count }
                    return count == lastCount
                }
                let patchesBefore = patchCount()
                _ = try await statuses.profileReconciler.reconcile(ObjectKey(namespace: "shop", name: Self.host))
                _ = try await statuses.routeReconciler.reconcile(ObjectKey(namespace: "shop", name: "to-missing"))
                #expect(fixture.server.requestLog.filter { $0.verb == "patch" }.count == patchesBefore)

                // Fix the profile and create the backend: the conditions flip, and the valid profile now overrides the
                // routes attached to `web`, which their status says.
                _ = try await admin.update(ServiceProfile.resourceType, Self.fixedProfile(admin))
                _ = try await admin.create(
                    ApusCore.Service(
                        metadata: ObjectMeta(name: "web-v2", namespace: "shop"),
                        spec: ServiceSpec(selector: ["app": "web-v2"], ports: [ServicePort(name: "http", port: 80)])),
                    namespace: "shop")
                try await eventually {
                    let profile = try await admin.get(ServiceProfile.self, name: Self.host, namespace: "shop")
                    let condition = profile.status?.conditions?[type: "Accepted"]
                    return condition?.status == "True" && condition?.reason == "Accepted"
                        && condition?.observedGeneration == 2
                }
                try await eventually {
                    let route = try await admin.get(HTTPRoute.self, name: "to-missing", namespace: "shop")
                    let conditions = Self.parentConditions(route)
                    return conditions["ResolvedRefs"]?.status == "True"
                        && conditions["Overridden"]?.message?.contains("ServiceProfile shop/\(Self.host)") == true
                }
            }
        }
    }

    @Test("invalid Linkerd policy annotations on a Service get a Warning Event naming each key; valid ones none")
    func invalidServiceAnnotationsAreReported() async throws {
        try await ControllerManagerTests.Fixture.with(
            rules: try ControllerManagerTests.checkedInRules()
        ) { fixture in
            let admin = fixture.admin
            _ = try await admin.create(Namespace(metadata: ObjectMeta(name: "apus")))
            _ = try await admin.create(Namespace(metadata: ObjectMeta(name: "shop")))
            func service(_ name: String, _ annotations: [String: String]) -> ApusCore.Service {
                ApusCore.Service(
                    metadata: ObjectMeta(name: name, namespace: "shop", annotations: annotations),
                    spec: ServiceSpec(selector: ["app": name], ports: [ServicePort(name: "http", port: 80)]))
            }
            _ = try await admin.create(
                service("web", ["retry.linkerd.io/http": "5xx", "retry.linkerd.io/limit": "many"]), namespace: "shop")
            _ = try await admin.create(
                service("api", ["retry.linkerd.io/http": "5xx", "timeout.linkerd.io/request": "2s"]), namespace: "shop")

            try await Self.withStatusReconcilers(fixture) { manager, statuses in
                func warnings() async throws -> [Event] {
                    try await admin.list(Event.self, namespace: "shop").items.filter {
                        $0.reason == ServiceAnnotationReconciler.invalidAnnotationReason
                    }
                }
                try await eventually { try await warnings().count == 1 }
                let warning = try #require(try await warnings().first)
                #expect(warning.type == "Warning")
                #expect(warning.involvedObject.kind == "Service" && warning.involvedObject.name == "web")
                #expect(warning.message?.contains("metadata.annotations[retry.linkerd.io/limit]") == true)

                // Fixing the value stops the reports; the valid Service never got one.
                var web = try await admin.get(ApusCore.Service.self, name: "web", namespace: "shop")
                web.metadata.annotations?["retry.linkerd.io/limit"] = "3"
                _ = try await admin.update(web)
                try await eventually {
                    manager.services.store.get(ObjectKey("shop/web"))?.metadata.annotations?[
                        "retry.linkerd.io/limit"] == "3"
                }
                try await Task.sleep(for: .milliseconds(300))
                #expect(try await warnings().count == 1)
                #expect(try await warnings().allSatisfy { $0.involvedObject.name == "web" && ($0.count ?? 1) == 1 })
            }
        }
    }

    /// Runs a controller-manager with the status reconcilers leading while `body` runs, then stops both, also when
    /// `body` throws; the controller must not have been refused anything.
    static func withStatusReconcilers(
        _ fixture: ControllerManagerTests.Fixture,
        _ body: (ControllerManager, StatusReconcilers) async throws -> Void
    ) async throws {
        let manager = ControllerManager(
            client: try fixture.controllerClient(),
            options: ControllerOptions(leaderElection: false, identity: "replica-a", resyncPeriod: nil))
        let statuses = try StatusReconcilers(manager: manager)
        let run = Task { await manager.run() }
        let lead = Task {
            await manager.waitUntilSynced()
            await statuses.runWhileLeading()
        }
        defer {
            lead.cancel()
            run.cancel()
        }
        try await body(manager, statuses)
        lead.cancel()
        run.cancel()
        await lead.value
        await run.value
        #expect(fixture.refusals.withLockedValue { $0 }.map(\.description) == [])
    }

    /// The stored profile with a valid regex and ratio (a full update, so `generation` becomes 2).
    static func fixedProfile(_ admin: KubernetesClient) async throws -> JSONValue {
        let stored = try await admin.get(ServiceProfile.resourceType, name: host, namespace: "shop")
        guard case .object(var object) = stored,
            case .object(let fixed) = try profileJSON(pathRegex: "/books/\\d+", ratio: 0.2)
        else { throw CancellationError() }
        object["spec"] = fixed["spec"]
        return .object(object)
    }
}
