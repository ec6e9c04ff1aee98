import ApusCore
import ApusIdentity
import Foundation
import KubernetesClient
import Logging

/// Runs one pod: its containers' processes (and a proxy when injected), their restarts, readiness probes and the
/// pod's status. All state lives on this actor; process waits and probes suspend it without blocking others.
actor PodWorker {
    /// The name the spawned proxy goes by in statuses and log prefixes, as the injected container is named.
    static let proxyContainerName = "linkerd-proxy"
    static let proxyAdminPort = 4191

    enum State: Equatable {
        case waiting(reason: String, message: String?)
        case running(since: Date)
        case terminated(exit: ProcessExit, at: Date)
    }

    struct Runtime {
        var container: Container
        var isProxy: Bool
        var process: RunningProcess?
        var state: State = .waiting(reason: "ContainerCreating", message: nil)
        var restartCount = 0
        var ready = false
        var finished = false
        var nextProbe = ContinuousClock.now
    }

    let key: ObjectKey
    let address: String
    let proxy: LocalProxySettings?
    /// The proxy container's env as the injector renders it; local settings override it.
    private let renderedProxyEnvironment: [EnvVar]
    private let kubelet: LocalKubelet
    private var pod: Pod
    private var runtimes: [Runtime] = []
    private var supervisors: [Task<Void, Never>] = []
    private var prober: Task<Void, Never>?
    private var stopped = false
    private var proxyToken: String?
    private var publishing = false
    private var dirty = false
    private var lastPublished: JSONValue?
    private var transitions: [String: (status: Bool, at: Date)] = [:]
    private let startTime = Date()
    private var logger: Logger
    /// An earlier controller's record of this pod, consumed by the first ``start()``.
    private var adopting: PodRecord?

    init(
        pod: Pod, address: String, proxy: LocalProxySettings?, renderedProxyEnvironment: [EnvVar] = [],
        kubelet: LocalKubelet, adopting: PodRecord? = nil
    ) {
        self.key = pod.objectKey
        self.adopting = adopting
        self.renderedProxyEnvironment = renderedProxyEnvironment
        self.pod = pod
        self.address = address
        self.proxy = proxy
        self.kubelet = kubelet
        var logger = kubelet.logger
        logger[metadataKey: "pod"] = "\(pod.objectKey)"
        self.logger = logger
    }

    var namespace: String { pod.metadata.namespace ?? "default" }
    var name: String { pod.metadata.name ?? "" }

    func processID(container: String) -> Int32? {
        runtimes.first { $0.container.name == container }?.process?.pid
    }

    func start() async {
        guard !stopped else { return }
        let adopted = await adoptRecordedProcesses()
        // Adopted processes were serving a moment ago: probe them before the first status, so the restarted
        // controller does not take the pod out of its endpoints while it finds out.
        var adoptedReady: [String: Bool] = [:]
        var containers = (pod.spec?.containers ?? []).map { ($0, false) }
        if proxy != nil { containers.insert((Container(name: Self.proxyContainerName), true), at: 0) }
        for (container, isProxy) in containers where adopted[container.name] != nil {
            adoptedReady[container.name] = await readinessNow(container, isProxy: isProxy)
        }
        guard !stopped else {
            for process in adopted.values { await process.stop(grace: gracePeriod) }
            return
        }
        if adopted.isEmpty {
            logger.info("starting pod on \(address)\(proxy == nil ? "" : " with a proxy")")
        } else {
            logger.info("adopted \(adopted.count) running process(es) of the pod on \(address)")
        }
        runtimes = containers.map { Runtime(container: $0.0, isProxy: $0.1) }
        supervisors = runtimes.indices.map { index in
            let name = runtimes[index].container.name
            let existing = adopted[name].map { (process: $0, ready: adoptedReady[name] ?? false) }
            return Task { await self.supervise(index, adopted: existing) }
        }
        prober = Task { await self.probeLoop() }
        markDirty()
        persist()
    }

    /// The live processes an earlier controller recorded for this pod, by container, when they were started from
    /// the same spec and injection decision; otherwise those processes are stopped and the pod starts afresh.
    private func adoptRecordedProcesses() async -> [String: RunningProcess] {
        guard let record = adopting else { return [:] }
        adopting = nil
        let compatible =
            record.spec == pod.spec && record.proxied == (proxy != nil) && record.address == address
            && (proxy == nil || record.proxyToken != nil)
        guard compatible else {
            logger.info("the pod changed while the controller was down; restarting its processes")
            await LocalKubelet.stopRecordedProcesses(record, grace: gracePeriod)
            return [:]
        }
        if let token = record.proxyToken, let proxy {
            proxy.tokens.register(token, for: proxyIdentity(proxy))
            proxyToken = token
        }
        var adopted: [String: RunningProcess] = [:]
        for entry in record.processes {
            guard let process = RunningProcess.adopt(pid: entry.pid, startTime: entry.startTime) else { continue }
            adopted[entry.container] = process
            kubelet.launcher.follow(
                logFile: logFile(for: entry.container).path, source: "\(namespace)/\(name)/\(entry.container)",
                until: process)
        }
        return adopted
    }

    private var podDirectory: URL { kubelet.records.directory(of: key) }

    private func logFile(for container: String) -> URL {
        let safe = container.replacingOccurrences(of: "/", with: "_")
        return podDirectory.appendingPathComponent("\(safe).log")
    }

    /// Writes the pod's record (see ``PodRecord``) after every process start and exit.
    private func persist() {
        guard !stopped else { return }
        let processes = runtimes.compactMap { runtime -> PodRecord.Process? in
            guard let process = runtime.process, let started = process.startTime else { return nil }
            return PodRecord.Process(container: runtime.container.name, pid: process.pid, startTime: started)
        }
        let record = PodRecord(
            namespace: namespace, name: name, address: address, spec: pod.spec, proxied: proxy != nil,
            proxyToken: proxyToken, processes: processes)
        do {
            try kubelet.records.save(record)
        } catch {
            logger.warning("cannot record the pod's processes (a restarted controller will not adopt them): \(error)")
        }
    }

    private func proxyIdentity(_ proxy: LocalProxySettings) -> IdentityName {
        IdentityName(
            serviceAccount: pod.spec?.serviceAccountName ?? "default", namespace: namespace,
            controlNamespace: proxy.controlNamespace, trustDomain: proxy.trustDomain)
    }

    /// A changed spec restarts the pod's processes; other changes (labels, annotations) only update the record.
    func update(_ new: Pod) async {
        let specChanged = new.spec != pod.spec
        pod = new
        guard specChanged, !stopped else { return }
        logger.info("spec changed; restarting the pod's processes")
        await stopProcesses()
        await start()
    }

    func stop() async {
        guard !stopped else { return }
        stopped = true
        if let record = adopting {
            adopting = nil
            await LocalKubelet.stopRecordedProcesses(record, grace: gracePeriod)
        }
        await stopProcesses()
        if let proxyToken, let proxy { proxy.tokens.revoke(proxyToken) }
        // The pod's files go with it, unless a pod of the same name has taken its place meanwhile.
        if !kubelet.hasWorker(for: key) { kubelet.records.remove(key) }
        logger.info("pod stopped")
    }

    private func stopProcesses() async {
        prober?.cancel()
        for supervisor in supervisors { supervisor.cancel() }
        let processes = runtimes.compactMap(\.process)
        let grace = gracePeriod
        await withDiscardingTaskGroup { group in
            for process in processes { group.addTask { await process.stop(grace: grace) } }
        }
        for supervisor in supervisors { await supervisor.value }
        supervisors = []
        prober = nil
    }

    private var gracePeriod: Duration {
        let configured = pod.spec?.terminationGracePeriodSeconds.map { Duration.seconds($0) }
        return min(configured ?? kubelet.configuration.defaultGracePeriod, kubelet.configuration.maximumGracePeriod)
    }

    // MARK: - Processes

    private func supervise(_ index: Int, adopted: (process: RunningProcess, ready: Bool)?) async {
        let configuration = kubelet.configuration
        var backoff = configuration.restartBackoff
        let policy = pod.spec?.restartPolicy ?? "Always"
        var adopted = adopted
        while !Task.isCancelled && !stopped {
            let source = "\(namespace)/\(name)/\(runtimes[index].container.name)"
            let process: RunningProcess
            let adoptedReady = adopted?.ready
            do {
                if let existing = adopted {
                    adopted = nil
                    process = existing.process
                } else {
                    let specification = try launchSpecification(for: index, source: source)
                    process = try await kubelet.launcher.launch(specification)
                }
            } catch {
                logger.error("\(source): \(error)")
                runtimes[index].state = .waiting(reason: "RunContainerError", message: "\(error)")
                runtimes[index].ready = false
                markDirty()
                if policy == "Never" {
                    runtimes[index].finished = true
                    runtimes[index].state = .terminated(exit: .exited(code: 128), at: Date())
                    markDirty()
                    return
                }
                do { try await Task.sleep(for: backoff) } catch { return }
                backoff = min(backoff * 2, configuration.maximumRestartBackoff)
                continue
            }
            if Task.isCancelled || stopped {
                await process.stop(grace: gracePeriod)
                return
            }
            let started = Date()
            runtimes[index].process = process
            runtimes[index].state = .running(since: started)
            runtimes[index].ready =
                adoptedReady ?? (!runtimes[index].isProxy && runtimes[index].container.readinessProbe == nil)
            runtimes[index].nextProbe = .now
            markDirty()
            persist()
            let exit = await process.waitForExit()
            runtimes[index].process = nil
            runtimes[index].ready = false
            runtimes[index].state = .terminated(exit: exit, at: Date())
            markDirty()
            persist()
            if Task.isCancelled || stopped { return }
            let restart =
                runtimes[index].isProxy || policy == "Always" || (policy == "OnFailure" && !exit.isSuccess)
            guard restart else {
                logger.info("\(source) exited (\(exit)); not restarted (restartPolicy \(policy))")
                runtimes[index].finished = true
                markDirty()
                return
            }
            if Date().timeIntervalSince(started) >= 10 { backoff = configuration.restartBackoff }
            logger.warning("\(source) exited (\(exit)); restarting in \(backoff)")
            runtimes[index].restartCount += 1
            runtimes[index].state = .waiting(reason: "CrashLoopBackOff", message: "back-off \(backoff) restarting")
            markDirty()
            do { try await Task.sleep(for: backoff) } catch { return }
            backoff = min(backoff * 2, configuration.maximumRestartBackoff)
        }
    }

    private func launchSpecification(for index: Int, source: String) throws -> LaunchSpecification {
        let runtime = runtimes[index]
        var base = kubelet.configuration.baseEnvironment
        if let directory = kubelet.configuration.binaryDirectory {
            base["PATH"] = [directory, base["PATH"]].compactMap { $0 }.joined(separator: ":")
        }
        base["POD_IP"] = address
        base["POD_NAME"] = name
        base["POD_NAMESPACE"] = namespace
        base["HOSTNAME"] = name
        if runtime.isProxy, let proxy {
            let environment = try proxyEnvironment(proxy, base: base)
            return LaunchSpecification(
                command: [proxy.executable], environment: environment,
                workingDirectory: kubelet.configuration.workingDirectory, logSource: source,
                logFile: try preparedLogFile(for: runtime.container.name))
        }
        if proxy != nil {
            base["APUS_OUTBOUND_PROXY"] = "\(address):4140"
            base["http_proxy"] = "http://\(address):4140"
        }
        let (environment, problems) = PodEnvironment.resolve(
            runtime.container.env ?? [], base: base, pod: pod, podIP: address)
        for problem in problems { logger.warning("\(source): \(problem)") }
        let command = ((runtime.container.command ?? []) + (runtime.container.args ?? [])).map {
            PodEnvironment.expand($0, environment)
        }
        guard runtime.container.command?.isEmpty == false else {
            throw LaunchError(
                .executableNotFound,
                "\(source): local mode runs containers by their command; image \(runtime.container.image ?? "?") "
                    + "has no command in the manifest")
        }
        return LaunchSpecification(
            command: command, environment: environment,
            workingDirectory: runtime.container.workingDir ?? kubelet.configuration.workingDirectory,
            logSource: source, logFile: try preparedLogFile(for: runtime.container.name))
    }

    private func preparedLogFile(for container: String) throws -> String {
        try FileManager.default.createDirectory(at: podDirectory, withIntermediateDirectories: true)
        return logFile(for: container).path
    }

    /// The proxy's environment per the proxy contract, with every listener on the pod's own address.
    private func proxyEnvironment(_ proxy: LocalProxySettings, base: [String: String]) throws -> [String: String] {
        let identity = proxyIdentity(proxy)
        let directory = podDirectory
        let identityDirectory = directory.appendingPathComponent("identity")
        try FileManager.default.createDirectory(at: identityDirectory, withIntermediateDirectories: true)
        let tokenFile = directory.appendingPathComponent("token")
        if proxyToken == nil {
            let token = proxy.tokens.mint(for: identity)
            try Data(token.utf8).write(to: tokenFile, options: .atomic)
            _ = chmod(tokenFile.path, 0o600)
            proxyToken = token
        }
        // The injector's rendering first (log level, timeouts, opaque ports, policy, overrides from annotations), then
        // what differs locally: every listener on the pod's address, files instead of mounted volumes, the local
        // control plane's addresses.
        var (environment, _) = PodEnvironment.resolve(renderedProxyEnvironment, base: base, pod: pod, podIP: address)
        for key in ["APUS_PROXY_IDENTITY_TRUST_ANCHORS", "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS"] {
            environment[key] = nil
        }
        let context: JSONValue = .object([
            "ns": .string(namespace), "nodeName": .string("local"), "pod": .string(name),
        ])
        let settings: [String: String] = [
            "APUS_PROXY_OUTBOUND_LISTEN_ADDR": "\(address):4140",
            "APUS_PROXY_INBOUND_LISTEN_ADDR": "\(address):4143",
            "APUS_PROXY_ADMIN_LISTEN_ADDR": "\(address):\(Self.proxyAdminPort)",
            "APUS_PROXY_CONTROL_LISTEN_ADDR": "\(address):4190",
            "APUS_PROXY_INBOUND_FORWARD_IP": address,
            "APUS_PROXY_IDENTITY_DIR": identityDirectory.path,
            "APUS_PROXY_IDENTITY_TOKEN_FILE": tokenFile.path,
            "APUS_PROXY_IDENTITY_TRUST_ANCHORS_FILE": proxy.trustAnchorsFile,
            "APUS_PROXY_IDENTITY_LOCAL_NAME": identity.description,
            "APUS_PROXY_IDENTITY_SVC_ADDR": proxy.identityAddress,
            "APUS_PROXY_IDENTITY_SVC_NAME": proxy.identityName,
            "APUS_PROXY_DESTINATION_SVC_ADDR": proxy.destinationAddress,
            "APUS_PROXY_DESTINATION_SVC_NAME": proxy.destinationName,
            "APUS_PROXY_DESTINATION_CONTEXT": context.description,
            "APUS_PROXY_CLUSTER_DOMAIN": proxy.clusterDomain,
        ]
        environment.merge(settings) { _, new in new }
        if environment["APUS_PROXY_LOG"] == nil { environment["APUS_PROXY_LOG"] = proxy.logLevel }
        let ports = (pod.spec?.containers ?? []).flatMap { $0.ports ?? [] }.filter {
            ($0.protocol ?? "TCP") == "TCP"
        }
        if ports.count == 1, let only = ports.first {
            environment["APUS_PROXY_INBOUND_DEFAULT_PORT"] = String(only.containerPort)
        }
        if let opaque = pod.metadata.annotations?["config.linkerd.io/opaque-ports"],
            environment["APUS_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION"] == nil
        {
            environment["APUS_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION"] = opaque
        }
        // The rendering carries the tap identity unless `config.linkerd.io/disable-tap` (pod or namespace) turned
        // tap off; local callers have no mesh identity, so they tap with the state directory's token instead.
        let tapEnabled = renderedProxyEnvironment.contains {
            $0.name == "APUS_PROXY_TAP_SVC_NAME" || $0.name == "LINKERD2_PROXY_TAP_SVC_NAME"
        }
        if tapEnabled, let tapTokenFile = proxy.tapTokenFile {
            environment["APUS_PROXY_TAP_TOKEN_FILE"] = tapTokenFile
        }
        environment.merge(proxy.extraEnvironment) { _, new in new }
        return environment
    }

    // MARK: - Readiness

    private func probeLoop() async {
        while !Task.isCancelled && !stopped {
            var changed = false
            for index in runtimes.indices where runtimes[index].process != nil {
                let now = ContinuousClock.now
                guard now >= runtimes[index].nextProbe else { continue }
                let ready: Bool
                let period: Duration
                if runtimes[index].isProxy {
                    ready = await ReadinessCheck.http(
                        host: address, port: Self.proxyAdminPort, path: "/ready", timeout: .seconds(1))
                    period = kubelet.configuration.probePeriod
                } else if let probe = runtimes[index].container.readinessProbe {
                    ready = await check(probe, container: runtimes[index].container)
                    period = probe.periodSeconds.map { .seconds(max(1, $0)) } ?? kubelet.configuration.probePeriod
                } else {
                    continue
                }
                // The process may have exited while the probe was in flight.
                guard index < runtimes.count, runtimes[index].process != nil else { continue }
                // Until first ready, probe quickly so a restarted container rejoins its endpoints at once.
                runtimes[index].nextProbe = now + (ready ? period : min(period, .milliseconds(250)))
                if runtimes[index].ready != ready {
                    runtimes[index].ready = ready
                    changed = true
                }
            }
            if changed { markDirty() }
            do { try await Task.sleep(for: .milliseconds(100)) } catch { return }
        }
    }

    /// One readiness check of `container` as the probe loop would run it.
    private func readinessNow(_ container: Container, isProxy: Bool) async -> Bool {
        if isProxy {
            return await ReadinessCheck.http(
                host: address, port: Self.proxyAdminPort, path: "/ready", timeout: .seconds(1))
        }
        guard let probe = container.readinessProbe else { return true }
        return await check(probe, container: container)
    }

    private func check(_ probe: Probe, container: Container) async -> Bool {
        let timeout = Duration.seconds(max(1, probe.timeoutSeconds ?? 1))
        if let http = probe.httpGet {
            guard let port = resolve(http.port, container: container) else { return false }
            return await ReadinessCheck.http(
                host: address, port: port, path: http.path ?? "/", timeout: timeout)
        }
        if let tcp = probe.tcpSocket {
            guard let port = resolve(tcp.port, container: container) else { return false }
            return await ReadinessCheck.tcp(host: address, port: port, timeout: timeout)
        }
        // exec and gRPC probes are not run locally: the running process counts as ready.
        return true
    }

    private func resolve(_ port: IntOrString, container: Container) -> Int? {
        switch port {
        case .int(let number): return number
        case .string(let name):
            return container.ports?.first { $0.name == name }?.containerPort ?? Int(name)
        }
    }

    // MARK: - Status

    private func markDirty() {
        dirty = true
        guard !publishing else { return }
        publishing = true
        Task { await self.publishLoop() }
    }

    private func publishLoop() async {
        while dirty && !stopped {
            dirty = false
            let status = statusPatch()
            guard status != lastPublished else { continue }
            do {
                _ = try await kubelet.client.patchStatus(
                    Pod.self, name: name, namespace: namespace, patch: .merge(status))
                lastPublished = status
            } catch let error as KubernetesError where error.code == .notFound {
                break
            } catch {
                logger.warning("cannot write pod status: \(error)")
                dirty = true
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
        publishing = false
    }

    private func statusPatch() -> JSONValue {
        let apps = runtimes.filter { !$0.isProxy }
        let proxies = runtimes.filter(\.isProxy)
        let containersReady = !apps.isEmpty && apps.allSatisfy(\.ready)
        let ready = containersReady && proxies.allSatisfy(\.ready)
        let phase: String
        if !apps.isEmpty && apps.allSatisfy(\.finished) {
            let succeeded = apps.allSatisfy {
                if case .terminated(let exit, _) = $0.state { return exit.isSuccess }
                return false
            }
            phase = succeeded ? "Succeeded" : "Failed"
        } else if apps.contains(where: { $0.restartCount > 0 || $0.process != nil }) {
            phase = "Running"
        } else {
            phase = "Pending"
        }
        let conditions: [JSONValue] = [
            condition("PodScheduled", true), condition("Initialized", proxies.allSatisfy { $0.process != nil }),
            condition("ContainersReady", containersReady), condition("Ready", ready),
        ]
        var status: [String: JSONValue] = [
            "phase": .string(phase), "podIP": .string(address), "podIPs": .array([.object(["ip": .string(address)])]),
            "hostIP": .string("127.0.0.1"), "startTime": .string(Timestamp(startTime).description),
            "conditions": .array(conditions), "containerStatuses": .array(apps.map(containerStatus)),
        ]
        if !proxies.isEmpty { status["initContainerStatuses"] = .array(proxies.map(containerStatus)) }
        return .object(["status": .object(status)])
    }

    private func condition(_ type: String, _ value: Bool) -> JSONValue {
        let now = Date()
        let previous = transitions[type]
        let since = previous?.status == value ? (previous?.at ?? now) : now
        transitions[type] = (value, since)
        return .object([
            "type": .string(type), "status": .string(value ? "True" : "False"),
            "lastTransitionTime": .string(Timestamp(since).description),
        ])
    }

    private func containerStatus(_ runtime: Runtime) -> JSONValue {
        // Merge patches merge objects: the states not in effect are nulled so only one remains.
        var state: [String: JSONValue] = ["waiting": .null, "running": .null, "terminated": .null]
        switch runtime.state {
        case .waiting(let reason, let message):
            var waiting: [String: JSONValue] = ["reason": .string(reason)]
            if let message { waiting["message"] = .string(message) }
            state["waiting"] = .object(waiting)
        case .running(let since):
            state["running"] = .object(["startedAt": .string(Timestamp(since).description)])
        case .terminated(let exit, let at):
            var terminated: [String: JSONValue] = ["finishedAt": .string(Timestamp(at).description)]
            switch exit {
            case .exited(let code):
                terminated["exitCode"] = .number(Double(code))
                terminated["reason"] = .string(code == 0 ? "Completed" : "Error")
            case .signaled(let signal):
                terminated["exitCode"] = .number(Double(128 + signal))
                terminated["signal"] = .number(Double(signal))
                terminated["reason"] = .string("Error")
            case .lost:
                terminated["exitCode"] = .number(-1)
                terminated["reason"] = .string("Unknown")
            }
            state["terminated"] = .object(terminated)
        }
        var status: [String: JSONValue] = [
            "name": .string(runtime.container.name), "ready": .bool(runtime.ready),
            "restartCount": .number(Double(runtime.restartCount)), "started": .bool(runtime.process != nil),
            "state": .object(state), "image": .string(runtime.container.image ?? "local"),
        ]
        if let pid = runtime.process?.pid { status["containerID"] = .string("local://\(pid)") }
        return .object(status)
    }
}
