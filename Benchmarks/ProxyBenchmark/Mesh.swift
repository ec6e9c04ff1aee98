import ApusController
import ApusDestinationClient
import ApusIdentity
import BenchmarkSupport
import Foundation
import Logging

/// The identity CA for the mTLS pair: an in-process `IdentityService` (fresh trust roots, local tokens, as local
/// mode runs it), and the environment that makes two apus-proxy processes a client and a server of the mesh.
final class MeshFixture {
    static let clientIdentity = IdentityName(serviceAccount: "bench-client", namespace: "bench")
    static let serverIdentity = IdentityName(serviceAccount: "bench-server", namespace: "bench")
    /// The authority wrk asks the client proxy for; the static endpoint table maps it to the server proxy.
    static let authority = "backend.bench.svc.cluster.local:80"

    let anchorsPEM: String
    let servicePort: Int
    let service: IdentityService
    private let task: Task<Void, any Error>
    private let tokenDirectory: String
    private let tokens: LocalTokenValidator

    private init(
        anchorsPEM: String, service: IdentityService, task: Task<Void, any Error>, port: Int,
        tokens: LocalTokenValidator, directory: String
    ) {
        self.anchorsPEM = anchorsPEM
        self.service = service
        self.task = task
        self.servicePort = port
        self.tokens = tokens
        self.tokenDirectory = directory
    }

    static func start(directory: String) async throws -> MeshFixture {
        let roots = try TrustRootsGenerator.generate()
        // Quiet: the CA's start-up lines would interleave with the progress lines on stderr.
        var logger = Logger(label: "apus.identity")
        logger.logLevel = .warning
        let issuer = IdentityIssuer(logger: logger)
        let outcome = issuer.load(
            anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
            issuerKeyPEM: roots.issuerKeyPEM)
        if case .rejected(let error, _) = outcome {
            throw BenchmarkError("the generated issuer was refused: \(error)")
        }
        let tokens = LocalTokenValidator()
        let service = IdentityService(
            options: IdentityServiceOptions(host: "127.0.0.1", port: 0, servingDNSNames: ["localhost"]),
            source: nil, validator: tokens, issuer: issuer, logger: logger)
        let task = Task { try await service.run() }
        let port: Int
        do {
            port = try await service.waitUntilListening()
        } catch {
            task.cancel()
            throw BenchmarkError("the identity service did not start: \(error)")
        }
        return MeshFixture(
            anchorsPEM: roots.anchorsPEM, service: service, task: task, port: port, tokens: tokens,
            directory: directory)
    }

    /// The identity variables of a proxy that certifies as `identity` (token minted now, written to a file).
    func identityEnvironment(for identity: IdentityName) throws -> [String: String] {
        let tokenPath = "\(tokenDirectory)/token-\(identity.serviceAccount)"
        do {
            try tokens.mint(for: identity).write(toFile: tokenPath, atomically: true, encoding: .utf8)
        } catch {
            throw BenchmarkError("cannot write the token file \(tokenPath): \(error)")
        }
        return [
            "APUS_PROXY_IDENTITY_TOKEN_FILE": tokenPath,
            "APUS_PROXY_IDENTITY_TRUST_ANCHORS": anchorsPEM,
            "APUS_PROXY_IDENTITY_LOCAL_NAME": identity.description,
            "APUS_PROXY_IDENTITY_SVC_ADDR": "127.0.0.1:\(servicePort)",
            "APUS_PROXY_IDENTITY_SVC_NAME": service.serverIdentity.description,
        ]
    }

    /// `APUS_PROXY_OUTBOUND_STATIC_ENDPOINTS`: ``authority`` is the backend behind the server proxy, which is
    /// reached on its inbound port over mTLS and must present ``serverIdentity``.
    static func staticEndpoints(backendPort: Int, serverInboundPort: Int) throws -> String {
        let endpoint = Endpoint(
            address: "127.0.0.1", port: backendPort, identity: serverIdentity.description,
            opaqueTransportPort: serverInboundPort,
            labels: ["namespace": "bench", "service": "backend", "serviceaccount": "bench-server"])
        let data = try JSONEncoder().encode([authority: [endpoint]])
        return String(decoding: data, as: UTF8.self)
    }

    func stop() async {
        task.cancel()
        _ = await task.result
    }
}
