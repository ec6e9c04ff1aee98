import ApusDestinationClient
import ApusIdentity
import Foundation
import Logging
import Testing

@testable import ApusProxy

@Suite("Proxy configuration from the environment")
struct ConfigurationTests {
    /// One trust bundle for the whole suite (generating keys is the slow part).
    static let anchorsPEM: String = {
        do {
            return try TrustRootsGenerator.generate().anchorsPEM
        } catch {
            Issue.record("cannot generate trust anchors: \(error)")
            return ""
        }
    }()

    static let localName = "web.shop.serviceaccount.identity.apus.cluster.local"

    static func identityEnvironment(prefix: String = "APUS_PROXY_") -> [String: String] {
        [
            prefix + "IDENTITY_DIR": "/var/run/linkerd/identity/end-entity",
            prefix + "IDENTITY_TOKEN_FILE": "/var/run/secrets/tokens/linkerd-identity-token",
            prefix + "IDENTITY_TRUST_ANCHORS": anchorsPEM,
            prefix + "IDENTITY_LOCAL_NAME": localName,
            prefix + "IDENTITY_SVC_ADDR": "apus-identity-headless.apus.svc.cluster.local.:8080",
            prefix + "IDENTITY_SVC_NAME": "apus-identity.apus.serviceaccount.identity.apus.cluster.local",
        ]
    }

    /// The error for `env`, or a recorded issue when it parsed.
    static func error(_ env: [String: String]) -> ProxyConfigurationError? {
        do {
            let configuration = try ProxyConfiguration.fromEnvironment(env)
            Issue.record("expected an error, got \(configuration)")
            return nil
        } catch {
            return error
        }
    }

    @Test("an empty environment is the standalone proxy with Linkerd's defaults")
    func defaults() throws {
        let configuration = try ProxyConfiguration.fromEnvironment([:])
        #expect(configuration.outboundListen == ListenAddress(host: "127.0.0.1", port: 4140))
        #expect(configuration.inboundListen == ListenAddress(host: "0.0.0.0", port: 4143))
        #expect(configuration.adminListen == ListenAddress(host: "0.0.0.0", port: 4191))
        #expect(configuration.controlListen == ListenAddress(host: "0.0.0.0", port: 4190))
        #expect(configuration.inboundForwardIP == "127.0.0.1")
        #expect(configuration.inboundDefaultPort == nil)
        #expect(configuration.threads == 1)
        #expect(configuration.identity == nil)
        #expect(configuration.destination == nil)
        #expect(configuration.clusterDomain == "cluster.local")
        #expect(configuration.staticEndpoints.isEmpty)
        #expect(configuration.logLevel == .info)
        #expect(configuration.logFormat == .plain)
        #expect(configuration.outboundConnectTimeout == .seconds(1))
        #expect(configuration.inboundConnectTimeout == .milliseconds(100))
        #expect(configuration.detectTimeout == .seconds(10))
        #expect(configuration.inboundDetectTimeout == .seconds(10))
        #expect(configuration.outboundDetectTimeout == .seconds(10))
        #expect(configuration.shutdownGracePeriod == .seconds(120))
        #expect(configuration.metricsRetainIdle == .seconds(600))
        #expect(configuration.inboundPolicy == .allUnauthenticated)
        #expect(configuration.opaquePorts.isEmpty)
        #expect(configuration.shutdownEndpointEnabled == false)
        #expect(configuration.maxHeaderBytes == 65536)
        #expect(configuration.maxHeaderCount == 100)
        // init() and an empty environment agree.
        #expect(ProxyConfiguration().outboundListen == configuration.outboundListen)
    }

    @Test("LINKERD2_PROXY_* is read when APUS_PROXY_* is absent, and APUS_PROXY_* wins when both are set")
    func bothPrefixes() throws {
        let linkerdOnly = try ProxyConfiguration.fromEnvironment([
            "LINKERD2_PROXY_INBOUND_LISTEN_ADDR": "[::]:4143",
            "LINKERD2_PROXY_LOG": "warn,linkerd=info,hickory=error",
            "LINKERD2_PROXY_CORES": "2",
            "LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED": "true",
        ])
        #expect(linkerdOnly.inboundListen == ListenAddress(host: "::", port: 4143))
        #expect(linkerdOnly.logLevel == .warning)
        #expect(linkerdOnly.logFilter.text == "warn,linkerd=info,hickory=error")
        #expect(linkerdOnly.threads == 2)
        #expect(linkerdOnly.shutdownEndpointEnabled)

        let both = try ProxyConfiguration.fromEnvironment([
            "LINKERD2_PROXY_INBOUND_LISTEN_ADDR": "[::]:4143",
            "APUS_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.2:5143",
            "LINKERD2_PROXY_CORES": "2",
            "APUS_PROXY_THREADS": "3",
            "LINKERD2_PROXY_LOG": "not-a-level",  // ignored: the Apus variable wins
            "APUS_PROXY_LOG": "debug",
        ])
        #expect(both.inboundListen == ListenAddress(host: "127.0.0.2", port: 5143))
        #expect(both.threads == 3)
        #expect(both.logLevel == .debug)
    }

    @Test("blank values count as unset")
    func blankIsUnset() throws {
        let configuration = try ProxyConfiguration.fromEnvironment([
            "APUS_PROXY_ADMIN_LISTEN_ADDR": "  ", "LINKERD2_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:9191",
            "APUS_PROXY_IDENTITY_DIR": "",
        ])
        #expect(configuration.adminListen == ListenAddress(host: "127.0.0.1", port: 9191))
        #expect(configuration.identity == nil)
    }

    @Test("every scalar variable is parsed")
    func scalars() throws {
        let configuration = try ProxyConfiguration.fromEnvironment([
            "APUS_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0",
            "APUS_PROXY_CONTROL_LISTEN_ADDR": "[::1]:4190",
            "APUS_PROXY_INBOUND_FORWARD_IP": "127.0.0.9",
            "APUS_PROXY_INBOUND_DEFAULT_PORT": "8080",
            "APUS_PROXY_CLUSTER_DOMAIN": "Example.Org.",
            "APUS_PROXY_LOG_FORMAT": "JSON",
            "APUS_PROXY_OUTBOUND_CONNECT_TIMEOUT": "250ms",
            "APUS_PROXY_INBOUND_CONNECT_TIMEOUT": "1.5s",
            "APUS_PROXY_DETECT_TIMEOUT": "5s",
            "APUS_PROXY_OUTBOUND_DETECT_TIMEOUT": "1m",
            "APUS_PROXY_SHUTDOWN_GRACE_PERIOD": "1m30s",
            "APUS_PROXY_METRICS_RETAIN_IDLE": "2h",
            "APUS_PROXY_INBOUND_DEFAULT_POLICY": "all-authenticated",
            "APUS_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION": "25, 3306,8000-8010,8005-8020,",
            "APUS_PROXY_MAX_HEADER_BYTES": "8192",
            "APUS_PROXY_MAX_HEADER_COUNT": "50",
            "POD_NAME": "web-0",
            "POD_NAMESPACE": "shop",
        ])
        #expect(configuration.outboundListen.port == 0)
        #expect(configuration.controlListen == ListenAddress(host: "::1", port: 4190))
        #expect(configuration.controlListen.description == "[::1]:4190")
        #expect(configuration.inboundForwardIP == "127.0.0.9")
        #expect(configuration.inboundDefaultPort == 8080)
        #expect(configuration.clusterDomain == "example.org")
        #expect(configuration.logFormat == .json)
        #expect(configuration.outboundConnectTimeout == .milliseconds(250))
        #expect(configuration.inboundConnectTimeout == .milliseconds(1500))
        #expect(configuration.detectTimeout == .seconds(5))
        #expect(configuration.inboundDetectTimeout == .seconds(5))
        #expect(configuration.outboundDetectTimeout == .seconds(60))
        #expect(configuration.shutdownGracePeriod == .seconds(90))
        #expect(configuration.metricsRetainIdle == .seconds(7200))
        #expect(configuration.inboundPolicy == .allAuthenticated)
        #expect(configuration.opaquePorts.description == "25,3306,8000-8020")
        #expect(configuration.opaquePorts.contains(3306))
        #expect(configuration.opaquePorts.contains(8015))
        #expect(!configuration.opaquePorts.contains(8021))
        #expect(!configuration.opaquePorts.contains(80))
        #expect(configuration.maxHeaderBytes == 8192)
        #expect(configuration.maxHeaderCount == 50)
        #expect(configuration.podName == "web-0")
        #expect(configuration.namespace == "shop")
    }

    @Test(
        "malformed values fail naming the variable and the value",
        arguments: [
            ("APUS_PROXY_INBOUND_LISTEN_ADDR", "4143"),
            ("APUS_PROXY_INBOUND_LISTEN_ADDR", ":::4143"),
            ("APUS_PROXY_ADMIN_LISTEN_ADDR", "0.0.0.0:70000"),
            ("APUS_PROXY_ADMIN_LISTEN_ADDR", "[::1:4191"),
            ("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "localhost:-1"),
            ("APUS_PROXY_INBOUND_FORWARD_IP", "localhost"),
            ("APUS_PROXY_INBOUND_DEFAULT_PORT", "0"),
            ("APUS_PROXY_THREADS", "0"),
            ("LINKERD2_PROXY_CORES", "two"),
            ("APUS_PROXY_CLUSTER_DOMAIN", "bad_domain"),
            ("APUS_PROXY_LOG", "verbose"),
            ("APUS_PROXY_LOG", "apus=loud"),
            ("APUS_PROXY_LOG", "hickory=error"),
            ("APUS_PROXY_LOG_FORMAT", "xml"),
            ("APUS_PROXY_OUTBOUND_CONNECT_TIMEOUT", "10"),
            ("APUS_PROXY_INBOUND_CONNECT_TIMEOUT", "-1s"),
            ("APUS_PROXY_DETECT_TIMEOUT", "1fortnight"),
            ("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "soon"),
            ("APUS_PROXY_METRICS_RETAIN_IDLE", "m"),
            ("APUS_PROXY_INBOUND_DEFAULT_POLICY", "cluster-unauthenticated"),
            ("APUS_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION", "25,70000"),
            ("APUS_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION", "8010-8000"),
            ("APUS_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION", "http"),
            ("APUS_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "maybe"),
            ("APUS_PROXY_MAX_HEADER_BYTES", "10"),
            ("APUS_PROXY_MAX_HEADER_COUNT", "1e3"),
            ("APUS_PROXY_IDENTITY_DISABLED", "sometimes"),
        ])
    func invalidValue(variable: String, value: String) throws {
        let error = try #require(Self.error([variable: value]))
        guard case .invalidValue(let named, let echoed, let expected) = error else {
            Issue.record("expected invalidValue, got \(error)")
            return
        }
        #expect(named == variable)
        #expect(echoed == value)
        #expect(!expected.isEmpty)
        #expect(error.description.contains(variable))
        #expect(error.description.contains(value))
    }

    @Test("identity is configured only when every required variable is present, from either prefix")
    func identityComplete() throws {
        for prefix in ["APUS_PROXY_", "LINKERD2_PROXY_"] {
            let configuration = try ProxyConfiguration.fromEnvironment(Self.identityEnvironment(prefix: prefix))
            let identity = try #require(configuration.identity)
            #expect(identity.localName == Self.localName)
            #expect(identity.tokenFile == "/var/run/secrets/tokens/linkerd-identity-token")
            #expect(identity.trustAnchorsPEM == Self.anchorsPEM)
            #expect(
                identity.serviceAddress
                    == ServiceAddress(
                        host: "apus-identity-headless.apus.svc.cluster.local.",
                        port: 8080))
            #expect(identity.serviceName == "apus-identity.apus.serviceaccount.identity.apus.cluster.local")
            #expect(identity.directory == "/var/run/linkerd/identity/end-entity")
        }
        var disabled = Self.identityEnvironment()
        disabled["LINKERD2_PROXY_IDENTITY_DISABLED"] = "true"
        #expect(try ProxyConfiguration.fromEnvironment(disabled).identity == nil)
    }

    @Test(
        "a partial identity configuration names the missing variable",
        arguments: [
            "IDENTITY_LOCAL_NAME", "IDENTITY_TOKEN_FILE", "IDENTITY_SVC_ADDR", "IDENTITY_SVC_NAME",
            "IDENTITY_TRUST_ANCHORS",
        ])
    func identityPartial(missing suffix: String) throws {
        for prefix in ["APUS_PROXY_", "LINKERD2_PROXY_"] {
            var env = Self.identityEnvironment(prefix: prefix)
            env[prefix + suffix] = nil
            let error = try #require(Self.error(env))
            guard case .missingVariable(let variable, let requiredBy) = error else {
                Issue.record("expected missingVariable, got \(error)")
                continue
            }
            // Named in the spelling the operator uses.
            #expect(variable == prefix + suffix)
            #expect(requiredBy.contains("identity"))
        }
    }

    @Test("trust anchors come from a file, and the file and text forms cannot both be set")
    func trustAnchorsFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("apus-config-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("ca.crt").path
        try Self.anchorsPEM.write(toFile: path, atomically: true, encoding: .utf8)

        var env = Self.identityEnvironment()
        env["APUS_PROXY_IDENTITY_TRUST_ANCHORS"] = nil
        env["APUS_PROXY_IDENTITY_TRUST_ANCHORS_FILE"] = path
        #expect(try ProxyConfiguration.fromEnvironment(env).identity?.trustAnchorsPEM == Self.anchorsPEM)

        env["APUS_PROXY_IDENTITY_TRUST_ANCHORS"] = Self.anchorsPEM
        guard case .conflictingVariables(let first, let second, _) = try #require(Self.error(env)) else {
            Issue.record("expected conflictingVariables")
            return
        }
        #expect(first == "APUS_PROXY_IDENTITY_TRUST_ANCHORS")
        #expect(second == "APUS_PROXY_IDENTITY_TRUST_ANCHORS_FILE")

        env["APUS_PROXY_IDENTITY_TRUST_ANCHORS"] = nil
        let missing = directory.appendingPathComponent("absent.crt").path
        env["APUS_PROXY_IDENTITY_TRUST_ANCHORS_FILE"] = missing
        guard case .unreadableFile(let variable, let reported, _) = try #require(Self.error(env)) else {
            Issue.record("expected unreadableFile")
            return
        }
        #expect(variable == "APUS_PROXY_IDENTITY_TRUST_ANCHORS_FILE")
        #expect(reported == missing)
    }

    @Test("corrupt trust anchors, a malformed local name and a malformed service address are rejected")
    func identityBadValues() throws {
        let cases: [(String, String)] = [
            ("APUS_PROXY_IDENTITY_TRUST_ANCHORS", "not a certificate"),
            ("APUS_PROXY_IDENTITY_TRUST_ANCHORS", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            ("APUS_PROXY_IDENTITY_LOCAL_NAME", "web.shop"),
            ("APUS_PROXY_IDENTITY_SVC_ADDR", "apus-identity:0"),
            ("APUS_PROXY_IDENTITY_SVC_ADDR", "apus-identity"),
        ]
        for (variable, value) in cases {
            var env = Self.identityEnvironment()
            env[variable] = value
            let error = try #require(Self.error(env))
            #expect(error.variable == variable, "\(variable)=\(value): \(error)")
            guard case .invalidValue = error else {
                Issue.record("expected invalidValue for \(variable)=\(value), got \(error)")
                continue
            }
        }
    }

    @Test("destination settings read the address, name and Linkerd's context JSON; namespace falls back to it")
    func destination() throws {
        let configuration = try ProxyConfiguration.fromEnvironment([
            "LINKERD2_PROXY_DESTINATION_SVC_ADDR": "apus-dst-headless.apus.svc.cluster.local.:8086",
            "LINKERD2_PROXY_DESTINATION_SVC_NAME": "apus-destination.apus.serviceaccount.identity.apus.cluster.local",
            "LINKERD2_PROXY_DESTINATION_CONTEXT": #"{"ns":"shop","nodeName":"node-1","pod":"web-0"}"#,
        ])
        let destination = try #require(configuration.destination)
        #expect(destination.address == ServiceAddress(host: "apus-dst-headless.apus.svc.cluster.local.", port: 8086))
        #expect(destination.serviceName == "apus-destination.apus.serviceaccount.identity.apus.cluster.local")
        #expect(destination.contextNamespace == "shop")
        #expect(destination.contextNodeName == "node-1")
        #expect(destination.contextPod == "web-0")
        #expect(configuration.namespace == "shop")

        // POD_NAMESPACE is preferred over the context.
        let both = try ProxyConfiguration.fromEnvironment([
            "APUS_PROXY_DESTINATION_SVC_ADDR": "127.0.0.1:8086", "POD_NAMESPACE": "other",
            "APUS_PROXY_DESTINATION_CONTEXT": #"{"ns":"shop"}"#,
        ])
        #expect(both.namespace == "other")
    }

    @Test("destination errors: no namespace, context without address, context that is not JSON")
    func destinationErrors() throws {
        let noNamespace = try #require(Self.error(["APUS_PROXY_DESTINATION_SVC_ADDR": "127.0.0.1:8086"]))
        #expect(noNamespace == .missingVariable(variable: "POD_NAMESPACE", requiredBy: noNamespace.requiredBy))

        let noAddress = try #require(
            Self.error(["LINKERD2_PROXY_DESTINATION_CONTEXT": #"{"ns":"shop"}"#, "POD_NAMESPACE": "shop"]))
        #expect(noAddress.variable == "LINKERD2_PROXY_DESTINATION_SVC_ADDR")

        let badContext = try #require(
            Self.error([
                "APUS_PROXY_DESTINATION_SVC_ADDR": "127.0.0.1:8086", "APUS_PROXY_DESTINATION_CONTEXT": "ns=shop",
            ]))
        #expect(badContext.variable == "APUS_PROXY_DESTINATION_CONTEXT")
    }

    @Test("static endpoints decode as destination wire endpoints, weight and labels optional")
    func staticEndpoints() throws {
        let json = #"""
            {"web.shop.svc.cluster.local:80": [
                {"address": "10.0.0.1", "port": 8080, "identity": "web.shop.serviceaccount.identity.apus.cluster.local",
                 "protocolHint": "h2", "labels": {"pod": "web-0", "namespace": "shop"}},
                {"address": "fd00::2", "port": 8080, "weight": 5, "opaqueTransportPort": 4143}
            ]}
            """#
        let configuration = try ProxyConfiguration.fromEnvironment(["APUS_PROXY_OUTBOUND_STATIC_ENDPOINTS": json])
        let endpoints = try #require(configuration.staticEndpoints["web.shop.svc.cluster.local:80"])
        #expect(endpoints.count == 2)
        #expect(
            endpoints[0]
                == Endpoint(
                    address: "10.0.0.1", port: 8080, identity: "web.shop.serviceaccount.identity.apus.cluster.local",
                    protocolHint: .http2, labels: ["pod": "web-0", "namespace": "shop"]))
        #expect(endpoints[0].weight == DestinationProtocol.defaultWeight)
        #expect(endpoints[1] == Endpoint(address: "fd00::2", port: 8080, weight: 5, opaqueTransportPort: 4143))
    }

    @Test(
        "malformed static endpoints name the variable and what is wrong",
        arguments: [
            ("not json", "JSON"),
            (#"{"web:80": [{"port": 80}]}"#, "address"),
            (#"{"web:80": [{"address": "web.local", "port": 80}]}"#, "web:80[0].address"),
            (#"{"web:80": [{"address": "10.0.0.1", "port": 0}]}"#, "web:80[0].port"),
            (#"{"web:80": [{"address": "10.0.0.1", "port": 80, "weight": 0}]}"#, "weight"),
            (#"{"web": [{"address": "10.0.0.1", "port": 80}]}"#, "host:port"),
            (#"{"web:80": [{"address": "10.0.0.1", "port": 80, "protocolHint": "h3"}]}"#, "protocolHint"),
        ])
    func staticEndpointsInvalid(json: String, mentioned: String) throws {
        let error = try #require(Self.error(["APUS_PROXY_OUTBOUND_STATIC_ENDPOINTS": json]))
        #expect(error.variable == "APUS_PROXY_OUTBOUND_STATIC_ENDPOINTS")
        #expect(error.description.contains(mentioned), "\(error)")
    }

    @Test("listen addresses: IPv4, bracketed IPv6, names; round trip through description")
    func listenAddresses() throws {
        #expect(try ListenAddress(parsing: "[::]:4143") == ListenAddress(host: "::", port: 4143))
        #expect(try ListenAddress(parsing: " 0.0.0.0:4191 ") == ListenAddress(host: "0.0.0.0", port: 4191))
        #expect(try ListenAddress(parsing: "localhost:80").host == "localhost")
        for text in ["[::]:4143", "127.0.0.1:4140", "[fd00::1]:80"] {
            #expect(try ListenAddress(parsing: text).description == text)
        }
        #expect(throws: HostPortSyntaxError.self) { try ListenAddress(parsing: "[::]4143") }
        #expect(throws: HostPortSyntaxError.self) { try ListenAddress(parsing: "[127.0.0.1]:80") }
        #expect(throws: HostPortSyntaxError.self) { try ListenAddress(parsing: ":80") }
        #expect(throws: HostPortSyntaxError.self) { try ServiceAddress(parsing: "identity:0") }
    }

    @Test("log filters: the last bare level wins, else the apus/linkerd directive; `off` keeps only critical")
    func logFilters() throws {
        #expect(try LogFilter(parsing: "warn,linkerd=info,hickory=error").level == .warning)
        #expect(try LogFilter(parsing: "info,debug").level == .debug)
        #expect(try LogFilter(parsing: "linkerd=debug,hickory=error").level == .debug)
        #expect(try LogFilter(parsing: "apus=trace").level == .trace)
        #expect(try LogFilter(parsing: "OFF").level == .critical)
        #expect(try LogFilter(parsing: " error ").text == "error")
        #expect(throws: LogFilterSyntaxError.self) { try LogFilter(parsing: "") }
        #expect(throws: LogFilterSyntaxError.self) { try LogFilter(parsing: "=debug") }
        #expect(throws: LogFilterSyntaxError.self) { try LogFilter(parsing: "hickory=error") }
    }
}

extension ProxyConfigurationError {
    fileprivate var requiredBy: String {
        if case .missingVariable(_, let requiredBy) = self { return requiredBy }
        return ""
    }
}
