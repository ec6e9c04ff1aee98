import ApusCore
import Foundation
import KubernetesTestServer
import Testing

@Suite("KubernetesTestServer: CRUD, patches, selectors, auth")
struct TestServerCRUDTests {
    @Test func createGetAndListAssignServerMetadata() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("apps")
            let created = try await api.send(
                .POST, "/api/v1/namespaces/apps/configmaps",
                body: try testServerJSON(#"{"metadata":{"name":"settings"},"data":{"a":"1"}}"#))
            #expect(created.status == 201)
            let object = created.json
            #expect(object["kind"] == .string("ConfigMap"))
            #expect(object["apiVersion"] == .string("v1"))
            #expect(object["metadata"]?["namespace"] == .string("apps"))
            #expect(object["metadata"]?["uid"]?.stringValue?.count == 36)
            #expect(object["metadata"]?["creationTimestamp"]?.stringValue.flatMap(Timestamp.init(rfc3339:)) != nil)
            #expect(object["metadata"]?["generation"] == nil)  // no spec: no generation, like a real ConfigMap
            let createdVersion = try #require(object.testServerResourceVersion.flatMap { Int($0) })

            let fetched = try await api.send(.GET, "/api/v1/namespaces/apps/configmaps/settings")
            #expect(fetched.status == 200)
            #expect(fetched.json == object)

            let list = try await api.send(.GET, "/api/v1/namespaces/apps/configmaps")
            #expect(list.json["kind"] == .string("ConfigMapList"))
            #expect(list.resourceVersion == api.server.currentResourceVersion)
            #expect(Int(list.resourceVersion ?? "") ?? 0 >= createdVersion)
            #expect(list.json.testServerItems.map(\.testServerName) == ["settings"])
            // Typed lists of built-in kinds carry no per-item apiVersion/kind.
            #expect(list.json.testServerItems.first?["kind"] == nil)

            let missing = try await api.send(.GET, "/api/v1/namespaces/apps/configmaps/nope")
            #expect(missing.status == 404)
            #expect(missing.reason == "NotFound")
            #expect(missing.json["kind"] == .string("Status"))
            #expect(missing.json["message"] == .string("configmaps \"nope\" not found"))
        }
    }

    @Test func createRejectsWhatTheRealServerRejects() async throws {
        try await TestServerAPI.withServer { api in
            let body = try testServerJSON(#"{"metadata":{"name":"web"}}"#)
            let noNamespace = try await api.send(.POST, "/api/v1/namespaces/ghost/services", body: body)
            #expect(noNamespace.status == 404)
            #expect(noNamespace.json["message"] == .string("namespaces \"ghost\" not found"))

            try await api.createNamespace("default")
            #expect(try await api.send(.POST, "/api/v1/namespaces/default/services", body: body).status == 201)
            let duplicate = try await api.send(.POST, "/api/v1/namespaces/default/services", body: body)
            #expect(duplicate.status == 409)
            #expect(duplicate.reason == "AlreadyExists")

            let wrongNamespace = try await api.send(
                .POST, "/api/v1/namespaces/default/services",
                body: try testServerJSON(#"{"metadata":{"name":"x","namespace":"other"}}"#))
            #expect(wrongNamespace.status == 400)
            #expect(wrongNamespace.reason == "BadRequest")

            let badName = try await api.send(
                .POST, "/api/v1/namespaces/default/services",
                body: try testServerJSON(#"{"metadata":{"name":"Web_1"}}"#))
            #expect(badName.status == 422)
            #expect(badName.reason == "Invalid")

            let malformed = try await api.sendRaw(
                .POST, "/api/v1/namespaces/default/services", bytes: "{not json", contentType: "application/json")
            #expect(malformed.status == 400)

            let generated = try await api.send(
                .POST, "/api/v1/namespaces/default/pods",
                body: try testServerJSON(#"{"metadata":{"generateName":"web-"},"spec":{"containers":[]}}"#))
            #expect(generated.status == 201)
            let name = try #require(generated.json.testServerName)
            #expect(name.hasPrefix("web-") && name.count == 9)
            #expect(generated.json["metadata"]?["generation"] == .number(1))

            let unknown = try await api.send(.GET, "/apis/example.com/v1/widgets")
            #expect(unknown.status == 404)
            let wrongMethod = try await api.send(.PUT, "/api/v1/namespaces/default/pods", body: body)
            #expect(wrongMethod.status == 405)
            #expect(wrongMethod.reason == "MethodNotAllowed")
        }
    }

    @Test func updateWithStaleResourceVersionConflicts() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            let created = try await api.send(
                .POST, "/api/v1/namespaces/default/configmaps",
                body: try testServerJSON(#"{"metadata":{"name":"c"},"data":{"k":"1"}}"#))
            var edited = created.json
            edited["data"] = .object(["k": .string("2")])
            let updated = try await api.send(.PUT, "/api/v1/namespaces/default/configmaps/c", body: edited)
            #expect(updated.status == 200)
            #expect(updated.json["data"]?["k"] == .string("2"))
            #expect(updated.json.testServerResourceVersion != created.json.testServerResourceVersion)

            // `edited` still carries the first resourceVersion.
            let stale = try await api.send(.PUT, "/api/v1/namespaces/default/configmaps/c", body: edited)
            #expect(stale.status == 409)
            #expect(stale.reason == "Conflict")
            #expect(stale.json["message"]?.stringValue?.contains("the object has been modified") == true)

            // Writing identical content is a no-op: no new resourceVersion, like etcd's guaranteed update.
            let same = try await api.send(.PUT, "/api/v1/namespaces/default/configmaps/c", body: updated.json)
            #expect(same.json.testServerResourceVersion == updated.json.testServerResourceVersion)

            let renamed = try await api.send(.PUT, "/api/v1/namespaces/default/configmaps/other", body: updated.json)
            #expect(renamed.status == 400)
        }
    }

    @Test func generationTracksSpecChangesOnly() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            let path = "/apis/linkerd.io/v1alpha2/namespaces/default/serviceprofiles"
            let created = try await api.send(
                .POST, path,
                body: try testServerJSON(#"{"metadata":{"name":"web.default.svc.cluster.local"},"spec":{"routes":[]}}"#)
            )
            #expect(created.status == 201)
            #expect(created.json["metadata"]?["generation"] == .number(1))
            var object = created.json
            object["metadata"]?["labels"] = .object(["team": .string("a")])
            let relabelled = try await api.send(.PUT, "\(path)/web.default.svc.cluster.local", body: object)
            #expect(relabelled.json["metadata"]?["generation"] == .number(1))
            var respec = relabelled.json
            respec["spec"] = try testServerJSON(#"{"routes":[{"name":"GET /"}]}"#)
            let changed = try await api.send(.PUT, "\(path)/web.default.svc.cluster.local", body: respec)
            #expect(changed.json["metadata"]?["generation"] == .number(2))

            // v1alpha1 serves the same storage, stamped with its own apiVersion.
            let older = try await api.send(
                .GET, "/apis/linkerd.io/v1alpha1/namespaces/default/serviceprofiles/web.default.svc.cluster.local")
            #expect(older.status == 200)
            #expect(older.json["apiVersion"] == .string("linkerd.io/v1alpha1"))
            #expect(older.json["spec"] == respec["spec"])
        }
    }

    @Test func statusSubresourceIsIsolatedFromTheMainResource() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            let path = "/api/v1/namespaces/default/pods"
            let created = try await api.send(
                .POST, path,
                body: try testServerJSON(
                    #"""
                    {
                      "metadata":{"name":"p"},
                      "spec":{"nodeName":"n1"},
                      "status":{"phase":"Running","podIP":"10.0.0.1"}
                    }
                    """#
                ))
            // Status on create is dropped (the pod strategy resets it); only the default phase remains.
            #expect(created.json["status"] == .object(["phase": .string("Pending")]))

            var main = created.json
            main["status"] = try testServerJSON(#"{"phase":"Running"}"#)
            main["metadata"]?["labels"] = .object(["a": .string("b")])
            let mainUpdate = try await api.send(.PUT, "\(path)/p", body: main)
            #expect(mainUpdate.json["status"]?["phase"] == .string("Pending"))
            #expect(mainUpdate.json["metadata"]?["labels"]?["a"] == .string("b"))

            var statusBody = mainUpdate.json
            statusBody["status"] = try testServerJSON(#"{"phase":"Running","podIP":"10.0.0.7"}"#)
            statusBody["spec"] = try testServerJSON(#"{"nodeName":"changed"}"#)
            statusBody["metadata"]?["labels"] = .object([:])
            let statusUpdate = try await api.send(.PUT, "\(path)/p/status", body: statusBody)
            #expect(statusUpdate.status == 200)
            #expect(statusUpdate.json["status"]?["podIP"] == .string("10.0.0.7"))
            #expect(statusUpdate.json["spec"]?["nodeName"] == .string("n1"))
            #expect(statusUpdate.json["metadata"]?["labels"]?["a"] == .string("b"))
            #expect(statusUpdate.json["metadata"]?["generation"] == .number(1))

            let merge = try await api.send(
                .PATCH, "\(path)/p/status", body: try testServerJSON(#"{"status":{"phase":"Succeeded"}}"#),
                contentType: "application/merge-patch+json")
            #expect(merge.json["status"]?["phase"] == .string("Succeeded"))
            #expect(merge.json["status"]?["podIP"] == .string("10.0.0.7"))

            // ConfigMaps have no status subresource.
            let noStatus = try await api.send(.GET, "/api/v1/namespaces/default/configmaps/x/status")
            #expect(noStatus.status == 404)
        }
    }

    @Test func patchesFollowTheirRFCs() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            let path = "/api/v1/namespaces/default/configmaps"
            _ = try await api.send(
                .POST, path, body: try testServerJSON(#"{"metadata":{"name":"c"},"data":{"a":"1","b":"2"}}"#))

            let merged = try await api.send(
                .PATCH, "\(path)/c", body: try testServerJSON(#"{"data":{"a":null,"c":"3"}}"#),
                contentType: "application/merge-patch+json")
            #expect(merged.status == 200)
            #expect(merged.json["data"] == .object(["b": .string("2"), "c": .string("3")]))

            let failedTest = try await api.send(
                .PATCH, "\(path)/c",
                body: try testServerJSON(
                    #"[{"op":"test","path":"/data/b","value":"wrong"},{"op":"remove","path":"/data/b"}]"#),
                contentType: "application/json-patch+json")
            #expect(failedTest.status == 422)
            #expect(failedTest.reason == "Invalid")

            let patched = try await api.send(
                .PATCH, "\(path)/c",
                body: try testServerJSON(
                    #"""
                    [{"op":"test","path":"/data/b","value":"2"},
                     {"op":"add","path":"/metadata/labels","value":{"x/y":"z"}},
                     {"op":"copy","from":"/data/b","path":"/data/d"},
                     {"op":"move","from":"/data/c","path":"/data/e"},
                     {"op":"replace","path":"/data/b","value":"20"},
                     {"op":"remove","path":"/data/d"}]
                    """#),
                contentType: "application/json-patch+json")
            #expect(patched.status == 200)
            #expect(patched.json["data"] == .object(["b": .string("20"), "e": .string("3")]))
            #expect(patched.json["metadata"]?["labels"]?["x/y"] == .string("z"))

            let badPointer = try await api.send(
                .PATCH, "\(path)/c", body: try testServerJSON(#"[{"op":"remove","path":"/data/missing"}]"#),
                contentType: "application/json-patch+json")
            #expect(badPointer.status == 422)

            let unsupported = try await api.send(
                .PATCH, "\(path)/c", body: try testServerJSON("{}"), contentType: "text/plain")
            #expect(unsupported.status == 415)

            let staleVersion = try await api.send(
                .PATCH, "\(path)/c", body: try testServerJSON(#"{"metadata":{"resourceVersion":"1"}}"#),
                contentType: "application/merge-patch+json")
            #expect(staleVersion.status == 409)

            let missing = try await api.send(
                .PATCH, "\(path)/nope", body: try testServerJSON("{}"), contentType: "application/merge-patch+json")
            #expect(missing.status == 404)
        }
    }

    @Test func serverSideApplyCreatesThenMerges() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            let path = "/apis/coordination.k8s.io/v1/namespaces/default/leases/lock"
            let configuration = try testServerJSON(
                #"""
                {
                  "apiVersion":"coordination.k8s.io/v1",
                  "kind":"Lease",
                  "metadata":{"name":"lock"},
                  "spec":{"holderIdentity":"a"}
                }
                """#
            )
            let missingManager = try await api.send(
                .PATCH, path, body: configuration, contentType: "application/apply-patch+yaml")
            #expect(missingManager.status == 400)

            let created = try await api.send(
                .PATCH, path + "?fieldManager=test", body: configuration, contentType: "application/apply-patch+yaml")
            #expect(created.status == 201)
            #expect(created.json["spec"]?["holderIdentity"] == .string("a"))

            let second = try testServerJSON(
                #"""
                {
                  "apiVersion":"coordination.k8s.io/v1",
                  "kind":"Lease",
                  "metadata":{"name":"lock","labels":{"l":"v"}},
                  "spec":{"leaseDurationSeconds":15}
                }
                """#
            )
            let merged = try await api.send(
                .PATCH, path + "?fieldManager=test&force=true", body: second,
                contentType: "application/apply-patch+yaml")
            #expect(merged.status == 200)
            #expect(merged.json["spec"]?["holderIdentity"] == .string("a"))
            #expect(merged.json["spec"]?["leaseDurationSeconds"] == .number(15))
            #expect(merged.json["metadata"]?["labels"]?["l"] == .string("v"))
            #expect(merged.json["metadata"]?["uid"] == created.json["metadata"]?["uid"])

            let yaml = try await api.sendRaw(
                .PATCH, path + "?fieldManager=test", bytes: "spec:\n  holderIdentity: b\n",
                contentType: "application/apply-patch+yaml")
            #expect(yaml.status == 400)
        }
    }

    @Test func listSelectorsAndCrossNamespaceLists() async throws {
        try await TestServerAPI.withServer { api in
            for namespace in ["a", "b"] { try await api.createNamespace(namespace) }
            let pods: [(String, String, String, String)] = [
                ("a", "web-1", "web", "Running"), ("a", "web-2", "web", "Pending"), ("b", "db-1", "db", "Running"),
                ("b", "cache-1", "cache", "Running"),
            ]
            for (namespace, name, app, phase) in pods {
                try api.server.seed(
                    Pod.resourceType,
                    try testServerJSON(
                        #"""
                        {
                          "metadata":{
                            "name":"\#(name)","namespace":"\#(namespace)",
                            "labels":{"app":"\#(app)","tier":"\#(app == "web" ? "front" : "back")"}
                          },
                          "spec":{"nodeName":"node-\#(namespace)"},
                          "status":{"phase":"\#(phase)"}
                        }
                        """#
                    ))
            }
            func names(_ query: String, namespace: String? = nil) async throws -> [String] {
                let base = namespace.map { "/api/v1/namespaces/\($0)/pods" } ?? "/api/v1/pods"
                let encoded = query.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed)
                let response = try await api.send(.GET, base + "?" + (encoded ?? ""))
                guard response.status == 200 else { throw TestServerFailure("\(query): \(response.json)") }
                return response.json.testServerItems.compactMap(\.testServerName)
            }
            #expect(try await names("") == ["web-1", "web-2", "cache-1", "db-1"])
            #expect(try await names("", namespace: "b") == ["cache-1", "db-1"])
            #expect(try await names("labelSelector=app=web") == ["web-1", "web-2"])
            #expect(try await names("labelSelector=app==web") == ["web-1", "web-2"])
            #expect(try await names("labelSelector=app!=web") == ["cache-1", "db-1"])
            #expect(try await names("labelSelector=app in (db,cache)") == ["cache-1", "db-1"])
            #expect(try await names("labelSelector=app notin (db,cache),tier") == ["web-1", "web-2"])
            #expect(try await names("labelSelector=!tier").isEmpty)
            #expect(try await names("fieldSelector=status.phase=Running") == ["web-1", "cache-1", "db-1"])
            #expect(try await names("fieldSelector=status.phase!=Running,metadata.namespace=a") == ["web-2"])
            #expect(
                try await names("fieldSelector=spec.nodeName=node-b&labelSelector=tier=back") == ["cache-1", "db-1"])
            #expect(try await names("fieldSelector=metadata.name=db-1") == ["db-1"])
            let broken = try await api.send(.GET, "/api/v1/pods?labelSelector=" + "app%20in%20(web")
            #expect(broken.status == 400)
        }
    }

    @Test func paginationWalksEveryItemAndExpiresAfterCompaction() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("default")
            for index in 0..<7 {
                try api.server.seed(
                    ConfigMap.resourceType,
                    try testServerJSON(#"{"metadata":{"name":"c\#(index)","namespace":"default"}}"#))
            }
            var names: [String] = []
            var token: String?
            var pages = 0
            var firstListVersion: String?
            repeat {
                let query =
                    "limit=3"
                    + (token.map {
                        "&continue=" + ($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")
                    } ?? "")
                let page = try await api.send(.GET, "/api/v1/namespaces/default/configmaps?" + query)
                #expect(page.status == 200)
                #expect(page.json.testServerItems.count <= 3)
                names += page.json.testServerItems.compactMap(\.testServerName)
                firstListVersion = firstListVersion ?? page.resourceVersion
                #expect(page.resourceVersion == firstListVersion)
                token = page.json["metadata"]?["continue"]?.stringValue
                if pages == 0 { #expect(page.json["metadata"]?["remainingItemCount"] == .number(4)) }
                pages += 1
            } while token != nil && pages < 10
            #expect(pages == 3)
            #expect(names == (0..<7).map { "c\($0)" })

            let first = try await api.send(.GET, "/api/v1/namespaces/default/configmaps?limit=2")
            let continueToken = try #require(first.json["metadata"]?["continue"]?.stringValue)
            // The token's snapshot revision expires once the history after it is compacted away.
            try api.server.seed(
                ConfigMap.resourceType, try testServerJSON(#"{"metadata":{"name":"late","namespace":"default"}}"#))
            api.server.compact()
            let expired = try await api.send(
                .GET,
                "/api/v1/namespaces/default/configmaps?limit=2&continue="
                    + (continueToken.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""))
            #expect(expired.status == 410)
            #expect(expired.reason == "Expired")
        }
    }

    @Test func deletionHonoursFinalizersPreconditionsAndNamespaces() async throws {
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("team")
            let path = "/api/v1/namespaces/team/secrets"
            let created = try await api.send(
                .POST, path, body: try testServerJSON(#"{"metadata":{"name":"s","finalizers":["apus.io/cleanup"]}}"#))
            let uid = try #require(created.json["metadata"]?["uid"]?.stringValue)

            let wrongUID = try await api.send(
                .DELETE, "\(path)/s", body: try testServerJSON(#"{"preconditions":{"uid":"other"}}"#))
            #expect(wrongUID.status == 409)

            let pending = try await api.send(
                .DELETE, "\(path)/s", body: try testServerJSON(#"{"preconditions":{"uid":"\#(uid)"}}"#))
            #expect(pending.status == 202)
            #expect(pending.json["metadata"]?["deletionTimestamp"] != nil)
            #expect(api.server.object(Secret.resourceType, namespace: "team", name: "s") != nil)

            var released = pending.json
            released["metadata"]?["finalizers"] = .array([])
            let final = try await api.send(.PUT, "\(path)/s", body: released)
            #expect(final.status == 200)
            #expect(api.server.object(Secret.resourceType, namespace: "team", name: "s") == nil)

            _ = try await api.send(.POST, path, body: try testServerJSON(#"{"metadata":{"name":"t"}}"#))
            let deleted = try await api.send(.DELETE, "\(path)/t")
            #expect(deleted.status == 200)
            #expect(deleted.json.testServerName == "t")
            #expect(try await api.send(.DELETE, "\(path)/t").status == 404)

            _ = try await api.send(.POST, path, body: try testServerJSON(#"{"metadata":{"name":"u"}}"#))
            #expect(try await api.send(.DELETE, "/api/v1/namespaces/team").status == 200)
            #expect(api.server.objects(Secret.resourceType).isEmpty)
            #expect(api.server.object(Namespace.resourceType, name: "team") == nil)
        }
    }

    @Test func requestsWithoutValidCredentialsAre401() async throws {
        try await TestServerAPI.withServer { api in
            var anonymous = api
            anonymous.token = nil
            let noToken = try await anonymous.send(.GET, "/api/v1/namespaces")
            #expect(noToken.status == 401)
            #expect(noToken.reason == "Unauthorized")
            #expect(noToken.json["kind"] == .string("Status"))
            var wrong = api
            wrong.token = "not-a-token"
            #expect(try await wrong.send(.GET, "/api/v1/namespaces").status == 401)
            #expect(try await api.send(.GET, "/api/v1/namespaces").status == 200)
            #expect(api.server.requestLog.last?.user == "apus-test-admin")
            #expect(try await anonymous.send(.GET, "/healthz").status == 200)
        }
    }

    @Test func clientCertificateAuthenticatesAsItsCommonName() async throws {
        try await TestServerAPI.withServer(clientCertificateUser: "system:node:worker-1") { api in
            #expect(api.token == nil)
            let response = try await api.send(.GET, "/api/v1/namespaces")
            #expect(response.status == 200)
            #expect(api.server.requestLog.last?.user == "system:node:worker-1")
        }
    }

    @Test func plainHTTPModeServesTheSameAPI() async throws {
        var options = KubernetesTestServer.Options()
        options.tls = false
        options.autoCreateNamespaces = true
        try await TestServerAPI.withServer(options) { api in
            #expect(api.server.baseURL.hasPrefix("http://127.0.0.1:"))
            let created = try await api.send(
                .POST, "/api/v1/namespaces/auto/configmaps", body: try testServerJSON(#"{"metadata":{"name":"c"}}"#))
            #expect(created.status == 201)
            #expect(api.server.object(Namespace.resourceType, name: "auto") != nil)
        }
    }

    @Test func injectedFailuresAndRequestCounters() async throws {
        try await TestServerAPI.withServer { api in
            api.server.failNextRequests(count: 2, status: 429, retryAfter: 3)
            let first = try await api.send(.GET, "/api/v1/namespaces")
            #expect(first.status == 429)
            #expect(first.reason == "TooManyRequests")
            #expect(first.headers.first(name: "retry-after") == "3")
            #expect(try await api.send(.GET, "/api/v1/namespaces").status == 429)
            #expect(try await api.send(.GET, "/api/v1/namespaces").status == 200)
            api.server.failNextRequests(count: 1)
            let serverError = try await api.send(.GET, "/api/v1/namespaces")
            #expect(serverError.status == 500)
            #expect(serverError.reason == "InternalError")
            #expect(api.server.requestCount(verb: "list", resource: "namespaces") == 4)

            api.server.setResponseDelay(.milliseconds(200))
            let start = ContinuousClock.now
            #expect(try await api.send(.GET, "/api/v1/namespaces").status == 200)
            #expect(ContinuousClock.now - start >= .milliseconds(200))
            api.server.setResponseDelay(.zero)
        }
    }

    @Test func createHandlersAnswerVirtualResources() async throws {
        try await TestServerAPI.withServer { api in
            let path = "/apis/authentication.k8s.io/v1/tokenreviews"
            let review = try await api.send(
                .POST, path,
                body: try testServerJSON(
                    #"""
                    {
                      "apiVersion":"authentication.k8s.io/v1",
                      "kind":"TokenReview",
                      "spec":{"token":"apus-test-token"}
                    }
                    """#
                ))
            #expect(review.status == 201)
            #expect(review.json["status"]?["authenticated"] == .bool(true))
            #expect(review.json["status"]?["user"]?["username"] == .string("apus-test-admin"))

            api.server.setCreateHandler(for: TokenReview.resourceType) { request in
                var answer = request.object
                answer["status"] = .object([
                    "authenticated": .bool(true),
                    "user": .object(["username": .string("reviewed-by-\(request.user)")]),
                ])
                return answer
            }
            let custom = try await api.send(
                .POST, path, body: try testServerJSON(#"{"spec":{"token":"anything"}}"#))
            #expect(custom.json["status"]?["user"]?["username"] == .string("reviewed-by-apus-test-admin"))
            #expect(api.server.objects(TokenReview.resourceType).isEmpty)

            api.server.setCreateHandler(for: TokenReview.resourceType) { _ in
                throw Status(message: "webhook down", reason: "ServiceUnavailable", code: 503)
            }
            let failing = try await api.send(.POST, path, body: try testServerJSON(#"{"spec":{}}"#))
            #expect(failing.status == 503)
            #expect(failing.json["message"] == .string("webhook down"))
        }
    }

    @Test func registeredCustomResourcesAreServed() async throws {
        try await TestServerAPI.withServer { api in
            api.server.registerResource(
                ResourceType(
                    group: "example.apus.io", version: "v1", plural: "widgets", kind: "Widget", namespaced: false),
                hasStatusSubresource: true)
            let created = try await api.send(
                .POST, "/apis/example.apus.io/v1/widgets",
                body: try testServerJSON(#"{"metadata":{"name":"w"},"spec":{"size":1},"status":{"ready":true}}"#))
            #expect(created.status == 201)
            #expect(created.json["status"] == nil)
            #expect(created.json["metadata"]?["namespace"] == nil)
            let list = try await api.send(.GET, "/apis/example.apus.io/v1/widgets")
            // Custom resource lists are unstructured: items keep apiVersion and kind.
            #expect(list.json.testServerItems.first?["kind"] == .string("Widget"))
        }
    }

    @Test func kubeconfigPointsAtTheServer() async throws {
        try await TestServerAPI.withServer { api in
            let kubeconfig = api.server.kubeconfig()
            #expect(kubeconfig.contains("server: \"\(api.server.baseURL)\""))
            #expect(kubeconfig.contains("token: \"\(api.server.token)\""))
            let caData = Data(api.server.caCertificatePEM.utf8).base64EncodedString()
            #expect(kubeconfig.contains("certificate-authority-data: \"\(caData)\""))
            let certificateConfig = try api.server.kubeconfig(clientCertificateUser: "alice")
            #expect(certificateConfig.contains("client-certificate-data: "))
            #expect(certificateConfig.contains("client-key-data: "))
            #expect(!certificateConfig.contains("token:"))
        }
    }
}
