import ApusCore
import ApusProxy
import Logging
import ServiceLifecycle

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// apus-proxy: configuration from the environment (APUS_PROXY_* / LINKERD2_PROXY_*), logging through the runtime
// log-level controller the admin server changes, and the proxy under a ServiceGroup so SIGTERM/SIGINT start a
// graceful drain bounded by APUS_PROXY_SHUTDOWN_GRACE_PERIOD.
// `apus-proxy await` (the injector's postStart hook) waits until a proxy's /ready answers 200.
let arguments = CommandLine.arguments.dropFirst()
if arguments.first == "await" {
    exit(ProxyAwait.run(Array(arguments.dropFirst())))
}
if arguments.contains("--version") || arguments.contains("version") {
    print("apus-proxy \(ApusVersion.current)")
    exit(0)
}

let configuration: ProxyConfiguration
do {
    configuration = try ProxyConfiguration.fromEnvironment(ProcessInfo.processInfo.environment)
} catch {
    writeStandardError("apus-proxy: invalid configuration: \(error)\n")
    exit(2)
}

let logLevel = LogLevelController(configuration.logFilter)
LoggingSystem.bootstrap(ProxyLogHandler.factory(controller: logLevel, format: configuration.logFormat))
let logger = Logger(label: "apus.proxy")

do {
    let proxy = try ProxyServer(configuration: configuration, logLevel: logLevel, logger: logger)
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(
            services: [.init(service: proxy, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
    try await group.run()
} catch {
    logger.critical("apus-proxy failed: \(error)")
    exit(1)
}
