import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// The pod's outbound proxy, from `APUS_OUTBOUND_PROXY` (`host:port`) or else `http_proxy`/`HTTP_PROXY`
/// (`http://host:port`, as curl and most HTTP libraries read it).
struct OutboundProxy: Sendable, Equatable, CustomStringConvertible {
    var host: String
    var port: Int

    /// nil when none of the variables is set (the demo then calls services directly).
    static func fromEnvironment(_ environment: [String: String]) throws(DemoConfigurationError) -> OutboundProxy? {
        for name in ["APUS_OUTBOUND_PROXY", "http_proxy", "HTTP_PROXY"] {
            if let value = environment[name], !value.isEmpty {
                return try OutboundProxy(parsing: value, setting: name)
            }
        }
        return nil
    }

    /// `host:port`, `[v6]:port` or `http://host:port[/]`.
    init(parsing text: String, setting: String) throws(DemoConfigurationError) {
        var rest = Substring(text.trimmingCharacters(in: .whitespaces))
        if rest.hasPrefix("http://") { rest = rest.dropFirst("http://".count) }
        while rest.hasSuffix("/") { rest = rest.dropLast() }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
            (1...65535).contains(port)
        else {
            throw DemoConfigurationError(setting: setting, value: text, reason: "is not host:port of an HTTP proxy")
        }
        var host = rest[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty else {
            throw DemoConfigurationError(setting: setting, value: text, reason: "has no host")
        }
        self.host = String(host)
        self.port = port
    }

    init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// A failed call to another service; the description is what a 502 from the caller tells its own client.
struct MeshCallError: Error, CustomStringConvertible {
    var method: String
    var url: String
    var reason: String

    var description: String { "\(method) \(url): \(reason)" }

    init(method: String, url: String, reason: String) {
        self.method = method
        self.url = url
        self.reason = reason
    }

    /// A response that is not 2xx/3xx, with the proxy's error header and the callee's reason.
    init(unsuccessful response: MeshResponse, method: String, url: String) {
        // A demo service's error body is {"error": reason}: pass the reason on rather than nested JSON.
        let reason = (try? JSONDecoder().decode([String: String].self, from: Data(response.body.utf8)))?["error"]
        let detail = (reason ?? response.body).trimmingCharacters(in: .whitespacesAndNewlines).prefix(300)
        let proxyError = response.headers.first(name: "l5d-proxy-error").map { " (l5d-proxy-error: \($0))" } ?? ""
        self.init(
            method: method, url: url,
            reason: "answered \(response.status)\(proxyError)\(detail.isEmpty ? "" : ": \(detail)")")
    }
}

/// A response from another service, read whole (the demo's bodies are small).
struct MeshResponse: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: String

    var isSuccess: Bool { (200..<400).contains(status) }
}

/// How the demo services call each other: through the pod's outbound proxy when there is one, directly otherwise.
///
/// Through the proxy the request goes to the proxy's address with `Host` set to the service the URL names, which
/// is exactly what the proxy sees in a cluster when iptables redirects the app's connection to `books:7002`. (AHC's
/// own HTTP-proxy support would send `CONNECT`, a TCP tunnel that hides the requests from the mesh.)
final class MeshClient: Sendable {
    let proxy: OutboundProxy?
    private let client: HTTPClient
    private let timeout: TimeAmount

    static let maximumResponseBytes = 4 << 20

    init(proxy: OutboundProxy?, timeout: Duration = .seconds(10)) {
        self.proxy = proxy
        self.timeout = .nanoseconds(Int64(timeout / .nanoseconds(1)))
        var configuration = HTTPClient.Configuration(
            timeout: .init(connect: .seconds(2)), decompression: .disabled)
        configuration.connectionPool.idleTimeout = .seconds(30)
        configuration.httpVersion = .http1Only
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    /// Sends one request and reads the whole response.
    /// - Throws: ``MeshCallError`` for a URL that is not `http://host[:port]/…`, or when no response arrives.
    func call(
        _ method: HTTPMethod = .GET, _ url: String, body: String? = nil, headers: HTTPHeaders = [:]
    ) async throws(MeshCallError) -> MeshResponse {
        guard let parsed = URLComponents(string: url), parsed.scheme == "http", let host = parsed.host,
            !host.isEmpty
        else {
            throw MeshCallError(method: method.rawValue, url: url, reason: "not an http://host[:port]/path URL")
        }
        let authority = parsed.port.map { "\(Self.bracketed(host)):\($0)" } ?? Self.bracketed(host)
        var target = parsed.percentEncodedPath.isEmpty ? "/" : parsed.percentEncodedPath
        if let query = parsed.percentEncodedQuery { target += "?" + query }

        let requestURL = proxy.map { "http://\($0)\(target)" } ?? url
        var request = HTTPClientRequest(url: requestURL)
        request.method = method
        request.headers = headers
        request.headers.replaceOrAdd(name: "host", value: authority)
        if let body {
            request.body = .bytes(ByteBuffer(string: body))
            if !request.headers.contains(name: "content-type") {
                request.headers.add(name: "content-type", value: "application/json")
            }
        }
        do {
            let response = try await client.execute(request, timeout: timeout)
            let bytes = try await response.body.collect(upTo: Self.maximumResponseBytes)
            return MeshResponse(
                status: Int(response.status.code), headers: response.headers,
                body: String(buffer: bytes))
        } catch {
            let via = proxy.map { " (via the outbound proxy \($0))" } ?? ""
            throw MeshCallError(method: method.rawValue, url: url, reason: "\(error)\(via)")
        }
    }

    /// Like ``call(_:_:body:headers:)``, but a non-2xx/3xx status is an error too, naming the status and the body.
    func expectSuccess(_ method: HTTPMethod = .GET, _ url: String, body: String? = nil) async throws(MeshCallError)
        -> MeshResponse
    {
        let response = try await call(method, url, body: body)
        guard response.isSuccess else {
            throw MeshCallError(unsuccessful: response, method: method.rawValue, url: url)
        }
        return response
    }

    /// ``expectSuccess(_:_:body:)`` as a value, for `async let` (which cannot carry a typed error).
    func result(_ method: HTTPMethod, _ url: String) async -> Result<MeshResponse, MeshCallError> {
        do {
            return .success(try await expectSuccess(method, url))
        } catch {
            return .failure(error)
        }
    }

    func shutdown() async {
        try? await client.shutdown()
    }

    private static func bracketed(_ host: String) -> String {
        host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
    }
}
