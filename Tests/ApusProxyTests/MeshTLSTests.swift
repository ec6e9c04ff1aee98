import ApusController
import ApusIdentity
import ApusIdentityClient
import ApusProxy
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Testing

@Suite struct MeshTLSTests {
    static let web = MeshCA.identity("web")
    static let client = MeshCA.identity("client", namespace: "front")

    @Test("two proxies handshake with mTLS 1.3: each side reads the other's identity and bytes flow")
    func mutualIdentity() async throws {
        let ca = try MeshCA.make()
        let server = try await MeshEchoServer(tls: MeshTLS(credentials: try ca.credentials(serviceAccount: "web")))
        let clientTLS = MeshTLS(credentials: try ca.credentials(serviceAccount: "client", namespace: "front"))
        #expect(clientTLS.localIdentity == Self.client)

        let connection = try await MeshClientConnection.connect(
            port: server.port, tls: clientTLS, expectedIdentity: Self.web)
        let seenByClient = try await connection.handshake.get()
        #expect(seenByClient.peerIdentity == Self.web)
        #expect(seenByClient.alpn == "h2")
        #expect(try await connection.roundTrip("ping"))
        let seenByServer = try await #require(server.outcomes.first).get()
        #expect(seenByServer.peerIdentity == Self.client)

        // Opaque transport negotiates its own protocol on the same listener.
        let opaque = try await MeshClientConnection.connect(
            port: server.port, tls: clientTLS, expectedIdentity: Self.web, alpn: [MeshTLS.alpnTransport])
        #expect(try await opaque.handshake.get().alpn == MeshTLS.alpnTransport)
        try await opaque.channel.close()
        try await connection.channel.close()
        try await server.close()
    }

    @Test("a server that does not carry the expected identity fails the handshake and sees no data")
    func wrongIdentity() async throws {
        let ca = try MeshCA.make()
        let server = try await MeshEchoServer(tls: MeshTLS(credentials: try ca.credentials(serviceAccount: "web")))
        let clientTLS = MeshTLS(credentials: try ca.credentials(serviceAccount: "client"))
        let connection = try await MeshClientConnection.connect(
            port: server.port, tls: clientTLS, expectedIdentity: MeshCA.identity("db"))
        // Written before the handshake: held back by TLS and failed with it, never sent.
        let written = connection.channel.eventLoop.makePromise(of: Void.self)
        connection.channel.writeAndFlush(ByteBuffer(string: "secret request"), promise: written)
        let write = written.futureResult
        await #expect(throws: (any Error).self) { try await connection.handshake.get() }
        await #expect(throws: (any Error).self) { try await write.get() }
        try await connection.channel.closeFuture.get()
        // In TLS 1.3 the server finishes its side before the client checks the name; it then sees the connection
        // close without a single application byte.
        try await MeshWait.until { server.traffic.closed == 1 }
        #expect(server.traffic.bytesRead == 0)
        try await server.close()
    }

    @Test("a server certificate from another trust root is refused even with the right name")
    func foreignCA() async throws {
        let ours = try MeshCA.make()
        let theirs = try MeshCA.make()
        let server = try await MeshEchoServer(
            tls: MeshTLS(credentials: try theirs.credentials(serviceAccount: "web")))
        let connection = try await MeshClientConnection.connect(
            port: server.port, tls: MeshTLS(credentials: try ours.credentials(serviceAccount: "client")),
            expectedIdentity: Self.web)
        await #expect(throws: (any Error).self) { try await connection.handshake.get() }
        try await server.close()
    }

    @Test("a TLS client without a certificate is accepted with no identity; one from another CA is refused")
    func clientCertificates() async throws {
        let ca = try MeshCA.make()
        let server = try await MeshEchoServer(tls: MeshTLS(credentials: try ca.credentials(serviceAccount: "web")))

        var anonymous = TLSConfiguration.makeClientConfiguration()
        anonymous.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(ca.anchorsPEM.utf8)))
        anonymous.applicationProtocols = ["h2"]
        let anonymousConnection = try await Self.connect(port: server.port, configuration: anonymous)
        try await anonymousConnection.channel.writeAndFlush(ByteBuffer(string: "hi")).get()
        let seen = try await #require(server.outcomes.first).get()
        #expect(seen.peerIdentity == nil)
        #expect(seen.peerCertificate == nil)

        // A client certificate is verified when presented: another CA's fails the handshake on the server.
        let foreign = try MeshCA.make().credentials(serviceAccount: "client")
        var impostor = try foreign.makeClientConfiguration()
        impostor.trustRoots = anonymous.trustRoots
        let impostorConnection = try await Self.connect(port: server.port, configuration: impostor)
        try await MeshWait.until { server.outcomes.count == 2 }
        await #expect(throws: (any Error).self) { try await server.outcomes[1].get() }
        try await impostorConnection.channel.closeFuture.get()
        try await anonymousConnection.channel.close()
        try await server.close()
    }

    @Test("TLS 1.2 is refused: mesh connections are TLS 1.3 only")
    func tls13Only() async throws {
        let ca = try MeshCA.make()
        let server = try await MeshEchoServer(tls: MeshTLS(credentials: try ca.credentials(serviceAccount: "web")))
        var old = try ca.credentials(serviceAccount: "client").makeClientConfiguration()
        old.minimumTLSVersion = .tlsv12
        old.maximumTLSVersion = .tlsv12
        let connection = try await Self.connect(port: server.port, configuration: old)
        await #expect(throws: (any Error).self) { try await connection.handshake.get() }
        try await server.close()
    }

    @Test("standalone (no identity): making a handler is a typed error, not a crash")
    func standalone() throws {
        let tls = MeshTLS(identity: nil)
        #expect(tls.localIdentity == nil && !tls.isAvailable)
        #expect(throws: MeshTLSError(.noIdentity, "mesh TLS is unavailable: the proxy runs without an identity")) {
            _ = try tls.makeServerHandler()
        }
        #expect { _ = try tls.makeClientHandler(expectedIdentity: Self.web, alpn: ["h2"]) } throws: { error in
            (error as? MeshTLSError)?.code == .noIdentity
        }
    }

    @Test("rotation: new connections get the new certificate, an established connection stays up")
    func rotation() async throws {
        let ca = try MeshCA.make()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("mesh-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let tokens = LocalTokenValidator()
        let webName = IdentityName(serviceAccount: "web", namespace: "shop")
        let tokenPath = directory.appendingPathComponent("token").path
        try tokens.mint(for: webName).write(toFile: tokenPath, atomically: true, encoding: .utf8)
        let service = IdentityService(
            options: IdentityServiceOptions(host: "127.0.0.1", port: 0, servingDNSNames: ["localhost"]),
            source: nil, validator: tokens, issuer: ca.issuer)
        let serviceTask = Task { try await service.run() }
        defer { serviceTask.cancel() }
        let servicePort = try await service.waitUntilListening()
        let identity = try IdentityClient(
            configuration: IdentityClientConfiguration(
                identity: webName, tokenPath: tokenPath, trustAnchorsPEM: ca.anchorsPEM,
                endpoint: CertifyEndpoint(
                    host: "127.0.0.1", port: servicePort, serverIdentity: service.serverIdentity.description)))

        let serverTLS = MeshTLS(identity: identity)
        #expect(serverTLS.localIdentity == nil)  // not certified yet
        #expect(throws: MeshTLSError.self) { _ = try serverTLS.serverContext() }
        let first = try await identity.certify()
        #expect(serverTLS.localIdentity == Self.web)
        // One context per certificate, not per connection.
        #expect(try serverTLS.serverContext() === serverTLS.serverContext())
        let contextBefore = try serverTLS.serverContext()

        let server = try await MeshEchoServer(tls: serverTLS)
        let clientTLS = MeshTLS(credentials: try ca.credentials(serviceAccount: "client", namespace: "front"))
        let before = try await MeshClientConnection.connect(
            port: server.port, tls: clientTLS, expectedIdentity: Self.web)
        #expect(try await before.handshake.get().peerCertificate == (try first.leaf.der))

        let second = try await identity.certify()
        #expect(second.leaf != first.leaf)
        #expect(try serverTLS.serverContext() !== contextBefore)
        let after = try await MeshClientConnection.connect(
            port: server.port, tls: clientTLS, expectedIdentity: Self.web)
        #expect(try await after.handshake.get().peerCertificate == (try second.leaf.der))
        // The connection made before the rotation still carries data, with its original certificate.
        #expect(try await before.roundTrip("still here"))
        #expect(before.channel.isActive)
        #expect(try await after.roundTrip("new one"))

        try await before.channel.close()
        try await after.channel.close()
        try await server.close()
        serviceTask.cancel()
        _ = await serviceTask.result
    }

    static func connect(port: Int, configuration: TLSConfiguration) async throws -> MeshClientConnection {
        let context = try NIOSSLContext(configuration: configuration)
        let collector = ByteCollector()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port).get()
        let promise = channel.eventLoop.makePromise(of: HandshakeOutcome.self)
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.addHandler(
                try NIOSSLClientHandler(context: context, serverHostname: Self.web))
            try channel.pipeline.syncOperations.addHandler(HandshakeRecorder(outcome: promise, echo: false))
            try channel.pipeline.syncOperations.addHandler(collector)
        }.get()
        return MeshClientConnection(channel: channel, handshake: promise.futureResult, collector: collector)
    }
}
