import Atomics
import Logging
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The proxy's log level, changeable at runtime through `PUT /proxy-log-level` (as Linkerd's is).
///
/// Every ``ProxyLogHandler`` reads the level from here on each log call, so a change applies at once to every
/// logger already created, on every thread. The level is an atomic (a log call that is filtered out costs one
/// relaxed load); the filter text, read only by `GET /proxy-log-level`, sits behind a lock.
public final class LogLevelController: Sendable {
    private let rawLevel: ManagedAtomic<UInt8>
    private let currentFilter: NIOLockedValueBox<LogFilter>

    public init(_ filter: LogFilter = LogFilter(level: .info)) {
        rawLevel = ManagedAtomic(Self.raw(filter.level))
        currentFilter = NIOLockedValueBox(filter)
    }

    public convenience init(level: Logger.Level) {
        self.init(LogFilter(level: level))
    }

    public var level: Logger.Level {
        Self.level(raw: rawLevel.load(ordering: .relaxed))
    }

    /// The filter as last set (its original text, for `GET /proxy-log-level`).
    public var filter: LogFilter {
        currentFilter.withLockedValue { $0 }
    }

    public func set(_ filter: LogFilter) {
        currentFilter.withLockedValue { current in
            current = filter
            rawLevel.store(Self.raw(filter.level), ordering: .relaxed)
        }
    }

    /// Parses and applies a filter in Linkerd's syntax (`debug`, `warn,apus=debug`).
    /// - Throws: ``LogFilterSyntaxError`` and leaves the level unchanged when the text does not parse.
    @discardableResult
    public func set(parsing text: String) throws(LogFilterSyntaxError) -> LogFilter {
        let filter = try LogFilter(parsing: text)
        set(filter)
        return filter
    }

    private static let levels = Logger.Level.allCases

    private static func raw(_ level: Logger.Level) -> UInt8 {
        UInt8(levels.firstIndex(of: level) ?? 0)
    }

    private static func level(raw: UInt8) -> Logger.Level {
        Int(raw) < levels.count ? levels[Int(raw)] : .info
    }
}

/// Where ``ProxyLogHandler`` writes finished lines.
public struct LogOutput: Sendable {
    public let write: @Sendable (String) -> Void

    public init(write: @escaping @Sendable (String) -> Void) {
        self.write = write
    }

    /// Standard error, one `write(2)` per line under a process-wide lock so lines from different threads never
    /// interleave (a pipe only guarantees that for writes up to `PIPE_BUF`).
    public static let standardError = LogOutput { line in writeAll(line, to: 2) }
    public static let standardOutput = LogOutput { line in writeAll(line, to: 1) }

    private static let lock = NIOLock()

    private static func writeAll(_ line: String, to descriptor: Int32) {
        var line = line
        lock.withLock {
            line.withUTF8 { buffer in
                var offset = 0
                while offset < buffer.count {
                    let written = systemWrite(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                    if written < 0, errno == EINTR { continue }
                    guard written > 0 else { return }
                    offset += written
                }
            }
        }
    }
}

/// `write(2)`, at file scope where the name is not shadowed by ``LogOutput/write``.
private func systemWrite(_ descriptor: Int32, _ pointer: UnsafePointer<UInt8>, _ count: Int) -> Int {
    write(descriptor, pointer, count)
}

/// A swift-log handler for the proxy: Linkerd's `plain` and `json` formats, with the level taken from a
/// ``LogLevelController`` so `PUT /proxy-log-level` takes effect without restarting.
///
/// ```swift
/// let controller = LogLevelController(configuration.logFilter)
/// LoggingSystem.bootstrap(ProxyLogHandler.factory(controller: controller, format: configuration.logFormat))
/// ```
///
/// Plain: `2025-01-02T03:04:05.678901Z  INFO apus.proxy: listening address=0.0.0.0:4143`.
/// JSON: `{"timestamp":"…","level":"INFO","target":"apus.proxy","fields":{"message":"listening",
/// "address":"0.0.0.0:4143"}}`, one object per line.
///
/// Setting `logLevel` on one logger pins that logger's level (swift-log's contract); loggers left alone follow
/// the controller.
public struct ProxyLogHandler: LogHandler {
    public let label: String
    public let controller: LogLevelController
    public let format: LogFormat
    public let output: LogOutput
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private var pinnedLevel: Logger.Level?

    public init(
        label: String, controller: LogLevelController, format: LogFormat, output: LogOutput = .standardError,
        metadataProvider: Logger.MetadataProvider? = nil
    ) {
        self.label = label
        self.controller = controller
        self.format = format
        self.output = output
        self.metadataProvider = metadataProvider
    }

    /// The factory for `LoggingSystem.bootstrap`.
    public static func factory(
        controller: LogLevelController, format: LogFormat, output: LogOutput = .standardError
    ) -> @Sendable (String) -> any LogHandler {
        { label in ProxyLogHandler(label: label, controller: controller, format: format, output: output) }
    }

    public var logLevel: Logger.Level {
        get { pinnedLevel ?? controller.level }
        set { pinnedLevel = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        if let error = event.error { merged["error"] = "\(error)" }
        output.write(
            Self.format(
                format, timestamp: Self.timestamp(), level: event.level, label: label,
                message: event.message.description, metadata: merged))
    }

    static func format(
        _ format: LogFormat, timestamp: String, level: Logger.Level, label: String, message: String,
        metadata: Logger.Metadata
    ) -> String {
        let levelName = LogFilter.name(of: level).uppercased()
        let fields = metadata.sorted { $0.key < $1.key }
        switch format {
        case .plain:
            var line = timestamp + " " + String(repeating: " ", count: max(0, 5 - levelName.count)) + levelName
            line += " " + label + ": " + message
            for (key, value) in fields { line += " \(key)=\(value)" }
            return line + "\n"
        case .json:
            var line = "{\"timestamp\":" + JSONText.quoted(timestamp) + ",\"level\":" + JSONText.quoted(levelName)
            line += ",\"target\":" + JSONText.quoted(label) + ",\"fields\":{\"message\":" + JSONText.quoted(message)
            for (key, value) in fields where key != "message" {
                line += "," + JSONText.quoted(key) + ":" + JSONText.quoted("\(value)")
            }
            return line + "}}\n"
        }
    }

    /// RFC 3339 UTC with microseconds, without Foundation's formatter (it is slow and allocates per call).
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return pad(Int(parts.tm_year) + 1900, 4) + "-" + pad(Int(parts.tm_mon) + 1, 2) + "-"
            + pad(Int(parts.tm_mday), 2) + "T" + pad(Int(parts.tm_hour), 2) + ":" + pad(Int(parts.tm_min), 2) + ":"
            + pad(Int(parts.tm_sec), 2) + "." + pad(Int(now.tv_nsec) / 1000, 6) + "Z"
    }
}

/// Just enough JSON to write a string value.
enum JSONText {
    static func quoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    result.unicodeScalars.append(scalar)
                }
            }
        }
        return result + "\""
    }
}
