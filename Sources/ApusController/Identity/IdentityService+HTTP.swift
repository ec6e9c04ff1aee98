import ApusIdentity
import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// The HTTP/1.1 side of the Certify endpoint: framing, limits and status codes around ``IdentityService/certify(_:)``.
extension IdentityService {
    /// A response to write, and the identity to record an Event for once it is written.
    struct HTTPAnswer: Sendable {
        var status: HTTPResponseStatus
        var body: [UInt8]
        var issued: (identity: IdentityName, validUntil: Date)?
        var closeConnection = false
    }

    /// Error bodies for protocol mistakes, shaped like `IdentityError` on the wire.
    private struct ProtocolError: Encodable {
        var code: String
        var message: String
    }

    /// Serves requests on one connection until the client closes it, asks to, or misbehaves.
    func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
        let remote = connection.channel.remoteAddress.map { "\($0)" } ?? "unknown"
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var body: [UInt8] = []
                for try await part in inbound {
                    switch part {
                    case .head(let requestHead):
                        head = requestHead
                        body = []
                        if let length = requestHead.headers.first(name: "content-length").flatMap({ Int($0) }),
                            length > options.maximumRequestBytes
                        {
                            try await write(Self.tooLarge(options.maximumRequestBytes), to: outbound, keepAlive: false)
                            return
                        }
                    case .body(let buffer):
                        guard body.count + buffer.readableBytes <= options.maximumRequestBytes else {
                            try await write(Self.tooLarge(options.maximumRequestBytes), to: outbound, keepAlive: false)
                            return
                        }
                        body += buffer.readableBytesView
                    case .end:
                        guard let request = head else { return }
                        head = nil
                        let answer = await answer(request, body: body)
                        body = []
                        let keepAlive = request.isKeepAlive && !answer.closeConnection
                        try await write(answer, to: outbound, keepAlive: keepAlive)
                        if let issued = answer.issued {
                            await recordIssued(issued.identity, validUntil: issued.validUntil)
                        }
                        if !keepAlive { return }
                    }
                }
            }
        } catch {
            // TLS handshake failures (untrusted bootstrap certificate, port scanners), resets, idle closes.
            logger.debug("identity connection ended", metadata: ["remote": "\(remote)", "error": "\(error)"])
        }
    }

    private func write(
        _ answer: HTTPAnswer, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, keepAlive: Bool
    ) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(answer.body.count))
        if !keepAlive { headers.add(name: "connection", value: "close") }
        try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: answer.status, headers: headers)))
        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: answer.body))))
        try await outbound.write(.end(nil))
    }

    /// Routes and answers one complete request.
    func answer(_ head: HTTPRequestHead, body: [UInt8]) async -> HTTPAnswer {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)
        guard path == Self.certifyPath else {
            return Self.protocolError(.notFound, "notFound", "no such endpoint: \(head.uri)")
        }
        guard head.method == .POST else {
            return Self.protocolError(
                .methodNotAllowed, "methodNotAllowed", "\(Self.certifyPath) accepts POST only, not \(head.method)")
        }
        let request: CertifyRequest
        do {
            request = try JSONDecoder().decode(CertifyRequest.self, from: Data(body))
        } catch {
            return Self.protocolError(
                .badRequest, "malformedRequest", "the body is not a JSON CertifyRequest: \(Self.describe(error))")
        }
        do {
            let response = try await certify(request)
            let encoded = try JSONEncoder().encode(response)
            // The identity was checked by `certify`; parsing it again cannot fail.
            let identity = try? IdentityName(parsing: request.identity)
            logger.debug("issued leaf certificate", metadata: ["identity": "\(request.identity)"])
            return HTTPAnswer(
                status: .ok, body: Array(encoded), issued: identity.map { ($0, response.validUntil) })
        } catch let error as IdentityError {
            logger.info(
                "Certify refused",
                metadata: [
                    "identity": "\(request.identity)", "code": "\(error.code.rawValue)", "reason": "\(error.message)",
                ])
            let encoded = (try? JSONEncoder().encode(error)).map(Array.init) ?? []
            return HTTPAnswer(status: HTTPResponseStatus(statusCode: error.httpStatus), body: encoded)
        } catch {
            logger.error("encoding a Certify response failed", metadata: ["error": "\(error)"])
            return Self.protocolError(.internalServerError, "internal", "encoding the response failed")
        }
    }

    private static func protocolError(_ status: HTTPResponseStatus, _ code: String, _ message: String) -> HTTPAnswer {
        let body = (try? JSONEncoder().encode(ProtocolError(code: code, message: message))).map(Array.init) ?? []
        return HTTPAnswer(status: status, body: body)
    }

    private static func tooLarge(_ limit: Int) -> HTTPAnswer {
        var answer = protocolError(
            .payloadTooLarge, "payloadTooLarge", "the request body exceeds the limit of \(limit) bytes")
        answer.closeConnection = true
        return answer
    }

    /// A decoding error with the field path where there is one, without echoing the (secret-bearing) body.
    private static func describe(_ error: any Error) -> String {
        guard let error = error as? DecodingError else { return "\(error)" }
        func path(_ context: DecodingError.Context) -> String {
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? context.debugDescription : "\(path): \(context.debugDescription)"
        }
        switch error {
        case .dataCorrupted(let context): return path(context)
        case .keyNotFound(let key, let context): return "\(key.stringValue) is missing (\(path(context)))"
        case .typeMismatch(_, let context): return path(context)
        case .valueNotFound(_, let context): return path(context)
        @unknown default: return "\(error)"
        }
    }
}
