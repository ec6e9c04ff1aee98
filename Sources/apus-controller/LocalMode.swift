import ApusController
import ApusLocal
import ArgumentParser
import Foundation
import Logging
import Prometheus
import ServiceLifecycle

extension ApusControllerCommand {
    /// `--local DIR`: the embedded API server as the cluster, the same controller components against it, and the
    /// local kubelet running the pods (see `LocalCluster`).
    func runLocal(manifests: String, registry: PrometheusCollectorRegistry) async throws {
        let cluster: LocalCluster
        do {
            cluster = try await LocalCluster.start(
                LocalModeOptions(
                    manifestDirectory: manifests, stateDirectory: stateDir,
                    binaryDirectory: Self.binaryDirectory(), controlNamespace: controlNamespace,
                    trustDomain: trustDomain, clusterDomain: clusterDomain, identityPort: identityPort,
                    destinationPort: destinationPort, proxyLogLevel: logLevel == "debug" ? "debug" : "info",
                    // Pods outlive a crashed controller; the next one adopts them (SIGINT/SIGTERM still stop them).
                    killChildrenOnExit: false, firstPodAddress: localFirstPodAddress))
        } catch {
            throw ValidationError("cannot start local mode: \(error)")
        }
        let admin = AdminServer(
            host: "127.0.0.1", port: adminPort, registry: registry,
            readiness: {
                cluster.manager.hasSynced ? .ready : .notReady(reason: "informer caches have not synced")
            })
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: admin, successTerminationBehavior: .gracefullyShutdownGroup)]
                    + cluster.services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: Logger(label: "apus.controller.lifecycle")))
        let summary = Task {
            let text = await cluster.summary(adminPort: adminPort)
            FileHandle.standardError.write(Data((text + "\n").utf8))
        }
        do {
            try await group.run()
        } catch {
            summary.cancel()
            await cluster.shutdown()
            throw error
        }
        summary.cancel()
        await cluster.shutdown()
    }

    /// The folder of this executable (where `swift build` also puts `apus-proxy` and `apus-demo`).
    static func binaryDirectory() -> String? {
        let link =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments.first.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        return link.map { URL(fileURLWithPath: $0).deletingLastPathComponent().path }
    }
}
