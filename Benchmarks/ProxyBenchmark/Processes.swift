import BenchmarkSupport
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A server the benchmark starts (nginx, HAProxy, apus-proxy), its output kept in a log file so an early exit can
/// be explained; stopped with SIGTERM (then SIGKILL) when the row is done.
final class ServerProcess {
    let name: String
    let logPath: String
    private let process: Process

    init(
        name: String, executable: String, arguments: [String], environment: [String: String]? = nil,
        logDirectory: String
    )
        throws
    {
        self.name = name
        logPath = "\(logDirectory)/\(name.replacingOccurrences(of: " ", with: "-")).log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        guard let log = FileHandle(forWritingAtPath: logPath) else {
            throw BenchmarkError("cannot create the log file \(logPath)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw BenchmarkError("cannot start \(name) (\(executable)): \(error)")
        }
        self.process = process
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// The last lines the process wrote, for error messages.
    func logTail(lines: Int = 12) -> String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(lines).map { "    \($0)" }.joined(separator: "\n")
    }

    /// Fails with the log tail when the process has exited.
    func checkRunning() throws {
        guard process.isRunning else {
            throw BenchmarkError(
                "\(name) exited with status \(process.terminationStatus); its last output:\n\(logTail())")
        }
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL; both by this process's own pid.
    func stop() async {
        guard process.isRunning else { return }
        process.terminate()
        let deadline = ContinuousClock.now + .seconds(5)
        while process.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

/// Resident memory of another process and its children (nginx's master + workers), from `/proc/<pid>/status`.
enum ProcessMemory {
    struct Sample: Encodable {
        /// `VmRSS`: resident now.
        var residentBytes: Int
        /// `VmHWM`: the peak resident size since the process started.
        var peakBytes: Int
    }

    static func sample(pid: Int32, includingChildren: Bool) throws -> Sample {
        var pids = [pid]
        if includingChildren { pids += children(of: pid) }
        var total = Sample(residentBytes: 0, peakBytes: 0)
        for pid in pids {
            let status: String
            do {
                status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
            } catch {
                throw BenchmarkError("cannot read /proc/\(pid)/status (has the process exited?): \(error)")
            }
            total.residentBytes += field("VmRSS:", in: status)
            total.peakBytes += field("VmHWM:", in: status)
        }
        return total
    }

    private static func field(_ name: String, in status: String) -> Int {
        for line in status.split(separator: "\n") where line.hasPrefix(name) {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 2, let kibibytes = Int(fields[1]) { return kibibytes * 1024 }
        }
        return 0
    }

    /// Pids whose parent is `pid` (field 4 of `/proc/<pid>/stat`, after the parenthesized command name).
    static func children(of pid: Int32) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { entry -> Int32? in
            guard let child = Int32(entry),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 1, Int32(fields[1]) == pid else { return nil }
            return child
        }
    }
}

/// CPU time (user + system) of other processes, from `/proc/<pid>/stat`: the proxies' cost per request, which on
/// 2 shared cores is steadier than req/s (wrk, the backend and the proxy compete for the same cores, so a rate moves
/// with whatever else runs; the CPU one request costs does not).
enum ProcessCPU {
    static func seconds(pids: [Int32]) throws -> Double {
        let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))
        var ticks = 0
        for pid in pids {
            let stat: String
            do {
                stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
            } catch {
                throw BenchmarkError("cannot read /proc/\(pid)/stat (has the process exited?): \(error)")
            }
            // Fields after the parenthesized command name: state is the 1st, utime the 12th, stime the 13th.
            guard let close = stat.lastIndex(of: ")") else { throw BenchmarkError("unreadable /proc/\(pid)/stat") }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else {
                throw BenchmarkError("unreadable /proc/\(pid)/stat")
            }
            ticks += user + system
        }
        return Double(ticks) / ticksPerSecond
    }
}

/// Small network helpers: free ports and a plain HTTP/1.1 GET that reports the status line and headers.
enum Network {
    /// A port that was free a moment ago on 127.0.0.1.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BenchmarkError("socket() failed: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let port = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw -> Int? in
                guard bind(fd, raw, length) == 0, getsockname(fd, raw, &length) == 0 else { return nil }
                return Int(UInt16(bigEndian: pointer.pointee.sin_port))
            }
        }
        guard let port else { throw BenchmarkError("cannot find a free port on 127.0.0.1: errno \(errno)") }
        return port
    }

    /// `count` distinct free ports.
    static func freePorts(_ count: Int) throws -> [Int] {
        var ports: [Int] = []
        while ports.count < count {
            let port = try freePort()
            if !ports.contains(port) { ports.append(port) }
        }
        return ports
    }

    struct Response {
        var status: Int
        /// The response head (status line and headers), for error messages.
        var head: String
    }

    /// One `GET path` to 127.0.0.1:`port` with `Host: host`, closing after the response head; nil when nothing
    /// listens or no response head arrives within `timeout`.
    static func get(port: Int, host: String, path: String = "/", timeout: Duration = .seconds(2)) -> Response? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var time = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard connected else { return nil }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else { return nil }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while received.count < 65536 {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { break }
            received += buffer[..<count]
            if String(decoding: received, as: UTF8.self).contains("\r\n\r\n") { break }
        }
        let text = String(decoding: received, as: UTF8.self)
        let head = text.components(separatedBy: "\r\n\r\n").first ?? text
        let parts = head.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let status = Int(parts[1]) else { return nil }
        return Response(status: status, head: head)
    }

    /// Waits until a GET through 127.0.0.1:`port` answers anything (the server is up), or `process` exits.
    static func waitUntilAnswering(
        port: Int, host: String, process: ServerProcess, timeout: Duration = .seconds(15)
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while get(port: port, host: host, timeout: .milliseconds(500)) == nil {
            try process.checkRunning()
            guard ContinuousClock.now < deadline else {
                throw BenchmarkError(
                    "\(process.name) does not answer HTTP on 127.0.0.1:\(port) after \(timeout); its output:\n"
                        + process.logTail())
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// The external programs, found on PATH (and in /usr/sbin, where Debian puts nginx and haproxy).
struct Tools {
    var nginx: String
    var haproxy: String
    var wrk: String

    static func find() throws -> Tools {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        let directories = path + ["/usr/sbin", "/usr/local/sbin", "/sbin"]
        func locate(_ name: String) -> String? {
            directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
        }
        let found = ["nginx", "haproxy", "wrk"].map { ($0, locate($0)) }
        let missing = found.filter { $0.1 == nil }.map(\.0)
        guard missing.isEmpty, let nginx = found[0].1, let haproxy = found[1].1, let wrk = found[2].1 else {
            throw BenchmarkError(
                "missing \(missing.joined(separator: ", ")); install with: apt-get install -y nginx haproxy wrk")
        }
        return Tools(nginx: nginx, haproxy: haproxy, wrk: wrk)
    }

    /// `apus-proxy`: the given path, else the one built next to this executable.
    static func apusProxy(_ explicit: String?) throws -> String {
        if let explicit {
            guard FileManager.default.isExecutableFile(atPath: explicit) else {
                throw BenchmarkError("--proxy-binary \(explicit) is not an executable file")
            }
            return explicit
        }
        let me =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
        let candidate = URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("apus-proxy").path
        guard FileManager.default.isExecutableFile(atPath: candidate) else {
            throw BenchmarkError(
                "\(candidate) not found; build it first (swift build -c release --product apus-proxy, which "
                    + "`make bench-proxy` does) or pass --proxy-binary")
        }
        return candidate
    }
}
