import ApusCore
import ApusX509
import Foundation
import NIOConcurrencyHelpers
import NIOHTTP1

/// A fully read HTTP request, handed from the channel handler to the core.
struct APIRequest: Sendable {
    var method: HTTPMethod
    var uri: String
    var headers: HTTPHeaders
    var body: [UInt8]
    /// The common name of a verified TLS client certificate, if the client sent one.
    var certificateUser: String?
}

/// What the channel handler must do for a request.
enum APIOutcome: Sendable {
    case response(status: HTTPResponseStatus, headers: HTTPHeaders, body: [UInt8])
    /// Start a watch stream; `timeout` ends it cleanly after that many seconds.
    case watch(WatchRequest, timeout: Int64?)
    /// Answer once `work` finishes off the event loop (a create that calls admission webhooks).
    case deferred(@Sendable () async -> APIOutcome)
}

/// A routed resource URL.
struct ResourceRoute {
    var resource: ResourceInfo
    var namespace: String?
    var name: String?
    var statusSubresource: Bool
}

/// The request-independent half of the server: routing, authentication, fault injection and dispatch to the
/// locked ``ServerState``. Called on event loop threads; never blocks beyond the state lock.
final class ServerCore: Sendable {
    let state: NIOLockedValueBox<ServerState>
    let bearerTokens: [String: String]
    let clientCA: Certificate?
    let authorizer: (@Sendable (AuthorizationAttributes) -> Bool)?
    /// The ServiceAccount tokens the server minted, which its TokenReviews authenticate.
    let serviceAccountTokens: ServiceAccountTokens
    /// Calls the stored MutatingWebhookConfigurations' webhooks on creates.
    let admission = MutatingAdmission()

    init(options: KubernetesTestServer.Options, clientCA: Certificate?) {
        authorizer = options.authorizer
        var initial = ServerState(options: options)
        let tokens = options.bearerTokens
        let minted = ServiceAccountTokens()
        serviceAccountTokens = minted
        initial.createHandlers[
            StorageKey(group: TokenReview.resourceType.group, plural: TokenReview.resourceType.plural)] = { request in
                Self.reviewToken(request.object, tokens: tokens, minted: minted)
            }
        state = NIOLockedValueBox(initial)
        bearerTokens = options.bearerTokens
        self.clientCA = clientCA
    }

    /// The default TokenReview answer: minted ServiceAccount tokens are checked for expiry and audiences (see
    /// ``ServiceAccountTokens``); otherwise a token is authenticated when it is one of the server's bearer tokens.
    private static func reviewToken(
        _ review: JSONValue, tokens: [String: String], minted: ServiceAccountTokens
    ) -> JSONValue {
        var response = review
        let token = review["spec"]?["token"]?.stringValue ?? ""
        let audiences = review["spec"]?["audiences"]?.arrayValue?.compactMap(\.stringValue) ?? []
        if let status = minted.reviewStatus(token: token, requestedAudiences: audiences) {
            response["status"] = status
        } else if let user = tokens[token] {
            response["status"] = .object([
                "authenticated": .bool(true),
                "user": .object(["username": .string(user), "groups": .array([.string("system:authenticated")])]),
            ])
        } else {
            response["status"] = .object(["authenticated": .bool(false), "error": .string("invalid bearer token")])
        }
        response["apiVersion"] = .string(TokenReview.resourceType.apiVersion)
        response["kind"] = .string(TokenReview.resourceType.kind)
        return response
    }

    func handle(_ request: APIRequest) -> APIOutcome {
        let components = URLComponents(string: request.uri)
        let path = components?.percentEncodedPath.removingPercentEncoding ?? request.uri
        var query: [String: String] = [:]
        for item in components?.queryItems ?? [] { query[item.name] = item.value ?? "" }
        let user = authenticate(request)
        do {
            if request.method == .GET,
                let document = state.withLockedValue({ Discovery.document(path: path, registry: $0.registry) })
            {
                return try Self.jsonResponse(.ok, document)
            }
            let route = try self.route(path: path)
            let verb = route.map { Self.verb(request.method, $0, query) }
            let resourceName = route.map { $0.resource.type.plural + ($0.statusSubresource ? "/status" : "") }
            let injected = state.withLockedValue { state -> APIError? in
                state.requestLog.append(
                    RecordedRequest(
                        method: request.method.rawValue, path: path, query: query, user: user, verb: verb,
                        resource: resourceName))
                if state.requestLog.count > ServerState.requestLogCapacity {
                    state.requestLog.removeFirst(ServerState.requestLogCapacity / 4)
                }
                guard user != nil, route != nil, state.pendingFailures.count > 0 else { return nil }
                state.pendingFailures.count -= 1
                return APIError.injected(
                    status: state.pendingFailures.status, retryAfter: state.pendingFailures.retryAfter)
            }
            guard let route else { return try nonResource(path: path, method: request.method) }
            guard let user else { throw APIError.unauthorized() }
            if let authorizer, let verb {
                let attributes = AuthorizationAttributes(user: user, verb: verb, route: route, query: query)
                guard authorizer(attributes) else {
                    throw APIError.forbidden(attributes.refusal)
                }
            }
            if let injected { throw injected }
            if query["dryRun"].map({ !$0.isEmpty }) ?? false {
                throw APIError.badRequest("dryRun is not supported by the Apus test server")
            }
            let outcome = try dispatch(request, route: route, query: query, user: user)
            if request.method == .GET, !Self.isWatch(query), TableOutput.wanted(request.headers) {
                return TableOutput.convert(outcome, resource: route.resource)
            }
            return outcome
        } catch let error as APIError {
            return Self.errorResponse(error)
        } catch let status as Status {
            return Self.errorResponse(APIError(status: status))
        } catch {
            return Self.errorResponse(APIError.internalError(String(describing: error)))
        }
    }

    private func authenticate(_ request: APIRequest) -> String? {
        if let header = request.headers.first(name: "authorization") {
            let parts = header.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
            return bearerTokens[String(parts[1]).trimmingCharacters(in: .whitespaces)]
        }
        return request.certificateUser
    }

    private func nonResource(path: String, method: HTTPMethod) throws -> APIOutcome {
        switch path {
        case "/healthz", "/livez", "/readyz":
            return .response(status: .ok, headers: ["content-type": "text/plain"], body: Array("ok".utf8))
        case "/version":
            let version = JSONValue.object([
                "major": .string("1"), "minor": .string("32"), "gitVersion": .string("v1.32.0-apus-test"),
                "platform": .string("linux/amd64"),
            ])
            return try Self.jsonResponse(.ok, version)
        default:
            throw APIError.unknownPath()
        }
    }

    /// Parses `/api/v1/...` and `/apis/<group>/<version>/...` into a resource route; `nil` for other paths.
    private func route(path: String) throws -> ResourceRoute? {
        let parts = path.split(separator: "/").map(String.init)
        let group: String
        let version: String
        let rest: ArraySlice<String>
        if parts.first == "api", parts.count >= 2 {
            (group, version, rest) = ("", parts[1], parts[2...])
        } else if parts.first == "apis", parts.count >= 3 {
            (group, version, rest) = (parts[1], parts[2], parts[3...])
        } else if parts.first == "api" || parts.first == "apis" {
            throw APIError.unknownPath()
        } else {
            return nil
        }
        let items = Array(rest)
        guard !items.isEmpty else { throw APIError.unknownPath() }
        var namespace: String?
        var tail: [String]
        let namespaceSubresource = items.count == 3 && group.isEmpty && ["status", "finalize"].contains(items[2])
        if items[0] == "namespaces", items.count >= 3, !namespaceSubresource {
            namespace = items[1]
            tail = Array(items[2...])
        } else {
            tail = items
        }
        guard tail.count <= 3 else { throw APIError.unknownPath() }
        let plural = tail[0]
        guard
            let resource = state.withLockedValue({ $0.registry.lookup(group: group, version: version, plural: plural) })
        else { throw APIError.unknownPath() }
        let name = tail.count > 1 ? tail[1] : nil
        if resource.type.namespaced {
            if namespace == nil, name != nil { throw APIError.unknownPath() }
        } else if namespace != nil {
            throw APIError.unknownPath()
        }
        var statusSubresource = false
        if tail.count == 3 {
            guard tail[2] == "status", resource.hasStatusSubresource else { throw APIError.unknownPath() }
            statusSubresource = true
        }
        return ResourceRoute(resource: resource, namespace: namespace, name: name, statusSubresource: statusSubresource)
    }

    private static func verb(_ method: HTTPMethod, _ route: ResourceRoute, _ query: [String: String]) -> String {
        switch method {
        case .GET: return route.name != nil ? "get" : (isWatch(query) ? "watch" : "list")
        case .POST: return "create"
        case .PUT: return "update"
        case .PATCH: return "patch"
        case .DELETE: return route.name != nil ? "delete" : "deletecollection"
        default: return method.rawValue.lowercased()
        }
    }

    private static func isWatch(_ query: [String: String]) -> Bool {
        query["watch"].map { $0 == "1" || $0.lowercased() == "true" } ?? false
    }

    private func dispatch(
        _ request: APIRequest, route: ResourceRoute, query: [String: String], user: String
    ) throws -> APIOutcome {
        let resource = route.resource
        switch (request.method, route.name) {
        case (.GET, let name?):
            let object = try state.withLockedValue {
                try $0.get(resource, namespace: route.namespace, name: name)
            }
            return try Self.jsonResponse(.ok, object)
        case (.GET, nil):
            let labelSelector = try query["labelSelector"].map { try LabelSelector(parsing: $0) } ?? .everything
            let fieldSelector = try query["fieldSelector"].map { try FieldSelector(parsing: $0) } ?? .everything
            if Self.isWatch(query) {
                var start: Int64?
                if let version = query["resourceVersion"], !version.isEmpty, version != "0" {
                    guard let parsed = Int64(version), parsed >= 0 else {
                        throw APIError.badRequest("invalid resource version: \"\(version)\"")
                    }
                    start = parsed
                }
                let timeout = try query["timeoutSeconds"].map { text -> Int64 in
                    guard let seconds = Int64(text), seconds >= 0 else {
                        throw APIError.badRequest("invalid timeoutSeconds: \"\(text)\"")
                    }
                    return seconds
                }
                let bookmarks = query["allowWatchBookmarks"].map { $0 == "1" || $0.lowercased() == "true" } ?? false
                let watch = WatchRequest(
                    resource: resource, namespace: route.namespace, labelSelector: labelSelector,
                    fieldSelector: fieldSelector, startRevision: start, allowBookmarks: bookmarks)
                return .watch(watch, timeout: timeout.flatMap { $0 > 0 ? $0 : nil })
            }
            let limit = try query["limit"].map { text -> Int in
                guard let limit = Int(text), limit >= 0 else { throw APIError.badRequest("invalid limit: \"\(text)\"") }
                return limit
            }
            let list = try state.withLockedValue {
                try $0.list(
                    resource, namespace: route.namespace, labelSelector: labelSelector, fieldSelector: fieldSelector,
                    limit: limit, continueToken: query["continue"])
            }
            return try Self.jsonResponse(.ok, list)
        case (.POST, nil):
            guard route.namespace != nil || !resource.type.namespaced else { throw APIError.unknownPath() }
            let body = try Self.parseJSON(request.body)
            let handler = state.withLockedValue { $0.createHandlers[resource.storageKey] }
            if let handler {
                let answer = try handler(CreateRequest(object: body, namespace: route.namespace, user: user))
                return try Self.jsonResponse(.created, answer)
            }
            let calls = state.withLockedValue {
                MutatingAdmission.plan(resource, namespace: route.namespace, object: body, state: $0)
            }
            if !calls.isEmpty {
                return admitThenCreate(calls, resource: resource, route: route, body: body, user: user)
            }
            let created = try state.withLockedValue { try $0.create(resource, namespace: route.namespace, body: body) }
            return try Self.jsonResponse(.created, created)
        case (.PUT, let name?):
            let body = try Self.parseJSON(request.body)
            let updated = try state.withLockedValue {
                try $0.update(
                    resource, namespace: route.namespace, name: name, body: body, statusOnly: route.statusSubresource)
            }
            return try Self.jsonResponse(.ok, updated)
        case (.PATCH, let name?):
            let contentType = request.headers.first(name: "content-type") ?? ""
            guard let kind = PatchKind(contentType: contentType) else {
                throw APIError.unsupportedMediaType(contentType)
            }
            if kind == .apply, (query["fieldManager"] ?? "").isEmpty {
                throw APIError.badRequest("PATCH requests with apply content type must include fieldManager")
            }
            let patch = try Self.parseJSON(request.body, applyConfiguration: kind == .apply)
            let result = try state.withLockedValue {
                try $0.patch(
                    resource, namespace: route.namespace, name: name, statusOnly: route.statusSubresource, kind: kind,
                    patch: patch)
            }
            return try Self.jsonResponse(result.created ? .created : .ok, result.object)
        case (.DELETE, let name?):
            let options = request.body.isEmpty ? nil : try Self.parseJSON(request.body)
            let result = try state.withLockedValue {
                try $0.delete(resource, namespace: route.namespace, name: name, options: options)
            }
            return try Self.jsonResponse(result.deleted ? .ok : .accepted, result.object)
        case (.DELETE, nil):
            let labelSelector = try query["labelSelector"].map { try LabelSelector(parsing: $0) } ?? .everything
            let fieldSelector = try query["fieldSelector"].map { try FieldSelector(parsing: $0) } ?? .everything
            let list = state.withLockedValue {
                $0.deleteCollection(
                    resource, namespace: route.namespace, labelSelector: labelSelector, fieldSelector: fieldSelector)
            }
            return try Self.jsonResponse(.ok, list)
        default:
            throw APIError.methodNotAllowed(request.method.rawValue)
        }
    }

    /// A create whose object goes through mutating webhooks first (see ``MutatingAdmission``); their warnings
    /// become `Warning` headers of the response.
    private func admitThenCreate(
        _ calls: [MutatingAdmission.Call], resource: ResourceInfo, route: ResourceRoute, body: JSONValue, user: String
    ) -> APIOutcome {
        let (admission, state) = (self.admission, self.state)
        let namespace = route.namespace
        return .deferred {
            var object = body
            if let namespace, (object[meta: "namespace"]?.stringValue ?? "").isEmpty {
                object[meta: "namespace"] = .string(namespace)
            }
            do {
                let admitted = try await admission.admit(
                    calls, resource: resource, namespace: namespace, object: object, user: user)
                let created = try state.withLockedValue {
                    try $0.create(resource, namespace: namespace, body: admitted.object)
                }
                guard case .response(let status, var headers, let bytes) = try Self.jsonResponse(.created, created)
                else { return Self.errorResponse(.internalError("unexpected outcome")) }
                headers.add(contentsOf: MutatingAdmission.warningHeaders(admitted.warnings))
                return .response(status: status, headers: headers, body: bytes)
            } catch let error as APIError {
                return Self.errorResponse(error)
            } catch {
                return Self.errorResponse(.internalError(String(describing: error)))
            }
        }
    }

    private static func parseJSON(_ body: [UInt8], applyConfiguration: Bool = false) throws -> JSONValue {
        guard !body.isEmpty else { throw APIError.badRequest("the request body is empty") }
        do {
            return try JSONValue(json: Data(body))
        } catch {
            if applyConfiguration {
                throw APIError.badRequest(
                    "the Apus test server accepts apply configurations only in JSON form (JSON is valid YAML): \(error)"
                )
            }
            throw APIError.badRequest("couldn't get version/kind; json parse error: \(error)")
        }
    }

    static func jsonResponse(_ status: HTTPResponseStatus, _ value: JSONValue) throws -> APIOutcome {
        .response(status: status, headers: ["content-type": "application/json"], body: Array(try value.jsonData()))
    }

    static func errorResponse(_ error: APIError) -> APIOutcome {
        var headers: HTTPHeaders = ["content-type": "application/json"]
        if let retryAfter = error.retryAfterSeconds { headers.add(name: "retry-after", value: String(retryAfter)) }
        let body = (try? JSONValue(encoding: error.status).jsonData()).map { Array($0) } ?? []
        return .response(status: error.httpStatus, headers: headers, body: body)
    }
}

extension APIError {
    init(status: Status) {
        self.status = status
        self.retryAfterSeconds = status.details?.retryAfterSeconds
    }
}

/// What an authorizer decides on: the request's user, verb and target, as RBAC sees them.
public struct AuthorizationAttributes: Sendable, Hashable, CustomStringConvertible {
    public var user: String
    /// get, list, watch, create, update, patch, delete or deletecollection.
    public var verb: String
    public var apiGroup: String
    /// The plural, e.g. `leases`.
    public var resource: String
    /// `status` for requests on the status subresource.
    public var subresource: String?
    public var namespace: String?
    /// The object's name; for list and watch the name a `fieldSelector=metadata.name=<name>` pins, which is how
    /// the real RBAC authorizer lets `resourceNames` rules cover list and watch.
    public var name: String?

    init(user: String, verb: String, route: ResourceRoute, query: [String: String]) {
        self.user = user
        self.verb = verb
        self.apiGroup = route.resource.type.group
        self.resource = route.resource.type.plural
        self.subresource = route.statusSubresource ? "status" : nil
        self.namespace = route.namespace
        if let name = route.name {
            self.name = name
        } else if ["list", "watch"].contains(verb), let selector = query["fieldSelector"],
            selector.hasPrefix("metadata.name="), !selector.contains(",")
        {
            self.name = String(selector.dropFirst("metadata.name=".count))
        }
    }

    /// The resource with its subresource, as RBAC rules name it: `serviceprofiles/status`.
    public var resourcePath: String { subresource.map { "\(resource)/\($0)" } ?? resource }

    public var description: String {
        let group = apiGroup.isEmpty ? "" : ".\(apiGroup)"
        let scope = namespace.map { " in namespace \"\($0)\"" } ?? " at the cluster scope"
        let object = name.map { " \"\($0)\"" } ?? ""
        return "\(user) \(verb) \(resourcePath)\(group)\(object)\(scope)"
    }

    /// The message a real API server gives for a refused request.
    var refusal: String {
        let group = apiGroup.isEmpty ? "" : ".\(apiGroup)"
        let object = name.map { " \"\($0)\"" } ?? ""
        let scope = namespace.map { " in the namespace \"\($0)\"" } ?? " at the cluster scope"
        return "\(resource)\(group)\(object) is forbidden: User \"\(user)\" cannot \(verb) resource "
            + "\"\(resourcePath)\" in API group \"\(apiGroup)\"\(scope)"
    }
}
