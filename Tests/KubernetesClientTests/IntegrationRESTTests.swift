import ApusCore
import Foundation
import KubernetesClient
import KubernetesTestServer
import Testing

extension IntegrationTests {
    /// Typed and untyped REST calls of ``KubernetesClient`` against the test server over HTTPS, authenticated
    /// with the bearer token of the server's kubeconfig.
    @Suite("REST over HTTPS")
    struct REST {
        static let widgets = ResourceType(
            group: "example.apus.io", version: "v1", plural: "widgets", kind: "Widget", namespaced: true)

        @Test func kubeconfigClientUsesHTTPSAndTheBearerToken() async throws {
            try await IntegrationHarness.run { harness in
                let configuration = harness.client.configuration
                #expect(configuration.server.scheme == "https")
                #expect(configuration.authentication == .bearer(harness.server.token))
                #expect(configuration.tls.certificateAuthorityPEM != nil)
                _ = try await harness.client.list(ConfigMap.self)
                let log = harness.server.requestLog
                #expect(!log.isEmpty)
                #expect(log.allSatisfy { $0.user == "apus-test-admin" }, "every request authenticated by the token")
            }
        }

        @Test func configMapAndPodCRUD() async throws {
            try await IntegrationHarness.run { harness in
                let client = harness.client
                let created = try await client.create(
                    ConfigMap(metadata: ObjectMeta(name: "settings", labels: ["app": "web"]), data: ["a": "1"]))
                #expect(created.metadata.namespace == "it", "the kubeconfig context's namespace is the default")
                #expect(created.metadata.uid?.isEmpty == false)
                let createdVersion = try #require(created.metadata.resourceVersion)

                var fetched = try await client.get(ConfigMap.self, name: "settings")
                #expect(fetched == created)
                fetched.data = ["a": "2", "b": "3"]
                let updated = try await client.update(fetched)
                #expect(updated.data == ["a": "2", "b": "3"])
                #expect(updated.metadata.resourceVersion != createdVersion)
                #expect(updated.metadata.uid == created.metadata.uid)

                let list = try await client.list(ConfigMap.self, namespace: "it")
                #expect(list.items.map(\.metadata.name) == ["settings"])
                #expect(list.items.first?.data == ["a": "2", "b": "3"])

                try await client.delete(ConfigMap.self, name: "settings")
                await #expect(throws: KubernetesError.notFound) {
                    try await client.get(ConfigMap.self, name: "settings")
                }
                #expect(try await client.list(ConfigMap.self, namespace: "it").items.isEmpty)

                var pod = Pod(
                    metadata: ObjectMeta(name: "web-0", labels: ["app": "web"]),
                    spec: PodSpec(containers: [Container(name: "app", image: "registry.example/web:1")]))
                pod.spec?.serviceAccountName = "web"
                let createdPod = try await client.create(pod)
                #expect(createdPod.spec?.containers.map(\.name) == ["app"])
                #expect(createdPod.status?.phase == "Pending", "the server defaults a new pod's phase")
                var changedPod = try await client.get(Pod.self, name: "web-0")
                changedPod.metadata.annotations = ["apus.io/inject": "enabled"]
                let updatedPod = try await client.update(changedPod)
                #expect(updatedPod.metadata.annotations == ["apus.io/inject": "enabled"])
                try await client.delete(Pod.self, name: "web-0")
                await #expect(throws: KubernetesError.notFound) { try await client.get(Pod.self, name: "web-0") }
            }
        }

        @Test func typedServiceProfileCRUD() async throws {
            try await IntegrationHarness.run { harness in
                let client = harness.client
                let name = "web.it.svc.cluster.local"
                let profile = ServiceProfile(
                    metadata: ObjectMeta(name: name),
                    spec: ServiceProfile.Spec(routes: [
                        ServiceProfile.Route(
                            name: "GET /books", condition: .init(pathRegex: "/books", method: "GET"), timeout: "300ms")
                    ]))
                let created = try await client.create(profile)
                #expect(created.metadata.generation == 1)
                #expect(created.spec.routes?.first?.timeout == "300ms")

                var fetched = try await client.get(ServiceProfile.self, name: name)
                #expect(fetched.spec == profile.spec)
                fetched.spec.routes?.append(
                    ServiceProfile.Route(name: "POST /books", condition: .init(pathRegex: "/books", method: "POST")))
                let updated = try await client.update(fetched)
                #expect(updated.metadata.generation == 2, "a spec change bumps a custom resource's generation")
                #expect(updated.spec.routes?.map(\.name) == ["GET /books", "POST /books"])
                #expect(try updated.compile().routes.count == 2)

                let listed = try await client.list(ServiceProfile.self, namespace: "it")
                #expect(listed.items.map(\.metadata.name) == [name])

                try await client.delete(ServiceProfile.self, name: name)
                await #expect(throws: KubernetesError.notFound) {
                    try await client.get(ServiceProfile.self, name: name)
                }
            }
        }

        @Test func untypedCustomResourceCRUDWithJSONValues() async throws {
            try await IntegrationHarness.run { harness in
                let client = harness.client
                harness.server.registerResource(Self.widgets, hasStatusSubresource: true)
                let widget = JSONValue.object([
                    "apiVersion": .string("example.apus.io/v1"), "kind": .string("Widget"),
                    "metadata": .object(["name": .string("gear"), "labels": .object(["size": .string("small")])]),
                    "spec": .object(["teeth": .number(12)]),
                ])
                let created = try await client.create(Self.widgets, widget)
                #expect(created["metadata"]?["namespace"] == .string("it"))
                #expect(created["spec"]?["teeth"] == .number(12))
                #expect(created["metadata"]?["resourceVersion"]?.stringValue != nil)

                var fetched = try await client.get(Self.widgets, name: "gear")
                #expect(fetched == created)
                fetched["spec"] = .object(["teeth": .number(16)])
                let updated = try await client.update(Self.widgets, fetched)
                #expect(updated["spec"]?["teeth"] == .number(16))
                #expect(updated["metadata"]?["generation"] == .number(2))

                var withStatus = updated
                withStatus["status"] = .object(["ready": .bool(true)])
                withStatus["spec"] = .object(["teeth": .number(99)])
                let statusWritten = try await client.updateStatus(Self.widgets, withStatus)
                #expect(statusWritten["status"]?["ready"] == .bool(true))
                #expect(statusWritten["spec"]?["teeth"] == .number(16), "the /status write ignores spec")

                let patched = try await client.patch(
                    Self.widgets, name: "gear",
                    patch: .json([.init(op: .replace, path: "/metadata/labels/size", value: .string("large"))]))
                #expect(patched["metadata"]?["labels"]?["size"] == .string("large"))

                let large = try await client.list(
                    Self.widgets, namespace: "it", options: ListOptions(labelSelector: "size=large"))
                #expect(large.items.compactMap { $0["metadata"]?["name"]?.stringValue } == ["gear"])
                let small = try await client.list(
                    Self.widgets, namespace: "it", options: ListOptions(labelSelector: "size=small"))
                #expect(small.items.isEmpty)

                try await client.delete(Self.widgets, name: "gear")
                await #expect(throws: KubernetesError.notFound) { try await client.get(Self.widgets, name: "gear") }
            }
        }

        @Test func clusterScopedNamespaceCRUD() async throws {
            try await IntegrationHarness.run { harness in
                let client = harness.client
                let created = try await client.create(
                    Namespace(metadata: ObjectMeta(name: "it-extra", labels: ["team": "mesh"])))
                #expect(created.metadata.namespace == nil, "cluster-scoped objects have no namespace")
                #expect(created.status?.phase == "Active")
                #expect(created.metadata.labels?["kubernetes.io/metadata.name"] == "it-extra")

                var fetched = try await client.get(Namespace.self, name: "it-extra", namespace: "ignored")
                fetched.metadata.labels?["team"] = "platform"
                let updated = try await client.update(fetched)
                #expect(updated.metadata.labels?["team"] == "platform")

                let selected = try await client.list(
                    Namespace.self,
                    options: ListOptions(labelSelector: LabelSelector().equals("team", "platform").string))
                #expect(selected.items.map(\.metadata.name) == ["it-extra"])
                let all = try await client.list(Namespace.self)
                #expect(Set(all.items.compactMap(\.metadata.name)) == ["it", "it-extra"])

                _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "inside")), namespace: "it-extra")
                try await client.delete(Namespace.self, name: "it-extra")
                await #expect(throws: KubernetesError.notFound) {
                    try await client.get(Namespace.self, name: "it-extra")
                }
                await #expect(throws: KubernetesError.notFound, "a namespace's contents go with it") {
                    try await client.get(ConfigMap.self, name: "inside", namespace: "it-extra")
                }
            }
        }

        @Test func patchVariants() async throws {
            try await IntegrationHarness.run { harness in
                let client = harness.client
                _ = try await client.create(
                    ConfigMap(
                        metadata: ObjectMeta(name: "cfg", labels: ["keep": "yes", "drop": "yes"]),
                        data: ["a": "1", "b": "2"]))

                let merged = try await client.patch(
                    ConfigMap.self, name: "cfg",
                    patch: .merge(
                        .object([
                            "metadata": .object(["labels": .object(["drop": .null, "added": .string("1")])]),
                            "data": .object(["b": .null, "c": .string("3")]),
                        ])))
                #expect(merged.metadata.labels == ["keep": "yes", "added": "1"], "null deletes, maps merge")
                #expect(merged.data == ["a": "1", "c": "3"])

                let jsonPatched = try await client.patch(
                    ConfigMap.self, name: "cfg",
                    patch: .json([
                        .init(op: .test, path: "/data/a", value: .string("1")),
                        .init(op: .replace, path: "/data/a", value: .string("10")),
                        .init(
                            op: .add, path: "/metadata/labels/\(JSONPatchOperation.escape("apus.io/x"))",
                            value: .string("y")),
                        .init(op: .remove, path: "/data/c"),
                    ]))
                #expect(jsonPatched.data == ["a": "10"])
                #expect(jsonPatched.metadata.labels?["apus.io/x"] == "y")

                do {
                    _ = try await client.patch(
                        ConfigMap.self, name: "cfg",
                        patch: .json([
                            .init(op: .test, path: "/data/a", value: .string("1")),
                            .init(op: .replace, path: "/data/a", value: .string("never")),
                        ]))
                    Issue.record("a failing test operation must reject the whole patch")
                } catch let error as KubernetesError {
                    #expect(error == .invalid)
                    #expect(error.httpStatus == 422)
                    #expect(error.message.contains("/data/a"))
                }
                let unchanged = try await client.get(ConfigMap.self, name: "cfg")
                #expect(unchanged.metadata.resourceVersion == jsonPatched.metadata.resourceVersion)
                #expect(unchanged.data == ["a": "10"])

                _ = try await client.create(
                    Pod(metadata: ObjectMeta(name: "web-0"), spec: PodSpec(containers: [Container(name: "app")])))
                let strategic = try await client.patch(
                    Pod.self, name: "web-0",
                    patch: .strategicMerge(.object(["metadata": .object(["labels": .object(["tier": .string("a")])])])))
                #expect(strategic.metadata.labels == ["tier": "a"])
                #expect(strategic.spec?.containers.map(\.name) == ["app"])

                harness.server.clearRequestLog()
                let applied = try await client.patch(
                    ConfigMap.self, name: "applied",
                    patch: try .apply(
                        ConfigMap(metadata: ObjectMeta(name: "applied", namespace: "it"), data: ["x": "1"]),
                        fieldManager: "apus-it"))
                #expect(applied.data == ["x": "1"], "apply creates a missing object")
                let firstVersion = try #require(applied.metadata.resourceVersion)
                let reapplied = try await client.patch(
                    ConfigMap.self, name: "applied",
                    patch: .apply(
                        .object([
                            "apiVersion": .string("v1"), "kind": .string("ConfigMap"),
                            "metadata": .object(["name": .string("applied"), "labels": .object(["m": .string("1")])]),
                            "data": .object(["y": .string("2")]),
                        ]), fieldManager: "apus-it", force: true))
                #expect(reapplied.metadata.uid == applied.metadata.uid, "the second apply updates in place")
                #expect(reapplied.metadata.resourceVersion != firstVersion)
                #expect(reapplied.data == ["x": "1", "y": "2"])
                #expect(reapplied.metadata.labels == ["m": "1"])
                let applies = harness.server.requestLog.filter { $0.verb == "patch" }
                #expect(applies.count == 2)
                #expect(applies.allSatisfy { $0.query["fieldManager"] == "apus-it" })
                #expect(applies.last?.query["force"] == "true")
            }
        }

        @Test func statusSubresourceIsSeparateFromTheMainResource() async throws {
            try await IntegrationHarness.run { harness in
                let client = harness.client
                _ = try await client.create(
                    Pod(
                        metadata: ObjectMeta(name: "web-0"), spec: PodSpec(containers: [Container(name: "app")]),
                        status: PodStatus(phase: "Running")))
                let created = try await client.get(Pod.self, name: "web-0")
                #expect(created.status?.phase == "Pending", "create drops status where a status subresource exists")

                var statusWrite = created
                statusWrite.status = PodStatus(phase: "Running", podIP: "10.0.0.7")
                statusWrite.spec?.nodeName = "node-a"
                statusWrite.metadata.labels = ["ignored": "true"]
                let afterStatus = try await client.updateStatus(statusWrite)
                #expect(afterStatus.status?.phase == "Running")
                #expect(afterStatus.status?.podIP == "10.0.0.7")
                #expect(afterStatus.spec?.nodeName == nil, "updateStatus changes only status")
                #expect(afterStatus.metadata.labels == nil, "updateStatus changes only status")
                #expect(try await client.getStatus(Pod.self, name: "web-0").status?.phase == "Running")

                var mainWrite = afterStatus
                mainWrite.status = PodStatus(phase: "Failed")
                mainWrite.metadata.labels = ["app": "web"]
                let afterUpdate = try await client.update(mainWrite)
                #expect(afterUpdate.metadata.labels == ["app": "web"])
                #expect(afterUpdate.status?.phase == "Running", "update ignores status")

                let patchedStatus = try await client.patchStatus(
                    Pod.self, name: "web-0",
                    patch: .merge(.object(["status": .object(["phase": .string("Succeeded")])])))
                #expect(patchedStatus.status?.phase == "Succeeded")
                #expect(patchedStatus.metadata.labels == ["app": "web"])
            }
        }

        @Test func labelAndFieldSelectorsOnList() async throws {
            try await IntegrationHarness.run { harness in
                let client = harness.client
                let objects: [(String, [String: String])] = [
                    ("a", ["app": "web", "tier": "a"]), ("b", ["app": "web", "tier": "b"]),
                    ("c", ["app": "db", "tier": "a", "legacy": "true"]), ("d", [:]),
                ]
                for (name, labels) in objects {
                    _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: name, labels: labels)))
                }
                func names(_ options: ListOptions) async throws -> [String] {
                    try await client.list(ConfigMap.self, namespace: "it", options: options).items
                        .compactMap(\.metadata.name)
                }
                let selectors: [LabelSelector] = [
                    LabelSelector().equals("app", "web"),
                    LabelSelector().notEquals("app", "web"),
                    LabelSelector().in("tier", ["a", "b"]).doesNotExist("legacy"),
                    LabelSelector().notIn("tier", ["b"]),
                    LabelSelector().exists("app").equals("tier", "a"),
                ]
                for selector in selectors {
                    let expected = objects.filter { selector.matches($0.1) }.map(\.0)
                    let served = try await names(ListOptions(labelSelector: selector.string))
                    #expect(served == expected, "selector \(selector.string)")
                }
                #expect(try await names(ListOptions(labelSelector: "app=web")) == ["a", "b"])
                #expect(try await names(ListOptions(fieldSelector: "metadata.name=c")) == ["c"])
                #expect(try await names(ListOptions(fieldSelector: "metadata.name!=c")) == ["a", "b", "d"])
                #expect(
                    try await names(ListOptions(labelSelector: "app=web", fieldSelector: "metadata.name!=a")) == ["b"])

                _ = try await client.create(
                    Pod(metadata: ObjectMeta(name: "p1"), spec: PodSpec(containers: [Container(name: "app")])))
                var placed = Pod(metadata: ObjectMeta(name: "p2"), spec: PodSpec(containers: [Container(name: "app")]))
                placed.spec?.nodeName = "node-a"
                _ = try await client.create(placed)
                let onNode = try await client.list(
                    Pod.self, namespace: "it", options: ListOptions(fieldSelector: "spec.nodeName=node-a"))
                #expect(onNode.items.map(\.metadata.name) == ["p2"])
            }
        }

        @Test func listAllFollowsContinueTokensAndPagesShowOneSnapshot() async throws {
            try await IntegrationHarness.run { harness in
                let client = harness.client
                let names = (0..<23).map { String(format: "cm-%02d", $0) }
                for name in names { _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: name))) }

                harness.server.clearRequestLog()
                let all = try await client.listAll(ConfigMap.self, namespace: "it", options: ListOptions(limit: 5))
                #expect(all.items.compactMap(\.metadata.name) == names)
                let lists = harness.server.requestLog.filter { $0.verb == "list" }
                #expect(lists.count == 5, "23 objects in pages of 5")
                #expect(lists.allSatisfy { $0.query["limit"] == "5" })
                #expect(lists.first?.query["continue"] == nil)
                #expect(lists.dropFirst().allSatisfy { $0.query["continue"]?.isEmpty == false })

                // A paginated list is one consistent snapshot: changes after the first page do not show up in
                // later pages (the watch from the list's resourceVersion delivers them instead).
                let first = try await client.list(ConfigMap.self, namespace: "it", options: ListOptions(limit: 10))
                let snapshotVersion = try #require(first.metadata.resourceVersion)
                try await client.delete(ConfigMap.self, name: "cm-15")
                _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "cm-99")))
                _ = try await client.patch(
                    ConfigMap.self, name: "cm-20", patch: .merge(.object(["data": .object(["late": .string("1")])])))
                var rest = ListOptions(limit: 100)
                rest.continue = first.metadata.continue
                let second = try await client.list(ConfigMap.self, namespace: "it", options: rest)
                #expect(second.metadata.resourceVersion == snapshotVersion)
                #expect(second.items.compactMap(\.metadata.name) == Array(names[10...]))
                #expect(second.items.first { $0.metadata.name == "cm-20" }?.data == nil)
            }
        }

        @Test func deleteWithPreconditions() async throws {
            try await IntegrationHarness.run { harness in
                let client = harness.client
                let created = try await client.create(ConfigMap(metadata: ObjectMeta(name: "guarded")))
                let current = try await client.patch(
                    ConfigMap.self, name: "guarded", patch: .merge(.object(["data": .object(["v": .string("2")])])))
                let staleVersion = try #require(created.metadata.resourceVersion)

                await #expect(throws: KubernetesError.conflict, "a stale resourceVersion precondition") {
                    try await client.delete(
                        ConfigMap.self, name: "guarded",
                        options: DeleteOptions(preconditions: .init(resourceVersion: staleVersion)))
                }
                await #expect(throws: KubernetesError.conflict, "another incarnation's uid") {
                    try await client.delete(
                        ConfigMap.self, name: "guarded",
                        options: DeleteOptions(preconditions: .init(uid: "00000000-0000-0000-0000-000000000000")))
                }
                #expect(try await client.get(ConfigMap.self, name: "guarded").data == ["v": "2"])

                try await client.delete(
                    ConfigMap.self, name: "guarded",
                    options: DeleteOptions(
                        propagationPolicy: .background,
                        preconditions: .init(
                            uid: current.metadata.uid, resourceVersion: current.metadata.resourceVersion)))
                await #expect(throws: KubernetesError.notFound) {
                    try await client.get(ConfigMap.self, name: "guarded")
                }
                await #expect(throws: KubernetesError.notFound, "deleting twice") {
                    try await client.delete(ConfigMap.self, name: "guarded")
                }
            }
        }

        @Test func typedErrorsNotFoundAlreadyExistsAndConflict() async throws {
            try await IntegrationHarness.run { harness in
                let client = harness.client
                do {
                    _ = try await client.get(ConfigMap.self, name: "missing")
                    Issue.record("expected NotFound")
                } catch let error as KubernetesError {
                    #expect(error == .notFound)
                    #expect(error.httpStatus == 404)
                    #expect(error.status?.reason == "NotFound")
                }

                let original = try await client.create(ConfigMap(metadata: ObjectMeta(name: "cfg"), data: ["v": "1"]))
                do {
                    _ = try await client.create(ConfigMap(metadata: ObjectMeta(name: "cfg")))
                    Issue.record("expected AlreadyExists")
                } catch let error as KubernetesError {
                    #expect(error == .alreadyExists)
                    #expect(error.httpStatus == 409)
                }

                var first = original
                first.data = ["v": "2"]
                _ = try await client.update(first)
                var stale = original
                stale.data = ["v": "3"]
                do {
                    _ = try await client.update(stale)
                    Issue.record("an update carrying a stale resourceVersion must conflict")
                } catch let error as KubernetesError {
                    #expect(error == .conflict)
                    #expect(error.code == .conflict)
                    #expect(error.httpStatus == 409)
                    #expect(error.status?.reason == "Conflict")
                }
                #expect(try await client.get(ConfigMap.self, name: "cfg").data == ["v": "2"])
            }
        }

        @Test func badTokenIsUnauthorizedAndClientCertificatesAuthenticate() async throws {
            try await IntegrationHarness.run { harness in
                let intruder = try harness.makeClient(kubeconfig: harness.server.kubeconfig(token: "not-a-token"))
                do {
                    _ = try await intruder.list(ConfigMap.self)
                    Issue.record("a bad token must be refused")
                } catch let error as KubernetesError {
                    #expect(error == .unauthorized)
                    #expect(error.httpStatus == 401)
                }

                let certified = try harness.makeClient(
                    kubeconfig: try harness.server.kubeconfig(clientCertificateUser: "cert-user", namespace: "it"))
                #expect(certified.configuration.authentication == .none)
                #expect(certified.configuration.tls.clientCertificatePEM != nil)
                harness.server.clearRequestLog()
                let created = try await certified.create(ConfigMap(metadata: ObjectMeta(name: "by-cert")))
                #expect(created.metadata.namespace == "it")
                #expect(harness.server.requestLog.map(\.user) == ["cert-user"])
            }
        }

        @Test func tooManyRequestsCarriesRetryAfter() async throws {
            try await IntegrationHarness.run { harness in
                harness.server.failNextRequests(count: 1, status: 429, retryAfter: 7)
                do {
                    _ = try await harness.client.list(ConfigMap.self)
                    Issue.record("expected 429")
                } catch let error as KubernetesError {
                    #expect(error == .tooManyRequests)
                    #expect(error.httpStatus == 429)
                    #expect(error.retryAfter == .seconds(7))
                }
                harness.server.failNextRequests(count: 1, status: 500)
                await #expect(throws: KubernetesError.serverError) { try await harness.client.list(ConfigMap.self) }
                #expect(try await harness.client.list(ConfigMap.self).items.isEmpty, "only the next requests fail")
            }
        }
    }
}
