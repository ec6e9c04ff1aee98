import Foundation

/// Number formats of the benchmark tables, so every benchmark prints the same units the same way.
public enum Format {
    /// `1.234 s`
    public static func seconds(_ value: Double) -> String { String(format: "%.3f s", value) }

    /// `12,345 <unit>`, rounded to whole units.
    public static func rate(_ value: Double, _ unit: String) -> String {
        grouped(Int(value.rounded())) + " " + unit
    }

    /// `client CPU 1.23 cores`
    public static func cores(_ value: Double) -> String { String(format: "client CPU %.2f cores", value) }

    /// A fraction as a whole percentage: `0.5` is `50 %`.
    public static func percent(_ value: Double) -> String { String(format: "%.0f %%", value * 100) }

    /// `12.3 MiB`
    public static func mebibytes(_ bytes: Double) -> String { String(format: "%.1f MiB", bytes / 1_048_576) }

    /// `12.3 MiB`
    public static func mebibytes(_ bytes: Int) -> String { mebibytes(Double(bytes)) }

    /// Thousands separated by commas: `-1234567` is `-1,234,567`.
    public static func grouped(_ value: Int) -> String {
        let digits = Array(String(abs(value)))
        var out = ""
        for (offset, digit) in digits.enumerated() {
            if offset > 0, (digits.count - offset) % 3 == 0 { out.append(",") }
            out.append(digit)
        }
        return (value < 0 ? "-" : "") + out
    }
}

/// The machine a run measured, printed at the head of every report: the figures mean little without it.
public struct Machine: Encodable, Sendable {
    public var cores = ProcessInfo.processInfo.activeProcessorCount
    public var cpu = Machine.cpuModel()
    public var os = ProcessInfo.processInfo.operatingSystemVersionString
    public var swift = Machine.swiftVersion()
    public var build = Machine.buildMode
    /// 1-minute load average when the run started: other work on the machine skews every figure.
    public var loadAverage = Machine.loadAverage()

    public init() {}

    #if DEBUG
        public static let buildMode = "debug"
    #else
        public static let buildMode = "release"
    #endif

    public static func loadAverage() -> String {
        let text = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? ""
        return text.split(separator: " ").first.map(String.init) ?? "unknown"
    }

    public static func cpuModel() -> String {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown CPU" }
        for line in info.split(separator: "\n") where line.hasPrefix("model name") {
            if let colon = line.firstIndex(of: ":") {
                return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return "unknown CPU"
    }

    /// The toolchain on PATH (`swift --version`), which `swift run` used to build this binary; falls back to the
    /// compiler version this binary was built with when no toolchain is on PATH.
    public static func swiftVersion() -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["swift", "--version"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        if (try? process.run()) != nil {
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            if process.terminationStatus == 0,
                let first = String(decoding: data, as: UTF8.self).split(separator: "\n").first(where: {
                    $0.contains("Swift version")
                })
            {
                return first.trimmingCharacters(in: .whitespaces)
            }
        }
        #if compiler(>=6.3)
            return "Swift compiler >= 6.3"
        #elseif compiler(>=6.2)
            return "Swift compiler 6.2"
        #elseif compiler(>=6.1)
            return "Swift compiler 6.1"
        #else
            return "Swift compiler 6.0"
        #endif
    }
}
