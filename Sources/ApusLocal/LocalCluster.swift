import ApusController
import ApusCore
import ApusIdentity
import Foundation
import KubernetesClient
import KubernetesTestServer
import Logging
import NIOPosix
import ServiceLifecycle

/// Settings of local mode, mirroring `apus-controller --local`.
public struct LocalModeOptions: Sendable {
    /// The manifests folder (`--local DIR`).
    public var manifestDirectory: String
    /// Generated CA, API server token, kubeconfig and per-pod files (`--state-dir`, default `.apus`).
    public var stateDirectory: String
    /// Directory of the apus binaries, put first on every process's PATH (nil: PATH as inherited).
    public var binaryDirectory: String?
    public var controlNamespace: String
    public var trustDomain: String
    public var clusterDomain: String
    /// Ports of the controller's services, all on 127.0.0.1 (pods own the other loopback addresses); 0 picks one.
    public var identityPort: Int
    public var destinationPort: Int
    /// Spawn `apus-proxy` beside injected pods.
    public var spawnProxies: Bool
    /// The proxy binary: a name looked up on the pods' PATH, or a path.
    public var proxyExecutable: String
    public var proxyLogLevel: String
    /// Extra environment for every spawned proxy.
    public var proxyEnvironment: [String: String]
    public var manifestPollInterval: Duration
    /// Where process output goes (default: stdout, prefixed `[ns/pod/container]`).
    public var logSink: ProcessLogSink
    /// Kill children when the controller dies (`PR_SET_PDEATHSIG`). Off, pods outlive a crashed controller and the
    /// next one on the same state directory adopts them (see ``LocalKubelet``); `apus-controller --local` turns
    /// it off, in-process embedders (tests) keep it on so a crashed test runner leaves nothing behind.
    public var killChildrenOnExit: Bool
    /// The first pod address (see ``LocalKubelet/Configuration/firstPodAddress``).
    public var firstPodAddress: String

    public init(
        manifestDirectory: String, stateDirectory: String = ".apus", binaryDirectory: String? = nil,
        controlNamespace: String = "apus", trustDomain: String = "cluster.local",
        clusterDomain: String = "cluster.local",
        identityPort: Int = 8080, destinationPort: Int = 8086, spawnProxies: Bool = true,
        proxyLogLevel: String = "info",
        proxyEnvironment: [String: String] = [:], manifestPollInterval: Duration = .milliseconds(250),
        logSink: @escaping ProcessLogSink = LocalCluster.printLine, killChildrenOnExit: Bool = true,
        firstPodAddress: String = "127.0.1.1", proxyExecutable: String = "apus-proxy"
    ) {
        self.manifestDirectory = manifestDirectory
        self.stateDirectory = stateDirectory
        self.binaryDirectory = binaryDirectory
        self.controlNamespace = controlNamespace
        self.trustDomain = trustDomain
        self.clusterDomain = clusterDomain
        self.identityPort = identityPort
        self.destinationPort = destinationPort
        self.spawnProxies = spawnProxies
        self.proxyLogLevel = proxyLogLevel
        self.proxyEnvironment = proxyEnvironment
        self.manifestPollInterval = manifestPollInterval
        self.logSink = logSink
        self.killChildrenOnExit = killChildrenOnExit
        self.firstPodAddress = firstPodAddress
        self.proxyExecutable = proxyExecutable
    }
}

/// Local mode: a whole meshed cluster in one process tree, with no second control plane.
///
/// ```
///   DIR/*.yaml ──ManifestSync──► embedded API server (KubernetesTestServer, https://127.0.0.1:<port>)
///                                   ▲        │ list/watch (KubernetesClient, like any cluster)
///        EndpointSliceController ───┤        ├──► ControllerManager ─► DestinationIndexes ─► DestinationServer
///        LocalKubelet (Pod status) ─┘        │                         IdentityService (LocalTokenValidator)
///              │                             └──► StatusReconcilers
///              └─ processes: app containers + apus-proxy on 127.0.N.M
/// ```
///
/// The controller's components are the cluster ones, unchanged, talking to the embedded API server through
/// `KubernetesClient`; local mode only adds what a cluster's other parts would do: `kubectl apply`
/// (``ManifestSync``), kube-controller-manager's EndpointSlice controller (``EndpointSliceController``) and the
/// kubelet (``LocalKubelet``). The identity service validates local tokens (``LocalTokenValidator``) the kubelet
/// mints for each proxy, with an issuer generated once into the state directory (`identity/`), so proxies' trust
/// anchors survive controller restarts. `kubeconfig` in the state directory points at the API server, for
/// `kubectl --kubeconfig .apus/kubeconfig get pods` and the `apus` CLI.
public final class LocalCluster: Sendable {
    public let options: LocalModeOptions
    public let server: KubernetesTestServer
    public let client: KubernetesClient
    public let kubeconfigPath: String
    public let trustAnchorsPath: String
    public let manager: ControllerManager
    public let identity: IdentityService
    public let indexes: DestinationIndexes
    public let destination: DestinationServer
    public let statuses: StatusReconcilers
    public let manifests: ManifestSync
    public let endpointSlices: EndpointSliceController
    public let kubelet: LocalKubelet
    public let launcher: ProcessLauncher
    public let tokens: LocalTokenValidator
    /// The local components' own clients: the embedded API server speaks HTTP/1.1 only, where every watch holds
    /// one of a client's 8 pooled connections; sharing the manager's client would leave no connection for writes.
    private let componentClients: [KubernetesClient]

    /// Default process log sink: one line per output line on stdout, `[ns/pod/container] text`.
    public static let printLine: ProcessLogSink = { source, line in
        let text = "[\(source)] \(line)\n"
        FileHandle.standardOutput.write(Data(text.utf8))
    }

    /// Prepares the state directory, starts the embedded API server and builds every component (not yet
    /// running: run ``services`` in a `ServiceGroup`, then call ``shutdown()``).
    public static func start(_ options: LocalModeOptions, logger: Logger = Logger(label: "apus.local")) async throws
        -> LocalCluster
    {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: options.manifestDirectory, isDirectory: &isDirectory),
            isDirectory.boolValue
        else {
            throw LocalModeError("the manifests folder \(options.manifestDirectory) does not exist")
        }
        let state = try LocalStateDirectory(path: options.stateDirectory)
        try state.ensureTrustRoots(controlNamespace: options.controlNamespace, trustDomain: options.trustDomain)
        let token = try state.apiServerToken()

        var serverOptions = KubernetesTestServer.Options()
        serverOptions.bearerTokens = [token: "apus-local-admin"]
        serverOptions.autoCreateNamespaces = true
        let server = try await KubernetesTestServer.start(serverOptions)
        for type in LocalKinds.all where type.group == "policy.linkerd.io" || type.version == "v1beta1" {
            server.registerResource(type, hasStatusSubresource: type.kind == "HTTPRoute")
        }
        let kubeconfig = server.kubeconfig()
        try state.write(kubeconfig, to: "kubeconfig", mode: 0o600)
        for namespace in ["default", options.controlNamespace] {
            try server.seed(Namespace(metadata: ObjectMeta(name: namespace)))
        }
        let configuration = try KubeConfig(yaml: kubeconfig).configuration()
        let client = try KubernetesClient(configuration: configuration)
        do {
            return try LocalCluster(options: options, state: state, server: server, client: client, logger: logger)
        } catch {
            try? await client.shutdown()
            try? await server.shutdown()
            throw error
        }
    }

    private init(
        options: LocalModeOptions, state: LocalStateDirectory, server: KubernetesTestServer, client: KubernetesClient,
        logger: Logger
    ) throws {
        self.options = options
        self.server = server
        self.client = client
        self.kubeconfigPath = state.url("kubeconfig").path
        self.trustAnchorsPath = state.url("identity/ca-bundle.crt").path
        let manager = ControllerManager(
            client: client,
            options: ControllerOptions(controlNamespace: options.controlNamespace, leaderElection: false))
        self.manager = manager
        let statuses = try StatusReconcilers(manager: manager, clusterDomain: options.clusterDomain)
        manager.addLeaderComponent { manager in await statuses.runAsLeader(manager) }
        self.statuses = statuses
        let tokens = LocalTokenValidator()
        self.tokens = tokens
        let identity = IdentityService(
            options: IdentityServiceOptions(
                controlNamespace: options.controlNamespace, trustDomain: options.trustDomain, host: "127.0.0.1",
                port: options.identityPort, servingDNSNames: ["localhost"], servingIPAddresses: ["127.0.0.1"]),
            source: FileIssuerSource(directory: state.url("identity").path), validator: tokens)
        self.identity = identity
        let indexes = try DestinationIndexes(
            manager: manager,
            configuration: DestinationConfiguration(
                controlNamespace: options.controlNamespace, trustDomain: options.trustDomain,
                clusterDomain: options.clusterDomain))
        self.indexes = indexes
        let servingConfiguration = DestinationServer.servingConfiguration(
            controlNamespace: options.controlNamespace, trustDomain: options.trustDomain, dnsNames: ["localhost"],
            ipAddresses: ["127.0.0.1"])
        let destination = DestinationServer(
            indexes: indexes,
            configuration: DestinationServer.Configuration(host: "127.0.0.1", port: options.destinationPort),
            certificates: ServingCertificates(
                issuer: identity.issuer, configuration: servingConfiguration,
                logger: Logger(label: "apus.destination")))
        self.destination = destination
        let configuration = client.configuration
        let componentClients = try (0..<3).map { _ in try KubernetesClient(configuration: configuration) }
        self.componentClients = componentClients
        let injection = LocalInjection(
            controlNamespace: options.controlNamespace, trustDomain: options.trustDomain,
            clusterDomain: options.clusterDomain)
        let manifests = ManifestSync(
            client: componentClients[0],
            options: ManifestSync.Options(
                directory: options.manifestDirectory, pollInterval: options.manifestPollInterval),
            injection: injection)
        self.manifests = manifests
        self.endpointSlices = try EndpointSliceController(client: componentClients[1])
        let launcher = ProcessLauncher(killOnParentDeath: options.killChildrenOnExit, sink: options.logSink)
        self.launcher = launcher
        let anchors = state.url("identity/ca-bundle.crt").path
        let tapTokenFile = try state.ensureTapToken()
        let proxySettings: @Sendable () async -> LocalProxySettings? = {
            guard options.spawnProxies else { return nil }
            do {
                let identityPort = try await identity.waitUntilListening()
                let destinationPort = try await destination.port()
                return LocalProxySettings(
                    executable: options.proxyExecutable, identityAddress: "127.0.0.1:\(identityPort)",
                    identityName: identity.serverIdentity.description,
                    destinationAddress: "127.0.0.1:\(destinationPort)",
                    destinationName: servingConfiguration.identity.description, trustAnchorsFile: anchors,
                    controlNamespace: options.controlNamespace, trustDomain: options.trustDomain,
                    clusterDomain: options.clusterDomain, tokens: tokens, logLevel: options.proxyLogLevel,
                    extraEnvironment: options.proxyEnvironment, tapTokenFile: tapTokenFile)
            } catch {
                logger.error("the identity or destination service did not start; pods run without proxies: \(error)")
                return nil
            }
        }
        self.kubelet = LocalKubelet(
            client: componentClients[2],
            configuration: LocalKubelet.Configuration(
                binaryDirectory: options.binaryDirectory, stateDirectory: state.root.path,
                firstPodAddress: options.firstPodAddress),
            launcher: launcher, injection: injection, proxySettings: proxySettings,
            initialSync: { await manifests.waitUntilFirstPass() })
    }

    /// The services in start order (shut down in reverse: the kubelet stops its processes first, the caches last).
    public var services: [ServiceGroupConfiguration.ServiceConfiguration] {
        [
            .init(service: manager, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: identity, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: indexes, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: destination, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: endpointSlices, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: manifests, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: kubelet, successTerminationBehavior: .gracefullyShutdownGroup),
        ]
    }

    /// Stops the API server, the client and the launcher thread (after the services have stopped).
    public func shutdown() async {
        for component in componentClients { try? await component.shutdown() }
        try? await client.shutdown()
        try? await server.shutdown()
        await launcher.shutdown()
    }

    /// What to tell the user at start: where things are.
    public func summary(adminPort: Int?) async -> String {
        var lines = [
            "apus local mode: manifests from \(options.manifestDirectory)",
            "  API server:    \(server.baseURL)",
            "  kubectl:       kubectl --kubeconfig \(kubeconfigPath) get pods -A",
            "  trust anchors: \(trustAnchorsPath)",
        ]
        if let port = try? await identity.waitUntilListening() { lines.append("  identity:      127.0.0.1:\(port)") }
        if let port = try? await destination.port() { lines.append("  destination:   127.0.0.1:\(port)") }
        if let adminPort { lines.append("  controller:    http://127.0.0.1:\(adminPort)/metrics") }
        lines.append("  proxy metrics: http://<pod address>:4191/metrics (addresses: kubectl get pods -A -o wide)")
        lines.append("  tap:           apus tap deploy/<name> -n <namespace> --kubeconfig \(kubeconfigPath)")
        return lines.joined(separator: "\n")
    }
}

/// A local mode setup problem.
public struct LocalModeError: Error, Hashable, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
