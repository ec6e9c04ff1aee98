import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#endif

/// A benchmark failure; printed as `error: <message>` and turned into exit status 1.
public struct BenchmarkError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Resident memory of this process, from the kernel's own accounting.
public enum Memory {
    /// `VmRSS` of `/proc/self/status`, in bytes.
    public static func residentBytes() throws -> Int {
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
    public static func trimHeap() -> Bool {
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
public enum ProcessCPU {
    public static func seconds() -> Double {
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

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for the whole machine, so a time stamped by a child process and
/// one taken in the benchmark can be subtracted.
public enum MonotonicClock {
    public static func nanoseconds() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }
}

/// Polls `condition` every few milliseconds until it holds.
/// - Throws: ``BenchmarkError`` naming `what` after `timeout`.
public func waitUntil(_ what: String, timeout: Duration, _ condition: () throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try !condition() {
        guard ContinuousClock.now < deadline else {
            throw BenchmarkError("timed out after \(timeout) waiting for \(what)")
        }
        try await Task.sleep(for: .milliseconds(5))
    }
}

extension Duration {
    /// The duration as fractional seconds, for rates and reports.
    public var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

extension String {
    /// `self` padded on the left to `width` characters (unchanged when already that long).
    public func leftPadded(to width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}
