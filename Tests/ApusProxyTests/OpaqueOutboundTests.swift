import ApusCore
import ApusDestinationClient
import ApusProxy
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Two pods as network namespaces joined by a veth pair, each with its traffic sent through an `apus-proxy`
/// process by the repository's own `proxy-init/apus-proxy-init.sh` rules, the proxies certified by an in-process
/// identity service. Everything lives in namespaces the test makes and always deletes.
///
/// ```
///  client namespace                                     server namespace
///  app ─connect(server:3306)─► OUTPUT REDIRECT ─► :4140   :4143 ◄─ PREROUTING REDIRECT ◄─┐
///                                     client proxy (UID 2102, exempt) ─mTLS + header─────┘
///                                                         server proxy ─► 127.0.0.1:3306 app
/// ```
final class MeshTestbed: @unchecked Sendable {
    /// Linkerd's proxy UID; the rules exempt it so the proxies' own connections are not redirected.
    static let proxyUID = 2102
    static let outboundPort = 4140
    static let inboundPort = 4143
    static let adminPort = 4191

    let clientNamespace: String
    let serverNamespace: String
    let clientAddress: String
    let serverAddress: String
    private var proxies: [ProxyProcess] = []
    private var servers: [BannerServer] = []
    private var relays: [NamespaceRelay] = []

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The tools the test bed needs that are missing on this machine (`.ci/run` installs them).
    static func missingTools() -> [String] {
        var missing = ["ip", "setpriv", "curl", "iptables-save"].filter { HostTools.find($0) == nil }
        if HostTools.find("iptables-nft-restore") == nil && HostTools.find("iptables-restore") == nil {
            missing.append("iptables-restore")
        }
        return missing
    }

    private init(id: String, subnet: (UInt8, UInt8, UInt8)) {
        clientNamespace = "apus-test-\(id)-c"
        serverNamespace = "apus-test-\(id)-s"
        clientAddress = "10.\(subnet.0).\(subnet.1).\(subnet.2 + 1)"
        serverAddress = "10.\(subnet.0).\(subnet.1).\(subnet.2 + 2)"
    }

    /// Runs `body` with a fresh test bed and deletes it afterwards, also when `body` throws.
    static func with(_ body: (MeshTestbed) async throws -> Void) async throws {
        let id = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        // A random /30 in 10.0.0.0/8; it exists only inside the two namespaces.
        let bed = MeshTestbed(
            id: id, subnet: (UInt8.random(in: 1...254), UInt8.random(in: 0...255), UInt8.random(in: 0...63) * 4))
        do {
            try bed.create(id: id)
            try await body(bed)
        } catch {
            await bed.destroy()
            throw error
        }
        await bed.destroy()
    }

    private func create(id: String) throws {
        let clientLink = "apc\(id)"
        let serverLink = "aps\(id)"
        try HostTools.run("ip", ["netns", "add", clientNamespace])
        try HostTools.run("ip", ["netns", "add", serverNamespace])
        try HostTools.run(
            "ip",
            [
                "link", "add", clientLink, "netns", clientNamespace, "type", "veth", "peer", "name", serverLink,
                "netns", serverNamespace,
            ])
        for (namespace, link, address) in [
            (clientNamespace, clientLink, clientAddress), (serverNamespace, serverLink, serverAddress),
        ] {
            try HostTools.run("ip", ["-n", namespace, "link", "set", "lo", "up"])
            try HostTools.run("ip", ["-n", namespace, "addr", "add", "\(address)/30", "dev", link])
            try HostTools.run("ip", ["-n", namespace, "link", "set", link, "up"])
            // What the pod's init container does: TCP in and out goes through the proxy.
            try HostTools.run(
                "ip",
                [
                    "netns", "exec", namespace, "/bin/sh",
                    Self.repository.appendingPathComponent("proxy-init/apus-proxy-init.sh").path,
                    "--incoming-proxy-port", "\(Self.inboundPort)", "--outgoing-proxy-port", "\(Self.outboundPort)",
                    "--proxy-uid", "\(Self.proxyUID)", "--inbound-ports-to-ignore", "4190,\(Self.adminPort)",
                ])
        }
    }

    /// Stops what runs in the namespaces, then deletes them (which deletes the veth pair).
    func destroy() async {
        for proxy in proxies { proxy.stop() }
        for server in servers { await server.stop() }
        for relay in relays { await relay.stop() }
        for namespace in [clientNamespace, serverNamespace] {
            _ = try? HostTools.run("ip", ["netns", "delete", namespace])
        }
    }

    /// A banner-first application listening on all addresses of the server namespace.
    func startServerApp(port: Int, banner: [UInt8]) async throws -> BannerServer {
        let server = try await BannerServer.start(
            namespace: serverNamespace, host: "0.0.0.0", port: port, banner: banner)
        servers.append(server)
        return server
    }

    /// Starts `apus-proxy` in `namespace` as the proxy UID, reaching the identity service through a relay in that
    /// namespace, and waits until its `/ready` answers 200.
    func startProxy(
        in namespace: String, serviceAccount: String, control: IdentityControlPlane, extra: [String: String]
    ) async throws -> ProxyProcess {
        let relay = try await NamespaceRelay.start(namespace: namespace, targetPort: control.port)
        relays.append(relay)
        var environment = [
            "PATH": HostTools.searchPath,
            "APUS_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:\(Self.outboundPort)",
            "APUS_PROXY_INBOUND_LISTEN_ADDR": "0.0.0.0:\(Self.inboundPort)",
            "APUS_PROXY_ADMIN_LISTEN_ADDR": "0.0.0.0:\(Self.adminPort)",
            "APUS_PROXY_IDENTITY_TOKEN_FILE": try control.tokenFile(for: serviceAccount),
            "APUS_PROXY_IDENTITY_TRUST_ANCHORS": control.anchorsPEM,
            "APUS_PROXY_IDENTITY_LOCAL_NAME": MeshCA.identity(serviceAccount),
            "APUS_PROXY_IDENTITY_SVC_ADDR": "127.0.0.1:\(relay.port)",
            "APUS_PROXY_IDENTITY_SVC_NAME": control.service.serverIdentity.description,
            "APUS_PROXY_SHUTDOWN_GRACE_PERIOD": "1s",
        ]
        environment.merge(extra) { _, new in new }
        let proxy = try ProxyProcess(namespace: namespace, name: serviceAccount, environment: environment)
        proxies.append(proxy)
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            guard proxy.isRunning else {
                throw TestbedError(message: "proxy \(serviceAccount) exited: \(proxy.log)")
            }
            let status = try? HostTools.run(
                "ip",
                [
                    "netns", "exec", namespace, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                    "2", "http://127.0.0.1:\(Self.adminPort)/ready",
                ])
            if status == "200" { return proxy }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw TestbedError(message: "proxy \(serviceAccount) not ready within 30 s: \(proxy.log)")
    }

    /// The `/metrics` text of the proxy in `namespace`.
    func metrics(in namespace: String) throws -> String {
        try HostTools.run(
            "ip",
            [
                "netns", "exec", namespace, "curl", "-s", "--max-time", "5",
                "http://127.0.0.1:\(Self.adminPort)/metrics",
            ])
    }
}

/// An `apus-proxy` process started with `ip netns exec <namespace> setpriv --reuid=2102 …`, its output in a
/// file for the failure message.
final class ProxyProcess: @unchecked Sendable {
    private let process = Process()
    private let logURL: URL

    init(namespace: String, name: String, environment: [String: String]) throws {
        let binary = builtExecutable("apus-proxy")
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw TestbedError(message: "\(binary) is not built")
        }
        guard let ip = HostTools.find("ip") else { throw TestbedError(message: "ip is not installed") }
        logURL = FileManager.default.temporaryDirectory.appendingPathComponent("\(namespace)-\(name).log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let log = try FileHandle(forWritingTo: logURL)
        let uid = "\(MeshTestbed.proxyUID)"
        process.executableURL = URL(fileURLWithPath: ip)
        process.arguments = [
            "netns", "exec", namespace, "setpriv", "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "--", binary,
        ]
        process.environment = environment
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try log.close()
    }

    var isRunning: Bool { process.isRunning }

    /// The last part of what the proxy printed.
    var log: String {
        let text = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
        return String(text.suffix(4000))
    }

    /// SIGTERM (the proxy drains for its 1 s grace period), SIGKILL if it is still there after 5 s.
    func stop() {
        if process.isRunning {
            process.terminate()
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: logURL)
    }
}

/// The outbound opaque path end to end: an application's connection redirected by iptables to the client proxy,
/// `SO_ORIGINAL_DST`, discovery (static endpoints with identity and the `opaque` hint), mesh TLS with the
/// transport header to the server proxy, and the server proxy forwarding to the application's original port.
@Suite(.enabled(if: geteuid() == 0, "needs root: creates network namespaces and iptables rules"))
struct OpaqueOutboundTests {
    static let appPort = 3306
    static let impostorPort = 3307
    /// A MySQL-like greeting: the server speaks first, binary with NULs, so no detection can classify it.
    static let banner: [UInt8] = [0x4A, 0x00, 0x00, 0x00, 0x0A] + Array("8.0.36-apus".utf8) + [0x00, 0xFF, 0x00, 0x01]

    /// `count` bytes taking every value, NULs included, in a pattern that shifts every 251 bytes (so a chunk
    /// dropped, repeated or reordered shows).
    static func payload(_ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: ($0 * 7 + $0 / 251) % 256) }
    }

    /// Fails the test, naming what is missing, unless the host tools are installed.
    static func toolsPresent() -> Bool {
        let missing = MeshTestbed.missingTools()
        if !missing.isEmpty {
            Issue.record("the namespace test needs \(missing.joined(separator: ", ")) (`.ci/run` installs them)")
        }
        return missing.isEmpty
    }

    /// Starts the server side (apps on 3306 and 3307, the `api` proxy) and the client's `web` proxy, whose
    /// static discovery says 3306 is `api`'s and 3307 belongs to `db` (which the server proxy is not).
    static func withMeshedPair(
        _ body: (MeshTestbed, BannerServer, BannerServer) async throws -> Void
    ) async throws {
        let control = try await IdentityControlPlane.start()
        do {
            try await MeshTestbed.with { bed in
                let app = try await bed.startServerApp(port: appPort, banner: banner)
                let impostorTarget = try await bed.startServerApp(port: impostorPort, banner: banner)
                _ = try await bed.startProxy(
                    in: bed.serverNamespace, serviceAccount: "api", control: control,
                    // The default policy (all-unauthenticated) would also forward plaintext: only the client
                    // proxy's mesh TLS, seen in the server's metrics, proves the bytes were protected, and a client
                    // proxy falling back to plaintext would show in the fail-closed test.
                    extra: ["APUS_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION": "\(appPort),\(impostorPort)"])
                func endpoint(_ port: Int, _ serviceAccount: String) -> String {
                    #"[{"address":"\#(bed.serverAddress)","port":\#(port),"#
                        + #""identity":"\#(MeshCA.identity(serviceAccount))","protocolHint":"opaque","#
                        + #""opaqueTransportPort":\#(MeshTestbed.inboundPort)}]"#
                }
                let table =
                    #"{"\#(bed.serverAddress):\#(appPort)":\#(endpoint(appPort, "api")),"#
                    + #""\#(bed.serverAddress):\#(impostorPort)":\#(endpoint(impostorPort, "db"))}"#
                // Failure accrual on the impostor's destination ejects its only endpoint after the first failed
                // handshake, for a minute: later connections find no endpoint to pick, and must not fall back
                // to the original address in plaintext.
                let ejecting = DestinationProfile(
                    fullyQualifiedName: "\(bed.serverAddress)", port: impostorPort, source: .default,
                    servicePolicy: RoutePolicy(
                        failureAccrual: RoutePolicy.FailureAccrual(
                            consecutiveMaxFailures: 1, minPenalty: try GoDuration(parsing: "1m"),
                            maxPenalty: try GoDuration(parsing: "1m"), jitterRatio: 0)))
                let profiles = String(
                    decoding: try JSONEncoder().encode(["\(bed.serverAddress):\(impostorPort)": ejecting]),
                    as: UTF8.self)
                _ = try await bed.startProxy(
                    in: bed.clientNamespace, serviceAccount: "web", control: control,
                    extra: [
                        "APUS_PROXY_OUTBOUND_STATIC_ENDPOINTS": table,
                        "APUS_PROXY_OUTBOUND_STATIC_PROFILES": profiles,
                        // Far beyond the client's read timeout: a banner can only arrive if discovery's opaque
                        // hint skips detection, never because detection gave up.
                        "APUS_PROXY_OUTBOUND_DETECT_TIMEOUT": "5m",
                    ])
                try await body(bed, app, impostorTarget)
            }
        } catch {
            await control.stop()
            throw error
        }
        await control.stop()
    }

    /// The `tcp_open_total` series whose labels include all of `labels`, with its value.
    static func openedConnections(in metrics: String, labels: [String]) -> [(series: String, value: Double)] {
        metrics.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("tcp_open_total{"), labels.allSatisfy({ line.contains($0) }),
                let value = line.split(separator: " ").last.flatMap({ Double($0) })
            else { return nil }
            return (String(line), value)
        }
    }

    @Test("a server-speaks-first binary protocol crosses both proxies byte for byte over mTLS, with half-close")
    func bannerProtocolRoundTrip() async throws {
        guard Self.toolsPresent() else { return }
        try await Self.withMeshedPair { bed, app, impostorTarget in
            let sent = Self.payload(48 * 1024)
            let exchange = try await BlockingClient.exchange(
                namespace: bed.clientNamespace, host: bed.serverAddress, port: Self.appPort,
                expectBefore: Self.banner.count, payload: sent, readTimeout: 20)

            // The banner came first, before the client wrote a byte; then the server's answer, which it sends
            // only after the client's FIN crossed both proxies, and then its close came back as EOF.
            #expect(exchange.beforeWriting == Self.banner)
            #expect(exchange.writeError == nil)
            #expect(exchange.afterWriting.count == sent.count)
            #expect(exchange.afterWriting == BannerServer.response(to: sent))
            #expect(exchange.endedWithEOF)
            #expect(!exchange.timedOut)

            // A client that writes and half-closes at once, while the proxies are still connecting: the FIN
            // waits behind the bytes instead of dropping the connection.
            let early = Self.payload(20 * 1024 + 3).reversed().map { $0 }
            let eager = try await BlockingClient.exchange(
                namespace: bed.clientNamespace, host: bed.serverAddress, port: Self.appPort, expectBefore: 0,
                payload: early, readTimeout: 20)
            #expect(eager.writeError == nil)
            #expect(eager.afterWriting == Self.banner + BannerServer.response(to: early))
            #expect(eager.endedWithEOF)

            let accepted = app.accepted
            #expect(accepted.count == 2)
            #expect(accepted.first?.received == sent)
            #expect(accepted.last?.received == early)
            let everyFINArrived = accepted.allSatisfy { $0.sawEOF }
            #expect(everyFINArrived)
            #expect(impostorTarget.accepted.isEmpty)

            // The server proxy saw the client proxy's verified identity, over TLS, and reached the app on the
            // port the client addressed (from the transport header).
            let serverMetrics = try bed.metrics(in: bed.serverNamespace)
            let inbound = Self.openedConnections(
                in: serverMetrics,
                labels: [
                    #"direction="inbound""#, #"target_addr="127.0.0.1:\#(Self.appPort)""#, #"tls="true""#,
                    #"client_id="\#(MeshCA.identity("web"))""#,
                ])
            #expect(inbound.map(\.value) == [2], "inbound series: \(inbound.map(\.series))\n\(serverMetrics)")

            // The client proxy took the redirected connection and dialed the server proxy's inbound port itself
            // (its own connection exempt from the redirect), verifying the destination's identity.
            let clientMetrics = try bed.metrics(in: bed.clientNamespace)
            let outbound = Self.openedConnections(
                in: clientMetrics,
                labels: [
                    #"direction="outbound""#, #"target_addr="\#(bed.serverAddress):\#(MeshTestbed.inboundPort)""#,
                    #"tls="true""#, #"server_id="\#(MeshCA.identity("api"))""#,
                ])
            #expect(outbound.map(\.value) == [2], "outbound series: \(outbound.map(\.series))\n\(clientMetrics)")
        }
    }

    @Test("a destination whose server proxy presents another identity gets its connection closed, no byte through")
    func wrongIdentityFailsClosed() async throws {
        guard Self.toolsPresent() else { return }
        try await Self.withMeshedPair { bed, app, impostorTarget in
            for _ in 0..<3 {
                let exchange = try await BlockingClient.exchange(
                    namespace: bed.clientNamespace, host: bed.serverAddress, port: Self.impostorPort,
                    expectBefore: 0, payload: Array("SELECT secret FROM vault;\u{0}".utf8), readTimeout: 20)
                #expect(exchange.afterWriting.isEmpty)
                #expect(!exchange.timedOut, "the client proxy must close the connection, not leave it hanging")
            }
            #expect(impostorTarget.accepted.isEmpty)
            #expect(app.accepted.isEmpty)
            // The client proxy reached the server proxy and refused it during the handshake; then, with the
            // endpoint ejected, it closed the next connections itself rather than send them around mesh TLS.
            let clientMetrics = try bed.metrics(in: bed.clientNamespace)
            func errors(_ reason: String) -> [Substring?] {
                clientMetrics.split(separator: "\n").filter {
                    $0.hasPrefix("outbound_http_errors_total{") && $0.contains(#"error="\#(reason)""#)
                }.map { $0.split(separator: " ").last }
            }
            #expect(errors("tls_failed") == ["1"], "\(clientMetrics)")
            #expect(errors("no_endpoints") == ["2"], "\(clientMetrics)")
            let serverMetrics = try bed.metrics(in: bed.serverNamespace)
            #expect(
                Self.openedConnections(in: serverMetrics, labels: [#"direction="inbound""#, #"peer="dst""#]).isEmpty,
                "the server proxy forwarded something:\n\(serverMetrics)")
        }
    }
}
