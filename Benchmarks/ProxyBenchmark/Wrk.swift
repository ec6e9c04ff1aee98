import BenchmarkSupport
import Foundation

/// What one wrk run measured.
struct WrkResult: Encodable {
    var requestsPerSecond: Double
    var p50Milliseconds: Double
    var p99Milliseconds: Double
    var requests: Int
    /// Responses outside 2xx/3xx.
    var non2xx: Int
    /// connect + read + write + timeout errors.
    var socketErrors: Int
}

enum Wrk {
    /// Runs wrk against 127.0.0.1:`port` with `Host: host`.
    static func run(
        _ wrk: String, port: Int, host: String, options: Options, seconds: Int
    ) async throws -> WrkResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: wrk)
        process.arguments = [
            "-t", String(options.threads), "-c", String(options.connections), "-d", "\(seconds)s", "--latency",
            "--timeout", "5s", "-H", "Host: \(host)", "http://127.0.0.1:\(port)/",
        ]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do {
            try process.run()
        } catch {
            throw BenchmarkError("cannot run \(wrk): \(error)")
        }
        // wrk ends on its own after `seconds`; read on a Dispatch thread so the cooperative pool stays free.
        let output: String = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                let data = pipe.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                continuation.resume(returning: String(decoding: data, as: UTF8.self))
            }
        }
        guard process.terminationStatus == 0 else {
            throw BenchmarkError("wrk failed (status \(process.terminationStatus)):\n\(output)")
        }
        return try parse(output)
    }

    /// Reads `Requests/sec`, the 50 % and 99 % lines of `Latency Distribution`, the request count, `Non-2xx or 3xx
    /// responses` and `Socket errors` from wrk's report.
    static func parse(_ output: String) throws -> WrkResult {
        var result = WrkResult(
            requestsPerSecond: 0, p50Milliseconds: 0, p99Milliseconds: 0, requests: 0, non2xx: 0, socketErrors: 0)
        var sawRate = false
        var sawP50 = false
        var sawP99 = false
        for raw in output.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if line.hasPrefix("Requests/sec:"), fields.count >= 2, let rate = Double(fields[1]) {
                result.requestsPerSecond = rate
                sawRate = true
            } else if line.hasPrefix("50%"), fields.count >= 2 {
                result.p50Milliseconds = try milliseconds(String(fields[1]))
                sawP50 = true
            } else if line.hasPrefix("99%"), fields.count >= 2 {
                result.p99Milliseconds = try milliseconds(String(fields[1]))
                sawP99 = true
            } else if line.contains(" requests in "), let count = Int(fields[0]) {
                result.requests = count
            } else if line.hasPrefix("Non-2xx or 3xx responses:"), let count = fields.last.flatMap({ Int($0) }) {
                result.non2xx = count
            } else if line.hasPrefix("Socket errors:") {
                result.socketErrors = fields.compactMap { Int($0.trimmingCharacters(in: .punctuationCharacters)) }
                    .reduce(0, +)
            }
        }
        guard sawRate, sawP50, sawP99 else {
            throw BenchmarkError("cannot read wrk's report (no Requests/sec or latency distribution):\n\(output)")
        }
        return result
    }

    /// wrk's latency text (`512.00us`, `1.23ms`, `2.00s`, `1.50m`) in milliseconds.
    static func milliseconds(_ text: String) throws -> Double {
        for (unit, factor) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)]
        where text.hasSuffix(unit) {
            if let value = Double(text.dropLast(unit.count)) { return value * factor }
        }
        throw BenchmarkError("unreadable wrk latency '\(text)'")
    }
}
