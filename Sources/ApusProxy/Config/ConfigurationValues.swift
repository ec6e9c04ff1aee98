import Logging

/// A `host:port` to listen on, as Linkerd writes its listen addresses: `0.0.0.0:4143`, `127.0.0.1:4140`, or
/// `[::]:4191` for all IPv6 (and, dual-stack, IPv4) addresses. The host is kept without brackets so it can be
/// handed to `ServerBootstrap.bind(host:port:)` as is.
public struct ListenAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    /// 0 lets the system choose (tests).
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` or `[v6]:port`. An unbracketed IPv6 address is rejected because its last `:` is
    /// ambiguous (`::1:80`).
    public init(parsing text: String) throws(HostPortSyntaxError) {
        (host, port) = try HostPort.parse(text, allowPortZero: true)
    }

    /// `[v6]:port` for IPv6 hosts, `host:port` otherwise (the form it was parsed from).
    public var description: String { HostPort.format(host: host, port: port) }
}

/// The `host:port` of a control-plane service (identity, destination). The host may be a DNS name
/// (`linkerd-identity-headless.linkerd.svc.cluster.local.`) and the port must be a real one.
public struct ServiceAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(parsing text: String) throws(HostPortSyntaxError) {
        (host, port) = try HostPort.parse(text, allowPortZero: false)
    }

    public var description: String { HostPort.format(host: host, port: port) }
}

/// What is wrong with a `host:port`, in words that complete "expected …".
public struct HostPortSyntaxError: Error, Sendable, Hashable, CustomStringConvertible {
    public var problem: String
    public var description: String { problem }
}

enum HostPort {
    static func parse(_ raw: String, allowPortZero: Bool) throws(HostPortSyntaxError) -> (String, Int) {
        let text = raw.trimmingConfigWhitespace()
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                throw HostPortSyntaxError(problem: "host:port with a closing ']' after the IPv6 address")
            }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.first == ":" else {
                throw HostPortSyntaxError(problem: "[ipv6]:port with a ':' and a port after the ']'")
            }
            portText = rest.dropFirst()
            guard host.contains(":") else {
                throw HostPortSyntaxError(problem: "an IPv6 address inside '[' ']'")
            }
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw HostPortSyntaxError(problem: "host:port (the port is missing)")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            guard !host.contains(":") else {
                throw HostPortSyntaxError(problem: "an IPv6 host in brackets, like [::]:4143")
            }
        }
        guard !host.isEmpty else { throw HostPortSyntaxError(problem: "host:port (the host is empty)") }
        guard !host.contains(where: { $0.isWhitespace || $0 == "/" || $0 == "[" || $0 == "]" }) else {
            throw HostPortSyntaxError(problem: "host:port with a host name or IP address as the host")
        }
        let lowest = allowPortZero ? 0 : 1
        guard let port = Int(portText), (lowest...65535).contains(port), portText.allSatisfy(\.isConfigDigit) else {
            throw HostPortSyntaxError(problem: "host:port with a port from \(lowest) to 65535")
        }
        return (String(host), port)
    }

    static func format(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// The inbound side's answer to a caller that is not an authenticated mesh peer when no finer policy applies
/// (Linkerd's `LINKERD2_PROXY_INBOUND_DEFAULT_POLICY`).
public enum InboundPolicy: String, Sendable, Hashable, CaseIterable {
    /// Plaintext and mTLS callers alike (Linkerd's default).
    case allUnauthenticated = "all-unauthenticated"
    /// Only callers that presented a verified mesh identity.
    case allAuthenticated = "all-authenticated"
    /// Nobody.
    case deny
}

/// How log lines are written: Linkerd's two formats, so log pipelines configured for it keep parsing.
public enum LogFormat: String, Sendable, Hashable, CaseIterable {
    case plain
    case json
}

/// A set of TCP ports written as Linkerd writes them: `25,3306,8000-8010` (single ports and inclusive ranges).
///
/// Kept as merged, sorted ranges: the inbound side asks ``contains(_:)`` once per accepted connection, and the
/// lists are short, so a scan over a few ranges is cheaper than hashing and keeps a 10,000-port range small.
public struct PortSet: Hashable, Sendable, CustomStringConvertible {
    public private(set) var ranges: [ClosedRange<Int>]

    public static let empty = PortSet(ranges: [])

    public init(ranges: [ClosedRange<Int>]) {
        self.ranges = Self.merge(ranges)
    }

    public init(_ ports: [Int]) {
        self.init(ranges: ports.map { $0...$0 })
    }

    /// Parses a comma-separated list of ports and `low-high` ranges; blanks around items and empty items are
    /// ignored (`"25, 443,"`), so an empty string is the empty set.
    public init(parsing text: String) throws(PortSetSyntaxError) {
        var ranges: [ClosedRange<Int>] = []
        for item in text.split(separator: ",") {
            let entry = item.trimmingConfigWhitespace()
            if entry.isEmpty { continue }
            let bounds = entry.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
            guard let low = Self.port(bounds[0].trimmingConfigWhitespace()) else {
                throw PortSetSyntaxError(item: entry)
            }
            var high = low
            if bounds.count == 2 {
                guard let parsed = Self.port(bounds[1].trimmingConfigWhitespace()), parsed >= low else {
                    throw PortSetSyntaxError(item: entry)
                }
                high = parsed
            }
            ranges.append(low...high)
        }
        self.init(ranges: ranges)
    }

    public var isEmpty: Bool { ranges.isEmpty }

    public func contains(_ port: Int) -> Bool {
        for range in ranges where range.contains(port) { return true }
        return false
    }

    /// The canonical list form (`25,3306,8000-8010`), which parses back to the same set.
    public var description: String {
        ranges.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }
            .joined(separator: ",")
    }

    private static func port(_ text: String) -> Int? {
        guard !text.isEmpty, text.allSatisfy(\.isConfigDigit), let value = Int(text), (1...65535).contains(value)
        else { return nil }
        return value
    }

    private static func merge(_ ranges: [ClosedRange<Int>]) -> [ClosedRange<Int>] {
        var merged: [ClosedRange<Int>] = []
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = merged.last, range.lowerBound <= last.upperBound + 1 {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        return merged
    }
}

/// The list item that is neither a port (1–65535) nor a `low-high` range with `low <= high`.
public struct PortSetSyntaxError: Error, Sendable, Hashable, CustomStringConvertible {
    public var item: String
    public var description: String { "'\(item)' is not a port (1-65535) or an ascending range like 8000-8010" }
}

/// A log filter in Linkerd's syntax (`warn,linkerd=info,apus=debug`) reduced to the one level swift-log can
/// apply process-wide.
///
/// Linkerd's filter has per-target directives; Apus logs under `apus.*` labels only, so the level that matters
/// is the last bare level (`warn` above) — or, when there is none, the last directive aimed at `apus` or
/// `linkerd` (what an operator who wrote `linkerd=debug` for a Linkerd proxy meant). The original text is kept
/// so `GET /proxy-log-level` answers with what was set.
public struct LogFilter: Hashable, Sendable, CustomStringConvertible {
    public var level: Logger.Level
    /// The filter as given (trimmed), or the level's name when built from a level.
    public var text: String

    public init(level: Logger.Level) {
        self.level = level
        self.text = Self.name(of: level)
    }

    public init(parsing raw: String) throws(LogFilterSyntaxError) {
        let text = raw.trimmingConfigWhitespace()
        var bare: Logger.Level?
        var targeted: Logger.Level?
        var sawDirective = false
        for item in text.split(separator: ",") {
            let directive = item.trimmingConfigWhitespace()
            if directive.isEmpty { continue }
            sawDirective = true
            if let equals = directive.firstIndex(of: "=") {
                let target = directive[..<equals].trimmingConfigWhitespace()
                let levelText = directive[directive.index(after: equals)...].trimmingConfigWhitespace()
                guard !target.isEmpty, let level = Self.level(named: levelText) else {
                    throw LogFilterSyntaxError(filter: text, directive: directive)
                }
                let lowered = target.lowercased()
                if lowered.hasPrefix("apus") || lowered.hasPrefix("linkerd") { targeted = level }
            } else {
                guard let level = Self.level(named: directive) else {
                    throw LogFilterSyntaxError(filter: text, directive: directive)
                }
                bare = level
            }
        }
        guard sawDirective, let level = bare ?? targeted else {
            throw LogFilterSyntaxError(filter: text, directive: nil)
        }
        self.level = level
        self.text = text
    }

    public var description: String { text }

    /// Linkerd's level names plus swift-log's; `off` keeps only `critical` (swift-log cannot silence a logger).
    static func level(named name: String) -> Logger.Level? {
        switch name.lowercased() {
        case "trace": return .trace
        case "debug": return .debug
        case "info": return .info
        case "notice": return .notice
        case "warn", "warning": return .warning
        case "error": return .error
        case "critical", "off": return .critical
        default: return nil
        }
    }

    static func name(of level: Logger.Level) -> String {
        switch level {
        case .trace: return "trace"
        case .debug: return "debug"
        case .info: return "info"
        case .notice: return "notice"
        case .warning: return "warn"
        case .error: return "error"
        case .critical: return "critical"
        }
    }
}

/// A log filter with an unknown level name, an empty target, or no level that applies to Apus.
public struct LogFilterSyntaxError: Error, Sendable, Hashable, CustomStringConvertible {
    public var filter: String
    /// The offending `level` or `target=level` item; nil when the filter names no level for Apus at all.
    public var directive: String?

    public var description: String {
        if let directive {
            return "log filter '\(filter)': '\(directive)' is not a level (trace, debug, info, warn, error, off) "
                + "or target=level"
        }
        return "log filter '\(filter)' sets no level: give a bare level (info) or apus=<level>"
    }
}

extension StringProtocol {
    func trimmingConfigWhitespace() -> String {
        guard let first = firstIndex(where: { !$0.isWhitespace }),
            let last = lastIndex(where: { !$0.isWhitespace })
        else { return "" }
        return String(self[first...last])
    }
}

extension Character {
    var isConfigDigit: Bool { isASCII && isNumber }
}
