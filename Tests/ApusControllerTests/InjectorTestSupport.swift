import ApusController
import ApusCore
import ApusIdentity
import ApusInjector
import Foundation
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing

/// One HTTPS request per connection, verifying the server against given PEM roots: what kube-apiserver does when
/// it calls a webhook, without a client library in between (so malformed bodies go out exactly as written).
enum HTTPSProbe {
    struct ProbeError: Error {
        var message: String
    }

    struct Response {
        var status: Int
        var body: [UInt8]
        var json: JSONValue? { try? JSONValue(json: Data(body)) }
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    static func post(
        port: Int, path: String = "/inject", body: [UInt8], trustRootsPEM: String, serverName: String? = nil,
        method: HTTPMethod = .POST, headers extra: [(String, String)] = []
    ) async throws -> Response {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(trustRootsPEM.utf8)))
        let context = try NIOSSLContext(configuration: tls)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        try NIOSSLClientHandler(context: context, serverHostname: serverName))
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                        wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var headers = HTTPHeaders()
            headers.add(name: "host", value: serverName ?? "127.0.0.1")
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: String(body.count))
            headers.add(name: "connection", value: "close")
            for (name, value) in extra { headers.replaceOrAdd(name: name, value: value) }
            try await outbound.write(
                .head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)))
            if !body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            try await outbound.write(.end(nil))
            var status = 0
            var received: [UInt8] = []
            for try await part in inbound {
                switch part {
                case .head(let head): status = Int(head.status.code)
                case .body(let buffer): received += buffer.readableBytesView
                case .end: return Response(status: status, body: received)
                }
            }
            throw ProbeError(message: "the connection closed without a complete response (status \(status))")
        }
    }
}

/// AdmissionReview bodies as kube-apiserver sends them.
enum Reviews {
    static func pod(
        name: String = "web-0", namespace: String = "shop", annotations: [String: String] = [:],
        hostNetwork: Bool = false
    ) -> JSONValue {
        var spec: [String: JSONValue] = [
            "containers": .array([
                .object([
                    "name": .string("web"), "image": .string("nginx"),
                    "ports": .array([.object(["containerPort": .number(80)])]),
                ])
            ])
        ]
        if hostNetwork { spec["hostNetwork"] = .bool(true) }
        return .object([
            "apiVersion": .string("v1"), "kind": .string("Pod"),
            "metadata": .object([
                "name": .string(name), "namespace": .string(namespace),
                "annotations": .object(annotations.mapValues { .string($0) }),
            ]),
            "spec": .object(spec),
        ])
    }

    static func review(
        uid: String = "0f4e2c1a-review", object: JSONValue?, namespace: String = "shop", kind: String = "Pod",
        group: String = "", operation: String = "CREATE", apiVersion: String = "admission.k8s.io/v1"
    ) -> JSONValue {
        var request: [String: JSONValue] = [
            "uid": .string(uid),
            "kind": .object(["group": .string(group), "version": .string("v1"), "kind": .string(kind)]),
            "resource": .object([
                "group": .string(group), "version": .string("v1"), "resource": .string(kind.lowercased() + "s"),
            ]),
            "namespace": .string(namespace), "operation": .string(operation),
        ]
        if let object { request["object"] = object }
        return .object([
            "apiVersion": .string(apiVersion), "kind": .string("AdmissionReview"), "request": .object(request),
        ])
    }

    static func bytes(_ value: JSONValue) throws -> [UInt8] { Array(try value.jsonData()) }
}

/// The webhook served from an issuer loaded with fresh trust roots, reading namespaces from a dictionary.
struct RunningInjector {
    let roots: TrustRoots
    let issuer: IdentityIssuer
    let webhook: InjectorWebhook
    let task: Task<Void, any Error>
    let port: Int

    static func start(
        namespaces: [String: Namespace] = [:], maximumRequestBytes: Int = 3 << 20,
        metricsFactory: (any MetricsFactory)? = nil
    ) async throws -> RunningInjector {
        let roots = try TrustRoots.generate()
        let issuer = IdentityIssuer()
        issuer.load(
            anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
            issuerKeyPEM: roots.issuerKeyPEM)
        let certificates = ServingCertificates(
            issuer: issuer, configuration: InjectorWebhook.servingConfiguration(ipAddresses: ["127.0.0.1"]))
        let webhook: InjectorWebhook
        if let metricsFactory {
            webhook = InjectorWebhook(
                defaults: InjectorDefaults(), certificates: certificates,
                configuration: InjectorWebhook.Configuration(
                    host: "127.0.0.1", port: 0, maximumRequestBytes: maximumRequestBytes),
                namespace: { namespaces[$0] }, metricsFactory: metricsFactory)
        } else {
            webhook = InjectorWebhook(
                defaults: InjectorDefaults(), certificates: certificates,
                configuration: InjectorWebhook.Configuration(
                    host: "127.0.0.1", port: 0, maximumRequestBytes: maximumRequestBytes),
                namespace: { namespaces[$0] })
        }
        let task = Task { try await webhook.run() }
        let port = try await webhook.port()
        return RunningInjector(roots: roots, issuer: issuer, webhook: webhook, task: task, port: port)
    }

    func post(_ body: [UInt8], path: String = "/inject", method: HTTPMethod = .POST) async throws -> HTTPSProbe.Response
    {
        try await HTTPSProbe.post(
            port: port, path: path, body: body, trustRootsPEM: roots.anchorsPEM,
            serverName: "apus-injector.apus.svc", method: method)
    }

    func stop() async {
        task.cancel()
        _ = try? await task.value
    }
}
