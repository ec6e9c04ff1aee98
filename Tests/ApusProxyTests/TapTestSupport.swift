import ApusProxy
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// An HTTP/1.1 application whose answers the request controls: `x-status` sets the status (default 200),
/// `x-delay-ms` delays the response head; the body is `reply:<path>`.
final class TapBackend: Sendable {
    let channel: Channel
    var port: Int { channel.localAddress?.port ?? 0 }
    var authority: String { "127.0.0.1:\(port)" }

    private init(channel: Channel) {
        self.channel = channel
    }

    static func start() async throws -> TapBackend {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(TapBackendHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return TapBackend(channel: channel)
    }

    static func replyBody(for path: String) -> String { "reply:\(path)" }

    func stop() async {
        try? await channel.close()
    }
}

private final class TapBackendHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private var head: HTTPRequestHead?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
        case .body:
            break
        case .end:
            guard let request = head else { return }
            head = nil
            let status = request.headers.first(name: "x-status").flatMap { Int($0) } ?? 200
            let delay = request.headers.first(name: "x-delay-ms").flatMap { Int64($0) } ?? 0
            let text = TapBackend.replyBody(for: request.uri)
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let respond: @Sendable () -> Void = {
                let (handler, context) = loopBound.value
                var headers = HTTPHeaders()
                headers.add(name: "content-length", value: String(text.utf8.count))
                context.write(
                    handler.wrapOutboundOut(
                        .head(
                            HTTPResponseHead(
                                version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers))),
                    promise: nil)
                context.write(handler.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: text)))), promise: nil)
                context.writeAndFlush(handler.wrapOutboundOut(.end(nil)), promise: nil)
            }
            if delay > 0 {
                context.eventLoop.scheduleTask(in: .milliseconds(delay), respond)
            } else {
                respond()
            }
        }
    }
}

/// One request sent by ``sendTapTestRequests(port:host:_:)``.
struct TapTestRequest {
    var path: String
    var headers: [(String, String)] = []
}

/// Sends `requests` one after another on one keep-alive HTTP/1.1 connection to `port` (the proxy's outbound
/// listener), with `Host: host`; returns each status and body.
func sendTapTestRequests(
    port: Int, host: String, _ requests: [TapTestRequest]
) async throws -> [(status: Int, body: String)] {
    var results: [(status: Int, body: String)] = []
    try await withHTTPClient(port: port) { client in
        for request in requests {
            var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: request.path)
            head.headers.add(name: "host", value: host)
            for (name, value) in request.headers { head.headers.add(name: name, value: value) }
            let response = try await client.send(head)
            results.append((response?.status ?? 0, response?.body ?? ""))
        }
    }
    return results
}

/// A tap request's answer: the status, and for 200 the NDJSON events as they stream in.
final class TapSession {
    let status: Int
    /// The body of a refusal (the reason), empty for a stream.
    var message = ""
    private var iterator: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator
    private var pending = ""

    init(status: Int, iterator: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator) {
        self.status = status
        self.iterator = iterator
    }

    /// The next event as a JSON object; nil when the stream ended.
    func nextEvent() async throws -> [String: Any]? {
        while true {
            if let newline = pending.firstIndex(of: "\n") {
                let line = String(pending[..<newline])
                pending = String(pending[pending.index(after: newline)...])
                let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
                guard let event = object as? [String: Any] else { throw TapTestError("not an object: \(line)") }
                return event
            }
            guard let part = try await iterator.next() else { return nil }
            switch part {
            case .head: continue
            case .body(let buffer): pending += String(buffer: buffer)
            case .end: return nil
            }
        }
    }

    /// Reads the rest of a refusal's body.
    func readMessage() async throws {
        while let part = try await iterator.next() {
            if case .body(let buffer) = part { message += String(buffer: buffer) }
            if case .end = part { return }
        }
    }
}

struct TapTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Opens a tap on `port` with `filter` (JSON), optionally over TLS and with an `Authorization` header, and runs
/// `body` with the session while the connection is open.
func withTap<T: Sendable>(
    port: Int, filter: String = "{}", authorization: String? = nil,
    tls: (@Sendable () throws -> NIOSSLClientHandler)? = nil,
    _ body: (TapSession) async throws -> T
) async throws -> T {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                if let tls { try channel.pipeline.syncOperations.addHandler(try tls()) }
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                    wrappingChannelSynchronously: channel)
            }
        }
    return try await channel.executeThenClose { inbound, outbound in
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: TapServer.observePath)
        head.headers.add(name: "host", value: "tap")
        head.headers.add(name: "content-type", value: "application/json")
        head.headers.add(name: "content-length", value: String(filter.utf8.count))
        if let authorization { head.headers.add(name: "authorization", value: authorization) }
        try await outbound.write(.head(head))
        try await outbound.write(.body(.byteBuffer(ByteBuffer(string: filter))))
        try await outbound.write(.end(nil))
        var iterator = inbound.makeAsyncIterator()
        guard case .head(let response) = try await iterator.next() else {
            throw TapTestError("the tap connection closed without a response")
        }
        let session = TapSession(status: Int(response.status.code), iterator: iterator)
        if session.status != 200 { try await session.readMessage() }
        return try await body(session)
    }
}

/// Polls `condition` every 10 ms for up to `timeout`.
func tapWaitUntil(
    timeout: Duration = .seconds(10), _ what: String, _ condition: () -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else { throw TapTestError("timed out waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(10))
    }
}

/// A token file for local-mode tap authorization, removed by `cleanup()`.
struct TapTokenFile {
    let path: String
    let token: String

    init(token: String = "tap-\(UUID().uuidString)") throws {
        self.token = token
        path = FileManager.default.temporaryDirectory.appendingPathComponent("apus-tap-\(UUID().uuidString)").path
        try (token + "\n").write(toFile: path, atomically: true, encoding: .utf8)
    }

    func cleanup() {
        try? FileManager.default.removeItem(atPath: path)
    }
}
