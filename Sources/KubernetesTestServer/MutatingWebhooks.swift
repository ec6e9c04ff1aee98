import ApusCore
import Foundation
import NIOConcurrencyHelpers
import NIOHTTP1

/// The mutating admission step of a create: the MutatingWebhookConfigurations stored in the server are consulted
/// and matching webhooks are called over HTTPS before the object is stored, as kube-apiserver does.
///
/// ```
///  POST /api/v1/namespaces/ns/pods ─► plan: configurations (sorted by name) × webhooks (in order)
///        │                             rules (CREATE, group/version/resource, scope), namespaceSelector on the
///        │                             namespace's labels, objectSelector on the object's labels
///        ▼ none match: stored at once              ▼ some match: off the event loop, one after the other
///   create ◄─ JSONPatch applied ◄─ AdmissionReview v1 ◄─ HTTPS (caBundle verified, timeoutSeconds)
///        │                              allowed: false ─► 403 (or the response's code) "denied the request"
///        └─ Warning: 299 - "…" headers  call failed ─► Ignore: skipped; Fail (the v1 default): 500 InternalError
/// ```
///
/// Differences from the real server: webhooks run once each (no `reinvocationPolicy`), `matchPolicy` is always
/// `Exact`, `matchConditions` and `sideEffects`/dry-run handling are not evaluated, and `clientConfig.service` is
/// reached through ``setServiceAddress(namespace:name:host:port:)`` (the certificate is still verified for
/// `<name>.<namespace>.svc`).
final class MutatingAdmission: Sendable {
    static let configurations = ResourceInfo(
        type: MutatingWebhookConfiguration.resourceType, hasStatusSubresource: false, isCustomResource: false)

    /// One webhook selected for a request, with everything needed to call it outside the state lock.
    struct Call: Sendable {
        var configuration: String
        var webhook: JSONValue
        var name: String
        var failClosed: Bool
    }

    private let serviceAddresses = NIOLockedValueBox<[String: (host: String, port: Int)]>([:])
    private let callCount = NIOLockedValueBox(0)

    /// Sends webhooks registered with `clientConfig.service` `namespace/name` to `host:port`.
    func setServiceAddress(namespace: String, name: String, host: String, port: Int) {
        serviceAddresses.withLockedValue { $0["\(namespace)/\(name)"] = (host, port) }
    }

    /// Webhook requests attempted since the server started (successful or not).
    var calls: Int { callCount.withLockedValue { $0 } }

    /// The webhooks that must see a create of `object` (already normalized), in call order; empty when none match.
    /// Runs with the state lock held.
    static func plan(_ resource: ResourceInfo, namespace: String?, object: JSONValue, state: ServerState) -> [Call] {
        let stored = state.objects(configurations, namespace: nil)
        guard !stored.isEmpty else { return [] }
        let objectLabels = labels(of: object)
        var namespaceLabels: [String: String]?
        if let namespace {
            // A missing namespace fails the create (404) before admission, as NamespaceLifecycle does.
            guard let stored = state.object(ServerState.namespaces, namespace: nil, name: namespace) else { return [] }
            namespaceLabels = labels(of: stored)
        } else if resource.storageKey == ServerState.namespaces.storageKey {
            namespaceLabels = objectLabels
        }
        var calls: [Call] = []
        for configuration in stored {
            let configurationName = configuration["metadata"]?["name"]?.stringValue ?? ""
            for webhook in configuration["webhooks"]?.arrayValue ?? [] {
                guard matchesRules(webhook["rules"], resource: resource) else { continue }
                // A cluster-scoped object other than a Namespace is never filtered by namespaceSelector.
                if resource.type.namespaced || namespaceLabels != nil {
                    guard selector(webhook["namespaceSelector"], matches: namespaceLabels ?? [:]) else { continue }
                }
                guard selector(webhook["objectSelector"], matches: objectLabels) else { continue }
                calls.append(
                    Call(
                        configuration: configurationName, webhook: webhook,
                        name: webhook["name"]?.stringValue ?? configurationName,
                        failClosed: (webhook["failurePolicy"]?.stringValue ?? "Fail") != "Ignore"))
            }
        }
        return calls
    }

    /// Calls `calls` in order, each on the object the previous ones produced.
    /// - Returns: the mutated object and the warnings to send as `Warning` headers.
    /// - Throws: the `APIError` the real server answers: a webhook's denial, or a failed call of a `Fail` webhook.
    func admit(
        _ calls: [Call], resource: ResourceInfo, namespace: String?, object: JSONValue, user: String
    ) async throws(APIError) -> (object: JSONValue, warnings: [String]) {
        var object = object
        var warnings: [String] = []
        for call in calls {
            callCount.withLockedValue { $0 += 1 }
            let review = Self.review(resource: resource, namespace: namespace, object: object, user: user)
            let answer: JSONValue
            do throws(WebhookCallError) {
                answer = try await send(review, to: call)
            } catch {
                if call.failClosed {
                    throw APIError.internalError("failed calling webhook \"\(call.name)\": \(error.message)")
                }
                continue  // failurePolicy Ignore: as if the webhook had not been registered
            }
            let outcome: Outcome
            do throws(WebhookCallError) {
                outcome = try Self.interpret(answer, requestUID: review.uid, object: object)
            } catch {
                if call.failClosed {
                    throw APIError.internalError("failed calling webhook \"\(call.name)\": \(error.message)")
                }
                continue
            }
            warnings += outcome.warnings
            switch outcome.result {
            case .allowed(let mutated): object = mutated
            case .denied(var status):
                let deniedBy = "admission webhook \"\(call.name)\" denied the request"
                if let message = status.message, !message.isEmpty {
                    status.message = "\(deniedBy): \(message)"
                } else if let reason = status.reason, !reason.isEmpty {
                    status.message = "\(deniedBy): \(reason)"
                } else {
                    status.message = "\(deniedBy) without explanation"
                }
                status.status = "Failure"
                if (status.code ?? 0) == 0 { status.code = 403 }
                throw APIError(status: status)
            }
        }
        return (object, warnings)
    }

    // MARK: - Request and response

    private struct Review {
        var uid: String
        var body: JSONValue
    }

    private static func review(resource: ResourceInfo, namespace: String?, object: JSONValue, user: String) -> Review {
        let uid = UUID().uuidString.lowercased()
        let type = resource.type
        let kind = JSONValue.object([
            "group": .string(type.group), "version": .string(type.version), "kind": .string(type.kind),
        ])
        let gvr = JSONValue.object([
            "group": .string(type.group), "version": .string(type.version), "resource": .string(type.plural),
        ])
        var request: [String: JSONValue] = [
            "uid": .string(uid), "kind": kind, "resource": gvr, "requestKind": kind, "requestResource": gvr,
            "name": .string(object["metadata"]?["name"]?.stringValue ?? ""), "operation": .string("CREATE"),
            "userInfo": .object([
                "username": .string(user), "groups": .array([.string("system:authenticated")]),
            ]),
            "object": object, "oldObject": .null, "dryRun": .bool(false),
            "options": .object(["apiVersion": .string("meta.k8s.io/v1"), "kind": .string("CreateOptions")]),
        ]
        if let namespace { request["namespace"] = .string(namespace) }
        return Review(
            uid: uid,
            body: .object([
                "apiVersion": .string("admission.k8s.io/v1"), "kind": .string("AdmissionReview"),
                "request": .object(request),
            ]))
    }

    private func send(_ review: Review, to call: Call) async throws(WebhookCallError) -> JSONValue {
        let timeoutSeconds = min(max(Int(call.webhook["timeoutSeconds"]?.doubleValue ?? 10), 1), 30)
        let endpoint = try endpoint(call.webhook["clientConfig"] ?? .null, timeoutSeconds: timeoutSeconds)
        let caBundle = call.webhook["clientConfig"]?["caBundle"]?.stringValue.flatMap { Data(base64Encoded: $0) }
        let body: [UInt8]
        do {
            body = Array(try review.body.jsonData())
        } catch {
            throw WebhookCallError(message: "encoding the AdmissionReview failed: \(error)")
        }
        let (status, answer) = try await WebhookClient.post(
            endpoint, caBundle: caBundle, body: body, timeout: .seconds(timeoutSeconds))
        guard (200..<300).contains(status) else {
            let text = String(decoding: answer.prefix(512), as: UTF8.self)
            throw WebhookCallError(message: "received invalid webhook response status \(status): \(text)")
        }
        do {
            return try JSONValue(json: Data(answer))
        } catch {
            throw WebhookCallError(message: "received invalid webhook response: \(error)")
        }
    }

    /// `clientConfig.url`, or `clientConfig.service` resolved through the test's address map.
    private func endpoint(_ clientConfig: JSONValue, timeoutSeconds: Int) throws(WebhookCallError) -> WebhookEndpoint {
        let query = "timeout=\(timeoutSeconds)s"
        if let url = clientConfig["url"]?.stringValue {
            guard let components = URLComponents(string: url), components.scheme == "https",
                let host = components.host, !host.isEmpty
            else {
                throw WebhookCallError(message: "clientConfig.url \"\(url)\" is not an https URL with a host")
            }
            let port = components.port ?? 443
            let path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
            let target =
                path + "?" + ([components.percentEncodedQuery, query].compactMap { $0 }.joined(separator: "&"))
            let bareHost = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
            let isIP = bareHost.contains(":") || bareHost.split(separator: ".").allSatisfy { UInt8($0) != nil }
            return WebhookEndpoint(
                host: bareHost, port: port, serverName: isIP ? nil : bareHost, target: target,
                displayURL: "https://\(host):\(port)\(target)")
        }
        guard let service = clientConfig["service"], let name = service["name"]?.stringValue,
            let namespace = service["namespace"]?.stringValue
        else {
            throw WebhookCallError(message: "clientConfig has neither url nor service")
        }
        let port = Int(service["port"]?.doubleValue ?? 443)
        let path = service["path"]?.stringValue ?? "/"
        let serverName = "\(name).\(namespace).svc"
        let target = path + "?" + query
        let displayURL = "https://\(serverName):\(port)\(target)"
        guard let address = serviceAddresses.withLockedValue({ $0["\(namespace)/\(name)"] }) else {
            throw WebhookCallError(
                message: "failed to call webhook: Post \"\(displayURL)\": service \"\(namespace)/\(name)\" has no "
                    + "address in the test server (see KubernetesTestServer.setWebhookServiceAddress)")
        }
        return WebhookEndpoint(
            host: address.host, port: address.port, serverName: serverName, target: target, displayURL: displayURL)
    }

    private enum Result {
        case allowed(JSONValue)
        case denied(Status)
    }

    private struct Outcome {
        var result: Result
        var warnings: [String]
    }

    /// Checks the AdmissionReview answer the way kube-apiserver does and applies its patch.
    private static func interpret(_ answer: JSONValue, requestUID: String, object: JSONValue)
        throws(WebhookCallError) -> Outcome
    {
        guard answer["apiVersion"]?.stringValue == "admission.k8s.io/v1",
            answer["kind"]?.stringValue == "AdmissionReview"
        else {
            throw WebhookCallError(
                message: "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got "
                    + "\(answer["apiVersion"]?.stringValue ?? ""), Kind=\(answer["kind"]?.stringValue ?? "")")
        }
        guard let response = answer["response"], response.objectValue != nil else {
            throw WebhookCallError(message: "webhook response was absent")
        }
        let uid = response["uid"]?.stringValue ?? ""
        guard uid == requestUID else {
            throw WebhookCallError(message: "expected response.uid=\"\(requestUID)\", got \"\(uid)\"")
        }
        let warnings = (response["warnings"]?.arrayValue ?? []).compactMap(\.stringValue)
        guard response["allowed"]?.boolValue == true else {
            let status = (try? (response["status"] ?? .object([:])).decode(as: Status.self)) ?? Status()
            return Outcome(result: .denied(status), warnings: warnings)
        }
        guard let encoded = response["patch"]?.stringValue, !encoded.isEmpty else {
            return Outcome(result: .allowed(object), warnings: warnings)
        }
        guard response["patchType"]?.stringValue == "JSONPatch" else {
            throw WebhookCallError(
                message: "expected patchType JSONPatch, got \"\(response["patchType"]?.stringValue ?? "")\"")
        }
        guard let bytes = Data(base64Encoded: encoded) else {
            throw WebhookCallError(message: "response.patch is not valid base64")
        }
        do {
            let operations = try JSONValue(json: bytes)
            return Outcome(result: .allowed(try Patch.jsonPatch(operations, to: object)), warnings: warnings)
        } catch let error as APIError {
            throw WebhookCallError(message: "the webhook's JSONPatch does not apply: \(error.status.message ?? "")")
        } catch {
            throw WebhookCallError(message: "response.patch is not a JSON document: \(error)")
        }
    }

    // MARK: - Matching

    private static func labels(of object: JSONValue) -> [String: String] {
        var labels: [String: String] = [:]
        for (key, value) in object["metadata"]?["labels"]?.objectValue ?? [:] {
            if let value = value.stringValue { labels[key] = value }
        }
        return labels
    }

    /// A `metav1.LabelSelector` in JSON form; absent or empty selects everything.
    static func selector(_ selector: JSONValue?, matches labels: [String: String]) -> Bool {
        guard let selector, selector != .null else { return true }
        for (key, value) in selector["matchLabels"]?.objectValue ?? [:] where labels[key] != value.stringValue {
            return false
        }
        for expression in selector["matchExpressions"]?.arrayValue ?? [] {
            guard let key = expression["key"]?.stringValue else { return false }
            let values = Set((expression["values"]?.arrayValue ?? []).compactMap(\.stringValue))
            let value = labels[key]
            switch expression["operator"]?.stringValue {
            case "In": guard let value, values.contains(value) else { return false }
            case "NotIn": if let value, values.contains(value) { return false }
            case "Exists": if value == nil { return false }
            case "DoesNotExist": if value != nil { return false }
            default: return false  // the real server rejects such a configuration when it is created
            }
        }
        return true
    }

    private static func matchesRules(_ rules: JSONValue?, resource: ResourceInfo) -> Bool {
        func contains(_ list: JSONValue?, _ value: String) -> Bool {
            (list?.arrayValue ?? []).contains { $0.stringValue == "*" || $0.stringValue == value }
        }
        return (rules?.arrayValue ?? []).contains { rule in
            guard contains(rule["operations"], "CREATE"), contains(rule["apiGroups"], resource.type.group),
                contains(rule["apiVersions"], resource.type.version)
            else { return false }
            let resources = (rule["resources"]?.arrayValue ?? []).compactMap(\.stringValue)
            guard resources.contains(where: { ["*", "*/*", resource.type.plural].contains($0) }) else { return false }
            switch rule["scope"]?.stringValue ?? "*" {
            case "Namespaced": return resource.type.namespaced
            case "Cluster": return !resource.type.namespaced
            default: return true
            }
        }
    }

    /// `Warning` header values as kube-apiserver writes them (code 299, unknown agent, quoted text).
    static func warningHeaders(_ warnings: [String]) -> HTTPHeaders {
        var headers = HTTPHeaders()
        for warning in warnings {
            let escaped = warning.replacingOccurrences(of: "\\", with: "\\\\")
                .replacingOccurrences(of: "\"", with: "\\\"")
            headers.add(name: "Warning", value: "299 - \"\(escaped)\"")
        }
        return headers
    }
}
