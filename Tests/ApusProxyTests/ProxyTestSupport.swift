import ApusDestinationClient
import ApusIdentity
import ApusIdentityClient
import ApusProxy
import ApusX509
import Foundation
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// Binds a test application on 127.0.0.1 (a free port) speaking HTTP/1.1 or h2c (prior knowledge): every
/// HTTP/1 connection, or every HTTP/2 stream, gets a new handler from `makeHandler` that sees
/// `HTTPServerRequestPart`s either way, so one handler serves both versions.
/// - Parameter onConnection: called for each accepted TCP connection, before its pipeline is set up.
func bindHTTPTestServer(
    http2: Bool, onConnection: (@Sendable () -> Void)? = nil,
    _ makeHandler: @escaping @Sendable () -> any ChannelHandler
) async throws -> any Channel {
    try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { channel in
            onConnection?()
            return channel.eventLoop.makeCompletedFuture {
                let pipeline = channel.pipeline.syncOperations
                guard http2 else {
                    try pipeline.configureHTTPServerPipeline(withErrorHandling: true)
                    try pipeline.addHandler(makeHandler())
                    return
                }
                _ = try pipeline.configureHTTP2Pipeline(
                    mode: .server, connectionConfiguration: .init(), streamConfiguration: .init(),
                    inboundStreamInitializer: { stream in
                        stream.eventLoop.makeCompletedFuture {
                            try stream.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                            try stream.pipeline.syncOperations.addHandler(makeHandler())
                        }
                    })
            }
        }
        .bind(host: "127.0.0.1", port: 0).get()
}

/// An application for the proxy to forward to: answers every request with `200`, the request body echoed back
/// (streamed as it arrives), `x-echo-*` headers describing what it received, and `grpc-status: 0` as a trailer.
/// Speaks HTTP/1.1 or h2c (prior knowledge), and answers an `Upgrade: echo` request with 101 and then echoes raw
/// bytes.
final class EchoServer: Sendable {
    enum HTTPVersion: Sendable { case http1, http2 }

    let channel: Channel
    var port: Int { channel.localAddress?.port ?? 0 }

    private init(channel: Channel) {
        self.channel = channel
    }

    static func start(_ version: HTTPVersion) async throws -> EchoServer {
        let http2 = version == .http2
        let channel = try await bindHTTPTestServer(http2: http2) { EchoHandler(isHTTP2: http2) }
        return EchoServer(channel: channel)
    }

    func stop() async {
        try? await channel.close()
    }
}

private final class EchoHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let isHTTP2: Bool
    private var upgradeHeaders: HTTPHeaders?

    init(isHTTP2: Bool) {
        self.isHTTP2 = isHTTP2
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            var headers = HTTPHeaders()
            headers.add(name: "x-echo-method", value: "\(head.method)")
            headers.add(name: "x-echo-uri", value: head.uri)
            headers.add(name: "x-echo-version", value: isHTTP2 ? "h2" : "HTTP/1.1")
            headers.add(name: "x-echo-client-id", value: head.headers.first(name: "l5d-client-id") ?? "none")
            headers.add(name: "x-echo-host", value: head.headers.first(name: "host") ?? "none")
            let forwarded =
                head.headers.contains(name: "apus-orig-dst-port") || head.headers.contains(name: "l5d-orig-proto")
            headers.add(name: "x-echo-mesh-headers", value: forwarded ? "leaked" : "stripped")
            headers.add(name: "x-echo-te", value: head.headers.first(name: "transfer-encoding") ?? "none")
            if head.headers.first(name: "upgrade") == "echo" {
                headers.add(name: "upgrade", value: "echo")
                headers.add(name: "connection", value: "upgrade")
                upgradeHeaders = headers
                return
            }
            if !isHTTP2 { headers.add(name: "transfer-encoding", value: "chunked") }
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))),
                promise: nil)
        case .body(let body):
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        case .end:
            if let headers = upgradeHeaders {
                let head = HTTPResponseHead(version: .http1_1, status: .switchingProtocols, headers: headers)
                context.writeAndFlush(wrapOutboundOut(.head(head)), promise: nil)
                let pipeline = context.pipeline.syncOperations
                if let handler = try? pipeline.handler(type: HTTPServerPipelineHandler.self) {
                    pipeline.removeHandler(handler, promise: nil)
                }
                if let handler = try? pipeline.handler(type: HTTPServerProtocolErrorHandler.self) {
                    pipeline.removeHandler(handler, promise: nil)
                }
                if let handler = try? pipeline.handler(type: NIOHTTPResponseHeadersValidator.self) {
                    pipeline.removeHandler(handler, promise: nil)
                }
                if let handler = try? pipeline.handler(type: HTTPResponseEncoder.self) {
                    pipeline.removeHandler(handler, promise: nil)
                }
                try? pipeline.addHandler(RawEcho())
                pipeline.removeHandler(context: context, promise: nil)
                if let handler = try? pipeline.handler(
                    type: ByteToMessageHandler<HTTPDecoder<HTTPServerRequestPart, HTTPServerResponsePart>>.self)
                {
                    pipeline.removeHandler(handler, promise: nil)
                }
                return
            }
            context.writeAndFlush(wrapOutboundOut(.end(HTTPHeaders([("grpc-status", "0")]))), promise: nil)
        }
    }
}

private final class RawEcho: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
}

/// A proxy running in-process on free ports.
struct RunningProxy {
    let server: ProxyServer
    let task: Task<Void, Error>
    let ports: ProxyServer.BoundPorts

    static func start(
        _ configure: (inout ProxyConfiguration) -> Void = { _ in }, meshTLS: MeshTLS? = nil
    ) async throws -> RunningProxy {
        var configuration = ProxyConfiguration()
        configuration.outboundListen = ListenAddress(host: "127.0.0.1", port: 0)
        configuration.inboundListen = ListenAddress(host: "127.0.0.1", port: 0)
        configuration.adminListen = ListenAddress(host: "127.0.0.1", port: 0)
        configuration.shutdownGracePeriod = .seconds(2)
        configure(&configuration)
        let server = try ProxyServer(configuration: configuration, meshTLS: meshTLS)
        let task = Task { try await server.run() }
        let ports = try await server.waitUntilListening()
        return RunningProxy(server: server, task: task, ports: ports)
    }

    func stop() async {
        server.triggerShutdown()
        _ = try? await task.value
    }
}

/// Runs `body` with an ``EchoServer`` and a standalone ``RunningProxy`` in front of it, and stops both once it
/// returns or throws.
func withProxiedEcho(
    _ version: EchoServer.HTTPVersion, spliced: Bool = true, _ body: (EchoServer, RunningProxy) async throws -> Void
) async throws {
    let echo = try await EchoServer.start(version)
    let proxy: RunningProxy
    do {
        proxy = try await RunningProxy.start { $0.http1Splice = spliced }
    } catch {
        await echo.stop()
        throw error
    }
    do {
        try await body(echo, proxy)
    } catch {
        await proxy.stop()
        await echo.stop()
        throw error
    }
    await proxy.stop()
    await echo.stop()
}

/// What `curl` printed: status, headers (lower-cased names; last value wins) and body.
struct CurlResult {
    var exitCode: Int32
    var status: Int
    var headers: [String: String]
    var body: String
}

/// Runs `curl` with `arguments` (plus `-s -D <headers>`), returning its parsed output.
func curl(_ arguments: [String], stdin: Data? = nil) throws -> CurlResult {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("apus-proxy-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let headerFile = directory.appendingPathComponent("headers").path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["curl", "-s", "--max-time", "10", "-D", headerFile] + arguments
    let output = Pipe()
    process.standardOutput = output
    let input = Pipe()
    if stdin != nil { process.standardInput = input }
    try process.run()
    if let stdin {
        input.fileHandleForWriting.write(stdin)
        try input.fileHandleForWriting.close()
    }
    let body = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let headerText = (try? String(contentsOfFile: headerFile, encoding: .utf8)) ?? ""
    var status = 0
    var headers: [String: String] = [:]
    for line in headerText.split(separator: "\r\n") {
        if line.hasPrefix("HTTP/") {
            status = Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
            headers = [:]
        } else if let colon = line.firstIndex(of: ":") {
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...]
                .trimmingCharacters(in: .whitespaces)
        }
    }
    return CurlResult(
        exitCode: process.terminationStatus, status: status, headers: headers,
        body: String(decoding: body, as: UTF8.self))
}

/// Sends raw bytes on a fresh connection and returns everything the peer sends until it closes (or 5 s pass).
/// - Parameter halfClose: send FIN right after `bytes` (the answer is then read until the proxy closes).
func rawExchange(port: Int, _ bytes: [UInt8], halfClose: Bool = false) async throws -> String {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                    wrappingChannelSynchronously: channel,
                    configuration: .init(isOutboundHalfClosureEnabled: halfClose))
            }
        }
    return try await channel.executeThenClose { inbound, outbound in
        try await outbound.write(ByteBuffer(bytes: bytes))
        if halfClose { outbound.finish() }
        var received = ""
        let deadline = ContinuousClock.now + .seconds(5)
        for try await buffer in inbound {
            received += String(buffer: buffer)
            if ContinuousClock.now > deadline { break }
        }
        return received
    }
}

/// A CA issuing mesh identities the way the identity service does, for proxies under test.
struct MeshAuthority {
    let authority: CertificateAuthority
    let anchorsPEM: String

    init() throws {
        let generated = try TrustRootsGenerator.generate()
        anchorsPEM = generated.anchorsPEM
        authority = CertificateAuthority(
            credentials: try IssuerCredentials(
                anchorsPEM: generated.anchorsPEM, issuerCertificatePEM: generated.issuerCertificatePEM,
                issuerKeyPEM: generated.issuerKeyPEM))
    }

    func meshTLS(_ serviceAccount: String) throws -> MeshTLS {
        let identity = IdentityName(serviceAccount: serviceAccount, namespace: "default")
        let key = try PrivateKey.generateP256()
        let csr = try CertificateSigningRequest(key: key, dnsName: identity.description)
        let response = try authority.issue(csrDER: try csr.der, identity: identity)
        return MeshTLS(
            credentials: IdentityCredentials(
                identity: identity, privateKey: key, leaf: try Certificate(der: response.leafCertificate),
                intermediates: try response.intermediateCertificates.map { try Certificate(der: $0) },
                validUntil: response.validUntil, anchors: try Certificate.parseChain(pem: anchorsPEM)))
    }
}

/// A response as NIO's client codec decoded it.
struct ReceivedResponse {
    var status: Int
    var version: HTTPVersion
    var headers: HTTPHeaders
    var body: String
    var trailers: HTTPHeaders?
}

/// Sequential exchanges on one HTTP/1.1 client connection.
struct HTTPExchanges {
    var responses: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator
    let outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>

    /// Sends `head` (and `body`) and reads the response; nil when the connection closed first.
    mutating func send(_ head: HTTPRequestHead, body: String? = nil) async throws -> ReceivedResponse? {
        var parts: [HTTPClientRequestPart] = [.head(head)]
        if let body { parts.append(.body(.byteBuffer(ByteBuffer(string: body)))) }
        parts.append(.end(nil))
        try await outbound.write(contentsOf: parts)
        var response: ReceivedResponse?
        while let part = try await responses.next() {
            switch part {
            case .head(let head):
                response = ReceivedResponse(
                    status: Int(head.status.code), version: head.version, headers: head.headers, body: "")
            case .body(let bytes):
                response?.body += String(buffer: bytes)
            case .end(let trailers):
                response?.trailers = trailers
                return response
            }
        }
        return response
    }

    mutating func send(_ method: HTTPMethod, _ uri: String, host: String, body: String? = nil) async throws
        -> ReceivedResponse?
    {
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: uri)
        head.headers.add(name: "host", value: host)
        if let body { head.headers.add(name: "content-length", value: String(body.utf8.count)) }
        return try await send(head, body: body)
    }
}

/// Runs `body` with a keep-alive HTTP/1.1 connection to 127.0.0.1:`port`, closed afterwards.
func withHTTPClient(port: Int, _ body: (inout HTTPExchanges) async throws -> Void) async throws {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                    wrappingChannelSynchronously: channel)
            }
        }
    try await channel.executeThenClose { inbound, outbound in
        var exchanges = HTTPExchanges(responses: inbound.makeAsyncIterator(), outbound: outbound)
        try await body(&exchanges)
    }
}
