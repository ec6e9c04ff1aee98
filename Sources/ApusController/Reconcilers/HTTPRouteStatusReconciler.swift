import ApusCore
import Foundation
import KubernetesClient

/// Writes `status.parents[]` of HTTPRoutes for their Service parents (GAMMA), under the controller name
/// ``controllerName``; entries of other controllers (e.g. a Gateway's) are kept as they are.
///
/// Conditions per Service parent, with Gateway API reasons:
///
/// | type           | status | reason             | when                                                      |
/// |----------------|--------|--------------------|-----------------------------------------------------------|
/// | `Accepted`     | True   | `Accepted`         | the parent exists and the route is valid                  |
/// | `Accepted`     | False  | `NoMatchingParent` | no such Service, or it has no port `parentRef.port`       |
/// | `Accepted`     | False  | `UnsupportedValue` | validation failed (unsupported filter, bad regex, …)      |
/// | `ResolvedRefs` | True   | `ResolvedRefs`     | every backend is an existing Service                      |
/// | `ResolvedRefs` | False  | `InvalidKind`      | a backend is not a core Service                           |
/// | `ResolvedRefs` | False  | `BackendNotFound`  | a backend Service does not exist                          |
/// | `Overridden`   | True   | `ServiceProfile`   | a valid ServiceProfile for the Service takes precedence   |
///
/// `Overridden` is Apus's own condition: Linkerd silently ignores routes when a ServiceProfile exists; Apus
/// serves the profile too (see ``ProfileIndex``) but says so on the route. Messages name field paths.
/// Writes happen (merge patch of `/status`) only when our entries differ, and a Warning Event accompanies
/// every transition to a failing state.
public struct HTTPRouteStatusReconciler: Reconciler {
    /// The `controllerName` of Apus's `status.parents` entries.
    public static let controllerName = "apus.io/controller"
    public static let overriddenCondition = "Overridden"

    let client: KubernetesClient
    let routes: Store<HTTPRoute>
    let services: Store<ApusCore.Service>
    let profiles: Store<ServiceProfile>
    let events: EventRecorder
    let clusterDomain: String

    public init(
        client: KubernetesClient, routes: Store<HTTPRoute>, services: Store<ApusCore.Service>,
        profiles: Store<ServiceProfile>, events: EventRecorder, clusterDomain: String = "cluster.local"
    ) {
        self.client = client
        self.routes = routes
        self.services = services
        self.profiles = profiles
        self.events = events
        self.clusterDomain = clusterDomain
    }

    /// Our `status.parents` entries for `route`, from the current caches.
    public func desiredParents(for route: HTTPRoute) -> [HTTPRoute.ParentStatus] {
        let namespace = route.metadata.namespace ?? "default"
        let generation = route.metadata.generation
        var validationIssues: [ValidationIssue] = []
        do {
            _ = try route.compile()
        } catch {
            validationIssues = error.issues
        }
        let kindIssues = validationIssues.filter { $0.field.contains(".backendRefs[") && $0.field.hasSuffix(".kind") }
        let otherIssues = validationIssues.filter { issue in !kindIssues.contains(issue) }
        var missingBackends: [String] = []
        for (ruleIndex, rule) in (route.spec.rules ?? []).enumerated() {
            for (backendIndex, backend) in (rule.backendRefs ?? []).enumerated() {
                let group = backend.group ?? ""
                guard (group == "" || group == "core") && (backend.kind ?? "Service") == "Service" else { continue }
                let key = ObjectKey(namespace: backend.namespace ?? namespace, name: backend.name)
                if services.get(key) == nil {
                    missingBackends.append(
                        "spec.rules[\(ruleIndex)].backendRefs[\(backendIndex)]: Service \(key) not found")
                }
            }
        }
        let resolvedRefs: Condition
        if !kindIssues.isEmpty {
            resolvedRefs = Condition(
                type: "ResolvedRefs", status: "False", reason: "InvalidKind",
                message: kindIssues.map(\.description).joined(separator: "; "), observedGeneration: generation)
        } else if !missingBackends.isEmpty {
            resolvedRefs = Condition(
                type: "ResolvedRefs", status: "False", reason: "BackendNotFound",
                message: missingBackends.joined(separator: "; "), observedGeneration: generation)
        } else {
            resolvedRefs = Condition(
                type: "ResolvedRefs", status: "True", reason: "ResolvedRefs", message: "all backends resolved",
                observedGeneration: generation)
        }

        // Invalid retry/timeout annotations only drop their own keys (the route is still served), so they are
        // reported in the Accepted message rather than as a failing condition.
        let annotationNote = RoutePolicyAnnotations.ignoredAnnotationsMessage(
            RoutePolicyAnnotations.parse(route.metadata.annotations, on: .route).issues)
        var result: [HTTPRoute.ParentStatus] = []
        for (index, parent) in (route.spec.parentRefs ?? []).enumerated() where Self.isServiceParent(parent) {
            let serviceKey = ObjectKey(namespace: parent.namespace ?? namespace, name: parent.name)
            let service = services.get(serviceKey)
            var conditions: [Condition] = []
            if service == nil {
                conditions.append(
                    Condition(
                        type: "Accepted", status: "False", reason: "NoMatchingParent",
                        message: "spec.parentRefs[\(index)]: Service \(serviceKey) not found",
                        observedGeneration: generation))
            } else if let port = parent.port, !(service?.spec?.ports ?? []).contains(where: { $0.port == port }) {
                conditions.append(
                    Condition(
                        type: "Accepted", status: "False", reason: "NoMatchingParent",
                        message: "spec.parentRefs[\(index)].port: Service \(serviceKey) has no port \(port)",
                        observedGeneration: generation))
            } else if !otherIssues.isEmpty {
                conditions.append(
                    Condition(
                        type: "Accepted", status: "False", reason: "UnsupportedValue",
                        message: otherIssues.map(\.description).joined(separator: "; "),
                        observedGeneration: generation))
            } else {
                conditions.append(
                    Condition(
                        type: "Accepted", status: "True", reason: "Accepted",
                        message: "attached to Service \(serviceKey)" + (annotationNote.map { "; \($0)" } ?? ""),
                        observedGeneration: generation))
            }
            conditions.append(resolvedRefs)
            if let profile = overridingProfile(for: serviceKey) {
                conditions.append(
                    Condition(
                        type: Self.overriddenCondition, status: "True", reason: "ServiceProfile",
                        message:
                            "ServiceProfile \(profile) applies to Service \(serviceKey) and takes precedence; "
                            + "proxies ignore this route while it exists",
                        observedGeneration: generation))
            }
            var reference = parent
            reference.group = parent.group ?? ""
            result.append(
                HTTPRoute.ParentStatus(
                    parentRef: reference, controllerName: Self.controllerName, conditions: conditions))
        }
        return result
    }

    /// A valid ServiceProfile for the Service's FQDN in the Service's namespace (one every client sees).
    func overridingProfile(for service: ObjectKey) -> ObjectKey? {
        let namespace = service.namespace ?? "default"
        let key = ObjectKey(namespace: namespace, name: "\(service.name).\(namespace).svc.\(clusterDomain)")
        guard let profile = profiles.get(key), (try? profile.compile()) != nil else { return nil }
        return key
    }

    static func isServiceParent(_ parent: HTTPRoute.ParentReference) -> Bool {
        let group = parent.group ?? "gateway.networking.k8s.io"
        return (group == "" || group == "core") && parent.kind == "Service"
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        guard let route = routes.get(key), let name = route.metadata.name else { return .done }
        let existing = route.status?.parents ?? []
        let ours = existing.filter { $0.controllerName == Self.controllerName }
        var desired = desiredParents(for: route)
        // Keep lastTransitionTime of conditions whose status did not change.
        for index in desired.indices {
            let previous = ours.first { $0.parentRef == desired[index].parentRef }?.conditions ?? []
            var merged = previous.filter { condition in
                desired[index].conditions?.contains { $0.type == condition.type } ?? false
            }
            for condition in desired[index].conditions ?? [] { merged.set(condition) }
            desired[index].conditions = (desired[index].conditions ?? []).compactMap { merged[type: $0.type] }
        }
        if Self.same(ours, desired) { return .done }
        let parents = existing.filter { $0.controllerName != Self.controllerName } + desired
        let patch = Patch.merge(.object(["status": .object(["parents": try JSONValue(encoding: parents)])]))
        do {
            _ = try await client.patchStatus(HTTPRoute.self, name: name, namespace: key.namespace, patch: patch)
        } catch let error as KubernetesError where error == .notFound {
            return .done
        }
        for parent in desired {
            for condition in parent.conditions ?? []
            where condition.status == "False" && ["Accepted", "ResolvedRefs"].contains(condition.type) {
                let before = ours.first { $0.parentRef == parent.parentRef }?.conditions?[type: condition.type]
                if before.map({ StatusConditions.same($0, condition) }) == true { continue }
                await events.record(
                    object: route, type: .warning, reason: condition.reason ?? condition.type,
                    message: condition.message ?? "")
            }
        }
        return .done
    }

    static func same(_ a: [HTTPRoute.ParentStatus], _ b: [HTTPRoute.ParentStatus]) -> Bool {
        a.count == b.count
            && zip(a, b).allSatisfy { x, y in
                x.parentRef == y.parentRef && x.controllerName == y.controllerName
                    && StatusConditions.same(x.conditions ?? [], y.conditions ?? [])
            }
    }

    /// Routes to look at again when `service` changes: those naming it as parent or backend.
    public static func routes(referencing service: ObjectKey, in routes: Store<HTTPRoute>) -> [ObjectKey] {
        routes.list().filter { route in
            let namespace = route.metadata.namespace
            let parents = (route.spec.parentRefs ?? []).contains {
                isServiceParent($0) && ObjectKey(namespace: $0.namespace ?? namespace, name: $0.name) == service
            }
            let backends = (route.spec.rules ?? []).contains { rule in
                (rule.backendRefs ?? []).contains {
                    ObjectKey(namespace: $0.namespace ?? namespace, name: $0.name) == service
                }
            }
            return parents || backends
        }.map(\.objectKey)
    }
}
