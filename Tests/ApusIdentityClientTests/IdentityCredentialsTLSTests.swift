import ApusIdentity
import ApusIdentityClient
import ApusX509
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Testing

/// The TLS contexts ``IdentityCredentials`` makes, in real TLS 1.3 handshakes over loopback.
@Suite struct IdentityCredentialsTLSTests {
    /// A CA under its own root, issuing like the controller does.
    struct Authority {
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

        /// Credentials for `serviceAccount`, with `anchorsPEM` (by default this CA's root) as the trust anchors.
        func credentials(_ serviceAccount: String, anchorsPEM: String? = nil) throws -> IdentityCredentials {
            let identity = IdentityName(serviceAccount: serviceAccount, namespace: "default")
            let key = try PrivateKey.generateP256()
            let csr = try CertificateSigningRequest(key: key, dnsName: identity.description)
            let response = try authority.issue(csrDER: try csr.der, identity: identity)
            return IdentityCredentials(
                identity: identity, privateKey: key, leaf: try Certificate(der: response.leafCertificate),
                intermediates: try response.intermediateCertificates.map { try Certificate(der: $0) },
                validUntil: response.validUntil,
                anchors: try Certificate.parseChain(pem: anchorsPEM ?? self.anchorsPEM))
        }
    }

    /// Echoes one message through a mutual TLS connection; throws when either side refuses the handshake.
    func exchange(
        server: IdentityCredentials, client: IdentityCredentials, expecting serverName: String? = nil
    ) async throws -> String {
        let serverContext = try server.makeServerContext(requireClientCertificate: true)
        let clientContext = try client.makeClientContext()
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: serverContext))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let port = try #require(listener.channel.localAddress?.port)
        let served = Task {
            try await listener.executeThenClose { inbound in
                for try await connection in inbound {
                    try await connection.executeThenClose { input, output in
                        for try await buffer in input {
                            try await output.write(buffer)
                            return
                        }
                    }
                    return
                }
            }
        }
        defer { served.cancel() }
        let name = serverName ?? server.identity.description
        let connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(context: clientContext, serverHostname: name))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await connection.executeThenClose { input, output in
            try await output.write(ByteBuffer(string: "ping"))
            for try await buffer in input { return String(buffer: buffer) }
            return ""
        }
    }

    @Test("two identities from one CA complete a mutual TLS 1.3 handshake")
    func mutualHandshake() async throws {
        let authority = try Authority()
        let web = try authority.credentials("web")
        let db = try authority.credentials("db")
        #expect(try await exchange(server: db, client: web) == "ping")
    }

    @Test("the handshake fails when the server is not the identity the client expects")
    func wrongIdentity() async throws {
        let authority = try Authority()
        let web = try authority.credentials("web")
        let db = try authority.credentials("db")
        await #expect(throws: (any Error).self) {
            _ = try await exchange(
                server: db, client: web, expecting: "cache.default.serviceaccount.identity.apus.cluster.local")
        }
    }

    @Test("the handshake fails when either side's certificate comes from another CA")
    func otherCertificateAuthority() async throws {
        let trusted = try Authority()
        let stranger = try Authority()
        let web = try trusted.credentials("web")
        let intruder = try stranger.credentials("db", anchorsPEM: trusted.anchorsPEM)
        await #expect(throws: (any Error).self) { _ = try await exchange(server: intruder, client: web) }
        await #expect(throws: (any Error).self) { _ = try await exchange(server: web, client: intruder) }
    }

    @Test("leaves from an old and a new issuer interoperate when both trust the old+new anchors bundle")
    func anchorsBundleRotation() async throws {
        let old = try Authority()
        let new = try Authority()
        let bundle = old.anchorsPEM + new.anchorsPEM
        let oldLeaf = try old.credentials("web", anchorsPEM: bundle)
        let newLeaf = try new.credentials("db", anchorsPEM: bundle)
        #expect(try await exchange(server: oldLeaf, client: newLeaf) == "ping")
        #expect(try await exchange(server: newLeaf, client: oldLeaf) == "ping")
        // Without the bundle, the new leaf is a stranger to a proxy that only has the old root.
        let oldOnly = try old.credentials("web")
        await #expect(throws: (any Error).self) { _ = try await exchange(server: newLeaf, client: oldOnly) }
    }
}
