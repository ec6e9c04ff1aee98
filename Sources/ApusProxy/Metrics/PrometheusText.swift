/// The Prometheus text exposition format 0.0.4, the parts the proxy writes: family headers, escaped label
/// values and sample lines.
enum PrometheusText {
    /// The `Content-Type` scrapers expect for this format.
    static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    enum MetricType: String {
        case counter
        case gauge
        case histogram
    }

    /// `# HELP` and `# TYPE` for one family; each family appears once, with all its samples after it.
    static func header(_ name: String, _ type: MetricType, help: String, into output: inout String) {
        output += "# HELP \(name) \(escapeHelp(help))\n# TYPE \(name) \(type.rawValue)\n"
    }

    /// One sample line; `labels` is already-rendered `name="value",…` text (may be empty).
    static func sample(_ name: String, labels: String, value: String, into output: inout String) {
        output += name
        if !labels.isEmpty {
            output += "{"
            output += labels
            output += "}"
        }
        output += " "
        output += value
        output += "\n"
    }

    /// Label values may hold any UTF-8; backslash, double quote and line feed must be escaped.
    static func escapeLabelValue(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\"") || $0 == 10 })
        else { return value }
        var escaped = ""
        escaped.reserveCapacity(value.utf8.count + 4)
        for character in value.unicodeScalars {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return escaped
    }

    /// HELP text escapes backslash and line feed only.
    static func escapeHelp(_ text: String) -> String {
        var escaped = ""
        for character in text.unicodeScalars {
            switch character {
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return escaped
    }

    /// Label names are `[a-zA-Z_][a-zA-Z0-9_]*`; destination metadata keys come from Kubernetes labels
    /// (`app.kubernetes.io/name`), so every other character becomes `_`.
    static func sanitizedLabelName(_ name: String) -> String {
        var result = ""
        for (offset, scalar) in name.unicodeScalars.enumerated() {
            let isLetter = (scalar >= "a" && scalar <= "z") || (scalar >= "A" && scalar <= "Z") || scalar == "_"
            let isDigit = scalar >= "0" && scalar <= "9"
            if isLetter || (isDigit && offset > 0) {
                result.unicodeScalars.append(scalar)
            } else {
                result += "_"
            }
        }
        // Names starting with `__` are reserved for Prometheus itself.
        while result.hasPrefix("__") { result.removeFirst() }
        return result.isEmpty ? "_" : result
    }

    /// A sample value: integers without a fraction, other values in Swift's shortest round-trip form, which the
    /// format's Go float parser reads back exactly.
    static func number(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }

    /// Accumulates `name="value"` pairs in order, skipping a name already present (two metadata keys can
    /// sanitize to one name, and a duplicate label makes the whole exposition invalid).
    struct LabelBuilder {
        private(set) var text = ""
        private var names: Set<String> = []

        mutating func add(_ name: String, _ value: String) {
            guard names.insert(name).inserted else { return }
            if !text.isEmpty { text += "," }
            text += name
            text += "=\""
            text += PrometheusText.escapeLabelValue(value)
            text += "\""
        }
    }
}
