import ApusController
import ApusCore
import ApusIdentity
import Foundation
import KubernetesClient
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// Where the proxies local mode spawns find the control plane, and how they prove who they are.
public struct LocalProxySettings: Sendable {
    /// `apus-proxy`, looked up on the pod's `PATH` (which starts with the kubelet's binary directory).
    public var executable: String
    public var identityAddress: String
    public var identityName: String
    public var destinationAddress: String
    public var destinationName: String
    /// The trust anchors bundle (a path: `APUS_PROXY_IDENTITY_TRUST_ANCHORS_FILE`).
    public var trustAnchorsFile: String
    public var controlNamespace: String
    public var trustDomain: String
    public var clusterDomain: String
    /// Mints each proxy's Certify token; the identity service validates with the same instance.
    public var tokens: LocalTokenValidator
    public var logLevel: String
    /// Extra `APUS_PROXY_*` settings for every proxy (tests, debugging).
    public var extraEnvironment: [String: String]
    /// The bearer token file every proxy accepts for tap (`APUS_PROXY_TAP_TOKEN_FILE`; `.apus/tap-token`), nil
    /// for no token tap. Pods with `config.linkerd.io/disable-tap: "true"` (pod or namespace) never get it.
    public var tapTokenFile: String?

    public init(
        executable: String = "apus-proxy", identityAddress: String, identityName: String, destinationAddress: String,
        destinationName: String, trustAnchorsFile: String, controlNamespace: String = "apus",
        trustDomain: String = "cluster.local", clusterDomain: String = "cluster.local", tokens: LocalTokenValidator,
        logLevel: String = "info", extraEnvironment: [String: String] = [:], tapTokenFile: String? = nil
    ) {
        self.executable = executable
        self.identityAddress = identityAddress
        self.identityName = identityName
        self.destinationAddress = destinationAddress
        self.destinationName = destinationName
        self.trustAnchorsFile = trustAnchorsFile
        self.controlNamespace = controlNamespace
        self.trustDomain = trustDomain
        self.clusterDomain = clusterDomain
        self.tokens = tokens
        self.logLevel = logLevel
        self.extraEnvironment = extraEnvironment
        self.tapTokenFile = tapTokenFile
    }
}

/// The node agent of local mode: runs every Pod of the embedded API server as local processes.
///
/// ```
///  Informer<Pod> ──► LocalKubelet ──► PodWorker (one per pod, address 127.0.N.M)
///                        │               ├─ container processes (own process groups, restart with backoff)
///                        │               ├─ apus-proxy beside injected pods
///                        │               └─ readiness probes ──► Pod status (through /status)
///  Informer<Namespace> ──┘ (injection decision)
/// ```
///
/// **Addresses.** Each pod gets a loopback address of its own from 127.0.1.1 upwards (never 127.0.0.x, where the
/// controller listens), kept while the pod exists; `POD_IP` tells the processes which address to bind.
///
/// **Processes.** A container's `command` + `args` (with `$(VAR)` expansion) run with the container's `env`, plus
/// `POD_IP`, `POD_NAME`, `POD_NAMESPACE`, and a `PATH` that starts with ``Configuration/binaryDirectory`` so
/// `apus-demo` and `apus-proxy` are found. Output lines are prefixed `[ns/pod/container]`. An exited process is
/// restarted per the pod's `restartPolicy` with backoff 1 s, 2 s, … 30 s (reset after 10 s of running); the
/// pod is not ready meanwhile. A spec change restarts the pod's processes; a deleted pod's processes are stopped
/// (SIGTERM to the process group, SIGKILL after the grace period).
///
/// **No orphans, and surviving a controller crash.** On SIGINT/SIGTERM the kubelet stops each pod's process
/// groups (so a shell's own children go too) before the controller exits. What a controller killed outright
/// leaves behind depends on ``ProcessLauncher``'s `killOnParentDeath`: with it (`PR_SET_PDEATHSIG`), the kernel
/// kills every direct child; without it (the `apus-controller --local` default), the pods keep running and
/// serving on their last configuration. Each pod's record in the state directory (``PodRecord``: pids with
/// start times, address, spec, proxy token) lets the next controller on the same state directory adopt them:
/// once the manifests have been applied, a pod that still exists with the same spec keeps its processes,
/// address and proxy token (re-registered with the identity service); the processes of pods that no longer
/// exist, or whose spec changed, are stopped. Output goes to `<container>.log` beside the record, so a process
/// outliving its controller keeps logging, and the next controller follows the same file.
///
/// **Readiness.** A container is ready when its `readinessProbe` (httpGet or tcpSocket on the pod address,
/// every `periodSeconds`, default 1 s) succeeds, or, without a probe, while its process runs. A spawned proxy must
/// also answer `GET /ready` on `<podIP>:4191`. The pod's Ready and ContainersReady conditions follow.
public final class LocalKubelet: ServiceLifecycle.Service, Sendable {
    public struct Configuration: Sendable {
        /// Prepended to `PATH` for every process (the directory of the running apus binaries).
        public var binaryDirectory: String?
        /// Per-pod files (proxy tokens, identity directories) go under `<stateDirectory>/pods/`.
        public var stateDirectory: String
        /// Inherited by every process before the pod's own variables (PATH, HOME, LANG …).
        public var baseEnvironment: [String: String]
        /// Working directory of the processes; nil: the controller's.
        public var workingDirectory: String?
        /// Grace between SIGTERM and SIGKILL when the pod does not set `terminationGracePeriodSeconds`.
        public var defaultGracePeriod: Duration
        /// Upper bound on any grace period, so local shutdowns stay quick.
        public var maximumGracePeriod: Duration
        public var restartBackoff: Duration
        public var maximumRestartBackoff: Duration
        /// Probe period when the probe sets none.
        public var probePeriod: Duration
        /// The first pod address handed out (127.0.1.1 by default; tests running several clusters use others).
        public var firstPodAddress: String

        public init(
            binaryDirectory: String?, stateDirectory: String,
            baseEnvironment: [String: String] = LocalKubelet.inheritedEnvironment(), workingDirectory: String? = nil,
            defaultGracePeriod: Duration = .seconds(5), maximumGracePeriod: Duration = .seconds(10),
            restartBackoff: Duration = .seconds(1), maximumRestartBackoff: Duration = .seconds(30),
            probePeriod: Duration = .seconds(1), firstPodAddress: String = "127.0.1.1"
        ) {
            self.binaryDirectory = binaryDirectory
            self.stateDirectory = stateDirectory
            self.baseEnvironment = baseEnvironment
            self.workingDirectory = workingDirectory
            self.defaultGracePeriod = defaultGracePeriod
            self.maximumGracePeriod = maximumGracePeriod
            self.restartBackoff = restartBackoff
            self.maximumRestartBackoff = maximumRestartBackoff
            self.probePeriod = probePeriod
            self.firstPodAddress = firstPodAddress
        }
    }

    /// The variables of the controller's own environment that processes inherit.
    public static func inheritedEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment
    ) -> [String: String] {
        let kept = ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "TZ", "TERM"]
        var result: [String: String] = [:]
        for key in kept { if let value = environment[key] { result[key] = value } }
        if result["PATH"] == nil { result["PATH"] = "/usr/local/bin:/usr/bin:/bin" }
        return result
    }

    public let configuration: Configuration
    let client: KubernetesClient
    let launcher: ProcessLauncher
    let injection: LocalInjection
    private let proxySettings: @Sendable () async -> LocalProxySettings?
    let pods: Informer<Pod>
    let namespaces: Informer<Namespace>
    let addresses: AddressPool
    private let workers = NIOLockedValueBox<[ObjectKey: PodWorker]>([:])
    let records: PodRecordStore
    /// Records of an earlier controller's pods not yet claimed by a pod of this one.
    private let adoptable: NIOLockedValueBox<[ObjectKey: PodRecord]>
    private let initialSync: @Sendable () async -> Void
    let logger: Logger

    /// - Parameters:
    ///   - proxySettings: awaited once before the first pod starts (the controller's identity and destination
    ///     ports are known only once they listen); nil spawns no proxies.
    ///   - initialSync: returns once every pod that should exist is in the API server (the manifests' first
    ///     pass); only then are an earlier controller's leftovers (pods gone meanwhile) stopped.
    public init(
        client: KubernetesClient, configuration: Configuration, launcher: ProcessLauncher,
        injection: LocalInjection = LocalInjection(),
        proxySettings: @escaping @Sendable () async -> LocalProxySettings? = { nil },
        initialSync: @escaping @Sendable () async -> Void = {},
        logger: Logger = Logger(label: "apus.local.kubelet")
    ) {
        self.client = client
        self.configuration = configuration
        self.addresses = AddressPool(first: configuration.firstPodAddress)
        self.launcher = launcher
        self.injection = injection
        self.proxySettings = proxySettings
        self.pods = Informer(client: client, Pod.self)
        self.namespaces = Informer(client: client, Namespace.self)
        self.logger = logger
        self.initialSync = initialSync
        let records = PodRecordStore(stateDirectory: configuration.stateDirectory)
        self.records = records
        let found = records.loadAll(logger: logger)
        for (key, record) in found { addresses.reserve(key, address: record.address) }
        self.adoptable = NIOLockedValueBox(found)
        if !found.isEmpty { logger.info("found \(found.count) pod record(s) of an earlier controller to adopt") }
    }

    /// The address a running pod was given.
    public func address(of pod: ObjectKey) -> String? { addresses.address(of: pod) }

    func hasWorker(for pod: ObjectKey) -> Bool { workers.withLockedValue { $0[pod] != nil } }

    /// The pid of a container's current process (`linkerd-proxy` for a spawned proxy).
    public func processID(pod: ObjectKey, container: String) async -> Int32? {
        guard let worker = workers.withLockedValue({ $0[pod] }) else { return nil }
        return await worker.processID(container: container)
    }

    public func run() async {
        let events: AsyncStream<InformerEvent<Pod>>
        do {
            events = try pods.events()
        } catch {
            logger.error("cannot watch pods: \(error)")
            return
        }
        await withDiscardingTaskGroup { group in
            group.addTask { await cancelWhenGracefulShutdown { await self.pods.run() } }
            group.addTask { await cancelWhenGracefulShutdown { await self.namespaces.run() } }
            group.addTask { await cancelWhenGracefulShutdown { await self.stopLeftovers() } }
            group.addTask {
                await cancelWhenGracefulShutdown {
                    await self.namespaces.waitUntilSynced()
                    let settings = await self.proxySettings()
                    for await event in events {
                        self.handle(event, settings: settings)
                    }
                }
                // Stopping must finish even though this task is being cancelled: run it unstructured and wait.
                await Task { await self.stopAll() }.value
            }
        }
    }

    private func handle(_ event: InformerEvent<Pod>, settings: LocalProxySettings?) {
        let pod = event.object
        let key = pod.objectKey
        switch event {
        case .deleted:
            if let worker = workers.withLockedValue({ $0.removeValue(forKey: key) }) {
                Task {
                    await worker.stop()
                    // A pod re-created under the same name meanwhile keeps the address.
                    if self.workers.withLockedValue({ $0[key] == nil }) { self.addresses.release(key) }
                }
            }
        case .added, .updated:
            if pod.metadata.deletionTimestamp != nil {
                if let worker = workers.withLockedValue({ $0.removeValue(forKey: key) }) {
                    Task { await worker.stop() }
                }
                return
            }
            let existing = workers.withLockedValue { $0[key] }
            if let existing {
                Task { await existing.update(pod) }
                return
            }
            let record = adoptable.withLockedValue { $0.removeValue(forKey: key) }
            let address = addresses.assign(key)
            let namespace = namespaces.store.get(ObjectKey(namespace: nil, name: pod.metadata.namespace ?? "default"))
            let rendered = settings == nil ? nil : injection.proxyEnvironment(pod: pod, namespace: namespace)
            let worker = PodWorker(
                pod: pod, address: address, proxy: rendered == nil ? nil : settings,
                renderedProxyEnvironment: rendered ?? [], kubelet: self, adopting: record)
            workers.withLockedValue { $0[key] = worker }
            Task { await worker.start() }
        }
    }

    /// Once the manifests are applied, stops the processes of an earlier controller's pods that no longer exist.
    private func stopLeftovers() async {
        guard adoptable.withLockedValue({ !$0.isEmpty }) else { return }
        await initialSync()
        var existing: Set<ObjectKey> = []
        while !Task.isCancelled {
            do {
                existing = Set(try await client.list(Pod.self, namespace: nil).items.map(\.objectKey))
                break
            } catch {
                logger.warning("cannot list pods to find an earlier controller's leftovers: \(error)")
                do { try await Task.sleep(for: .seconds(1)) } catch { return }
            }
        }
        let leftovers = adoptable.withLockedValue { adoptable in
            let gone = adoptable.filter { !existing.contains($0.key) }
            for key in gone.keys { adoptable[key] = nil }
            return Array(gone.values)
        }
        let grace = configuration.defaultGracePeriod
        await withDiscardingTaskGroup { group in
            for record in leftovers {
                group.addTask {
                    self.logger.info("stopping the processes of \(record.key), which no longer exists")
                    await Self.stopRecordedProcesses(record, grace: grace)
                    self.records.remove(record.key)
                    if self.workers.withLockedValue({ $0[record.key] == nil }) { self.addresses.release(record.key) }
                }
            }
        }
    }

    /// Stops the recorded processes that are still the ones recorded (same pid and start time), group by group.
    static func stopRecordedProcesses(_ record: PodRecord, grace: Duration) async {
        await withDiscardingTaskGroup { group in
            for entry in record.processes {
                guard let process = RunningProcess.adopt(pid: entry.pid, startTime: entry.startTime) else { continue }
                group.addTask { await process.stop(grace: grace) }
            }
        }
    }

    private func stopAll() async {
        let all = workers.withLockedValue { workers in
            defer { workers.removeAll() }
            return Array(workers.values)
        }
        await withDiscardingTaskGroup { group in
            for worker in all { group.addTask { await worker.stop() } }
        }
        if !all.isEmpty { logger.info("stopped \(all.count) pod(s)") }
    }
}

/// Loopback addresses for pods: from the first address (127.0.1.1) up to 127.255.255.254, skipping .0 and .255
/// host parts and never 127.0.0.x, kept per pod key while the pod lives; released addresses are reused only after
/// every fresh one was handed out.
final class AddressPool: Sendable {
    private struct State {
        var assigned: [ObjectKey: String] = [:]
        var next: UInt32
        var released: [String] = []
    }

    private let state: NIOLockedValueBox<State>

    init(first: String = "127.0.1.1") {
        let parts = first.split(separator: ".").compactMap { UInt32($0) }
        var start: UInt32 = (1 << 8) | 1
        if parts.count == 4, parts[0] == 127, parts[1...].allSatisfy({ $0 < 256 }) {
            start = max(start, (parts[1] << 16) | (parts[2] << 8) | parts[3])
        }
        state = NIOLockedValueBox(State(next: start))
    }

    func assign(_ key: ObjectKey) -> String {
        state.withLockedValue { state in
            if let address = state.assigned[key] { return address }
            let inUse = Set(state.assigned.values)
            var address: String?
            while address == nil, state.next < (1 << 24) - 1 {
                let value = state.next
                state.next += 1
                guard value & 0xff != 0, value & 0xff != 0xff else { continue }
                let candidate = "127.\(value >> 16).\((value >> 8) & 0xff).\(value & 0xff)"
                if !inUse.contains(candidate) { address = candidate }
            }
            let chosen = address ?? (state.released.isEmpty ? "127.0.1.1" : state.released.removeFirst())
            state.assigned[key] = chosen
            return chosen
        }
    }

    func address(of key: ObjectKey) -> String? { state.withLockedValue { $0.assigned[key] } }

    /// Keeps `address` for `key` (an adopted pod's), unless another pod already has it.
    func reserve(_ key: ObjectKey, address: String) {
        state.withLockedValue { state in
            guard state.assigned[key] == nil, !state.assigned.values.contains(address) else { return }
            state.assigned[key] = address
        }
    }

    func release(_ key: ObjectKey) {
        state.withLockedValue { state in
            if let address = state.assigned.removeValue(forKey: key) { state.released.append(address) }
        }
    }
}
