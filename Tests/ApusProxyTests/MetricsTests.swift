import ApusCore
import Foundation
import Testing

@testable import ApusProxy

@Suite("Proxy metrics: Linkerd's families in the Prometheus text format")
struct MetricsTests {
    static let serverID = "web.shop.serviceaccount.identity.apus.cluster.local"
    static let outboundLabels = HTTPTrafficLabels(
        direction: .outbound, authority: "web.shop.svc.cluster.local:80", targetAddress: "10.0.0.1:8080",
        tls: .tls(peer: serverID), destination: ["namespace": "shop", "pod": "web-0", "dst_service": "web"])
    static let outboundSeries =
        #"direction="outbound",authority="web.shop.svc.cluster.local:80",target_addr="10.0.0.1:8080",tls="true","#
        + #"server_id="web.shop.serviceaccount.identity.apus.cluster.local",dst_namespace="shop",dst_pod="web-0","#
        + #"dst_service="web""#

    /// The sample lines of `text` for metric `name` (exact name, any labels).
    static func samples(_ text: String, _ name: String) -> [String] {
        text.split(separator: "\n").map(String.init).filter {
            $0.hasPrefix(name + "{") || $0.hasPrefix(name + " ")
        }
    }

    @Test("request and response counters carry Linkerd's labels and classification")
    func httpCounters() {
        let metrics = ProxyMetrics()
        let http = metrics.http(Self.outboundLabels)
        #expect(metrics.http(Self.outboundLabels) === http, "the same labels give the same handle")
        for _ in 0..<4 { http.requestStarted() }
        http.responded(statusCode: 200, grpcStatus: nil, latencyToFirstByteNanos: 1_500_000)
        http.responded(statusCode: 200, grpcStatus: nil, latencyToFirstByteNanos: 700_000)
        http.responded(statusCode: 503, grpcStatus: nil, latencyToFirstByteNanos: 25_000_000)
        http.responded(statusCode: 200, grpcStatus: 14, latencyToFirstByteNanos: 3_000_000)
        let text = metrics.render()
        let series = Self.outboundSeries
        #expect(Self.samples(text, "request_total") == ["request_total{\(series)} 4"])
        #expect(
            Self.samples(text, "response_total") == [
                #"response_total{\#(series),classification="success",status_code="200"} 2"#,
                #"response_total{\#(series),classification="failure",grpc_status_code="14",status_code="200"} 1"#,
                #"response_total{\#(series),classification="failure",status_code="503"} 1"#,
            ])
        #expect(text.contains("# TYPE request_total counter\n"))
        #expect(text.contains("# TYPE response_total counter\n"))
        #expect(text.contains("# TYPE response_latency_ms histogram\n"))
    }

    @Test("the latency histogram has Linkerd's bucket bounds, cumulative counts, a sum in ms and a count")
    func histogram() {
        let metrics = ProxyMetrics()
        let http = metrics.http(Self.outboundLabels)
        // 0.7 ms and exactly 1 ms land in le="1"; 1.5 ms in le="2"; 45 ms in le="50"; 60 s beyond the last bound.
        for nanos: UInt64 in [700_000, 1_000_000, 1_500_000, 45_000_000, 60_000_000_000] {
            http.responded(statusCode: 200, grpcStatus: nil, latencyToFirstByteNanos: nanos)
        }
        let text = metrics.render()
        let base = Self.outboundSeries + #",status_code="200""#
        let buckets = Self.samples(text, "response_latency_ms_bucket")
        let expectedBounds = [
            "1", "2", "3", "4", "5", "10", "20", "30", "40", "50", "100", "200", "300", "400", "500", "1000", "2000",
            "3000", "4000", "5000", "10000", "20000", "30000", "40000", "50000", "+Inf",
        ]
        #expect(buckets.count == expectedBounds.count)
        let expectedCounts = [2, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5]
        for (index, bound) in expectedBounds.enumerated() where index < buckets.count {
            #expect(buckets[index] == #"response_latency_ms_bucket{\#(base),le="\#(bound)"} \#(expectedCounts[index])"#)
        }
        #expect(Self.samples(text, "response_latency_ms_count") == ["response_latency_ms_count{\(base)} 5"])
        #expect(Self.samples(text, "response_latency_ms_sum") == ["response_latency_ms_sum{\(base)} 60048.2"])
    }

    @Test("inbound series name the client identity, or say why there was no TLS")
    func inboundTLSLabels() {
        let metrics = ProxyMetrics()
        metrics.http(
            HTTPTrafficLabels(
                direction: .inbound, targetAddress: "127.0.0.1:8080",
                tls: .tls(peer: "client.shop.serviceaccount.identity.apus.cluster.local"))
        ).requestStarted()
        metrics.http(
            HTTPTrafficLabels(
                direction: .inbound, targetAddress: "127.0.0.1:8080", tls: .none(reason: "not_provided_by_remote"))
        ).requestStarted()
        let requests = Self.samples(metrics.render(), "request_total")
        #expect(
            requests == [
                #"request_total{direction="inbound",target_addr="127.0.0.1:8080",tls="no_identity","#
                    + #"no_tls_reason="not_provided_by_remote"} 1"#,
                #"request_total{direction="inbound",target_addr="127.0.0.1:8080",tls="true","#
                    + #"client_id="client.shop.serviceaccount.identity.apus.cluster.local"} 1"#,
            ])
    }

    @Test("label values are escaped; metadata keys become valid, unique label names")
    func escaping() {
        let metrics = ProxyMetrics()
        metrics.http(
            HTTPTrafficLabels(
                direction: .outbound, authority: "we\"ird\\host\nname:80", targetAddress: "10.0.0.1:80",
                tls: .none(reason: "no_identity"),
                destination: ["app.kubernetes.io/name": "web", "pod": "a", "dst_pod": "b", "9lives": "x"])
        ).requestStarted()
        let line = Self.samples(metrics.render(), "request_total").first ?? ""
        #expect(line.contains(#"authority="we\"ird\\host\nname:80""#))
        #expect(line.contains(#"dst_app_kubernetes_io_name="web""#))
        #expect(line.contains(#"dst_9lives="x""#))
        // `dst_pod` (given as is) and `pod` (prefixed) collide: the first in key order wins, once.
        #expect(line.components(separatedBy: "dst_pod=").count == 2)
        #expect(PrometheusText.sanitizedLabelName("__reserved") == "_reserved")
        #expect(PrometheusText.sanitizedLabelName("9x") == "_x")
        #expect(PrometheusText.escapeHelp("a\\b\nc") == "a\\\\b\\nc")
    }

    @Test("TCP series count opens, closes by classification, bytes, and the open-connections gauge")
    func tcp() {
        let metrics = ProxyMetrics()
        let labels = TCPTrafficLabels(
            direction: .inbound, peer: .source,
            tls: .tls(peer: "client.shop.serviceaccount.identity.apus.cluster.local"),
            targetAddress: "127.0.0.1:6379")
        let tcp = metrics.tcp(labels)
        for _ in 0..<3 { tcp.opened() }
        tcp.read(100)
        tcp.read(50)
        tcp.wrote(4096)
        tcp.closed(error: nil)
        tcp.closed(error: "connection reset by peer")
        let text = metrics.render()
        let series =
            #"direction="inbound",peer="src",target_addr="127.0.0.1:6379",tls="true","#
            + #"client_id="client.shop.serviceaccount.identity.apus.cluster.local""#
        #expect(Self.samples(text, "tcp_open_total") == ["tcp_open_total{\(series)} 3"])
        #expect(Self.samples(text, "tcp_open_connections") == ["tcp_open_connections{\(series)} 1"])
        #expect(Self.samples(text, "tcp_read_bytes_total") == ["tcp_read_bytes_total{\(series)} 150"])
        #expect(Self.samples(text, "tcp_write_bytes_total") == ["tcp_write_bytes_total{\(series)} 4096"])
        #expect(
            Self.samples(text, "tcp_close_total") == [
                #"tcp_close_total{\#(series),classification="success"} 1"#,
                #"tcp_close_total{\#(series),classification="failure"} 1"#,
            ])
        #expect(text.contains("# TYPE tcp_open_connections gauge\n"))
    }

    @Test("proxy errors are counted per direction and reason")
    func httpErrors() {
        let metrics = ProxyMetrics()
        metrics.httpError(direction: .outbound, reason: "connect timeout")
        metrics.httpError(direction: .outbound, reason: "connect timeout")
        metrics.httpError(direction: .inbound, reason: "unexpected")
        let text = metrics.render()
        #expect(
            Self.samples(text, "outbound_http_errors_total") == [
                #"outbound_http_errors_total{error="connect timeout"} 2"#
            ])
        #expect(
            Self.samples(text, "inbound_http_errors_total") == [#"inbound_http_errors_total{error="unexpected"} 1"#])
    }

    @Test("process metrics come from /proc/self and build info names the Apus version")
    func processAndBuildInfo() throws {
        let text = ProxyMetrics().render()
        func value(_ name: String) throws -> Double {
            let line = try #require(Self.samples(text, name).first, "\(name) missing")
            return try #require(Double(line.split(separator: " ").last ?? ""), "\(line)")
        }
        let now = Date().timeIntervalSince1970
        let start = try value("process_start_time_seconds")
        #expect(start > now - 86400 * 30 && start <= now + 1)
        #expect(try value("process_cpu_seconds_total") > 0)
        #if os(Linux)
            #expect(try value("process_resident_memory_bytes") > 1_000_000)
            #expect(try value("process_virtual_memory_bytes") >= (try value("process_resident_memory_bytes")))
            #expect(try value("process_open_fds") >= 3)
        #endif
        #expect(try value("process_max_fds") >= (try value("process_open_fds")))
        let build = try #require(Self.samples(text, "proxy_build_info").first)
        #expect(build.contains(#"version="\#(ApusVersion.current)""#))
        #expect(build.hasSuffix(" 1"))
    }

    @Test("every family has exactly one HELP and one TYPE, before its samples")
    func familyHeaders() {
        let metrics = ProxyMetrics()
        let http = metrics.http(Self.outboundLabels)
        http.requestStarted()
        http.responded(statusCode: 200, grpcStatus: nil, latencyToFirstByteNanos: 1)
        metrics.tcp(
            TCPTrafficLabels(
                direction: .outbound, peer: .destination, tls: .none(reason: "loopback"),
                targetAddress: "10.0.0.1:80")
        ).opened()
        metrics.httpError(direction: .inbound, reason: "unexpected")
        let lines = metrics.render().split(separator: "\n").map(String.init)
        var seen: Set<String> = []
        var current: String?
        for line in lines {
            if line.hasPrefix("# HELP ") {
                let name = String(line.dropFirst(7).prefix { $0 != " " })
                #expect(seen.insert(name).inserted, "HELP for \(name) twice")
                current = name
            } else if line.hasPrefix("# TYPE ") {
                #expect(line.dropFirst(7).hasPrefix((current ?? "?") + " "), "TYPE not after its HELP: \(line)")
            } else {
                let name = String(line.prefix { $0 != "{" && $0 != " " })
                let family = current ?? ""
                #expect(
                    name == family || name == family + "_bucket" || name == family + "_sum"
                        || name == family + "_count", "\(name) outside its family \(family)")
            }
        }
        for family in [
            "request_total", "response_total", "response_latency_ms", "tcp_open_total", "tcp_close_total",
            "inbound_http_errors_total", "process_start_time_seconds", "proxy_build_info",
        ] {
            #expect(seen.contains(family), "\(family) missing")
        }
    }

    @Test("more response classes than inline slots are all counted (overflow table)")
    func responseClassOverflow() {
        let metrics = ProxyMetrics()
        let http = metrics.http(Self.outboundLabels)
        let statuses = [200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 409, 429, 500, 502, 503]
        for status in statuses {
            for _ in 0..<2 { http.responded(statusCode: status, grpcStatus: nil, latencyToFirstByteNanos: 10) }
        }
        let responses = Self.samples(metrics.render(), "response_total")
        #expect(responses.count == statuses.count)
        for status in statuses {
            let line = responses.first { $0.contains(#"status_code="\#(status)""#) }
            #expect(line?.hasSuffix(" 2") == true, "status \(status): \(line ?? "missing")")
            #expect(line?.contains(status >= 500 ? "failure" : "success") == true)
        }
    }

    @Test("concurrent updates from many threads lose nothing")
    func concurrentUpdates() async {
        let metrics = ProxyMetrics()
        let http = metrics.http(Self.outboundLabels)
        let tasks = 8
        let perTask = 5000
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    for index in 0..<perTask {
                        http.requestStarted()
                        // Two classes per task so slots are claimed concurrently too.
                        http.responded(
                            statusCode: 200 + (task + index) % 2, grpcStatus: nil, latencyToFirstByteNanos: 2_000_000)
                    }
                }
            }
        }
        let text = metrics.render()
        #expect(Self.samples(text, "request_total") == ["request_total{\(Self.outboundSeries)} \(tasks * perTask)"])
        let responses = Self.samples(text, "response_total")
        #expect(responses.count == 2)
        #expect(responses.allSatisfy { $0.hasSuffix(" \(tasks * perTask / 2)") }, "\(responses)")
    }

    @Test("idle series expire only when unchanged for retainIdle and no handle is held")
    func idleExpiry() async throws {
        let metrics = ProxyMetrics(retainIdle: .milliseconds(100))
        func labels(_ target: String) -> HTTPTrafficLabels {
            HTTPTrafficLabels(direction: .outbound, authority: "a:80", targetAddress: target, tls: .none(reason: "x"))
        }
        metrics.http(labels("10.0.0.1:80")).requestStarted()  // released at once
        let held = metrics.http(labels("10.0.0.2:80"))  // a connection keeps it
        held.requestStarted()
        let busy = labels("10.0.0.3:80")
        metrics.http(busy).requestStarted()
        let tcpLabels = TCPTrafficLabels(
            direction: .inbound, peer: .source, tls: .none(reason: "x"),
            targetAddress: "127.0.0.1:1")
        metrics.tcp(tcpLabels).opened()
        #expect(metrics.seriesCount == 4)

        metrics.sweep()  // records the current activity
        for _ in 0..<3 {
            try await Task.sleep(for: .milliseconds(60))
            metrics.http(busy).requestStarted()  // keeps changing
            metrics.sweep()
        }
        let text = metrics.render()
        #expect(!text.contains("10.0.0.1:80"), "idle, unreferenced series still rendered")
        #expect(text.contains("10.0.0.2:80"), "a held handle's series must stay")
        #expect(text.contains("10.0.0.3:80"), "an active series must stay")
        #expect(!text.contains("127.0.0.1:1"), "idle TCP series still rendered")
        #expect(metrics.seriesCount == 2)

        // A series that comes back starts from zero.
        metrics.http(labels("10.0.0.1:80")).requestStarted()
        #expect(
            Self.samples(metrics.render(), "request_total").contains {
                $0.contains("10.0.0.1:80") && $0.hasSuffix(" 1")
            })
        held.requestStarted()
        #expect(
            Self.samples(metrics.render(), "request_total").contains {
                $0.contains("10.0.0.2:80") && $0.hasSuffix(" 2")
            })
    }

    @Test("promtool check metrics accepts the whole exposition")
    func promtool() throws {
        let metrics = ProxyMetrics()
        let http = metrics.http(Self.outboundLabels)
        http.requestStarted()
        http.responded(statusCode: 200, grpcStatus: 0, latencyToFirstByteNanos: 3_000_000)
        http.responded(statusCode: 502, grpcStatus: nil, latencyToFirstByteNanos: 1_000_000_000)
        metrics.http(
            HTTPTrafficLabels(
                direction: .inbound, authority: "odd\"value\\\n", targetAddress: "127.0.0.1:80",
                tls: .none(reason: "not_provided_by_remote"))
        ).requestStarted()
        let tcp = metrics.tcp(
            TCPTrafficLabels(
                direction: .outbound, peer: .destination, tls: .tls(peer: Self.serverID),
                targetAddress: "10.0.0.1:8080"))
        tcp.opened()
        tcp.wrote(10)
        tcp.closed(error: "reset")
        metrics.httpError(direction: .outbound, reason: "connect timeout")
        try Promtool.check(metrics.render())
    }
}

/// `promtool check metrics` (Debian's `prometheus` package; `.ci/run` installs it) is the reference parser and
/// linter for the exposition format. A missing promtool fails the test rather than skipping it, so CI can never
/// pass without the check; set `APUS_SKIP_PROMTOOL=1` to skip deliberately on a machine without it.
enum Promtool {
    static func check(_ exposition: String) throws {
        let candidates = ["/usr/bin/promtool", "/usr/local/bin/promtool", "/opt/homebrew/bin/promtool"]
        guard let promtool = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            if ProcessInfo.processInfo.environment["APUS_SKIP_PROMTOOL"] == "1" { return }
            Issue.record("promtool not found (apt-get install prometheus, or APUS_SKIP_PROMTOOL=1 to skip)")
            return
        }
        // Files rather than pipes: Foundation's pipe reader traps on EINTR, which a busy test process sees.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("apus-promtool-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let inputURL = directory.appendingPathComponent("metrics.txt")
        let outputURL = directory.appendingPathComponent("report.txt")
        try Data(exposition.utf8).write(to: inputURL)
        try Data().write(to: outputURL)
        let input = try FileHandle(forReadingFrom: inputURL)
        let output = try FileHandle(forWritingTo: outputURL)
        defer {
            try? input.close()
            try? output.close()
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: promtool)
        process.arguments = ["check", "metrics"]
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        process.waitUntilExit()
        let report = String(decoding: try Data(contentsOf: outputURL), as: UTF8.self)
        // Exit 1: parse error; 3: lint findings. The one finding tolerated is the name `response_latency_ms` (and
        // its `route_` / `route_actual_` forms): promtool prefers base units, but Linkerd's dashboards and
        // `linkerd viz` query exactly these names.
        let findings = report.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        let tolerated = findings.allSatisfy { finding in
            ["", "route_", "route_actual_"].contains {
                finding == $0 + "response_latency_ms metric names should not contain abbreviated units"
            }
        }
        #expect(
            process.terminationStatus == 0 || (process.terminationStatus == 3 && tolerated),
            "promtool check metrics (exit \(process.terminationStatus)): \(report)")
    }
}
