import BenchmarkSupport
import Foundation

/// Every figure of one run; printed as a table or, with `--json`, as one JSON object.
struct Report: Encodable {
    struct Workload: Encodable {
        var pods: Int
        var eventsPerPhase: Int
        var transport: String
        var namespaces = PodFactory.namespaceCount
        var averagePodJSONBytes = 0
        var seedSeconds = 0.0
        var serverPid = 0
    }

    struct Sync: Encodable {
        var pageSize = 0
        /// From `run()` until the store reported synced (all pages listed and swapped in).
        var storeSyncedSeconds = 0.0
        /// From `run()` until the handler had seen every `.added`.
        var allAddsHandledSeconds = 0.0
        /// Average cores this process kept busy meanwhile (CPU time / wall time).
        var clientCores = 0.0
        var objectsPerSecond = 0.0
    }

    struct Replay: Encodable {
        var events = 0
        /// Between the first and the last event at the handler.
        var eventsPerSecond = 0.0
        var clientCores = 0.0
        var serverWriteSeconds = 0.0
        var overlappedWithWrites = false
    }

    struct Live: Encodable {
        var events = 0
        var eventsPerSecond = 0.0
        var clientCores = 0.0
        /// From sending the write command until the last event reached the handler.
        var endToEndSeconds = 0.0
        var serverWriteSeconds = 0.0
    }

    struct Watch: Encodable {
        var replay = Replay()
        var live = Live()
        /// Failures the watcher recovered from (one is expected: the replay drops the watch on purpose).
        var recoveredWatcherErrors = 0
    }

    struct Transfer: Encodable {
        var events = 0
        var bytes = 0
        var eventsPerSecond = 0.0
        var bytesPerSecond = 0.0
    }

    struct Decode: Encodable {
        var events = 0
        var eventsPerSecond = 0.0
    }

    struct BaselineFigures: Encodable {
        var transfer = Transfer()
        var decode = Decode()
        var clientDecoder = Decode()
        var storeApply = Decode()
        /// The full paginated list fetched by AsyncHTTPClient without decoding (`events` counts objects).
        var listTransfer = Transfer()
        /// The list pages decoded into `[Pod]` by `JSONDecoder` alone.
        var listDecode = Decode()
    }

    /// The informer's replay rate as a fraction of each floor.
    struct Ratios: Encodable {
        var syncOfListTransfer = 0.0
        var syncOfListDecode = 0.0
        var ofTransfer = 0.0
        var ofFoundationDecode = 0.0
        var ofClientDecoder = 0.0
    }

    struct MemoryFigures: Encodable {
        var start = 0
        var emptyStore = 0
        var emptyStoreTrimmed = 0
        var synced = 0
        var syncedTrimmed = 0
        var afterEvents = 0
        var afterEventsTrimmed = 0
        var bytesPerPod = 0.0
        var bytesPerPodTrimmed = 0.0
        var serverChildAfterSeed = 0
        var serverChildAfterEvents: Int?
    }

    var machine = Machine()
    var workload: Workload
    var sync = Sync()
    var watch = Watch()
    var baselines = BaselineFigures()
    var ratios = Ratios()
    var memory = MemoryFigures()

    init(options: BenchmarkOptions) {
        workload = Workload(
            pods: options.pods, eventsPerPhase: options.events, transport: options.tls ? "HTTPS" : "HTTP")
    }

    /// Fills the figures derived from the measured ones.
    mutating func derive() {
        let pods = Double(workload.pods)
        if sync.allAddsHandledSeconds > 0 { sync.objectsPerSecond = pods / sync.allAddsHandledSeconds }
        memory.bytesPerPod = Double(memory.synced - memory.emptyStore) / pods
        memory.bytesPerPodTrimmed = Double(memory.syncedTrimmed - memory.emptyStoreTrimmed) / pods
        let rate = watch.replay.eventsPerSecond
        func fraction(_ floor: Double) -> Double { floor > 0 ? rate / floor : 0 }
        func syncFraction(_ floor: Double) -> Double { floor > 0 ? sync.objectsPerSecond / floor : 0 }
        ratios = Ratios(
            syncOfListTransfer: syncFraction(baselines.listTransfer.eventsPerSecond),
            syncOfListDecode: syncFraction(baselines.listDecode.eventsPerSecond),
            ofTransfer: fraction(baselines.transfer.eventsPerSecond),
            ofFoundationDecode: fraction(baselines.decode.eventsPerSecond),
            ofClientDecoder: fraction(baselines.clientDecoder.eventsPerSecond))
    }

    func json() throws -> String {
        var report = self
        report.derive()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(report), as: UTF8.self)
    }

    func table() -> String {
        var report = self
        report.derive()
        return report.render()
    }

    private func render() -> String {
        var out: [String] = []
        func line(_ label: String, _ value: String, _ note: String = "") {
            let padded = label.padding(toLength: 48, withPad: " ", startingAt: 0)
            let valuePadded = value.leftPadded(to: 16, with: " ")
            out.append(("  " + padded + valuePadded + (note.isEmpty ? "" : "   " + note)))
        }
        let w = workload
        out.append("Apus informer benchmark — Informer<Pod> through the API test server (server in a child process)")
        out.append("  machine   \(machine.cores) cores, \(machine.cpu), \(machine.os)")
        out.append("  toolchain \(machine.swift), \(machine.build) build")
        out.append("  load      \(machine.loadAverage) (1-min load average at start; other work skews the figures)")
        out.append(
            "  workload  \(w.pods) Pods in \(w.namespaces) namespaces, avg \(w.averagePodJSONBytes) B of JSON each; "
                + "\(w.eventsPerPhase) updates per watch phase; \(w.transport)")
        out.append("")
        out.append("1. Initial list + sync (all namespaces, page size \(sync.pageSize))")
        line("store synced (list pages applied)", Format.seconds(sync.storeSyncedSeconds))
        line("all \(w.pods) adds delivered to the handler", Format.seconds(sync.allAddsHandledSeconds))
        line("list+sync throughput", Format.rate(sync.objectsPerSecond, "objects/s"), Format.cores(sync.clientCores))
        line(
            "baseline: list transfer only (AHC, no decode)",
            Format.rate(baselines.listTransfer.eventsPerSecond, "objects/s"),
            Format.mebibytes(baselines.listTransfer.bytesPerSecond) + "/s")
        line("baseline: list JSONDecoder only (no I/O)", Format.rate(baselines.listDecode.eventsPerSecond, "objects/s"))
        line("list+sync / list transfer floor", Format.percent(ratios.syncOfListTransfer))
        line("list+sync / list JSONDecoder floor", Format.percent(ratios.syncOfListDecode))
        out.append("")
        out.append("2. Watch events decoded + applied to the store + delivered to the handler")
        line(
            "informer, replayed batch", Format.rate(watch.replay.eventsPerSecond, "events/s"),
            Format.cores(watch.replay.clientCores)
                + (watch.replay.overlappedWithWrites ? "; warning: batch partly live (see README)" : ""))
        line(
            "informer, live writer in the server", Format.rate(watch.live.eventsPerSecond, "events/s"),
            Format.cores(watch.live.clientCores) + "; server wrote "
                + Format.rate(Double(watch.live.events) / max(watch.live.serverWriteSeconds, 1e-9), "/s"))
        line(
            "baseline: transfer only (AHC, counts lines)", Format.rate(baselines.transfer.eventsPerSecond, "events/s"),
            Format.mebibytes(baselines.transfer.bytesPerSecond) + "/s")
        line("baseline: JSONDecoder only (no I/O)", Format.rate(baselines.decode.eventsPerSecond, "events/s"))
        line(
            "reference: WatchEventDecoder only (no I/O)",
            Format.rate(baselines.clientDecoder.eventsPerSecond, "events/s")
        )
        line(
            "reference: StoreWriter.apply only (decoded)", Format.rate(baselines.storeApply.eventsPerSecond, "events/s")
        )
        line("informer replay / transfer floor", Format.percent(ratios.ofTransfer))
        line("informer replay / JSONDecoder floor", Format.percent(ratios.ofFoundationDecode))
        line("informer replay / WatchEventDecoder", Format.percent(ratios.ofClientDecoder))
        out.append("")
        out.append("3. Client process memory (VmRSS; the server's copy lives in the child, pid \(w.serverPid))")
        line("at start", Format.mebibytes(Double(memory.start)))
        line(
            "empty store synced (after malloc_trim)", Format.mebibytes(Double(memory.emptyStore)),
            "(" + Format.mebibytes(Double(memory.emptyStoreTrimmed)) + ")")
        line(
            "\(w.pods) Pods synced (after malloc_trim)", Format.mebibytes(Double(memory.synced)),
            "(" + Format.mebibytes(Double(memory.syncedTrimmed)) + ")")
        line(
            "store cost per Pod (after malloc_trim)", String(format: "%.0f B/Pod", memory.bytesPerPod),
            String(format: "(%.0f B/Pod)", memory.bytesPerPodTrimmed))
        line(
            "after \(2 * w.eventsPerPhase) updates (after malloc_trim)", Format.mebibytes(Double(memory.afterEvents)),
            "(" + Format.mebibytes(Double(memory.afterEventsTrimmed)) + ")")
        line(
            "server child RSS after seeding / at end", Format.mebibytes(Double(memory.serverChildAfterSeed)),
            memory.serverChildAfterEvents.map { "/ " + Format.mebibytes(Double($0)) + " (not in the figures above)" }
                ?? "")
        return out.joined(separator: "\n")
    }
}
