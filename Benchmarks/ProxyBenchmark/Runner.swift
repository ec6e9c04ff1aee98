import BenchmarkSupport
import Foundation

/// One row of the table: a way to reach the backend, what wrk measured through it and the proxy's memory.
struct Row: Encodable {
    var name: String
    var result: WrkResult?
    /// The proxy's resident memory after start-up (before any load), and its peak (`VmHWM`) after the load;
    /// for the mTLS pair the client proxy's, with the server proxy's in `serverIdle`/`serverPeak`.
    var idle: ProcessMemory.Sample?
    var peak: ProcessMemory.Sample?
    var serverIdle: ProcessMemory.Sample?
    var serverPeak: ProcessMemory.Sample?
    /// CPU seconds (user + system) of the proxy processes — for the pair both proxies, for NGINX master and
    /// workers — during the measured run, divided by the requests wrk completed in it.
    var cpuSecondsPerRequest: Double?
    /// Why the row has no figures (or why its figures are suspect).
    var error: String?

    init(_ name: String) { self.name = name }
}

/// Starts the backend, then measures each row in turn, stopping every process it started.
struct Runner {
    static let directName = "direct (wrk → nginx)"
    static let apusName = "apus-proxy (1 hop)"
    static let codecName = "apus-proxy (codec path)"
    static let routedName = "apus-proxy (20 routes)"
    static let floorName = "NIO codecs only"
    static let relayName = "NIO TCP relay"
    static let haproxyName = "HAProxy"
    static let nginxName = "NGINX"
    static let pairName = "apus-proxy pair (mTLS)"

    let options: Options
    let tools: Tools
    let directory: String

    /// What the run measured: one row per way to the backend, then the head-to-head rounds.
    struct Measurements {
        var rows: [Row]
        var headToHead: HeadToHead?
    }

    func run() async throws -> Measurements {
        let backendPort = try Network.freePort()
        let backendConfig = "\(directory)/nginx-backend.conf"
        try write(Configs.nginxBackend(port: backendPort, directory: directory), to: backendConfig)
        let backend = try ServerProcess(
            name: "nginx backend", executable: tools.nginx,
            arguments: ["-p", directory, "-c", backendConfig, "-e", "\(directory)/nginx-backend-error.log"],
            logDirectory: directory)
        var rows: [Row] = []
        var headToHead: HeadToHead?
        do {
            try await Network.waitUntilAnswering(port: backendPort, host: "127.0.0.1", process: backend)
            let backendAuthority = "127.0.0.1:\(backendPort)"
            printProgress("backend: nginx on \(backendAuthority)")

            rows.append(await measure(Self.directName, port: backendPort, host: backendAuthority, processes: []))
            rows.append(await apusOneHop(backendPort: backendPort, spliced: true))
            rows.append(await apusOneHop(backendPort: backendPort, spliced: false))
            rows.append(await apusRouted(backendPort: backendPort))
            rows.append(await nioFloor(.http, backendPort: backendPort))
            rows.append(await nioFloor(.tcp, backendPort: backendPort))
            rows.append(await haproxy(backendPort: backendPort))
            rows.append(await nginxProxy(backendPort: backendPort))
            if options.tls { rows.append(await apusPair(backendPort: backendPort)) }
            if options.rounds > 0 { headToHead = await headToHeadRounds(backendPort: backendPort) }
        } catch {
            await backend.stop()
            throw error
        }
        await backend.stop()
        return Measurements(rows: rows, headToHead: headToHead)
    }

    /// ``HeadToHead``'s rounds: each starts a fresh apus-proxy and a fresh HAProxy and measures them one after
    /// the other, apus-proxy first in odd rounds.
    private func headToHeadRounds(backendPort: Int) async -> HeadToHead {
        var headToHead = HeadToHead()
        for index in 0..<options.rounds {
            let apusFirst = index % 2 == 0
            printProgress("head to head: round \(index + 1) of \(options.rounds)")
            let first =
                apusFirst
                ? await apusOneHop(backendPort: backendPort, spliced: true) : await haproxy(backendPort: backendPort)
            let second =
                apusFirst
                ? await haproxy(backendPort: backendPort) : await apusOneHop(backendPort: backendPort, spliced: true)
            headToHead.rounds.append(
                HeadToHead.Round(
                    apus: apusFirst ? first : second, haproxy: apusFirst ? second : first, apusFirst: apusFirst))
        }
        return headToHead
    }

    // MARK: - Rows

    /// The plain hop, on the spliced HTTP/1.1 path (the default) or, with `APUS_PROXY_HTTP1_SPLICE=false`, on
    /// the codec path every routed, meshed or tapped request takes.
    private func apusOneHop(backendPort: Int, spliced: Bool) async -> Row {
        let name = spliced ? Self.apusName : Self.codecName
        return await withRow(name) { started in
            let binary = try Tools.apusProxy(options.proxyBinary)
            let ports = try Network.freePorts(4)
            var environment = proxyEnvironment(
                outbound: ports[0], inbound: ports[1], admin: ports[2], control: ports[3])
            if !spliced { environment["APUS_PROXY_HTTP1_SPLICE"] = "false" }
            let proxy = try ServerProcess(
                name: spliced ? "apus-proxy" : "apus-proxy codec path", executable: binary, arguments: [],
                environment: environment, logDirectory: directory)
            started.append(proxy)
            let host = "127.0.0.1:\(backendPort)"
            try await waitUntilForwarding(port: ports[0], host: host, processes: [proxy], what: name)
            return await measure(name, port: ports[0], host: host, processes: [proxy])
        }
    }

    /// The same hop with a 20-route ServiceProfile (last route matches, retryable): the cost of routing.
    private func apusRouted(backendPort: Int) async -> Row {
        await withRow(Self.routedName) { started in
            let binary = try Tools.apusProxy(options.proxyBinary)
            let ports = try Network.freePorts(4)
            var environment = proxyEnvironment(
                outbound: ports[0], inbound: ports[1], admin: ports[2], control: ports[3])
            environment.merge(try RoutedFixture.environment(backendPort: backendPort)) { _, new in new }
            let proxy = try ServerProcess(
                name: "apus-proxy routed", executable: binary, arguments: [], environment: environment,
                logDirectory: directory)
            started.append(proxy)
            let host = RoutedFixture.authority
            try await waitUntilForwarding(port: ports[0], host: host, processes: [proxy], what: "apus-proxy (routed)")
            return await measure(Self.routedName, port: ports[0], host: host, processes: [proxy])
        }
    }

    /// ``NIOFloorProxy`` in a child process: what SwiftNIO's HTTP/1 codecs (`.http`) or its channels alone
    /// (`.tcp`) cost under apus-proxy's hop.
    private func nioFloor(_ mode: NIOFloorProxy.Mode, backendPort: Int) async -> Row {
        let name = mode == .http ? Self.floorName : Self.relayName
        return await withRow(name) { started in
            let port = try Network.freePort()
            let process = try ServerProcess(
                name: "nio floor proxy \(mode.rawValue)", executable: try currentExecutablePath(),
                arguments: [serveFlag, NIOFloorProxy.serveName, mode.rawValue, String(port), String(backendPort)],
                logDirectory: directory)
            started.append(process)
            let host = "127.0.0.1:\(backendPort)"
            try await waitUntilForwarding(port: port, host: host, processes: [process], what: name)
            return await measure(name, port: port, host: host, processes: [process])
        }
    }

    private func haproxy(backendPort: Int) async -> Row {
        await withRow(Self.haproxyName) { started in
            let port = try Network.freePort()
            let config = "\(directory)/haproxy.cfg"
            try write(Configs.haproxy(port: port, backendPort: backendPort, threads: options.proxyThreads), to: config)
            let process = try ServerProcess(
                name: "haproxy", executable: tools.haproxy, arguments: ["-db", "-f", config], logDirectory: directory)
            started.append(process)
            let host = "127.0.0.1:\(backendPort)"
            try await waitUntilForwarding(port: port, host: host, processes: [process], what: "HAProxy")
            return await measure(Self.haproxyName, port: port, host: host, processes: [process])
        }
    }

    private func nginxProxy(backendPort: Int) async -> Row {
        await withRow(Self.nginxName) { started in
            let port = try Network.freePort()
            let config = "\(directory)/nginx-proxy.conf"
            try write(
                Configs.nginxProxy(
                    port: port, backendPort: backendPort, workers: options.proxyThreads, directory: directory),
                to: config)
            let process = try ServerProcess(
                name: "nginx proxy", executable: tools.nginx,
                arguments: ["-p", directory, "-c", config, "-e", "\(directory)/nginx-proxy-error.log"],
                logDirectory: directory)
            started.append(process)
            let host = "127.0.0.1:\(backendPort)"
            try await waitUntilForwarding(port: port, host: host, processes: [process], what: "NGINX")
            // The master process plus its workers: all of them are the reverse proxy's memory.
            return await measure(Self.nginxName, port: port, host: host, processes: [process], includeChildren: true)
        }
    }

    private func apusPair(backendPort: Int) async -> Row {
        let mesh: MeshFixture
        do {
            mesh = try await MeshFixture.start(directory: directory)
        } catch {
            var row = Row(Self.pairName)
            row.error = "\(error)"
            return row
        }
        let row = await withRow(Self.pairName) { started in
            let binary = try Tools.apusProxy(options.proxyBinary)
            let ports = try Network.freePorts(8)
            var serverEnvironment = proxyEnvironment(
                outbound: ports[0], inbound: ports[1], admin: ports[2], control: ports[3])
            serverEnvironment.merge(try mesh.identityEnvironment(for: MeshFixture.serverIdentity)) { _, new in new }
            var clientEnvironment = proxyEnvironment(
                outbound: ports[4], inbound: ports[5], admin: ports[6], control: ports[7])
            clientEnvironment.merge(try mesh.identityEnvironment(for: MeshFixture.clientIdentity)) { _, new in new }
            clientEnvironment["APUS_PROXY_OUTBOUND_STATIC_ENDPOINTS"] = try MeshFixture.staticEndpoints(
                backendPort: backendPort, serverInboundPort: ports[1])
            let server = try ServerProcess(
                name: "apus-proxy server", executable: binary, arguments: [], environment: serverEnvironment,
                logDirectory: directory)
            started.append(server)
            let client = try ServerProcess(
                name: "apus-proxy client", executable: binary, arguments: [], environment: clientEnvironment,
                logDirectory: directory)
            started.append(client)
            try await waitUntilForwarding(
                port: ports[4], host: MeshFixture.authority, processes: [client, server], what: "the apus-proxy pair")
            let serverIdle = try ProcessMemory.sample(pid: server.pid, includingChildren: false)
            var row = await measure(
                Self.pairName, port: ports[4], host: MeshFixture.authority, processes: [client, server])
            row.serverIdle = serverIdle
            row.serverPeak = try? ProcessMemory.sample(pid: server.pid, includingChildren: false)
            return row
        }
        await mesh.stop()
        return row
    }

    // MARK: - Pieces

    /// Runs one row, collecting the processes it starts in `started`, and stops them whatever happens; an error
    /// becomes the row's `error` instead of ending the run, so a proxy that cannot forward does not hide the others.
    private func withRow(_ name: String, _ body: (inout [ServerProcess]) async throws -> Row) async -> Row {
        var started: [ServerProcess] = []
        var row: Row
        do {
            row = try await body(&started)
        } catch {
            row = Row(name)
            row.error = "\(error)"
        }
        for process in started.reversed() { await process.stop() }
        return row
    }

    /// - Parameters:
    ///   - processes: the proxy whose memory the row shows first; all of them count for CPU per request.
    private func measure(
        _ name: String, port: Int, host: String, processes: [ServerProcess], includeChildren: Bool = false
    ) async -> Row {
        var row = Row(name)
        do {
            if let proxy = processes.first {
                row.idle = try ProcessMemory.sample(pid: proxy.pid, includingChildren: includeChildren)
            }
            printProgress("\(name): warm-up \(options.warmup) s")
            _ = try await Wrk.run(tools.wrk, port: port, host: host, options: options, seconds: options.warmup)
            printProgress("\(name): measuring \(options.duration) s")
            // Children are listed after the warm-up, when NGINX's workers are surely up.
            let cpuPIDs = processes.flatMap { [$0.pid] + (includeChildren ? ProcessMemory.children(of: $0.pid) : []) }
            let cpuBefore = try ProcessCPU.seconds(pids: cpuPIDs)
            let result = try await Wrk.run(
                tools.wrk, port: port, host: host, options: options, seconds: options.duration)
            row.result = result
            if !cpuPIDs.isEmpty, result.requests > 0 {
                row.cpuSecondsPerRequest = (try ProcessCPU.seconds(pids: cpuPIDs) - cpuBefore) / Double(result.requests)
            }
            if let proxy = processes.first {
                try proxy.checkRunning()
                row.peak = try ProcessMemory.sample(pid: proxy.pid, includingChildren: includeChildren)
            }
            let failed = result.non2xx + result.socketErrors
            if result.requests == 0 || Double(failed) > 0.01 * Double(result.requests) {
                row.error =
                    "\(failed) of \(result.requests) requests failed (non-2xx \(result.non2xx), socket errors "
                    + "\(result.socketErrors)); the figures do not measure successful proxying"
            }
        } catch {
            row.error = "\(error)"
        }
        return row
    }

    /// Waits until one GET through `port` is answered 200 by the backend, or explains why not.
    private func waitUntilForwarding(port: Int, host: String, processes: [ServerProcess], what: String) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        var last: Network.Response?
        while true {
            for process in processes { try process.checkRunning() }
            last = Network.get(port: port, host: host, timeout: .seconds(2))
            if last?.status == 200 { return }
            guard ContinuousClock.now < deadline else { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let answer =
            last.map { "it answered:\n    " + $0.head.replacingOccurrences(of: "\r\n", with: "\n    ") }
            ?? "nothing answered HTTP on 127.0.0.1:\(port)"
        let logs = processes.map { "  \($0.name) output:\n\($0.logTail())" }.joined(separator: "\n")
        throw BenchmarkError(
            "\(what) does not forward GET / (Host: \(host)) to the backend after 20 s; \(answer)\n\(logs)")
    }

    /// The environment of a standalone apus-proxy on 127.0.0.1 (nothing inherited, so no stray LINKERD2_* or
    /// APUS_PROXY_* variable of the user's shell changes what is measured).
    private func proxyEnvironment(outbound: Int, inbound: Int, admin: Int, control: Int) -> [String: String] {
        [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
            "APUS_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:\(outbound)",
            "APUS_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:\(inbound)",
            "APUS_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:\(admin)",
            "APUS_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:\(control)",
            "APUS_PROXY_THREADS": String(options.proxyThreads),
            "APUS_PROXY_LOG": "warn",
        ]
    }

    private func write(_ text: String, to path: String) throws {
        do {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            throw BenchmarkError("cannot write \(path): \(error)")
        }
    }
}
