import ApusIdentity
import ApusX509
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Testing

/// Two swift-nio-ssl endpoints on loopback sockets authenticating each other with issued identities, the way two
/// meshed proxies do: each trusts only the anchors, the server requires a client certificate, and the client checks
/// the server's DNS SAN against the identity it expects (the identity is the TLS server name, as in Linkerd).
@Suite struct MutualTLSTests {
    struct Endpoint {
        let chain: [Certificate]
        let key: PrivateKey

        init(_ issued: IssuedIdentity) throws {
            chain = [try issued.leaf] + (try issued.intermediates)
            key = issued.key
        }

        /// A TLS 1.3-only configuration presenting this identity and trusting only `anchors`.
        func configuration(server: Bool, anchors: [Certificate]) throws -> TLSConfiguration {
            let chain = try chain.map {
                NIOSSLCertificateSource.certificate(try NIOSSLCertificate(bytes: $0.der, format: .der))
            }
            let key = NIOSSLPrivateKeySource.privateKey(
                try NIOSSLPrivateKey(bytes: Array(key.pemPKCS8.utf8), format: .pem))
            var configuration: TLSConfiguration
            if server {
                configuration = .makeServerConfiguration(certificateChain: chain, privateKey: key)
                // Clients have no host name to check; the chain to the anchors is what authenticates them.
                configuration.certificateVerification = .noHostnameVerification
            } else {
                configuration = .makeClientConfiguration()
                configuration.certificateChain = chain
                configuration.privateKey = key
                configuration.certificateVerification = .fullVerification
            }
            configuration.trustRoots = .certificates(
                try anchors.map { try NIOSSLCertificate(bytes: $0.der, format: .der) })
            configuration.minimumTLSVersion = .tlsv13
            configuration.maximumTLSVersion = .tlsv13
            return configuration
        }
    }

    struct Outcome {
        /// What the server answered: the client identity it saw and the TLS version, or the client's error.
        let client: Result<String, any Error>
        /// The client identity the server authenticated, or the server's error.
        let server: Result<String, any Error>
    }

    /// Runs one connection: the client sends "ping" (delivered once its handshake completes); the server answers with the
    /// client identity it authenticated and the negotiated version.
    func handshake(
        server: Endpoint, serverAnchors: [Certificate], client: Endpoint, clientAnchors: [Certificate],
        expectedServerIdentity: String
    ) async throws -> Outcome {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let serverContext = try NIOSSLContext(configuration: server.configuration(server: true, anchors: serverAnchors))
        let clientContext = try NIOSSLContext(
            configuration: client.configuration(server: false, anchors: clientAnchors))

        let serverResult = group.next().makePromise(of: String.self)
        let clientResult = group.next().makePromise(of: String.self)
        let listener = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        NIOSSLServerHandler(context: serverContext), ServerHandler(result: serverResult),
                    ])
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(listener.localAddress?.port)
        let connection = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        try NIOSSLClientHandler(context: clientContext, serverHostname: expectedServerIdentity),
                        ClientHandler(result: clientResult),
                    ])
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let timeout = group.next().scheduleTask(in: .seconds(20)) {
            clientResult.fail(HandshakeTimeout())
            serverResult.fail(HandshakeTimeout())
        }
        let clientOutcome = await result(of: clientResult.futureResult)
        // The server reports within milliseconds of the client (its verdict or the client's alert); the grace
        // period only bounds a test that went wrong.
        let grace = group.next().scheduleTask(in: .seconds(2)) { serverResult.fail(HandshakeTimeout()) }
        let serverOutcome = await result(of: serverResult.futureResult)
        // Cancel the timers while their loop still runs (cancelling after the group shut down is an error).
        grace.cancel()
        timeout.cancel()
        try? await connection.close()
        try await listener.close()
        try await group.shutdownGracefully()
        return Outcome(client: clientOutcome, server: serverOutcome)
    }

    func result(of future: EventLoopFuture<String>) async -> Result<String, any Error> {
        do { return .success(try await future.get()) } catch { return .failure(error) }
    }

    @Test func issuedIdentitiesCompleteATLS13MutualHandshake() async throws {
        let ca = try TestAuthority()
        let server = try Endpoint(ca.issue(identity("api")))
        let client = try Endpoint(ca.issue(identity("web")))
        let anchors = ca.credentials.anchors
        let outcome = try await handshake(
            server: server, serverAnchors: anchors, client: client, clientAnchors: anchors,
            expectedServerIdentity: identity("api").description)
        #expect(try outcome.client.get() == "\(identity("web").description) tlsv13")
        #expect(try outcome.server.get() == identity("web").description)
    }

    @Test func serverRejectsAClientCertificateFromAnotherCA() async throws {
        let ca = try TestAuthority()
        let foreign = try TestAuthority()
        let server = try Endpoint(ca.issue(identity("api")))
        let client = try Endpoint(foreign.issue(identity("web")))
        let outcome = try await handshake(
            server: server, serverAnchors: ca.credentials.anchors, client: client,
            clientAnchors: ca.credentials.anchors, expectedServerIdentity: identity("api").description)
        #expect(throws: (any Error).self) { try outcome.client.get() }
        #expect(throws: NIOSSLError.self) { try outcome.server.get() }
    }

    @Test func clientRejectsAServerCertificateFromAnotherCA() async throws {
        let ca = try TestAuthority()
        let foreign = try TestAuthority()
        let server = try Endpoint(foreign.issue(identity("api")))
        let client = try Endpoint(ca.issue(identity("web")))
        let outcome = try await handshake(
            server: server, serverAnchors: ca.credentials.anchors, client: client,
            clientAnchors: ca.credentials.anchors, expectedServerIdentity: identity("api").description)
        #expect(throws: NIOSSLError.self) { try outcome.client.get() }
        #expect(throws: (any Error).self) { try outcome.server.get() }
    }

    @Test func clientRejectsAServerWithAnotherIdentityThanExpected() async throws {
        let ca = try TestAuthority()
        // Same CA, valid chain, but the server is "admin", not the "api" the client wants to reach.
        let server = try Endpoint(ca.issue(identity("admin")))
        let client = try Endpoint(ca.issue(identity("web")))
        let anchors = ca.credentials.anchors
        let outcome = try await handshake(
            server: server, serverAnchors: anchors, client: client, clientAnchors: anchors,
            expectedServerIdentity: identity("api").description)
        #expect(throws: (any Error).self) { try outcome.client.get() }
        // The same pair succeeds when the client expects "admin", so the failure above is the name check.
        let expected = try await handshake(
            server: server, serverAnchors: anchors, client: client, clientAnchors: anchors,
            expectedServerIdentity: identity("admin").description)
        #expect(try expected.client.get() == "\(identity("web").description) tlsv13")
    }
}

private struct HandshakeTimeout: Error {}

private struct ConnectionClosed: Error {}

private final class ServerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let result: EventLoopPromise<String>

    init(result: EventLoopPromise<String>) { self.result = result }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let operations = context.pipeline.syncOperations
        let peer = (try? operations.nioSSL_peerCertificate()).flatMap { $0 }
        let name = peer.flatMap { try? Certificate(der: $0.toDERBytes()).dnsNames.first } ?? "-"
        let version = (try? operations.nioSSL_tlsVersion()).flatMap { $0 }.map { "\($0)" } ?? "-"
        result.succeed(name)
        context.writeAndFlush(
            wrapOutboundOut(context.channel.allocator.buffer(string: "\(name) \(version)")), promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        result.fail(error)
        context.close(promise: nil)
    }
}

private final class ClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let result: EventLoopPromise<String>

    init(result: EventLoopPromise<String>) { self.result = result }

    func channelActive(context: ChannelHandlerContext) {
        // NIOSSLHandler holds the write until the handshake has completed.
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: "ping")), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        result.succeed(buffer.readString(length: buffer.readableBytes) ?? "")
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        result.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        result.fail(ConnectionClosed())
        context.fireChannelInactive()
    }
}
