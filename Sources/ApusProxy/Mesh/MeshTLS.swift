import ApusIdentityClient
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// Mesh TLS between proxies: the TLS handlers for the inbound listener and for connections to meshed peers,
/// presenting this proxy's identity certificate.
///
/// ```
///  IdentityClient ──credentials──► cache keyed by the leaf ──► server context (ALPN h2, http/1.1,
///   (or fixed credentials)          (rebuilt on a new leaf)  │                   apus.transport/v1)
///                                                            └► client contexts (one per ALPN list)
/// ```
///
/// **TLS 1.3 only**, as Linkerd's proxies. The server asks for a client certificate and, when one is presented,
/// verifies it against the trust anchors (a certificate from another CA fails the handshake); a TLS client
/// without a certificate is accepted with no identity, and whether that is acceptable is the caller's inbound
/// policy. The client presents our certificate and accepts the server only if it chains to the anchors and
/// carries `expectedIdentity` as a DNS SAN (OpenSSL hostname verification with `serverHostname`), so a
/// connection to a recycled pod IP now held by another workload fails instead of leaking the request.
///
/// **Rotation.** Each handler takes the context current when it is made; a connection keeps its context for its
/// whole life, so a refreshed certificate is used by new connections while established ones stay up. Building
/// an `NIOSSLContext` parses keys and certificates (tens of microseconds to milliseconds), so contexts are
/// cached and rebuilt only when the identity client installs a new leaf; per connection the cost is one lock
/// and a reference comparison.
public final class MeshTLS: Sendable {
    /// ALPN for HTTP between proxies: one multiplexed HTTP/2 connection per peer.
    public static let alpnHTTP2 = "h2"
    /// ALPN for an HTTP/1.1 connection that carries an `Upgrade` (WebSocket) and then becomes a byte stream.
    public static let alpnHTTP1 = "http/1.1"
    /// ALPN for opaque TCP between proxies; the client then sends a ``TransportHeader`` before the bytes.
    public static let alpnTransport = "apus.transport/v1"
    /// What the inbound listener offers, in server preference order.
    public static let serverALPN = [alpnHTTP2, alpnHTTP1, alpnTransport]

    private enum Source: Sendable {
        case client(IdentityClient)
        case fixed(IdentityCredentials)
        case none
    }

    /// The contexts for one set of credentials; replaced as a whole when the leaf changes.
    private struct Contexts {
        let credentials: IdentityCredentials
        var server: NIOSSLContext?
        var clients: [[String]: NIOSSLContext] = [:]
    }

    private let source: Source
    private let contexts = NIOLockedValueBox<Contexts?>(nil)

    /// Mesh TLS with the certificates of `identity`; nil runs standalone: no mesh TLS, and the handler makers
    /// throw ``MeshTLSError/Code/noIdentity``.
    public init(identity: IdentityClient?) {
        source = identity.map { .client($0) } ?? .none
    }

    /// Mesh TLS with fixed credentials (tests, benchmarks, local setups without an identity service).
    public init(credentials: IdentityCredentials) {
        source = .fixed(credentials)
    }

    /// This proxy's identity, nil when standalone or before the first certificate.
    public var localIdentity: String? { currentCredentials?.identity.description }

    /// Whether handlers can be made now (an identity is configured and certified).
    public var isAvailable: Bool { currentCredentials != nil }

    private var currentCredentials: IdentityCredentials? {
        switch source {
        case .client(let client): client.credentials
        case .fixed(let credentials): credentials
        case .none: nil
        }
    }

    /// A server handler for one new inbound connection, with the current certificate.
    /// - Throws: ``MeshTLSError`` when there is no identity (yet) or the context cannot be built.
    public func makeServerHandler() throws(MeshTLSError) -> NIOSSLServerHandler {
        NIOSSLServerHandler(context: try serverContext())
    }

    /// A client handler for one new connection to a meshed peer that must prove `expectedIdentity`, offering
    /// `alpn` (e.g. `[MeshTLS.alpnHTTP2]`).
    /// - Throws: ``MeshTLSError`` when there is no identity (yet), the context cannot be built, or
    ///   `expectedIdentity` is not usable as a TLS server name.
    public func makeClientHandler(
        expectedIdentity: String, alpn: [String]
    ) throws(MeshTLSError) -> NIOSSLClientHandler {
        let context = try clientContext(alpn: alpn)
        do {
            return try NIOSSLClientHandler(context: context, serverHostname: expectedIdentity)
        } catch {
            throw MeshTLSError(.invalidExpectedIdentity, "'\(expectedIdentity)' is not a valid server name: \(error)")
        }
    }

    /// The server context for new connections (cached; rebuilt after rotation).
    public func serverContext() throws(MeshTLSError) -> NIOSSLContext {
        let credentials = try requireCredentials()
        if let cached = cached(for: credentials, { $0.server }) { return cached }
        let context: NIOSSLContext
        do {
            var configuration = try credentials.makeServerConfiguration(requireClientCertificate: false)
            configuration.applicationProtocols = Self.serverALPN
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw MeshTLSError(.contextFailed, "building the mesh server TLS context: \(error)")
        }
        store(for: credentials) { $0.server = context }
        return context
    }

    /// The client context offering `alpn` for new connections (cached per ALPN list; rebuilt after rotation).
    public func clientContext(alpn: [String]) throws(MeshTLSError) -> NIOSSLContext {
        let credentials = try requireCredentials()
        if let cached = cached(for: credentials, { $0.clients[alpn] }) { return cached }
        let context: NIOSSLContext
        do {
            var configuration = try credentials.makeClientConfiguration()
            configuration.applicationProtocols = alpn
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw MeshTLSError(.contextFailed, "building the mesh client TLS context: \(error)")
        }
        store(for: credentials) { $0.clients[alpn] = context }
        return context
    }

    private func requireCredentials() throws(MeshTLSError) -> IdentityCredentials {
        switch source {
        case .none:
            throw MeshTLSError(.noIdentity, "mesh TLS is unavailable: the proxy runs without an identity")
        case .fixed(let credentials):
            return credentials
        case .client(let client):
            guard let credentials = client.credentials else {
                throw MeshTLSError(.noIdentity, "mesh TLS is unavailable: the identity is not certified yet")
            }
            return credentials
        }
    }

    private func cached(
        for credentials: IdentityCredentials, _ select: (Contexts) -> NIOSSLContext?
    ) -> NIOSSLContext? {
        contexts.withLockedValue { contexts in
            guard let contexts, contexts.credentials.leaf === credentials.leaf else { return nil }
            return select(contexts)
        }
    }

    /// Stores a context built for `credentials`, dropping contexts of older credentials. A context built for
    /// credentials that were replaced meanwhile is not stored (it is still valid for the one connection).
    private func store(for credentials: IdentityCredentials, _ update: (inout Contexts) -> Void) {
        contexts.withLockedValue { contexts in
            var value: Contexts
            if let existing = contexts, existing.credentials.leaf === credentials.leaf {
                value = existing
            } else {
                if let current = currentCredentials, current.leaf !== credentials.leaf { return }
                value = Contexts(credentials: credentials)
            }
            update(&value)
            contexts = value
        }
    }
}

/// Why mesh TLS could not be set up for a connection.
public struct MeshTLSError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        /// Standalone, or the identity is not certified yet.
        case noIdentity
        /// The credentials could not be turned into a TLS context.
        case contextFailed
        /// The identity expected of a peer is not usable as a TLS server name.
        case invalidExpectedIdentity
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// The identity of the peer of a mesh TLS connection.
public enum PeerIdentity {
    /// The first DNS SAN of the certificate the peer presented and the handshake verified, or nil when there is
    /// no TLS handler, the handshake has not completed, or the peer presented no (usable) certificate.
    ///
    /// Call on the channel's event loop after the handshake (e.g. on `TLSUserEvent.handshakeCompleted`).
    public static func ofVerifiedPeer(in pipeline: ChannelPipeline) -> String? {
        guard let certificate = try? pipeline.syncOperations.nioSSL_peerCertificate() else { return nil }
        return try? PeerCertificateIdentity.identity(of: certificate).get()
    }
}
