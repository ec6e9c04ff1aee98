import ApusIdentity
import ApusX509
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Why a Certify call failed. `code` says what kind of failure it was; `message` has the details.
public struct IdentityClientError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        /// The token file could not be read or is empty.
        case tokenUnreadable
        /// Connecting, the TLS handshake (e.g. the controller's certificate does not chain to the anchors or does
        /// not name the expected identity) or the HTTP exchange failed, or it timed out.
        case transport
        /// The controller refused the request; ``IdentityClientError/rejection`` has its typed reason when the
        /// body carried one.
        case rejected
        /// The controller answered 200 with a body that is not a usable certificate for our key and identity.
        case invalidResponse
        /// Building the key, CSR or TLS configuration failed locally.
        case local
    }

    public let code: Code
    public let message: String
    /// The controller's typed refusal, for ``Code/rejected``.
    public let rejection: IdentityError?
    /// The HTTP status, for ``Code/rejected``.
    public let httpStatus: Int?

    public init(_ code: Code, _ message: String, rejection: IdentityError? = nil, httpStatus: Int? = nil) {
        self.code = code
        self.message = message
        self.rejection = rejection
        self.httpStatus = httpStatus
    }

    public var description: String { "IdentityClientError.\(code.rawValue): \(message)" }
}

/// Where the controller's identity endpoint is and how to trust it.
public struct CertifyEndpoint: Sendable, Hashable {
    /// Host name or IP address to connect to.
    public var host: String
    public var port: Int
    /// The identity the controller's serving certificate must name (its DNS SAN), e.g.
    /// `apus-identity.apus.serviceaccount.identity.apus.cluster.local`; also sent as TLS SNI.
    public var serverIdentity: String
    public var path: String

    public static let certifyPath = "/apus.identity.v1.Identity/Certify"

    public init(host: String, port: Int, serverIdentity: String, path: String = CertifyEndpoint.certifyPath) {
        self.host = host
        self.port = port
        self.serverIdentity = serverIdentity
        self.path = path
    }
}

/// One Certify exchange over HTTPS on NIO: connect, TLS with the controller verified against the trust anchors
/// and its expected identity, POST the JSON request, read the bounded response, close.
///
/// One connection per call: a proxy certifies about once a day, so keeping a connection open would cost more
/// than it saves, and a fresh handshake always sees the controller's current serving certificate.
struct CertifyTransport: Sendable {
    let endpoint: CertifyEndpoint
    let tlsContext: NIOSSLContext
    let group: any EventLoopGroup
    let timeout: Duration
    /// Responses are a leaf plus a short chain; anything far larger is not a Certify response.
    static let maximumResponseBytes = 256 * 1024

    init(endpoint: CertifyEndpoint, anchors: [Certificate], group: any EventLoopGroup, timeout: Duration) throws {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.trustRoots = .certificates(
            try anchors.map { try NIOSSLCertificate(bytes: try $0.der, format: .der) })
        configuration.certificateVerification = .fullVerification
        self.endpoint = endpoint
        self.tlsContext = try NIOSSLContext(configuration: configuration)
        self.group = group
        self.timeout = timeout
    }

    func certify(_ request: CertifyRequest) async throws(IdentityClientError) -> CertifyResponse {
        let body: [UInt8]
        do {
            body = Array(try JSONEncoder().encode(request))
        } catch {
            throw IdentityClientError(.local, "encoding the Certify request: \(error)")
        }
        let (status, responseBody) = try await exchange(body)
        guard status == 200 else {
            let rejection = try? JSONDecoder().decode(IdentityError.self, from: Data(responseBody))
            let detail =
                rejection.map { "\($0.code.rawValue): \($0.message)" }
                ?? String(decoding: responseBody.prefix(512), as: UTF8.self)
            throw IdentityClientError(
                .rejected, "the controller answered \(status): \(detail)", rejection: rejection, httpStatus: status)
        }
        do {
            return try JSONDecoder().decode(CertifyResponse.self, from: Data(responseBody))
        } catch {
            throw IdentityClientError(.invalidResponse, "the Certify response is not valid JSON: \(error)")
        }
    }

    private func exchange(_ body: [UInt8]) async throws(IdentityClientError) -> (Int, [UInt8]) {
        do {
            return try await withThrowingTaskGroup(of: (Int, [UInt8])?.self) { group in
                group.addTask { try await self.post(body) }
                group.addTask {
                    try await Task.sleep(for: self.timeout)
                    return nil
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let result = first else {
                    throw IdentityClientError(.transport, "no answer from \(endpointDescription) within \(timeout)")
                }
                return result
            }
        } catch let error as IdentityClientError {
            throw error
        } catch {
            throw IdentityClientError(.transport, "Certify at \(endpointDescription) failed: \(error)")
        }
    }

    private var endpointDescription: String { "\(endpoint.host):\(endpoint.port) (\(endpoint.serverIdentity))" }

    private func post(_ body: [UInt8]) async throws -> (Int, [UInt8]) {
        let context = tlsContext
        let serverName = endpoint.serverIdentity
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(.seconds(10))
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .connect(host: endpoint.host, port: endpoint.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(context: context, serverHostname: serverName))
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                        wrappingChannelSynchronously: channel)
                }
            }
        var headers = HTTPHeaders()
        headers.add(name: "host", value: endpoint.serverIdentity)
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.count))
        headers.add(name: "connection", value: "close")
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: endpoint.path, headers: headers)
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(.head(head))
            try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
            try await outbound.write(.end(nil))
            var status: Int?
            var received: [UInt8] = []
            for try await part in inbound {
                switch part {
                case .head(let response):
                    status = Int(response.status.code)
                case .body(let buffer):
                    guard received.count + buffer.readableBytes <= Self.maximumResponseBytes else {
                        throw IdentityClientError(
                            .invalidResponse, "the response is larger than \(Self.maximumResponseBytes) bytes")
                    }
                    received += buffer.readableBytesView
                case .end:
                    guard let status else { break }
                    return (status, received)
                }
            }
            throw IdentityClientError(.transport, "the connection closed before a complete response")
        }
    }
}
