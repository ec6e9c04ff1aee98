import Foundation
import KubernetesClient
import Testing

/// A temporary directory removed when the value goes away.
final class TemporaryDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("apus-kc-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: url) }

    @discardableResult
    func write(_ name: String, _ contents: String) throws -> String {
        let file = url.appendingPathComponent(name)
        try FileManager.default.createDirectory(
            at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(contents.utf8).write(to: file)
        return file.path
    }
}

@Suite("KubeConfig")
struct UnitKubeConfigTests {
    static let caPEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"

    static let primary = """
        apiVersion: v1
        kind: Config
        current-context: dev
        clusters:
        - name: dev-cluster
          cluster:
            server: https://10.0.0.1:6443
            certificate-authority-data: \(Data(caPEM.utf8).base64EncodedString())
            tls-server-name: api.dev.internal
        - name: file-ca
          cluster:
            server: https://file.example:443
            certificate-authority: certs/ca.pem
            insecure-skip-tls-verify: true
        users:
        - name: dev-user
          user:
            token: s3cr3t-token
        - name: cert-user
          user:
            client-certificate: certs/client.pem
            client-key: certs/client-key.pem
        contexts:
        - name: dev
          context:
            cluster: dev-cluster
            user: dev-user
            namespace: apus
        - name: files
          context:
            cluster: file-ca
            user: cert-user
        - name: broken
          context:
            cluster: nowhere
            user: dev-user
        """

    @Test func currentContextSelectsClusterUserAndNamespace() throws {
        let config = try KubeConfig(yaml: Self.primary).configuration()
        #expect(config.server.absoluteString == "https://10.0.0.1:6443")
        #expect(config.namespace == "apus")
        #expect(config.authentication == .bearer("s3cr3t-token"))
        #expect(config.tls.certificateAuthorityPEM == Self.caPEM)
        #expect(config.tls.serverName == "api.dev.internal")
        #expect(config.tls.insecureSkipVerify == false)
    }

    @Test func namedContextReadsFilesRelativeToTheKubeconfig() throws {
        let directory = try TemporaryDirectory()
        try directory.write("cfg/certs/ca.pem", Self.caPEM)
        try directory.write("cfg/certs/client.pem", "CLIENT CERT")
        try directory.write("cfg/certs/client-key.pem", "CLIENT KEY")
        let path = try directory.write("cfg/config", Self.primary)
        let config = try KubeConfig.load(path: path).configuration(context: "files")
        #expect(config.tls.certificateAuthorityPEM == Self.caPEM)
        #expect(config.tls.clientCertificatePEM == "CLIENT CERT")
        #expect(config.tls.clientKeyPEM == "CLIENT KEY")
        #expect(config.tls.insecureSkipVerify)
        #expect(config.namespace == "default")
        #expect(config.authentication == .none)
    }

    @Test func missingContextClusterAndFilesAreTypedErrors() throws {
        let kubeconfig = try KubeConfig(yaml: Self.primary)
        #expect(throws: KubeConfigError.missingContext) { try kubeconfig.configuration(context: "prod") }
        #expect(throws: KubeConfigError.missingCluster) { try kubeconfig.configuration(context: "broken") }
        // "files" references certs relative to the working directory when parsed without a path.
        #expect(throws: KubeConfigError.unreadableFile) { try kubeconfig.configuration(context: "files") }
        #expect(throws: KubeConfigError.unreadableFile) { try KubeConfig.load(path: "/nonexistent/apus/config") }
        #expect(throws: KubeConfigError.noCurrentContext) { try KubeConfig(yaml: "clusters: []").configuration() }
    }

    @Test func badYAMLNamesTheField() throws {
        do {
            _ = try KubeConfig(yaml: "clusters:\n- name: a\n  cluster:\n    server: [1, 2]\n")
            Issue.record("expected an error")
        } catch let error as KubeConfigError {
            #expect(error == .invalidYAML)
            #expect(error.fieldPath == "clusters[0].cluster.server")
        }
        #expect(throws: KubeConfigError.invalidYAML) { try KubeConfig(yaml: "clusters: {{{ not yaml") }
    }

    @Test func badBase64AndBadServerAreInvalidFields() throws {
        let yaml = """
            current-context: c
            clusters:
            - name: k
              cluster: {server: "https://a:1", certificate-authority-data: "!!!notbase64"}
            - name: noscheme
              cluster: {server: "10.0.0.1:6443"}
            contexts:
            - {name: c, context: {cluster: k}}
            - {name: d, context: {cluster: noscheme}}
            """
        let kubeconfig = try KubeConfig(yaml: yaml)
        do {
            _ = try kubeconfig.configuration()
            Issue.record("expected an error")
        } catch let error as KubeConfigError {
            #expect(error == .invalidField)
            #expect(error.fieldPath == "clusters[k].cluster.certificate-authority-data")
        }
        #expect(throws: KubeConfigError.invalidField) { try kubeconfig.configuration(context: "d") }
    }

    @Test func kubeconfigPathsMergeFirstWins() throws {
        let directory = try TemporaryDirectory()
        let first = try directory.write(
            "one",
            """
            clusters:
            - name: shared
              cluster: {server: "https://first:6443"}
            contexts:
            - {name: only-first, context: {cluster: shared, namespace: one}}
            """)
        let second = try directory.write(
            "two",
            """
            current-context: from-second
            clusters:
            - name: shared
              cluster: {server: "https://second:6443"}
            - name: extra
              cluster: {server: "https://extra:6443"}
            users:
            - {name: u, user: {token: t2}}
            contexts:
            - {name: from-second, context: {cluster: extra, user: u}}
            - {name: only-first, context: {cluster: extra, namespace: two}}
            """)
        let third = try directory.write("three", "current-context: from-third\n")
        let paths = KubeConfig.defaultPaths(environment: ["KUBECONFIG": "\(first)::\(second):\(third):\(first)"])
        #expect(paths == [first, second, third])

        let merged = try KubeConfig.load(paths: paths)
        #expect(merged.currentContext == "from-second")
        #expect(merged.clusters["shared"]?.server == "https://first:6443")
        #expect(merged.contexts["only-first"]?.namespace == "one")
        let current = try merged.configuration()
        #expect(current.server.absoluteString == "https://extra:6443")
        #expect(current.authentication == .bearer("t2"))
        let shared = try merged.configuration(context: "only-first")
        #expect(shared.server.absoluteString == "https://first:6443")
        #expect(shared.namespace == "one")
    }

    @Test func defaultPathIsHomeKubeConfig() {
        #expect(KubeConfig.defaultPaths(environment: ["HOME": "/home/x"]) == ["/home/x/.kube/config"])
    }

    @Test func descriptionsRedactCredentials() throws {
        let config = try KubeConfig(yaml: Self.primary).configuration()
        var withKey = config
        withKey.tls.clientKeyPEM = "-----BEGIN PRIVATE KEY-----SECRETKEY"
        let texts = [
            "\(config)", "\(withKey)", String(describing: config.authentication),
            "\(try KubeConfig(yaml: Self.primary).users["dev-user"]!)",
        ]
        for text in texts {
            #expect(!text.contains("s3cr3t-token"), "\(text)")
            #expect(!text.contains("SECRETKEY"), "\(text)")
        }
        #expect("\(config)".contains("https://10.0.0.1:6443"))
    }

    @Test func inClusterConfigurationFromServiceAccountFiles() throws {
        let directory = try TemporaryDirectory()
        try directory.write("sa/token", "token-1\n")
        try directory.write("sa/ca.crt", Self.caPEM)
        try directory.write("sa/namespace", "apus-system")
        let config = try ClientConfiguration.inCluster(
            environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"],
            serviceAccountDirectory: directory.url.appendingPathComponent("sa").path)
        #expect(config.server.absoluteString == "https://10.96.0.1:443")
        #expect(config.namespace == "apus-system")
        #expect(config.tls.certificateAuthorityPEM == Self.caPEM)
        #expect(config.authentication == .tokenFile(directory.url.appendingPathComponent("sa/token").path))

        let ipv6 = try ClientConfiguration.inCluster(
            environment: ["KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"],
            serviceAccountDirectory: directory.url.appendingPathComponent("sa").path)
        #expect(ipv6.server.absoluteString == "https://[fd00::1]:443")

        #expect(throws: KubeConfigError.notInCluster) {
            try ClientConfiguration.inCluster(environment: [:], serviceAccountDirectory: directory.url.path)
        }
        #expect(throws: KubeConfigError.unreadableFile) {
            try ClientConfiguration.inCluster(
                environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"],
                serviceAccountDirectory: directory.url.appendingPathComponent("missing").path)
        }
    }
}

@Suite("TokenProvider")
struct UnitTokenProviderTests {
    /// A clock tests move by hand.
    final class ManualClock: @unchecked Sendable {
        private let lock = NSLock()
        private var offset: Duration = .zero
        private let start = ContinuousClock.now

        func advance(_ duration: Duration) { lock.withLock { offset += duration } }
        var now: ContinuousClock.Instant { lock.withLock { start.advanced(by: offset) } }
    }

    @Test func rotatedTokenFileIsReadAgainAfterTheRefreshInterval() throws {
        let directory = try TemporaryDirectory()
        let path = try directory.write("token", "first\n")
        let clock = ManualClock()
        let provider = TokenProvider(.tokenFile(path), refreshInterval: .seconds(60), now: { clock.now })
        #expect(try provider.token() == "first")

        try directory.write("token", "second")
        clock.advance(.seconds(30))
        #expect(try provider.token() == "first", "cached within the interval")
        clock.advance(.seconds(31))
        #expect(try provider.token() == "second", "re-read once older than the interval")
    }

    @Test func invalidateForcesAReadAsAfterA401() throws {
        let directory = try TemporaryDirectory()
        let path = try directory.write("token", "old")
        let provider = TokenProvider(.tokenFile(path), refreshInterval: .seconds(3600))
        #expect(try provider.token() == "old")
        try directory.write("token", "new")
        #expect(try provider.token() == "old")
        #expect(provider.invalidate())
        #expect(try provider.token() == "new")
    }

    @Test func transientReadFailureKeepsThePreviousToken() throws {
        let directory = try TemporaryDirectory()
        let path = try directory.write("token", "kept")
        let clock = ManualClock()
        let provider = TokenProvider(.tokenFile(path), refreshInterval: .seconds(1), now: { clock.now })
        #expect(try provider.token() == "kept")
        try FileManager.default.removeItem(atPath: path)
        clock.advance(.seconds(5))
        #expect(try provider.token() == "kept")

        let missing = TokenProvider(.tokenFile(directory.url.appendingPathComponent("nope").path))
        #expect(throws: KubeConfigError.unreadableFile) { try missing.token() }
    }

    @Test func staticTokensNeedNoFiles() throws {
        #expect(try TokenProvider(.bearer("abc")).token() == "abc")
        #expect(try TokenProvider(.none).token() == nil)
        #expect(TokenProvider(.bearer("abc")).invalidate() == false)
    }
}
