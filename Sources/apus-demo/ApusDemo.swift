import ApusCore
import ArgumentParser
import Foundation
import Logging

/// The demo workloads of `examples/demo`: one binary, one subcommand per service, so local mode and a container
/// image both run `apus-demo <service>`.
@main
struct ApusDemo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apus-demo",
        abstract: "Demo services for the Apus mesh: a books app, seed 002's hello/world pair, a traffic generator.",
        discussion: """
            Servers bind $POD_IP (default 127.0.0.1) on --port or $PORT, answer GET /healthz and GET /whoami, add \
            LATENCY_MS (fixed '250' or range '100-300') and fail ERROR_RATE (0.0-1.0) of their requests with 500. \
            Calls to other services go through the pod's outbound proxy when APUS_OUTBOUND_PROXY (host:port) or \
            http_proxy is set.
            """,
        subcommands: [Books.self, Authors.self, Webapp.self, Hello.self, World.self, Traffic.self])
}

/// The options and environment every server subcommand shares.
struct ServerOptions: ParsableArguments {
    @Option(help: "Port to listen on (default: $PORT, else the service's usual port; 0 picks a free one).")
    var port: Int?

    /// Starts the server for `service` and runs until the process is stopped.
    /// - Parameters:
    ///   - defaultLatency: the service's own latency when `LATENCY_MS` is unset.
    ///   - makeResponder: builds the application from the environment and the mesh client.
    func serve(
        _ service: String, defaultPort: Int, defaultLatency: Latency = .none,
        makeResponder: ([String: String], MeshClient) throws(DemoConfigurationError) -> DemoResponder
    ) async throws {
        let environment = ProcessInfo.processInfo.environment
        let logger = DemoLogging.logger(service)
        do {
            let port = try resolvedPort(environment, defaultPort: defaultPort)
            let faults = try FaultInjection.fromEnvironment(environment, defaultLatency: defaultLatency)
            let client = MeshClient(proxy: try OutboundProxy.fromEnvironment(environment))
            let responder = try makeResponder(environment, client)
            let host = environment["POD_IP"].flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1"
            let identity = ServerIdentity(
                service: service, podName: environment["POD_NAME"].flatMap { $0.isEmpty ? nil : $0 } ?? service,
                podIP: host)
            if let proxy = client.proxy {
                logger.info("calls to other services go through the outbound proxy \(proxy)")
            }
            let server = try await DemoServer.start(
                host: host, port: port, identity: identity, faults: faults, logger: logger, responder: responder)
            try await server.wait()
            await client.shutdown()
        } catch let error as DemoConfigurationError {
            throw ValidationError(error.description)
        }
    }

    private func resolvedPort(_ environment: [String: String], defaultPort: Int) throws(DemoConfigurationError)
        -> Int
    {
        if let port {
            guard (0...65535).contains(port) else {
                throw DemoConfigurationError(setting: "--port", value: String(port), reason: "is not a TCP port")
            }
            return port
        }
        guard let text = environment["PORT"], !text.isEmpty else { return defaultPort }
        guard let value = Int(text), (0...65535).contains(value) else {
            throw DemoConfigurationError(setting: "PORT", value: text, reason: "is not a TCP port")
        }
        return value
    }
}

/// A base URL from the environment (`BOOKS_URL=http://books:7002`), without a trailing slash.
private func serviceURL(
    _ environment: [String: String], _ variable: String, default fallback: String
) throws(DemoConfigurationError) -> String {
    var value = environment[variable].flatMap { $0.isEmpty ? nil : $0 } ?? fallback
    guard let components = URLComponents(string: value), components.scheme == "http", components.host != nil else {
        throw DemoConfigurationError(setting: variable, value: value, reason: "is not an http://host[:port] URL")
    }
    while value.hasSuffix("/") { value.removeLast() }
    return value
}

/// A line on stdout, written at once: stdout is a pipe under local mode, where `print` would hold it in a buffer.
func writeLine(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

enum DemoLogging {
    /// One line per event on stderr, level from `LOG_LEVEL` (default info).
    static func logger(_ label: String) -> Logger {
        var logger = Logger(label: "apus-demo.\(label)") { StreamLogHandler.standardError(label: $0) }
        let level = ProcessInfo.processInfo.environment["LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) }
        logger.logLevel = level ?? .info
        return logger
    }
}

extension ApusDemo {
    struct Books: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "JSON books service (GET/POST /books, GET /books/{id}); asks $AUTHORS_URL for authors.")
        @OptionGroup var options: ServerOptions

        func run() async throws {
            try await options.serve("books", defaultPort: 7002) { environment, client throws(DemoConfigurationError) in
                BooksService.responder(
                    client: client,
                    authorsURL: try serviceURL(environment, "AUTHORS_URL", default: "http://authors:7001"))
            }
        }
    }

    struct Authors: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "JSON authors service (GET /authors, GET /authors/{id}).")
        @OptionGroup var options: ServerOptions

        func run() async throws {
            try await options.serve("authors", defaultPort: 7001) { _, _ in AuthorsService.responder() }
        }
    }

    struct Webapp: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Front end: GET / (HTML) and GET /books/{id} (JSON) from $BOOKS_URL and $AUTHORS_URL.")
        @OptionGroup var options: ServerOptions

        func run() async throws {
            try await options.serve("webapp", defaultPort: 7000) {
                environment, client throws(DemoConfigurationError) in
                WebappService.responder(
                    client: client,
                    booksURL: try serviceURL(environment, "BOOKS_URL", default: "http://books:7002"),
                    authorsURL: try serviceURL(environment, "AUTHORS_URL", default: "http://authors:7001"))
            }
        }
    }

    struct Hello: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Answers 'hello ' + GET $WORLD_URL/ after its own latency (default 500 ms).")
        @OptionGroup var options: ServerOptions

        func run() async throws {
            try await options.serve(
                "hello", defaultPort: 7100, defaultLatency: Latency(minimumMilliseconds: 500, maximumMilliseconds: 500)
            ) { environment, client throws(DemoConfigurationError) in
                HelloWorld.hello(
                    client: client,
                    // A bare http://host:port means `/`; a path (e.g. /whoami) is called as given.
                    worldURL: try serviceURL(environment, "WORLD_URL", default: "http://world:7101"))
            }
        }
    }

    struct World: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Answers 'world' (default latency 10 ms).")
        @OptionGroup var options: ServerOptions

        func run() async throws {
            try await options.serve(
                "world", defaultPort: 7101, defaultLatency: Latency(minimumMilliseconds: 10, maximumMilliseconds: 10)
            ) { _, _ in HelloWorld.world() }
        }
    }

    struct Traffic: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Steady load through the outbound proxy; prints a summary line every --interval.")

        @Option(name: .customLong("target"), help: "URL to GET (repeat for several; round-robin).")
        var targets: [String] = []

        @Option(help: "Requests per second, spread evenly.")
        var rps = 10

        @Option(help: "How long to run: a duration ('30s', '5m') or 'forever'.")
        var duration = "forever"

        @Option(help: "Time between summary lines.")
        var interval = "10s"

        func validate() throws {
            guard !targets.isEmpty else { throw ValidationError("give at least one --target URL") }
            for target in targets {
                guard let url = URLComponents(string: target), url.scheme == "http", url.host != nil else {
                    throw ValidationError("--target '\(target)' is not an http://host[:port]/path URL")
                }
            }
            guard rps > 0 else { throw ValidationError("--rps must be at least 1, got \(rps)") }
            _ = try parsedDuration()
            _ = try parsedInterval()
        }

        func run() async throws {
            let environment = ProcessInfo.processInfo.environment
            let proxy: OutboundProxy?
            do {
                proxy = try OutboundProxy.fromEnvironment(environment)
            } catch {
                throw ValidationError(error.description)
            }
            let client = MeshClient(proxy: proxy)
            let generator = TrafficGenerator(
                targets: targets, requestsPerSecond: rps, duration: try parsedDuration(),
                reportInterval: try parsedInterval())
            let via = proxy.map { "through the outbound proxy \($0)" } ?? "directly (no APUS_OUTBOUND_PROXY)"
            writeLine("traffic: \(rps) requests/s to \(targets.joined(separator: ", ")) \(via)")
            let total = await generator.run(client: client) { line in writeLine(line) }
            writeLine("traffic: total: \(total.summary)")
            await client.shutdown()
        }

        private func parsedDuration() throws -> Duration? {
            if duration == "forever" { return nil }
            return try positiveDuration(duration, flag: "--duration")
        }

        private func parsedInterval() throws -> Duration {
            try positiveDuration(interval, flag: "--interval")
        }

        private func positiveDuration(_ text: String, flag: String) throws -> Duration {
            do {
                let value = try GoDuration(parsing: text)
                guard value > .zero else { throw ValidationError("\(flag) must be positive, got '\(text)'") }
                return value.duration
            } catch let error as GoDurationError {
                throw ValidationError("\(flag) '\(text)': \(error)")
            }
        }
    }
}
