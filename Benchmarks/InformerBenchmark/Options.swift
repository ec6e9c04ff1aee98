import Foundation

/// Command-line flags, shared by the benchmark and its server child (which receives the same values).
struct BenchmarkOptions: Sendable {
    var pods = 10_000
    var events = 20_000
    var tls = true
    var json = false

    static let usage = """
        usage: InformerBenchmark [--pods N] [--events N] [--tls | --no-tls] [--json]

          --pods N      Pods seeded into the API test server and listed by the informer (default 10000)
          --events N    update events per watch phase (default 20000)
          --tls         serve the API over HTTPS with a per-run CA (default)
          --no-tls      serve plain HTTP
          --json        print one JSON object instead of the table

        The API test server runs in a child process (this binary with --serve), so the RSS figures are the
        client's alone.
        """

    /// - Throws: ``BenchmarkError`` for an unknown flag or a missing or non-positive number.
    static func parse(_ arguments: [String]) throws -> BenchmarkOptions {
        var options = BenchmarkOptions()
        var remaining = arguments[...]
        func count(after flag: String) throws -> Int {
            guard let text = remaining.popFirst() else { throw BenchmarkError("\(flag) needs a number\n\(usage)") }
            guard let value = Int(text.replacingOccurrences(of: "_", with: "")), value > 0 else {
                throw BenchmarkError("\(flag) must be a positive integer, got '\(text)'")
            }
            return value
        }
        while let flag = remaining.popFirst() {
            switch flag {
            case "--pods": options.pods = try count(after: flag)
            case "--events": options.events = try count(after: flag)
            case "--tls": options.tls = true
            case "--no-tls": options.tls = false
            case "--json": options.json = true
            case "-h", "--help": throw UsageRequested()
            default: throw BenchmarkError("unknown argument '\(flag)'\n\(usage)")
            }
        }
        return options
    }

    /// The flags that reproduce these options (passed to the server child).
    var arguments: [String] {
        ["--pods", String(pods), "--events", String(events), tls ? "--tls" : "--no-tls"]
    }
}

/// `--help` was given: print the usage and exit successfully.
struct UsageRequested: Error {}
