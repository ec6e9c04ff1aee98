import ApusController
import ApusCore
import ArgumentParser
import Foundation
import KubernetesClient
import Logging

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

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    mutating func validate() throws {
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
        var options = ControllerOptions(controlNamespace: controlNamespace, leaderElection: leaderElect)
        if let identity { options.identity = identity }
        let manager = ControllerManager(client: client, options: options)

        let run = Task { await manager.run() }
        let signals = installSignalHandlers { run.cancel() }
        await run.value
        signals.forEach { $0.cancel() }
        try await client.shutdown()
    }
}

/// Cancels the manager on SIGINT/SIGTERM so leases are released and connections closed before exit.
private func installSignalHandlers(_ onSignal: @escaping @Sendable () -> Void) -> [any DispatchSourceSignal] {
    [SIGINT, SIGTERM].map { number in
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler(handler: onSignal)
        source.resume()
        return source
    }
}
