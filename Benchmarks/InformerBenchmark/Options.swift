import BenchmarkSupport
import Foundation

/// Command-line flags, shared by the benchmark and its server child (which receives the same values).
struct BenchmarkOptions: BenchmarkFlags {
    var pods = 10_000
    var events = 20_000
    var tls = true
    var json = false

    static let usage = """
        usage: InformerBenchmark [--pods N] [--events N] [--tls | --no-tls] [--json]

          --pods N      Pods seeded into the API test server and listed by the informer (default 10000)
          --events N    update events per watch phase (default 20000)
        \(ArgumentReader.commonUsage(column: 16, measured: "client"))
        """

    mutating func read(_ flag: String, from reader: inout ArgumentReader) throws -> Bool {
        switch flag {
        case "--pods": pods = try reader.count(after: flag)
        case "--events": events = try reader.count(after: flag)
        default: return false
        }
        return true
    }

    /// The flags that reproduce these options (passed to the server child).
    var arguments: [String] {
        ["--pods", String(pods), "--events", String(events), tls ? "--tls" : "--no-tls"]
    }
}
