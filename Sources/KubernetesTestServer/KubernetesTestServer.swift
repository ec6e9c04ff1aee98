import ApusCore
import ApusX509
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// An in-process look-alike of kube-apiserver for tests: real HTTP(S) on 127.0.0.1, real watch streams, the
/// error bodies and status codes of the real server, and fault injection.
///
/// ```swift
/// let server = try await KubernetesTestServer.start()
/// defer { Task { try await server.shutdown() } }
/// let kubeconfig = server.kubeconfig()          // CA data, server URL and a bearer token
/// try server.seed(Pod(metadata: ObjectMeta(name: "web-0", namespace: "default")))
/// server.dropAllWatches()                       // informers must re-watch from their last resourceVersion
/// ```
///
/// ## Architecture
///
/// ```
///  connection ──▶ APIChannelHandler ──▶ ServerCore (routing, auth, faults)
///        ▲                                │ one lock
///        │ events hop to the channel loop ▼
///   ChannelWatchSink ◀───────────────── ServerState (objects, revision, event log, watchers)
/// ```
///
/// All objects are stored as `JSONValue`, keyed by group, plural, namespace and name (every served version of a
/// resource shares one storage, as the versions of a CRD do). One revision counter orders every write of every
/// kind; an in-memory event log lets watches resume from any revision not yet compacted. Watch events are pushed
/// to each stream while the state lock is held, so every stream sees events in revision order with no gaps between
/// its replay and its live events.
///
/// ## Known differences from the real API server
///
/// - Mutating admission webhooks are called on creates (see ``MutatingAdmission``): rules, namespaceSelector and
///   objectSelector (matchLabels and matchExpressions), HTTPS verified against `clientConfig.caBundle`,
///   `timeoutSeconds`, `failurePolicy` (Ignore skips a failed call; Fail, the default, answers 500 InternalError
///   `failed calling webhook …`), a denial as 403 `admission webhook "…" denied the request: …`, the JSONPatch
///   applied, warnings as `Warning: 299 - "…"` headers. Not on updates, patches or deletes; no reinvocation,
///   `matchConditions` or `matchPolicy: Equivalent`; `clientConfig.service` needs
///   ``setWebhookServiceAddress(namespace:name:host:port:)``. No validating webhooks, no quota, no LimitRanger,
///   no RBAC: every authenticated user may do everything.
/// - No schema validation or pruning: any JSON object is accepted for any kind; only `metadata.name` is checked
///   (DNS-1123 subdomain) and `apiVersion`/`kind`/`namespace`/`name` must match the URL.
/// - Almost no defaulting: only Namespace `status.phase: Active` plus the `kubernetes.io/metadata.name` label,
///   and Pod `status.phase: Pending`. No service cluster IPs, no pod scheduling, no controllers (deleting a
///   Deployment does not delete its ReplicaSets; ownerReferences are not garbage-collected).
/// - Server-side apply does not track field ownership: the applied configuration is merged into the object
///   (objects merge, lists and scalars replace), fields are never removed by omission, there are no conflicts,
///   `force` is ignored, and `managedFields` is not written. Apply bodies must be JSON (which is valid YAML).
/// - Strategic merge patch is treated as a JSON merge patch (lists replace instead of merging by key, no
///   `$patch` directives).
/// - Status subresources exist only for the built-in kinds that have them and for resources registered with
///   `hasStatusSubresource`; `/scale`, `/log`, `/exec`, `/eviction`, `/binding`, `/finalize` and other
///   subresources are not served. Creating an object drops its status where a status subresource exists (use
///   ``seed(_:_:)`` to store a status directly).
/// - Pods and other objects without finalizers are deleted immediately (no graceful deletion; `gracePeriodSeconds`
///   and `propagationPolicy` are ignored). Deleting a namespace deletes its contents synchronously; it only stays
///   (Terminating) while it has `metadata.finalizers`.
/// - Lists are served from the latest state: `resourceVersion`/`resourceVersionMatch` on a list are ignored.
///   Pages after the first (`continue`) do show the snapshot at the first page's revision, as etcd serves them.
/// - Authorization is a closure (``Options/authorizer``) deciding on user, verb, group, resource, namespace and
///   name; there are no Role/ClusterRole objects, aggregation or impersonation.
/// - Field selectors accept any dotted path (the real server only allows the fields each kind indexes) and compare
///   string forms; a missing field compares as the empty string.
/// - Watches have no server-side default timeout; the legacy `/watch/` paths and `sendInitialEvents` are not
///   supported. A watch from a revision newer than the current one simply waits for that revision.
/// - `dryRun` is rejected with 400 instead of being honoured. No discovery documents (`/api`, `/apis`), no
///   OpenAPI, no protobuf, no HTTP/2, no `Table` output, no `kubectl`-specific endpoints.
/// - TokenReview is answered for the tokens ``mintServiceAccountToken(namespace:serviceAccount:audiences:expiration:)``
///   minted (audiences and expiry checked like the real server) and the server's own bearer tokens (override with
///   ``setCreateHandler(for:_:)``); other review kinds are stored like ordinary objects unless given a handler.
///   Minted tokens are opaque strings, not JWTs, and do not authenticate API requests themselves.
/// - Client certificates authenticate as their CN; the O (groups) of the subject is ignored.
public final class KubernetesTestServer: Sendable {
    public struct Options: Sendable {
        /// Serve HTTPS with a per-server CA (default) or plain HTTP.
        public var tls = true
        /// Accepted bearer tokens and the user each one authenticates as.
        public var bearerTokens: [String: String] = ["apus-test-token": "apus-test-admin"]
        /// How often watches with `allowWatchBookmarks=true` receive a BOOKMARK.
        public var bookmarkInterval: Duration = .seconds(1)
        /// Create a missing namespace on first use instead of answering 404 like the real server.
        public var autoCreateNamespaces = false
        /// Events kept for watch resumption; older ones are compacted away (410 for watches from before them).
        public var eventLogCapacity = 100_000
        /// Event loop threads serving connections.
        public var threads = 1
        /// Decides whether an authenticated user may make a request, like the API server's RBAC authorizer;
        /// a refusal is answered 403 Forbidden. `nil` allows everything (every user is a cluster admin).
        public var authorizer: (@Sendable (AuthorizationAttributes) -> Bool)?

        public init() {}
    }

    private let core: ServerCore
    private let group: MultiThreadedEventLoopGroup
    private let serverChannel: any Channel
    private let connections: ConnectionRegistry
    private let clientCAKey: PrivateKey
    private let clientCA: Certificate

    /// `https://127.0.0.1:<port>` (or `http://` without TLS).
    public let baseURL: String
    /// The port the server listens on (chosen by the OS).
    public let port: Int
    /// The CA that signed the serving certificate (SANs `127.0.0.1`, `::1`, `localhost`). Generated even in plain
    /// HTTP mode, where it is unused.
    public let caCertificatePEM: String
    /// A valid bearer token (the first of ``Options/bearerTokens`` in sorted order).
    public let token: String

    private init(
        core: ServerCore, group: MultiThreadedEventLoopGroup, serverChannel: any Channel,
        connections: ConnectionRegistry, clientCA: Certificate, clientCAKey: PrivateKey, baseURL: String, port: Int,
        caCertificatePEM: String, token: String
    ) {
        self.core = core
        self.group = group
        self.serverChannel = serverChannel
        self.connections = connections
        self.clientCA = clientCA
        self.clientCAKey = clientCAKey
        self.baseURL = baseURL
        self.port = port
        self.caCertificatePEM = caCertificatePEM
        self.token = token
    }

    /// Starts a server on 127.0.0.1 with a random port.
    public static func start(_ options: Options = Options()) async throws -> KubernetesTestServer {
        let caKey = try PrivateKey.generateP256()
        let ca = try CertificateBuilder.certificateAuthority(commonName: "apus-test-server-ca", key: caKey)
            .selfSigned(with: caKey)
        let clientCAKey = try PrivateKey.generateP256()
        let clientCA = try CertificateBuilder.certificateAuthority(commonName: "apus-test-client-ca", key: clientCAKey)
            .selfSigned(with: clientCAKey)
        let sslContext: NIOSSLContext?
        if options.tls {
            let serverKey = try PrivateKey.generateP256()
            var serving = CertificateBuilder(commonName: "kube-apiserver", publicKey: try serverKey.publicKey)
            serving.dnsNames = ["localhost", "kubernetes", "kubernetes.default.svc"]
            serving.ipAddresses = ["127.0.0.1", "::1"]
            serving.extendedKeyUsage = [.serverAuth]
            let servingCertificate = try serving.signed(by: ca, key: caKey)
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: [
                    .certificate(try NIOSSLCertificate(bytes: Array(try servingCertificate.pem.utf8), format: .pem))
                ],
                privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(try serverKey.pemPKCS8.utf8), format: .pem)))
            configuration.certificateVerification = .optionalVerification
            // Clients that never answer close_notify would otherwise hold every close (and shutdown) for 5 s.
            configuration.shutdownTimeout = .milliseconds(200)
            configuration.trustRoots = .certificates([
                try NIOSSLCertificate(bytes: Array(try clientCA.pem.utf8), format: .pem)
            ])
            sslContext = try NIOSSLContext(configuration: configuration)
        } else {
            sslContext = nil
        }
        let core = ServerCore(options: options, clientCA: clientCA)
        let connections = ConnectionRegistry()
        let (seconds, attoseconds) = options.bookmarkInterval.components
        let bookmarkInterval = TimeAmount.nanoseconds(
            max(1_000_000, seconds * 1_000_000_000 + attoseconds / 1_000_000_000))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, options.threads))
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
                    }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        APIChannelHandler(core: core, connections: connections, bookmarkInterval: bookmarkInterval))
                }
            }
        let serverChannel: any Channel
        do {
            serverChannel = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        let port = serverChannel.localAddress?.port ?? 0
        return KubernetesTestServer(
            core: core, group: group, serverChannel: serverChannel, connections: connections, clientCA: clientCA,
            clientCAKey: clientCAKey, baseURL: "\(options.tls ? "https" : "http")://127.0.0.1:\(port)", port: port,
            caCertificatePEM: try ca.pem, token: options.bearerTokens.keys.sorted().first ?? "")
    }

    /// Closes the listener and every connection (watches end abruptly) and stops the event loops.
    public func shutdown() async throws {
        _ = core.state.withLockedValue { $0.removeAllWatches() }
        try? await serverChannel.close()
        for channel in connections.all() { try? await channel.close() }
        try await group.shutdownGracefully()
    }

    // MARK: - Credentials

    /// A client certificate (and its key) for `user`, signed by the server's client CA; the server authenticates
    /// it as `user` (its CN).
    public func clientCertificate(user: String) throws -> (certificatePEM: String, privateKeyPEM: String) {
        let key = try PrivateKey.generateP256()
        var builder = CertificateBuilder(commonName: user, publicKey: try key.publicKey)
        builder.extendedKeyUsage = [.clientAuth]
        let certificate = try builder.signed(by: clientCA, key: clientCAKey)
        return (try certificate.pem, try key.pemPKCS8)
    }

    /// A kubeconfig for this server authenticating with a bearer token (``token`` by default).
    public func kubeconfig(token: String? = nil, namespace: String = "default") -> String {
        kubeconfig(userFields: ["token": token ?? self.token], namespace: namespace)
    }

    /// A kubeconfig authenticating with a fresh client certificate for `user`.
    public func kubeconfig(clientCertificateUser user: String, namespace: String = "default") throws -> String {
        let credentials = try clientCertificate(user: user)
        return kubeconfig(
            userFields: [
                "client-certificate-data": Data(credentials.certificatePEM.utf8).base64EncodedString(),
                "client-key-data": Data(credentials.privateKeyPEM.utf8).base64EncodedString(),
            ], namespace: namespace)
    }

    private func kubeconfig(userFields: [String: String], namespace: String) -> String {
        // JSON string literals are valid YAML double-quoted scalars, so no value needs YAML escaping rules.
        func quoted(_ value: String) -> String { JSONValue.string(value).description }
        var cluster = "    server: \(quoted(baseURL))\n"
        if baseURL.hasPrefix("https") {
            cluster += "    certificate-authority-data: \(quoted(Data(caCertificatePEM.utf8).base64EncodedString()))\n"
        }
        let user = userFields.keys.sorted().map { "    \($0): \(quoted(userFields[$0] ?? ""))\n" }.joined()
        return """
            apiVersion: v1
            kind: Config
            clusters:
            - name: apus-test
              cluster:
            \(cluster)users:
            - name: apus-test-user
              user:
            \(user)contexts:
            - name: apus-test
              context:
                cluster: apus-test
                user: apus-test-user
                namespace: \(quoted(namespace))
            current-context: apus-test

            """
    }

    // MARK: - Resources

    /// Serves another resource (typically a CRD); all versions of one group/plural share storage.
    public func registerResource(_ type: ResourceType, hasStatusSubresource: Bool = false) {
        core.state.withLockedValue {
            $0.registry.register(
                ResourceInfo(type: type, hasStatusSubresource: hasStatusSubresource, isCustomResource: true))
        }
    }

    /// Answers `create` for `type` with `handler` instead of storing the object, as for virtual resources such as
    /// TokenReview or SubjectAccessReview. The handler runs outside the state lock (it may call back into the
    /// server); a thrown `Status` is sent as the error response, any other error as 500.
    public func setCreateHandler(for type: ResourceType, _ handler: @escaping CreateHandler) {
        let info = resourceInfo(type)
        core.state.withLockedValue { $0.createHandlers[info.storageKey] = handler }
    }

    /// Mints a ServiceAccount token the way the TokenRequest API does (a projected token), which TokenReviews
    /// then authenticate as `system:serviceaccount:<namespace>:<serviceAccount>` until `expiration` has passed,
    /// for reviews whose `spec.audiences` overlap `audiences`. Without audiences the token is for the API server
    /// itself (audience `https://kubernetes.default.svc.cluster.local`), like a legacy token; a zero or negative
    /// `expiration` mints an already expired token. The ServiceAccount object need not exist.
    public func mintServiceAccountToken(
        namespace: String, serviceAccount: String, audiences: [String] = [], expiration: Duration = .seconds(3600)
    ) -> String {
        core.serviceAccountTokens.mint(
            namespace: namespace, serviceAccount: serviceAccount, audiences: audiences, expiration: expiration)
    }

    // MARK: - Admission webhooks

    /// Routes webhooks registered with `clientConfig.service` `namespace/name` to `host:port` (a test's local
    /// listener); the serving certificate is still verified for `<name>.<namespace>.svc`, as the real server does.
    public func setWebhookServiceAddress(namespace: String, name: String, host: String = "127.0.0.1", port: Int) {
        core.admission.setServiceAddress(namespace: namespace, name: name, host: host, port: port)
    }

    /// Admission webhook calls attempted since start (answered or failed).
    public var webhookCallCount: Int { core.admission.calls }

    // MARK: - Fault injection

    /// Closes every watch connection without ending its response, as an API server restart does.
    public func dropAllWatches() {
        let sinks = core.state.withLockedValue { $0.removeAllWatches() }
        for sink in sinks { sink.abort() }
    }

    /// Forgets the event history: watches and `continue` tokens from any revision before now get 410 Expired.
    public func compact() {
        core.state.withLockedValue { $0.compact() }
    }

    /// The next `count` authenticated API requests fail with `status` (500 InternalError or 429 TooManyRequests,
    /// also 503/504), with a `Retry-After` header when `retryAfter` (seconds) is given.
    public func failNextRequests(count: Int, status: Int = 500, retryAfter: Int? = nil) {
        core.state.withLockedValue { $0.pendingFailures = (max(0, count), status, retryAfter) }
    }

    /// Delays every following response by `delay` (`.zero` turns it off).
    public func setResponseDelay(_ delay: Duration) {
        core.state.withLockedValue { $0.responseDelay = delay }
    }

    /// Every request seen since start or the last ``clearRequestLog()``, oldest first.
    public var requestLog: [RecordedRequest] { core.state.withLockedValue { $0.requestLog } }

    public func clearRequestLog() { core.state.withLockedValue { $0.requestLog.removeAll() } }

    /// How many requests with `verb` (e.g. "list", "watch") on `resource` (plural) were seen.
    public func requestCount(verb: String, resource: String) -> Int {
        core.state.withLockedValue { $0.requestLog.count { $0.verb == verb && $0.resource == resource } }
    }

    /// Open watch streams.
    public var activeWatchCount: Int { core.state.withLockedValue { $0.watchCount } }

    // MARK: - Direct state access

    /// The latest resourceVersion issued.
    public var currentResourceVersion: String { core.state.withLockedValue { String($0.revision) } }

    /// Stored objects of `type` (all namespaces when `namespace` is nil), sorted by namespace and name.
    public func objects(_ type: ResourceType, namespace: String? = nil) -> [JSONValue] {
        let info = resourceInfo(type)
        return core.state.withLockedValue { $0.objects(info, namespace: namespace) }
    }

    /// Typed variant of ``objects(_:namespace:)``.
    public func objects<R: KubernetesResource>(_ type: R.Type, namespace: String? = nil) throws -> [R] {
        try objects(R.resourceType, namespace: namespace).map { try $0.decode(as: R.self) }
    }

    /// One stored object, or nil.
    public func object(_ type: ResourceType, namespace: String? = nil, name: String) -> JSONValue? {
        let info = resourceInfo(type)
        return core.state.withLockedValue { $0.object(info, namespace: namespace, name: name) }
    }

    /// Stores `object` as is, bypassing the API rules that would get in a test's way: creates or replaces without
    /// resourceVersion checks, keeps `status`, and creates its namespace (default "default") if missing. Watchers
    /// see the usual ADDED/MODIFIED event. Throws the `Status` the API would answer for an invalid name.
    @discardableResult
    public func seed(_ type: ResourceType, _ object: JSONValue) throws -> JSONValue {
        let info = resourceInfo(type)
        do {
            return try core.state.withLockedValue { try $0.seed(info, object) }
        } catch let error as APIError {
            throw error.status
        }
    }

    /// Typed variant of ``seed(_:_:)``, returning the stored object (with uid, resourceVersion, …).
    @discardableResult
    public func seed<R: KubernetesResource>(_ resource: R) throws -> R {
        try seed(R.resourceType, try JSONValue(encoding: resource)).decode(as: R.self)
    }

    /// The registered handling for `type`, registering it as a custom resource when unknown.
    private func resourceInfo(_ type: ResourceType) -> ResourceInfo {
        core.state.withLockedValue { state in
            if let info = state.registry.lookup(group: type.group, version: type.version, plural: type.plural) {
                return info
            }
            let info = ResourceInfo(type: type, hasStatusSubresource: false, isCustomResource: true)
            state.registry.register(info)
            return info
        }
    }
}
