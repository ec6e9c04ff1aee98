import BenchmarkSupport
import Foundation

/// The table (or JSON) `make bench-proxy` prints.
struct Report: Encodable {
    var machine = Machine()
    var backend: String
    var load: String
    var rows: [Row]
    var headToHead: HeadToHead?

    /// Issue 4's goals for one hop: ≥ 1.0× HAProxy's req/s with a p99 no worse; ≤ 20 MiB idle, ≤ 30 MiB loaded.
    static let idleGoalBytes = 20 * 1_048_576
    static let loadedGoalBytes = 30 * 1_048_576

    func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    func table() -> String {
        let direct = rows.first { $0.name == Runner.directName }?.result
        let haproxy = rows.first { $0.name == Runner.haproxyName }?.result
        var lines = [
            "Apus proxy benchmark — wrk through each proxy to the same backend, all on 127.0.0.1",
            "  machine   \(machine.cores) cores, \(machine.cpu), \(machine.os)",
            "  toolchain \(machine.swift), \(machine.build) build",
            "  load      \(machine.loadAverage) (1-min load average at start; other work skews the figures)",
            "  backend   \(backend)",
            "  wrk       \(load)",
            "",
            pad("", 24) + lpad("req/s", 10) + lpad("p50", 10) + lpad("p99", 10) + lpad("idle RSS", 12)
                + lpad("peak RSS", 12) + lpad("CPU/req", 10) + lpad("×direct", 9) + lpad("×HAProxy", 10)
                + lpad("p99×HAP", 9),
        ]
        var notes: [String] = []
        for row in rows {
            guard let result = row.result else {
                lines.append(pad(row.name, 24) + lpad("—", 10) + "   failed (see below)")
                notes.append("\(row.name): \(row.error ?? "no result")")
                continue
            }
            var line = pad(row.name, 24) + lpad(Format.grouped(Int(result.requestsPerSecond.rounded())), 10)
            line += lpad(milliseconds(result.p50Milliseconds), 10) + lpad(milliseconds(result.p99Milliseconds), 10)
            line += lpad(row.idle.map { Format.mebibytes($0.residentBytes) } ?? "—", 12)
            line += lpad(row.peak.map { Format.mebibytes($0.peakBytes) } ?? "—", 12)
            line += lpad(row.cpuSecondsPerRequest.map(microseconds) ?? "—", 10)
            line += lpad(ratio(result.requestsPerSecond, direct?.requestsPerSecond), 9)
            line += lpad(ratio(result.requestsPerSecond, haproxy?.requestsPerSecond), 10)
            line += lpad(ratio(result.p99Milliseconds, haproxy?.p99Milliseconds), 9)
            lines.append(line)
            if let serverIdle = row.serverIdle {
                let peak = row.serverPeak.map { Format.mebibytes($0.peakBytes) } ?? "—"
                lines.append(
                    pad("  (server proxy)", 24) + lpad("", 30) + lpad(Format.mebibytes(serverIdle.residentBytes), 12)
                        + lpad(peak, 12))
            }
            if let error = row.error { notes.append("\(row.name): \(error)") }
        }
        lines.append("")
        lines.append(
            "RSS: VmRSS before the load (idle) and VmHWM after it (peak) of the proxy process; NGINX: master + workers;"
        )
        lines.append("the pair: client proxy on its row, server proxy below it. ×HAProxy > 1 is faster for req/s and")
        lines.append(
            "slower for p99 (p99×HAP is the row's p99 over HAProxy's). CPU/req: user + system CPU of the proxy")
        lines.append("processes during the measured run per request (the pair: both proxies), steadier than req/s on")
        lines.append("shared cores.")
        if let splice = spliceGain() {
            lines.append("")
            lines.append(splice)
        }
        if let routing = routingCost() {
            lines.append(routing)
        }
        if let headToHead, !headToHead.rounds.isEmpty {
            lines.append("")
            lines += headToHeadLines(headToHead)
        }
        if let goals = goalVerdicts(haproxy: haproxy) {
            lines.append("")
            lines.append(goals)
        }
        if !notes.isEmpty {
            lines.append("")
            lines.append("Rows without figures or with failed requests:")
            lines += notes.map { "  - " + $0.replacingOccurrences(of: "\n", with: "\n    ") }
        }
        return lines.joined(separator: "\n")
    }

    private func goalVerdicts(haproxy: WrkResult?) -> String? {
        guard let apus = rows.first(where: { $0.name == Runner.apusName }), let result = apus.result,
            apus.error == nil
        else { return nil }
        var parts: [String] = []
        if let headToHead, let rate = headToHead.rate, let p99 = headToHead.p99 {
            let rounds = "median of \(headToHead.completeRounds) head-to-head rounds"
            parts.append(
                String(
                    format: "req/s %.2f× HAProxy, %@ (goal ≥ 1.0: %@)", rate.median, rounds,
                    rate.median >= 1 ? "met" : "missed"))
            parts.append(
                String(
                    format: "p99 %.2f× HAProxy's, %@ (goal ≤ 1.0: %@)", p99.median, rounds,
                    p99.median <= 1 ? "met" : "missed"))
        } else if let haproxy {
            let rate = result.requestsPerSecond / haproxy.requestsPerSecond
            parts.append(
                String(
                    format: "req/s %.2f× HAProxy, one run each (goal ≥ 1.0: %@)", rate, rate >= 1 ? "met" : "missed"))
            let p99OK = result.p99Milliseconds <= haproxy.p99Milliseconds
            parts.append(
                "p99 \(p99OK ? "no worse than" : "worse than") HAProxy's, one run each (\(p99OK ? "met" : "missed"))")
        }
        if let idle = apus.idle {
            let met = idle.residentBytes <= Self.idleGoalBytes
            parts.append("idle RSS \(Format.mebibytes(idle.residentBytes)) (goal ≤ 20 MiB: \(met ? "met" : "missed"))")
        }
        if let peak = apus.peak {
            let met = peak.peakBytes <= Self.loadedGoalBytes
            parts.append("peak RSS \(Format.mebibytes(peak.peakBytes)) (goal ≤ 30 MiB: \(met ? "met" : "missed"))")
        }
        if let cpu = apus.cpuSecondsPerRequest,
            let haproxyCPU = rows.first(where: { $0.name == Runner.haproxyName })?.cpuSecondsPerRequest, haproxyCPU > 0
        {
            parts.append(
                "CPU per request \(microseconds(cpu)) = \(String(format: "%.2f", cpu / haproxyCPU))× HAProxy's "
                    + "\(microseconds(haproxyCPU)) (what bounds req/s when the cores are shared)")
        }
        return "Goals for one hop (issue 4):\n" + parts.map { "  - " + $0 }.joined(separator: "\n")
    }

    /// One line per round and the medians: the comparison the req/s and p99 goals are judged by.
    private func headToHeadLines(_ headToHead: HeadToHead) -> [String] {
        var lines = [
            "Head to head, apus-proxy (1 hop) vs HAProxy: \(headToHead.rounds.count) rounds, fresh processes, "
                + "alternating order",
            pad("", 14) + lpad("apus req/s", 12) + lpad("HAP req/s", 12) + lpad("×HAProxy", 10) + lpad("apus p99", 10)
                + lpad("HAP p99", 10) + lpad("p99×HAP", 9) + lpad("apus CPU", 10) + lpad("HAP CPU", 10),
        ]
        for (index, round) in headToHead.rounds.enumerated() {
            let label = "round \(index + 1)" + (round.apusFirst ? "" : "*")
            guard let apus = round.apus.result, let haproxy = round.haproxy.result,
                round.apus.error == nil, round.haproxy.error == nil
            else {
                let why = round.apus.error ?? round.haproxy.error ?? "no result"
                lines.append(pad(label, 14) + "failed: " + why.replacingOccurrences(of: "\n", with: " "))
                continue
            }
            var line = pad(label, 14) + lpad(Format.grouped(Int(apus.requestsPerSecond.rounded())), 12)
            line += lpad(Format.grouped(Int(haproxy.requestsPerSecond.rounded())), 12)
            line += lpad(ratio(apus.requestsPerSecond, haproxy.requestsPerSecond), 10)
            line += lpad(milliseconds(apus.p99Milliseconds), 10) + lpad(milliseconds(haproxy.p99Milliseconds), 10)
            line += lpad(ratio(apus.p99Milliseconds, haproxy.p99Milliseconds), 9)
            line += lpad(round.apus.cpuSecondsPerRequest.map(microseconds) ?? "—", 10)
            line += lpad(round.haproxy.cpuSecondsPerRequest.map(microseconds) ?? "—", 10)
            lines.append(line)
        }
        func spread(_ name: String, _ value: HeadToHead.Spread?) -> String? {
            value.map { String(format: "%@ median %.2f (%.2f–%.2f)", name, $0.median, $0.lowest, $0.highest) }
        }
        let medians = [
            spread("req/s×HAProxy", headToHead.rate), spread("p99×HAProxy", headToHead.p99),
            spread("CPU/req×HAProxy", headToHead.cpu),
        ].compactMap { $0 }
        if !medians.isEmpty { lines.append("  " + medians.joined(separator: ", ")) }
        lines.append("  (* HAProxy ran first in that round; ratios are within a round, medians over the rounds)")
        return lines
    }

    /// Issue 5's figure: the 20-route profile with retries against the plain hop on the same (codec) path, in
    /// req/s and CPU per request — a routed request never takes the spliced path, so comparing with that would
    /// count the codec's cost as routing's.
    private func routingCost() -> String? {
        guard let plain = rows.first(where: { $0.name == Runner.codecName }), let plainResult = plain.result,
            let routed = rows.first(where: { $0.name == Runner.routedName }), let routedResult = routed.result,
            plain.error == nil, routed.error == nil, plainResult.requestsPerSecond > 0
        else { return nil }
        let rate = (routedResult.requestsPerSecond / plainResult.requestsPerSecond - 1) * 100
        var text = String(
            format: "Routing cost (issue 5, 20 regex routes + retries vs the codec-path hop): req/s %+.0f %%", rate)
        if let plainCPU = plain.cpuSecondsPerRequest, let routedCPU = routed.cpuSecondsPerRequest, plainCPU > 0 {
            text += String(
                format: ", CPU per request %+.1f µs (%+.0f %%)", (routedCPU - plainCPU) * 1e6,
                (routedCPU / plainCPU - 1) * 100)
        }
        return text
    }

    /// The plain hop on the spliced path against the same hop on the codec path.
    private func spliceGain() -> String? {
        guard let spliced = rows.first(where: { $0.name == Runner.apusName }), spliced.error == nil,
            let codec = rows.first(where: { $0.name == Runner.codecName }), codec.error == nil,
            let splicedCPU = spliced.cpuSecondsPerRequest, let codecCPU = codec.cpuSecondsPerRequest, codecCPU > 0,
            let splicedRate = spliced.result?.requestsPerSecond, let codecRate = codec.result?.requestsPerSecond,
            codecRate > 0
        else { return nil }
        return String(
            format: "Spliced HTTP/1.1 path vs the codec path (same hop): req/s %+.0f %%, CPU per request %@ vs %@",
            (splicedRate / codecRate - 1) * 100, microseconds(splicedCPU), microseconds(codecCPU))
    }

    private func microseconds(_ seconds: Double) -> String {
        String(format: "%.1f µs", seconds * 1e6)
    }

    private func milliseconds(_ value: Double) -> String {
        value < 1 ? String(format: "%.0f µs", value * 1000) : String(format: "%.2f ms", value)
    }

    private func ratio(_ value: Double, _ reference: Double?) -> String {
        guard let reference, reference > 0 else { return "—" }
        return String(format: "%.2f", value / reference)
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }

    private func lpad(_ text: String, _ width: Int) -> String {
        text.count >= width ? " " + text : String(repeating: " ", count: width - text.count) + text
    }
}
