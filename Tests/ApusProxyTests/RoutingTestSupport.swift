import ApusCore
import ApusDestinationClient
import ApusProxy
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// An HTTP/1.1 application whose latency and failures the test controls per path prefix, and which counts every
/// request it receives (so tests can tell offered load from the load retries put on the backend).
///
/// The answer is sent after the whole request was read: `200 ok`, or `failStatus` for attempts the failure
/// pattern marks; request headers named `x-…` come back as `x-echo-…`. The pattern is cyclic over the requests
/// of that path prefix (`[false, false, true]` fails every third one), which keeps the failure share exact and
/// reproducible.
final class ScriptedBackend: Sendable {
    struct Behaviour: Sendable {
        var delay: TimeAmount = .zero
        var failurePattern: [Bool] = []
        var failStatus = 500

        init(delay: TimeAmount = .zero, failurePattern: [Bool] = [], failStatus: Int = 500) {
            self.delay = delay
            self.failurePattern = failurePattern
            self.failStatus = failStatus
        }
    }

    fileprivate struct State {
        var behaviours: [(prefix: String, behaviour: Behaviour)] = []
        var counts: [String: Int] = [:]
        var methods: [String: Int] = [:]
        var total = 0
        var connections = 0
    }

    let channel: Channel
    fileprivate let state: NIOLockedValueBox<State>
    var port: Int { channel.localAddress?.port ?? 0 }

    fileprivate init(channel: Channel, state: NIOLockedValueBox<State>) {
        self.channel = channel
        self.state = state
    }

    /// - Parameter http2: speak h2c (prior knowledge) instead of HTTP/1.1.
    static func start(http2: Bool = false) async throws -> ScriptedBackend {
        let state = NIOLockedValueBox(State())
        let channel = try await bindHTTPTestServer(
            http2: http2, onConnection: { state.withLockedValue { $0.connections += 1 } },
            { ScriptedHandler(state: state) })
        return ScriptedBackend(channel: channel, state: state)
    }

    /// Sets how requests whose path starts with `prefix` are answered (the longest matching prefix wins).
    func set(_ prefix: String, _ behaviour: Behaviour) {
        state.withLockedValue { state in
            state.behaviours.removeAll { $0.prefix == prefix }
            state.behaviours.append((prefix, behaviour))
            state.behaviours.sort { $0.prefix.count > $1.prefix.count }
        }
    }

    /// Connections the backend accepted.
    var connections: Int { state.withLockedValue { $0.connections } }

    /// Requests received in total, or with `method`.
    func received(method: String? = nil) -> Int {
        state.withLockedValue { state in method.map { state.methods[$0, default: 0] } ?? state.total }
    }

    fileprivate static func answer(
        _ state: NIOLockedValueBox<State>, path: String, method: String
    ) -> (delay: TimeAmount, status: Int) {
        state.withLockedValue { state in
            state.total += 1
            state.methods[method, default: 0] += 1
            guard let (prefix, behaviour) = state.behaviours.first(where: { path.hasPrefix($0.prefix) }) else {
                return (.zero, 200)
            }
            let index = state.counts[prefix, default: 0]
            state.counts[prefix] = index + 1
            let pattern = behaviour.failurePattern
            let fails = !pattern.isEmpty && pattern[index % pattern.count]
            return (behaviour.delay, fails ? behaviour.failStatus : 200)
        }
    }

    func stop() async {
        try? await channel.close()
    }
}

private final class ScriptedHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let state: NIOLockedValueBox<ScriptedBackend.State>
    private var head: HTTPRequestHead?

    fileprivate init(state: NIOLockedValueBox<ScriptedBackend.State>) {
        self.state = state
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head else { return }
            let path = String(head.uri.prefix { $0 != "?" })
            let (delay, status) = ScriptedBackend.answer(state, path: path, method: head.method.rawValue)
            let echoed = head.headers.filter { $0.name.lowercased().hasPrefix("x-") }
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let respond = {
                let (handler, context) = loopBound.value
                handler.respond(status: status, echoing: echoed, context: context)
            }
            if delay == .zero {
                respond()
            } else {
                context.eventLoop.assumeIsolated().scheduleTask(in: delay) { respond() }
            }
        }
    }

    private func respond(
        status: Int, echoing echoed: [(name: String, value: String)], context: ChannelHandlerContext
    ) {
        guard context.channel.isActive else { return }
        let body = status == 200 ? "ok" : "failed"
        var headers = HTTPHeaders()
        for header in echoed {
            headers.add(name: "x-echo-" + header.name.lowercased().dropFirst(2), value: header.value)
        }
        headers.add(name: "content-length", value: String(body.utf8.count))
        headers.add(name: "content-type", value: "text/plain")
        let head = HTTPResponseHead(
            version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}

/// Builders for the profiles and proxies the routing tests use.
enum RoutingFixture {
    static func endpoint(_ backend: ScriptedBackend) -> Endpoint {
        Endpoint(address: "127.0.0.1", port: backend.port)
    }

    /// A ServiceProfile route on `pathRegex` (any method unless given).
    static func route(
        _ name: String, pathRegex: String, method: String? = nil, timeout: String? = nil, retryable: Bool = false
    ) -> ServiceProfile.Route {
        ServiceProfile.Route(
            name: name, condition: ServiceProfile.RequestMatch(pathRegex: pathRegex, method: method),
            isRetryable: retryable, timeout: timeout)
    }

    /// A proxy whose outbound side knows `authority` (`name.default.svc.cluster.local:80`) as `backend`, with
    /// `profile` for it.
    static func proxy(
        _ authority: String, backend: ScriptedBackend, profile: DestinationProfile
    ) async throws -> RunningProxy {
        try await RunningProxy.start { configuration in
            configuration.staticEndpoints = [authority: [endpoint(backend)]]
            configuration.staticProfiles = [authority: profile]
        }
    }

    /// Sends `count` requests through the proxy's outbound port on one keep-alive connection and returns each
    /// status code (0 when curl got no response).
    static func statuses(
        proxy: RunningProxy, host: String, path: String, count: Int, method: String = "GET", body: String? = nil
    ) throws -> [Int] {
        var arguments = ["-H", "Host: \(host)", "-w", "%{http_code}\\n", "-X", method]
        if let body { arguments += ["--data-binary", body] }
        for _ in 0..<count {
            arguments += ["-o", "/dev/null", "http://127.0.0.1:\(proxy.ports.outbound)\(path)"]
        }
        let result = try curl(arguments)
        return result.body.split(separator: "\n").map { Int($0) ?? 0 }
    }

    /// One request: its status, headers and curl's total time (the request's own duration, without the cost
    /// of starting curl).
    static func timed(
        proxy: RunningProxy, host: String, path: String, http2: Bool = false
    ) throws -> (CurlResult, Duration) {
        let result = try curl(
            (http2 ? ["--http2-prior-knowledge"] : []) + [
                "-H", "Host: \(host)", "-o", "/dev/null", "-w", "%{time_total}",
                "http://127.0.0.1:\(proxy.ports.outbound)\(path)",
            ])
        let seconds = Double(result.body.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        return (result, .nanoseconds(Int64(seconds * 1e9)))
    }

    /// The proxy's metrics exposition, read from its admin port.
    static func metrics(_ proxy: RunningProxy) throws -> String {
        try curl(["http://127.0.0.1:\(proxy.ports.admin)/metrics"]).body
    }

    /// The value of the sample `name{labels…}` whose labels contain every `fragment`, or nil.
    static func sample(_ text: String, _ name: String, _ fragments: [String]) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + "{") {
            guard fragments.allSatisfy({ line.contains($0) }), let space = line.lastIndex(of: " ") else { continue }
            return Double(line[line.index(after: space)...])
        }
        return nil
    }
}
