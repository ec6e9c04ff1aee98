import BenchmarkSupport
import Foundation

/// Command-line flags, shared by the benchmark and its server child (which receives the same values).
struct BenchmarkOptions: BenchmarkFlags {
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
        \(ArgumentReader.commonUsage(column: 20, measured: "controller"))
        """

    mutating func read(_ flag: String, from reader: inout ArgumentReader) throws -> Bool {
        switch flag {
        case "--pods": pods = try reader.count(after: flag)
        case "--services": services = try reader.count(after: flag)
        case "--changes": changes = try reader.count(after: flag)
        case "--subscribers":
            guard let list = reader.next() else { throw BenchmarkError("--subscribers needs a list") }
            subscriberCounts = try list.split(separator: ",").map { try ArgumentReader.number(String($0), flag: flag) }
            guard !subscriberCounts.isEmpty else { throw BenchmarkError("--subscribers is empty") }
        default: return false
        }
        return true
    }

    /// - Throws: ``BenchmarkError`` when `--services` does not divide over the namespaces or exceeds `--pods`.
    func validate() throws {
        guard services % PodFactory.namespaceCount == 0, services <= pods else {
            throw BenchmarkError(
                "--services must be a multiple of \(PodFactory.namespaceCount) and at most --pods "
                    + "(a Service's Pods share its namespace)")
        }
    }

    /// The flags that reproduce these options (passed to the server child).
    var arguments: [String] {
        ["--pods", String(pods), "--services", String(services), tls ? "--tls" : "--no-tls"]
    }
}
