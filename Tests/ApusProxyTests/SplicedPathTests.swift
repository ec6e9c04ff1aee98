import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

@testable import ApusProxy

/// The spliced HTTP/1.1 path (`HTTP1SpliceHandler`) against real sockets: what a client sees through it is what
/// it sees through the codec path (every case runs on both, `APUS_PROXY_HTTP1_SPLICE` on and off), for every
/// response framing an upstream may use, for early answers and upstream failures, and across a connection
/// that the spliced path hands over to the codec path half-way.
@Suite struct SplicedPathTests {
    /// A keep-alive connection's exchanges, one after another, through each framing an upstream may use.
    @Test(arguments: [true, false])
    func everyResponseFramingReachesTheClientAsSent(spliced: Bool) async throws {
        try await withScriptedProxy(spliced: spliced) { upstream, proxy in
            let host = "127.0.0.1:\(upstream.port)"
            try await withHTTPClient(port: proxy.ports.outbound) { client in
                let chunked = try #require(try await client.send(.GET, "/chunked", host: host))
                #expect(chunked.status == 200 && chunked.body == "hello world")
                #expect(chunked.trailers?.first(name: "x-trailer") == "t")

                let hop = try #require(try await client.send(.GET, "/hop", host: host))
                #expect(hop.status == 200 && hop.body == "ok")
                #expect(hop.headers.first(name: "x-kept") == "1")
                #expect(!hop.headers.contains(name: "x-hop"), "named in Connection: not forwarded")
                #expect(!hop.headers.contains(name: "keep-alive"))

                let hints = try #require(try await client.send(.GET, "/early-hints", host: host))
                #expect(hints.status == 200 && hints.body == "after hints")

                let head = try #require(try await client.send(.HEAD, "/head", host: host))
                #expect(head.status == 200 && head.body.isEmpty)
                #expect(head.headers.first(name: "content-length") == "99")

                let old = try #require(try await client.send(.GET, "/http10", host: host))
                #expect(old.status == 200 && old.version == .http1_1 && old.body == "ten")

                let empty = try #require(try await client.send(.GET, "/204", host: host))
                #expect(empty.status == 204 && empty.body.isEmpty)

                let posted = try #require(try await client.send(.POST, "/upload", host: host, body: "twelve bytes"))
                #expect(posted.status == 200 && posted.body == "got 12")

                let streamed = try #require(try await client.send(.GET, "/until-close", host: host))
                #expect(streamed.status == 200 && streamed.body == "streamed until close")
            }
            // Every upstream exchange but the last two (HTTP/1.0 and close-delimited answers end their connection)
            // reused one pooled connection.
            #expect(upstream.connections <= 3)

            let metrics = try curl(["http://127.0.0.1:\(proxy.ports.admin)/metrics"]).body
            let total = metrics.split(separator: "\n").filter {
                $0.hasPrefix("request_total{direction=\"outbound\",authority=\"\(host)\"")
            }
            #expect(total.count == 1 && total.first?.hasSuffix(" 8") == true, "\(total)")
        }
    }

    /// Informational responses pass through in order before the final one.
    @Test(arguments: [true, false])
    func informationalResponsesPassThrough(spliced: Bool) async throws {
        try await withScriptedProxy(spliced: spliced) { upstream, proxy in
            let text = try await rawExchange(
                port: proxy.ports.outbound,
                Array("GET /early-hints HTTP/1.1\r\nHost: 127.0.0.1:\(upstream.port)\r\n\r\n".utf8), halfClose: true)
            // (The codec path re-encodes the status line: NIO knows no reason phrase for 103 and writes none.)
            let hints = try #require(text.range(of: "HTTP/1.1 103"))
            let final = try #require(text.range(of: "HTTP/1.1 200 OK\r\n"))
            #expect(hints.lowerBound < final.lowerBound)
            #expect(text.lowercased().contains("link: </style.css>"))
            #expect(text.hasSuffix("after hints"))
        }
    }

    /// One connection: a request the spliced path takes, one it hands to the codec path (chunked upload), and
    /// more after it — all answered, in order, with the same results as on a codec-only connection.
    @Test(arguments: [true, false])
    func aConnectionHandedOverMidwayKeepsAnsweringInOrder(spliced: Bool) async throws {
        try await withProxiedEcho(.http1, spliced: spliced) { echo, proxy in
            let host = "127.0.0.1:\(echo.port)"
            try await withHTTPClient(port: proxy.ports.outbound) { client in
                let first = try #require(try await client.send(.GET, "/first", host: host))
                #expect(first.status == 200 && first.headers.first(name: "x-echo-uri") == "/first")

                var chunkedHead = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/chunked-upload")
                chunkedHead.headers.add(name: "host", value: host)
                chunkedHead.headers.add(name: "transfer-encoding", value: "chunked")
                let upload = try #require(try await client.send(chunkedHead, body: "streamed body"))
                #expect(upload.status == 200 && upload.body == "streamed body")
                #expect(upload.headers.first(name: "x-echo-te") == "chunked")

                for index in 0..<3 {
                    let next = try #require(
                        try await client.send(.POST, "/after/\(index)", host: host, body: "payload \(index)"))
                    #expect(next.headers.first(name: "x-echo-uri") == "/after/\(index)")
                    #expect(next.body == "payload \(index)")
                }
            }
            // Pipelined: the first is spliced, the second (absolute-form target) is the codec path's.
            let pipelined = try await rawExchange(
                port: proxy.ports.outbound,
                Array(
                    ("GET /one HTTP/1.1\r\nHost: \(host)\r\n\r\n"
                        + "GET http://\(host)/two HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n").utf8))
            let one = try #require(pipelined.range(of: "x-echo-uri: /one"))
            let two = try #require(pipelined.range(of: "x-echo-uri: /two"))
            #expect(one.lowerBound < two.lowerBound)
        }
    }

    /// An upstream that answers before the upload is complete: the client gets that answer, the rest of its
    /// body is dropped, and its next request on the same connection is answered normally.
    @Test(arguments: [true, false])
    func anEarlyResponseDropsTheRestOfTheUploadAndTheConnectionGoesOn(spliced: Bool) async throws {
        try await withScriptedProxy(spliced: spliced) { upstream, proxy in
            let host = "127.0.0.1:\(upstream.port)"
            let connection = try await RawConnection.connect(port: proxy.ports.outbound)
            try await connection.channel.executeThenClose { inbound, outbound in
                var responses = inbound.makeAsyncIterator()
                var received = ""
                func readUntil(_ marker: String) async throws {
                    while !received.contains(marker) {
                        guard let buffer = try await responses.next() else { return }
                        received += String(buffer: buffer)
                    }
                }
                let bodyLength = 200_000
                try await outbound.write(
                    ByteBuffer(
                        string: "POST /reject HTTP/1.1\r\nHost: \(host)\r\nContent-Length: \(bodyLength)\r\n\r\n"))
                try await outbound.write(ByteBuffer(repeating: UInt8(ascii: "x"), count: 1000))
                try await readUntil("too large")
                #expect(received.hasPrefix("HTTP/1.1 413 Payload Too Large\r\n"))
                try await outbound.write(ByteBuffer(repeating: UInt8(ascii: "x"), count: bodyLength - 1000))
                try await outbound.write(ByteBuffer(string: "GET /hop HTTP/1.1\r\nHost: \(host)\r\n\r\n"))
                received = ""
                try await readUntil("\r\n\r\nok")
                #expect(received.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(received)")
            }
        }
    }

    /// What the proxy answers itself: a response that is not HTTP, a refused connect, and the one retry of a
    /// stale pooled connection; the client's connection survives each.
    @Test(arguments: [true, false])
    func upstreamFailuresAreAnsweredWithTheReasonAndTheConnectionSurvives(spliced: Bool) async throws {
        let stale = NIOLockedValueBox(0)
        let closing = try await HardeningServer.start(http: false) { ClosesReusedConnectionHandler(connections: stale) }
        defer { Task { await closing.stop() } }
        let closedPort = try await unusedPort()
        try await withScriptedProxy(spliced: spliced) { upstream, proxy in
            let host = "127.0.0.1:\(upstream.port)"
            try await withHTTPClient(port: proxy.ports.outbound) { client in
                let garbage = try #require(try await client.send(.GET, "/garbage", host: host))
                #expect(garbage.status == 502)
                #expect(garbage.headers.first(name: "l5d-proxy-error")?.isEmpty == false)

                let refused = try #require(try await client.send(.GET, "/", host: "127.0.0.1:\(closedPort)"))
                #expect(refused.status == 502)
                #expect(refused.headers.first(name: "l5d-proxy-error")?.contains("\(closedPort)") == true)

                let after = try #require(try await client.send(.GET, "/hop", host: host))
                #expect(after.status == 200 && after.body == "ok")

                // The backend closes the pooled connection when it is reused: the GET is sent once more on a new one.
                let staleHost = "127.0.0.1:\(closing.port)"
                for path in ["/a", "/b"] {
                    let answer = try #require(try await client.send(.GET, path, host: staleHost))
                    #expect(answer.status == 200 && answer.body == "ok")
                }
            }
            #expect(stale.withLockedValue { $0 } == 2)
        }
    }

    /// Inbound, a plaintext client the policy admits goes through the spliced path to the application port, and
    /// is counted as inbound without TLS.
    @Test func inboundPlaintextIsSplicedToTheApplication() async throws {
        try await withScriptedProxy(inboundToUpstream: true) {
            upstream, proxy in
            try await withHTTPClient(port: proxy.ports.inbound) { client in
                for _ in 0..<3 {
                    let answer = try #require(try await client.send(.GET, "/hop", host: "app.local"))
                    #expect(answer.status == 200 && answer.body == "ok")
                }
            }
            let metrics = try curl(["http://127.0.0.1:\(proxy.ports.admin)/metrics"]).body
            let inbound = metrics.split(separator: "\n").filter {
                $0.hasPrefix("response_total{direction=\"inbound\"") && $0.contains("status_code=\"200\"")
            }
            #expect(inbound.count == 1 && inbound.first?.contains("tls=\"no_identity\"") == true)
            #expect(inbound.first?.hasSuffix(" 3") == true, "\(inbound)")
        }
    }
}

// MARK: Support

/// Runs `body` with a ``ScriptedUpstream`` playing ``ScriptedUpstream/framings`` and a standalone proxy in front
/// of it (the spliced path on or off; `inboundToUpstream`: the inbound listener forwards to the upstream's port);
/// stops both once it returns or throws.
private func withScriptedProxy(
    spliced: Bool = true, inboundToUpstream: Bool = false,
    _ body: (ScriptedUpstream, RunningProxy) async throws -> Void
) async throws {
    let upstream = try await ScriptedUpstream.start(ScriptedUpstream.framings)
    let proxy: RunningProxy
    do {
        proxy = try await RunningProxy.start { configuration in
            configuration.http1Splice = spliced
            if inboundToUpstream { configuration.inboundDefaultPort = upstream.port }
        }
    } catch {
        await upstream.stop()
        throw error
    }
    do {
        try await body(upstream, proxy)
    } catch {
        await proxy.stop()
        await upstream.stop()
        throw error
    }
    await proxy.stop()
    await upstream.stop()
}

/// A port nothing listens on (bound, read, released).
private func unusedPort() async throws -> Int {
    let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .bind(host: "127.0.0.1", port: 0).get()
    let port = channel.localAddress?.port ?? 0
    try await channel.close()
    return port
}

/// An HTTP/1.1 upstream that answers each request with fixed bytes chosen by its path, so tests control the
/// exact framing of every response. It reads each request's head and `Content-Length` body before answering
/// (except where the script answers at the head).
final class ScriptedUpstream: Sendable {
    struct Answer: Sendable {
        var bytes: String
        /// Close the connection after the answer (close-delimited bodies, HTTP/1.0).
        var close = false
        /// Answer as soon as the head arrives, without reading the body.
        var atHead = false
    }

    static let framings: [String: Answer] = [
        "/chunked": Answer(
            bytes: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"),
        "/hop": Answer(
            bytes: "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
                + "X-Kept: 1\r\nContent-Length: 2\r\n\r\nok"),
        "/early-hints": Answer(
            bytes: "HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
                + "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nafter hints"),
        "/head": Answer(bytes: "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
        "/http10": Answer(bytes: "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nten", close: true),
        "/204": Answer(bytes: "HTTP/1.1 204 No Content\r\n\r\n"),
        "/upload": Answer(bytes: "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ngot 12"),
        "/until-close": Answer(
            bytes: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nstreamed until close", close: true),
        "/reject": Answer(
            bytes: "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large", atHead: true),
        "/garbage": Answer(bytes: "this is not an HTTP response\r\n\r\n", close: true),
    ]

    private let server: HardeningServer
    private let accepted: NIOLockedValueBox<Int>
    var port: Int { server.port }
    /// Connections accepted so far.
    var connections: Int { accepted.withLockedValue { $0 } }

    private init(server: HardeningServer, accepted: NIOLockedValueBox<Int>) {
        self.server = server
        self.accepted = accepted
    }

    static func start(_ script: [String: Answer]) async throws -> ScriptedUpstream {
        let accepted = NIOLockedValueBox(0)
        let server = try await HardeningServer.start(http: false) {
            ScriptedHandler(script: script, accepted: accepted)
        }
        return ScriptedUpstream(server: server, accepted: accepted)
    }

    func stop() async {
        await server.stop()
    }
}

private final class ScriptedHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let script: [String: ScriptedUpstream.Answer]
    private let accepted: NIOLockedValueBox<Int>
    private var buffered: [UInt8] = []
    /// Body bytes of the current request still to skip.
    private var skipping = 0

    init(script: [String: ScriptedUpstream.Answer], accepted: NIOLockedValueBox<Int>) {
        self.script = script
        self.accepted = accepted
    }

    func channelActive(context: ChannelHandlerContext) {
        accepted.withLockedValue { $0 += 1 }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        buffered += Array(unwrapInboundIn(data).readableBytesView)
        while true {
            if skipping > 0 {
                let take = min(skipping, buffered.count)
                buffered.removeFirst(take)
                skipping -= take
                if skipping > 0 { return }
            }
            guard let end = headEnd() else { return }
            let head = String(decoding: buffered[..<end], as: UTF8.self)
            buffered.removeFirst(end)
            let lines = head.split(separator: "\r\n")
            let path = lines.first?.split(separator: " ").dropFirst().first.map(String.init) ?? "/"
            let length =
                lines.dropFirst().compactMap { line -> Int? in
                    let parts = line.split(separator: ":", maxSplits: 1)
                    guard parts.count == 2, parts[0].lowercased() == "content-length" else { return nil }
                    return Int(parts[1].trimmingCharacters(in: .whitespaces))
                }.first ?? 0
            let answer =
                script[path] ?? ScriptedUpstream.Answer(bytes: "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            if !answer.atHead && buffered.count < length {
                // Wait for the body: put the head back until it is all here.
                buffered.insert(contentsOf: Array(head.utf8), at: 0)
                return
            }
            let consumed = min(length, buffered.count)
            buffered.removeFirst(consumed)
            skipping = length - consumed
            let written = context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: answer.bytes)))
            if answer.close {
                written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
                return
            }
        }
    }

    private func headEnd() -> Int? {
        guard buffered.count >= 4 else { return nil }
        for index in 0...(buffered.count - 4)
        where buffered[index] == 13 && buffered[index + 1] == 10 && buffered[index + 2] == 13
            && buffered[index + 3] == 10
        {
            return index + 4
        }
        return nil
    }
}
