import ApusCore
import Foundation

/// An inclusive port range from a port list such as `25,8000-8010`.
public struct PortRange: Hashable, Sendable, CustomStringConvertible {
    public var lower: Int
    public var upper: Int

    public init(_ lower: Int, _ upper: Int) {
        self.lower = lower
        self.upper = upper
    }

    public var description: String { lower == upper ? String(lower) : "\(lower)-\(upper)" }

    /// Parses `25, 8000-8010`; an empty string is an empty list. `nil` when any part is not a port or range.
    /// `names` resolves named container ports (only `opaque-ports` allows them, as in Linkerd).
    static func parseList(_ text: String, names: [String: Int] = [:]) -> [PortRange]? {
        var ranges: [PortRange] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let item = part.trimmingCharacters(in: .whitespaces)
            if item.isEmpty {
                if text.trimmingCharacters(in: .whitespaces).isEmpty { continue }
                return nil
            }
            if let port = names[item] {
                ranges.append(PortRange(port, port))
                continue
            }
            let bounds = item.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count <= 2, let low = port(bounds[0]), let high = port(bounds[bounds.count - 1]),
                low <= high
            else { return nil }
            ranges.append(PortRange(low, high))
        }
        return ranges
    }

    private static func port(_ text: Substring) -> Int? {
        guard !text.isEmpty, text.allSatisfy(\.isASCIIDigit), let value = Int(text), (1...65535).contains(value)
        else { return nil }
        return value
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}

extension Array where Element == PortRange {
    var listText: String { map(\.description).joined(separator: ",") }
}

/// The proxy settings of one pod: defaults, then the namespace's `config.linkerd.io/*` annotations, then the
/// workload's (pod wins). An invalid value is reported and the next level's value is used instead.
struct ResolvedProxyConfig {
    var image: String
    var version: String
    var imagePullPolicy: String
    var ports: InjectorDefaults.Ports
    var proxyUID: Int64
    var logLevel: String
    var logFormat: String
    var resources: InjectorDefaults.Resources
    var outboundConnectTimeout: GoDuration
    var inboundConnectTimeout: GoDuration
    var shutdownGracePeriod: GoDuration?
    var defaultInboundPolicy: String
    var opaquePorts: [PortRange]
    var skipInboundPorts: [PortRange]
    var skipOutboundPorts: [PortRange]
    var skipSubnets: [String]
    var proxyAwait: Bool
    var nativeSidecar: Bool
    /// `config.linkerd.io/disable-tap`: no tap identity, no tap port.
    var tapDisabled: Bool
    var additionalEnv: [JSONValue]

    /// `image:version`, unless the image already pins a tag or digest.
    var imageReference: String {
        let lastComponent = image.split(separator: "/").last ?? ""
        if image.contains("@") || lastComponent.contains(":") { return image }
        return "\(image):\(version)"
    }
}

/// Reads the annotation layers and collects warnings; one instance per injection.
struct ConfigResolver {
    /// Annotation layers, most specific first, with the name used in warnings.
    let layers: [(source: String, annotations: [String: String])]
    /// Named container ports of the pod, for `opaque-ports` entries such as `mysql`.
    let namedPorts: [String: Int]
    var warnings: [String] = []

    init(
        pod: [String: String], podSource: String, namespace: [String: String]?, namespaceName: String?,
        namedPorts: [String: Int]
    ) {
        var layers: [(String, [String: String])] = [(podSource, pod)]
        if let namespace { layers.append(("namespace \(namespaceName ?? "?")", namespace)) }
        self.layers = layers
        self.namedPorts = namedPorts
    }

    /// The first valid value across the layers for any of `keys`, or `fallback`.
    mutating func value<T>(
        _ keys: [String], default fallback: T, expected: String, describe: (T) -> String = { "\($0)" },
        _ parse: (String) -> T?
    ) -> T {
        for layer in layers {
            for key in keys {
                guard let raw = layer.annotations[key] else { continue }
                if let parsed = parse(raw.trimmingCharacters(in: .whitespaces)) { return parsed }
                warnings.append(
                    "\(key) on \(layer.source): \(quoted(raw)) is not \(expected); ignored")
            }
        }
        return fallback
    }

    mutating func value<T>(
        _ key: String, default fallback: T, expected: String, _ parse: (String) -> T?
    ) -> T {
        value([key], default: fallback, expected: expected, parse)
    }

    /// `proxy-additional-env`: merged by name across defaults < namespace < workload.
    mutating func additionalEnv(defaults: [JSONValue]) -> [JSONValue] {
        var merged = defaults
        for layer in layers.reversed() {
            guard let raw = layer.annotations[InjectorNames.Config.additionalEnv] else { continue }
            guard let list = Self.parseEnvList(raw) else {
                warnings.append(
                    "\(InjectorNames.Config.additionalEnv) on \(layer.source): \(quoted(raw)) is not a JSON list of "
                        + "environment variables ({\"name\": …, \"value\": …}); ignored")
                continue
            }
            for variable in list { Self.mergeEnv(variable, into: &merged) }
        }
        return merged
    }

    static func mergeEnv(_ variable: JSONValue, into list: inout [JSONValue]) {
        let name = variable["name"]?.stringValue
        if let index = list.firstIndex(where: { $0["name"]?.stringValue == name }) {
            list[index] = variable
        } else {
            list.append(variable)
        }
    }

    /// A JSON array of EnvVar objects: a valid `name` and either a string `value` or an object `valueFrom`.
    static func parseEnvList(_ text: String) -> [JSONValue]? {
        guard let data = text.data(using: .utf8), let json = try? JSONValue(json: data),
            let list = json.arrayValue
        else { return nil }
        for item in list {
            guard let object = item.objectValue, let name = object["name"]?.stringValue, isEnvName(name) else {
                return nil
            }
            for (key, value) in object {
                switch key {
                case "name": continue
                case "value": guard value.stringValue != nil else { return nil }
                case "valueFrom": guard value.objectValue != nil else { return nil }
                default: return nil
                }
            }
        }
        return list
    }

    /// Kubernetes' rule for env names: printable ASCII, no `=`, not `.`/`..`-only.
    static func isEnvName(_ name: String) -> Bool {
        guard !name.isEmpty, name != ".", name != ".." else { return false }
        return name.unicodeScalars.allSatisfy { $0.value > 32 && $0.value < 127 && $0 != "=" }
    }

    private func quoted(_ text: String) -> String {
        let short = text.count > 80 ? String(text.prefix(77)) + "..." : text
        return "\"\(short)\""
    }
}

enum Validate {
    static let pullPolicies: Set<String> = ["Always", "IfNotPresent", "Never"]
    static let inboundPolicies: Set<String> = ["all-unauthenticated", "all-authenticated", "deny"]
    static let logLevels: Set<String> = ["trace", "debug", "info", "warn", "warning", "error", "off"]

    static func port(_ text: String) -> Int? {
        guard !text.isEmpty, text.allSatisfy({ ("0"..."9").contains($0) }), let value = Int(text),
            (1...65535).contains(value)
        else { return nil }
        return value
    }

    /// A container image reference: no whitespace, no empty segments, no scheme.
    static func image(_ text: String) -> String? {
        guard !text.isEmpty, text.count <= 512, !text.contains("://"),
            text.unicodeScalars.allSatisfy({ $0.value > 32 && $0.value < 127 }),
            !text.hasPrefix("/"), !text.hasSuffix("/"), !text.contains("//")
        else { return nil }
        return text
    }

    /// A Docker tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    static func tag(_ text: String) -> String? {
        func word(_ scalar: Unicode.Scalar) -> Bool {
            scalar.isASCII && (CharacterSet.alphanumerics.contains(scalar) || scalar == "_")
        }
        guard let first = text.unicodeScalars.first, text.unicodeScalars.count <= 128, word(first),
            text.unicodeScalars.allSatisfy({ word($0) || $0 == "." || $0 == "-" })
        else { return nil }
        return text
    }

    /// Linkerd's filter syntax: `level` or `target=level`, comma separated.
    static func logLevel(_ text: String) -> String? {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        for part in parts {
            let pieces = part.split(separator: "=", omittingEmptySubsequences: false)
            switch pieces.count {
            case 1:
                guard logLevels.contains(pieces[0].lowercased()) else { return nil }
            case 2:
                let target = pieces[0]
                guard !target.isEmpty,
                    target.unicodeScalars.allSatisfy({
                        $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "_:-".unicodeScalars.contains($0))
                    }),
                    logLevels.contains(pieces[1].lowercased())
                else { return nil }
            default:
                return nil
            }
        }
        return text
    }

    static func quantity(_ text: String) -> Quantity? {
        guard let quantity = try? Quantity(parsing: text), quantity.value >= 0 else { return nil }
        return quantity
    }

    static func positiveDuration(_ text: String) -> GoDuration? {
        guard let duration = try? GoDuration(parsing: text), duration.nanoseconds > 0 else { return nil }
        return duration
    }

    static func bool(_ text: String) -> Bool? {
        switch text.lowercased() {
        case "true", "enabled": return true
        case "false", "disabled": return false
        default: return nil
        }
    }

    /// A non-root UID (the proxy's UID is what iptables exempts, so root would exempt every root process).
    static func uid(_ text: String) -> Int64? {
        guard text.allSatisfy({ ("0"..."9").contains($0) }), let value = Int64(text), value > 0,
            value <= Int64(Int32.max)
        else { return nil }
        return value
    }

    /// IPv4 CIDRs (`10.0.0.0/8`); a bare address means `/32`. The init script programs IPv4 `iptables` only.
    static func subnets(_ text: String) -> [String]? {
        var result: [String] = []
        for part in text.split(separator: ",") {
            let item = part.trimmingCharacters(in: .whitespaces)
            if item.isEmpty { continue }
            let pieces = item.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count <= 2, isIPv4(pieces[0]) else { return nil }
            if pieces.count == 2 {
                guard let bits = Int(pieces[1]), (0...32).contains(bits), pieces[1].allSatisfy(\.isNumber) else {
                    return nil
                }
                result.append(item)
            } else {
                result.append(item + "/32")
            }
        }
        return result
    }

    static func isIPv4(_ text: Substring) -> Bool {
        let octets = text.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4
            && octets.allSatisfy { octet in
                !octet.isEmpty && octet.count <= 3 && octet.allSatisfy { ("0"..."9").contains($0) }
                    && (Int(octet) ?? 256) <= 255
            }
    }
}

/// The list-valued defaults of ``InjectorDefaults`` parsed once per injector: parsing them trims with Foundation,
/// which is slow enough to show up in the webhook's time per review.
struct ParsedListDefaults: Sendable {
    var opaquePorts: [PortRange]
    var skipInboundPorts: [PortRange]
    var skipOutboundPorts: [PortRange]
    var skipSubnets: [String]

    init(_ defaults: InjectorDefaults) {
        opaquePorts = PortRange.parseList(defaults.opaquePorts) ?? []
        skipInboundPorts = PortRange.parseList(defaults.skipInboundPorts) ?? []
        skipOutboundPorts = PortRange.parseList(defaults.skipOutboundPorts) ?? []
        skipSubnets = Validate.subnets(defaults.skipSubnets) ?? []
    }
}

extension ResolvedProxyConfig {
    /// Resolves every override; warnings end up in `resolver.warnings`. `lists` must come from `defaults`.
    static func resolve(
        defaults: InjectorDefaults, lists: ParsedListDefaults, resolver: inout ConfigResolver
    ) -> ResolvedProxyConfig {
        typealias Key = InjectorNames.Config
        let d = defaults
        let defaultOpaque = lists.opaquePorts
        let defaultSkipIn = lists.skipInboundPorts
        let defaultSkipOut = lists.skipOutboundPorts
        let defaultSubnets = lists.skipSubnets
        let named = resolver.namedPorts
        let portExpectation = "a port number (1-65535)"
        let listExpectation = "a list of ports and ranges (e.g. 25,8000-8010)"
        // Optional results are wrapped once more so that "invalid" (nil) differs from "valid" (.some).
        let optionalQuantity: (String) -> Quantity?? = { Validate.quantity($0).map { Optional($0) } }
        var resources = d.resources
        resources.cpuRequest = resolver.value(
            Key.cpuRequest, default: d.resources.cpuRequest, expected: "a CPU quantity", optionalQuantity)
        resources.cpuLimit = resolver.value(
            Key.cpuLimit, default: d.resources.cpuLimit, expected: "a CPU quantity", optionalQuantity)
        resources.memoryRequest = resolver.value(
            Key.memoryRequest, default: d.resources.memoryRequest, expected: "a memory quantity",
            optionalQuantity)
        resources.memoryLimit = resolver.value(
            Key.memoryLimit, default: d.resources.memoryLimit, expected: "a memory quantity", optionalQuantity)
        return ResolvedProxyConfig(
            image: resolver.value(Key.proxyImage, default: d.proxyImage, expected: "an image name", Validate.image),
            version: resolver.value(
                Key.proxyVersion, default: d.proxyVersion, expected: "an image tag", Validate.tag),
            imagePullPolicy: resolver.value(
                Key.imagePullPolicy, default: d.imagePullPolicy, expected: "Always, IfNotPresent or Never"
            ) { Validate.pullPolicies.contains($0) ? $0 : nil },
            ports: InjectorDefaults.Ports(
                inbound: resolver.value(
                    Key.inboundPort, default: d.ports.inbound, expected: portExpectation, Validate.port),
                outbound: resolver.value(
                    Key.outboundPort, default: d.ports.outbound, expected: portExpectation, Validate.port),
                admin: resolver.value(Key.adminPort, default: d.ports.admin, expected: portExpectation, Validate.port),
                control: resolver.value(
                    Key.controlPort, default: d.ports.control, expected: portExpectation, Validate.port)),
            proxyUID: resolver.value(
                Key.proxyUID, default: d.proxyUID, expected: "a non-root user ID", Validate.uid),
            logLevel: resolver.value(
                Key.logLevel, default: d.logLevel, expected: "a log level (e.g. warn,apus=info)", Validate.logLevel),
            logFormat: resolver.value(Key.logFormat, default: d.logFormat, expected: "plain or json") {
                ["plain", "json"].contains($0) ? $0 : nil
            },
            resources: resources,
            outboundConnectTimeout: resolver.value(
                Key.outboundConnectTimeout, default: d.outboundConnectTimeout, expected: "a positive duration",
                Validate.positiveDuration),
            inboundConnectTimeout: resolver.value(
                Key.inboundConnectTimeout, default: d.inboundConnectTimeout, expected: "a positive duration",
                Validate.positiveDuration),
            shutdownGracePeriod: resolver.value(
                Key.shutdownGracePeriod, default: d.shutdownGracePeriod, expected: "a positive duration"
            ) { Validate.positiveDuration($0).map { Optional($0) } },
            defaultInboundPolicy: resolver.value(
                Key.defaultInboundPolicy, default: d.defaultInboundPolicy,
                expected: "all-unauthenticated, all-authenticated or deny"
            ) { Validate.inboundPolicies.contains($0) ? $0 : nil },
            opaquePorts: resolver.value(
                Key.opaquePorts, default: defaultOpaque, expected: listExpectation + " or named container ports"
            ) { PortRange.parseList($0, names: named) },
            skipInboundPorts: resolver.value(
                Key.skipInboundPorts, default: defaultSkipIn, expected: listExpectation
            ) { PortRange.parseList($0) },
            skipOutboundPorts: resolver.value(
                Key.skipOutboundPorts, default: defaultSkipOut, expected: listExpectation
            ) { PortRange.parseList($0) },
            skipSubnets: resolver.value(
                Key.skipSubnets, default: defaultSubnets, expected: "a list of IPv4 CIDRs (e.g. 10.0.0.0/8)",
                Validate.subnets),
            proxyAwait: resolver.value(
                Key.proxyAwait, default: d.proxyAwait, expected: "enabled or disabled", Validate.bool),
            nativeSidecar: resolver.value(
                [Key.nativeSidecar, Key.nativeSidecarBeta, Key.nativeSidecarAlpha], default: d.nativeSidecar,
                expected: "true or false", Validate.bool),
            tapDisabled: resolver.value(Key.disableTap, default: false, expected: "true or false", Validate.bool),
            additionalEnv: resolver.additionalEnv(defaults: d.additionalEnv)
        )
    }
}
