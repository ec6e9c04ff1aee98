import ApusProxy
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

/// The data path under conditions real clients and servers create: HEAD framing, stale pooled connections,
/// `Expect: 100-continue`, policy refusals, opaque bytes, a client that stops reading, shutdown drains, and the
/// `await` subcommand of the binary.
@Suite(.serialized) struct ProxyHardeningTests {
    @Test func headResponseAdvertisingChunkedEncodingCarriesNoChunkTerminator() async throws {
        try await withProxiedEcho(.http1) { echo, proxy in
            let host = "Host: 127.0.0.1:\(echo.port)\r\n"
            // Two requests pipelined on one connection: a stray `0\r\n\r\n` after the HEAD response would be read by
            // the client as the start of the second response.
            let received = try await rawExchange(
                port: proxy.ports.outbound,
                Array("HEAD /h HTTP/1.1\r\n\(host)\r\nGET /g HTTP/1.1\r\n\(host)Connection: close\r\n\r\n".utf8))
            let parts = received.components(separatedBy: "\r\n\r\n")
            try #require(parts.count >= 2)
            #expect(parts[0].hasPrefix("HTTP/1.1 200"))
            #expect(parts[0].lowercased().contains("transfer-encoding: chunked"))
            #expect(parts[0].contains("x-echo-method: HEAD"))
            #expect(parts[1].hasPrefix("HTTP/1.1 200"))
            #expect(parts[1].contains("x-echo-method: GET"))
        }
    }

    @Test func idempotentRequestOnAConnectionTheServerClosedIsRetriedOnceOnAFreshOne() async throws {
        let connections = NIOLockedValueBox(0)
        let backend = try await HardeningServer.start(http: false) {
            ClosesReusedConnectionHandler(connections: connections)
        }
        let proxy = try await RunningProxy.start()
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }
        let base = "http://127.0.0.1:\(backend.port)"
        // One client connection, two GETs: the second goes out on the pooled upstream connection, which the
        // backend closes unanswered; the proxy retries it on a new connection instead of answering 502.
        let result = try curl(
            ["-x", "http://127.0.0.1:\(proxy.ports.outbound)", "\(base)/a", "\(base)/b", "-w", "|%{http_code};"])
        #expect(result.body == "ok|200;ok|200;")
        #expect(connections.withLockedValue { $0 } == 2)

        // A request with a body is not idempotent-safe to replay: the failure is reported, not retried.
        let post = try curl(
            [
                "-x", "http://127.0.0.1:\(proxy.ports.outbound)", "\(base)/c", "-w", "|%{http_code};", "--next",
                "-x", "http://127.0.0.1:\(proxy.ports.outbound)", "--data-binary", "payload", "\(base)/d", "-w",
                "|%{http_code};",
            ])
        #expect(post.body.hasPrefix("ok|200;"))
        #expect(post.body.hasSuffix("|502;"))
        #expect(connections.withLockedValue { $0 } == 3)
    }

    @Test func expect100ContinueReachesTheClientBeforeTheBodyIsSent() async throws {
        let backend = try await HardeningServer.start(http: true) { ContinueHandler() }
        let proxy = try await RunningProxy.start()
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
            }
        }
        let payload = Data(repeating: UInt8(ascii: "x"), count: 200_000)
        // curl holds the body until it sees `100 Continue` (for up to 30 s, beyond the helper's 10 s limit): a
        // proxy that swallowed the interim response would make this time out.
        let started = ContinuousClock.now
        let result = try curl(
            [
                "-x", "http://127.0.0.1:\(proxy.ports.outbound)", "-H", "Expect: 100-continue",
                "--expect100-timeout", "30", "--data-binary", "@-", "http://127.0.0.1:\(backend.port)/upload",
            ], stdin: payload)
        #expect(result.exitCode == 0)
        #expect(result.status == 200)
        #expect(result.body == "received=200000")
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    @Test func denyPolicyRefusesPlaintextHTTPAndOpaqueConnections() async throws {
        let echo = try await EchoServer.start(.http1)
        let tcpEcho = try await HardeningServer.start(http: false) { TCPEchoHandler() }
        let proxy = try await RunningProxy.start {
            $0.inboundPolicy = .deny
            $0.inboundDefaultPort = tcpEcho.port
        }
        defer {
            Task {
                await proxy.stop()
                await echo.stop()
                await tcpEcho.stop()
            }
        }
        let http = try curl(
            ["-H", "apus-orig-dst-port: \(echo.port)", "http://127.0.0.1:\(proxy.ports.inbound)/denied"])
        #expect(http.status == 403)
        #expect(http.headers["l5d-proxy-error"]?.contains("deny") == true)
        #expect(http.headers["x-echo-method"] == nil)
        // Bytes that are not HTTP would go to the default port as opaque TCP: refused, the connection closes.
        let opaque = try await rawExchange(port: proxy.ports.inbound, [0, 1, 2, 3] + Array("opaque".utf8))
        #expect(opaque.isEmpty)
    }

    @Test func opaqueInboundBytesReachTheApplicationUnchanged() async throws {
        let tcpEcho = try await HardeningServer.start(http: false) { TCPEchoHandler() }
        let proxy = try await RunningProxy.start { $0.inboundDefaultPort = tcpEcho.port }
        defer {
            Task {
                await proxy.stop()
                await tcpEcho.stop()
            }
        }
        // Not HTTP, not TLS: detection says opaque at the first byte and the stream is glued to the app.
        let payload: [UInt8] = [0, 255, 13, 10] + Array(repeating: 7, count: 100_000)
        let connection = try await RawConnection.connect(port: proxy.ports.inbound)
        let echoed = try await connection.exchange(payload) { $0.count >= payload.count }
        #expect(echoed == payload)
    }

    @Test func aClientThatStopsReadingKeepsWhatTheProxyBuffersBounded() async throws {
        let offered = 200 * 1024 * 1024
        let sent = NIOLockedValueBox(0)
        let backend = try await HardeningServer.start(http: false) { FloodHandler(total: offered, sent: sent) }
        let echo = try await EchoServer.start(.http1)
        let proxy = try await RunningProxy.start()
        defer {
            Task {
                await proxy.stop()
                await backend.stop()
                await echo.stop()
            }
        }

        // The client asks for 200 MiB and never reads a byte (small receive buffer, no reads).
        let client = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.autoRead, value: false)
            .channelOption(.socketOption(.so_rcvbuf), value: 4096)
            .connect(host: "127.0.0.1", port: proxy.ports.outbound).get()
        try await client.writeAndFlush(
            ByteBuffer(string: "GET /big HTTP/1.1\r\nHost: 127.0.0.1:\(backend.port)\r\n\r\n"))

        // Wait until the backend cannot push any more (two samples a second apart agree).
        var previous = -1
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            try await Task.sleep(for: .seconds(1))
            let current = sent.withLockedValue { $0 }
            if current == previous && current > 0 { break }
            previous = current
        }
        // Everything the backend got rid of sits in the proxy or in the four socket buffers between backend and
        // client (each at most a few MiB with Linux autotuning): never anywhere near the 200 MiB offered.
        let stalled = sent.withLockedValue { $0 }
        print("slow reader: the backend got \(stalled) of \(offered) bytes out before backpressure stopped it")
        #expect(stalled > 0)
        #expect(stalled < 48 * 1024 * 1024, "the backend pushed \(stalled) bytes into a client that reads nothing")
        // The proxy keeps serving everyone else meanwhile.
        let other = try curl(["-x", "http://127.0.0.1:\(proxy.ports.outbound)", "http://127.0.0.1:\(echo.port)/x"])
        #expect(other.status == 200)
        try await client.close()
    }

    @Test func shutdownDrainsTheRequestInFlightAndRefusesNewConnections() async throws {
        let backend = try await HardeningServer.start(http: true) { SlowHandler(delay: .seconds(3)) }
        let proxy = try await RunningProxy.start { $0.shutdownGracePeriod = .seconds(10) }
        defer { Task { await backend.stop() } }
        let outbound = proxy.ports.outbound
        // curl blocks its thread: a thread of its own, not one of the few the tests' async tasks share.
        let inFlight = Task {
            try await withCheckedThrowingContinuation { continuation in
                DispatchQueue.global().async {
                    continuation.resume(
                        with: Result {
                            try curl(["-x", "http://127.0.0.1:\(outbound)", "http://127.0.0.1:\(backend.port)/slow"])
                        })
                }
            }
        }
        try await MeshWait.until { proxy.server.requestsInFlight == 1 }
        proxy.server.triggerShutdown()
        // The listeners close at once: new connections are refused while the old request is still running.
        try await MeshWait.until { !(await acceptsConnections(port: outbound)) }
        #expect(proxy.server.requestsInFlight == 1)
        let result = try await inFlight.value
        #expect(result.status == 200)
        #expect(result.body == "slow")
        // Then the proxy stops by itself, well within the grace period.
        let stopped = ContinuousClock.now
        _ = try? await proxy.task.value
        #expect(ContinuousClock.now - stopped < .seconds(5))
    }

    @Test func awaitSubcommandWaitsForReadinessAndTimesOut() async throws {
        let binary = builtExecutable("apus-proxy")
        try #require(FileManager.default.isExecutableFile(atPath: binary), "\(binary) is not built")
        let proxy = try await RunningProxy.start()
        defer { Task { await proxy.stop() } }
        let ready = try runProcess(binary, ["await", "--timeout=5s", "--port=\(proxy.ports.admin)"])
        #expect(ready.status == 0)

        // Nothing listens on a port we just released: not ready until the timeout, exit 1.
        let unused = try await HardeningServer.start(http: false) { TCPEchoHandler() }
        let port = unused.port
        await unused.stop()
        let started = ContinuousClock.now
        let timedOut = try runProcess(binary, ["await", "--timeout", "1s", "--port", "\(port)"])
        #expect(timedOut.status == 1)
        #expect(timedOut.stderr.contains("not ready within"))
        #expect(ContinuousClock.now - started >= .seconds(1))

        let usage = try runProcess(binary, ["await", "--timeout=soon"])
        #expect(usage.status == 2)
        #expect(usage.stderr.contains("--timeout"))
    }
}
