import ApusController
import ApusCore
import ApusInjector
import ArgumentParser
import Foundation
import KubernetesClient
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// `apus-controller`: the control plane's controller-manager.
@main
struct ApusControllerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apus-controller",
        abstract: "Run the Apus control plane against a Kubernetes API server.",
        version: ApusVersion.current
    )

    @Option(help: "Path to a kubeconfig; default: $KUBECONFIG, ~/.kube/config, then the in-cluster service account.")
    var kubeconfig: String?

    @Option(help: "kubeconfig context to use instead of current-context.")
    var context: String?

    @Option(name: .customLong("controller-namespace"), help: "Namespace the control plane runs in.")
    var controlNamespace = "apus"

    @Flag(inversion: .prefixedNo, help: "Elect one active replica through a Lease.")
    var leaderElect = true

    @Option(help: "Name of this replica in the Lease (default: $POD_NAME or host-pid).")
    var replicaName: String?

    @Option(help: "Trust domain of proxy identities (the last labels of every identity name).")
    var trustDomain = "cluster.local"

    @Option(help: "Port of the admin server: /live, /ready (after the caches synced) and /metrics (Prometheus).")
    var adminPort = AdminServer.defaultPort

    @Option(help: "Cluster DNS domain services' names end in.")
    var clusterDomain = "cluster.local"

    @Option(help: "Port of the identity service (Certify API over TLS).")
    var identityPort = 8080

    @Option(
        help: """
            Port of the destination service (endpoints and profiles to proxies over HTTP/2 with mutual TLS; every \
            replica serves it).
            """)
    var destinationPort = 8086

    @Option(help: "Extra DNS name for the destination service's serving certificate (repeatable).")
    var destinationDNSName: [String] = []

    @Option(help: "Port of the proxy injector (mutating admission webhook, HTTPS, POST /inject).")
    var injectorPort = 8443

    @Option(help: "Extra DNS name for the proxy injector's serving certificate (repeatable).")
    var injectorDNSName: [String] = []

    @Option(
        help: """
            failurePolicy of the injector's webhook: Ignore (a down injector never blocks pod creation; such pods \
            are reported as ProxyNotInjected Warning Events) or Fail (HA installs).
            """)
    var injectorFailurePolicy = "Ignore"

    @Option(
        help: """
            Register the webhook with this https URL instead of the apus-injector Service (controllers running \
            outside the cluster).
            """)
    var injectorWebhookURL: String?

    @Option(help: "Image of the injected proxy (without the tag).")
    var proxyImage = InjectorDefaults().proxyImage

    @Option(help: "Tag of the injected proxy image (and the linkerd.io/proxy-version annotation).")
    var proxyVersion = ApusVersion.current

    @Option(help: "imagePullPolicy of the injected containers: Always, IfNotPresent or Never.")
    var proxyImagePullPolicy = "IfNotPresent"

    @Option(help: "Log level of injected proxies (config.linkerd.io/proxy-log-level overrides it per workload).")
    var proxyLogLevel = InjectorDefaults().logLevel

    @Option(help: "Lifetime of issued proxy certificates, as a Go duration.")
    var identityIssuanceLifetime = "24h"

    @Option(help: "Clock skew allowed on both ends of an issued certificate's validity, as a Go duration.")
    var identityClockSkewAllowance = "20s"

    @Option(
        help: """
            Read the trust roots and issuer from files in this folder (ca-bundle.crt, issuer.crt, issuer.key, as \
            `apus identity generate` writes them) instead of the Secret and ConfigMap; reloaded when they change.
            """)
    var identityIssuerDirectory: String?

    @Option(help: "Extra DNS name for the identity service's serving certificate (repeatable).")
    var identityDNSName: [String] = []

    @Option(help: "Seconds a standby waits after the leader's last renewal before taking over.")
    var leaseDurationSeconds = 15

    @Option(help: "Seconds the leader keeps retrying a failed renewal before it steps down (< lease duration).")
    var renewDeadlineSeconds = 10

    @Option(help: "Seconds between leader election attempts and renewals.")
    var retryPeriodSeconds = 2

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    @Option(
        help: ArgumentHelp(
            "Local mode: run a whole meshed cluster on this machine from the manifests in DIR (watched for changes).",
            valueName: "DIR"))
    var local: String?

    @Option(help: "Local mode's state directory: generated CA, API server token, kubeconfig, per-pod files.")
    var stateDir = ".apus"

    @Option(help: "Local mode's first pod address (pods get 127.0.N.M addresses upwards from it).")
    var localFirstPodAddress = "127.0.1.1"

    mutating func validate() throws {
        for (flag, value) in [
            ("--identity-issuance-lifetime", identityIssuanceLifetime),
            ("--identity-clock-skew-allowance", identityClockSkewAllowance),
        ] {
            do {
                let duration = try GoDuration(parsing: value)
                guard duration.nanoseconds >= 0 else { throw ValidationError("\(flag) must not be negative") }
            } catch let error as GoDurationError {
                throw ValidationError("\(flag): \(error)")
            }
        }
        guard (1...65535).contains(identityPort) else { throw ValidationError("--identity-port must be 1-65535") }
        guard (1...65535).contains(destinationPort) else {
            throw ValidationError("--destination-port must be 1-65535")
        }
        guard (1...65535).contains(injectorPort) else { throw ValidationError("--injector-port must be 1-65535") }
        guard Set([destinationPort, identityPort, adminPort, injectorPort]).count == 4 else {
            throw ValidationError(
                "--admin-port, --identity-port, --destination-port and --injector-port must all differ")
        }
        guard ["Ignore", "Fail"].contains(injectorFailurePolicy) else {
            throw ValidationError("--injector-failure-policy must be Ignore or Fail")
        }
        guard ["Always", "IfNotPresent", "Never"].contains(proxyImagePullPolicy) else {
            throw ValidationError("--proxy-image-pull-policy must be Always, IfNotPresent or Never")
        }
        if let injectorWebhookURL {
            guard let url = URLComponents(string: injectorWebhookURL), url.scheme == "https", url.host != nil else {
                throw ValidationError("--injector-webhook-url must be an https URL")
            }
        }
        guard retryPeriodSeconds > 0, renewDeadlineSeconds > retryPeriodSeconds,
            leaseDurationSeconds > renewDeadlineSeconds
        else {
            throw ValidationError(
                "leader election needs 0 < --retry-period-seconds < --renew-deadline-seconds < --lease-duration-seconds"
            )
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        // Every component records into one registry, exposed on the admin port.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        if let local {
            try await runLocal(manifests: local, registry: registry)
            return
        }
        let configuration: ClientConfiguration
        do {
            if let kubeconfig {
                configuration = try KubeConfig.load(path: kubeconfig).configuration(context: context)
            } else {
                configuration = try ClientConfiguration.load(context: context)
            }
        } catch {
            throw ValidationError("cannot configure the Kubernetes client: \(error)")
        }
        let client = try KubernetesClient(configuration: configuration)
        var options = ControllerOptions(
            controlNamespace: controlNamespace, leaderElection: leaderElect,
            leaseDuration: .seconds(leaseDurationSeconds), renewDeadline: .seconds(renewDeadlineSeconds),
            retryPeriod: .seconds(retryPeriodSeconds))
        if let replicaName { options.identity = replicaName }
        let manager = ControllerManager(client: client, options: options)
        // Status conditions on ServiceProfiles and HTTPRoutes: only the leader writes them.
        let statuses = try StatusReconcilers(manager: manager, clusterDomain: clusterDomain)
        manager.addLeaderComponent { manager in await statuses.runAsLeader(manager) }
        let identity = try makeIdentityService(client: client, events: manager.events)
        // Destination: every replica indexes the caches and serves proxies; its serving certificate comes from
        // the identity CA (a bootstrap certificate nobody trusts until the issuer is loaded).
        let indexes = try DestinationIndexes(
            manager: manager,
            configuration: DestinationConfiguration(
                controlNamespace: controlNamespace, trustDomain: trustDomain, clusterDomain: clusterDomain))
        let destination = DestinationServer(
            indexes: indexes, configuration: DestinationServer.Configuration(port: destinationPort),
            certificates: ServingCertificates(
                issuer: identity.issuer,
                configuration: DestinationServer.servingConfiguration(
                    controlNamespace: controlNamespace, trustDomain: trustDomain, dnsNames: destinationDNSName),
                logger: Logger(label: "apus.destination")))
        // Proxy injection: every replica serves the webhook (the API server may call any of them); the leader
        // keeps its registration's caBundle current and reports pods that were created without the proxy.
        let injectorDefaults = InjectorDefaults(
            proxyImage: proxyImage, proxyVersion: proxyVersion, imagePullPolicy: proxyImagePullPolicy,
            logLevel: proxyLogLevel, controlPlaneNamespace: controlNamespace, trustDomain: trustDomain,
            clusterDomain: clusterDomain)
        let injector = InjectorWebhook(
            manager: manager, defaults: injectorDefaults,
            certificates: ServingCertificates(
                issuer: identity.issuer,
                configuration: InjectorWebhook.servingConfiguration(
                    controlNamespace: controlNamespace, trustDomain: trustDomain, clusterDomain: clusterDomain,
                    dnsNames: injectorDNSName),
                logger: Logger(label: "apus.injector")),
            configuration: InjectorWebhook.Configuration(port: injectorPort))
        let webhookConfiguration = InjectorWebhookReconciler(
            client: client, issuer: identity.issuer,
            options: InjectorWebhookReconciler.Options(
                controlNamespace: controlNamespace, failurePolicy: injectorFailurePolicy, url: injectorWebhookURL))
        manager.addLeaderComponent { manager in await webhookConfiguration.runAsLeader(manager) }
        let uninjected = try UninjectedPodReporter(manager: manager, defaults: injectorDefaults)
        manager.addLeaderComponent { manager in await uninjected.runAsLeader(manager) }
        let admin = AdminServer(
            port: adminPort, registry: registry,
            readiness: {
                manager.hasSynced ? .ready : .notReady(reason: "informer caches have not synced")
            })
        // Started in this order, shut down in reverse: the listeners close first, the caches last.
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(service: admin, successTerminationBehavior: .gracefullyShutdownGroup),
                    .init(service: manager, successTerminationBehavior: .gracefullyShutdownGroup),
                    .init(service: identity, successTerminationBehavior: .gracefullyShutdownGroup),
                    .init(service: indexes, successTerminationBehavior: .gracefullyShutdownGroup),
                    .init(service: destination, successTerminationBehavior: .gracefullyShutdownGroup),
                    .init(service: injector, successTerminationBehavior: .gracefullyShutdownGroup),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: Logger(label: "apus.controller.lifecycle")))
        do {
            try await group.run()
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()
    }

    /// The identity CA: every replica serves Certify (it needs no leadership), reading its issuer from the
    /// Secret/ConfigMap or from files, and validating proxies' tokens with TokenReviews.
    private func makeIdentityService(client: KubernetesClient, events: EventRecorder) throws -> IdentityService {
        let options = IdentityServiceOptions(
            controlNamespace: controlNamespace, trustDomain: trustDomain, port: identityPort,
            servingDNSNames: identityDNSName,
            leafLifetime: try GoDuration(parsing: identityIssuanceLifetime).seconds,
            clockSkew: try GoDuration(parsing: identityClockSkewAllowance).seconds)
        let source: any IssuerSource =
            if let identityIssuerDirectory {
                FileIssuerSource(directory: identityIssuerDirectory)
            } else {
                KubernetesIssuerSource(client: client, namespace: controlNamespace, events: events)
            }
        let validator = TokenReviewValidator(
            client: client, controlNamespace: controlNamespace, trustDomain: trustDomain)
        return IdentityService(options: options, source: source, validator: validator, events: events)
    }
}
