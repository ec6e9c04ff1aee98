import AsyncHTTPClient
import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// A running `apus-demo` binary (built next to the test bundle), its stdout and stderr collected.
final class DemoProcess: Sendable {
    private let process: Process
    private let output = NIOLockedValueBox("")

    /// Starts `apus-demo <arguments>` with `environment` on top of a minimal one (no proxy variables leak in from
    /// the machine running the tests).
    init(_ arguments: [String], environment: [String: String] = [:]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
            .deletingLastPathComponent().appendingPathComponent("apus-demo")
        process.arguments = arguments
        var base = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"]
        base.merge(environment) { _, new in new }
        process.environment = base
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let output = self.output
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if !data.isEmpty { output.withLockedValue { $0 += String(decoding: data, as: UTF8.self) } }
        }
        try process.run()
        self.process = process
    }

    /// Starts a server subcommand on a free port and waits for its `listening on` line.
    static func server(_ service: String, environment: [String: String] = [:]) async throws -> (DemoProcess, Int) {
        let process = try DemoProcess([service, "--port", "0"], environment: environment)
        let port = try await process.waitForPort()
        return (process, port)
    }

    var text: String { output.withLockedValue { $0 } }
    var isRunning: Bool { process.isRunning }
    var exitStatus: Int32 { process.terminationStatus }

    /// The port of the `listening on 127.0.0.1:PORT` log line.
    func waitForPort(timeout: Duration = .seconds(20)) async throws -> Int {
        var port: Int?
        try await waitFor("the 'listening on' line", timeout: timeout) {
            port = Self.listeningPort(in: self.text)
            return port != nil
        }
        return try port.unwrap("listening port")
    }

    /// Waits until `condition` holds (polling), failing with the process output after `timeout`.
    func waitFor(_ what: String, timeout: Duration = .seconds(20), _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            guard ContinuousClock.now < deadline else {
                throw DemoTestError("timed out waiting for \(what); output so far:\n\(text)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Waits for the process to exit on its own.
    func waitForExit(timeout: Duration = .seconds(30)) async throws {
        try await waitFor("the process to exit", timeout: timeout) { !process.isRunning }
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit { stop() }

    private static func listeningPort(in text: String) -> Int? {
        guard let range = text.range(of: "listening on ") else { return nil }
        let rest = text[range.upperBound...]
        guard let colon = rest.firstIndex(of: ":") else { return nil }
        let digits = rest[rest.index(after: colon)...].prefix { $0.isNumber }
        return Int(digits)
    }
}

struct DemoTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension Optional {
    func unwrap(_ what: String) throws -> Wrapped {
        guard let self else { throw DemoTestError("no \(what)") }
        return self
    }
}

/// A plain HTTP client for the tests (one per test, shut down by `withClient`).
func withClient<T>(_ body: (HTTPClient) async throws -> T) async throws -> T {
    let client = HTTPClient(eventLoopGroupProvider: .singleton)
    do {
        let result = try await body(client)
        try await client.shutdown()
        return result
    } catch {
        try? await client.shutdown()
        throw error
    }
}

struct TestResponse {
    var status: Int
    var headers: [String: String]
    var body: String
}

extension HTTPClient {
    func get(_ url: String, headers: [(String, String)] = []) async throws -> TestResponse {
        var request = HTTPClientRequest(url: url)
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        return try await send(request)
    }

    func post(_ url: String, body: String) async throws -> TestResponse {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.body = .bytes(ByteBuffer(string: body))
        return try await send(request)
    }

    private func send(_ request: HTTPClientRequest) async throws -> TestResponse {
        let response = try await execute(request, timeout: .seconds(15))
        let body = try await response.body.collect(upTo: 1 << 20)
        var headerMap: [String: String] = [:]
        for (name, value) in response.headers { headerMap[name.lowercased()] = value }
        return TestResponse(status: Int(response.status.code), headers: headerMap, body: String(buffer: body))
    }
}
