import Foundation
import Testing

/// `apus-demo traffic`: the load the demo puts on the mesh, counted the way its summary lines report it.
@Suite struct TrafficTests {
    /// The numbers of a `traffic: total: N requests, M ok, F failed …` line.
    private func totals(in output: String) throws -> (requests: Int, ok: Int, failed: Int) {
        let line = try output.split(separator: "\n").first { $0.hasPrefix("traffic: total: ") }
            .unwrap("'traffic: total:' line in:\n\(output)")
        let numbers = line.split(whereSeparator: { !$0.isNumber && $0 != "." }).compactMap { Int($0) }
        guard numbers.count >= 3 else { throw DemoTestError("unparsable total line '\(line)'") }
        return (numbers[0], numbers[1], numbers[2])
    }

    @Test("sends --rps for --duration through the outbound proxy, reports windows and a total")
    func countsThroughTheProxy() async throws {
        let (world, worldPort) = try await DemoProcess.server("world", environment: ["LATENCY_MS": "0"])
        defer { world.stop() }
        let traffic = try DemoProcess(
            [
                "traffic", "--target", "http://world.booksapp:7101/", "--target", "http://hello.booksapp:7100/",
                "--rps", "40", "--duration", "2s", "--interval", "1s",
            ],
            environment: ["APUS_OUTBOUND_PROXY": "127.0.0.1:\(worldPort)"])
        try await traffic.waitForExit()
        #expect(traffic.exitStatus == 0, "\(traffic.text)")
        let total = try totals(in: traffic.text)
        #expect((70...82).contains(total.requests), "40 rps for 2 s:\n\(traffic.text)")
        #expect(total.ok == total.requests)
        #expect(total.failed == 0)
        #expect(traffic.text.contains("traffic: last 1.0 seconds: "), "a line per interval:\n\(traffic.text)")
        #expect(traffic.text.contains("through the outbound proxy 127.0.0.1:\(worldPort)"))
        // Every request reached the server the proxy variable names, whatever the target host was.
        let served = world.text.split(separator: "\n").filter { $0.contains("GET / 200") }.count
        #expect(served == total.requests)
    }

    @Test("failures are counted by status, and a target that does not answer counts as 'no response'")
    func countsFailures() async throws {
        let (failing, port) = try await DemoProcess.server(
            "world", environment: ["ERROR_RATE": "1", "LATENCY_MS": "0"])
        defer { failing.stop() }
        let traffic = try DemoProcess([
            "traffic", "--target", "http://127.0.0.1:\(port)/", "--target", "http://127.0.0.1:1/", "--rps", "20",
            "--duration", "1s",
        ])
        try await traffic.waitForExit()
        let total = try totals(in: traffic.text)
        #expect((17...22).contains(total.requests), "\(traffic.text)")
        #expect(total.ok == 0)
        #expect(total.failed == total.requests)
        #expect(traffic.text.contains("HTTP 500: "), "\(traffic.text)")
        #expect(traffic.text.contains("no response: "), "\(traffic.text)")
    }

    @Test("bad flags are refused with a message")
    func badFlags() async throws {
        for arguments in [
            ["traffic", "--rps", "5"], ["traffic", "--target", "ftp://x/", "--rps", "5"],
            ["traffic", "--target", "http://x/", "--rps", "0"],
            ["traffic", "--target", "http://x/", "--duration", "soon"],
        ] {
            let process = try DemoProcess(arguments)
            try await process.waitForExit()
            #expect(process.exitStatus != 0, "\(arguments)")
            #expect(process.text.contains("Error"), "\(arguments): \(process.text)")
        }
    }
}
