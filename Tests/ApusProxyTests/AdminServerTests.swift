import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

@testable import ApusProxy

@Suite("Proxy admin server over real sockets")
struct AdminServerTests {
    struct Fixture {
        let server: AdminServer
        let port: Int
        let metrics: ProxyMetrics
        let readiness: ProxyReadiness
        let logLevel: LogLevelController
        let shutdownRequests: NIOLockedValueBox<Int>

        func request(_ method: HTTPMethod, _ path: String, body: String? = nil) async throws -> AdminTestResponse {
            try await AdminTestClient.request(method, path, port: port, body: body)
        }
    }

    static func withServer<T>(
        shutdownEnabled: Bool = false,
        readiness: ProxyReadiness = ProxyReadiness(
            requiresIdentity: false,
            requiresConfig: false),
        _ body: (Fixture) async throws -> T
    ) async throws -> T {
        var configuration = ProxyConfiguration()
        configuration.adminListen = ListenAddress(host: "127.0.0.1", port: 0)
        configuration.shutdownEndpointEnabled = shutdownEnabled
        let metrics = ProxyMetrics()
        let logLevel = LogLevelController(level: .info)
        let shutdownRequests = NIOLockedValueBox(0)
        let server = AdminServer(
            configuration: configuration, metrics: metrics, readiness: readiness, logLevel: logLevel,
            onShutdownRequest: { shutdownRequests.withLockedValue { $0 += 1 } })
        let address = try await server.start()
        let port = try #require(address.port)
        #expect(server.port == port)
        do {
            let result = try await body(
                Fixture(
                    server: server, port: port, metrics: metrics, readiness: readiness, logLevel: logLevel,
                    shutdownRequests: shutdownRequests))
            await server.stop()
            return result
        } catch {
            await server.stop()
            throw error
        }
    }

    @Test("GET /live answers 200 live; HEAD the same without a body")
    func live() async throws {
        try await Self.withServer { fixture in
            let response = try await fixture.request(.GET, "/live")
            #expect(response.status == .ok)
            #expect(response.body == "live\n")
            let head = try await fixture.request(.HEAD, "/live")
            #expect(head.status == .ok)
            #expect(head.body.isEmpty)
        }
    }

    @Test("GET /ready is 503 naming what it waits for until identity and destination config are ready")
    func readiness() async throws {
        let readiness = ProxyReadiness(requiresIdentity: true, requiresConfig: true)
        try await Self.withServer(readiness: readiness) { fixture in
            var response = try await fixture.request(.GET, "/ready")
            #expect(response.status == .serviceUnavailable)
            #expect(response.body == "not ready: waiting for identity, destination config\n")
            readiness.markIdentityReady()
            response = try await fixture.request(.GET, "/ready")
            #expect(response.status == .serviceUnavailable)
            #expect(response.body == "not ready: waiting for destination config\n")
            readiness.markConfigReady()
            response = try await fixture.request(.GET, "/ready")
            #expect(response.status == .ok)
            #expect(response.body == "ready\n")
        }
        // A standalone configuration needs neither.
        #expect(ProxyReadiness(configuration: ProxyConfiguration()).isReady)
    }

    @Test("GET /metrics serves the registry as Prometheus text 0.0.4 that promtool accepts")
    func metrics() async throws {
        try await Self.withServer { fixture in
            let http = fixture.metrics.http(
                HTTPTrafficLabels(
                    direction: .outbound, authority: "web.shop.svc.cluster.local:80", targetAddress: "10.0.0.1:80",
                    tls: .none(reason: "no_identity")))
            http.requestStarted()
            http.responded(statusCode: 200, grpcStatus: nil, latencyToFirstByteNanos: 2_000_000)
            let response = try await fixture.request(.GET, "/metrics")
            #expect(response.status == .ok)
            #expect(response.headers["Content-Type"] == ["text/plain; version=0.0.4; charset=utf-8"])
            #expect(
                response.body.contains(#"request_total{direction="outbound",authority="web.shop.svc.cluster.local:80""#)
            )
            #expect(response.body.contains("process_resident_memory_bytes"))
            try Promtool.check(response.body)
        }
    }

    @Test("PUT /proxy-log-level changes the level at once; GET reports it; an invalid filter is 400 and ignored")
    func logLevel() async throws {
        try await Self.withServer { fixture in
            var response = try await fixture.request(.GET, "/proxy-log-level")
            #expect(response.status == .ok)
            #expect(response.body == "info\n")

            let lines = NIOLockedValueBox<[String]>([])
            let output = LogOutput { line in lines.withLockedValue { $0.append(line) } }
            let logger = Logger(label: "apus.proxy.test") {
                ProxyLogHandler(label: $0, controller: fixture.logLevel, format: .plain, output: output)
            }
            logger.debug("before")
            #expect(lines.withLockedValue { $0.isEmpty })

            response = try await fixture.request(.PUT, "/proxy-log-level", body: "warn,apus=info,debug\n")
            #expect(response.status == .noContent)
            #expect(fixture.logLevel.level == .debug)
            logger.debug("after")
            #expect(lines.withLockedValue { $0.count == 1 && $0[0].contains("DEBUG apus.proxy.test: after") })

            response = try await fixture.request(.GET, "/proxy-log-level")
            #expect(response.body == "warn,apus=info,debug\n")

            response = try await fixture.request(.PUT, "/proxy-log-level", body: "loud")
            #expect(response.status == .badRequest)
            #expect(response.body.contains("'loud' is not a level"))
            #expect(fixture.logLevel.level == .debug)

            response = try await fixture.request(
                .PUT, "/proxy-log-level", body: String(repeating: "d", count: AdminRoutes.maxBodyBytes + 1))
            #expect(response.status == .payloadTooLarge)
            #expect(fixture.logLevel.level == .debug)
        }
    }

    @Test("POST /shutdown is 404 unless enabled")
    func shutdownDisabled() async throws {
        try await Self.withServer(shutdownEnabled: false) { fixture in
            let response = try await fixture.request(.POST, "/shutdown")
            #expect(response.status == .notFound)
            #expect(fixture.shutdownRequests.withLockedValue { $0 } == 0)
        }
    }

    @Test("POST /shutdown, when enabled, answers 200 and calls the shutdown closure; GET is 405")
    func shutdownEnabled() async throws {
        try await Self.withServer(shutdownEnabled: true) { fixture in
            let wrongMethod = try await fixture.request(.GET, "/shutdown")
            #expect(wrongMethod.status == .methodNotAllowed)
            #expect(wrongMethod.headers["Allow"] == ["POST"])
            let response = try await fixture.request(.POST, "/shutdown")
            #expect(response.status == .ok)
            #expect(response.body == "shutdown\n")
            try await eventuallyTrue { fixture.shutdownRequests.withLockedValue { $0 } == 1 }
        }
    }

    @Test("wrong method → 405 with Allow; unknown path → 404; the query string is ignored")
    func routing() async throws {
        try await Self.withServer { fixture in
            let post = try await fixture.request(.POST, "/live")
            #expect(post.status == .methodNotAllowed)
            #expect(post.headers["Allow"] == ["GET, HEAD"])
            let delete = try await fixture.request(.DELETE, "/proxy-log-level")
            #expect(delete.status == .methodNotAllowed)
            #expect(delete.headers["Allow"] == ["GET, HEAD, PUT"])
            #expect(try await fixture.request(.GET, "/nope").status == .notFound)
            #expect(try await fixture.request(.GET, "/").status == .notFound)
            #expect(try await fixture.request(.GET, "/live?verbose=1").status == .ok)
        }
    }

    @Test("stop() closes the port; start() after stop() fails")
    func stop() async throws {
        let (port, server) = try await Self.withServer { fixture in (fixture.port, fixture.server) }
        await #expect(throws: (any Error).self) { _ = try await AdminTestClient.request(.GET, "/live", port: port) }
        await #expect(throws: AdminServerError.stopped) { try await server.start() }
        await server.stop()  // idempotent
    }

    @Test("a port in use fails start() with bindFailed naming the address")
    func bindFailure() async throws {
        try await Self.withServer { fixture in
            var configuration = ProxyConfiguration()
            configuration.adminListen = ListenAddress(host: "127.0.0.1", port: fixture.port)
            let second = AdminServer(
                configuration: configuration, metrics: ProxyMetrics(),
                readiness: ProxyReadiness(requiresIdentity: false, requiresConfig: false),
                logLevel: LogLevelController(), onShutdownRequest: {})
            await #expect(throws: AdminServerError.self) { try await second.start() }
            do {
                try await second.start()
            } catch let error as AdminServerError {
                #expect(error.description.contains("127.0.0.1:\(fixture.port)"))
            }
        }
    }

    @Test("changing endpoints accept only loopback callers")
    func loopback() throws {
        #expect(AdminRoutes.isLoopback(try SocketAddress(ipAddress: "127.0.0.1", port: 1)))
        #expect(AdminRoutes.isLoopback(try SocketAddress(ipAddress: "127.9.9.9", port: 1)))
        #expect(AdminRoutes.isLoopback(try SocketAddress(ipAddress: "::1", port: 1)))
        #expect(AdminRoutes.isLoopback(try SocketAddress(ipAddress: "::ffff:127.0.0.1", port: 1)))
        #expect(!AdminRoutes.isLoopback(try SocketAddress(ipAddress: "10.0.0.1", port: 1)))
        #expect(!AdminRoutes.isLoopback(try SocketAddress(ipAddress: "::ffff:10.0.0.1", port: 1)))
        #expect(!AdminRoutes.isLoopback(try SocketAddress(ipAddress: "fd00::1", port: 1)))
        #expect(!AdminRoutes.isLoopback(nil))

        let routes = AdminRoutes(
            metrics: ProxyMetrics(), readiness: ProxyReadiness(requiresIdentity: false, requiresConfig: false),
            logLevel: LogLevelController(), shutdownEnabled: true, onShutdownRequest: {},
            logger: Logger(label: "test"))
        let remote = try SocketAddress(ipAddress: "10.1.2.3", port: 5555)
        #expect(
            routes.respond(method: .PUT, path: "/proxy-log-level", body: "debug", remote: remote).status == .forbidden)
        #expect(routes.respond(method: .POST, path: "/shutdown", body: "", remote: remote).status == .forbidden)
        #expect(routes.respond(method: .GET, path: "/proxy-log-level", body: "", remote: remote).status == .ok)
    }

    @Test("log lines in plain and json formats carry level, target, message and metadata")
    func logFormats() throws {
        let plain = ProxyLogHandler.format(
            .plain, timestamp: "2025-01-02T03:04:05.000006Z", level: .warning, label: "apus.proxy",
            message: "listening", metadata: ["address": "0.0.0.0:4143", "a": "b"])
        #expect(plain == "2025-01-02T03:04:05.000006Z  WARN apus.proxy: listening a=b address=0.0.0.0:4143\n")

        let json = ProxyLogHandler.format(
            .json, timestamp: "2025-01-02T03:04:05.000006Z", level: .info, label: "apus.proxy",
            message: "say \"hi\"\n\u{1}", metadata: ["peer": "10.0.0.1:80"])
        #expect(json.hasSuffix("}\n"))
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(object["level"] as? String == "INFO")
        #expect(object["target"] as? String == "apus.proxy")
        let fields = try #require(object["fields"] as? [String: Any])
        #expect(fields["message"] as? String == "say \"hi\"\n\u{1}")
        #expect(fields["peer"] as? String == "10.0.0.1:80")

        let stamp = ProxyLogHandler.timestamp()
        #expect(stamp.count == "2025-01-02T03:04:05.000006Z".count && stamp.hasSuffix("Z"), "\(stamp)")
    }

    @Test("a logger's own level pins it; others follow the controller")
    func pinnedLevel() {
        let controller = LogLevelController(level: .error)
        var handler = ProxyLogHandler(label: "x", controller: controller, format: .plain, output: LogOutput { _ in })
        #expect(handler.logLevel == .error)
        controller.set(LogFilter(level: .trace))
        #expect(handler.logLevel == .trace)
        handler.logLevel = .notice
        controller.set(LogFilter(level: .debug))
        #expect(handler.logLevel == .notice)
    }
}

/// Polls `condition` for up to two seconds (the shutdown closure runs after the response is flushed).
private func eventuallyTrue(_ condition: @Sendable () -> Bool) async throws {
    for _ in 0..<200 {
        if condition() { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("condition not met within 2 s")
}

struct AdminTestResponse: Sendable {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: String
}

/// A one-request HTTP/1.1 client over a real socket (`Connection: close`).
enum AdminTestClient {
    static func request(
        _ method: HTTPMethod, _ path: String, port: Int, body: String? = nil
    ) async throws -> AdminTestResponse {
        let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: AdminTestResponse.self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(2))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(Collector(promise: promise))
                    }
                }
                .connect(host: "127.0.0.1", port: port).get()
        } catch {
            promise.fail(error)
            throw error
        }
        var headers = HTTPHeaders([("Host", "127.0.0.1:\(port)"), ("Connection", "close")])
        if let body { headers.add(name: "Content-Length", value: String(body.utf8.count)) }
        channel.write(
            HTTPClientRequestPart.head(
                HTTPRequestHead(
                    version: .http1_1, method: method, uri: path,
                    headers: headers)), promise: nil)
        if let body {
            channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
        }
        try await channel.writeAndFlush(HTTPClientRequestPart.end(nil)).get()
        return try await promise.futureResult.get()
    }

    final class Collector: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        let promise: EventLoopPromise<AdminTestResponse>
        var head: HTTPResponseHead?
        var body = ""
        var done = false

        init(promise: EventLoopPromise<AdminTestResponse>) {
            self.promise = promise
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let received): head = received
            case .body(let buffer): body += String(buffer: buffer)
            case .end:
                if let head, !done {
                    done = true
                    promise.succeed(AdminTestResponse(status: head.status, headers: head.headers, body: body))
                }
                context.close(promise: nil)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            if !done {
                done = true
                promise.fail(ChannelError.eof)
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            if !done {
                done = true
                promise.fail(error)
            }
            context.close(promise: nil)
        }
    }
}
