import ApusController
import ApusIdentity
import ApusIdentityClient
import ApusProxy
import ApusX509
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Testing

/// An in-process mesh CA for the MESH and Discovery tests: fresh trust roots, an ``IdentityIssuer`` (which also
/// serves the destination server's certificate) and proxy credentials issued as Certify would.
struct MeshCA {
    let anchorsPEM: String
    let issuer: IdentityIssuer

    static func make() throws -> MeshCA {
        let roots = try TrustRootsGenerator.generate()
        let issuer = IdentityIssuer()
        let outcome = issuer.load(
            anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
            issuerKeyPEM: roots.issuerKeyPEM)
        guard case .updated = outcome else { throw IdentityError(.invalidIssuer, "test roots refused: \(outcome)") }
        return MeshCA(anchorsPEM: roots.anchorsPEM, issuer: issuer)
    }

    /// Credentials for `<serviceAccount>.<namespace>.serviceaccount.identity.apus.cluster.local`, checked the way
    /// the identity client checks a Certify response.
    func credentials(serviceAccount: String, namespace: String = "shop") throws -> IdentityCredentials {
        let identity = IdentityName(serviceAccount: serviceAccount, namespace: namespace)
        let key = try PrivateKey.generateP256()
        let csr = try CertificateSigningRequest(key: key, dnsName: identity.description)
        let response = try issuer.authority().issue(csrDER: try csr.der, identity: identity)
        let leaf = try Certificate(der: response.leafCertificate)
        let intermediates = try response.intermediateCertificates.map { try Certificate(der: $0) }
        let anchors = try Certificate.parseChain(pem: anchorsPEM)
        try leaf.verify(anchors: anchors, intermediates: intermediates)
        return IdentityCredentials(
            identity: identity, privateKey: key, leaf: leaf, intermediates: intermediates,
            validUntil: response.validUntil, anchors: anchors)
    }

    static func identity(_ serviceAccount: String, namespace: String = "shop") -> String {
        IdentityName(serviceAccount: serviceAccount, namespace: namespace).description
    }
}

/// Polls `condition` until it holds or `timeout` passes (state, never a guessed sleep).
enum MeshWait {
    static func until(
        timeout: Duration = .seconds(10), sourceLocation: SourceLocation = #_sourceLocation,
        _ condition: () async throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await condition()) == true { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("condition not met within \(timeout)", sourceLocation: sourceLocation)
        throw CancellationError()
    }
}

/// What one side of a mesh TLS connection saw once the handshake finished.
struct HandshakeOutcome: Sendable {
    /// ``PeerIdentity/ofVerifiedPeer(in:)`` on this side.
    var peerIdentity: String?
    var alpn: String?
    /// The DER of the certificate the peer presented.
    var peerCertificate: [UInt8]?
}

/// Records the handshake outcome (or failure) of its channel and echoes every byte it reads back.
final class HandshakeRecorder: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What the server side of all connections read and how many of them closed.
    struct Traffic {
        var bytesRead = 0
        var closed = 0
    }

    let outcome: EventLoopPromise<HandshakeOutcome>
    private let echo: Bool
    private let traffic: NIOLockedValueBox<Traffic>?

    init(outcome: EventLoopPromise<HandshakeOutcome>, echo: Bool, traffic: NIOLockedValueBox<Traffic>? = nil) {
        self.outcome = outcome
        self.echo = echo
        self.traffic = traffic
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let alpn)? = event as? TLSUserEvent {
            let certificate = try? context.pipeline.syncOperations.nioSSL_peerCertificate()?.toDERBytes()
            outcome.succeed(
                HandshakeOutcome(
                    peerIdentity: PeerIdentity.ofVerifiedPeer(in: context.pipeline), alpn: alpn,
                    peerCertificate: certificate))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let count = unwrapInboundIn(data).readableBytes
        traffic?.withLockedValue { $0.bytesRead += count }
        if echo { context.writeAndFlush(data, promise: nil) } else { context.fireChannelRead(data) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        outcome.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        traffic?.withLockedValue { $0.closed += 1 }
        outcome.fail(ChannelError.eof)
        context.fireChannelInactive()
    }
}

/// Collects what the client side reads.
final class ByteCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    private let bytes = NIOLockedValueBox<[UInt8]>([])

    var received: [UInt8] { bytes.withLockedValue { $0 } }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        let read = buffer.readBytes(length: buffer.readableBytes) ?? []
        bytes.withLockedValue { $0 += read }
    }
}

/// A TLS echo server on 127.0.0.1 whose handlers come from a ``MeshTLS``; each accepted connection's handshake
/// outcome is appended to ``outcomes``.
final class MeshEchoServer: Sendable {
    let channel: any Channel
    private let accepted = NIOLockedValueBox<[EventLoopFuture<HandshakeOutcome>]>([])
    private let trafficBox = NIOLockedValueBox(HandshakeRecorder.Traffic())

    var traffic: HandshakeRecorder.Traffic { trafficBox.withLockedValue { $0 } }

    var port: Int { channel.localAddress?.port ?? 0 }
    var outcomes: [EventLoopFuture<HandshakeOutcome>] { accepted.withLockedValue { $0 } }

    init(tls: MeshTLS) async throws {
        let accepted = self.accepted
        let traffic = self.trafficBox
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let promise = channel.eventLoop.makePromise(of: HandshakeOutcome.self)
                    accepted.withLockedValue { $0.append(promise.futureResult) }
                    try channel.pipeline.syncOperations.addHandler(try tls.makeServerHandler())
                    try channel.pipeline.syncOperations.addHandler(
                        HandshakeRecorder(outcome: promise, echo: true, traffic: traffic))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func close() async throws { try await channel.close() }
}

/// A mesh TLS client connection to `port` expecting `identity`, offering `alpn`.
struct MeshClientConnection {
    let channel: any Channel
    let handshake: EventLoopFuture<HandshakeOutcome>
    let collector: ByteCollector

    static func connect(
        port: Int, tls: MeshTLS, expectedIdentity: String, alpn: [String] = [MeshTLS.alpnHTTP2]
    ) async throws -> MeshClientConnection {
        let collector = ByteCollector()
        let promiseBox = NIOLockedValueBox<EventLoopFuture<HandshakeOutcome>?>(nil)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let promise = channel.eventLoop.makePromise(of: HandshakeOutcome.self)
                    promiseBox.withLockedValue { $0 = promise.futureResult }
                    try channel.pipeline.syncOperations.addHandler(
                        try tls.makeClientHandler(expectedIdentity: expectedIdentity, alpn: alpn))
                    try channel.pipeline.syncOperations.addHandler(HandshakeRecorder(outcome: promise, echo: false))
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        guard let handshake = promiseBox.withLockedValue({ $0 }) else {
            throw ChannelError.inappropriateOperationForState
        }
        return MeshClientConnection(channel: channel, handshake: handshake, collector: collector)
    }

    /// Writes `text` and waits until the echo server sent it back (the connection carries data end to end).
    func roundTrip(_ text: String) async throws -> Bool {
        let before = collector.received.count
        try await channel.writeAndFlush(ByteBuffer(string: text)).get()
        let expected = Array(text.utf8)
        try await MeshWait.until(timeout: .seconds(5)) {
            collector.received.count >= before + expected.count
        }
        return Array(collector.received.suffix(expected.count)) == expected
    }
}
