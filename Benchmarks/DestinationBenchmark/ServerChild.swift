import ApusCore
import BenchmarkSupport
import Foundation
import KubernetesTestServer

/// The `--serve` mode: runs the API test server in its own process so the benchmark's RSS is the controller's
/// alone.
///
/// Protocol (one JSON object per line): after seeding it prints a ``ChildReady`` on stdout, then answers each
/// ``ChildCommand`` read from stdin with a ``ChildReply``. It exits on `quit` or when stdin closes, so it never
/// outlives the benchmark.
enum ServerChild {
    static func main(arguments: [String]) async -> Int32 {
        await runServerChild(named: "DestinationBenchmark --serve") {
            let options = try BenchmarkOptions.parse(arguments)
            var serverOptions = KubernetesTestServer.Options()
            serverOptions.tls = options.tls
            serverOptions.autoCreateNamespaces = true
            try await withTestServer(serverOptions) { server in
                server.registerResource(ServiceProfile.resourceType, hasStatusSubresource: true)
                server.registerResource(HTTPRoute.resourceType, hasStatusSubresource: true)
                try await serve(server, options: options)
            }
        }
    }

    private static func serve(_ server: KubernetesTestServer, options: BenchmarkOptions) async throws {
        let started = ContinuousClock.now
        for namespace in 0..<PodFactory.namespaceCount {
            let name = PodFactory.namespace(index: namespace)
            try server.seed(Namespace.resourceType, .object(["metadata": .object(["name": .string(name)])]))
        }
        var podBytes = 0
        var podSamples = 0
        for index in 0..<options.pods {
            let stored = try server.seed(Pod.resourceType, PodFactory.pod(index: index))
            if index % 100 == 0 {
                podBytes += try stored.jsonData().count
                podSamples += 1
            }
        }
        var sliceBytes = 0
        for service in 0..<options.services {
            try server.seed(ApusCore.Service.resourceType, Topology.service(service))
            let slice = try server.seed(
                EndpointSlice.resourceType,
                Topology.slice(service, services: options.services, pods: options.pods))
            if service == 0 { sliceBytes = try slice.jsonData().count }
        }
        try writeJSONLine(
            ChildReady(
                endpoint: ServerEndpoint(server),
                averagePodJSONBytes: podBytes / max(1, podSamples), averageSliceJSONBytes: sliceBytes,
                seedSeconds: started.duration(to: .now).seconds, residentBytes: try Memory.residentBytes()),
            to: .standardOutput)

        try await serveChildCommands(label: "apus.bench.destination.child-stdin") { (command: ChildCommand) in
            var reply = ChildReply()
            switch command.operation {
            case .flip:
                let slice = Topology.slice(
                    command.service, services: options.services, pods: options.pods,
                    firstReady: command.sequence % 2 == 1)
                reply.writtenAt = MonotonicClock.nanoseconds()
                try server.seed(EndpointSlice.resourceType, slice)
            case .memory:
                reply.residentBytes = try Memory.residentBytes()
            case .quit:
                break
            }
            return reply
        }
    }
}
