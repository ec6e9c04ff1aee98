import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#endif

/// A benchmark failure; printed as `error: <message>` and turned into exit status 1.
struct BenchmarkError: Error, CustomStringConvertible {
    let message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

/// Resident memory of this process, from the kernel's own accounting.
enum Memory {
    /// `VmRSS` of `/proc/self/status`, in bytes.
    static func residentBytes() throws -> Int {
        let status: String
        do {
            status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        } catch {
            throw BenchmarkError("cannot read /proc/self/status (RSS is measured on Linux only): \(error)")
        }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 2, let kibibytes = Int(fields[1]) { return kibibytes * 1024 }
        }
        throw BenchmarkError("/proc/self/status has no parsable VmRSS line")
    }

    /// Returns freed heap pages to the kernel (glibc `malloc_trim(0)`), so RSS shows live data rather than the
    /// allocator's high-water mark. Looked up dynamically because Glibc's Swift module does not export it.
    /// - Returns: whether the call was available.
    @discardableResult
    static func trimHeap() -> Bool {
        #if canImport(Glibc)
            typealias MallocTrim = @convention(c) (Int) -> Int32
            guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return false }
            _ = unsafeBitCast(symbol, to: MallocTrim.self)(0)
            return true
        #else
            return false
        #endif
    }
}

/// CPU time this process has used so far (all threads, user + system), from `getrusage`.
enum ProcessCPU {
    static func seconds() -> Double {
        #if canImport(Glibc)
            var usage = rusage()
            guard getrusage(RUSAGE_SELF.rawValue, &usage) == 0 else { return 0 }
            func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
            return seconds(usage.ru_utime) + seconds(usage.ru_stime)
        #else
            return 0
        #endif
    }
}

/// Newline-delimited reading of a pipe without blocking Swift's cooperative thread pool (the reads block a
/// Dispatch thread instead, which matters on a 2-core machine where the pool has two threads).
final class LineReader: Sendable {
    private let handle: FileHandle
    private let buffer = NIOLockedValueBox<[UInt8]>([])
    private let queue: DispatchQueue

    init(_ handle: FileHandle, label: String) {
        self.handle = handle
        self.queue = DispatchQueue(label: label)
    }

    /// The next line without its newline, or nil at end of file.
    func next() async -> String? {
        await withCheckedContinuation { continuation in
            queue.async { continuation.resume(returning: self.nextBlocking()) }
        }
    }

    private func nextBlocking() -> String? {
        while true {
            let line: String?? = buffer.withLockedValue { bytes in
                guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) else { return .none }
                let line = String(decoding: bytes[..<newline], as: UTF8.self)
                bytes.removeSubrange(...newline)
                return .some(line)
            }
            if let line { return line }
            let data = handle.availableData
            if data.isEmpty {
                // End of file: a last line without a newline still counts.
                let rest = buffer.withLockedValue { bytes in
                    defer { bytes.removeAll() }
                    return bytes
                }
                return rest.isEmpty ? nil : String(decoding: rest, as: UTF8.self)
            }
            buffer.withLockedValue { $0.append(contentsOf: data) }
        }
    }
}

/// Writes one line of JSON to a pipe (unbuffered, so the peer sees it at once).
func writeJSONLine(_ value: some Encodable, to handle: FileHandle) throws {
    var data = try JSONEncoder().encode(value)
    data.append(UInt8(ascii: "\n"))
    try handle.write(contentsOf: data)
}

/// Polls `condition` every few milliseconds until it holds.
/// - Throws: ``BenchmarkError`` naming `what` after `timeout`.
func waitUntil(_ what: String, timeout: Duration, _ condition: () throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try !condition() {
        guard ContinuousClock.now < deadline else {
            throw BenchmarkError("timed out after \(timeout) waiting for \(what)")
        }
        try await Task.sleep(for: .milliseconds(5))
    }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for the whole machine, so a time stamped by the server child when it
/// writes and one taken here when a subscriber wakes can be subtracted.
enum MonotonicClock {
    static func nanoseconds() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }
}

// MARK: - Messages between the benchmark and its server child (one JSON object per line)

/// What the child prints once the server is up and seeded.
struct ChildReady: Codable, Sendable {
    var baseURL: String
    var token: String
    var caCertificatePEM: String
    var averagePodJSONBytes: Int
    var averageSliceJSONBytes: Int
    var seedSeconds: Double
    var residentBytes: Int
}

/// A request to the child.
struct ChildCommand: Codable, Sendable {
    enum Operation: String, Codable, Sendable {
        /// Flip the `ready` condition of the first endpoint in Service `service`'s EndpointSlice (change number
        /// `sequence`: even makes it not ready, odd ready again).
        case flip
        /// Report the child's RSS.
        case memory
        case quit
    }

    var operation: Operation
    var service = 0
    var sequence = 0
}

/// The child's answer to a ``ChildCommand``.
struct ChildReply: Codable, Sendable {
    var ok: Bool
    var error: String?
    /// ``MonotonicClock`` just before the write was handed to the server (the change's start).
    var writtenAt: Int64?
    var residentBytes: Int?
}
