import Foundation
import NIOConcurrencyHelpers

/// Counts of one reporting window (or of the whole run) of the traffic generator.
struct TrafficWindow: Sendable {
    var requests = 0
    var successes = 0
    /// Failed requests by status code; `0` counts calls that got no response at all.
    var failures: [Int: Int] = [:]
    /// Requests not sent because too many were still waiting (the targets are slower than the rate).
    var skipped = 0
    var latenciesMilliseconds: [Double] = []

    mutating func record(status: Int?, milliseconds: Double) {
        requests += 1
        latenciesMilliseconds.append(milliseconds)
        if let status, (200..<400).contains(status) {
            successes += 1
        } else {
            failures[status ?? 0, default: 0] += 1
        }
    }

    mutating func merge(_ other: TrafficWindow) {
        requests += other.requests
        successes += other.successes
        skipped += other.skipped
        failures.merge(other.failures, uniquingKeysWith: +)
        latenciesMilliseconds += other.latenciesMilliseconds
    }

    /// Nearest-rank percentile of the latencies, in milliseconds (0 without samples).
    func percentile(_ quantile: Double) -> Double {
        guard !latenciesMilliseconds.isEmpty else { return 0 }
        let sorted = latenciesMilliseconds.sorted()
        let rank = Int((quantile * Double(sorted.count)).rounded(.up)) - 1
        return sorted[min(sorted.count - 1, max(0, rank))]
    }

    /// `120 requests, 118 ok, 2 failed (HTTP 500: 2), p50 3.1 ms, p99 12.0 ms`
    var summary: String {
        var text = "\(requests) requests, \(successes) ok, \(requests - successes) failed"
        if !failures.isEmpty {
            let parts = failures.sorted { $0.key < $1.key }.map { status, count in
                status == 0 ? "no response: \(count)" : "HTTP \(status): \(count)"
            }
            text += " (\(parts.joined(separator: ", ")))"
        }
        text += String(format: ", p50 %.1f ms, p99 %.1f ms", percentile(0.5), percentile(0.99))
        if skipped > 0 { text += ", \(skipped) not sent (too many in flight)" }
        return text
    }
}

/// A steady open-loop load: `rps` requests per second spread evenly, round-robin over the targets, each sent
/// without waiting for earlier ones (up to `maximumInFlight`), so a slow service shows as latency and errors
/// rather than as a lower rate.
struct TrafficGenerator: Sendable {
    var targets: [String]
    var requestsPerSecond: Int
    /// nil: until the process is stopped.
    var duration: Duration?
    var reportInterval: Duration
    var maximumInFlight = 1000

    /// Runs the load, calling `report` with each window's summary line, and returns the totals.
    func run(client: MeshClient, report: @escaping @Sendable (String) -> Void) async -> TrafficWindow {
        let window = NIOLockedValueBox(TrafficWindow())
        let total = NIOLockedValueBox(TrafficWindow())
        let inFlight = NIOLockedValueBox(0)
        let clock = ContinuousClock()
        let start = clock.now
        let spacing = Duration.seconds(1) / requestsPerSecond
        let end = duration.map { start + $0 }
        await withDiscardingTaskGroup { group in
            var next = start
            var nextReport = start + reportInterval
            var index = 0
            while end.map({ next < $0 }) ?? true {
                try? await clock.sleep(until: next)
                if Task.isCancelled { break }
                if clock.now >= nextReport {
                    let finished = window.withLockedValue { current in
                        defer { current = TrafficWindow() }
                        return current
                    }
                    total.withLockedValue { $0.merge(finished) }
                    report("traffic: last \(reportInterval): \(finished.summary)")
                    nextReport += reportInterval
                }
                let admitted = inFlight.withLockedValue { count in
                    guard count < maximumInFlight else { return false }
                    count += 1
                    return true
                }
                guard admitted else {
                    window.withLockedValue { $0.skipped += 1 }
                    next += spacing
                    continue
                }
                let target = targets[index % targets.count]
                index += 1
                group.addTask {
                    let sent = clock.now
                    let status: Int?
                    do {
                        status = try await client.call(.GET, target).status
                    } catch {
                        status = nil
                    }
                    let elapsed = (clock.now - sent) / .milliseconds(1)
                    window.withLockedValue { $0.record(status: status, milliseconds: elapsed) }
                    inFlight.withLockedValue { $0 -= 1 }
                }
                next += spacing
            }
        }
        let rest = window.withLockedValue { $0 }
        return total.withLockedValue { total in
            total.merge(rest)
            return total
        }
    }
}
