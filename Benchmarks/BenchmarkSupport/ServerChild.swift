import Foundation
import KubernetesClient
import KubernetesTestServer

/// How the benchmark reaches the API test server its child started; part of the child's first line.
public struct ServerEndpoint: Codable, Sendable {
    public var baseURL: String
    public var token: String
    public var caCertificatePEM: String

    public init(_ server: KubernetesTestServer) {
        baseURL = server.baseURL
        token = server.token
        caCertificatePEM = server.caCertificatePEM
    }

    /// The client configuration the benchmark's `KubernetesClient` uses (trusting the per-run CA over HTTPS).
    /// - Throws: ``BenchmarkError`` when the child reported an unusable URL.
    public func clientConfiguration() throws -> ClientConfiguration {
        guard let serverURL = URL(string: baseURL) else {
            throw BenchmarkError("the server child reported an invalid URL '\(baseURL)'")
        }
        return ClientConfiguration(
            server: serverURL,
            tls: .init(certificateAuthorityPEM: serverURL.scheme == "https" ? caCertificatePEM : nil),
            authentication: .bearer(token), requestTimeout: .seconds(120))
    }
}

/// The body of a `--serve` child: runs `body`, printing its error on stderr as `<name>: error: <error>`.
/// - Returns: the exit status, 0 or 1.
public func runServerChild(named name: String, _ body: () async throws -> Void) async -> Int32 {
    do {
        try await body()
        return 0
    } catch {
        FileHandle.standardError.write(Data("\(name): error: \(error)\n".utf8))
        return 1
    }
}

/// Starts an API test server with `options`, runs `body` with it and shuts it down, whether `body` throws or not.
public func withTestServer(
    _ options: KubernetesTestServer.Options, _ body: (KubernetesTestServer) async throws -> Void
) async throws {
    let server = try await KubernetesTestServer.start(options)
    do {
        try await body(server)
    } catch {
        try? await server.shutdown()
        throw error
    }
    try await server.shutdown()
}
