import BenchmarkSupport

/// `ProxyBenchmark` flags. The shared `--tls`/`--no-tls` switch the mTLS pair row on (default) or off.
struct Options: BenchmarkFlags {
    var tls = true
    var json = false
    /// wrk's open connections (`-c`).
    var connections = 32
    /// wrk's threads (`-t`).
    var threads = 1
    /// Measured seconds per row, after `warmup` seconds that are not counted.
    var duration = 10
    var warmup = 2
    /// Head-to-head rounds of the plain hop against HAProxy (``HeadToHead``); 0 leaves them out.
    var rounds = 5
    /// `APUS_PROXY_THREADS` of the Apus proxies; HAProxy's `nbthread` and NGINX's `worker_processes` match it.
    var proxyThreads = 1
    /// The apus-proxy binary; default: next to this benchmark's executable (`.build/release/apus-proxy`).
    var proxyBinary: String?

    static let usage = """
        usage: ProxyBenchmark [--connections N] [--threads N] [--duration SECONDS] [--warmup SECONDS]
                              [--rounds N] [--proxy-threads N] [--proxy-binary PATH] [--tls | --no-tls] [--json]

          --connections N      wrk connections (default 32)
          --threads N          wrk threads (default 1)
          --duration SECONDS   measured time per row (default 10)
          --warmup SECONDS     unmeasured load before each row (default 2)
          --rounds N           head-to-head rounds of apus-proxy (1 hop) against HAProxy, fresh processes in
                               alternating order, judged by the median (default 5; 0 skips them)
          --proxy-threads N    event-loop threads of apus-proxy; HAProxy nbthread and NGINX worker_processes
                               get the same number (default 1)
          --proxy-binary PATH  apus-proxy to measure (default: next to this executable)
          --tls                include the apus-proxy pair with mTLS (default)
          --no-tls             skip the mTLS pair (no identity CA is started)
          --json               print one JSON object instead of the table

        Needs nginx, haproxy and wrk on PATH (apt-get install -y nginx haproxy wrk); runs everything on 127.0.0.1.
        """

    init() {}

    mutating func read(_ flag: String, from reader: inout ArgumentReader) throws -> Bool {
        switch flag {
        case "--connections": connections = try reader.count(after: flag)
        case "--threads": threads = try reader.count(after: flag)
        case "--duration": duration = try reader.count(after: flag)
        case "--warmup": warmup = try reader.count(after: flag)
        case "--rounds": rounds = try reader.count(after: flag, allowingZero: true)
        case "--proxy-threads": proxyThreads = try reader.count(after: flag)
        case "--proxy-binary":
            guard let path = reader.next() else { throw BenchmarkError("--proxy-binary needs a path\n\(Self.usage)") }
            proxyBinary = path
        default: return false
        }
        return true
    }

    func validate() throws {
        guard connections >= threads else {
            throw BenchmarkError("--connections (\(connections)) must be at least --threads (\(threads)), as wrk needs")
        }
    }
}
