import ApusCore
import ApusDestinationClient
import ApusIdentity
import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing

@testable import ApusProxy

/// The tap endpoint end to end: a real proxy forwarding to an in-test backend, subscribers on its control port.
@Suite(.serialized) struct TapTests {
    private static func startProxy(
        token: TapTokenFile? = nil, identity: String? = nil, meshTLS: MeshTLS? = nil,
        _ configure: (inout ProxyConfiguration) -> Void = { _ in }
    ) async throws -> RunningProxy {
        try await RunningProxy.start(
            { configuration in
                configuration.controlListen = ListenAddress(host: "127.0.0.1", port: 0)
                configuration.tapTokenFile = token?.path
                configuration.tapIdentity = identity
                configuration.podName = "web-0"
                configuration.namespace = "shop"
                configure(&configuration)
            }, meshTLS: meshTLS)
    }

    static let booksAuthority = "books.shop.svc.cluster.local:80"

    @Test func pathFilterSeesExactlyTheMatchingRequestsWithStatusesAndLatencies() async throws {
        let backend = try await TapBackend.start()
        let token = try TapTokenFile()
        let endpointLabels = ["namespace": "shop", "pod": "books-0", "deployment": "books"]
        let proxy = try await Self.startProxy(token: token) { configuration in
            configuration.staticEndpoints = [
                Self.booksAuthority: [Endpoint(address: "127.0.0.1", port: backend.port, labels: endpointLabels)]
            ]
            configuration.staticProfiles = [
                Self.booksAuthority: DestinationProfile(
                    fullyQualifiedName: "books.shop.svc.cluster.local", port: 80, source: .serviceProfile,
                    routes: [RoutingFixture.route("GET /books/{id}", pathRegex: "/books/\\d+", method: "GET")])
            ]
        }
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
                token.cleanup()
            }
        }
        let control = try #require(proxy.ports.control)

        let events = try await withTap(
            port: control, filter: #"{"pathPrefix":"/books"}"#, authorization: "Bearer \(token.token)"
        ) { session in
            #expect(session.status == 200)
            try await tapWaitUntil("the subscription") { proxy.server.tap.subscribers.count == 1 }
            let results = try await sendTapTestRequests(
                port: proxy.ports.outbound, host: Self.booksAuthority,
                [
                    TapTestRequest(path: "/books/1"),
                    TapTestRequest(path: "/authors/1"),
                    TapTestRequest(path: "/books/2?page=3", headers: [("x-status", "503")]),
                    TapTestRequest(path: "/", headers: [("x-status", "404")]),
                    TapTestRequest(path: "/books/slow", headers: [("x-delay-ms", "120")]),
                    TapTestRequest(path: "/bookshelf"),
                    // Ends the test's event stream: everything sent before it was published before it.
                    TapTestRequest(path: "/books/sentinel"),
                ])
            #expect(results.map(\.status) == [200, 200, 503, 404, 200, 200, 200])
            var events: [[String: Any]] = []
            while let event = try await session.nextEvent() {
                events.append(event)
                if event["type"] as? String == "end", event["path"] as? String == "/books/sentinel" { break }
            }
            return TapEventList(events)
        }.events

        let routes = [
            "/books/1": "GET /books/{id}", "/books/2?page=3": "GET /books/{id}", "/books/slow": "[DEFAULT]",
            "/bookshelf": "[DEFAULT]", "/books/sentinel": "[DEFAULT]",
        ]
        let paths = ["/books/1", "/books/2?page=3", "/books/slow", "/bookshelf", "/books/sentinel"]
        #expect(events.compactMap { $0["type"] as? String == "req" ? $0["path"] as? String : nil } == paths)
        #expect(events.count == paths.count * 3)
        for path in paths {
            let exchange = events.filter { $0["path"] as? String == path }
            #expect(exchange.map { $0["type"] as? String } == ["req", "rsp", "end"], "\(path)")
            let ids = Set(
                exchange.compactMap { event in
                    (event["id"] as? [String: Any]).map { "\($0["connection"] ?? "-")/\($0["stream"] ?? "-")" }
                })
            #expect(ids.count == 1, "one id per exchange: \(path)")
            for event in exchange {
                #expect(event["route"] as? String == routes[path], "\(path)")
                #expect(event["method"] as? String == "GET")
                #expect(event["direction"] as? String == "outbound")
                #expect(event["authority"] as? String == Self.booksAuthority)
                #expect((event["dst"] as? [String: Any])?["address"] as? String == backend.authority)
                #expect((event["dst"] as? [String: Any])?["labels"] as? [String: String] == endpointLabels)
                let sourceLabels = (event["src"] as? [String: Any])?["labels"] as? [String: String]
                #expect(sourceLabels == ["pod": "web-0", "namespace": "shop"])
                #expect(event["tls"] as? Bool == false)
            }
            let end = try #require(exchange.last)
            #expect(end["responseBytes"] as? Int == TapBackend.replyBody(for: path).utf8.count)
            #expect(end["error"] as? Bool == false)
            let firstByte = try #require(end["latencyToFirstByteMs"] as? Double)
            let duration = try #require(end["durationMs"] as? Double)
            #expect(duration >= firstByte)
        }
        func event(_ type: String, _ path: String) -> [String: Any]? {
            events.first { $0["type"] as? String == type && $0["path"] as? String == path }
        }
        #expect(event("rsp", "/books/1")?["status"] as? Int == 200)
        #expect(event("rsp", "/books/2?page=3")?["status"] as? Int == 503)
        #expect(event("end", "/books/2?page=3")?["status"] as? Int == 503)
        let slow = try #require(event("rsp", "/books/slow")?["latencyToFirstByteMs"] as? Double)
        #expect(slow >= 120, "the backend delayed its head by 120 ms")
        let slowEnd = try #require(event("end", "/books/slow")?["durationMs"] as? Double)
        #expect(slowEnd >= slow)
        // The subscriber left: the hub is idle again.
        try await tapWaitUntil("the unsubscription") { !proxy.server.tap.isActive }
    }

    @Test func regexMethodAndDestinationFiltersSelectInboundTraffic() async throws {
        let backend = try await TapBackend.start()
        let token = try TapTokenFile()
        let proxy = try await RunningProxy.start { configuration in
            configuration.controlListen = ListenAddress(host: "127.0.0.1", port: 0)
            configuration.tapTokenFile = token.path
            configuration.inboundDefaultPort = backend.port
            configuration.podName = "web-0"
            configuration.namespace = "shop"
        }
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
                token.cleanup()
            }
        }
        let control = try #require(proxy.ports.control)
        // Requests *to this pod* (inbound) on /books/<digits> with GET.
        let filter = #"{"pathRegex":"/books/\\d+","method":"get","to":{"namespace":"shop","resource":"po/web-0"}}"#
        let requests = try await withTap(port: control, filter: filter, authorization: "Bearer \(token.token)") {
            session in
            #expect(session.status == 200)
            try await tapWaitUntil("the subscription") { proxy.server.tap.isActive }
            // Outbound: the destination is the backend, not this pod.
            _ = try await sendTapTestRequests(
                port: proxy.ports.outbound, host: backend.authority, [TapTestRequest(path: "/books/1")])
            _ = try await sendTapTestRequests(
                port: proxy.ports.inbound, host: "web.shop:80",
                ["/books/abc", "/books/7", "/authors/9", "/books/8"].map { TapTestRequest(path: $0) })
            var requests: [String] = []
            while requests.count < 2, let event = try await session.nextEvent() {
                if event["type"] as? String == "req" {
                    requests.append("\(event["direction"] ?? "-") \(event["path"] ?? "-")")
                    #expect(
                        (event["dst"] as? [String: Any])?["labels"] as? [String: String]
                            == ["pod": "web-0", "namespace": "shop"])
                    #expect(event["clientIdentity"] is NSNull, "a plaintext caller has no identity")
                }
            }
            return requests
        }
        #expect(requests == ["inbound /books/7", "inbound /books/8"])
    }

    @Test func stalledSubscriberLosesEventsButDoesNotSlowTraffic() async throws {
        let backend = try await TapBackend.start()
        let token = try TapTokenFile()
        let proxy = try await Self.startProxy(token: token)
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
                token.cleanup()
            }
        }
        let control = try #require(proxy.ports.control)

        // Baseline: all requests complete without any subscriber.
        let baseline = try await Self.load(proxy: proxy, backend: backend, requests: 2000)
        #expect(baseline == 2000)

        // A subscriber that sends its request and then never reads a byte, with a tiny receive buffer.
        let stalled = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.so_rcvbuf), value: 4096)
            .channelOption(.autoRead, value: false)
            .connect(host: "127.0.0.1", port: control).get()
        let filter = #"{"bufferSize":64}"#
        let request =
            "POST \(TapServer.observePath) HTTP/1.1\r\nHost: tap\r\nAuthorization: Bearer \(token.token)\r\n"
            + "Content-Length: \(filter.utf8.count)\r\n\r\n\(filter)"
        try await stalled.writeAndFlush(ByteBuffer(string: request))
        try await tapWaitUntil("the stalled subscription") { proxy.server.tap.subscribers.count == 1 }
        let subscription = try #require(proxy.server.tap.subscribers.first)

        let withStalled = try await Self.load(proxy: proxy, backend: backend, requests: 2000)
        #expect(withStalled == 2000, "every request completes while the subscriber is stalled")
        #expect(subscription.droppedCount > 0, "the stalled subscriber loses events")
        #expect(subscription.bufferedCount <= 64, "its buffer stays bounded")
        try await stalled.close()
        try await tapWaitUntil("the stalled subscriber to be removed") { !proxy.server.tap.isActive }
    }

    /// Sends `requests` GETs over 8 keep-alive connections within a generous deadline; returns how many got 200.
    private static func load(proxy: RunningProxy, backend: TapBackend, requests: Int) async throws -> Int {
        let connections = 8
        return try await withThrowingTaskGroup(of: Int.self) { group in
            group.addTask {
                try await Task.sleep(for: .seconds(60))
                throw TapTestError("\(requests) requests did not complete within 60 s")
            }
            group.addTask {
                try await withThrowingTaskGroup(of: Int.self) { senders in
                    for connection in 0..<connections {
                        senders.addTask {
                            // Long paths make each event ~2 KB, so the events outgrow any socket buffering.
                            let batch = (0..<(requests / connections)).map {
                                TapTestRequest(path: "/load/\(connection)/\($0)/" + String(repeating: "x", count: 600))
                            }
                            let results = try await sendTapTestRequests(
                                port: proxy.ports.outbound, host: backend.authority, batch)
                            return results.filter { $0.status == 200 }.count
                        }
                    }
                    return try await senders.reduce(0, +)
                }
            }
            let completed = try await group.next() ?? 0
            group.cancelAll()
            return completed
        }
    }

    @Test func onlyTheConfiguredIdentityMayTapOverMeshTLS() async throws {
        let authority = try MeshAuthority()
        let controllerIdentity = IdentityName(serviceAccount: "controller", namespace: "default").description
        let proxyIdentity = IdentityName(serviceAccount: "web", namespace: "default").description
        let proxy = try await Self.startProxy(identity: controllerIdentity, meshTLS: try authority.meshTLS("web"))
        defer { Task { await proxy.stop() } }
        let control = try #require(proxy.ports.control)
        let intruder = try authority.meshTLS("intruder")
        let controller = try authority.meshTLS("controller")
        let intruderTLS: @Sendable () throws -> NIOSSLClientHandler = {
            try intruder.makeClientHandler(expectedIdentity: proxyIdentity, alpn: [MeshTLS.alpnHTTP1])
        }
        let controllerTLS: @Sendable () throws -> NIOSSLClientHandler = {
            try controller.makeClientHandler(expectedIdentity: proxyIdentity, alpn: [MeshTLS.alpnHTTP1])
        }

        let refused = try await withTap(port: control, tls: intruderTLS) { session in
            (session.status, session.message)
        }
        #expect(refused.0 == 403)
        #expect(refused.1.contains(controllerIdentity))
        #expect(refused.1.contains("intruder.default"))

        let plaintext = try await withTap(port: control) { session in (session.status, session.message) }
        #expect(plaintext.0 == 403)
        #expect(plaintext.1.contains("presented no verified identity"))
        #expect(!proxy.server.tap.isActive)

        let allowed = try await withTap(port: control, tls: controllerTLS) { session in
            try await tapWaitUntil("the controller's subscription") { proxy.server.tap.isActive }
            return session.status
        }
        #expect(allowed == 200)
    }

    @Test func bearerTokenIsRequiredInLocalMode() async throws {
        let token = try TapTokenFile()
        let proxy = try await Self.startProxy(token: token)
        defer {
            Task {
                await proxy.stop()
                token.cleanup()
            }
        }
        let control = try #require(proxy.ports.control)

        let missing = try await withTap(port: control) { ($0.status, $0.message) }
        #expect(missing.0 == 403)
        #expect(missing.1.contains("no 'Authorization: Bearer' token"))
        let wrong = try await withTap(port: control, authorization: "Bearer nope") { ($0.status, $0.message) }
        #expect(wrong.0 == 403)
        #expect(wrong.1.contains("does not match"))
        let badFilter = try await withTap(
            port: control, filter: #"{"pathRegex":"(a"}"#, authorization: "Bearer \(token.token)"
        ) { ($0.status, $0.message) }
        #expect(badFilter.0 == 400)
        #expect(badFilter.1.contains("pathRegex"))
        #expect(!proxy.server.tap.isActive)
        let right = try await withTap(port: control, authorization: "bearer \(token.token)") { $0.status }
        #expect(right == 200)
    }

    @Test func http2TapSeesHTTP2StreamsWithTheirStreamIDs() async throws {
        let echo = try await EchoServer.start(.http2)
        let token = try TapTokenFile()
        let proxy = try await Self.startProxy(token: token)
        defer {
            Task {
                await proxy.stop()
                await echo.stop()
                token.cleanup()
            }
        }
        let control = try #require(proxy.ports.control)
        // The tap itself over h2c, streamed by curl until it has seen a few events.
        let tapOutput = Task.detached {
            try curl([
                "--http2-prior-knowledge", "-N", "--max-time", "3", "-H", "Authorization: Bearer \(token.token)",
                "--data-binary", #"{"pathPrefix":"/grpc.Echo/"}"#,
                "http://127.0.0.1:\(control)\(TapServer.observePath)",
            ])
        }
        try await tapWaitUntil("the h2c subscription") { proxy.server.tap.isActive }
        let forwarded = try curl([
            "--http2-prior-knowledge", "-H", "Host: 127.0.0.1:\(echo.port)", "--data-binary", "ping",
            "http://127.0.0.1:\(proxy.ports.outbound)/grpc.Echo/Say",
        ])
        #expect(forwarded.status == 200)
        let tap = try await tapOutput.value
        #expect(tap.status == 200)
        #expect(tap.headers["content-type"] == "application/x-ndjson")
        let events = tap.body.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        #expect(events.map { $0["type"] as? String } == ["req", "rsp", "end"])
        let id = try #require(events.first?["id"] as? [String: Any])
        #expect(id["stream"] as? Int == 1, "curl's first HTTP/2 stream")
        #expect(events.last?["status"] as? Int == 200)
        #expect(events.last?["responseBytes"] as? Int == 4)
    }

    @Test func subscriberIsToldHowManyEventsItLost() throws {
        let token = try TapTokenFile()
        defer { token.cleanup() }
        let hub = TapHub()
        let channel = EmbeddedChannel(
            handler: TapStreamHandler(
                hub: hub, authorizer: TapAuthorizer(identity: nil, tokenFile: token.path), peerIdentity: nil,
                logger: Logger(label: "test")))
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: TapServer.observePath)
        head.headers.add(name: "authorization", value: "Bearer \(token.token)")
        try channel.writeInbound(HTTPServerRequestPart.head(head))
        try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: #"{"bufferSize":2}"#)))
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
        guard case .head(let response) = try channel.readOutbound(as: HTTPServerResponsePart.self) else {
            Issue.record("no response head")
            return
        }
        #expect(response.status == .ok)
        // The caller's connection cannot take data: two events are buffered, the other three dropped.
        channel.isWritable = false
        for index in 0..<5 {
            _ = hub.begin(
                TapRequestInfo(
                    id: TapExchangeID(connection: 1, stream: UInt64(index)), direction: .outbound,
                    source: TapPeer(address: "a"), destination: TapPeer(address: "b"), tls: false,
                    clientIdentity: nil, serverIdentity: nil, method: "GET", authority: nil, path: "/\(index)",
                    route: "[DEFAULT]"))
        }
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: HTTPServerResponsePart.self) == nil)
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        var text = ""
        while let part = try channel.readOutbound(as: HTTPServerResponsePart.self) {
            if case .body(.byteBuffer(let buffer)) = part { text += String(buffer: buffer) }
        }
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.count == 3)
        #expect(lines.first == #"{"type":"dropped","dropped":3,"total":3}"#)
        #expect(lines.dropFirst().allSatisfy { $0.contains(#""type":"req""#) })
        _ = try channel.finish()
        #expect(!hub.isActive, "closing the connection ends the subscription")
    }

    @Test func tapIsDisabledWithoutIdentityOrToken() async throws {
        let proxy = try await RunningProxy.start()
        defer { Task { await proxy.stop() } }
        #expect(proxy.ports.control == nil, "the control port stays closed")
        let decision = TapAuthorizer(identity: nil, tokenFile: nil).authorize(
            peerIdentity: "controller.default.serviceaccount.identity.apus.cluster.local", authorization: nil)
        guard case .disabled(let reason) = decision else {
            Issue.record("expected disabled, got \(decision)")
            return
        }
        #expect(reason.contains("APUS_PROXY_TAP_SVC_NAME"))
    }
}

/// Carries parsed events out of the `withTap` closure (JSON objects are not `Sendable`).
struct TapEventList: @unchecked Sendable {
    let events: [[String: Any]]
    init(_ events: [[String: Any]]) { self.events = events }
}

/// The hub and filters without sockets.
@Suite struct TapHubTests {
    private func request(
        path: String, method: String = "GET", destination: [String: String] = [:], id: UInt64 = 1
    ) -> TapRequestInfo {
        TapRequestInfo(
            id: TapExchangeID(connection: id, stream: 1), direction: .outbound,
            source: TapPeer(address: "10.0.0.1:5000", labels: ["pod": "load", "namespace": "shop"]),
            destination: TapPeer(address: "10.0.0.2:8080", labels: destination), tls: false, clientIdentity: nil,
            serverIdentity: nil, method: method, authority: "web.shop:80", path: path, route: "[DEFAULT]")
    }

    @Test func fullBufferDropsAndCountsInsteadOfGrowing() {
        let hub = TapHub()
        var filter = TapFilter()
        filter.bufferSize = 10
        let subscription = hub.subscribe(filter) {}
        #expect(hub.isActive)
        for index in 0..<100 { _ = hub.begin(request(path: "/\(index)")) }
        #expect(subscription.bufferedCount == 10)
        #expect(subscription.droppedCount == 90)
        hub.unsubscribe(subscription)
        #expect(!hub.isActive)
        #expect(subscription.bufferedCount == 0)
    }

    @Test func responseAndEndGoOnlyToSubscribersThatSawTheRequest() throws {
        let hub = TapHub()
        let books = hub.subscribe(try TapFilter.parse(json: Array(#"{"pathPrefix":"/books"}"#.utf8))) {}
        let everything = hub.subscribe(TapFilter()) {}
        let exchange = try #require(hub.begin(request(path: "/books/1")))
        exchange.publish(.response(status: 200, latencyToFirstByteNanos: 1_000_000))
        #expect(hub.begin(request(path: "/authors/1")) != nil)
        // A subscriber arriving mid-exchange does not get a response without its request.
        let late = hub.subscribe(TapFilter()) {}
        exchange.publish(
            .end(
                status: 200, latencyToFirstByteNanos: 1_000_000, durationNanos: 2_000_000, responseBytes: 5,
                error: false))
        #expect(books.take(limit: 10).events.map(\.type) == ["req", "rsp", "end"])
        #expect(
            everything.take(limit: 10).events.map { "\($0.type) \($0.request.path)" } == [
                "req /books/1", "rsp /books/1", "req /authors/1", "end /books/1",
            ])
        #expect(late.bufferedCount == 0)
    }

    @Test func eventsRenderAsOneJSONLineEach() throws {
        let event = TapEvent(
            request: request(path: "/say?q=\"hi\"\n"),
            kind: .end(
                status: 503, latencyToFirstByteNanos: 1_234_567, durationNanos: 20_000_000, responseBytes: 42,
                error: false))
        var buffer = ByteBuffer()
        event.writeJSONLine(into: &buffer)
        let line = String(buffer: buffer)
        #expect(line.hasSuffix("}\n"))
        #expect(line.dropLast().contains("\n") == false)
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["path"] as? String == "/say?q=\"hi\"\n")
        #expect(object["latencyToFirstByteMs"] as? Double == 1.234)
        #expect(object["durationMs"] as? Double == 20.0)
        #expect(object["status"] as? Int == 503)
        #expect(object["responseBytes"] as? Int == 42)
        #expect(object["clientIdentity"] is NSNull)
    }

    @Test func resourceFiltersMatchDestinationMetadata() throws {
        let filter = try TapFilter.parse(
            json: Array(#"{"to":{"namespace":"shop","resource":"deploy/web"},"from":{"resource":"pod/load"}}"#.utf8))
        #expect(filter.matches(request(path: "/", destination: ["namespace": "shop", "deployment": "web"])))
        #expect(!filter.matches(request(path: "/", destination: ["namespace": "shop", "deployment": "books"])))
        #expect(!filter.matches(request(path: "/", destination: ["namespace": "other", "deployment": "web"])))
    }

    @Test(arguments: [
        (#"{"to":{"resource":"gadget/x"}}"#, "to.resource"),
        (#"{"from":{"resource":"web"}}"#, "from.resource"),
        (#"{"bufferSize":0}"#, "bufferSize"),
        (#"{"method":7}"#, "method"),
        (#"{"pathPrefix":"books"}"#, "pathPrefix"),
        (#"{"pathRegex":"(?=x)"}"#, "pathRegex"),
    ])
    func badFiltersNameTheField(body: String, field: String) {
        let error = #expect(throws: TapFilterError.self) { try TapFilter.parse(json: Array(body.utf8)) }
        #expect(error?.field == field, "\(error.map { "\($0)" } ?? "no error")")
    }

    @Test func emptyBodyTapsEverything() throws {
        let filter = try TapFilter.parse(json: Array(" \n".utf8))
        #expect(filter.matches(request(path: "/anything", method: "DELETE")))
    }

    @Test func configurationReadsLinkerdTapVariables() throws {
        let configuration = try ProxyConfiguration.fromEnvironment([
            "LINKERD2_PROXY_TAP_SVC_NAME": "tap.linkerd-viz.serviceaccount.identity.linkerd.cluster.local",
            "APUS_PROXY_TAP_TOKEN_FILE": "/var/run/apus/tap-token",
        ])
        #expect(configuration.tapIdentity == "tap.linkerd-viz.serviceaccount.identity.linkerd.cluster.local")
        #expect(configuration.tapTokenFile == "/var/run/apus/tap-token")
        #expect(ProxyConfiguration().tapIdentity == nil)
    }
}
