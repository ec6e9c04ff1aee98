import ApusCore
import ApusDestinationClient
import ApusProxy
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import Testing

/// `retry.linkerd.io/grpc` on `grpc-status` carried in trailers (after a 200 head and a body), end to end over
/// HTTP/2: curl speaks h2c to the proxy, the proxy h2c to a gRPC-shaped backend whose answers the test scripts.
@Suite(.serialized) struct GRPCRetryTests {
    static let authority = "grpc.default.svc.cluster.local:80"
    static let route = "grpc"
    static let retried: [GRPCRetryCode] = [.cancelled, .deadlineExceeded, .internal, .resourceExhausted, .unavailable]

    static func proxy(backend: TrailerBackend) async throws -> RunningProxy {
        let route = HTTPRoute(
            metadata: ObjectMeta(name: Self.route, namespace: "default"),
            spec: HTTPRoute.Spec(
                parentRefs: [HTTPRoute.ParentReference(kind: "Service", name: "grpc", port: 80)],
                rules: [HTTPRoute.Rule(matches: [HTTPRoute.Match(path: HTTPRoute.PathMatch(value: "/"))])]))
        let policy = RoutePolicy(retry: RoutePolicy.Retry(limit: 2, grpcCodes: retried))
        let profile = DestinationProfile(
            fullyQualifiedName: "grpc.default.svc.cluster.local", port: 80, source: .httpRoute,
            resources: ["default/\(Self.route)"], httpRoutes: [route],
            routePolicies: ["default/\(Self.route)": policy])
        return try await RunningProxy.start { configuration in
            configuration.staticEndpoints = [authority: [Endpoint(address: "127.0.0.1", port: backend.port)]]
            configuration.staticProfiles = [authority: profile]
        }
    }

    /// A unary gRPC call over h2c through the proxy's outbound port.
    static func call(_ proxy: RunningProxy, path: String, grpc: Bool = true) throws -> CurlResult {
        try curl(
            [
                "--http2-prior-knowledge", "-H", "Host: \(authority)", "-H", "te: trailers",
                "-H", "content-type: \(grpc ? "application/grpc" : "application/octet-stream")",
                "--data-binary", "request", "http://127.0.0.1:\(proxy.ports.outbound)\(path)",
            ])
    }

    static func sample(_ metrics: String, _ name: String, _ fragments: [String] = []) -> Double? {
        RoutingFixture.sample(metrics, name, ["rt_route=\"\(route)\""] + fragments)
    }

    /// `grpc-status: 14` in the first attempt's trailers is retried; the client sees one response, the second
    /// attempt's, and the actual metrics show both tries.
    @Test func unavailableInTrailersIsRetried() async throws {
        let backend = try await TrailerBackend.start()
        backend.script("/svc.Books/Get", statuses: [14, 0])
        let proxy = try await Self.proxy(backend: backend)
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let result = try Self.call(proxy, path: "/svc.Books/Get")
        #expect(result.exitCode == 0)
        #expect(result.status == 200)
        #expect(result.headers["grpc-status"] == "0")
        #expect(result.body == "reply 2 to request")
        #expect(backend.received("/svc.Books/Get") == 2)

        let metrics = try RoutingFixture.metrics(proxy)
        #expect(Self.sample(metrics, "route_actual_request_total") == 2)
        #expect(Self.sample(metrics, "route_actual_response_total", ["grpc_status_code=\"14\""]) == 1)
        #expect(Self.sample(metrics, "route_actual_response_total", ["grpc_status_code=\"0\""]) == 1)
        #expect(Self.sample(metrics, "route_retries_total") == 1)
        #expect(Self.sample(metrics, "route_request_total") == 1)
        #expect(Self.sample(metrics, "route_response_total", ["grpc_status_code=\"0\""]) == 1)
        #expect(Self.sample(metrics, "route_response_total", ["grpc_status_code=\"14\""]) == nil)
    }

    /// A code the route does not list (3, invalid-argument) is passed through after one try; so is a listed one
    /// on a request that is not gRPC (its response is never held).
    @Test func unlistedCodeAndNonGRPCRequestsPassThrough() async throws {
        let backend = try await TrailerBackend.start()
        backend.script("/svc.Books/Invalid", statuses: [3, 0])
        backend.script("/plain", statuses: [14, 0])
        let proxy = try await Self.proxy(backend: backend)
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let invalid = try Self.call(proxy, path: "/svc.Books/Invalid")
        #expect(invalid.status == 200)
        #expect(invalid.headers["grpc-status"] == "3")
        #expect(invalid.body == "reply 1 to request")
        #expect(backend.received("/svc.Books/Invalid") == 1)

        let plain = try Self.call(proxy, path: "/plain", grpc: false)
        #expect(plain.status == 200)
        #expect(plain.headers["grpc-status"] == "14")
        #expect(backend.received("/plain") == 1)

        let metrics = try RoutingFixture.metrics(proxy)
        #expect(Self.sample(metrics, "route_actual_request_total") == 2)
        #expect(Self.sample(metrics, "route_retries_total") == 0)
    }

    /// Retries stop at the limit (2): the third attempt is not held but streamed, and the client gets its
    /// failure as the backend sent it.
    @Test func limitSpentPassesTheLastFailureThrough() async throws {
        let backend = try await TrailerBackend.start()
        backend.script("/svc.Books/Down", statuses: [14])
        let proxy = try await Self.proxy(backend: backend)
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let result = try Self.call(proxy, path: "/svc.Books/Down")
        #expect(result.status == 200)
        #expect(result.headers["grpc-status"] == "14")
        #expect(result.body == "reply 3 to request")
        #expect(backend.received("/svc.Books/Down") == 3)
        let metrics = try RoutingFixture.metrics(proxy)
        #expect(Self.sample(metrics, "route_actual_response_total", ["grpc_status_code=\"14\""]) == 3)
        #expect(Self.sample(metrics, "route_retries_total") == 2)
    }

    /// A response body over the 64 KiB hold bound is released and streamed before its trailers: a retryable
    /// code in them can no longer be retried (bytes reached the client), so it is passed through.
    @Test func responseOverTheHoldBoundIsNotRetried() async throws {
        let backend = try await TrailerBackend.start()
        backend.script("/svc.Books/Large", statuses: [14, 0], bodyBytes: 100 * 1024)
        let proxy = try await Self.proxy(backend: backend)
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }

        let result = try Self.call(proxy, path: "/svc.Books/Large")
        #expect(result.status == 200)
        #expect(result.headers["grpc-status"] == "14")
        #expect(result.body.utf8.count == 100 * 1024)
        #expect(backend.received("/svc.Books/Large") == 1)
        let metrics = try RoutingFixture.metrics(proxy)
        #expect(Self.sample(metrics, "route_actual_request_total") == 1)
        #expect(Self.sample(metrics, "route_response_total", ["grpc_status_code=\"14\""]) == 1)
    }
}

/// An h2c server answering like a gRPC service: `200`, `content-type: application/grpc`, a body, then
/// `grpc-status` in the trailers, taken per attempt from a script per path (the last entry repeats).
final class TrailerBackend: Sendable {
    struct Script: Sendable {
        var statuses: [Int]
        var bodyBytes: Int?
    }

    fileprivate struct State {
        var scripts: [String: Script] = [:]
        var received: [String: Int] = [:]
    }

    let channel: Channel
    fileprivate let state: NIOLockedValueBox<State>
    var port: Int { channel.localAddress?.port ?? 0 }

    private init(channel: Channel, state: NIOLockedValueBox<State>) {
        self.channel = channel
        self.state = state
    }

    static func start() async throws -> TrailerBackend {
        let state = NIOLockedValueBox(State())
        let channel = try await bindHTTPTestServer(http2: true) { TrailerHandler(state: state) }
        return TrailerBackend(channel: channel, state: state)
    }

    /// Attempt `n` on `path` ends with `statuses[n - 1]` (the last one once they run out); the body is
    /// `reply <n> to <request body>`, or `bodyBytes` bytes when given.
    func script(_ path: String, statuses: [Int], bodyBytes: Int? = nil) {
        state.withLockedValue { $0.scripts[path] = Script(statuses: statuses, bodyBytes: bodyBytes) }
    }

    func received(_ path: String) -> Int {
        state.withLockedValue { $0.received[path, default: 0] }
    }

    func stop() async {
        try? await channel.close()
    }
}

private final class TrailerHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let state: NIOLockedValueBox<TrailerBackend.State>
    private var path = ""
    private var request = ""

    init(state: NIOLockedValueBox<TrailerBackend.State>) {
        self.state = state
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = head.uri
        case .body(var body):
            request += body.readString(length: body.readableBytes) ?? ""
        case .end:
            let (attempt, script) = state.withLockedValue { state in
                state.received[path, default: 0] += 1
                return (state.received[path, default: 0], state.scripts[path] ?? TrailerBackend.Script(statuses: [0]))
            }
            let status = script.statuses[min(attempt, script.statuses.count) - 1]
            let body = script.bodyBytes.map { String(repeating: "x", count: $0) } ?? "reply \(attempt) to \(request)"
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "application/grpc")
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))),
                promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
            context.writeAndFlush(
                wrapOutboundOut(.end(HTTPHeaders([("grpc-status", String(status))]))), promise: nil)
        }
    }
}
