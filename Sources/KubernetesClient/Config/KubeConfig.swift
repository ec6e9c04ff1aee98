import Foundation
import Yams

/// A parsed kubeconfig: named clusters, users and contexts plus the current context, as `kubectl` reads it.
///
/// Several files (the `:`-separated `KUBECONFIG`) merge the way `kubectl` merges them: the first file that
/// defines a cluster, user or context name wins, and the first file that sets `current-context` wins.
/// Relative file paths (`certificate-authority`, `client-certificate`, `client-key`, `tokenFile`) are resolved
/// against the directory of the file that contains them, so merging never changes what a path means.
///
/// ```swift
/// let kubeconfig = try KubeConfig.load(paths: KubeConfig.defaultPaths())
/// let config = try kubeconfig.configuration(context: "kind-apus")
/// ```
public struct KubeConfig: Sendable, Hashable {
    public struct Cluster: Sendable, Hashable {
        public var server: String
        /// Absolute path of a PEM CA bundle.
        public var certificateAuthority: String?
        /// Base64 PEM CA bundle, as written in the file.
        public var certificateAuthorityData: String?
        public var insecureSkipTLSVerify: Bool
        public var tlsServerName: String?

        public init(
            server: String, certificateAuthority: String? = nil, certificateAuthorityData: String? = nil,
            insecureSkipTLSVerify: Bool = false, tlsServerName: String? = nil
        ) {
            self.server = server
            self.certificateAuthority = certificateAuthority
            self.certificateAuthorityData = certificateAuthorityData
            self.insecureSkipTLSVerify = insecureSkipTLSVerify
            self.tlsServerName = tlsServerName
        }
    }

    /// Credentials. ``description`` redacts the token and key material.
    public struct User: Sendable, Hashable, CustomStringConvertible {
        public var token: String?
        public var tokenFile: String?
        public var clientCertificate: String?
        public var clientCertificateData: String?
        public var clientKey: String?
        public var clientKeyData: String?

        public init(
            token: String? = nil, tokenFile: String? = nil, clientCertificate: String? = nil,
            clientCertificateData: String? = nil, clientKey: String? = nil, clientKeyData: String? = nil
        ) {
            self.token = token
            self.tokenFile = tokenFile
            self.clientCertificate = clientCertificate
            self.clientCertificateData = clientCertificateData
            self.clientKey = clientKey
            self.clientKeyData = clientKeyData
        }

        public var description: String {
            var parts: [String] = []
            if token != nil { parts.append("token: <redacted>") }
            if let tokenFile { parts.append("tokenFile: \(tokenFile)") }
            if let clientCertificate { parts.append("clientCertificate: \(clientCertificate)") }
            if clientCertificateData != nil { parts.append("clientCertificateData: <set>") }
            if let clientKey { parts.append("clientKey: \(clientKey)") }
            if clientKeyData != nil { parts.append("clientKeyData: <redacted>") }
            return "User(\(parts.joined(separator: ", ")))"
        }
    }

    public struct Context: Sendable, Hashable {
        public var cluster: String
        public var user: String?
        public var namespace: String?

        public init(cluster: String, user: String? = nil, namespace: String? = nil) {
            self.cluster = cluster
            self.user = user
            self.namespace = namespace
        }
    }

    public var clusters: [String: Cluster]
    public var users: [String: User]
    public var contexts: [String: Context]
    public var currentContext: String?

    public init(
        clusters: [String: Cluster] = [:], users: [String: User] = [:], contexts: [String: Context] = [:],
        currentContext: String? = nil
    ) {
        self.clusters = clusters
        self.users = users
        self.contexts = contexts
        self.currentContext = currentContext
    }

    /// Parses kubeconfig YAML. `path` is the file it came from: relative paths inside are resolved against its
    /// directory (against the working directory when `nil`), and errors name it.
    public init(yaml: String, path: String? = nil) throws {
        let source = path ?? "<kubeconfig>"
        let file: FileModel
        do {
            if yaml.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
                file = FileModel()
            } else {
                file = try YAMLDecoder().decode(FileModel.self, from: yaml)
            }
        } catch let error as DecodingError {
            throw KubeConfigError.invalidYAML(
                source, decodingErrorSummary(error), fieldPath: decodingErrorFieldPath(error))
        } catch {
            throw KubeConfigError.invalidYAML(source, "\(error)")
        }
        let baseDirectory = path.map { URL(fileURLWithPath: $0).deletingLastPathComponent() }
        func resolve(_ filePath: String?) -> String? {
            guard let filePath, !filePath.isEmpty else { return nil }
            if filePath.hasPrefix("/") { return filePath }
            if filePath.hasPrefix("~/") {
                return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(
                    String(filePath.dropFirst(2))
                ).path
            }
            guard let baseDirectory else { return filePath }
            return baseDirectory.appendingPathComponent(filePath).standardizedFileURL.path
        }

        var clusters: [String: Cluster] = [:]
        for (index, entry) in (file.clusters ?? []).enumerated() {
            guard let cluster = entry.cluster else {
                throw KubeConfigError.invalidYAML(
                    source, "cluster '\(entry.name)' has no 'cluster' map",
                    fieldPath: "clusters[\(index)].cluster")
            }
            // kubectl keeps the first definition of a name within a file as well.
            if clusters[entry.name] != nil { continue }
            clusters[entry.name] = Cluster(
                server: cluster.server ?? "", certificateAuthority: resolve(cluster.certificateAuthority),
                certificateAuthorityData: cluster.certificateAuthorityData,
                insecureSkipTLSVerify: cluster.insecureSkipTLSVerify ?? false, tlsServerName: cluster.tlsServerName)
        }
        var users: [String: User] = [:]
        for entry in file.users ?? [] where users[entry.name] == nil {
            let user = entry.user ?? UserModel()
            users[entry.name] = User(
                token: user.token, tokenFile: resolve(user.tokenFile),
                clientCertificate: resolve(user.clientCertificate), clientCertificateData: user.clientCertificateData,
                clientKey: resolve(user.clientKey), clientKeyData: user.clientKeyData)
        }
        var contexts: [String: Context] = [:]
        for (index, entry) in (file.contexts ?? []).enumerated() where contexts[entry.name] == nil {
            guard let context = entry.context, let cluster = context.cluster else {
                throw KubeConfigError.invalidYAML(
                    source, "context '\(entry.name)' names no cluster",
                    fieldPath: "contexts[\(index)].context.cluster")
            }
            contexts[entry.name] = Context(cluster: cluster, user: context.user, namespace: context.namespace)
        }
        let current = file.currentContext.flatMap { $0.isEmpty ? nil : $0 }
        self.init(clusters: clusters, users: users, contexts: contexts, currentContext: current)
    }

    /// Reads and parses one kubeconfig file.
    public static func load(path: String) throws -> KubeConfig {
        try KubeConfig(yaml: ClientConfiguration.readFile(path), path: path)
    }

    /// Reads several files and merges them with `kubectl` precedence (earlier files win).
    public static func load(paths: [String]) throws -> KubeConfig {
        var merged = KubeConfig()
        for path in paths {
            merged = merged.merging(try load(path: path))
        }
        return merged
    }

    /// The files `kubectl` reads: each non-empty entry of `KUBECONFIG`, or `~/.kube/config`.
    public static func defaultPaths(
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) -> [String] {
        if let value = environment["KUBECONFIG"], !value.isEmpty {
            var seen = Set<String>()
            return value.split(separator: ":").map(String.init).filter { !$0.isEmpty && seen.insert($0).inserted }
        }
        let home =
            environment["HOME"].map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser
        return [home.appendingPathComponent(".kube/config").path]
    }

    /// `self` merged with a lower-precedence config: entries and the current context already set here win.
    public func merging(_ other: KubeConfig) -> KubeConfig {
        var result = self
        result.clusters.merge(other.clusters) { mine, _ in mine }
        result.users.merge(other.users) { mine, _ in mine }
        result.contexts.merge(other.contexts) { mine, _ in mine }
        if result.currentContext == nil { result.currentContext = other.currentContext }
        return result
    }

    /// Builds the client configuration of a context (the current one when `context` is `nil`), reading the
    /// certificate files it references.
    public func configuration(context name: String? = nil) throws -> ClientConfiguration {
        guard let contextName = name ?? currentContext else {
            throw KubeConfigError(code: .noCurrentContext, message: "no context given and current-context is unset")
        }
        guard let context = contexts[contextName] else { throw KubeConfigError.missingContext(contextName) }
        guard let cluster = clusters[context.cluster] else {
            throw KubeConfigError.missingCluster(context.cluster, context: contextName)
        }
        var user = User()
        if let userName = context.user, !userName.isEmpty {
            guard let found = users[userName] else {
                throw KubeConfigError.missingUser(userName, context: contextName)
            }
            user = found
        }
        let serverField = "clusters[\(context.cluster)].cluster.server"
        guard !cluster.server.isEmpty else { throw KubeConfigError.invalidField(serverField, "server is empty") }
        guard let server = URL(string: cluster.server), let scheme = server.scheme, server.host != nil,
            scheme == "https" || scheme == "http"
        else {
            throw KubeConfigError.invalidField(serverField, "'\(cluster.server)' is not an http(s) URL")
        }

        var tls = ClientConfiguration.TLS(
            insecureSkipVerify: cluster.insecureSkipTLSVerify, serverName: cluster.tlsServerName)
        tls.certificateAuthorityPEM = try pem(
            data: cluster.certificateAuthorityData, file: cluster.certificateAuthority,
            field: "clusters[\(context.cluster)].cluster.certificate-authority-data")
        let userField = "users[\(context.user ?? "")].user"
        tls.clientCertificatePEM = try pem(
            data: user.clientCertificateData, file: user.clientCertificate,
            field: "\(userField).client-certificate-data")
        tls.clientKeyPEM = try pem(
            data: user.clientKeyData, file: user.clientKey, field: "\(userField).client-key-data")

        let authentication: ClientConfiguration.Authentication
        if let token = user.token, !token.isEmpty {
            authentication = .bearer(token)
        } else if let tokenFile = user.tokenFile {
            authentication = .tokenFile(tokenFile)
        } else {
            authentication = .none
        }
        let namespace = context.namespace.flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        return ClientConfiguration(server: server, tls: tls, authentication: authentication, namespace: namespace)
    }

    /// Inline base64 data wins over a file, as in kubectl.
    private func pem(data: String?, file: String?, field: String) throws -> String? {
        if let data, !data.isEmpty {
            let compact = data.filter { !$0.isWhitespace }
            guard let bytes = Data(base64Encoded: compact), let text = String(data: bytes, encoding: .utf8) else {
                throw KubeConfigError.invalidField(field, "value is not base64-encoded PEM")
            }
            return text
        }
        if let file {
            return try ClientConfiguration.readFile(file)
        }
        return nil
    }
}

// MARK: - File shape

private struct FileModel: Decodable {
    var clusters: [NamedCluster]?
    var users: [NamedUser]?
    var contexts: [NamedContext]?
    var currentContext: String?

    init() {}

    enum CodingKeys: String, CodingKey {
        case clusters, users, contexts
        case currentContext = "current-context"
    }
}

private struct NamedCluster: Decodable {
    var name: String
    var cluster: ClusterModel?
}

private struct ClusterModel: Decodable {
    var server: String?
    var certificateAuthority: String?
    var certificateAuthorityData: String?
    var insecureSkipTLSVerify: Bool?
    var tlsServerName: String?

    enum CodingKeys: String, CodingKey {
        case server
        case certificateAuthority = "certificate-authority"
        case certificateAuthorityData = "certificate-authority-data"
        case insecureSkipTLSVerify = "insecure-skip-tls-verify"
        case tlsServerName = "tls-server-name"
    }
}

private struct NamedUser: Decodable {
    var name: String
    var user: UserModel?
}

private struct UserModel: Decodable {
    var token: String?
    var tokenFile: String?
    var clientCertificate: String?
    var clientCertificateData: String?
    var clientKey: String?
    var clientKeyData: String?

    init() {}

    enum CodingKeys: String, CodingKey {
        case token, tokenFile
        case clientCertificate = "client-certificate"
        case clientCertificateData = "client-certificate-data"
        case clientKey = "client-key"
        case clientKeyData = "client-key-data"
    }
}

private struct NamedContext: Decodable {
    var name: String
    var context: ContextModel?
}

private struct ContextModel: Decodable {
    var cluster: String?
    var user: String?
    var namespace: String?
}
