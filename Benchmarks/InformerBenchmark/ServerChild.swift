import ApusCore
import BenchmarkSupport
import Foundation
import KubernetesTestServer

/// The `--serve` mode: runs the API test server in its own process so the benchmark's RSS is the client's alone.
///
/// Protocol (one JSON object per line): after seeding it prints a ``ChildReady`` on stdout, then answers each
/// ``ChildCommand`` read from stdin with a ``ChildReply``. It exits on `quit` or when stdin closes, so it never
/// outlives the benchmark.
enum ServerChild {
    static func main(arguments: [String]) async -> Int32 {
        await runServerChild(named: "InformerBenchmark --serve") {
            let options = try BenchmarkOptions.parse(arguments)
            var serverOptions = KubernetesTestServer.Options()
            serverOptions.tls = options.tls
            // Every write of the run must stay resumable, or the replay and the transfer baseline would get 410.
            serverOptions.eventLogCapacity = max(
                serverOptions.eventLogCapacity, 2 * (options.pods + 2 * options.events))
            try await withTestServer(serverOptions) { try await serve($0, options: options) }
        }
    }

    private static func serve(_ server: KubernetesTestServer, options: BenchmarkOptions) async throws {
        let started = ContinuousClock.now
        try server.seed(Namespace.resourceType, .object(["metadata": .object(["name": .string("bench-empty")])]))
        var pods: [JSONValue] = []
        pods.reserveCapacity(options.pods)
        var sampledBytes = 0
        var samples = 0
        let sampleStride = max(1, options.pods / 200)
        for index in 0..<options.pods {
            let pod = PodFactory.pod(index: index)
            let stored = try server.seed(Pod.resourceType, pod)
            if index % sampleStride == 0 {
                sampledBytes += try stored.jsonData().count
                samples += 1
            }
            pods.append(pod)
        }
        let seedTime = started.duration(to: .now)
        try writeJSONLine(
            ChildReady(
                endpoint: ServerEndpoint(server),
                pods: options.pods, averagePodJSONBytes: sampledBytes / max(1, samples),
                seedSeconds: seedTime.seconds, residentBytes: try Memory.residentBytes()),
            to: .standardOutput)

        // How long a resumed watch is held back while a replay batch is written: ample time for the writes at the
        // rate seeding just showed, so the watch finds the whole batch in the event log.
        let secondsPerWrite = seedTime.seconds / Double(max(1, options.pods))
        var sequence = 0
        func write(_ count: Int) throws {
            for _ in 0..<count {
                let index = sequence % pods.count
                pods[index] = PodFactory.updated(pods[index], sequence: sequence)
                try server.seed(Pod.resourceType, pods[index])
                sequence += 1
            }
        }

        try await serveChildCommands(label: "apus.bench.child-stdin") { (command: ChildCommand) in
            var reply = ChildReply()
            switch command.operation {
            case .replay:
                let hold = 1.0 + 4 * secondsPerWrite * Double(command.count)
                server.setResponseDelay(.milliseconds(Int(hold * 1000)))
                defer { server.setResponseDelay(.zero) }
                server.dropAllWatches()
                reply.fromRevision = server.currentResourceVersion
                let writing = ContinuousClock.now
                try write(command.count)
                reply.writeSeconds = writing.duration(to: .now).seconds
                reply.toRevision = server.currentResourceVersion
                reply.overlapped = server.activeWatchCount > 0
            case .live:
                reply.fromRevision = server.currentResourceVersion
                let writing = ContinuousClock.now
                try write(command.count)
                reply.writeSeconds = writing.duration(to: .now).seconds
                reply.toRevision = server.currentResourceVersion
            case .memory:
                reply.residentBytes = try Memory.residentBytes()
            case .quit:
                break
            }
            return reply
        }
    }
}
