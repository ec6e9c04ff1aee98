import ApusCore
import AsyncHTTPClient
import Foundation

/// A failed API call, classified so callers can branch on what happened rather than on HTTP numbers.
///
/// Equality compares ``code`` only, so `catch let error as KubernetesError where error == .notFound` and
/// `#expect(throws: KubernetesError.conflict)` work. The server's `Status` message is kept in ``message``.
///
/// ```swift
/// do {
///     _ = try await client.get(ConfigMap.self, name: "settings", namespace: "apus")
/// } catch let error as KubernetesError where error == .notFound {
///     // create it
/// }
/// ```
public struct KubernetesError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        /// 404: the object (or its namespace) does not exist. Expected for get-or-create flows.
        case notFound
        /// 409 with reason `AlreadyExists`: a create raced with another writer. Expected.
        case alreadyExists
        /// 409: the `resourceVersion` sent is stale (optimistic concurrency). Expected; re-read and retry.
        case conflict
        /// 410 or reason `Expired`: the requested resourceVersion was compacted away. Watchers relist.
        case gone
        /// 403: RBAC denies the call. A deployment error.
        case forbidden
        /// 401: the credentials were rejected (an expired token is re-read once before this surfaces).
        case unauthorized
        /// 422: the object failed validation; ``status`` `details.causes` name the fields.
        case invalid
        /// Other 4xx responses: a malformed request (bad selector, bad patch).
        case badRequest
        /// 429: the server is shedding load; ``retryAfter`` says when to come back.
        case tooManyRequests
        /// 5xx responses other than timeouts.
        case serverError
        /// 504 / reason `Timeout`, or the client-side deadline passed.
        case timeout
        /// The connection failed (refused, reset, TLS handshake). Usually transient.
        case transport
        /// A response body did not decode; ``fieldPath`` names where (`items[3].metadata.labels`).
        case decoding
    }

    public let code: Code
    /// Human-readable explanation: the server's `Status.message`, or what failed locally.
    public let message: String
    /// The decoded `Status` body when the server sent one.
    public let status: Status?
    /// HTTP status code when a response was received.
    public let httpStatus: Int?
    /// From `Retry-After` or `Status.details.retryAfterSeconds`.
    public let retryAfter: Duration?
    /// For ``Code/decoding``: the path of the field that failed.
    public let fieldPath: String?

    public init(
        code: Code, message: String, status: Status? = nil, httpStatus: Int? = nil, retryAfter: Duration? = nil,
        fieldPath: String? = nil
    ) {
        self.code = code
        self.message = message
        self.status = status
        self.httpStatus = httpStatus
        self.retryAfter = retryAfter
        self.fieldPath = fieldPath
    }

    public static func == (lhs: KubernetesError, rhs: KubernetesError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public var description: String {
        var text = "KubernetesError.\(code.rawValue)"
        if let httpStatus { text += " (HTTP \(httpStatus))" }
        text += ": \(message)"
        if let fieldPath { text += " at \(fieldPath)" }
        return text
    }

    // Patterns to compare against.
    public static let notFound = KubernetesError(code: .notFound, message: "")
    public static let alreadyExists = KubernetesError(code: .alreadyExists, message: "")
    public static let conflict = KubernetesError(code: .conflict, message: "")
    public static let gone = KubernetesError(code: .gone, message: "")
    public static let forbidden = KubernetesError(code: .forbidden, message: "")
    public static let unauthorized = KubernetesError(code: .unauthorized, message: "")
    public static let invalid = KubernetesError(code: .invalid, message: "")
    public static let badRequest = KubernetesError(code: .badRequest, message: "")
    public static let tooManyRequests = KubernetesError(code: .tooManyRequests, message: "")
    public static let serverError = KubernetesError(code: .serverError, message: "")
    public static let timeout = KubernetesError(code: .timeout, message: "")
    public static let transport = KubernetesError(code: .transport, message: "")
    public static let decoding = KubernetesError(code: .decoding, message: "")

    /// Classifies an HTTP error response. `body` is decoded as a `Status` when it is one; `retryAfterHeader` is
    /// the raw `Retry-After` value (seconds).
    @inline(never)
    public static func fromResponse(httpStatus: Int, body: Data, retryAfterHeader: String? = nil) -> KubernetesError {
        let status = try? JSONDecoder().decode(Status.self, from: body)
        let decodedStatus = status?.kind == "Status" || status?.reason != nil || status?.message != nil ? status : nil
        return fromStatus(
            decodedStatus ?? Status(message: nil, code: httpStatus), httpStatus: httpStatus,
            retryAfterHeader: retryAfterHeader,
            fallbackMessage: decodedStatus == nil ? String(decoding: body.prefix(512), as: UTF8.self) : nil)
    }

    /// Classifies a `Status` (from an error response or a watch `ERROR` event).
    @inline(never)
    public static func fromStatus(
        _ status: Status, httpStatus: Int? = nil, retryAfterHeader: String? = nil, fallbackMessage: String? = nil
    ) -> KubernetesError {
        let numeric = status.code ?? httpStatus ?? 0
        let code: Code
        switch (status.reason, numeric) {
        case ("Expired", _), ("Gone", _), (_, 410): code = .gone
        case ("AlreadyExists", _): code = .alreadyExists
        case ("Conflict", _), (_, 409): code = .conflict
        case ("NotFound", _), (_, 404): code = .notFound
        case ("Unauthorized", _), (_, 401): code = .unauthorized
        case ("Forbidden", _), (_, 403): code = .forbidden
        case ("Invalid", _), (_, 422): code = .invalid
        case ("TooManyRequests", _), (_, 429): code = .tooManyRequests
        case ("Timeout", _), ("ServerTimeout", _), (_, 504): code = .timeout
        case (_, 500...599): code = .serverError
        case (_, 400...499): code = .badRequest
        default: code = .serverError
        }
        var retryAfter: Duration?
        if let header = retryAfterHeader?.trimmingCharacters(in: .whitespaces), let seconds = Int(header),
            seconds >= 0
        {
            retryAfter = .seconds(seconds)
        } else if let seconds = status.details?.retryAfterSeconds, seconds >= 0 {
            retryAfter = .seconds(seconds)
        }
        let message =
            status.message.flatMap { $0.isEmpty ? nil : $0 } ?? fallbackMessage.flatMap {
                $0.isEmpty ? nil : $0
            } ?? status.reason ?? "HTTP \(numeric)"
        return KubernetesError(
            code: code, message: message, status: status, httpStatus: httpStatus ?? status.code,
            retryAfter: retryAfter)
    }

    /// Wraps a `DecodingError`, keeping the path of the failing field.
    @inline(never)
    public static func decoding(_ error: any Error, context: String) -> KubernetesError {
        if let error = error as? KubernetesError { return error }
        guard let decodingError = error as? DecodingError else {
            return KubernetesError(code: .decoding, message: "\(context): \(error)")
        }
        return KubernetesError(
            code: .decoding, message: "\(context): \(decodingErrorSummary(decodingError))",
            fieldPath: decodingErrorFieldPath(decodingError))
    }

    @inline(never)
    static func transport(_ error: any Error) -> KubernetesError {
        if let error = error as? KubernetesError { return error }
        if let httpError = error as? HTTPClientError {
            switch httpError {
            case .deadlineExceeded, .readTimeout, .connectTimeout, .getConnectionFromPoolTimeout,
                .tlsHandshakeTimeout, .writeTimeout:
                return KubernetesError(code: .timeout, message: "request timed out: \(httpError)")
            default: break
            }
        }
        return KubernetesError(code: .transport, message: "\(error)")
    }
}

/// `items[3].metadata.labels` from a coding path; a missing key is appended to the path of its container.
func decodingErrorFieldPath(_ error: DecodingError) -> String? {
    var path: [any CodingKey]
    switch error {
    case .keyNotFound(let key, let context): path = context.codingPath + [key]
    case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
        path = context.codingPath
    @unknown default: return nil
    }
    if path.isEmpty { return nil }
    return formatFieldPath(path)
}

func formatFieldPath(_ path: [any CodingKey]) -> String {
    var text = ""
    for key in path {
        if let index = key.intValue {
            text += "[\(index)]"
        } else {
            if !text.isEmpty { text += "." }
            text += key.stringValue
        }
    }
    return text
}

func decodingErrorSummary(_ error: DecodingError) -> String {
    switch error {
    case .keyNotFound(let key, _): return "required field '\(key.stringValue)' is missing"
    case .typeMismatch(let type, let context): return "expected \(type): \(context.debugDescription)"
    case .valueNotFound(let type, let context): return "expected \(type) but found null: \(context.debugDescription)"
    case .dataCorrupted(let context):
        if let underlying = context.underlyingError {
            return "\(context.debugDescription) (\(underlying.localizedDescription))"
        }
        return context.debugDescription
    @unknown default: return "\(error)"
    }
}
