import ApusCore
import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL

/// A typed client for the Kubernetes REST API over one AsyncHTTPClient connection pool.
///
/// ```
///            ┌──────────────────── KubernetesClient ─────────────────────┐
///  typed  ── │ get/list/create/update/updateStatus/patch/delete/watch<R>  │
///  untyped ─ │ same calls on ResourceType + JSONValue (CRDs)              │
///            │        │ ResourcePath + query ─► HTTPClient (TLS, token) │
///            └────────┴──────────────────────────────────────────────────┘
///                     ▼                              ▼
///             Status → KubernetesError     WatchStream (line-by-line decode)
///                                                    ▼
///                          Watcher ─► StoreWriter/Store ─► Informer ─► WorkQueue ─► Controller
/// ```
///
/// Namespaces: for a namespaced type, single-object calls use the `namespace` argument or, when it is `nil`,
/// the configuration's namespace; `list` and `watch` with a `nil` namespace cover all namespaces.
/// Cluster-scoped types ignore the namespace.
///
/// ```swift
/// let client = try KubernetesClient(configuration: try .load())
/// defer { Task { try await client.shutdown() } }
/// let cm = try await client.create(ConfigMap(metadata: .init(name: "settings"), data: ["a": "1"]),
///                                  namespace: "apus")
/// ```
///
/// Call ``shutdown()`` exactly once when done; the underlying HTTP client requires it.
public final class KubernetesClient: Sendable {
    public let configuration: ClientConfiguration
    public let logger: Logger
    let httpClient: HTTPClient
    let tokens: TokenProvider
    /// The base URL requests are sent to: the server URL, with the host replaced by `tls.serverName` when set
    /// (the real host is then reached through AsyncHTTPClient's DNS override so certificate checks and SNI
    /// use the configured name).
    let requestBase: URL

    /// Bodies larger than this are refused rather than buffered (lists should be paginated well below it).
    static let maximumBodySize = 512 * 1024 * 1024

    /// - Throws: ``KubeConfigError`` `.invalidField` when a certificate or key in the TLS settings is not
    ///   valid PEM.
    public init(configuration: ClientConfiguration, logger: Logger = Logger(label: "apus.kubernetes-client")) throws {
        self.configuration = configuration
        self.logger = logger
        self.tokens = TokenProvider(configuration.authentication, refreshInterval: configuration.tokenRefreshInterval)

        var tls = TLSConfiguration.makeClientConfiguration()
        // Closing a connection (a cancelled watch, or shutdown) waits at most this long for the server's
        // close_notify; the default 5 s would stall every shutdown behind a peer that never answers one.
        tls.shutdownTimeout = .seconds(1)
        if let ca = configuration.tls.certificateAuthorityPEM {
            do {
                let certificates = try NIOSSLCertificate.fromPEMBytes(Array(ca.utf8))
                guard !certificates.isEmpty else {
                    throw KubeConfigError.invalidField("tls.certificateAuthorityPEM", "contains no certificate")
                }
                tls.trustRoots = .certificates(certificates)
            } catch let error as KubeConfigError {
                throw error
            } catch {
                throw KubeConfigError.invalidField("tls.certificateAuthorityPEM", "not a PEM certificate: \(error)")
            }
        }
        if configuration.tls.insecureSkipVerify {
            tls.certificateVerification = .none
        }
        if let certificatePEM = configuration.tls.clientCertificatePEM, let keyPEM = configuration.tls.clientKeyPEM {
            do {
                tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(Array(certificatePEM.utf8))
                    .map { .certificate($0) }
            } catch {
                throw KubeConfigError.invalidField("tls.clientCertificatePEM", "not a PEM certificate: \(error)")
            }
            do {
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem))
            } catch {
                // The key itself is never echoed.
                throw KubeConfigError.invalidField("tls.clientKeyPEM", "not a PEM private key")
            }
        }

        var httpConfiguration = HTTPClient.Configuration(
            tlsConfiguration: tls, redirectConfiguration: .disallow,
            timeout: .init(connect: .seconds(10), read: nil), decompression: .disabled)
        var base = configuration.server
        if let serverName = configuration.tls.serverName, !serverName.isEmpty,
            let realHost = configuration.server.host, realHost != serverName,
            var components = URLComponents(url: configuration.server, resolvingAgainstBaseURL: false)
        {
            components.host = serverName
            if let rewritten = components.url {
                base = rewritten
                httpConfiguration.dnsOverride = [serverName: realHost]
            }
        }
        self.requestBase = base
        self.httpClient = HTTPClient(
            eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: httpConfiguration,
            backgroundActivityLogger: logger)
    }

    /// Closes all connections. Ongoing watches end with a transport error.
    public func shutdown() async throws {
        try await httpClient.shutdown()
    }

    // MARK: - Request plumbing

    struct Body {
        var data: Data
        var contentType: String
    }

    func namespaceForObject(_ resource: ResourceType, _ explicit: String?) -> String? {
        guard resource.namespaced else { return nil }
        return explicit.flatMap { $0.isEmpty ? nil : $0 } ?? configuration.namespace
    }

    /// Sends one request and returns the response head and body stream; non-2xx responses are turned into
    /// ``KubernetesError`` here. A 401 with a file-based token re-reads the token and retries once.
    func send(
        _ method: HTTPMethod, _ path: ResourcePath, query: [URLQueryItem] = [], body: Body? = nil,
        deadline: NIODeadline? = nil
    ) async throws -> HTTPClientResponse {
        let url = path.url(base: requestBase, query: query)
        var attempt = 0
        while true {
            attempt += 1
            var request = HTTPClientRequest(url: url)
            request.method = method
            request.headers.add(name: "Accept", value: "application/json")
            request.headers.add(name: "User-Agent", value: configuration.userAgent)
            let token: String?
            do {
                token = try tokens.token()
            } catch {
                throw KubernetesError(code: .unauthorized, message: "cannot read the bearer token: \(error)")
            }
            if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
            if let body {
                request.headers.add(name: "Content-Type", value: body.contentType)
                request.body = .bytes(ByteBuffer(data: body.data))
            }
            let requestDeadline = deadline ?? .now() + TimeAmount(configuration.requestTimeout)
            logger.trace("request", metadata: ["method": "\(method.rawValue)", "path": "\(path.path)"])
            let response: HTTPClientResponse
            do {
                response = try await httpClient.execute(request, deadline: requestDeadline, logger: logger)
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                throw KubernetesError.transport(error)
            }
            if (200..<300).contains(response.status.code) { return response }
            let bodyBytes = (try? await response.body.collect(upTo: 1024 * 1024)) ?? ByteBuffer()
            let error = KubernetesError.fromResponse(
                httpStatus: Int(response.status.code), body: Data(buffer: bodyBytes),
                retryAfterHeader: response.headers.first(name: "Retry-After"))
            if error.code == .unauthorized, attempt == 1, tokens.invalidate() {
                logger.debug("401 from the API server; re-reading the token file and retrying once")
                continue
            }
            throw error
        }
    }

    func perform(
        _ method: HTTPMethod, _ path: ResourcePath, query: [URLQueryItem] = [], body: Body? = nil
    ) async throws -> ByteBuffer {
        let deadline = NIODeadline.now() + TimeAmount(configuration.requestTimeout)
        let response = try await send(method, path, query: query, body: body, deadline: deadline)
        do {
            return try await response.body.collect(upTo: Self.maximumBodySize)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw KubernetesError.transport(error)
        }
    }

    func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer, context: @autoclosure () -> String) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: buffer)
        } catch {
            throw KubernetesError.decoding(error, context: context())
        }
    }

    func encode(_ value: some Encodable) throws -> Data {
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.withoutEscapingSlashes]
            return try encoder.encode(value)
        } catch {
            throw KubernetesError(code: .badRequest, message: "cannot encode the request body: \(error)")
        }
    }

    func objectName(_ metadata: ObjectMeta, kind: String) throws -> String {
        guard let name = metadata.name, !name.isEmpty else {
            throw KubernetesError(code: .badRequest, message: "\(kind) has no metadata.name")
        }
        return name
    }

    // MARK: - Generic core shared by typed and untyped calls

    func getObject<T: Decodable>(
        _ resource: ResourceType, _ type: T.Type, name: String, namespace: String?, subresource: String? = nil
    ) async throws -> T {
        let path = ResourcePath(
            resource, namespace: namespaceForObject(resource, namespace), name: name, subresource: subresource)
        let buffer = try await perform(.GET, path)
        return try decode(T.self, from: buffer, context: "\(resource.kind) \(path.path)")
    }

    func listObjects<T: Decodable>(
        _ resource: ResourceType, _ type: T.Type, namespace: String?, options: ListOptions,
        onDecodingError: (@Sendable (KubernetesError) -> Void)?
    ) async throws -> (metadata: ListMeta, items: [T]) {
        let path = ResourcePath(resource, namespace: resource.namespaced ? namespace : nil)
        let buffer = try await perform(.GET, path, query: options.queryItems)
        let context = "\(resource.kind)List \(path.path)"
        if let onDecodingError {
            let list = try decode(LenientList<T>.self, from: buffer, context: context)
            for failure in list.failures { onDecodingError(failure) }
            return (list.metadata, list.items)
        }
        let list = try decode(StrictList<T>.self, from: buffer, context: context)
        return (list.metadata ?? ListMeta(), list.items ?? [])
    }

    func writeObject<T: Decodable>(
        _ method: HTTPMethod, _ resource: ResourceType, _ type: T.Type, path: ResourcePath, body: Body,
        query: [URLQueryItem] = []
    ) async throws -> T {
        let buffer = try await perform(method, path, query: query, body: body)
        return try decode(T.self, from: buffer, context: "\(resource.kind) \(path.path)")
    }

    func deleteObject(_ resource: ResourceType, name: String, namespace: String?, options: DeleteOptions)
        async throws
    {
        let path = ResourcePath(resource, namespace: namespaceForObject(resource, namespace), name: name)
        let body = options.isEmpty ? nil : Body(data: try encode(options), contentType: "application/json")
        _ = try await perform(.DELETE, path, body: body)
    }

    func watchObjects<T: Decodable & Sendable>(
        _ resource: ResourceType, _ type: T.Type, namespace: String?, options: ListOptions,
        onDecodingError: (@Sendable (KubernetesError) -> Void)?
    ) async throws -> WatchStream<T> {
        let path = ResourcePath(resource, namespace: resource.namespaced ? namespace : nil)
        var query = [
            URLQueryItem(name: "watch", value: "true"), URLQueryItem(name: "allowWatchBookmarks", value: "true"),
        ]
        var options = options
        options.limit = nil
        options.continue = nil
        query += options.queryItems
        // The server ends the stream after timeoutSeconds; the client deadline only guards a silent peer.
        let deadline: NIODeadline =
            options.timeoutSeconds.map { .now() + .seconds(Int64($0) + 60) } ?? .distantFuture
        let response = try await send(.GET, path, query: query, deadline: deadline)
        let logger = self.logger
        let handler =
            onDecodingError ?? { error in
                logger.warning("skipping undecodable watch event", metadata: ["error": "\(error)"])
            }
        return WatchStream(body: response.body, onDecodingError: handler)
    }
}

/// A list decoded all-or-nothing: one bad item fails the call with its path (`items[3].metadata.labels`).
struct StrictList<T: Decodable>: Decodable {
    var metadata: ListMeta?
    var items: [T]?
}

/// A list whose undecodable items are skipped and reported, so one malformed object cannot stop a relist.
struct LenientList<T: Decodable>: Decodable {
    var metadata: ListMeta
    var items: [T] = []
    var failures: [KubernetesError] = []

    enum CodingKeys: String, CodingKey { case metadata, items }

    /// Consumes one array element without failing, naming the object when its metadata is readable.
    private struct Skipped: Decodable {
        var key: String?
        enum Keys: String, CodingKey { case metadata, namespace, name }
        init(from decoder: any Decoder) throws {
            let container = try? decoder.container(keyedBy: Keys.self)
            let metadata = try? container?.nestedContainer(keyedBy: Keys.self, forKey: .metadata)
            if let name = try? metadata?.decodeIfPresent(String.self, forKey: .name) {
                let namespace = try? metadata?.decodeIfPresent(String.self, forKey: .namespace)
                key = ObjectKey(namespace: namespace ?? nil, name: name).description
            }
        }
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        metadata = try container.decodeIfPresent(ListMeta.self, forKey: .metadata) ?? ListMeta()
        guard container.contains(.items), try !container.decodeNil(forKey: .items) else { return }
        var array = try container.nestedUnkeyedContainer(forKey: .items)
        while !array.isAtEnd {
            let index = array.currentIndex
            do {
                items.append(try array.decode(T.self))
            } catch {
                let skipped = try array.decode(Skipped.self)
                let name = skipped.key.map { " \($0)" } ?? ""
                failures.append(KubernetesError.decoding(error, context: "list item \(index)\(name)"))
            }
        }
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
