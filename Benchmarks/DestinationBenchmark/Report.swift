import BenchmarkSupport
import Foundation

/// Every figure of one run; printed as a table or, with `--json`, as one JSON object.
struct Report: Encodable {
    /// The issue's goals (must-show 5).
    static let goalP99Milliseconds = 100.0
    static let goalSubscribers = 1_000
    static let goalResidentMiB = 150.0

    struct Workload: Encodable {
        var pods: Int
        var services: Int
        var transport: String
        var namespaces = PodFactory.namespaceCount
        var averagePodJSONBytes = 0
        var sliceJSONBytes = 0
        var seedSeconds = 0.0
        var serverPid = 0
    }

    struct Load: Encodable {
        /// From starting the manager until its caches synced and the indexes applied every listed object.
        var seconds = 0.0
    }

    struct MemoryFigures: Encodable {
        var start = 0
        var loaded = 0
        var loadedTrimmed = 0
        var subscribed = 0
        var subscribedTrimmed = 0
        var end = 0
        var endTrimmed = 0
        var serverChild = 0
    }

    struct Propagation: Encodable {
        var subscribers: Int
        var changes: Int
        /// Write in the API server → value received by each measured subscriber (one sample per subscriber and
        /// change).
        var subscriber: Percentiles
        /// Write in the API server → the EndpointSlice informer's handler (one sample per change): the floor the
        /// indexes build on.
        var informer: Percentiles
    }

    var machine = Machine()
    var workload: Workload
    var load = Load()
    var memory = MemoryFigures()
    var propagation: [Propagation] = []
    var metricsExpositionBytes = 0

    init(options: BenchmarkOptions) {
        workload = Workload(pods: options.pods, services: options.services, transport: options.tls ? "HTTPS" : "HTTP")
    }

    func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    func table() -> String {
        var out = ""
        func line(_ text: String) { out += text + "\n" }
        func row(_ label: String, _ value: String, _ note: String = "") {
            let padded = label.padding(toLength: 46, withPad: " ", startingAt: 0)
            let value = String(repeating: " ", count: max(0, 14 - value.count)) + value
            line("  \(padded)\(value)\(note.isEmpty ? "" : "   " + note)")
        }
        line("Apus destination benchmark — informers → destination indexes → subscribers (server in a child process)")
        line("  machine   \(machine.cores) cores, \(machine.cpu), \(machine.os)")
        line("  toolchain \(machine.swift), \(machine.build) build")
        line("  load      \(machine.loadAverage) (1-min load average at start; other work skews the figures)")
        line(
            "  workload  \(workload.pods) Pods (avg \(workload.averagePodJSONBytes) B JSON), \(workload.services) "
                + "Services + \(workload.services) EndpointSlices (\(workload.sliceJSONBytes) B), "
                + "\(workload.namespaces) namespaces; \(workload.transport)")
        line("")
        line("1. Propagation: EndpointSlice write in the API server → new endpoint set at each subscriber")
        line(
            "   subscribers   changes   subscriber p50   subscriber p99      max   informer p50 / p99 (baseline)  goal")
        for phase in propagation {
            let goal =
                phase.subscribers == Self.goalSubscribers
                ? (phase.subscriber.p99 <= Self.goalP99Milliseconds ? "p99 ≤ 100 ms: met" : "p99 ≤ 100 ms: MISSED")
                : ""
            line(
                String(
                    format: "   %11d   %7d   %11.2f ms   %11.2f ms   %6.1f ms   %8.2f / %.2f ms              %@",
                    phase.subscribers, phase.changes, phase.subscriber.p50, phase.subscriber.p99,
                    phase.subscriber.max, phase.informer.p50, phase.informer.p99, goal))
        }
        line("")
        line(
            "2. Controller process memory (VmRSS; the API server's copy lives in the child, pid \(workload.serverPid))")
        row("at start", Format.mebibytes(memory.start))
        row(
            "caches + indexes loaded (after malloc_trim)", Format.mebibytes(memory.loaded),
            "(\(Format.mebibytes(memory.loadedTrimmed)))")
        row(
            "\(workload.services) Services subscribed (after malloc_trim)", Format.mebibytes(memory.subscribed),
            "(\(Format.mebibytes(memory.subscribedTrimmed)))")
        let verdict = Double(memory.subscribed) / 1_048_576 <= Self.goalResidentMiB ? "met" : "MISSED"
        row("goal", "≤ 150.0 MiB", "\(verdict) (judged on the untrimmed figure above)")
        row("at end (after malloc_trim)", Format.mebibytes(memory.end), "(\(Format.mebibytes(memory.endTrimmed)))")
        row("server child RSS at end", Format.mebibytes(memory.serverChild), "(not in the figures above)")
        line("")
        row("load: list + sync + index apply", String(format: "%.3f s", load.seconds))
        row("/metrics exposition size", "\(metricsExpositionBytes) B")
        return out
    }
}
