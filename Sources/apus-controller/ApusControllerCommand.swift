import ApusController
import ApusCore
import ArgumentParser
import KubernetesClient
import Logging
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

    @Option(help: "Namespace the control plane runs in.")
    var controlNamespace = "apus"

    @Flag(inversion: .prefixedNo, help: "Elect one active replica through a Lease.")
    var leaderElect = true

    @Option(help: "Identity of this replica in the Lease (default: $POD_NAME or host-pid).")
    var identity: String?

    @Option(help: "Seconds a standby waits after the leader's last renewal before taking over.")
    var leaseDurationSeconds = 15

    @Option(help: "Seconds the leader keeps retrying a failed renewal before it steps down (< lease duration).")
    var renewDeadlineSeconds = 10

    @Option(help: "Seconds between leader election attempts and renewals.")
    var retryPeriodSeconds = 2

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    mutating func validate() throws {
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
        if let identity { options.identity = identity }
        let manager = ControllerManager(client: client, options: options)
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: manager, successTerminationBehavior: .gracefullyShutdownGroup)],
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
}
