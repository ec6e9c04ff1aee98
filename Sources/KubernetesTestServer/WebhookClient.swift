import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// Where the test server POSTs one AdmissionReview: the socket to connect to and the name the serving certificate
/// must carry, which differ when `clientConfig.service` is mapped to a local port for a test.
struct WebhookEndpoint: Sendable, Hashable {
    /// Host to connect to (a name or an IP literal).
    var host: String
    var port: Int
    /// The name verified against the certificate (and sent as SNI); nil verifies the connected IP address.
    var serverName: String?
    /// Path and query, e.g. `/inject?timeout=10s`.
    var target: String
    /// The URL as the real API server writes it into error messages.
    var displayURL: String
}

/// Why a webhook call produced no usable answer; the message follows the real server's
/// `failed to call webhook: Post "<url>": <reason>` wording.
struct WebhookCallError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// A one-request HTTPS client (connection per call, `Connection: close`) for the admission webhooks the test
/// server calls: it verifies the webhook's certificate against `clientConfig.caBundle` and gives up after the
/// webhook's `timeoutSeconds`, as kube-apiserver does.
enum WebhookClient {
    /// Answers larger than this are refused, so a broken webhook cannot exhaust a test's memory.
    static let maximumResponseBytes = 16 << 20

    typealias ClientChannel = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

    /// POSTs `body` and returns the status and body of the answer.
    /// - Throws: ``WebhookCallError`` for connection, TLS, timeout and framing failures.
    static func post(
        _ endpoint: WebhookEndpoint, caBundle: Data?, body: [UInt8], timeout: Duration,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws(WebhookCallError) -> (status: Int, body: [UInt8]) {
        let prefix = "failed to call webhook: Post \"\(endpoint.displayURL)\": "
        let context: NIOSSLContext
        do {
            context = try makeContext(caBundle: caBundle)
        } catch {
            throw WebhookCallError(message: prefix + "invalid clientConfig.caBundle: \(error)")
        }
        // The call and the deadline race; the loser is not awaited (a TLS close can linger for seconds), and a
        // timed-out connection is closed so its task ends soon after.
        let connection = NIOLockedValueBox<(any Channel)?>(nil)
        let outcome: Result<(status: Int, body: [UInt8]), any Error> = await withCheckedContinuation { continuation in
            let settled = NIOLockedValueBox(false)
            let settle: @Sendable (Result<(status: Int, body: [UInt8]), any Error>) -> Bool = { result in
                let first = settled.withLockedValue { done in
                    defer { done = true }
                    return !done
                }
                if first { continuation.resume(returning: result) }
                return first
            }
            let timer = Task {
                do { try await Task.sleep(for: timeout) } catch { return }
                let deadline = WebhookCallError(
                    message: prefix + "context deadline exceeded (Client.Timeout exceeded while awaiting headers)")
                if settle(.failure(deadline)) { connection.withLockedValue { $0 }?.close(promise: nil) }
            }
            Task {
                do {
                    let answer = try await exchange(
                        endpoint, context: context, body: body, timeout: timeout, group: group, connection: connection)
                    if settle(.success(answer)) { timer.cancel() }
                } catch {
                    if settle(.failure(error)) { timer.cancel() }
                }
            }
        }
        switch outcome {
        case .success(let answer): return answer
        case .failure(let error as WebhookCallError) where error.message.hasPrefix(prefix): throw error
        case .failure(let error): throw WebhookCallError(message: prefix + describe(error))
        }
    }

    private static func exchange(
        _ endpoint: WebhookEndpoint, context: NIOSSLContext, body: [UInt8], timeout: Duration,
        group: any EventLoopGroup, connection: NIOLockedValueBox<(any Channel)?>
    ) async throws -> (status: Int, body: [UInt8]) {
        let (seconds, attoseconds) = timeout.components
        let connectTimeout = TimeAmount.nanoseconds(
            max(1_000_000, seconds * 1_000_000_000 + attoseconds / 1_000_000_000))
        let serverName = endpoint.serverName
        let tlsFailure = TLSFailureRecorder()
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(connectTimeout)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .connect(host: endpoint.host, port: endpoint.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let tls = try NIOSSLClientHandler(context: context, serverHostname: serverName)
                    try channel.pipeline.syncOperations.addHandler(tls)
                    try channel.pipeline.syncOperations.addHandler(tlsFailure)
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try ClientChannel(wrappingChannelSynchronously: channel)
                }
            }
        connection.withLockedValue { $0 = channel.channel }
        do {
            return try await send(body, serverName: serverName, endpoint: endpoint, over: channel)
        } catch {
            // A failed handshake surfaces to the writer as a closed channel or an early EOF; report the TLS cause.
            if let cause = tlsFailure.error { throw cause }
            throw error
        }
    }

    private static func send(
        _ body: [UInt8], serverName: String?, endpoint: WebhookEndpoint,
        over channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
    ) async throws -> (status: Int, body: [UInt8]) {
        try await channel.executeThenClose { inbound, outbound in
            var headers = HTTPHeaders()
            headers.add(name: "host", value: serverName ?? endpoint.host)
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "accept", value: "application/json, */*")
            headers.add(name: "content-length", value: String(body.count))
            headers.add(name: "connection", value: "close")
            headers.add(name: "user-agent", value: "kube-apiserver-admission (apus-test-server)")
            try await outbound.write(
                .head(HTTPRequestHead(version: .http1_1, method: .POST, uri: endpoint.target, headers: headers)))
            try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
            try await outbound.write(.end(nil))
            var status: Int?
            var received: [UInt8] = []
            for try await part in inbound {
                switch part {
                case .head(let head):
                    status = Int(head.status.code)
                case .body(let buffer):
                    guard received.count + buffer.readableBytes <= maximumResponseBytes else {
                        throw WebhookCallError(message: "the response is larger than \(maximumResponseBytes) bytes")
                    }
                    received += buffer.readableBytesView
                case .end:
                    guard let status else { throw WebhookCallError(message: "a response without a status line") }
                    return (status, received)
                }
            }
            throw WebhookCallError(message: "EOF (the webhook closed the connection before a complete response)")
        }
    }

    /// Full verification against the bundle (or the system roots without one), as client-go's transport does.
    private static func makeContext(caBundle: Data?) throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.certificateVerification = .fullVerification
        if let caBundle, !caBundle.isEmpty {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(caBundle)))
        }
        return try NIOSSLContext(configuration: tls)
    }

    private static func describe(_ error: any Error) -> String {
        if let error = error as? WebhookCallError { return error.message }
        if let error = error as? NIOSSLError {
            switch error {
            case .handshakeFailed(let reason):
                return "tls: failed to verify certificate: x509: certificate signed by unknown authority (\(reason))"
            default: return "tls: \(error)"
            }
        }
        if error is NIOConnectionError || error is IOError || error is ChannelError {
            return "dial tcp: \(error)"
        }
        return "\(error)"
    }
}

/// Remembers the first TLS error on a webhook connection, which the request writer would otherwise only see as a
/// closed channel.
private final class TLSFailureRecorder: ChannelInboundHandler, Sendable {
    typealias InboundIn = NIOAny
    private let recorded = NIOLockedValueBox<NIOSSLError?>(nil)

    var error: NIOSSLError? { recorded.withLockedValue { $0 } }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOSSLError { recorded.withLockedValue { if $0 == nil { $0 = error } } }
        context.fireErrorCaught(error)
    }
}
