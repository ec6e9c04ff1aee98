import ApusCore
import ApusDestinationClient
import ApusIdentity
import ApusX509
import Logging

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Everything the proxy reads from its environment, parsed and checked once at startup.
///
/// Every variable is read as `APUS_PROXY_<NAME>` and, when that is absent, as Linkerd's `LINKERD2_PROXY_<NAME>`,
/// so a pod spec written for Linkerd's injector works unchanged while Apus's own spelling wins where both are
/// set. An empty value counts as unset (Kubernetes renders optional values as `""`).
///
/// ```swift
/// let configuration = try ProxyConfiguration.fromEnvironment(ProcessInfo.processInfo.environment)
/// if configuration.identity == nil { /* standalone: plaintext inbound, no mesh TLS */ }
/// ```
///
/// ``init()`` is the standalone proxy with every default (no identity, no destination), which is what
/// benchmarks and tests start from.
public struct ProxyConfiguration: Sendable {
    public var outboundListen = ListenAddress(host: "127.0.0.1", port: 4140)
    public var inboundListen = ListenAddress(host: "0.0.0.0", port: 4143)
    public var adminListen = ListenAddress(host: "0.0.0.0", port: 4191)
    /// The control port: the tap server, opened only when tap is configured (``tapIdentity`` / ``tapTokenFile``).
    public var controlListen = ListenAddress(host: "0.0.0.0", port: 4190)
    /// Where inbound traffic reaches the application (local mode sets the pod's own loopback address).
    public var inboundForwardIP = "127.0.0.1"
    /// The application port for inbound traffic that names none (no original destination, no header).
    public var inboundDefaultPort: Int?
    /// Event-loop threads; everything per connection stays on its loop.
    public var threads = 1
    /// nil: standalone, no mesh TLS (inbound serves plaintext, outbound never originates mTLS).
    public var identity: IdentitySettings?
    /// nil: outbound resolves through ``staticEndpoints`` and otherwise passes the authority through.
    public var destination: DestinationSettings?
    /// For authority normalization (`web.shop` → `web.shop.svc.cluster.local`).
    public var clusterDomain = "cluster.local"
    /// This pod's namespace (`POD_NAMESPACE`, else the destination context's `ns`): short names expand in it.
    public var namespace: String?
    /// `POD_NAME`, for logs.
    public var podName: String?
    /// Authority (`host:port`) → endpoints, answered before (and without) the destination service.
    public var staticEndpoints: [String: [Endpoint]] = [:]
    /// Authority → destination profile (`APUS_PROXY_OUTBOUND_STATIC_PROFILES`, the `GetProfile` frame's
    /// `profile` object): routes, timeouts and retries without a control plane; discovery's profile wins.
    public var staticProfiles: [String: DestinationProfile] = [:]
    public var logLevel: Logger.Level = .info
    /// The log filter as written (Linkerd syntax), which `GET /proxy-log-level` reports back.
    public var logFilter = LogFilter(level: .info)
    public var logFormat: LogFormat = .plain
    public var outboundConnectTimeout: Duration = .seconds(1)
    public var inboundConnectTimeout: Duration = .milliseconds(100)
    /// How long protocol detection waits for the first bytes before treating the connection as opaque TCP.
    public var detectTimeout: Duration = .seconds(10)
    /// ``detectTimeout`` unless `…_INBOUND_DETECT_TIMEOUT` says otherwise.
    public var inboundDetectTimeout: Duration = .seconds(10)
    /// ``detectTimeout`` unless `…_OUTBOUND_DETECT_TIMEOUT` says otherwise.
    public var outboundDetectTimeout: Duration = .seconds(10)
    public var shutdownGracePeriod: Duration = .seconds(120)
    public var metricsRetainIdle: Duration = .seconds(600)
    public var inboundPolicy: InboundPolicy = .allUnauthenticated
    /// Inbound ports that skip protocol detection and are proxied as opaque TCP.
    public var opaquePorts: PortSet = .empty
    public var shutdownEndpointEnabled = false
    /// Request head limits; beyond them the proxy answers 431.
    public var maxHeaderBytes = 65536
    public var maxHeaderCount = 100
    /// Plain HTTP/1.1 connections start on the spliced path (``HTTP1SpliceHandler``: bytes forwarded without
    /// NIO's codec for requests that need only forwarding); `…_HTTP1_SPLICE=false` sends every request through
    /// the codec path, for comparison or to rule the spliced path out when debugging.
    public var http1Splice = true
    /// The mesh identity allowed to tap this proxy over mTLS on ``controlListen`` (`…_TAP_SVC_NAME`, the
    /// controller's identity); with ``tapTokenFile`` nil too, tap is disabled and the control port is not opened.
    public var tapIdentity: String?
    /// A file holding the bearer token that allows tapping (`…_TAP_TOKEN_FILE`, local mode); read per tap request.
    public var tapTokenFile: String?

    public init() {}

    /// Reads and validates every variable of the proxy's environment table.
    /// - Throws: ``ProxyConfigurationError`` naming the first variable that is malformed, missing from a group
    ///   that needs it (identity, destination), or in conflict with another.
    public static func fromEnvironment(_ env: [String: String]) throws(ProxyConfigurationError) -> Self {
        let reader = EnvironmentReader(env)
        var configuration = ProxyConfiguration()
        configuration.outboundListen = try reader.listenAddress("OUTBOUND_LISTEN_ADDR") ?? configuration.outboundListen
        configuration.inboundListen = try reader.listenAddress("INBOUND_LISTEN_ADDR") ?? configuration.inboundListen
        configuration.adminListen = try reader.listenAddress("ADMIN_LISTEN_ADDR") ?? configuration.adminListen
        configuration.controlListen = try reader.listenAddress("CONTROL_LISTEN_ADDR") ?? configuration.controlListen

        if let (variable, value) = reader.lookup("INBOUND_FORWARD_IP") {
            guard IPAddressSyntax.isIPAddress(value) else {
                throw .invalidValue(variable: variable, value: value, expected: "an IPv4 or IPv6 address")
            }
            configuration.inboundForwardIP = value
        }
        configuration.inboundDefaultPort = try reader.integer("INBOUND_DEFAULT_PORT", in: 1...65535)
        // Linkerd sizes its runtime with `…_CORES`; Apus's own name for the same knob wins.
        if let threads = try reader.integer("THREADS", in: 1...1024) {
            configuration.threads = threads
        } else if let cores = try reader.integer("CORES", in: 1...1024) {
            configuration.threads = cores
        }

        configuration.clusterDomain = try reader.clusterDomain() ?? configuration.clusterDomain
        configuration.podName = reader.plain("POD_NAME")
        configuration.identity = try IdentitySettings.fromEnvironment(reader)
        configuration.destination = try DestinationSettings.fromEnvironment(reader)
        configuration.namespace = reader.plain("POD_NAMESPACE") ?? configuration.destination?.contextNamespace
        if let destination = configuration.destination, destination.contextNamespace == nil,
            configuration.namespace == nil
        {
            throw .missingVariable(
                variable: "POD_NAMESPACE",
                requiredBy: "\(destination.addressVariable) (the destination service needs the pod's namespace; "
                    + "or set \"ns\" in \(reader.name("DESTINATION_CONTEXT")))")
        }
        configuration.staticEndpoints = try reader.staticEndpoints("OUTBOUND_STATIC_ENDPOINTS") ?? [:]
        configuration.staticProfiles = try reader.staticProfiles("OUTBOUND_STATIC_PROFILES") ?? [:]

        if let (variable, value) = reader.lookup("LOG") {
            do throws(LogFilterSyntaxError) {
                configuration.logFilter = try LogFilter(parsing: value)
            } catch {
                throw .invalidValue(variable: variable, value: value, expected: error.description)
            }
            configuration.logLevel = configuration.logFilter.level
        }
        if let (variable, value) = reader.lookup("LOG_FORMAT") {
            guard let format = LogFormat(rawValue: value.lowercased()) else {
                throw .invalidValue(variable: variable, value: value, expected: "plain or json")
            }
            configuration.logFormat = format
        }

        configuration.outboundConnectTimeout =
            try reader.duration("OUTBOUND_CONNECT_TIMEOUT") ?? configuration.outboundConnectTimeout
        configuration.inboundConnectTimeout =
            try reader.duration("INBOUND_CONNECT_TIMEOUT") ?? configuration.inboundConnectTimeout
        configuration.detectTimeout = try reader.duration("DETECT_TIMEOUT") ?? configuration.detectTimeout
        configuration.inboundDetectTimeout =
            try reader.duration("INBOUND_DETECT_TIMEOUT") ?? configuration.detectTimeout
        configuration.outboundDetectTimeout =
            try reader.duration("OUTBOUND_DETECT_TIMEOUT") ?? configuration.detectTimeout
        configuration.shutdownGracePeriod =
            try reader.duration("SHUTDOWN_GRACE_PERIOD") ?? configuration.shutdownGracePeriod
        configuration.metricsRetainIdle =
            try reader.duration("METRICS_RETAIN_IDLE") ?? configuration.metricsRetainIdle

        if let (variable, value) = reader.lookup("INBOUND_DEFAULT_POLICY") {
            guard let policy = InboundPolicy(rawValue: value) else {
                let allowed = InboundPolicy.allCases.map(\.rawValue).joined(separator: ", ")
                throw .invalidValue(variable: variable, value: value, expected: "one of \(allowed)")
            }
            configuration.inboundPolicy = policy
        }
        if let (variable, value) = reader.lookup("INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION") {
            do throws(PortSetSyntaxError) {
                configuration.opaquePorts = try PortSet(parsing: value)
            } catch {
                throw .invalidValue(
                    variable: variable, value: value, expected: "ports and ranges like 25,3306,8000-8010 (\(error))")
            }
        }
        configuration.shutdownEndpointEnabled = try reader.boolean("SHUTDOWN_ENDPOINT_ENABLED") ?? false
        configuration.maxHeaderBytes = try reader.integer("MAX_HEADER_BYTES", in: 1024...16_777_216) ?? 65536
        configuration.maxHeaderCount = try reader.integer("MAX_HEADER_COUNT", in: 1...10_000) ?? 100
        configuration.http1Splice = try reader.boolean("HTTP1_SPLICE") ?? true
        configuration.tapIdentity = reader.lookup("TAP_SVC_NAME")?.value
        configuration.tapTokenFile = reader.lookup("TAP_TOKEN_FILE")?.value
        return configuration
    }
}

/// What the proxy needs to obtain and use its mesh identity; present only when every required variable is set.
public struct IdentitySettings: Sendable, Hashable {
    /// The projected ServiceAccount token presented to Certify (re-read on every request: the kubelet rotates it).
    public var tokenFile: String
    /// The trust anchors bundle, already read from `…_TRUST_ANCHORS_FILE` when given as a path.
    public var trustAnchorsPEM: String
    /// This proxy's identity, `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>`.
    public var localName: String
    public var serviceAddress: ServiceAddress
    /// The identity the identity service's certificate must carry.
    public var serviceName: String
    /// Linkerd's end-entity directory; the key stays in memory, so this is informational unless written to.
    public var directory: String?

    public init(
        tokenFile: String, trustAnchorsPEM: String, localName: String, serviceAddress: ServiceAddress,
        serviceName: String, directory: String? = nil
    ) {
        self.tokenFile = tokenFile
        self.trustAnchorsPEM = trustAnchorsPEM
        self.localName = localName
        self.serviceAddress = serviceAddress
        self.serviceName = serviceName
        self.directory = directory
    }

    /// The identity variables, in the order their absence is reported.
    static let requiredSuffixes = [
        "IDENTITY_LOCAL_NAME", "IDENTITY_TOKEN_FILE", "IDENTITY_SVC_ADDR", "IDENTITY_SVC_NAME",
    ]
    static let allSuffixes =
        requiredSuffixes + ["IDENTITY_DIR", "IDENTITY_TRUST_ANCHORS", "IDENTITY_TRUST_ANCHORS_FILE"]

    static func fromEnvironment(_ reader: EnvironmentReader) throws(ProxyConfigurationError) -> Self? {
        if let (variable, value) = reader.lookup("IDENTITY_DISABLED") {
            guard let disabled = EnvironmentReader.booleanValue(value) else {
                throw .invalidValue(variable: variable, value: value, expected: "true or false")
            }
            if disabled { return nil }
        }
        let present = allSuffixes.compactMap { reader.lookup($0)?.variable }
        guard let trigger = present.first else { return nil }
        let requiredBy = "mesh identity (configured by \(trigger))"
        func required(_ suffix: String) throws(ProxyConfigurationError) -> (variable: String, value: String) {
            guard let found = reader.lookup(suffix) else {
                throw .missingVariable(variable: reader.name(suffix, likeVariable: trigger), requiredBy: requiredBy)
            }
            return found
        }
        let localName = try required("IDENTITY_LOCAL_NAME")
        do throws(IdentityError) {
            _ = try IdentityName(parsing: localName.value)
        } catch {
            throw .invalidValue(
                variable: localName.variable, value: localName.value,
                expected: "an identity <sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>")
        }
        let tokenFile = try required("IDENTITY_TOKEN_FILE")
        let trustAnchors = try trustAnchorsPEM(reader, trigger: trigger, requiredBy: requiredBy)
        let serviceAddress = try required("IDENTITY_SVC_ADDR")
        let serviceName = try required("IDENTITY_SVC_NAME")
        return IdentitySettings(
            tokenFile: tokenFile.value, trustAnchorsPEM: trustAnchors, localName: localName.value,
            serviceAddress: try reader.serviceAddress(serviceAddress), serviceName: serviceName.value,
            directory: reader.lookup("IDENTITY_DIR")?.value)
    }

    /// The bundle from text or from a file (not both), parsed so a corrupt bundle fails at startup rather than on
    /// the first handshake.
    private static func trustAnchorsPEM(
        _ reader: EnvironmentReader, trigger: String, requiredBy: String
    ) throws(ProxyConfigurationError) -> String {
        let text = reader.lookup("IDENTITY_TRUST_ANCHORS")
        let file = reader.lookup("IDENTITY_TRUST_ANCHORS_FILE")
        let variable: String
        let pem: String
        switch (text, file) {
        case (.some(let text), .some(let file)):
            throw .conflictingVariables(
                text.variable, file.variable, reason: "give the trust anchors either as PEM text or as a file path")
        case (.some(let text), nil):
            // The bundle exactly as given (the reader trims values; PEM keeps its final newline).
            (variable, pem) = (text.variable, reader.environment[text.variable] ?? text.value)
        case (nil, .some(let file)):
            do {
                pem = try String(contentsOfFile: file.value, encoding: .utf8)
            } catch {
                throw .unreadableFile(
                    variable: file.variable, path: file.value, reason: EnvironmentReader.readFailure(error))
            }
            variable = file.variable
        case (nil, nil):
            throw .missingVariable(
                variable: reader.name("IDENTITY_TRUST_ANCHORS", likeVariable: trigger), requiredBy: requiredBy)
        }
        do {
            _ = try Certificate.parseChain(pem: pem)
        } catch {
            throw .invalidValue(variable: variable, value: pem, expected: "a PEM bundle of certificates (\(error))")
        }
        return pem
    }
}

/// Where the destination service is and who this proxy is when it asks; present only when its address is set.
public struct DestinationSettings: Sendable, Hashable {
    public var address: ServiceAddress
    /// The identity the destination server's certificate must carry; nil: the client's default for the
    /// control plane.
    public var serviceName: String?
    public var contextNamespace: String?
    public var contextPod: String?
    public var contextNodeName: String?
    /// The variable that configured ``address`` (for messages).
    public var addressVariable: String

    public init(
        address: ServiceAddress, serviceName: String? = nil, contextNamespace: String? = nil,
        contextPod: String? = nil, contextNodeName: String? = nil,
        addressVariable: String = "APUS_PROXY_DESTINATION_SVC_ADDR"
    ) {
        self.address = address
        self.serviceName = serviceName
        self.contextNamespace = contextNamespace
        self.contextPod = contextPod
        self.contextNodeName = contextNodeName
        self.addressVariable = addressVariable
    }

    /// Linkerd's `LINKERD2_PROXY_DESTINATION_CONTEXT`: `{"ns":"shop","nodeName":"node-1","pod":"web-0"}`.
    private struct Context: Decodable {
        var ns: String?
        var nodeName: String?
        var pod: String?
    }

    static func fromEnvironment(_ reader: EnvironmentReader) throws(ProxyConfigurationError) -> Self? {
        let name = reader.lookup("DESTINATION_SVC_NAME")
        let context = reader.lookup("DESTINATION_CONTEXT")
        guard let address = reader.lookup("DESTINATION_SVC_ADDR") else {
            if let other = name ?? context {
                throw .missingVariable(
                    variable: reader.name("DESTINATION_SVC_ADDR", likeVariable: other.variable),
                    requiredBy: "the destination service (configured by \(other.variable))")
            }
            return nil
        }
        var settings = DestinationSettings(
            address: try reader.serviceAddress(address), serviceName: name?.value, addressVariable: address.variable)
        if let context {
            let decoded: Context
            do {
                decoded = try JSONDecoder().decode(Context.self, from: Data(context.value.utf8))
            } catch {
                throw .invalidValue(
                    variable: context.variable, value: context.value,
                    expected: "a JSON object like {\"ns\":\"shop\",\"nodeName\":\"node-1\",\"pod\":\"web-0\"}")
            }
            settings.contextNamespace = decoded.ns.flatMap { $0.isEmpty ? nil : $0 }
            settings.contextPod = decoded.pod.flatMap { $0.isEmpty ? nil : $0 }
            settings.contextNodeName = decoded.nodeName.flatMap { $0.isEmpty ? nil : $0 }
        }
        return settings
    }
}

/// Reads `APUS_PROXY_<suffix>`, falling back to `LINKERD2_PROXY_<suffix>`, and reports errors under the name
/// that was actually used.
struct EnvironmentReader {
    static let prefixes = ["APUS_PROXY_", "LINKERD2_PROXY_"]
    let environment: [String: String]

    init(_ environment: [String: String]) {
        self.environment = environment
    }

    /// The first non-blank of the prefixed variables, trimmed.
    func lookup(_ suffix: String) -> (variable: String, value: String)? {
        for prefix in Self.prefixes {
            let variable = prefix + suffix
            if let value = plain(variable) { return (variable, value) }
        }
        return nil
    }

    /// An unprefixed variable (`POD_NAMESPACE`), trimmed; nil when unset or blank.
    func plain(_ variable: String) -> String? {
        guard let raw = environment[variable] else { return nil }
        let value = raw.trimmingConfigWhitespace()
        return value.isEmpty ? nil : value
    }

    /// The Apus name of a variable, for messages about one that is absent.
    func name(_ suffix: String) -> String { Self.prefixes[0] + suffix }

    /// The name of an absent variable in the same family (`LINKERD2_PROXY_`) as the variable that made it needed,
    /// so the message matches the spelling the operator is using.
    func name(_ suffix: String, likeVariable other: String) -> String {
        let prefix = Self.prefixes.first { other.hasPrefix($0) } ?? Self.prefixes[0]
        return prefix + suffix
    }

    func listenAddress(_ suffix: String) throws(ProxyConfigurationError) -> ListenAddress? {
        guard let (variable, value) = lookup(suffix) else { return nil }
        do throws(HostPortSyntaxError) {
            return try ListenAddress(parsing: value)
        } catch {
            throw .invalidValue(variable: variable, value: value, expected: error.problem)
        }
    }

    func serviceAddress(
        _ found: (variable: String, value: String)
    ) throws(ProxyConfigurationError) -> ServiceAddress {
        do throws(HostPortSyntaxError) {
            return try ServiceAddress(parsing: found.value)
        } catch {
            throw .invalidValue(variable: found.variable, value: found.value, expected: error.problem)
        }
    }

    func integer(_ suffix: String, in range: ClosedRange<Int>) throws(ProxyConfigurationError) -> Int? {
        guard let (variable, value) = lookup(suffix) else { return nil }
        guard value.allSatisfy(\.isConfigDigit), let number = Int(value), range.contains(number) else {
            throw .invalidValue(
                variable: variable, value: value,
                expected: "a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return number
    }

    /// Go/Linkerd duration syntax (`100ms`, `1s`, `2m`, `1m30s`); negative durations are rejected.
    func duration(_ suffix: String) throws(ProxyConfigurationError) -> Duration? {
        guard let (variable, value) = lookup(suffix) else { return nil }
        let parsed: GoDuration
        do throws(GoDurationError) {
            parsed = try GoDuration(parsing: value)
        } catch {
            throw .invalidValue(
                variable: variable, value: value, expected: "a duration like 100ms, 1s or 2m (\(error))")
        }
        guard parsed.nanoseconds >= 0 else {
            throw .invalidValue(variable: variable, value: value, expected: "a duration that is not negative")
        }
        return parsed.duration
    }

    func boolean(_ suffix: String) throws(ProxyConfigurationError) -> Bool? {
        guard let (variable, value) = lookup(suffix) else { return nil }
        guard let parsed = Self.booleanValue(value) else {
            throw .invalidValue(variable: variable, value: value, expected: "true or false")
        }
        return parsed
    }

    static func booleanValue(_ value: String) -> Bool? {
        switch value.lowercased() {
        case "true", "1", "yes": return true
        case "false", "0", "no": return false
        default: return nil
        }
    }

    func clusterDomain() throws(ProxyConfigurationError) -> String? {
        guard let (variable, value) = lookup("CLUSTER_DOMAIN") else { return nil }
        let domain = value.hasSuffix(".") ? String(value.dropLast()) : value
        let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
        let valid =
            !domain.isEmpty
            && labels.allSatisfy { label in
                !label.isEmpty && label.count <= 63 && label.first != "-" && label.last != "-"
                    && label.allSatisfy { $0.isConfigDigit || ($0.isASCII && $0.isLetter) || $0 == "-" }
            }
        guard valid else {
            throw .invalidValue(variable: variable, value: value, expected: "a DNS domain like cluster.local")
        }
        return domain.lowercased()
    }

    /// `{"web.shop.svc.cluster.local:80": [{"address":"10.0.0.1","port":8080,"identity":…,"labels":{…}}]}`:
    /// destination wire endpoints, with `weight` and `labels` optional here because people write this by hand.
    /// `{"web.shop.svc.cluster.local:80": {"fullyQualifiedName": …, "port": 80, "source": "serviceProfile",
    /// "routes": [...]}}`: destination profiles as the `GetProfile` stream carries them; each must compile.
    func staticProfiles(_ suffix: String) throws(ProxyConfigurationError) -> [String: DestinationProfile]? {
        guard let (variable, value) = lookup(suffix) else { return nil }
        let decoded: [String: DestinationProfile]
        do {
            decoded = try JSONDecoder().decode([String: DestinationProfile].self, from: Data(value.utf8))
        } catch let error as DecodingError {
            throw .invalidValue(
                variable: variable, value: value,
                expected: "a JSON object of authority → destination profile (\(Self.describe(error)))")
        } catch {
            throw .invalidValue(
                variable: variable, value: value, expected: "a JSON object of authority → destination profile")
        }
        for (authority, profile) in decoded {
            guard (try? ServiceAddress(parsing: authority)) != nil else {
                throw .invalidValue(
                    variable: variable, value: value, expected: "authority keys as host:port, not '\(authority)'")
            }
            let problems = RouteTable(profile: profile).problems
            if !problems.isEmpty {
                throw .invalidValue(
                    variable: variable, value: value,
                    expected: "a valid profile for \(authority) (\(problems.joined(separator: "; ")))")
            }
        }
        return decoded
    }

    func staticEndpoints(_ suffix: String) throws(ProxyConfigurationError) -> [String: [Endpoint]]? {
        guard let (variable, value) = lookup(suffix) else { return nil }
        let decoded: [String: [StaticEndpoint]]
        do {
            decoded = try JSONDecoder().decode([String: [StaticEndpoint]].self, from: Data(value.utf8))
        } catch let error as DecodingError {
            throw .invalidValue(
                variable: variable, value: value,
                expected: "a JSON object of authority → [endpoint] (\(Self.describe(error)))")
        } catch {
            throw .invalidValue(variable: variable, value: value, expected: "a JSON object of authority → [endpoint]")
        }
        var table: [String: [Endpoint]] = [:]
        for (authority, endpoints) in decoded {
            guard (try? ServiceAddress(parsing: authority)) != nil else {
                throw .invalidValue(
                    variable: variable, value: value, expected: "authority keys as host:port, not '\(authority)'")
            }
            var converted: [Endpoint] = []
            for (index, endpoint) in endpoints.enumerated() {
                let path = "\(authority)[\(index)]"
                guard IPAddressSyntax.isIPAddress(endpoint.address) else {
                    throw .invalidValue(
                        variable: variable, value: value, expected: "\(path).address to be an IP address")
                }
                guard (1...65535).contains(endpoint.port) else {
                    throw .invalidValue(variable: variable, value: value, expected: "\(path).port from 1 to 65535")
                }
                if let weight = endpoint.weight, weight <= 0 {
                    throw .invalidValue(variable: variable, value: value, expected: "\(path).weight above 0")
                }
                if let port = endpoint.opaqueTransportPort, !(1...65535).contains(port) {
                    throw .invalidValue(
                        variable: variable, value: value, expected: "\(path).opaqueTransportPort from 1 to 65535")
                }
                converted.append(
                    Endpoint(
                        address: endpoint.address, port: endpoint.port,
                        weight: endpoint.weight ?? DestinationProtocol.defaultWeight, identity: endpoint.identity,
                        protocolHint: endpoint.protocolHint, opaqueTransportPort: endpoint.opaqueTransportPort,
                        labels: endpoint.labels ?? [:]))
            }
            table[authority] = converted
        }
        return table
    }

    /// The destination wire ``Endpoint`` with the fields a person may leave out made optional.
    private struct StaticEndpoint: Decodable {
        var address: String
        var port: Int
        var weight: Int?
        var identity: String?
        var protocolHint: ProtocolHint?
        var opaqueTransportPort: Int?
        var labels: [String: String]?
    }

    /// Why a file could not be read, as the OS says it (`No such file or directory`) where the error carries an
    /// errno; FoundationEssentials has no `localizedDescription`.
    static func readFailure(_ error: any Error) -> String {
        if let posix = ((error as? CocoaError)?.underlying as? POSIXError) ?? (error as? POSIXError) {
            return String(cString: strerror(posix.code.rawValue))
        }
        return "\(error)"
    }

    /// The JSON path and problem of a decoding error, short enough for one log line.
    private static func describe(_ error: DecodingError) -> String {
        func path(_ codingPath: [any CodingKey]) -> String {
            let joined = codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return joined.isEmpty ? "top level" : "at \(joined)"
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "\(path(context.codingPath)): missing \"\(key.stringValue)\""
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            return "\(path(context.codingPath)): \(context.debugDescription)"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty
                ? "not valid JSON" : "\(path(context.codingPath)): \(context.debugDescription)"
        @unknown default:
            return "not valid JSON"
        }
    }
}

/// Literal IP syntax checks (no resolution): the forward IP and endpoint addresses must be addresses, and a
/// DNS name there would mean a lookup on every connection.
enum IPAddressSyntax {
    static func isIPAddress(_ text: String) -> Bool {
        isIPv4(text) || isIPv6(text)
    }

    static func isIPv4(_ text: String) -> Bool {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return false }
        return parts.allSatisfy { part in
            !part.isEmpty && part.count <= 3 && part.allSatisfy(\.isConfigDigit) && (Int(part) ?? 256) <= 255
        }
    }

    static func isIPv6(_ text: String) -> Bool {
        var address = in6_addr()
        return text.withCString { inet_pton(AF_INET6, $0, &address) } == 1
    }
}
