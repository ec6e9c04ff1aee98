import ApusCore
import NIOHTTP1

/// An error answered as a `metav1.Status` body, with the HTTP code and reason the real API server uses.
struct APIError: Error {
    var status: Status
    var retryAfterSeconds: Int?

    var httpStatus: HTTPResponseStatus { HTTPResponseStatus(statusCode: status.code ?? 500) }

    init(code: Int, reason: String, message: String, details: Status.Details? = nil, retryAfterSeconds: Int? = nil) {
        status = Status(status: "Failure", message: message, reason: reason, details: details, code: code)
        self.retryAfterSeconds = retryAfterSeconds
    }

    private static func details(_ resource: ResourceInfo, _ name: String?) -> Status.Details {
        Status.Details(name: name, group: resource.type.group, kind: resource.type.plural)
    }

    static func notFound(_ resource: ResourceInfo, _ name: String) -> APIError {
        APIError(
            code: 404, reason: "NotFound", message: "\(resource.qualifiedPlural) \"\(name)\" not found",
            details: details(resource, name))
    }

    static func namespaceNotFound(_ namespace: String) -> APIError {
        APIError(
            code: 404, reason: "NotFound", message: "namespaces \"\(namespace)\" not found",
            details: Status.Details(name: namespace, group: "", kind: "namespaces"))
    }

    static func unknownPath() -> APIError {
        APIError(code: 404, reason: "NotFound", message: "the server could not find the requested resource")
    }

    static func alreadyExists(_ resource: ResourceInfo, _ name: String) -> APIError {
        APIError(
            code: 409, reason: "AlreadyExists", message: "\(resource.qualifiedPlural) \"\(name)\" already exists",
            details: details(resource, name))
    }

    static func conflict(_ resource: ResourceInfo, _ name: String, _ why: String) -> APIError {
        APIError(
            code: 409, reason: "Conflict",
            message: "Operation cannot be fulfilled on \(resource.qualifiedPlural) \"\(name)\": \(why)",
            details: details(resource, name))
    }

    static func staleResourceVersion(_ resource: ResourceInfo, _ name: String) -> APIError {
        conflict(
            resource, name,
            "the object has been modified; please apply your changes to the latest version and try again")
    }

    /// 422, listing the offending fields as causes, like field validation errors of the real server.
    static func invalid(_ resource: ResourceInfo, _ name: String, field: String, _ problem: String) -> APIError {
        var details = details(resource, name)
        details.kind = resource.type.kind
        details.causes = [Status.Cause(reason: "FieldValueInvalid", message: problem, field: field)]
        return APIError(
            code: 422, reason: "Invalid",
            message: "\(resource.type.kind) \"\(name)\" is invalid: \(field): \(problem)", details: details)
    }

    static func badRequest(_ message: String) -> APIError {
        APIError(code: 400, reason: "BadRequest", message: message)
    }

    static func expired(_ message: String) -> APIError {
        APIError(code: 410, reason: "Expired", message: message)
    }

    static func unauthorized() -> APIError {
        APIError(code: 401, reason: "Unauthorized", message: "Unauthorized")
    }

    static func forbidden(_ message: String) -> APIError {
        APIError(code: 403, reason: "Forbidden", message: message)
    }

    static func methodNotAllowed(_ method: String) -> APIError {
        APIError(
            code: 405, reason: "MethodNotAllowed",
            message: "the server does not allow this method (\(method)) "
                + "on the requested resource")
    }

    static func unsupportedMediaType(_ contentType: String) -> APIError {
        APIError(
            code: 415, reason: "UnsupportedMediaType",
            message: "the body of the request was in an unknown format - accepted media types include: "
                + "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, "
                + "application/strategic-merge-patch+json (got \"\(contentType)\")")
    }

    static func requestEntityTooLarge() -> APIError {
        APIError(code: 413, reason: "RequestEntityTooLarge", message: "the request body is too large")
    }

    /// An injected failure (see ``KubernetesTestServer/failNextRequests(count:status:retryAfter:)``).
    static func injected(status: Int, retryAfter: Int?) -> APIError {
        switch status {
        case 429:
            return APIError(
                code: 429, reason: "TooManyRequests", message: "Too many requests, please try again later.",
                details: Status.Details(retryAfterSeconds: retryAfter), retryAfterSeconds: retryAfter)
        case 500:
            return APIError(
                code: 500, reason: "InternalError", message: "Internal error occurred: injected failure",
                retryAfterSeconds: retryAfter)
        case 503:
            return APIError(
                code: 503, reason: "ServiceUnavailable",
                message: "the server is currently unable to handle the request",
                retryAfterSeconds: retryAfter)
        case 504:
            return APIError(code: 504, reason: "Timeout", message: "injected timeout", retryAfterSeconds: retryAfter)
        default:
            return APIError(
                code: status, reason: "InternalError", message: "injected failure with status \(status)",
                retryAfterSeconds: retryAfter)
        }
    }

    static func internalError(_ message: String) -> APIError {
        APIError(code: 500, reason: "InternalError", message: "Internal error occurred: \(message)")
    }
}
