import BenchmarkSupport
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

// `make bench-proxy`: requests per second, p50/p99 and proxy memory for wrk → backend directly, through one
// apus-proxy, through HAProxy and NGINX as reverse proxies, and through an apus-proxy pair speaking mTLS. See
// Benchmarks/README.md ("Proxy benchmark").

// wrk and the servers are children: a closed pipe must be an error, not a silent exit of the benchmark.
signal(SIGPIPE, SIG_IGN)

exit(
    await benchmarkMain(
        Array(CommandLine.arguments.dropFirst()), serve: ProxyBenchmark.serve, run: ProxyBenchmark.run))

enum ProxyBenchmark {
    /// The one server child: `--serve nio-floor <http|tcp> <listen port> <backend port>` (``NIOFloorProxy``).
    /// Every other server is a real program (nginx, HAProxy, apus-proxy).
    static func serve(_ arguments: [String]) async -> Int32 {
        guard arguments.count == 4, arguments[0] == NIOFloorProxy.serveName,
            let mode = NIOFloorProxy.Mode(rawValue: arguments[1]), let listen = Int(arguments[2]),
            let backend = Int(arguments[3])
        else {
            FileHandle.standardError.write(
                Data(
                    "usage: ProxyBenchmark --serve \(NIOFloorProxy.serveName) http|tcp <listen port> <backend port>\n"
                        .utf8))
            return 2
        }
        return await runServerChild(named: "nio-floor proxy") {
            try await NIOFloorProxy.run(mode: mode, listenPort: listen, backendPort: backend)
        }
    }

    static func run(_ options: Options) async -> Int32 {
        await runAndPrint("ProxyBenchmark") {
            let tools = try Tools.find()
            let directory = FileManager.default.temporaryDirectory
                .appendingPathComponent("apus-bench-proxy-\(UUID().uuidString)").path
            do {
                // World-readable: nginx workers drop to an unprivileged user when started as root.
                try FileManager.default.createDirectory(
                    atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            } catch {
                throw BenchmarkError("cannot create \(directory): \(error)")
            }
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let measured = try await Runner(options: options, tools: tools, directory: directory).run()
            let report = Report(
                backend: "nginx, 1 worker, answering \(Configs.backendBody.utf8.count) bytes from memory "
                    + "(every proxy keeps its connections to it alive)",
                load: "\(options.threads) thread(s), \(options.connections) connections, \(options.warmup) s warm-up + "
                    + "\(options.duration) s measured per row; proxies with \(options.proxyThreads) thread(s)",
                rows: measured.rows, headToHead: measured.headToHead)
            return options.json ? try report.json() : report.table()
        }
    }
}
