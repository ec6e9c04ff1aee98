import ApusDestinationClient
import ApusProxy
import Foundation
import NIOCore
import NIOPosix
import Testing

/// The data path end to end with real sockets: `curl` → apus-proxy → an in-test application.
@Suite(.serialized) struct ProxyForwardingTests {
    @Test func http1KeepAliveReusesTheClientConnectionAndRewritesAbsoluteForm() async throws {
        try await withProxiedEcho(.http1) { echo, proxy in
            let url = "http://127.0.0.1:\(echo.port)/path?q=1"
            let result = try curl([
                "-x", "http://127.0.0.1:\(proxy.ports.outbound)", url, url, "-w", "|%{num_connects}",
            ])
            #expect(result.status == 200)
            #expect(result.headers["x-echo-uri"] == "/path?q=1")
            #expect(result.headers["x-echo-host"] == "127.0.0.1:\(echo.port)")
            // Two transfers, one connection: the second reused the proxy connection.
            #expect(result.body.hasSuffix("|0"))
        }
    }

    @Test func chunkedUploadIsStreamedThroughAndEchoed() async throws {
        try await withProxiedEcho(.http1) { echo, proxy in
            let payload = String(repeating: "0123456789abcdef", count: 64 * 1024)  // 1 MiB
            let result = try curl(
                [
                    "-x", "http://127.0.0.1:\(proxy.ports.outbound)", "-H", "Transfer-Encoding: chunked",
                    "--data-binary", "@-", "http://127.0.0.1:\(echo.port)/upload",
                ], stdin: Data(payload.utf8))
            #expect(result.status == 200)
            #expect(result.headers["x-echo-te"] == "chunked")
            #expect(result.headers["x-echo-method"] == "POST")
            #expect(result.body.count == payload.count)
            #expect(result.body == payload)
        }
    }

    @Test func h2cPriorKnowledgeCarriesTrailers() async throws {
        try await withProxiedEcho(.http2) { echo, proxy in
            let result = try curl(
                [
                    "--http2-prior-knowledge", "-H", "Host: 127.0.0.1:\(echo.port)", "-H", "te: trailers",
                    "--data-binary", "ping", "http://127.0.0.1:\(proxy.ports.outbound)/grpc.Echo/Say",
                ])
            #expect(result.status == 200)
            #expect(result.headers["x-echo-version"] == "h2")
            #expect(result.body == "ping")
            #expect(result.headers["grpc-status"] == "0")
        }
    }

    @Test func upgradeBecomesAByteStream() async throws {
        try await withProxiedEcho(.http1) { echo, proxy in
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: proxy.ports.outbound) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            let received = try await channel.executeThenClose { inbound, outbound in
                try await outbound.write(
                    ByteBuffer(
                        string: "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:\(echo.port)\r\nConnection: Upgrade\r\n"
                            + "Upgrade: echo\r\n\r\n"))
                var text = ""
                var iterator = inbound.makeAsyncIterator()
                while !text.contains("\r\n\r\n"), let buffer = try await iterator.next() {
                    text += String(buffer: buffer)
                }
                #expect(text.hasPrefix("HTTP/1.1 101"))
                try await outbound.write(ByteBuffer(string: "hello over the glue"))
                var echoed = ""
                while echoed.count < 19, let buffer = try await iterator.next() { echoed += String(buffer: buffer) }
                return echoed
            }
            #expect(received == "hello over the glue")
        }
    }

    @Test func connectRefusedIsA502WithAProxyError() async throws {
        let proxy = try await RunningProxy.start()
        defer { Task { await proxy.stop() } }
        let result = try curl(["-H", "Host: 127.0.0.1:1", "http://127.0.0.1:\(proxy.ports.outbound)/"])
        #expect(result.status == 502)
        #expect(result.headers["l5d-proxy-error"]?.contains("127.0.0.1:1") == true)
    }

    @Test func smugglingPairOversizedHeadersAndGarbageAreRefusedAndTheProxyKeepsServing() async throws {
        try await withProxiedEcho(.http1) { echo, proxy in
            let host = "Host: 127.0.0.1:\(echo.port)\r\n"
            let smuggling = try await rawExchange(
                port: proxy.ports.outbound,
                Array(
                    ("POST / HTTP/1.1\r\n\(host)Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + "0\r\n\r\nGET /x HTTP/1.1\r\n\r\n").utf8))
            #expect(smuggling.hasPrefix("HTTP/1.1 400"))
            #expect(!smuggling.contains("HTTP/1.1 200"))
            let duplicate = try await rawExchange(
                port: proxy.ports.outbound,
                Array("POST / HTTP/1.1\r\n\(host)Content-Length: 1\r\nContent-Length: 2\r\n\r\nab".utf8))
            #expect(duplicate.hasPrefix("HTTP/1.1 400"))
            let oversized = try await rawExchange(
                port: proxy.ports.outbound,
                Array("GET / HTTP/1.1\r\n\(host)X-Big: \(String(repeating: "a", count: 70_000))\r\n\r\n".utf8))
            #expect(oversized.hasPrefix("HTTP/1.1 431"))
            let garbage = try await rawExchange(port: proxy.ports.outbound, Array("GET /\u{1}\u{2} junk\r\n\r\n".utf8))
            #expect(garbage.isEmpty || garbage.hasPrefix("HTTP/1.1 400"))
            let next = try curl(["-x", "http://127.0.0.1:\(proxy.ports.outbound)", "http://127.0.0.1:\(echo.port)/ok"])
            #expect(next.status == 200)
        }
    }
}

/// Two proxies with mesh TLS between them: client app → outbound proxy ⇒ mTLS/h2 ⇒ inbound proxy → server app.
@Suite(.serialized) struct ProxyMeshTLSTests {
    struct Mesh {
        let echo: EchoServer
        let serverProxy: RunningProxy
        let clientProxy: RunningProxy
        let clientIdentity: String
        let serverIdentity: String

        static func start(
            _ version: EchoServer.HTTPVersion, expectedIdentity: String? = nil,
            policy: InboundPolicy = .allAuthenticated
        ) async throws -> Mesh {
            let authority = try MeshAuthority()
            let serverTLS = try authority.meshTLS("server")
            let clientTLS = try authority.meshTLS("client")
            let echo = try await EchoServer.start(version)
            let serverProxy = try await RunningProxy.start({ $0.inboundPolicy = policy }, meshTLS: serverTLS)
            let serverIdentity = try #require(serverTLS.localIdentity)
            let endpoint = Endpoint(
                address: "127.0.0.1", port: echo.port, identity: expectedIdentity ?? serverIdentity,
                opaqueTransportPort: serverProxy.ports.inbound, labels: ["namespace": "default", "service": "echo"])
            let clientProxy = try await RunningProxy.start(
                { $0.staticEndpoints = ["echo.test:8080": [endpoint]] }, meshTLS: clientTLS)
            return Mesh(
                echo: echo, serverProxy: serverProxy, clientProxy: clientProxy,
                clientIdentity: try #require(clientTLS.localIdentity), serverIdentity: serverIdentity)
        }

        func stop() async {
            await clientProxy.stop()
            await serverProxy.stop()
            await echo.stop()
        }
    }

    @Test func http1TravelsOverMutualTLSAndArrivesWithTheClientIdentity() async throws {
        let mesh = try await Mesh.start(.http1)
        defer { Task { await mesh.stop() } }
        let result = try curl(
            [
                "-x", "http://127.0.0.1:\(mesh.clientProxy.ports.outbound)", "--data-binary", "meshed body",
                "http://echo.test:8080/hello",
            ])
        #expect(result.status == 200)
        #expect(result.body == "meshed body")
        #expect(result.headers["x-echo-version"] == "HTTP/1.1")
        #expect(result.headers["x-echo-client-id"] == mesh.clientIdentity)
        #expect(result.headers["x-echo-mesh-headers"] == "stripped")
        #expect(result.headers["x-echo-uri"] == "/hello")
    }

    @Test func h2cTravelsOverMutualTLSWithTrailers() async throws {
        let mesh = try await Mesh.start(.http2)
        defer { Task { await mesh.stop() } }
        let result = try curl(
            [
                "--http2-prior-knowledge", "-H", "Host: echo.test:8080", "--data-binary", "grpc frame",
                "http://127.0.0.1:\(mesh.clientProxy.ports.outbound)/grpc.Echo/Say",
            ])
        #expect(result.status == 200)
        #expect(result.body == "grpc frame")
        #expect(result.headers["x-echo-version"] == "h2")
        #expect(result.headers["x-echo-client-id"] == mesh.clientIdentity)
        #expect(result.headers["grpc-status"] == "0")
    }

    @Test func plaintextToTheInboundPortIsRefusedUnderAllAuthenticated() async throws {
        let mesh = try await Mesh.start(.http1)
        defer { Task { await mesh.stop() } }
        let result = try curl(
            [
                "-H", "apus-orig-dst-port: \(mesh.echo.port)",
                "http://127.0.0.1:\(mesh.serverProxy.ports.inbound)/direct",
            ])
        #expect(result.status == 403)
        #expect(result.headers["l5d-proxy-error"]?.contains("all-authenticated") == true)
    }

    @Test func aServerWithAnotherIdentityIsRefusedByTheClientProxy() async throws {
        let mesh = try await Mesh.start(
            .http1, expectedIdentity: "someone-else.default.serviceaccount.identity.apus.cluster.local")
        defer { Task { await mesh.stop() } }
        let result = try curl(["-x", "http://127.0.0.1:\(mesh.clientProxy.ports.outbound)", "http://echo.test:8080/"])
        #expect(result.status == 502)
        #expect(result.headers["l5d-proxy-error"]?.contains("TLS") == true)
    }
}
