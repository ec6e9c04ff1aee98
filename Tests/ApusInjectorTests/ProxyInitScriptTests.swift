import Foundation
import Testing

/// `proxy-init/apus-proxy-init.sh` run with `--dry-run` under `/bin/sh`; the rules are compared as text.
@Suite struct ProxyInitScriptTests {
    static let script = Golden.repository.appendingPathComponent("proxy-init/apus-proxy-init.sh").path

    static func run(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = [script] + arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (
            process.terminationStatus, String(decoding: stdout, as: UTF8.self),
            String(decoding: stderr, as: UTF8.self)
        )
    }

    static let base = ["--incoming-proxy-port", "4143", "--outgoing-proxy-port", "4140", "--proxy-uid", "2102"]

    @Test func defaultRules() throws {
        let result = try Self.run(Self.base + ["--inbound-ports-to-ignore", "4190,4191", "--dry-run"])
        #expect(result.status == 0, "\(result.stderr)")
        try Golden.check(result.stdout, "proxy-init/default.rules")
    }

    /// The arguments the injector renders for the every-override pod.
    @Test func skipListsAndSubnets() throws {
        let result = try Self.run([
            "--incoming-proxy-port", "5143", "--outgoing-proxy-port", "5140", "--proxy-uid", "2999",
            "--inbound-ports-to-ignore", "5190,5191,22,9000-9010", "--outbound-ports-to-ignore", "443,6443",
            "--subnets-to-ignore", "10.96.0.0/12,169.254.169.254/32", "--dry-run",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        try Golden.check(result.stdout, "proxy-init/skip-lists.rules")
        let lines = result.stdout.split(separator: "\n")
        // The proxy's own traffic and loopback leave before anything is redirected.
        let uid = try #require(lines.firstIndex { $0.contains("--uid-owner 2999") })
        let loopback = try #require(lines.firstIndex { $0.contains("-o lo") })
        let redirect = try #require(lines.firstIndex { $0.contains("REDIRECT --to-ports 5140") })
        #expect(uid < redirect && loopback < redirect)
        #expect(result.stdout.contains("--dport 9000:9010 "))
    }

    @Test(arguments: [
        (["--incoming-proxy-port", "0"], "--incoming-proxy-port: '0' is not a port"),
        (["--proxy-uid", "0"], "must not run as root"),
        (["--inbound-ports-to-ignore", "22,abc"], "'abc' is not a port"),
        (["--outbound-ports-to-ignore", "9-3"], "'9-3' is not a port range"),
        (["--subnets-to-ignore", "10.0.0.0/40"], "'10.0.0.0/40' is not an IPv4 CIDR"),
        (["--subnets-to-ignore", "256.0.0.1"], "'256.0.0.1' is not an IPv4 CIDR"),
        (["--frobnicate"], "unknown argument '--frobnicate'"),
    ])
    func rejectsBadArguments(extra: [String], message: String) throws {
        // Later flags override earlier ones, so the bad value replaces the valid base value.
        let result = try Self.run(Self.base + extra + ["--dry-run"])
        #expect(result.status != 0)
        #expect(result.stderr.contains(message), "\(result.stderr)")
        #expect(result.stdout.isEmpty)
    }
}
