import ApusController
import Foundation
import KubernetesClient
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle
import ServiceLifecycleTestKit
import Testing

/// One HTTP/1.1 response as a client on the wire sees it.
struct AdminResponse {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: String
}

/// A minimal HTTP/1.1 client over a real TCP connection: one request, the whole response, connection closed.
enum AdminHTTPClient {
    static func request(
        _ method: HTTPMethod, _ path: String, port: Int, keepAlive: Bool = false
    ) async throws -> AdminResponse {
        let collector = ResponseCollector()
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(collector)
                    }
                }
                .connect(host: "127.0.0.1", port: port).get()
        } catch {
            collector.response.fail(error)
            throw error
        }
        var headers = HTTPHeaders([("Host", "127.0.0.1:\(port)")])
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        try await channel.writeAndFlush(HTTPClientRequestPart.end(nil)).get()
        let response = try await collector.response.futureResult.get()
        try? await channel.close().get()
        return response
    }

    private final class ResponseCollector: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTPClientResponsePart
        let response: EventLoopPromise<AdminResponse>
        private let partial = NIOLockedValueBox<AdminResponse?>(nil)

        init() { response = MultiThreadedEventLoopGroup.singleton.next().makePromise() }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                partial.withLockedValue { $0 = AdminResponse(status: head.status, headers: head.headers, body: "") }
            case .body(let buffer):
                partial.withLockedValue { $0?.body += String(buffer: buffer) }
            case .end:
                if let done = partial.withLockedValue({ $0 }) { response.succeed(done) }
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            response.fail(error)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            response.fail(ChannelError.eof)  // no effect once the response completed
        }
    }
}

@Suite("Admin server")
struct AdminServerTests {
    /// Runs an admin server on an ephemeral port for the duration of `body`.
    static func withServer<T: Sendable>(
        registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
        readiness: @escaping @Sendable () -> AdminReadiness = { .ready },
        _ body: @Sendable (Int) async throws -> T
    ) async throws -> T {
        let server = AdminServer(host: "127.0.0.1", port: 0, registry: registry, readiness: readiness)
        let run = Task { try await server.run() }
        defer { run.cancel() }
        let address = try await server.listeningAddress()
        let port = try #require(address.port)
        let result = try await body(port)
        run.cancel()
        try await run.value
        return result
    }

    @Test("GET /live answers 200 ok; unknown paths 404; other methods 405 with Allow; HEAD has no body")
    func liveAndErrors() async throws {
        try await Self.withServer { port in
            let live = try await AdminHTTPClient.request(.GET, "/live", port: port)
            #expect(live.status == .ok)
            #expect(live.body == "ok\n")

            let missing = try await AdminHTTPClient.request(.GET, "/healthz", port: port)
            #expect(missing.status == .notFound)
            #expect(missing.body.contains("/healthz"))

            let post = try await AdminHTTPClient.request(.POST, "/ready", port: port)
            #expect(post.status == .methodNotAllowed)
            #expect(post.headers["Allow"] == ["GET, HEAD"])

            let head = try await AdminHTTPClient.request(.HEAD, "/live?verbose=1", port: port)
            #expect(head.status == .ok)
            #expect(head.body.isEmpty)
            #expect(head.headers["Content-Length"] == ["3"])
        }
    }

    @Test("GET /ready is 503 with the reason until the gate opens, then 200; it can close again")
    func readinessFollowsGate() async throws {
        let gate = AdminReadinessGate(reason: "informer caches have not synced")
        try await Self.withServer(readiness: gate.check) { port in
            let before = try await AdminHTTPClient.request(.GET, "/ready", port: port)
            #expect(before.status == .serviceUnavailable)
            #expect(before.body == "not ready: informer caches have not synced\n")

            gate.markReady()
            let after = try await AdminHTTPClient.request(.GET, "/ready", port: port)
            #expect(after.status == .ok)
            #expect(after.body == "ready\n")

            gate.markNotReady(reason: "shutting down")
            let closing = try await AdminHTTPClient.request(.GET, "/ready", port: port)
            #expect(closing.status == .serviceUnavailable)
            #expect(closing.body.contains("shutting down"))
            // Liveness does not depend on readiness: a not-ready controller must not be restarted for it.
            #expect(try await AdminHTTPClient.request(.GET, "/live", port: port).status == .ok)
        }
    }

    @Test("a keep-alive request is answered without closing the connection")
    func keepAlive() async throws {
        try await Self.withServer { port in
            let response = try await AdminHTTPClient.request(.GET, "/live", port: port, keepAlive: true)
            #expect(response.status == .ok)
            #expect(response.headers["Connection"].isEmpty)
        }
    }

    @Test("GET /metrics serves the controller's metrics in the Prometheus text format (promtool-clean)")
    func metricsExposition() async throws {
        let registry = PrometheusCollectorRegistry()
        let factory = PrometheusMetricsFactory(registry: registry)
        // Real controller parts reporting into the registry, as apus-controller wires them.
        let index = EndpointsIndex(metricsFactory: factory)
        let subscription = index.subscribe(.ip("10.0.0.1", port: 80))
        let queue = WorkQueueProbe(factory: factory)
        await queue.exercise()

        let body = try await Self.withServer(registry: registry) { port in
            let response = try await AdminHTTPClient.request(.GET, "/metrics", port: port)
            #expect(response.status == .ok)
            #expect(response.headers["Content-Type"] == ["text/plain; version=0.0.4; charset=utf-8"])
            return response.body
        }
        _ = subscription
        #expect(body.contains("# TYPE apus_controller_destination_subscribers gauge"))
        #expect(body.contains(#"apus_controller_destination_subscribers{index="endpoints"} 1"#))
        #expect(body.contains(#"apus_controller_destination_updates_total{index="endpoints"} 1"#))
        #expect(body.contains(#"apus_controller_workqueue_adds_total{name="probe"} 2"#))
        #expect(body.contains("apus_controller_workqueue_queue_duration_seconds_bucket"))
        try Self.checkWithPromtool(body)
    }

    @Test("graceful shutdown of the service group stops the server and closes the port")
    func gracefulShutdown() async throws {
        let server = AdminServer(host: "127.0.0.1", port: 0, registry: PrometheusCollectorRegistry())
        try await testGracefulShutdown { trigger in
            let run = Task { try await server.run() }
            let port = try #require(try await server.listeningAddress().port)
            #expect(try await AdminHTTPClient.request(.GET, "/live", port: port).status == .ok)
            trigger.triggerGracefulShutdown()
            try await run.value
            await #expect(throws: (any Error).self) {
                _ = try await AdminHTTPClient.request(.GET, "/live", port: port)
            }
        }
        await #expect(throws: AdminServerError.stopped) { _ = try await server.listeningAddress() }
    }

    @Test("a port in use fails run() with bindFailed naming the address, and listeningAddress() too")
    func bindFailure() async throws {
        try await Self.withServer { port in
            let second = AdminServer(host: "127.0.0.1", port: port, registry: PrometheusCollectorRegistry())
            let waiting = Task { try await second.listeningAddress() }
            do {
                try await second.run()
                Issue.record("a second server bound an occupied port")
            } catch let error as AdminServerError {
                guard case .bindFailed(let host, let failedPort, _) = error else {
                    Issue.record("unexpected error \(error)")
                    return
                }
                #expect(host == "127.0.0.1")
                #expect(failedPort == port)
                #expect(error.description.contains("127.0.0.1:\(port)"))
            }
            await #expect(throws: AdminServerError.self) { _ = try await waiting.value }
        }
    }

    /// `promtool check metrics` (from Debian's `prometheus` package) is the reference parser for the format;
    /// where it is not installed the structural checks above still ran.
    static func checkWithPromtool(_ exposition: String) throws {
        let candidates = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        guard let promtool = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            print("AdminServerTests: promtool not installed (apt package 'prometheus'); format lint skipped")
            return
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: promtool)
        process.arguments = ["check", "metrics"]
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        try input.fileHandleForWriting.write(contentsOf: Data(exposition.utf8))
        try input.fileHandleForWriting.close()
        let report = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        // promtool exits 1 for parse errors and 3 for lint findings. swift-metrics has no way to attach HELP text,
        // so "no help text" is the one finding tolerated; naming, suffix or type advice fails the test.
        let findings = report.split(separator: "\n").filter { !$0.isEmpty }
        let tolerated = findings.allSatisfy { $0.hasSuffix(" no help text") }
        #expect(
            process.terminationStatus == 0 || (process.terminationStatus == 3 && tolerated),
            "promtool check metrics (exit \(process.terminationStatus)): \(report)")
    }
}

/// Drives a named work queue through two keys so its metrics exist with values.
struct WorkQueueProbe {
    let queue: WorkQueue<String>

    init(factory: any MetricsFactory) {
        queue = WorkQueue<String>(name: "probe", metricsFactory: factory)
    }

    func exercise() async {
        await queue.add("a")
        await queue.add("b")
        await queue.add("a")  // deduplicated
        while let key = await queue.tryNext() { await queue.done(key) }
    }
}
