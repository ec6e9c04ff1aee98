import ApusCore
import ApusIdentity
import Foundation
import KubernetesClient
import Logging

/// Where the identity service's trust anchors and issuer come from. A source runs for the life of the service
/// and offers every version it sees to the ``IdentityIssuer``, which validates it and switches atomically.
public protocol IssuerSource: Sendable {
    /// Feeds `issuer` until the calling task is cancelled.
    func run(issuer: IdentityIssuer) async
}

/// Trust anchors and issuer from the cluster, as Linkerd keeps them:
/// - Secret `apus-identity-issuer` in the control namespace, either `kubernetes.io/tls` (`tls.crt`, `tls.key`,
///   optional `ca.crt`, as cert-manager writes it) or any other type with `crt.pem` / `key.pem`;
/// - ConfigMap `apus-identity-trust-roots`, key `ca-bundle.crt` (one or more PEM roots). When it is missing, the
///   `ca.crt` of a `kubernetes.io/tls` Secret serves as the anchors.
///
/// Each object is watched by its own ``Informer`` pinned with `fieldSelector=metadata.name=<name>`: RBAC grants
/// list/watch on these two names only, and the API server authorizes a list or watch by name only through that
/// selector. Every change is validated; a valid one replaces the issuer in use (Event `IssuerUpdated` on the
/// Secret), an invalid one is refused and the old issuer stays (Event `IssuerValidationFailed`, Warning). A
/// deleted Secret or ConfigMap does not unload an issuer already in use.
public struct KubernetesIssuerSource: IssuerSource {
    public static let secretName = "apus-identity-issuer"
    public static let trustRootsName = "apus-identity-trust-roots"
    public static let trustRootsKey = "ca-bundle.crt"

    public let client: KubernetesClient
    public let namespace: String
    private let events: EventRecorder?
    private let logger: Logger

    public init(
        client: KubernetesClient, namespace: String = "apus", events: EventRecorder? = nil,
        logger: Logger = Logger(label: "apus.identity.issuer-source")
    ) {
        self.client = client
        self.namespace = namespace
        self.events = events
        self.logger = logger
    }

    public func run(issuer: IdentityIssuer) async {
        let secrets = Informer(
            client: client, Secret.self, namespace: namespace,
            configuration: WatcherConfiguration(fieldSelector: "metadata.name=\(Self.secretName)"))
        let configMaps = Informer(
            client: client, ConfigMap.self, namespace: namespace,
            configuration: WatcherConfiguration(fieldSelector: "metadata.name=\(Self.trustRootsName)"))
        // Only "something changed" matters: the current objects are read from the caches, so a burst of events
        // collapses into one validation.
        let (changes, changed) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        do {
            try secrets.addHandler { _ in changed.yield() }
            try configMaps.addHandler { _ in changed.yield() }
        } catch {
            // Unreachable: the informers were created above and have not run.
            logger.critical("could not watch the issuer", metadata: ["error": "\(error)"])
            return
        }
        issuer.markNotReady(
            "waiting for Secret \(namespace)/\(Self.secretName) and ConfigMap \(namespace)/\(Self.trustRootsName)")
        await withDiscardingTaskGroup { group in
            group.addTask { await secrets.run() }
            group.addTask { await configMaps.run() }
            group.addTask {
                await secrets.waitUntilSynced()
                await configMaps.waitUntilSynced()
                changed.yield()
            }
            for await _ in changes {
                guard secrets.hasSynced, configMaps.hasSynced else { continue }
                let secret = secrets.store.get(ObjectKey(namespace: namespace, name: Self.secretName))
                let trustRoots = configMaps.store.get(ObjectKey(namespace: namespace, name: Self.trustRootsName))
                await reconcile(secret: secret, trustRoots: trustRoots, issuer: issuer)
            }
            group.cancelAll()
        }
    }

    /// The PEM texts of the Secret and ConfigMap, or why they are incomplete.
    static func credentials(
        secret: Secret, trustRoots: ConfigMap?
    ) -> Result<(anchors: String, certificate: String, key: String), IdentityError> {
        let objectName = "Secret \(secret.metadata.namespace ?? "")/\(secret.metadata.name ?? "")"
        let data = secret.data ?? [:]
        let isTLS = secret.type == "kubernetes.io/tls"
        let (certificateKey, privateKeyKey) = isTLS ? ("tls.crt", "tls.key") : ("crt.pem", "key.pem")
        func text(_ key: String) -> String? {
            data[key].map { String(decoding: $0, as: UTF8.self) }.flatMap { $0.isEmpty ? nil : $0 }
        }
        let kind = isTLS ? "type kubernetes.io/tls" : "type \(secret.type ?? "Opaque")"
        guard let certificate = text(certificateKey) else {
            return .failure(IdentityError(.invalidIssuer, "\(objectName) (\(kind)) has no \(certificateKey)"))
        }
        guard let key = text(privateKeyKey) else {
            return .failure(IdentityError(.invalidIssuer, "\(objectName) (\(kind)) has no \(privateKeyKey)"))
        }
        if let anchors = trustRoots?.data?[trustRootsKey], !anchors.isEmpty {
            return .success((anchors, certificate, key))
        }
        if isTLS, let anchors = text("ca.crt") {
            return .success((anchors, certificate, key))
        }
        let configMap = "ConfigMap \(secret.metadata.namespace ?? "")/\(trustRootsName)"
        return .failure(
            IdentityError(
                .invalidIssuer,
                trustRoots == nil
                    ? "\(configMap) does not exist and \(objectName) has no ca.crt: there are no trust anchors"
                    : "\(configMap) has no \(trustRootsKey) and \(objectName) has no ca.crt: there are no trust anchors"
            ))
    }

    private func reconcile(secret: Secret?, trustRoots: ConfigMap?, issuer: IdentityIssuer) async {
        guard let secret else {
            if issuer.isReady {
                logger.warning(
                    "the issuer Secret was deleted; the loaded issuer stays in use",
                    metadata: ["secret": "\(namespace)/\(Self.secretName)"])
            } else {
                issuer.markNotReady("Secret \(namespace)/\(Self.secretName) does not exist")
            }
            return
        }
        let outcome: IdentityIssuer.LoadOutcome
        switch Self.credentials(secret: secret, trustRoots: trustRoots) {
        case .success(let texts):
            outcome = issuer.load(
                anchorsPEM: texts.anchors, issuerCertificatePEM: texts.certificate, issuerKeyPEM: texts.key)
        case .failure(let error):
            if !issuer.isReady { issuer.markNotReady(error.message) }
            outcome = .rejected(error, repeated: false)
        }
        switch outcome {
        case .updated(let credentials):
            await events?.record(
                object: secret, type: .normal, reason: "IssuerUpdated",
                message: "Updated identity issuer \(credentials.issuer.subjectCommonName ?? ""), valid until "
                    + "\(credentials.issuerExpiry.formatted(.iso8601))")
        case .unchanged:
            break
        case .rejected(let error, let repeated):
            guard !repeated else { break }
            let keeping = issuer.isReady ? "; keeping the current issuer" : ""
            logger.error(
                "invalid identity issuer", metadata: ["secret": "\(namespace)/\(Self.secretName)", "error": "\(error)"])
            await events?.record(
                object: secret, type: .warning, reason: "IssuerValidationFailed",
                message: "Invalid issuer credentials: \(error.message)\(keeping)")
        }
    }
}

/// Trust anchors and issuer from PEM files (local mode, or a Secret mounted as a volume), polled every
/// `pollInterval`: when the content changes it is validated and swapped like the Secret. Reading three small
/// files per poll is cheaper and more robust than file-system notifications, which miss the symlink swaps the
/// kubelet uses to update mounted Secrets. A half-written update (new certificate, old key) is refused as a key
/// mismatch and picked up on the next poll once complete.
public struct FileIssuerSource: IssuerSource {
    public var anchorsPath: String
    public var issuerCertificatePath: String
    public var issuerKeyPath: String
    public var pollInterval: Duration
    private let logger: Logger

    public init(
        anchorsPath: String, issuerCertificatePath: String, issuerKeyPath: String,
        pollInterval: Duration = .seconds(10), logger: Logger = Logger(label: "apus.identity.issuer-source")
    ) {
        self.anchorsPath = anchorsPath
        self.issuerCertificatePath = issuerCertificatePath
        self.issuerKeyPath = issuerKeyPath
        self.pollInterval = pollInterval
        self.logger = logger
    }

    /// The conventional file names in one directory: `ca-bundle.crt`, `issuer.crt`, `issuer.key`.
    public init(directory: String, pollInterval: Duration = .seconds(10)) {
        let base = URL(fileURLWithPath: directory)
        self.init(
            anchorsPath: base.appendingPathComponent("ca-bundle.crt").path,
            issuerCertificatePath: base.appendingPathComponent("issuer.crt").path,
            issuerKeyPath: base.appendingPathComponent("issuer.key").path, pollInterval: pollInterval)
    }

    public func run(issuer: IdentityIssuer) async {
        while !Task.isCancelled {
            poll(issuer: issuer)
            do { try await Task.sleep(for: pollInterval) } catch { return }
        }
    }

    /// Reads the files once and offers their content.
    @discardableResult
    public func poll(issuer: IdentityIssuer) -> IdentityIssuer.LoadOutcome? {
        var texts: [String] = []
        for path in [anchorsPath, issuerCertificatePath, issuerKeyPath] {
            guard let data = FileManager.default.contents(atPath: path) else {
                issuer.markNotReady("cannot read \(path)")
                return nil
            }
            texts.append(String(decoding: data, as: UTF8.self))
        }
        let outcome = issuer.load(anchorsPEM: texts[0], issuerCertificatePEM: texts[1], issuerKeyPEM: texts[2])
        if case .updated = outcome {
            logger.info("identity issuer loaded from files", metadata: ["certificate": "\(issuerCertificatePath)"])
        }
        return outcome
    }
}
