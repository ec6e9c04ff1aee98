import ApusCore
import ApusDestinationClient
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import Testing

@testable import ApusProxy

/// `timeout.linkerd.io/idle` end to end (a stream with nothing moving either way is cancelled, however long it
/// has been running), and the `error` label of responses that never came or broke.
@Suite(.serialized) struct IdleTimeoutTests {
    static let authority = "web.default.svc.cluster.local:80"
    static let route = ["rt_route=\"web\""]

    /// A proxy routing `authority` to `port` through the HTTPRoute `web`, with `policy`.
    static func proxy(port: Int, policy: RoutePolicy) async throws -> RunningProxy {
        let route = HTTPRoute(
            metadata: ObjectMeta(name: "web", namespace: "default"),
            spec: HTTPRoute.Spec(
                parentRefs: [HTTPRoute.ParentReference(kind: "Service", name: "web", port: 80)],
                rules: [HTTPRoute.Rule(matches: [HTTPRoute.Match(path: HTTPRoute.PathMatch(value: "/"))])]))
        let profile = DestinationProfile(
            fullyQualifiedName: "web.default.svc.cluster.local", port: 80, source: .httpRoute,
            resources: ["default/web"], httpRoutes: [route], routePolicies: ["default/web": policy])
        return try await RunningProxy.start { configuration in
            configuration.staticEndpoints = [authority: [Endpoint(address: "127.0.0.1", port: port)]]
            configuration.staticProfiles = [authority: profile]
        }
    }

    static func idle(_ text: String) throws -> RoutePolicy {
        RoutePolicy(timeouts: RoutePolicy.Timeouts(idle: try GoDuration(parsing: text)))
    }

    /// The backend sends the head and a first chunk, then stalls: after the idle timeout the client's connection
    /// (HTTP/1.1) or stream (HTTP/2) is cut, the backend's connection is closed, and the response counts as a
    /// failure with `error="timeout"`.
    @Test(arguments: [false, true]) func stalledBodyIsCut(http2: Bool) async throws {
        let backend = try await StallingBackend.start(http2: http2)
        let proxy = try await Self.proxy(port: backend.port, policy: try Self.idle("300ms"))
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let (result, elapsed) = try RoutingFixture.timed(
            proxy: proxy, host: Self.authority, path: "/stall", http2: http2)
        #expect(result.status == 200)
        #expect(result.exitCode != 0, "curl should see the transfer cut, got exit \(result.exitCode)")
        #expect(elapsed >= .milliseconds(250) && elapsed <= .milliseconds(1500), "took \(elapsed)")
        // The stalled upstream attempt is cancelled, not left open.
        var closed = false
        for _ in 0..<40 where !closed {
            closed = backend.closedConnections >= 1
            if !closed { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(closed)

        let metrics = try RoutingFixture.metrics(proxy)
        let cut = Self.route + ["classification=\"failure\"", "error=\"timeout\"", "status_code=\"200\""]
        #expect(RoutingFixture.sample(metrics, "route_response_total", cut) == 1)
        #expect(
            RoutingFixture.sample(
                metrics, "response_total", ["classification=\"failure\"", "error=\"timeout\"", "status_code=\"200\""])
                == 1)
        #expect(RoutingFixture.sample(metrics, "outbound_http_errors_total", ["error=\"request_timeout\""]) == 1)
    }

    /// A chunk every 50 ms for a second with a 300 ms idle timeout: the stream is never idle that long, so it
    /// completes although it runs far longer than the timeout.
    @Test func steadyStreamOutlivesTheIdleTimeout() async throws {
        let backend = try await StallingBackend.start()
        let proxy = try await Self.proxy(port: backend.port, policy: try Self.idle("300ms"))
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let result = try curl(
            ["-H", "Host: \(Self.authority)", "http://127.0.0.1:\(proxy.ports.outbound)/stream"])
        #expect(result.exitCode == 0)
        #expect(result.status == 200)
        #expect(result.body == String(repeating: "chunk\n", count: StallingBackend.streamChunks))
        let metrics = try RoutingFixture.metrics(proxy)
        #expect(
            RoutingFixture.sample(
                metrics, "route_response_total", Self.route + ["classification=\"success\"", "status_code=\"200\""])
                == 1)
        #expect(RoutingFixture.sample(metrics, "route_timeouts_total", Self.route) == 0)
    }

    /// A backend that never answers: 504 with `l5d-proxy-error: request timed out` once the idle timeout
    /// passes; the attempt, which got no response, is labelled `error="timeout"` with no `status_code`.
    @Test func silentBackendIsAnswered504AtTheIdleTimeout() async throws {
        let backend = try await StallingBackend.start()
        let proxy = try await Self.proxy(port: backend.port, policy: try Self.idle("300ms"))
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let (result, elapsed) = try RoutingFixture.timed(proxy: proxy, host: Self.authority, path: "/silent")
        #expect(result.status == 504)
        #expect(result.headers["l5d-proxy-error"] == "request timed out")
        #expect(elapsed >= .milliseconds(280) && elapsed <= .milliseconds(450), "took \(elapsed)")

        let metrics = try RoutingFixture.metrics(proxy)
        #expect(RoutingFixture.sample(metrics, "route_response_total", Self.route + ["status_code=\"504\""]) == 1)
        #expect(RoutingFixture.sample(metrics, "route_timeouts_total", Self.route) == 1)
        let attempt = try #require(
            metrics.split(separator: "\n").first { $0.hasPrefix("route_actual_response_total{") && $0.contains("web") })
        #expect(attempt.contains("classification=\"failure\",error=\"timeout\""))
        #expect(!attempt.contains("status_code"))
    }

    /// Attempts that got no response at all (here: connection refused, retried once) are counted with
    /// `error="connect"` and no `status_code`, never as `status_code="0"`.
    @Test func attemptsWithoutResponseAreLabelledByError() async throws {
        // A port nothing listens on: bind, note it, close.
        let probe = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = probe.localAddress?.port ?? 0
        try await probe.close()
        let policy = RoutePolicy(retry: RoutePolicy.Retry(limit: 1, httpStatuses: [.gatewayErrors]))
        let proxy = try await Self.proxy(port: port, policy: policy)
        defer { Task { await proxy.stop() } }

        #expect(try RoutingFixture.statuses(proxy: proxy, host: Self.authority, path: "/", count: 1) == [502])
        let metrics = try RoutingFixture.metrics(proxy)
        #expect(!metrics.contains("status_code=\"0\""))
        #expect(RoutingFixture.sample(metrics, "route_actual_request_total", Self.route) == 2)
        #expect(
            RoutingFixture.sample(
                metrics, "route_actual_response_total", Self.route + ["classification=\"failure\",error=\"connect\""])
                == 2)
        #expect(RoutingFixture.sample(metrics, "route_response_total", Self.route + ["status_code=\"502\""]) == 1)
    }

    /// The exposition with `error` labels (with and without `status_code`) still passes `promtool check metrics`.
    @Test func errorLabelsPassPromtool() throws {
        let metrics = ProxyMetrics()
        let labels = HTTPTrafficLabels(
            direction: .outbound, authority: "web.default.svc.cluster.local:80", targetAddress: "10.0.0.1:80",
            tls: .none(reason: "not_provided_by_service_discovery"))
        let http = metrics.http(labels)
        http.requestStarted()
        http.responded(statusCode: 0, grpcStatus: nil, latencyToFirstByteNanos: 0, failed: true, error: .connect)
        http.responded(statusCode: 200, grpcStatus: nil, latencyToFirstByteNanos: 10, failed: true, error: .timeout)
        http.responded(statusCode: 200, grpcStatus: nil, latencyToFirstByteNanos: 10)
        let route = metrics.routes.route(
            RouteLabels(direction: .outbound, destination: "web.default.svc.cluster.local:80", route: "web"))
        route.requestStarted(retryable: true)
        route.attemptStarted()
        route.attemptResponded(
            statusCode: 0, grpcStatus: nil, latencyToFirstByteNanos: 5, failed: true, error: .reset)
        route.responded(statusCode: 0, grpcStatus: nil, latencyToFirstByteNanos: 0, failed: true, error: .cancel)
        let text = metrics.render()
        #expect(!text.contains("status_code=\"0\""))
        #expect(text.contains("classification=\"failure\",error=\"connect\"} 1"))
        #expect(text.contains("classification=\"failure\",error=\"timeout\",status_code=\"200\"} 1"))
        #expect(text.contains("rt_route=\"web\",classification=\"failure\",error=\"reset\"} 1"))
        try Promtool.check(text)
    }
}

/// An HTTP/1.1 (or h2c) backend whose streams stall on purpose: `/stall` sends the head and one chunk, then nothing;
/// `/stream` sends ``streamChunks`` chunks 50 ms apart, then ends; `/silent` never answers.
final class StallingBackend: Sendable {
    static let streamChunks = 20

    let channel: Channel
    private let closed: NIOLockedValueBox<Int>
    var port: Int { channel.localAddress?.port ?? 0 }
    /// Connections (HTTP/2: streams) the proxy closed or reset.
    var closedConnections: Int { closed.withLockedValue { $0 } }

    private init(channel: Channel, closed: NIOLockedValueBox<Int>) {
        self.channel = channel
        self.closed = closed
    }

    static func start(http2: Bool = false) async throws -> StallingBackend {
        let closed = NIOLockedValueBox(0)
        let channel = try await bindHTTPTestServer(http2: http2) { StallingHandler(closed: closed) }
        return StallingBackend(channel: channel, closed: closed)
    }

    func stop() async {
        try? await channel.close()
    }
}

private final class StallingHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let closed: NIOLockedValueBox<Int>
    private var path = ""

    init(closed: NIOLockedValueBox<Int>) {
        self.closed = closed
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed.withLockedValue { $0 += 1 }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = head.uri
        case .body:
            break
        case .end:
            switch path {
            case "/stall":
                writeHead(context)
                context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "first\n")))), promise: nil)
            case "/stream":
                writeHead(context)
                stream(remaining: StallingBackend.streamChunks, context: context)
            default:
                return
            }
        }
    }

    private func writeHead(_ context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "transfer-encoding", value: "chunked")
        context.writeAndFlush(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
    }

    private func stream(remaining: Int, context: ChannelHandlerContext) {
        context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(50)) {
            guard context.channel.isActive else { return }
            context.writeAndFlush(
                self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "chunk\n")))), promise: nil)
            if remaining > 1 {
                self.stream(remaining: remaining - 1, context: context)
            } else {
                context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }
}
