import ApusController
import ApusCore
import ApusIdentity
import ApusInjector
import Foundation
import KubernetesClient
import KubernetesTestServer
import Testing

/// The controller's injector against the API test server, which calls mutating webhooks like kube-apiserver:
/// the leader registers the webhook, pods come back injected or untouched, and a pod that slipped through while
/// the webhook was down is reported.
@Suite("Injector end to end", .serialized)
struct InjectorEndToEndTests {
    /// The control plane's injector parts on one controller replica, with the RBAC the code declares.
    struct Controller {
        let api: ControllerManagerTests.Fixture
        let roots: TrustRoots
        let issuer: IdentityIssuer
        let manager: ControllerManager
        let webhook: InjectorWebhook
        let reconciler: InjectorWebhookReconciler
        let reporter: UninjectedPodReporter
        let managerTask: Task<Void, Never>
        let webhookTask: Task<Void, any Error>

        static func start() async throws -> Controller {
            let api = try await ControllerManagerTests.Fixture.start(rules: ControllerManager.requiredPermissions())
            _ = try await api.admin.create(Namespace(metadata: ObjectMeta(name: "apus")))
            let client = try api.controllerClient()
            let roots = try TrustRoots.generate()
            let issuer = IdentityIssuer()
            issuer.load(
                anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
                issuerKeyPEM: roots.issuerKeyPEM)
            let manager = ControllerManager(client: client, options: ControllerManagerTests.options(identity: "c-0"))
            let defaults = InjectorDefaults(controlPlaneNamespace: "apus")
            let webhook = InjectorWebhook(
                manager: manager, defaults: defaults,
                certificates: ServingCertificates(
                    issuer: issuer, configuration: InjectorWebhook.servingConfiguration()),
                configuration: InjectorWebhook.Configuration(host: "127.0.0.1", port: 0))
            let reconciler = InjectorWebhookReconciler(
                client: client, issuer: issuer,
                options: InjectorWebhookReconciler.Options(resyncInterval: .milliseconds(300)))
            let reporter = try UninjectedPodReporter(manager: manager, defaults: defaults)
            manager.addLeaderComponent { await reconciler.runAsLeader($0) }
            manager.addLeaderComponent { await reporter.runAsLeader($0) }
            let managerTask = Task { await manager.run() }
            let webhookTask = Task { try await webhook.run() }
            api.server.setWebhookServiceAddress(
                namespace: "apus", name: InjectorWebhook.serviceName, port: try await webhook.port())
            return Controller(
                api: api, roots: roots, issuer: issuer, manager: manager, webhook: webhook, reconciler: reconciler,
                reporter: reporter, managerTask: managerTask, webhookTask: webhookTask)
        }

        var server: KubernetesTestServer { api.server }
        var admin: KubernetesClient { api.admin }

        func stop() async throws {
            webhookTask.cancel()
            managerTask.cancel()
            _ = try? await webhookTask.value
            await managerTask.value
            #expect(api.refusals.withLockedValue { $0 }.isEmpty, "the controller made calls its RBAC does not allow")
            try await api.shutdown()
        }

        func configuration() -> MutatingWebhookConfiguration? {
            try? server.objects(MutatingWebhookConfiguration.self).first {
                $0.metadata.name == InjectorWebhookReconciler.configurationName
            }
        }
    }

    static func pod(_ name: String, annotations: [String: String] = [:]) -> Pod {
        Pod(
            metadata: ObjectMeta(name: name, annotations: annotations),
            spec: PodSpec(containers: [Container(name: "app", image: "nginx")]))
    }

    static func containerNames(_ pod: Pod) -> [String] {
        (pod.spec?.initContainers ?? []).map(\.name) + (pod.spec?.containers ?? []).map(\.name)
    }

    @Test("annotated namespaces get the proxy, others and opted-out pods do not; a down webhook is reported")
    func injection() async throws {
        let controller = try await Controller.start()
        let admin = controller.admin
        _ = try await admin.create(
            Namespace(metadata: ObjectMeta(name: "shop", annotations: ["linkerd.io/inject": "enabled"])))
        _ = try await admin.create(Namespace(metadata: ObjectMeta(name: "plain")))
        try await eventually { controller.configuration()?.webhooks?.first?.clientConfig.caBundle != nil }
        let registered = try #require(controller.configuration()?.webhooks?.first)
        #expect(registered.clientConfig.caBundle == Data(controller.roots.anchorsPEM.utf8))
        #expect(registered.failurePolicy == "Ignore")
        // The namespace informer must know "shop" before its pods are reviewed.
        try await eventually { controller.manager.namespaces.store.get(ObjectKey(namespace: nil, name: "shop")) != nil }

        let injected = try await admin.create(Self.pod("web-0"), namespace: "shop")
        #expect(Self.containerNames(injected).contains(InjectorNames.proxyContainer))
        #expect(Self.containerNames(injected).contains(InjectorNames.initContainer))
        #expect(injected.metadata.annotations?[InjectorNames.proxyVersion] != nil)
        #expect(injected.metadata.labels?[InjectorNames.controlPlaneNamespace] == "apus")
        let proxy = try #require(
            ((injected.spec?.initContainers ?? []) + (injected.spec?.containers ?? [])).first {
                $0.name == InjectorNames.proxyContainer
            })
        #expect((proxy.env ?? []).contains { $0.name.hasPrefix("APUS_PROXY_") })
        #expect((proxy.env ?? []).contains { $0.value?.contains("BEGIN CERTIFICATE") == true })
        // What the API server stored is what the client got back.
        let stored = try await admin.get(Pod.self, name: "web-0", namespace: "shop")
        #expect(Self.containerNames(stored) == Self.containerNames(injected))

        let plain = try await admin.create(Self.pod("web-0"), namespace: "plain")
        #expect(Self.containerNames(plain) == ["app"])
        let optedOut = try await admin.create(
            Self.pod("legacy", annotations: ["linkerd.io/inject": "disabled"]), namespace: "shop")
        #expect(Self.containerNames(optedOut) == ["app"])
        #expect(controller.server.webhookCallCount == 3)

        // The webhook goes down: failurePolicy Ignore lets the pod through without a proxy, and the leader says so.
        controller.webhookTask.cancel()
        _ = try? await controller.webhookTask.value
        let slipped = try await admin.create(Self.pod("web-1"), namespace: "shop")
        #expect(Self.containerNames(slipped) == ["app"])
        try await eventually {
            controller.reporter.uninjectedPods == [ObjectKey(namespace: "shop", name: "web-1")]
        }
        try await eventually {
            try controller.server.objects(Event.self, namespace: "shop").contains {
                $0.reason == UninjectedPodReporter.reason && $0.involvedObject.name == "web-1" && $0.type == "Warning"
            }
        }
        // The opted-out pod and the plain namespace's pod were never reported.
        #expect(controller.reporter.uninjectedPods.count == 1)
        try await controller.stop()
    }

    @Test("the leader repairs drift and follows an anchor rotation into caBundle")
    func reconcilerKeepsConfiguration() async throws {
        let controller = try await Controller.start()
        try await eventually { controller.configuration() != nil }
        // Someone switches the policy and drops the selectors: the next pass restores them.
        var drifted = try #require(controller.configuration()?.webhooks)
        drifted[0].failurePolicy = "Fail"
        drifted[0].namespaceSelector = nil
        _ = try await controller.admin.patch(
            MutatingWebhookConfiguration.self, name: InjectorWebhookReconciler.configurationName,
            patch: .merge(.object(["webhooks": try JSONValue(encoding: drifted)])))
        #expect(controller.configuration()?.webhooks?.first?.failurePolicy == "Fail")
        try await eventually {
            controller.configuration()?.webhooks
                == InjectorWebhookReconciler.desired(
                    options: controller.reconciler.options, caBundle: Data(controller.roots.anchorsPEM.utf8)
                ).webhooks
        }
        #expect(try await controller.reconciler.reconcile() == .unchanged)

        let before = try controller.webhook.certificates.certificate?.pem
        let rotated = try TrustRoots.generate()
        controller.issuer.load(
            anchorsPEM: rotated.anchorsPEM, issuerCertificatePEM: rotated.issuerCertificatePEM,
            issuerKeyPEM: rotated.issuerKeyPEM)
        try await eventually {
            controller.configuration()?.webhooks?.first?.clientConfig.caBundle == Data(rotated.anchorsPEM.utf8)
        }
        // The webhook's new certificate chains to the new anchors, so the API server still reaches it.
        _ = try await controller.admin.create(
            Namespace(metadata: ObjectMeta(name: "shop", annotations: ["linkerd.io/inject": "enabled"])))
        try await eventually { controller.manager.namespaces.store.get(ObjectKey(namespace: nil, name: "shop")) != nil }
        try await eventually { (try controller.webhook.certificates.certificate?.pem) != before }
        let pod = try await controller.admin.create(Self.pod("after-rotation"), namespace: "shop")
        #expect(Self.containerNames(pod).contains(InjectorNames.proxyContainer))
        try await controller.stop()
    }

    @Test("the desired webhook: Pod CREATE, v1 reviews, no side effects, 10 s, opt-outs and kube-system excluded")
    func desiredConfiguration() throws {
        let options = InjectorWebhookReconciler.Options(controlNamespace: "mesh", failurePolicy: "Fail")
        let configuration = InjectorWebhookReconciler.desired(options: options, caBundle: Data("PEM".utf8))
        let webhook = try #require(configuration.webhooks?.first)
        #expect(configuration.metadata.name == "apus-proxy-injector-webhook-config")
        #expect(
            webhook.rules == [
                MutatingWebhookConfiguration.Rule(
                    operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"], scope: "*")
            ])
        #expect(webhook.sideEffects == "None")
        #expect(webhook.timeoutSeconds == 10)
        #expect(webhook.failurePolicy == "Fail")
        #expect(webhook.admissionReviewVersions == ["v1"])
        #expect(webhook.clientConfig.service?.name == "apus-injector")
        #expect(webhook.clientConfig.service?.namespace == "mesh")
        #expect(webhook.clientConfig.service?.path == "/inject")
        let excluded = webhook.namespaceSelector?.matchExpressions?.first { $0.key == "kubernetes.io/metadata.name" }
        #expect(excluded?.operator == "NotIn")
        #expect(excluded?.values == ["kube-system", "mesh"])
        #expect(
            webhook.namespaceSelector?.matchExpressions?.contains {
                $0.key == "linkerd.io/inject" && $0.operator == "NotIn" && $0.values == ["disabled"]
            } == true)
        #expect(
            webhook.objectSelector?.matchExpressions?.contains {
                $0.key == "linkerd.io/control-plane-component" && $0.operator == "DoesNotExist"
            } == true)
    }
}
