import ApusCore
import Foundation
import Testing

@testable import KubernetesClient

@Suite("Label selectors")
struct UnitLabelSelectorTests {
    @Test func buildsTheWireForm() {
        let selector = LabelSelector().equals("app", "web").in("tier", ["a", "b"]).doesNotExist("legacy")
        #expect(selector.string == "app=web,tier in (a,b),!legacy")
        let more = LabelSelector().notEquals("env", "prod").notIn("zone", ["x"]).exists("owner")
        #expect(more.string == "env!=prod,zone notin (x),owner")
        #expect(LabelSelector(matchLabels: ["b": "2", "a": "1"]).string == "a=1,b=2")
        #expect(LabelSelector().string == "")
    }

    @Test func matchesLikeTheServer() {
        let selector = LabelSelector().equals("app", "web").in("tier", ["a", "b"]).doesNotExist("legacy")
        #expect(selector.matches(["app": "web", "tier": "a"]))
        #expect(!selector.matches(["app": "web", "tier": "c"]))
        #expect(!selector.matches(["app": "web", "tier": "a", "legacy": "true"]))
        #expect(!selector.matches(nil))
        // != and notin also select objects without the label.
        #expect(LabelSelector().notEquals("env", "prod").matches([:]))
        #expect(LabelSelector().notIn("env", ["prod"]).matches(nil))
        #expect(LabelSelector().matches(nil))
    }
}

@Suite("Resource paths and URLs")
struct UnitResourcePathTests {
    static let profiles = ResourceType(
        group: "linkerd.io", version: "v1alpha2", plural: "serviceprofiles", kind: "ServiceProfile", namespaced: true)

    @Test func namespacedClusterScopedCRDAndStatusPaths() {
        #expect(ResourcePath(Pod.resourceType, namespace: "apus").path == "/api/v1/namespaces/apus/pods")
        #expect(ResourcePath(Pod.resourceType).path == "/api/v1/pods")
        #expect(
            ResourcePath(Pod.resourceType, namespace: "apus", name: "web-0", subresource: "status").path
                == "/api/v1/namespaces/apus/pods/web-0/status")
        #expect(
            ResourcePath(Namespace.resourceType, namespace: "ignored", name: "apus").path == "/api/v1/namespaces/apus")
        #expect(
            ResourcePath(MutatingWebhookConfiguration.resourceType, name: "apus-injector").path
                == "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/apus-injector")
        #expect(
            ResourcePath(Self.profiles, namespace: "apus", name: "web.apus.svc.cluster.local", subresource: "status")
                .path == "/apis/linkerd.io/v1alpha2/namespaces/apus/serviceprofiles/web.apus.svc.cluster.local/status")
        #expect(
            ResourcePath(Lease.resourceType, namespace: "apus", name: "leader").path
                == "/apis/coordination.k8s.io/v1/namespaces/apus/leases/leader")
    }

    @Test func queryIsFullyEscaped() throws {
        let options = ListOptions(
            labelSelector: LabelSelector().equals("app", "web").in("tier", ["a", "b"]).doesNotExist("legacy").string,
            fieldSelector: "metadata.name=x", resourceVersion: "10", resourceVersionMatch: "NotOlderThan",
            limit: 50, continue: "abc+/=", timeoutSeconds: 30)
        let base = try #require(URL(string: "https://127.0.0.1:6443/"))
        let url = ResourcePath(Pod.resourceType, namespace: "apus").url(base: base, query: options.queryItems)
        #expect(
            url == "https://127.0.0.1:6443/api/v1/namespaces/apus/pods"
                + "?labelSelector=app%3Dweb%2Ctier%20in%20%28a%2Cb%29%2C%21legacy&fieldSelector=metadata.name%3Dx"
                + "&resourceVersion=10&resourceVersionMatch=NotOlderThan"
                + "&limit=50&continue=abc%2B%2F%3D&timeoutSeconds=30")
        let parsed = try #require(URLComponents(string: url))
        #expect(parsed.queryItems?.first { $0.name == "labelSelector" }?.value == "app=web,tier in (a,b),!legacy")
        #expect(parsed.queryItems?.first { $0.name == "continue" }?.value == "abc+/=")
    }

    @Test func baseURLPathPrefixIsKept() throws {
        let base = try #require(URL(string: "https://proxy.example/k8s/clusters/c-1"))
        #expect(
            ResourcePath(ConfigMap.resourceType, namespace: "a", name: "b").url(base: base)
                == "https://proxy.example/k8s/clusters/c-1/api/v1/namespaces/a/configmaps/b")
    }

    @Test func patchKindsCarryTheirContentTypeAndQuery() throws {
        #expect(Patch.merge(.object(["a": .number(1)])).kind.rawValue == "application/merge-patch+json")
        #expect(
            Patch.strategicMerge(.object(["a": .number(1)])).kind.rawValue == "application/strategic-merge-patch+json")
        let json = Patch.json([
            JSONPatchOperation(
                op: .replace, path: "/metadata/labels/\(JSONPatchOperation.escape("apus.io/x"))", value: .string("1")),
            JSONPatchOperation(op: .remove, path: "/spec/x"),
        ])
        #expect(json.kind.rawValue == "application/json-patch+json")
        #expect(
            String(decoding: json.body, as: UTF8.self)
                == #"[{"op":"replace","path":"/metadata/labels/apus.io~1x","value":"1"},"#
                + #"{"op":"remove","path":"/spec/x"}]"#)
        let apply = try Patch.apply(ConfigMap(metadata: ObjectMeta(name: "c")), fieldManager: "apus", force: true)
        #expect(apply.kind.rawValue == "application/apply-patch+yaml")
        #expect(apply.queryItems.map { "\($0.name)=\($0.value ?? "")" } == ["fieldManager=apus", "force=true"])
    }

    @Test func deleteOptionsEncodeAsDeleteOptionsObject() throws {
        let options = DeleteOptions(
            propagationPolicy: .foreground, preconditions: .init(uid: "u-1", resourceVersion: "7"),
            gracePeriodSeconds: 0)
        let json = try JSONValue(encoding: options)
        #expect(json["kind"] == .string("DeleteOptions"))
        #expect(json["propagationPolicy"] == .string("Foreground"))
        #expect(json["preconditions"]?["uid"] == .string("u-1"))
        #expect(json["preconditions"]?["resourceVersion"] == .string("7"))
        #expect(json["gracePeriodSeconds"] == .number(0))
    }
}

@Suite("Errors from Status bodies")
struct UnitKubernetesErrorTests {
    static func status(_ code: Int, reason: String, message: String = "m") -> Data {
        Data(
            (#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"\#(message)","#
                + #""reason":"\#(reason)","code":\#(code)}"#).utf8)
    }

    @Test(arguments: [
        (404, "NotFound", KubernetesError.Code.notFound),
        (409, "AlreadyExists", .alreadyExists),
        (409, "Conflict", .conflict),
        (410, "Gone", .gone),
        (500, "Expired", .gone),
        (403, "Forbidden", .forbidden),
        (401, "Unauthorized", .unauthorized),
        (422, "Invalid", .invalid),
        (400, "BadRequest", .badRequest),
        (405, "MethodNotAllowed", .badRequest),
        (429, "TooManyRequests", .tooManyRequests),
        (500, "InternalError", .serverError),
        (503, "ServiceUnavailable", .serverError),
        (504, "Timeout", .timeout),
    ])
    func classifiesStatus(httpStatus: Int, reason: String, expected: KubernetesError.Code) {
        let error = KubernetesError.fromResponse(
            httpStatus: httpStatus, body: Self.status(httpStatus, reason: reason, message: "the message"))
        #expect(error.code == expected)
        #expect(error.message == "the message")
        #expect(error.status?.reason == reason)
        #expect(error.httpStatus == httpStatus)
    }

    @Test func retryAfterFromHeaderOrDetails() {
        let header = KubernetesError.fromResponse(
            httpStatus: 429, body: Self.status(429, reason: "TooManyRequests"), retryAfterHeader: "3")
        #expect(header == .tooManyRequests)
        #expect(header.retryAfter == .seconds(3))
        let details = Data(
            #"{"kind":"Status","reason":"TooManyRequests","code":429,"details":{"retryAfterSeconds":7}}"#.utf8)
        #expect(KubernetesError.fromResponse(httpStatus: 429, body: details).retryAfter == .seconds(7))
    }

    @Test func nonStatusBodyKeepsTheTextAndHTTPCode() {
        let error = KubernetesError.fromResponse(httpStatus: 502, body: Data("upstream connect error".utf8))
        #expect(error == .serverError)
        #expect(error.message == "upstream connect error")
        #expect(error.status?.reason == nil)
    }

    @Test func equalityIsByCodeOnly() {
        #expect(KubernetesError(code: .conflict, message: "a") == KubernetesError(code: .conflict, message: "b"))
        #expect(KubernetesError(code: .conflict, message: "a") != .notFound)
    }

    @Test func strictListDecodingNamesTheFieldPath() throws {
        let body = Data(
            (#"{"metadata":{"resourceVersion":"9"},"items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}},"#
                + #"{"metadata":{"name":"c"}},{"metadata":{"name":"d","labels":{"x":1}}}]}"#).utf8)
        do {
            _ = try JSONDecoder().decode(StrictList<ConfigMap>.self, from: body)
            Issue.record("expected a failure")
        } catch {
            let wrapped = KubernetesError.decoding(error, context: "ConfigMapList")
            #expect(wrapped == .decoding)
            #expect(wrapped.fieldPath == "items[3].metadata.labels.x")
        }
    }

    @Test func lenientListSkipsAndReportsBadItems() throws {
        let body = Data(
            (#"{"metadata":{"resourceVersion":"9","continue":"next"},"items":[{"metadata":{"name":"a"}},"#
                + #"{"metadata":{"name":"bad","namespace":"apus","labels":[1]}},{"metadata":{"name":"c"}}]}"#).utf8)
        let list = try JSONDecoder().decode(LenientList<ConfigMap>.self, from: body)
        #expect(list.items.map { $0.metadata.name } == ["a", "c"])
        #expect(list.metadata.resourceVersion == "9")
        #expect(list.metadata.continue == "next")
        #expect(list.failures.count == 1)
        #expect(list.failures.first?.fieldPath == "items[1].metadata.labels")
        #expect(list.failures.first?.message.contains("apus/bad") == true)

        let empty = try JSONDecoder().decode(LenientList<ConfigMap>.self, from: Data(#"{"items":null}"#.utf8))
        #expect(empty.items.isEmpty)
    }
}

@Suite("Backoff")
struct UnitBackoffTests {
    @Test func growsToTheCeilingWithBoundedJitterAndResets() {
        var backoff = ExponentialBackoff(initial: .milliseconds(100), maximum: .seconds(2), jitter: 0.5)
        var delays: [Duration] = []
        for _ in 0..<10 { delays.append(backoff.next()) }
        #expect(delays[0] >= .milliseconds(50) && delays[0] <= .milliseconds(150))
        #expect(delays.allSatisfy { $0 <= .seconds(2) })
        #expect(backoff.baseDelay(attempt: 3) == .milliseconds(800))
        #expect(backoff.baseDelay(attempt: 1000) == .seconds(2))
        backoff.reset()
        #expect(backoff.attempts == 0)
        #expect(backoff.next() <= .milliseconds(150))
    }
}
