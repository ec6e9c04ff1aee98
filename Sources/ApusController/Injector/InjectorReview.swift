import ApusCore
import ApusInjector
import Foundation
import NIOHTTP1

/// The HTTP-free half of the webhook: one request body in, one answer out. Everything a client can send ends in
/// an ``Answer`` (never a crash): the server only frames it.
///
/// | Body                                                         | Answer                                          |
/// |--------------------------------------------------------------|-------------------------------------------------|
/// | not JSON, not an object, no `request`, no `request.uid`      | 400 `malformed AdmissionReview: …`              |
/// | `apiVersion`/`kind` other than admission.k8s.io/v1 AdmissionReview | 400 naming what was received              |
/// | a review of something other than a Pod CREATE                | 200 allowed, unchanged                          |
/// | a Pod CREATE without `object`                                | 200 allowed, unchanged, with a warning          |
/// | an object the injector cannot read as a pod                  | 200 allowed, unchanged, with a warning          |
/// | a Pod the injector skips                                     | 200 allowed, unchanged (+ its warnings)         |
/// | a Pod to inject                                              | 200 allowed, `patchType: JSONPatch`, base64 patch |
///
/// A broken review is answered 400 rather than "allowed" because the API server then applies the webhook's
/// `failurePolicy`, which is the administrator's choice for "the injector could not decide".
struct InjectorReview: Sendable {
    struct Answer: Sendable {
        var status: HTTPResponseStatus
        var body: [UInt8]
        var contentType: String
        var outcome: Outcome
    }

    /// What happened, for metrics and logs.
    enum Outcome: Sendable, Hashable {
        case injected(pod: String)
        case skipped(pod: String, reason: String)
        /// Allowed unchanged without looking at it: not a Pod CREATE.
        case ignored(reason: String)
        /// Allowed unchanged because the pod could not be read (missing or undecodable object).
        case failedOpen(reason: String)
        /// Answered 4xx.
        case rejected(status: HTTPResponseStatus, reason: String)
    }

    let injector: @Sendable () -> ProxyInjector
    let namespace: @Sendable (String) -> Namespace?

    /// The review decoded in one pass (the pod object straight into a `JSONValue`); a malformed `request` is kept
    /// as an error so the version check comes first.
    private struct Envelope: Decodable {
        var apiVersion: String?
        var kind: String?
        var request: AdmissionRequest?
        var requestError: String?

        enum CodingKeys: String, CodingKey {
            case apiVersion, kind, request
        }

        /// The envelope of a review read by ``JSONBytes``, or nil when any field the `Decodable` path reads has
        /// a type it would reject: that path then runs and words the error exactly as it always has. Otherwise
        /// the result is what `init(from:)` gives for the same JSON.
        init?(parsed root: JSONValue) {
            guard case .object(let members) = root else { return nil }
            apiVersion = members["apiVersion"]?.stringValue
            kind = members["kind"]?.stringValue
            switch members["request"] {
            case nil, .null?:
                request = nil
            case .object(let fields)?:
                guard let request = Self.request(fields) else { return nil }
                self.request = request
            default:
                return nil
            }
        }

        /// `AdmissionRequest`'s `Decodable` rules over parsed members; nil where they would throw.
        private static func request(_ fields: [String: JSONValue]) -> AdmissionRequest? {
            guard case .string(let uid)? = fields["uid"],
                let subResource = optionalString(fields["subResource"]),
                let name = optionalString(fields["name"]),
                let namespace = optionalString(fields["namespace"]),
                let operation = optionalString(fields["operation"]),
                let kind = optionalMembers(fields["kind"], ["group", "version", "kind"]),
                let resource = optionalMembers(fields["resource"], ["group", "version", "resource"])
            else { return nil }
            let dryRun: Bool?
            switch fields["dryRun"] {
            case nil, .null?: dryRun = nil
            case .bool(let flag)?: dryRun = flag
            default: return nil
            }
            let object: JSONValue?
            if case .null? = fields["object"] { object = nil } else { object = fields["object"] }
            var request = AdmissionRequest(
                uid: uid,
                kind: kind.map { GroupVersionKind(group: $0[0], version: $0[1], kind: $0[2]) },
                resource: resource.map { GroupVersionResource(group: $0[0], version: $0[1], resource: $0[2]) },
                name: name, namespace: namespace, operation: operation, object: object)
            request.subResource = subResource
            request.dryRun = dryRun
            return request
        }

        /// `.some(nil)` for a missing or null member, `.some(text)` for a string, nil for any other type.
        private static func optionalString(_ value: JSONValue?) -> String?? {
            switch value {
            case nil, .null?: return .some(nil)
            case .string(let text)?: return .some(text)
            default: return nil
            }
        }

        /// The string members `keys` of an optional object (a missing or null member is ""), as
        /// `GroupVersionKind`/`GroupVersionResource` decode them; nil where decoding would throw.
        private static func optionalMembers(_ value: JSONValue?, _ keys: [String]) -> [String]?? {
            switch value {
            case nil, .null?: return .some(nil)
            case .object(let members)?:
                var result: [String] = []
                for key in keys {
                    guard let text = optionalString(members[key]) else { return nil }
                    result.append(text ?? "")
                }
                return .some(result)
            default: return nil
            }
        }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            apiVersion = try? c.decodeIfPresent(String.self, forKey: .apiVersion)
            kind = try? c.decodeIfPresent(String.self, forKey: .kind)
            do {
                request = try c.decodeIfPresent(AdmissionRequest.self, forKey: .request)
            } catch {
                requestError = InjectorReview.describe(error)
            }
        }
    }

    func answer(_ body: [UInt8]) -> Answer {
        let envelope: Envelope
        if let parsed = try? JSONBytes.parse(body), let fast = Envelope(parsed: parsed) {
            envelope = fast
        } else {
            // Bad input (or JSON the strict reader refuses): Foundation's decoder words the error.
            do {
                envelope = try JSONDecoder().decode(Envelope.self, from: Data(body))
            } catch DecodingError.typeMismatch(_, let context) where context.codingPath.isEmpty {
                return Self.reject("malformed AdmissionReview: the body is not a JSON object")
            } catch {
                return Self.reject("malformed AdmissionReview: the body is not JSON (\(Self.describe(error)))")
            }
        }
        let apiVersion = envelope.apiVersion ?? ""
        let kind = envelope.kind ?? ""
        guard apiVersion == AdmissionReview.apiVersion, kind == AdmissionReview.kind else {
            return Self.reject(
                "unsupported review \(apiVersion.isEmpty ? "<no apiVersion>" : apiVersion), "
                    + "kind=\(kind.isEmpty ? "<no kind>" : kind): the injector speaks admission.k8s.io/v1 "
                    + "AdmissionReview only (admissionReviewVersions: [v1])")
        }
        if let error = envelope.requestError {
            return Self.reject("malformed AdmissionReview: request: \(error)")
        }
        guard let request = envelope.request else {
            return Self.reject("malformed AdmissionReview: request is missing")
        }
        guard !request.uid.isEmpty else { return Self.reject("malformed AdmissionReview: request.uid is empty") }

        let isPod = request.kind.map { $0.group.isEmpty && $0.kind == "Pod" } ?? false
        guard isPod, request.operation == "CREATE", (request.subResource ?? "").isEmpty else {
            let what = request.kind.map { "\($0.group.isEmpty ? "" : "\($0.group)/")\($0.kind)" } ?? "<no kind>"
            return Self.allow(
                uid: request.uid, outcome: .ignored(reason: "\(request.operation ?? "<no operation>") \(what)"))
        }
        guard let object = request.object, object.objectValue != nil else {
            return Self.allow(
                uid: request.uid,
                warnings: ["apus proxy injector: the review carries no pod object; admitted without a proxy"],
                outcome: .failedOpen(reason: "missing object"))
        }
        // Pods of workload controllers are reviewed before they are named, and carry the namespace only here.
        var pod = object
        let namespaceName = request.namespace ?? pod["metadata"]?["namespace"]?.stringValue ?? ""
        if pod["metadata"]?.objectValue == nil { pod["metadata"] = .object([:]) }
        if (pod["metadata"]?["namespace"]?.stringValue ?? "").isEmpty {
            pod["metadata"]?["namespace"] = .string(namespaceName)
        }
        let name = pod["metadata"]?["name"]?.stringValue ?? request.name ?? ""
        let podName = "\(namespaceName)/\(name.isEmpty ? (pod["metadata"]?["generateName"]?.stringValue ?? "") : name)"
        let result = injector().inject(podJSON: pod, namespace: namespace(namespaceName))
        if case .skip(let reason) = result.decision, reason == SkipReason.notAPod {
            return Self.allow(
                uid: request.uid,
                warnings: ["apus proxy injector: the object is not a readable pod; admitted without a proxy"],
                outcome: .failedOpen(reason: "undecodable pod"))
        }
        let warnings = result.warnings.isEmpty ? nil : result.warnings
        switch result.decision {
        case .skip(let reason):
            return Self.allow(uid: request.uid, warnings: warnings, outcome: .skipped(pod: podName, reason: reason))
        case .inject:
            guard !result.patch.isEmpty else {
                return Self.allow(
                    uid: request.uid, warnings: warnings,
                    outcome: .skipped(pod: podName, reason: "already injected"))
            }
            let patch: [UInt8]
            do {
                patch = try JSONBytes.encode(result.patch)
            } catch {
                return Self.allow(
                    uid: request.uid, warnings: warnings, outcome: .failedOpen(reason: "patch encoding failed"))
            }
            return Self.answer(
                AdmissionResponse(
                    uid: request.uid, allowed: true, patchType: "JSONPatch", patch: Data(patch).base64EncodedString(),
                    warnings: warnings),
                outcome: .injected(pod: podName))
        }
    }

    static func reject(_ message: String, status: HTTPResponseStatus = .badRequest) -> Answer {
        Answer(
            status: status, body: Array((message + "\n").utf8), contentType: "text/plain; charset=utf-8",
            outcome: .rejected(status: status, reason: message))
    }

    private static func allow(uid: String, warnings: [String]? = nil, outcome: Outcome) -> Answer {
        answer(AdmissionResponse(uid: uid, allowed: true, warnings: warnings), outcome: outcome)
    }

    /// The response review as JSON. Written by hand (all fields are strings, booleans and a string list) because
    /// `JSONEncoder` cost a noticeable share of the review, mostly in escaping the long base64 patch.
    private static func answer(_ response: AdmissionResponse, outcome: Outcome) -> Answer {
        if response.status == nil {
            var body: [UInt8] = []
            body.reserveCapacity(192 + (response.patch?.utf8.count ?? 0))
            body.append(contentsOf: #"{"apiVersion":"#.utf8)
            JSONBytes.writeString(AdmissionReview.apiVersion, into: &body)
            body.append(contentsOf: #","kind":"#.utf8)
            JSONBytes.writeString(AdmissionReview.kind, into: &body)
            body.append(contentsOf: #","response":{"uid":"#.utf8)
            JSONBytes.writeString(response.uid, into: &body)
            body.append(contentsOf: (response.allowed ? #","allowed":true"# : #","allowed":false"#).utf8)
            if let patchType = response.patchType {
                body.append(contentsOf: #","patchType":"#.utf8)
                JSONBytes.writeString(patchType, into: &body)
            }
            if let patch = response.patch {
                body.append(contentsOf: #","patch":"#.utf8)
                JSONBytes.writeString(patch, into: &body)
            }
            if let warnings = response.warnings {
                body.append(contentsOf: #","warnings":["#.utf8)
                for (index, warning) in warnings.enumerated() {
                    if index > 0 { body.append(UInt8(ascii: ",")) }
                    JSONBytes.writeString(warning, into: &body)
                }
                body.append(UInt8(ascii: "]"))
            }
            body.append(contentsOf: "}}".utf8)
            return Answer(status: .ok, body: body, contentType: "application/json", outcome: outcome)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        do {
            let body = try encoder.encode(AdmissionReview(response: response))
            return Answer(status: .ok, body: Array(body), contentType: "application/json", outcome: outcome)
        } catch {
            // Encoding plain strings and booleans cannot fail; answer something the API server understands anyway.
            let body =
                #"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"#
                + JSONValue.string(response.uid).description + #","allowed":true}}"#
            return Answer(status: .ok, body: Array(body.utf8), contentType: "application/json", outcome: outcome)
        }
    }

    /// A decoding error with its field path, without echoing the body.
    static func describe(_ error: any Error) -> String {
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
