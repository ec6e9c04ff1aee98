import ApusController
import ApusCore
import ApusIdentity
import ApusIdentityClient
import ApusX509
import Foundation
import KubernetesClient
import KubernetesTestServer
import Metrics
import NIOCore
import NIOPosix
import NIOSSL
import Testing

/// Trust anchors + issuer PEM texts, as `apus install` generates them.
struct TrustRoots {
    var anchorsPEM: String
    var issuerCertificatePEM: String
    var issuerKeyPEM: String

    static func generate() throws -> TrustRoots {
        let generated = try TrustRootsGenerator.generate()
        return TrustRoots(
            anchorsPEM: generated.anchorsPEM, issuerCertificatePEM: generated.issuerCertificatePEM,
            issuerKeyPEM: generated.issuerKeyPEM)
    }

    var issuer: Certificate { get throws { try Certificate(pem: issuerCertificatePEM) } }
    var anchors: [Certificate] { get throws { try Certificate.parseChain(pem: anchorsPEM) } }

    /// The issuer Secret in cert-manager's `kubernetes.io/tls` form, or Linkerd's `crt.pem`/`key.pem` form.
    func secret(namespace: String = "apus", tlsForm: Bool = true) -> Secret {
        let data: [String: Data] =
            tlsForm
            ? ["tls.crt": Data(issuerCertificatePEM.utf8), "tls.key": Data(issuerKeyPEM.utf8)]
            : ["crt.pem": Data(issuerCertificatePEM.utf8), "key.pem": Data(issuerKeyPEM.utf8)]
        return Secret(
            metadata: ObjectMeta(name: KubernetesIssuerSource.secretName, namespace: namespace),
            type: tlsForm ? "kubernetes.io/tls" : "Opaque", data: data)
    }

    static func trustRoots(_ bundlePEM: String, namespace: String = "apus") -> ConfigMap {
        ConfigMap(
            metadata: ObjectMeta(name: KubernetesIssuerSource.trustRootsName, namespace: namespace),
            data: [KubernetesIssuerSource.trustRootsKey: bundlePEM])
    }
}

/// The API test server authorizing the controller's ServiceAccount with exactly the controller-manager's and the
/// identity service's declared permissions, plus an identity service and clients against it.
struct IdentityFixture {
    let api: ControllerManagerTests.Fixture
    let controller: KubernetesClient
    let events: EventRecorder

    static func start() async throws -> IdentityFixture {
        let rules = ControllerManager.requiredPermissions()
        let api = try await ControllerManagerTests.Fixture.start(rules: rules)
        _ = try await api.admin.create(Namespace(metadata: ObjectMeta(name: "apus")))
        _ = try await api.admin.create(Namespace(metadata: ObjectMeta(name: "default")))
        let controller = try api.controllerClient()
        return IdentityFixture(
            api: api, controller: controller, events: EventRecorder(client: controller, component: "apus-identity"))
    }

    var server: KubernetesTestServer { api.server }

    /// A temporary directory whose file `token` holds a projected token of ServiceAccount `default/web` for the
    /// identity audience, as a proxy of that workload would have mounted.
    func webTokenDirectory() throws -> TemporaryDirectory {
        let directory = try TemporaryDirectory()
        try directory.write(
            server.mintServiceAccountToken(
                namespace: "default", serviceAccount: "web", audiences: [TokenReviewValidator.audience]),
            to: "token")
        return directory
    }
    var admin: KubernetesClient { api.admin }

    /// Creates or replaces the issuer Secret and trust-roots ConfigMap.
    func install(_ roots: TrustRoots, bundlePEM: String? = nil, tlsForm: Bool = true) async throws {
        try await put(TrustRoots.trustRoots(bundlePEM ?? roots.anchorsPEM))
        try await put(roots.secret(tlsForm: tlsForm))
    }

    func put(_ secret: Secret) async throws {
        if var existing = try? await admin.get(Secret.self, name: secret.metadata.name ?? "", namespace: "apus") {
            existing.type = secret.type
            existing.data = secret.data
            _ = try await admin.update(existing)
        } else {
            _ = try await admin.create(secret, namespace: "apus")
        }
    }

    func put(_ configMap: ConfigMap) async throws {
        if var existing = try? await admin.get(ConfigMap.self, name: configMap.metadata.name ?? "", namespace: "apus") {
            existing.data = configMap.data
            _ = try await admin.update(existing)
        } else {
            _ = try await admin.create(configMap, namespace: "apus")
        }
    }

    /// An identity service fed from the cluster and validating tokens with TokenReviews, on a free port.
    func makeService(
        options: IdentityServiceOptions = IdentityFixture.serviceOptions(),
        metricsFactory: any MetricsFactory = MetricsSystem.factory
    ) -> IdentityService {
        IdentityService(
            options: options, source: KubernetesIssuerSource(client: controller, namespace: "apus", events: events),
            validator: TokenReviewValidator(client: controller), events: events, metricsFactory: metricsFactory)
    }

    static func serviceOptions() -> IdentityServiceOptions {
        IdentityServiceOptions(host: "127.0.0.1", port: 0, servingDNSNames: ["localhost"])
    }

    /// Events with `reason`, all namespaces.
    func events(reason: String) async throws -> [Event] {
        try await admin.list(Event.self).items.filter { $0.reason == reason }
    }

    /// Shuts down the API fixture, which also shuts down ``controller`` (it came from `api.controllerClient()`).
    func shutdown() async throws {
        try await api.shutdown()
    }
}

/// Runs `service` in a task and waits until it listens; cancel the task to stop it.
func startService(_ service: IdentityService) async throws -> (task: Task<Void, any Error>, port: Int) {
    let task = Task { try await service.run() }
    let port = try await service.waitUntilListening()
    return (task, port)
}

func stopService(_ task: Task<Void, any Error>) async {
    task.cancel()
    _ = await task.result
}

/// A temporary directory removed by `cleanup()`.
struct TemporaryDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("apus-identity-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> String { url.appendingPathComponent(name).path }

    func write(_ text: String, to name: String) throws {
        try text.write(toFile: path(name), atomically: true, encoding: .utf8)
    }

    func cleanup() { try? FileManager.default.removeItem(at: url) }
}

/// An identity client for `identity` against a service on `port`, with its token in `tokenPath`.
func makeIdentityClient(
    identity: IdentityName, tokenPath: String, anchorsPEM: String, port: Int,
    serverIdentity: IdentityName = IdentityServiceOptions().serverIdentity, refresh: RefreshPolicy = RefreshPolicy(),
    metricsFactory: any MetricsFactory = MetricsSystem.factory
) throws -> IdentityClient {
    try IdentityClient(
        configuration: IdentityClientConfiguration(
            identity: identity, tokenPath: tokenPath, trustAnchorsPEM: anchorsPEM,
            endpoint: CertifyEndpoint(host: "127.0.0.1", port: port, serverIdentity: serverIdentity.description),
            refresh: refresh, requestTimeout: .seconds(5)),
        metricsFactory: metricsFactory)
}

/// Sends raw bytes over TLS (server verified against `anchorsPEM` and `serverName`) and reads until the server
/// closes; returns the status code and body. For protocol tests a real client would never produce.
func rawHTTPS(port: Int, anchorsPEM: String, serverName: String, request: [UInt8]) async throws -> (Int, String) {
    var configuration = TLSConfiguration.makeClientConfiguration()
    configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(anchorsPEM.utf8)))
    let context = try NIOSSLContext(configuration: configuration)
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    NIOSSLClientHandler(context: context, serverHostname: serverName))
                return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
    let received = try await channel.executeThenClose { inbound, outbound in
        try await outbound.write(ByteBuffer(bytes: request))
        var received: [UInt8] = []
        do {
            for try await buffer in inbound { received += buffer.readableBytesView }
        } catch {
            // An unclean TLS shutdown after the response is fine here.
        }
        return received
    }
    let text = String(decoding: received, as: UTF8.self)
    let parts = text.components(separatedBy: "\r\n\r\n")
    let statusLine = parts.first?.split(separator: "\r\n").first ?? ""
    let status = statusLine.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    return (status, parts.dropFirst().joined(separator: "\r\n\r\n"))
}

/// A `POST` with a JSON body, closing the connection after the response.
func postRequest(path: String = IdentityService.certifyPath, method: String = "POST", body: [UInt8]) -> [UInt8] {
    let head = [
        "\(method) \(path) HTTP/1.1", "host: apus-identity", "content-type: application/json",
        "content-length: \(body.count)", "connection: close",
    ]
    return Array((head.joined(separator: "\r\n") + "\r\n\r\n").utf8) + body
}

/// A JSON Certify body (fields left out when nil) with a fresh CSR for `identity`.
func certifyBody(
    identity: String?, token: String?, csrFor csrIdentity: String? = nil, includeCSR: Bool = true
) throws -> [UInt8] {
    var object: [String: String] = [:]
    if let identity { object["identity"] = identity }
    if let token { object["token"] = Data(token.utf8).base64EncodedString() }
    if includeCSR, let name = csrIdentity ?? identity {
        let key = try PrivateKey.generateP256()
        object["certificateSigningRequest"] = Data(try CertificateSigningRequest(key: key, dnsName: name).der)
            .base64EncodedString()
    }
    return Array(try JSONEncoder().encode(object))
}

func code(of body: String) -> String? {
    (try? JSONDecoder().decode([String: String].self, from: Data(body.utf8)))?["code"]
}

/// The error `operation` throws, or nil when it succeeds.
func identityError<T>(_ operation: () async throws -> T) async -> IdentityError? {
    do {
        _ = try await operation()
        return nil
    } catch {
        return error as? IdentityError
    }
}

/// The error `operation` throws, or nil when it succeeds.
func clientError<T>(_ operation: () async throws -> T) async -> IdentityClientError? {
    do {
        _ = try await operation()
        return nil
    } catch {
        return error as? IdentityClientError
    }
}

/// A mutual TLS exchange over loopback between `server` and `client` credentials, with the contexts
/// ``IdentityCredentials`` makes (client certificates required, the server verified as `server`'s identity).
func mutualHandshake(server: IdentityCredentials, client: IdentityCredentials) async throws {
    let serverContext = try server.makeServerContext(requireClientCertificate: true)
    let clientContext = try client.makeClientContext()
    let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .bind(host: "127.0.0.1", port: 0) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: serverContext))
                return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
    let port = try #require(listener.channel.localAddress?.port)
    async let served: Void = listener.executeThenClose { inbound in
        for try await connection in inbound {
            try await connection.executeThenClose { input, output in
                for try await buffer in input {
                    try await output.write(buffer)
                    return
                }
            }
            return
        }
    }
    let serverName = server.identity.description
    let connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    NIOSSLClientHandler(context: clientContext, serverHostname: serverName))
                return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
    let echoed = try await connection.executeThenClose { input, output in
        try await output.write(ByteBuffer(string: "ping"))
        for try await buffer in input { return String(buffer: buffer) }
        return ""
    }
    #expect(echoed == "ping")
    try await served
}
