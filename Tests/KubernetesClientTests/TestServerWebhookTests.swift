import ApusCore
import ApusX509
import Foundation
import KubernetesTestServer
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing

/// A mutating webhook over HTTPS for the test server to call: its certificate is signed by its own CA (the
/// `caBundle` to register) for `hook.webhooks.svc` and 127.0.0.1; every review goes to `answer`.
final class ScriptedWebhook: Sendable {
    typealias Answer = @Sendable (_ request: JSONValue) async -> (status: HTTPResponseStatus, body: JSONValue)

    let caBundlePEM: String
    let port: Int
    private let channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
    private let task: Task<Void, Never>
    private let received = NIOLockedValueBox<[JSONValue]>([])

    /// The AdmissionReview requests received so far.
    var requests: [JSONValue] { received.withLockedValue { $0 } }

    private init(
        caBundlePEM: String,
        channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>,
        answer: @escaping Answer
    ) {
        self.caBundlePEM = caBundlePEM
        self.channel = channel
        self.port = channel.channel.localAddress?.port ?? 0
        let received = self.received
        self.task = Task {
            try? await channel.executeThenClose { connections in
                await withDiscardingTaskGroup { group in
                    do {
                        for try await connection in connections {
                            group.addTask { await Self.serve(connection, received: received, answer: answer) }
                        }
                    } catch {}
                }
            }
        }
    }

    static func start(answer: @escaping Answer) async throws -> ScriptedWebhook {
        let caKey = try PrivateKey.generateP256()
        let ca = try CertificateBuilder.certificateAuthority(commonName: "webhook-test-ca", key: caKey)
            .selfSigned(with: caKey)
        let key = try PrivateKey.generateP256()
        var builder = CertificateBuilder(commonName: "hook", publicKey: try key.publicKey)
        builder.dnsNames = ["hook.webhooks.svc"]
        builder.ipAddresses = ["127.0.0.1"]
        builder.extendedKeyUsage = [.serverAuth]
        let certificate = try builder.signed(by: ca, key: caKey)
        let tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: [
                .certificate(try NIOSSLCertificate(bytes: Array(try certificate.pem.utf8), format: .pem))
            ],
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(try key.pemPKCS8.utf8), format: .pem)))
        let context = try NIOSSLContext(configuration: tls)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                        wrappingChannelSynchronously: channel)
                }
            }
        return ScriptedWebhook(caBundlePEM: try ca.pem, channel: channel, answer: answer)
    }

    func stop() async {
        task.cancel()
        try? await channel.channel.close()
        _ = await task.value
    }

    private static func serve(
        _ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>,
        received: NIOLockedValueBox<[JSONValue]>, answer: Answer
    ) async {
        try? await connection.executeThenClose { inbound, outbound in
            var body: [UInt8] = []
            for try await part in inbound {
                switch part {
                case .head: body = []
                case .body(let buffer): body += buffer.readableBytesView
                case .end:
                    let review = (try? JSONValue(json: Data(body))) ?? .null
                    received.withLockedValue { $0.append(review) }
                    let (status, reply) = await answer(review)
                    let bytes = try reply.jsonData()
                    let headers: HTTPHeaders = [
                        "content-type": "application/json", "content-length": String(bytes.count),
                    ]
                    try await outbound.write(
                        .head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)))
                    try await outbound.write(.body(.byteBuffer(ByteBuffer(data: bytes))))
                    try await outbound.write(.end(nil))
                }
            }
        }
    }

    /// An AdmissionReview answer allowing the request with `patch` (JSONPatch operations) and `warnings`.
    static func allow(_ review: JSONValue, patch: JSONValue? = nil, warnings: [String] = []) -> JSONValue {
        var response: [String: JSONValue] = [
            "uid": review["request"]?["uid"] ?? .null, "allowed": .bool(true),
        ]
        if let patch, let data = try? patch.jsonData() {
            response["patchType"] = .string("JSONPatch")
            response["patch"] = .string(data.base64EncodedString())
        }
        if !warnings.isEmpty { response["warnings"] = .array(warnings.map { .string($0) }) }
        return .object([
            "apiVersion": .string("admission.k8s.io/v1"), "kind": .string("AdmissionReview"),
            "response": .object(response),
        ])
    }
}

/// The API test server's mutating admission: which creates reach a webhook, how its answer changes the stored
/// object, and what the client sees when the webhook fails, under both failure policies.
@Suite("Test server: mutating webhooks")
struct TestServerWebhookTests {
    static let labelPatch: JSONValue = .array([
        .object([
            "op": .string("add"), "path": .string("/metadata/labels/mutated"), "value": .string("yes"),
        ])
    ])

    /// A configuration with one webhook for Pod CREATE at `url` (or the `hook` Service in `webhooks`).
    static func configuration(
        _ webhook: ScriptedWebhook?, caBundlePEM: String? = nil, url: String? = nil, failurePolicy: String = "Fail",
        timeoutSeconds: Int = 10, namespaceSelector: JSONValue? = nil, objectSelector: JSONValue? = nil
    ) -> JSONValue {
        var clientConfig: [String: JSONValue] = [
            "caBundle": .string(Data((caBundlePEM ?? webhook?.caBundlePEM ?? "").utf8).base64EncodedString())
        ]
        if let url {
            clientConfig["url"] = .string(url)
        } else {
            clientConfig["service"] = .object([
                "namespace": .string("webhooks"), "name": .string("hook"), "path": .string("/mutate"),
                "port": .number(443),
            ])
        }
        var hook: [String: JSONValue] = [
            "name": .string("mutate.example.com"), "clientConfig": .object(clientConfig),
            "rules": .array([
                .object([
                    "operations": .array([.string("CREATE")]), "apiGroups": .array([.string("")]),
                    "apiVersions": .array([.string("v1")]), "resources": .array([.string("pods")]),
                ])
            ]),
            "failurePolicy": .string(failurePolicy), "sideEffects": .string("None"),
            "timeoutSeconds": .number(Double(timeoutSeconds)), "admissionReviewVersions": .array([.string("v1")]),
        ]
        if let namespaceSelector { hook["namespaceSelector"] = namespaceSelector }
        if let objectSelector { hook["objectSelector"] = objectSelector }
        return .object([
            "apiVersion": .string("admissionregistration.k8s.io/v1"), "kind": .string("MutatingWebhookConfiguration"),
            "metadata": .object(["name": .string("mutate")]), "webhooks": .array([.object(hook)]),
        ])
    }

    static func pod(_ name: String, labels: [String: String] = [:]) -> JSONValue {
        .object([
            "apiVersion": .string("v1"), "kind": .string("Pod"),
            "metadata": .object(["name": .string(name), "labels": .object(labels.mapValues { .string($0) })]),
            "spec": .object(["containers": .array([.object(["name": .string("app"), "image": .string("nginx")])])]),
        ])
    }

    static func register(_ api: TestServerAPI, _ configuration: JSONValue) async throws {
        let created = try await api.send(
            .POST, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", body: configuration)
        #expect(created.status == 201)
    }

    @Test("a matching webhook's JSONPatch is stored and its warnings come back as Warning headers")
    func patchAndWarnings() async throws {
        let webhook = try await ScriptedWebhook.start { review in
            (.ok, ScriptedWebhook.allow(review, patch: TestServerWebhookTests.labelPatch, warnings: ["be \"careful\""]))
        }
        try await TestServerAPI.withServer { api in
            api.server.setWebhookServiceAddress(namespace: "webhooks", name: "hook", port: webhook.port)
            try await api.createNamespace("shop")
            try await Self.register(api, Self.configuration(webhook))
            let created = try await api.send(.POST, "/api/v1/namespaces/shop/pods", body: Self.pod("web-0"))
            #expect(created.status == 201)
            #expect(created.json["metadata"]?["labels"]?["mutated"]?.stringValue == "yes")
            #expect(created.headers["Warning"] == [#"299 - "be \"careful\"""#])
            let stored = api.server.object(Pod.resourceType, namespace: "shop", name: "web-0")
            #expect(stored?["metadata"]?["labels"]?["mutated"]?.stringValue == "yes")
            // The review is admission.k8s.io/v1 for a Pod CREATE in the URL's namespace.
            let request = try #require(webhook.requests.first?["request"])
            #expect(webhook.requests.first?["apiVersion"]?.stringValue == "admission.k8s.io/v1")
            #expect(request["operation"]?.stringValue == "CREATE")
            #expect(request["namespace"]?.stringValue == "shop")
            #expect(request["kind"]?["kind"]?.stringValue == "Pod")
            #expect(request["object"]?["metadata"]?["name"]?.stringValue == "web-0")
            let uid = request["uid"]?.stringValue ?? ""
            #expect(!uid.isEmpty)
        }
        await webhook.stop()
    }

    @Test("namespaceSelector and objectSelector matchExpressions decide which creates are sent")
    func selectors() async throws {
        let webhook = try await ScriptedWebhook.start { review in
            (.ok, ScriptedWebhook.allow(review, patch: TestServerWebhookTests.labelPatch))
        }
        try await TestServerAPI.withServer { api in
            api.server.setWebhookServiceAddress(namespace: "webhooks", name: "hook", port: webhook.port)
            try await api.createNamespace("shop")
            try await api.createNamespace("kube-system")
            let namespaceSelector: JSONValue = .object([
                "matchExpressions": .array([
                    .object([
                        "key": .string("kubernetes.io/metadata.name"), "operator": .string("NotIn"),
                        "values": .array([.string("kube-system")]),
                    ])
                ])
            ])
            let objectSelector: JSONValue = .object([
                "matchExpressions": .array([
                    .object(["key": .string("skip-me"), "operator": .string("DoesNotExist")])
                ])
            ])
            try await Self.register(
                api,
                Self.configuration(webhook, namespaceSelector: namespaceSelector, objectSelector: objectSelector))
            let sent = try await api.send(.POST, "/api/v1/namespaces/shop/pods", body: Self.pod("a"))
            let system = try await api.send(.POST, "/api/v1/namespaces/kube-system/pods", body: Self.pod("b"))
            let optedOut = try await api.send(
                .POST, "/api/v1/namespaces/shop/pods", body: Self.pod("c", labels: ["skip-me": "1"]))
            #expect(sent.json["metadata"]?["labels"]?["mutated"]?.stringValue == "yes")
            #expect(system.status == 201 && system.json["metadata"]?["labels"]?["mutated"] == nil)
            #expect(optedOut.status == 201 && optedOut.json["metadata"]?["labels"]?["mutated"] == nil)
            #expect(webhook.requests.count == 1)
            // Other resources do not match the pods rule.
            let service = try await api.send(
                .POST, "/api/v1/namespaces/shop/services",
                body: .object(["metadata": .object(["name": .string("web")])]))
            #expect(service.status == 201)
            #expect(webhook.requests.count == 1)
        }
        await webhook.stop()
    }

    @Test("a webhook that is down: Ignore creates the object unchanged, Fail answers 500 InternalError")
    func failurePolicies() async throws {
        // A port that was just free: nothing listens there.
        let stopped = try await ScriptedWebhook.start { review in (.ok, ScriptedWebhook.allow(review)) }
        let deadPort = stopped.port
        await stopped.stop()
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("shop")
            let url = "https://127.0.0.1:\(deadPort)/mutate"
            try await Self.register(
                api, Self.configuration(nil, caBundlePEM: stopped.caBundlePEM, url: url, failurePolicy: "Ignore"))
            let ignored = try await api.send(.POST, "/api/v1/namespaces/shop/pods", body: Self.pod("a"))
            #expect(ignored.status == 201)
            #expect(ignored.json["metadata"]?["labels"]?["mutated"] == nil)

            _ = try await api.send(
                .DELETE, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mutate")
            try await Self.register(
                api, Self.configuration(nil, caBundlePEM: stopped.caBundlePEM, url: url, failurePolicy: "Fail"))
            let failed = try await api.send(.POST, "/api/v1/namespaces/shop/pods", body: Self.pod("b"))
            #expect(failed.status == 500)
            #expect(failed.reason == "InternalError")
            let message = failed.json["message"]?.stringValue ?? ""
            #expect(message.hasPrefix("Internal error occurred: failed calling webhook \"mutate.example.com\""))
            #expect(message.contains("Post \"https://127.0.0.1:\(deadPort)/mutate?timeout=10s\""))
            #expect(api.server.object(Pod.resourceType, namespace: "shop", name: "b") == nil)
        }
    }

    @Test("the caBundle is verified: a webhook certificate from another CA is a failed call")
    func caBundleVerified() async throws {
        let webhook = try await ScriptedWebhook.start { review in
            (.ok, ScriptedWebhook.allow(review, patch: TestServerWebhookTests.labelPatch))
        }
        let other = try await ScriptedWebhook.start { review in (.ok, ScriptedWebhook.allow(review)) }
        await other.stop()
        try await TestServerAPI.withServer { api in
            api.server.setWebhookServiceAddress(namespace: "webhooks", name: "hook", port: webhook.port)
            try await api.createNamespace("shop")
            try await Self.register(api, Self.configuration(webhook, caBundlePEM: other.caBundlePEM))
            let failed = try await api.send(.POST, "/api/v1/namespaces/shop/pods", body: Self.pod("a"))
            #expect(failed.status == 500)
            #expect(failed.json["message"]?.stringValue?.contains("tls:") == true)
            #expect(webhook.requests.isEmpty)
        }
        await webhook.stop()
    }

    @Test("a denial is 403 with the webhook's message; a slow webhook times out after timeoutSeconds")
    func denialAndTimeout() async throws {
        let denying = try await ScriptedWebhook.start { review in
            let response: JSONValue = .object([
                "uid": review["request"]?["uid"] ?? .null, "allowed": .bool(false),
                "status": .object(["message": .string("no privileged pods")]),
            ])
            return (
                .ok,
                .object([
                    "apiVersion": .string("admission.k8s.io/v1"), "kind": .string("AdmissionReview"),
                    "response": response,
                ])
            )
        }
        let slow = try await ScriptedWebhook.start { review in
            try? await Task.sleep(for: .seconds(3))
            return (.ok, ScriptedWebhook.allow(review))
        }
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("shop")
            try await Self.register(
                api, Self.configuration(denying, url: "https://127.0.0.1:\(denying.port)/mutate"))
            let denied = try await api.send(.POST, "/api/v1/namespaces/shop/pods", body: Self.pod("a"))
            #expect(denied.status == 403)
            #expect(
                denied.json["message"]?.stringValue
                    == "admission webhook \"mutate.example.com\" denied the request: no privileged pods")

            _ = try await api.send(
                .DELETE, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mutate")
            try await Self.register(
                api, Self.configuration(slow, url: "https://127.0.0.1:\(slow.port)/mutate", timeoutSeconds: 1))
            let started = ContinuousClock.now
            let timedOut = try await api.send(.POST, "/api/v1/namespaces/shop/pods", body: Self.pod("b"))
            #expect(timedOut.status == 500)
            #expect(timedOut.json["message"]?.stringValue?.contains("context deadline exceeded") == true)
            #expect(ContinuousClock.now - started < .seconds(2.5))
        }
        await denying.stop()
        await slow.stop()
    }

    @Test("an answer with another uid is a failed call (Fail: 500), never applied")
    func mismatchedUID() async throws {
        let webhook = try await ScriptedWebhook.start { _ in
            (
                .ok,
                ScriptedWebhook.allow(
                    .object(["request": .object(["uid": .string("someone-else")])]),
                    patch: TestServerWebhookTests.labelPatch)
            )
        }
        try await TestServerAPI.withServer { api in
            try await api.createNamespace("shop")
            try await Self.register(api, Self.configuration(webhook, url: "https://127.0.0.1:\(webhook.port)/mutate"))
            let failed = try await api.send(.POST, "/api/v1/namespaces/shop/pods", body: Self.pod("a"))
            #expect(failed.status == 500)
            #expect(failed.json["message"]?.stringValue?.contains("expected response.uid") == true)
        }
        await webhook.stop()
    }
}
