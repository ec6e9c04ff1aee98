#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The standard `process_*` gauges and counters (the names every Prometheus client library exports), read at
/// scrape time from `/proc/self` on Linux, which is what Linkerd's proxy reports too.
struct ProcessMetrics: Sendable {
    var startTimeSeconds: Double?
    var cpuSeconds: Double?
    var residentBytes: UInt64?
    var virtualBytes: UInt64?
    var openFDs: Int?
    var maxFDs: UInt64?

    static func current() -> ProcessMetrics {
        var metrics = ProcessMetrics()
        var limit = rlimit()
        if getrlimit(resourceNoFile, &limit) == 0 { metrics.maxFDs = UInt64(limit.rlim_cur) }
        #if os(Linux)
            readProcStat(into: &metrics)
            metrics.openFDs = countOpenFDs()
        #else
            var usage = rusage()
            if getrusage(RUSAGE_SELF, &usage) == 0 {
                metrics.cpuSeconds =
                    Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
                    + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
            }
        #endif
        return metrics
    }

    #if canImport(Glibc)
        private static let resourceNoFile = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
        private static let resourceNoFile = RLIMIT_NOFILE
    #endif

    #if os(Linux)
        /// `/proc/self/stat` fields 14–15 (CPU ticks), 22 (start, ticks after boot), 23 (virtual bytes) and 24
        /// (resident pages); the fields are counted after the parenthesised command name, which may hold spaces.
        private static func readProcStat(into metrics: inout ProcessMetrics) {
            guard let stat = readFile("/proc/self/stat"), let close = stat.lastIndex(of: ")") else { return }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            // fields[0] is field 3 (state).
            func field(_ number: Int) -> UInt64? {
                let index = number - 3
                return index < fields.count ? UInt64(fields[index]) : nil
            }
            let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
            let pageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))
            guard ticks > 0 else { return }
            if let user = field(14), let system = field(15) { metrics.cpuSeconds = Double(user + system) / ticks }
            if let virtual = field(23) { metrics.virtualBytes = virtual }
            if let pages = field(24) { metrics.residentBytes = pages * pageSize }
            if let start = field(22), let bootTime = bootTimeSeconds() {
                metrics.startTimeSeconds = Double(bootTime) + Double(start) / ticks
            }
        }

        private static func bootTimeSeconds() -> UInt64? {
            guard let stat = readFile("/proc/stat") else { return nil }
            for line in stat.split(separator: "\n") where line.hasPrefix("btime ") {
                return UInt64(line.dropFirst("btime ".count).trimmingConfigWhitespace())
            }
            return nil
        }

        private static func countOpenFDs() -> Int? {
            guard let directory = opendir("/proc/self/fd") else { return nil }
            defer { closedir(directory) }
            var count = 0
            while let entry = readdir(directory) {
                let isDot = withUnsafeBytes(of: entry.pointee.d_name) { name in
                    name[0] == UInt8(ascii: ".") && (name[1] == 0 || (name[1] == UInt8(ascii: ".") && name[2] == 0))
                }
                if !isDot { count += 1 }
            }
            // The directory stream itself holds one descriptor while we count.
            return max(count - 1, 0)
        }

        /// Reads a whole file with plain syscalls: `/proc` files report size 0, so size-first readers get nothing.
        private static func readFile(_ path: String) -> String? {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0, errno == EINTR { continue }
                guard count > 0 else { break }
                bytes.append(contentsOf: chunk[0..<count])
            }
            return String(decoding: bytes, as: UTF8.self)
        }
    #endif
}
