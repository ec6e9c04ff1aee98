import ApusController
import ApusCore
import ApusInjector
import Foundation
import MetricsTestKit
import NIOHTTP1
import Testing

/// The injector webhook over real HTTPS: AdmissionReview answers, every kind of bad input, and the server staying
/// up after each.
@Suite("Injector webhook")
struct InjectorWebhookTests {
    static let injected = Namespace(
        metadata: ObjectMeta(name: "shop", annotations: ["linkerd.io/inject": "enabled"]))

    @Test("a pod in an injected namespace gets a base64 JSONPatch that adds the proxy; the uid is echoed")
    func injectsPod() async throws {
        let metrics = TestMetrics()
        let injector = try await RunningInjector.start(namespaces: ["shop": Self.injected], metricsFactory: metrics)
        let answer = try await injector.post(Reviews.bytes(Reviews.review(uid: "uid-1", object: Reviews.pod())))
        #expect(answer.status == 200)
        let response = try #require(answer.json?["response"])
        #expect(answer.json?["apiVersion"]?.stringValue == "admission.k8s.io/v1")
        #expect(answer.json?["kind"]?.stringValue == "AdmissionReview")
        #expect(response["uid"]?.stringValue == "uid-1")
        #expect(response["allowed"]?.boolValue == true)
        #expect(response["patchType"]?.stringValue == "JSONPatch")
        let encodedPatch = try #require(response["patch"]?.stringValue)
        let patchData = try #require(Data(base64Encoded: encodedPatch))
        let operations = try JSONDecoder().decode([JSONPatchOperation].self, from: patchData)
        let patched = try JSONPatch.apply(operations, to: Reviews.pod())
        let names =
            (patched["spec"]?["initContainers"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }
            + (patched["spec"]?["containers"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }
        #expect(names.contains(InjectorNames.proxyContainer))
        #expect(names.contains("web"))
        // The anchors in the proxy's environment are the issuer's, not the (empty) defaults'.
        #expect(patched["metadata"]?["annotations"]?[InjectorNames.trustRootSHA256] != nil)
        #expect(patched.description.contains("BEGIN CERTIFICATE"))
        #expect(metrics.counterTotal(label: "apus_controller_injector_pods_injected_total") == 1)
        await injector.stop()
    }

    @Test("skips are allowed without a patch and counted by reason; the pod annotation beats the namespace")
    func skips() async throws {
        let metrics = TestMetrics()
        let injector = try await RunningInjector.start(
            namespaces: ["shop": Self.injected, "plain": Namespace(metadata: ObjectMeta(name: "plain"))],
            metricsFactory: metrics)
        let cases: [(JSONValue, String)] = [
            (Reviews.pod(namespace: "plain"), "not_enabled"),
            (Reviews.pod(annotations: ["linkerd.io/inject": "disabled"]), "disabled_by_pod"),
            (Reviews.pod(hostNetwork: true), "host_network"),
        ]
        for (pod, reason) in cases {
            let namespace = pod["metadata"]?["namespace"]?.stringValue ?? ""
            let answer = try await injector.post(
                Reviews.bytes(Reviews.review(object: pod, namespace: namespace)))
            #expect(answer.status == 200)
            #expect(answer.json?["response"]?["allowed"]?.boolValue == true)
            #expect(answer.json?["response"]?["patch"] == nil, "\(reason)")
            #expect(
                metrics.counterTotal(
                    label: "apus_controller_injector_pods_skipped_total", dimensions: [("reason", reason)]) == 1)
        }
        // An injected pod is not injected again.
        let first = try await injector.post(Reviews.bytes(Reviews.review(object: Reviews.pod())))
        let patch = try #require(first.json?["response"]?["patch"]?.stringValue)
        let patchData = try #require(Data(base64Encoded: patch))
        let operations = try JSONDecoder().decode([JSONPatchOperation].self, from: patchData)
        let injectedPod = try JSONPatch.apply(operations, to: Reviews.pod())
        let again = try await injector.post(Reviews.bytes(Reviews.review(object: injectedPod)))
        #expect(again.json?["response"]?["allowed"]?.boolValue == true)
        #expect(again.json?["response"]?["patch"] == nil)
        await injector.stop()
    }

    @Test("garbage, wrong versions, a missing request or uid are 400 with a message; the server stays up")
    func malformedBodies() async throws {
        let metrics = TestMetrics()
        let injector = try await RunningInjector.start(namespaces: ["shop": Self.injected], metricsFactory: metrics)
        let garbage: [(String, [UInt8], String)] = [
            ("garbage", Array("\u{1}\u{2}not json at all{{".utf8), "not JSON"),
            ("empty", [], "not JSON"),
            ("array", Array("[1,2,3]".utf8), "not a JSON object"),
            (
                "v1beta1",
                try Reviews.bytes(Reviews.review(object: Reviews.pod(), apiVersion: "admission.k8s.io/v1beta1")),
                "admission.k8s.io/v1beta1"
            ),
            (
                "no request", Array(#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.utf8),
                "request is missing"
            ),
            (
                "no uid", Array(#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#.utf8),
                "uid"
            ),
            (
                "uid of the wrong type",
                Array(#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#.utf8),
                "uid"
            ),
        ]
        for (name, body, message) in garbage {
            let answer = try await injector.post(body)
            #expect(answer.status == 400, "\(name)")
            #expect(answer.text.contains(message), "\(name): \(answer.text)")
        }
        #expect(
            metrics.counterTotal(label: "apus_controller_injector_errors_total", dimensions: [("reason", "malformed")])
                == 6)
        #expect(
            metrics.counterTotal(
                label: "apus_controller_injector_errors_total", dimensions: [("reason", "unsupported_version")]) == 1)
        let healthy = try await injector.post(Reviews.bytes(Reviews.review(object: Reviews.pod())))
        #expect(healthy.status == 200 && healthy.json?["response"]?["patch"] != nil)
        await injector.stop()
    }

    @Test("a missing object or another kind is allowed unchanged (with a warning for the missing object)")
    func allowedUnchanged() async throws {
        let injector = try await RunningInjector.start(namespaces: ["shop": Self.injected])
        let missing = try await injector.post(Reviews.bytes(Reviews.review(uid: "u-2", object: nil)))
        #expect(missing.status == 200)
        #expect(missing.json?["response"]?["uid"]?.stringValue == "u-2")
        #expect(missing.json?["response"]?["allowed"]?.boolValue == true)
        #expect(missing.json?["response"]?["patch"] == nil)
        #expect(missing.json?["response"]?["warnings"]?.arrayValue?.isEmpty == false)

        let deployment = try await injector.post(
            Reviews.bytes(Reviews.review(object: .object(["spec": .object([:])]), kind: "Deployment", group: "apps")))
        #expect(deployment.json?["response"]?["allowed"]?.boolValue == true)
        #expect(deployment.json?["response"]?["patch"] == nil)
        let update = try await injector.post(Reviews.bytes(Reviews.review(object: Reviews.pod(), operation: "UPDATE")))
        #expect(update.json?["response"]?["allowed"]?.boolValue == true)
        #expect(update.json?["response"]?["patch"] == nil)
        let notAPod = try await injector.post(Reviews.bytes(Reviews.review(object: .string("a string"))))
        #expect(notAPod.json?["response"]?["allowed"]?.boolValue == true)
        #expect(notAPod.json?["response"]?["patch"] == nil)
        await injector.stop()
    }

    @Test("a body over the limit is 413 without being read; other paths 404, other methods 405")
    func limitsAndRoutes() async throws {
        let injector = try await RunningInjector.start(
            namespaces: ["shop": Self.injected], maximumRequestBytes: 64 * 1024)
        let huge = try await injector.post(Array(repeating: UInt8(ascii: "x"), count: 200 * 1024))
        #expect(huge.status == 413)
        let wrongPath = try await injector.post(Reviews.bytes(Reviews.review(object: Reviews.pod())), path: "/mutate")
        #expect(wrongPath.status == 404)
        let get = try await injector.post([], method: .GET)
        #expect(get.status == 405)
        let healthy = try await injector.post(Reviews.bytes(Reviews.review(object: Reviews.pod())))
        #expect(healthy.status == 200)
        await injector.stop()
    }

    @Test("the default limit is Kubernetes' 3 MiB: a 2 MiB review is answered, a 4 MiB one refused")
    func defaultLimit() async throws {
        let injector = try await RunningInjector.start(namespaces: ["shop": Self.injected])
        var pod = Reviews.pod()
        pod["metadata"]?["annotations"]?["filler"] = .string(String(repeating: "a", count: 2 << 20))
        let large = try await injector.post(Reviews.bytes(Reviews.review(object: pod)))
        #expect(large.status == 200)
        pod["metadata"]?["annotations"]?["filler"] = .string(String(repeating: "a", count: 4 << 20))
        let tooLarge = try await injector.post(Reviews.bytes(Reviews.review(object: pod)))
        #expect(tooLarge.status == 413)
        await injector.stop()
    }

    @Test("the serving certificate chains to the trust anchors and names apus-injector.apus.svc")
    func servingCertificate() async throws {
        let injector = try await RunningInjector.start()
        let certificate = try #require(injector.webhook.certificates.certificate)
        #expect(certificate.dnsNames.contains("apus-injector.apus.svc"))
        #expect(certificate.dnsNames.first == "apus-injector.apus.serviceaccount.identity.apus.cluster.local")
        // A client trusting other anchors (an API server with a stale caBundle) gets no answer.
        let other = try TrustRoots.generate()
        await #expect(throws: (any Error).self) {
            _ = try await HTTPSProbe.post(
                port: injector.port, body: [], trustRootsPEM: other.anchorsPEM, serverName: "apus-injector.apus.svc")
        }
        await injector.stop()
    }
}
