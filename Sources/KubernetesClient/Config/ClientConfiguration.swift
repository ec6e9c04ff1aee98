import Foundation

/// Everything ``KubernetesClient`` needs to reach one API server: where it is, how to trust it, who we are.
///
/// Build one from a kubeconfig (``KubeConfig/configuration(context:)``), from the pod's service account
/// (``ClientConfiguration/inCluster(environment:serviceAccountDirectory:)``), or by hand for tests:
///
/// ```swift
/// let config = ClientConfiguration(
///     server: URL(string: "https://127.0.0.1:6443")!,
///     tls: .init(certificateAuthorityPEM: caPEM),
///     authentication: .bearer(token))
/// let client = try KubernetesClient(configuration: config)
/// ```
///
/// Credentials never appear in ``description``: printing or logging a configuration is safe.
public struct ClientConfiguration: Sendable, CustomStringConvertible {
    /// How the client verifies the server and presents itself at the TLS layer.
    public struct TLS: Sendable, Hashable, CustomStringConvertible {
        /// PEM bundle of the CAs that may sign the server certificate; `nil` uses the system trust store.
        public var certificateAuthorityPEM: String?
        /// Skips server certificate verification entirely (kubeconfig `insecure-skip-tls-verify`). Test use only.
        public var insecureSkipVerify: Bool
        /// The name to verify the server certificate against (and send as SNI) instead of the URL host;
        /// kubeconfig `tls-server-name`, needed when connecting by IP to a certificate issued for a DNS name.
        public var serverName: String?
        /// PEM client certificate (chain) for mutual TLS.
        public var clientCertificatePEM: String?
        /// PEM private key matching ``clientCertificatePEM``.
        public var clientKeyPEM: String?

        public init(
            certificateAuthorityPEM: String? = nil, insecureSkipVerify: Bool = false, serverName: String? = nil,
            clientCertificatePEM: String? = nil, clientKeyPEM: String? = nil
        ) {
            self.certificateAuthorityPEM = certificateAuthorityPEM
            self.insecureSkipVerify = insecureSkipVerify
            self.serverName = serverName
            self.clientCertificatePEM = clientCertificatePEM
            self.clientKeyPEM = clientKeyPEM
        }

        public var description: String {
            var parts = ["ca: \(certificateAuthorityPEM == nil ? "system" : "custom")"]
            if insecureSkipVerify { parts.append("insecureSkipVerify") }
            if let serverName { parts.append("serverName: \(serverName)") }
            if clientCertificatePEM != nil { parts.append("clientCertificate: <set>") }
            if clientKeyPEM != nil { parts.append("clientKey: <redacted>") }
            return "TLS(\(parts.joined(separator: ", ")))"
        }
    }

    /// How requests are authenticated at the HTTP layer.
    public enum Authentication: Sendable, Hashable, CustomStringConvertible {
        /// No `Authorization` header (client certificates or an unauthenticated test server).
        case none
        /// A fixed bearer token.
        case bearer(String)
        /// A bearer token read from a file and re-read when it may have rotated (projected service account
        /// tokens are replaced by the kubelet about every hour). See ``ClientConfiguration/tokenRefreshInterval``.
        case tokenFile(String)

        public var description: String {
            switch self {
            case .none: return "none"
            case .bearer: return "bearer(<redacted>)"
            case .tokenFile(let path): return "tokenFile(\(path))"
            }
        }
    }

    /// Base URL of the API server, e.g. `https://10.96.0.1:443`.
    public var server: URL
    public var tls: TLS
    public var authentication: Authentication
    /// The namespace used when a call on a namespaced type names none (the context's or the pod's namespace).
    public var namespace: String
    /// How old a token read from a file may get before it is read again. A 401 also forces a re-read.
    public var tokenRefreshInterval: Duration
    /// Deadline for ordinary (non-watch) requests.
    public var requestTimeout: Duration
    public var userAgent: String

    public init(
        server: URL, tls: TLS = TLS(), authentication: Authentication = .none, namespace: String = "default",
        tokenRefreshInterval: Duration = .seconds(60), requestTimeout: Duration = .seconds(30),
        userAgent: String = "apus-kubernetes-client"
    ) {
        self.server = server
        self.tls = tls
        self.authentication = authentication
        self.namespace = namespace
        self.tokenRefreshInterval = tokenRefreshInterval
        self.requestTimeout = requestTimeout
        self.userAgent = userAgent
    }

    public var description: String {
        "ClientConfiguration(server: \(server.absoluteString), namespace: \(namespace), auth: \(authentication), "
            + "\(tls))"
    }
}

extension ClientConfiguration {
    /// Where a pod finds its service account credentials.
    public static let defaultServiceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"

    /// The configuration of a process running in a pod: the API server from `KUBERNETES_SERVICE_HOST`/`_PORT`,
    /// the CA and namespace from the service account directory, and the token file re-read as it rotates.
    ///
    /// ```swift
    /// let config = try ClientConfiguration.inCluster()
    /// ```
    ///
    /// - Throws: ``KubeConfigError`` `.notInCluster` when the environment variables are missing,
    ///   `.unreadableFile` when the CA certificate or token cannot be read.
    public static func inCluster(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        serviceAccountDirectory: String = defaultServiceAccountDirectory
    ) throws -> ClientConfiguration {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty,
            let port = environment["KUBERNETES_SERVICE_PORT"], !port.isEmpty
        else {
            throw KubeConfigError.notInCluster(
                "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set")
        }
        let hostPart = host.contains(":") ? "[\(host)]" : host
        guard let url = URL(string: "https://\(hostPart):\(port)") else {
            throw KubeConfigError.invalidField(
                "KUBERNETES_SERVICE_HOST", "'\(host):\(port)' does not form a valid URL")
        }
        let directory = URL(fileURLWithPath: serviceAccountDirectory)
        let tokenPath = directory.appendingPathComponent("token").path
        // Read once now so a missing mount fails at startup rather than on the first request.
        _ = try readFile(tokenPath)
        let caPEM = try readFile(directory.appendingPathComponent("ca.crt").path)
        let namespacePath = directory.appendingPathComponent("namespace").path
        var namespace = "default"
        if FileManager.default.fileExists(atPath: namespacePath) {
            let value = try readFile(namespacePath).trimmingCharacters(in: .whitespacesAndNewlines)
            if !value.isEmpty { namespace = value }
        }
        return ClientConfiguration(
            server: url, tls: TLS(certificateAuthorityPEM: caPEM), authentication: .tokenFile(tokenPath),
            namespace: namespace)
    }

    /// The configuration `kubectl` would use: `$KUBECONFIG` (or `~/.kube/config`) when present, otherwise the
    /// in-cluster service account.
    public static func load(
        context: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> ClientConfiguration {
        let paths = KubeConfig.defaultPaths(environment: environment)
        let existing = paths.filter { FileManager.default.fileExists(atPath: $0) }
        if !existing.isEmpty {
            return try KubeConfig.load(paths: existing).configuration(context: context)
        }
        if environment["KUBERNETES_SERVICE_HOST"] != nil {
            return try inCluster(environment: environment)
        }
        throw KubeConfigError.noConfiguration(
            "no kubeconfig at \(paths.joined(separator: ":")) and not running in a pod")
    }

    static func readFile(_ path: String) throws -> String {
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            guard let text = String(data: data, encoding: .utf8) else {
                throw KubeConfigError.unreadableFile(path, "not UTF-8 text")
            }
            return text
        } catch let error as KubeConfigError {
            throw error
        } catch {
            throw KubeConfigError.unreadableFile(path, "\(error.localizedDescription)")
        }
    }
}
