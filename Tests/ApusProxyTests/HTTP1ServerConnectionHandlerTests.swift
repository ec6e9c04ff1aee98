import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOPosix
import Testing

@testable import ApusProxy

/// The client-facing HTTP/1 connection handler on NIO's real codec (bytes in, bytes out), with a recorder standing
/// in for the forwarding handler: pipelined requests are answered one at a time and in order, reading goes on
/// while a response is in flight (no read-interest toggling per request) until too much is held, and draining
/// closes only after the response in flight.
@Suite struct HTTP1ServerConnectionHandlerTests {
    /// What reaches the forwarding handler's place in the pipeline.
    final class Recorder: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        var parts: [HTTPServerRequestPart] = []
        var uris: [String] {
            parts.compactMap { part in
                if case .head(let head) = part { return head.uri }
                return nil
            }
        }
        var ends: Int { parts.filter { if case .end = $0 { true } else { false } }.count }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            parts.append(unwrapInboundIn(data))
        }
    }

    /// Counts the `read` requests that get past the connection handler to the socket.
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = NIOAny
        var reads = 0

        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    struct Fixture {
        let channel: EmbeddedChannel
        let recorder: Recorder
        let reads: ReadCounter
        let parseErrors: Box

        final class Box {
            var reasons: [String] = []
        }

        init() throws {
            channel = EmbeddedChannel()
            recorder = Recorder()
            reads = ReadCounter()
            parseErrors = Box()
            let pipeline = channel.pipeline.syncOperations
            try pipeline.addHandler(reads)
            try pipeline.configureHTTPServerPipeline(
                withPipeliningAssistance: false, withServerUpgrade: nil, withErrorHandling: false,
                withOutboundHeaderValidation: false, withEncoderConfiguration: HTTPResponseEncoder.Configuration(),
                withDecoderLimitConfiguration: NIOHTTPDecoderLimitConfiguration())
            let box = parseErrors
            try pipeline.addHandler(HTTP1ServerConnectionHandler { box.reasons.append($0) })
            try pipeline.addHandler(recorder)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 80)).wait()
        }

        func send(_ text: String) throws {
            try channel.writeInbound(ByteBuffer(string: text))
        }

        /// Writes a keep-alive `200` with `body` as the forwarding handler would.
        func respond(_ body: String, headers: [(String, String)] = []) throws {
            var fields = HTTPHeaders([("content-length", String(body.utf8.count))])
            for (name, value) in headers { fields.add(name: name, value: value) }
            try channel.writeOutbound(
                HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: fields)))
            try channel.writeOutbound(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: body))))
            try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        }

        /// Everything written to the socket so far.
        func written() throws -> String {
            var text = ""
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
            return text
        }
    }

    static func get(_ path: String) -> String { "GET \(path) HTTP/1.1\r\nHost: backend\r\n\r\n" }

    @Test func pipelinedRequestsWaitForTheResponseInFlightWhileReadingGoesOn() throws {
        let fixture = try Fixture()
        try fixture.send(Self.get("/a") + Self.get("/b") + Self.get("/c"))
        #expect(fixture.recorder.uris == ["/a"])
        #expect(fixture.recorder.ends == 1)
        // The response to /a is in flight: a read still reaches the socket.
        let before = fixture.reads.reads
        fixture.channel.read()
        #expect(fixture.reads.reads == before + 1)

        try fixture.respond("one")
        #expect(fixture.recorder.uris == ["/a", "/b"])
        try fixture.respond("two")
        #expect(fixture.recorder.uris == ["/a", "/b", "/c"])
        try fixture.respond("three")
        let written = try fixture.written()
        let bodies = ["one", "two", "three"].compactMap { written.range(of: "\r\n\r\n" + $0)?.lowerBound }
        #expect(bodies.count == 3)
        #expect(bodies == bodies.sorted())
        #expect(fixture.channel.isActive)
    }

    @Test func readingPausesOnlyWhileTooManyPipelinedRequestsAreHeld() throws {
        let fixture = try Fixture()
        let held = HTTP1ServerConnectionHandler.maximumBufferedRequests
        try fixture.send((0...held).map { Self.get("/\($0)") }.joined())
        #expect(fixture.recorder.uris == ["/0"])
        let before = fixture.reads.reads
        fixture.channel.read()
        #expect(fixture.reads.reads == before, "reading goes on with \(held) requests held")

        // Answering one delivers the next and releases the paused read.
        try fixture.respond("zero")
        #expect(fixture.recorder.uris == ["/0", "/1"])
        #expect(fixture.reads.reads == before + 1)
    }

    @Test func aLargePipelinedBodyPausesReading() throws {
        let fixture = try Fixture()
        let size = HTTP1ServerConnectionHandler.maximumBufferedBytes
        try fixture.send(
            Self.get("/a") + "POST /upload HTTP/1.1\r\nHost: backend\r\nContent-Length: \(size)\r\n\r\n"
                + String(repeating: "x", count: size))
        let before = fixture.reads.reads
        fixture.channel.read()
        #expect(fixture.reads.reads == before)
        try fixture.respond("a")
        #expect(fixture.recorder.uris == ["/a", "/upload"])
        #expect(fixture.reads.reads == before + 1)
    }

    @Test func quiescingClosesAfterTheResponseInFlightAndDropsHeldRequests() throws {
        let fixture = try Fixture()
        try fixture.send(Self.get("/a") + Self.get("/b"))
        fixture.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        #expect(fixture.channel.isActive)
        try fixture.respond("last")
        let written = try fixture.written()
        #expect(written.lowercased().contains("connection: close"))
        #expect(written.hasSuffix("last"))
        #expect(!fixture.channel.isActive)
        #expect(fixture.recorder.uris == ["/a"])
    }

    @Test func quiescingAnIdleConnectionClosesItAtOnce() throws {
        let fixture = try Fixture()
        try fixture.send(Self.get("/a"))
        try fixture.respond("a")
        fixture.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        #expect(!fixture.channel.isActive)
    }

    @Test func quiescingMidRequestLetsThatRequestFinishAndBeAnswered() throws {
        let fixture = try Fixture()
        try fixture.send("POST /up HTTP/1.1\r\nHost: backend\r\nContent-Length: 4\r\n\r\nab")
        fixture.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        try fixture.send("cd" + Self.get("/next"))
        #expect(fixture.recorder.uris == ["/up"])
        #expect(fixture.recorder.ends == 1)
        #expect(fixture.channel.isActive)
        try fixture.respond("done")
        #expect(!fixture.channel.isActive)
        #expect(fixture.recorder.uris == ["/up"])
    }

    @Test func aHalfCloseAfterARequestIsAnsweredBeforeTheConnectionCloses() throws {
        let fixture = try Fixture()
        try fixture.send(Self.get("/a"))
        fixture.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(fixture.channel.isActive)
        try fixture.respond("answer")
        #expect(try fixture.written().hasSuffix("answer"))
        #expect(!fixture.channel.isActive)
    }

    @Test func aParseErrorBehindAResponseInFlightIsAnsweredAfterIt() throws {
        let fixture = try Fixture()
        try fixture.send(Self.get("/a") + "GET /\u{1}\u{2} junk\r\n\r\n")
        #expect(fixture.channel.isActive)
        #expect(fixture.parseErrors.reasons.isEmpty)
        try fixture.respond("first")
        let written = try fixture.written()
        let first = try #require(written.range(of: "first"))
        #expect(written[first.upperBound...].hasPrefix("HTTP/1.1 400"))
        #expect(fixture.parseErrors.reasons == ["bad_request"])
        #expect(!fixture.channel.isActive)
        #expect(fixture.recorder.uris == ["/a"])
    }

    @Test func anEarlyResponseLetsTheRestOfTheRequestThroughThenTheNextOne() throws {
        let fixture = try Fixture()
        try fixture.send("POST /up HTTP/1.1\r\nHost: backend\r\nContent-Length: 4\r\n\r\nab")
        try fixture.respond("early")
        try fixture.send("cd" + Self.get("/next"))
        #expect(fixture.recorder.uris == ["/up", "/next"])
        #expect(fixture.recorder.ends == 2)
    }
}

/// The same guarantees end to end, through a running proxy to a real HTTP/1.1 backend.
@Suite(.serialized) struct HTTP1PipeliningProxyTests {
    @Test func pipelinedRequestsAreAnsweredInOrderAndAHalfCloseStillGetsTheAnswers() async throws {
        try await withProxiedEcho(.http1) { echo, proxy in
            let host = "Host: 127.0.0.1:\(echo.port)\r\n"
            // Three requests in one write, the connection half-closed right after them: all three are answered, in
            // order, and then the proxy closes (`rawExchange` reads until it has).
            let requests = ["/first", "/second", "/third"].map {
                "POST \($0) HTTP/1.1\r\n\(host)Content-Length: 2\r\n\r\nok"
            }
            let answer = try await rawExchange(
                port: proxy.ports.outbound, Array(requests.joined().utf8), halfClose: true)
            let uris = answer.split(separator: "\r\n").filter { $0.lowercased().hasPrefix("x-echo-uri:") }
            #expect(
                uris.map { $0.dropFirst("x-echo-uri:".count).trimmingCharacters(in: .whitespaces) } == [
                    "/first", "/second", "/third",
                ])
            #expect(answer.components(separatedBy: "HTTP/1.1 200").count == 4)
        }
    }
}
