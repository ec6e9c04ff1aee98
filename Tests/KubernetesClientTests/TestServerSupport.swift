import ApusCore
import AsyncHTTPClient
import Foundation
import KubernetesTestServer
import NIOCore
import NIOHTTP1
import NIOSSL

/// Raw HTTP access to a ``KubernetesTestServer`` for the server's own tests: no Kubernetes client in between, so
/// these tests pin down the wire behaviour the client is written against.
struct TestServerAPI {
    struct Response {
        var status: Int
        var headers: HTTPHeaders
        var json: JSONValue

        var reason: String? { json["reason"]?.stringValue }
        var resourceVersion: String? { json["metadata"]?["resourceVersion"]?.stringValue }
    }

    let server: KubernetesTestServer
    let client: HTTPClient
    /// Sent as a bearer token; `nil` sends no Authorization header.
    var token: String?

    /// Starts a server and a client trusting its CA, runs `body`, then shuts both down (also when `body` throws).
    static func withServer(
        _ options: KubernetesTestServer.Options = KubernetesTestServer.Options(),
        clientCertificateUser: String? = nil,
        _ body: (TestServerAPI) async throws -> Void
    ) async throws {
        let server = try await KubernetesTestServer.start(options)
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates([try NIOSSLCertificate(bytes: Array(server.caCertificatePEM.utf8), format: .pem)]
        )
        if let user = clientCertificateUser {
            let credentials = try server.clientCertificate(user: user)
            tls.certificateChain = [
                .certificate(try NIOSSLCertificate(bytes: Array(credentials.certificatePEM.utf8), format: .pem))
            ]
            tls.privateKey = .privateKey(
                try NIOSSLPrivateKey(bytes: Array(credentials.privateKeyPEM.utf8), format: .pem))
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.httpVersion = .http1Only
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let api = TestServerAPI(
            server: server, client: client, token: clientCertificateUser == nil ? server.token : nil)
        // The server goes first: closing its connections ends open watch requests, so the client shuts down at once.
        do {
            try await body(api)
        } catch {
            try? await server.shutdown()
            try? await client.shutdown()
            throw error
        }
        try await server.shutdown()
        try await client.shutdown()
    }

    private func makeRequest(
        _ method: HTTPMethod, _ path: String, body: JSONValue?, contentType: String
    ) throws -> HTTPClientRequest {
        var request = HTTPClientRequest(url: server.baseURL + path)
        request.method = method
        if let token { request.headers.add(name: "authorization", value: "Bearer \(token)") }
        request.headers.add(name: "accept", value: "application/json")
        if let body {
            request.headers.add(name: "content-type", value: contentType)
            request.body = .bytes(ByteBuffer(data: try body.jsonData()))
        }
        return request
    }

    /// Sends one request and decodes the JSON answer (`.null` for an empty or non-JSON body).
    @discardableResult
    func send(
        _ method: HTTPMethod, _ path: String, body: JSONValue? = nil, contentType: String = "application/json"
    ) async throws -> Response {
        let response = try await client.execute(
            try makeRequest(method, path, body: body, contentType: contentType), timeout: .seconds(10))
        let bytes = try await response.body.collect(upTo: 64 << 20)
        let json = (try? JSONValue(json: Data(buffer: bytes))) ?? .null
        return Response(status: Int(response.status.code), headers: response.headers, json: json)
    }

    /// Sends raw bytes (for malformed-body tests).
    func sendRaw(_ method: HTTPMethod, _ path: String, bytes: String, contentType: String) async throws -> Response {
        var request = try makeRequest(method, path, body: nil, contentType: contentType)
        request.headers.add(name: "content-type", value: contentType)
        request.body = .bytes(ByteBuffer(string: bytes))
        let response = try await client.execute(request, timeout: .seconds(10))
        let collected = try await response.body.collect(upTo: 1 << 20)
        let json = (try? JSONValue(json: Data(buffer: collected))) ?? .null
        return Response(status: Int(response.status.code), headers: response.headers, json: json)
    }

    /// Opens a watch; read events with ``TestServerWatchReader/next()``.
    func watch(_ path: String) async throws -> TestServerWatchReader {
        let response = try await client.execute(
            try makeRequest(.GET, path, body: nil, contentType: ""), deadline: .now() + .seconds(30))
        return TestServerWatchReader(status: Int(response.status.code), iterator: response.body.makeAsyncIterator())
    }

    /// Creates a namespace (namespaced objects need one, as on a real cluster).
    func createNamespace(_ name: String) async throws {
        let response = try await send(
            .POST, "/api/v1/namespaces", body: .object(["metadata": .object(["name": .string(name)])]))
        guard response.status == 201 else { throw TestServerFailure("creating namespace \(name): \(response.json)") }
    }
}

/// Reads newline-delimited watch events from a streaming response.
final class TestServerWatchReader {
    let status: Int
    private var iterator: HTTPClientResponse.Body.AsyncIterator
    private var buffer: [UInt8] = []

    init(status: Int, iterator: HTTPClientResponse.Body.AsyncIterator) {
        self.status = status
        self.iterator = iterator
    }

    /// The next event, or `nil` when the server ended the response cleanly. Throws when the connection breaks.
    func next() async throws -> JSONValue? {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                return try JSONValue(json: Data(line))
            }
            guard let chunk = try await iterator.next() else {
                guard buffer.isEmpty else { throw TestServerFailure("stream ended inside an event") }
                return nil
            }
            buffer.append(contentsOf: chunk.readableBytesView)
        }
    }

    /// The next event that is not a BOOKMARK.
    func nextChange() async throws -> JSONValue? {
        while let event = try await next() {
            if event["type"]?.stringValue != "BOOKMARK" { return event }
        }
        return nil
    }
}

struct TestServerFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Parses JSON text written in a test; a typo is a test bug, so it fails loudly.
func testServerJSON(_ text: String) throws -> JSONValue {
    try JSONValue(json: Data(text.utf8))
}

extension JSONValue {
    var testServerName: String? { self["metadata"]?["name"]?.stringValue }
    var testServerResourceVersion: String? { self["metadata"]?["resourceVersion"]?.stringValue }
    var testServerItems: [JSONValue] { self["items"]?.arrayValue ?? [] }
    var testServerEventType: String? { self["type"]?.stringValue }
    var testServerEventObject: JSONValue { self["object"] ?? .null }
}
