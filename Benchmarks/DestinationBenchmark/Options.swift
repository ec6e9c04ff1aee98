import Foundation

/// Command-line flags, shared by the benchmark and its server child (which receives the same values).
struct BenchmarkOptions: Sendable {
    var pods = 10_000
    var services = 1_000
    var subscriberCounts = [1, 100, 1_000]
    var changes = 200
    var tls = true
    var json = false

    static let usage = """
        usage: DestinationBenchmark [--pods N] [--services N] [--subscribers N,N,…] [--changes N]
                                    [--tls | --no-tls] [--json]

          --pods N          Pods seeded into the API test server (default 10000)
          --services N      Services, each with one EndpointSlice over its share of the Pods (default 1000; a
                            multiple of 20, at most --pods)
          --subscribers L   subscriber counts to measure propagation with (default 1,100,1000)
          --changes N       EndpointSlice changes per subscriber count (default 200)
          --tls             serve the API over HTTPS with a per-run CA (default)
          --no-tls          serve plain HTTP
          --json            print one JSON object instead of the table

        The API test server runs in a child process (this binary with --serve), so the RSS figures are the
        controller's alone.
        """

    /// - Throws: ``BenchmarkError`` for an unknown flag or a missing, non-positive or inconsistent number.
    static func parse(_ arguments: [String]) throws -> BenchmarkOptions {
        var options = BenchmarkOptions()
        var remaining = arguments[...]
        func number(_ text: String, flag: String) throws -> Int {
            guard let value = Int(text.replacingOccurrences(of: "_", with: "")), value > 0 else {
                throw BenchmarkError("\(flag) must be a positive integer, got '\(text)'")
            }
            return value
        }
        func count(after flag: String) throws -> Int {
            guard let text = remaining.popFirst() else { throw BenchmarkError("\(flag) needs a number\n\(usage)") }
            return try number(text, flag: flag)
        }
        while let flag = remaining.popFirst() {
            switch flag {
            case "--pods": options.pods = try count(after: flag)
            case "--services": options.services = try count(after: flag)
            case "--changes": options.changes = try count(after: flag)
            case "--subscribers":
                guard let list = remaining.popFirst() else { throw BenchmarkError("--subscribers needs a list") }
                options.subscriberCounts = try list.split(separator: ",").map { try number(String($0), flag: flag) }
                guard !options.subscriberCounts.isEmpty else { throw BenchmarkError("--subscribers is empty") }
            case "--tls": options.tls = true
            case "--no-tls": options.tls = false
            case "--json": options.json = true
            case "-h", "--help": throw UsageRequested()
            default: throw BenchmarkError("unknown argument '\(flag)'\n\(usage)")
            }
        }
        guard options.services % PodFactory.namespaceCount == 0, options.services <= options.pods else {
            throw BenchmarkError(
                "--services must be a multiple of \(PodFactory.namespaceCount) and at most --pods "
                    + "(a Service's Pods share its namespace)")
        }
        return options
    }

    /// The flags that reproduce these options (passed to the server child).
    var arguments: [String] {
        ["--pods", String(pods), "--services", String(services), tls ? "--tls" : "--no-tls"]
    }
}

/// `--help` was given: print the usage and exit successfully.
struct UsageRequested: Error {}
