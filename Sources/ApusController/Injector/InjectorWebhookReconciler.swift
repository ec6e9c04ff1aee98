import ApusCore
import ApusIdentity
import Foundation
import KubernetesClient
import Logging

/// Keeps the injector's MutatingWebhookConfiguration registered and its `caBundle` equal to the trust anchors
/// (leader only).
///
/// ```
///  IdentityIssuer.updates() ─► anchors PEM ─┐
///  every resyncInterval (repairs drift) ────┼─► GET apus-proxy-injector-webhook-config
///                                           │     404 ─► create │ differs ─► merge patch `webhooks` │ equal ─► –
/// ```
///
/// kube-apiserver verifies the webhook's serving certificate (issued by the identity CA) with `caBundle`, so an
/// anchor rotation must reach the configuration before the webhook's next certificate; both follow the same
/// issuer updates. The desired webhook spells out every field the API server defaults (`matchPolicy`,
/// `reinvocationPolicy`, rule `scope`, service `port`), so a stored configuration compares equal and an
/// unchanged one is never written. Until the first issuer is loaded there is no bundle and nothing is written.
public final class InjectorWebhookReconciler: Sendable {
    public static let configurationName = "apus-proxy-injector-webhook-config"
    public static let webhookName = "apus-proxy-injector.apus.io"
    /// Linkerd's opt-out label on namespaces and pods (the control plane's namespace carries it).
    public static let admissionWebhooksLabel = "config.linkerd.io/admission-webhooks"
    /// Control-plane pods are labelled with their component and never sent to the injector.
    public static let controlPlaneComponentLabel = "linkerd.io/control-plane-component"

    public struct Options: Sendable, Hashable {
        public var controlNamespace: String
        public var serviceName: String
        public var servicePort: Int
        /// `Ignore` (default: a down injector never blocks pod creation; the reporter flags the pods) or `Fail`
        /// (HA installs: no pod in an injected namespace starts without a proxy).
        public var failurePolicy: String
        public var timeoutSeconds: Int
        /// How often the configuration is checked even without anchor changes.
        public var resyncInterval: Duration
        /// Point the webhook at a URL instead of the Service (out-of-cluster development and tests).
        public var url: String?

        public init(
            controlNamespace: String = "apus", serviceName: String = InjectorWebhook.serviceName,
            servicePort: Int = 443, failurePolicy: String = "Ignore", timeoutSeconds: Int = 10,
            resyncInterval: Duration = .seconds(60), url: String? = nil
        ) {
            self.controlNamespace = controlNamespace
            self.serviceName = serviceName
            self.servicePort = servicePort
            self.failurePolicy = failurePolicy
            self.timeoutSeconds = timeoutSeconds
            self.resyncInterval = resyncInterval
            self.url = url
        }
    }

    /// What one pass did.
    public enum Action: Sendable, Hashable {
        case created
        case updated
        case unchanged
        /// No trust anchors yet.
        case waitingForAnchors
    }

    /// The configuration is cluster-scoped; create cannot be limited by name, reads and patches can.
    public static let requiredPermissions: [PermissionRule] = [
        PermissionRule(MutatingWebhookConfiguration.resourceType, verbs: ["create"], scope: .cluster),
        PermissionRule(
            MutatingWebhookConfiguration.resourceType, verbs: ["get", "patch"], scope: .cluster,
            names: [configurationName]),
    ]

    public let options: Options
    private let client: KubernetesClient
    private let issuer: IdentityIssuer
    private let logger: Logger

    public init(
        client: KubernetesClient, issuer: IdentityIssuer, options: Options = Options(),
        logger: Logger = Logger(label: "apus.injector.webhook-config")
    ) {
        self.client = client
        self.issuer = issuer
        self.options = options
        self.logger = logger
    }

    /// The configuration the controller keeps, for `caBundle` (the anchors' PEM bytes).
    public static func desired(options: Options, caBundle: Data) -> MutatingWebhookConfiguration {
        var clientConfig = MutatingWebhookConfiguration.ClientConfig(caBundle: caBundle)
        if let url = options.url {
            clientConfig.url = url
        } else {
            clientConfig.service = MutatingWebhookConfiguration.ServiceReference(
                namespace: options.controlNamespace, name: options.serviceName, path: InjectorWebhook.path,
                port: options.servicePort)
        }
        typealias Requirement = MutatingWebhookConfiguration.LabelSelectorRequirement
        var webhook = MutatingWebhookConfiguration.Webhook(
            name: webhookName, clientConfig: clientConfig,
            rules: [
                MutatingWebhookConfiguration.Rule(
                    operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"], scope: "*")
            ],
            sideEffects: "None", admissionReviewVersions: ["v1"])
        webhook.failurePolicy = options.failurePolicy
        webhook.matchPolicy = "Equivalent"
        webhook.reinvocationPolicy = "Never"
        webhook.timeoutSeconds = options.timeoutSeconds
        webhook.namespaceSelector = MutatingWebhookConfiguration.LabelSelector(matchExpressions: [
            Requirement(key: admissionWebhooksLabel, operator: "NotIn", values: ["disabled"]),
            Requirement(key: "linkerd.io/inject", operator: "NotIn", values: ["disabled"]),
            Requirement(
                key: "kubernetes.io/metadata.name", operator: "NotIn",
                values: ["kube-system", options.controlNamespace]),
        ])
        webhook.objectSelector = MutatingWebhookConfiguration.LabelSelector(matchExpressions: [
            Requirement(key: admissionWebhooksLabel, operator: "NotIn", values: ["disabled"]),
            Requirement(key: controlPlaneComponentLabel, operator: "DoesNotExist"),
        ])
        return MutatingWebhookConfiguration(
            metadata: ObjectMeta(
                name: configurationName,
                labels: ["app.kubernetes.io/part-of": "apus", "app.kubernetes.io/component": "proxy-injector"]),
            webhooks: [webhook])
    }

    /// Reconciles on every issuer change and every ``Options/resyncInterval`` until cancelled (leadership lost or
    /// shutdown). A `LeaderComponent`.
    public func runAsLeader(_ manager: ControllerManager) async {
        await runWhileLeading()
    }

    /// Same as ``runAsLeader(_:)`` without a manager.
    public func runWhileLeading() async {
        await withDiscardingTaskGroup { group in
            let (ticks, tick) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
            group.addTask {
                for await _ in self.issuer.updates() { tick.yield() }
            }
            group.addTask {
                while !Task.isCancelled {
                    do { try await Task.sleep(for: self.options.resyncInterval) } catch { return }
                    tick.yield()
                }
            }
            group.addTask {
                for await _ in ticks {
                    if Task.isCancelled { return }
                    await self.reconcileLogging()
                }
            }
        }
    }

    private func reconcileLogging() async {
        do {
            let action = try await reconcile()
            switch action {
            case .created, .updated:
                logger.info(
                    "proxy injector webhook configuration \(action == .created ? "created" : "updated")",
                    metadata: ["name": "\(Self.configurationName)"])
            case .unchanged, .waitingForAnchors: break
            }
        } catch {
            logger.error(
                "could not reconcile the proxy injector webhook configuration (retried on the next resync)",
                metadata: ["name": "\(Self.configurationName)", "error": "\(error)"])
        }
    }

    /// One pass: creates the configuration, or patches its webhooks when they differ from
    /// ``desired(options:caBundle:)``.
    /// - Throws: ``KubernetesError`` from the API calls.
    @discardableResult
    public func reconcile() async throws -> Action {
        guard let anchors = issuer.credentials?.anchorsPEM else { return .waitingForAnchors }
        let desired = Self.desired(options: options, caBundle: Data(anchors.utf8))
        let current: MutatingWebhookConfiguration
        do {
            current = try await client.get(MutatingWebhookConfiguration.self, name: Self.configurationName)
        } catch let error as KubernetesError where error.code == .notFound {
            do {
                _ = try await client.create(desired, fieldManager: "apus-controller")
                return .created
            } catch let error as KubernetesError where error.code == .alreadyExists {
                // Another writer created it between the read and the create; the next pass compares it.
                return try await reconcile()
            }
        }
        let labels = desired.metadata.labels ?? [:]
        let labelsMatch = labels.allSatisfy { current.metadata.labels?[$0.key] == $0.value }
        guard current.webhooks != desired.webhooks || !labelsMatch else { return .unchanged }
        let patch = JSONValue.object([
            "metadata": .object(["labels": .object(labels.mapValues { .string($0) })]),
            "webhooks": try JSONValue(encoding: desired.webhooks ?? []),
        ])
        _ = try await client.patch(
            MutatingWebhookConfiguration.self, name: Self.configurationName, patch: .merge(patch))
        return .updated
    }
}
