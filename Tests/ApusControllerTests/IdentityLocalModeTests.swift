import ApusController
import ApusIdentity
import ApusIdentityClient
import ApusX509
import Foundation
import MetricsTestKit
import Testing

/// Local mode: issuer from files, tokens minted by the controller, no API server; and the client's refresh loop.
@Suite struct IdentityLocalModeTests {
    static let web = IdentityName(serviceAccount: "web", namespace: "default")

    static func writeFiles(_ roots: TrustRoots, anchorsPEM: String? = nil, to directory: TemporaryDirectory) throws {
        try directory.write(anchorsPEM ?? roots.anchorsPEM, to: "ca-bundle.crt")
        try directory.write(roots.issuerCertificatePEM, to: "issuer.crt")
        try directory.write(roots.issuerKeyPEM, to: "issuer.key")
    }

    @Test("files are hot-reloaded: a new issuer is used at once, an invalid one is refused, the old one stays")
    func fileSourceHotReload() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.cleanup() }
        let first = try TrustRoots.generate()
        let second = try TrustRoots.generate()
        let issuer = IdentityIssuer()
        let source = FileIssuerSource(directory: directory.url.path, pollInterval: .milliseconds(50))

        // No files yet: not ready, and the reason names the missing file.
        #expect(source.poll(issuer: issuer) == nil)
        let notReady = await identityError { try issuer.authority() }
        #expect(notReady?.code == .issuerNotReady)
        #expect(notReady?.message.contains("ca-bundle.crt") == true)

        try Self.writeFiles(first, to: directory)
        let polling = Task { await source.run(issuer: issuer) }
        try await eventually { issuer.credentials?.issuer == (try first.issuer) }

        try Self.writeFiles(second, anchorsPEM: first.anchorsPEM + second.anchorsPEM, to: directory)
        try await eventually { issuer.credentials?.issuer == (try second.issuer) }
        #expect(issuer.credentials?.anchors.count == 2)

        // A key that does not belong to the certificate (e.g. a half-finished copy) is refused, once.
        try directory.write(first.issuerKeyPEM, to: "issuer.key")
        guard case .rejected(let error, _) = source.poll(issuer: issuer) else {
            Issue.record("a mismatched key was accepted")
            return
        }
        #expect(error.code == .invalidIssuer)
        if case .rejected(_, let repeated) = source.poll(issuer: issuer) { #expect(repeated) }
        #expect(issuer.credentials?.issuer == (try second.issuer))
        let generation = issuer.generation
        // Back to the loaded texts: recognised as unchanged, no switch.
        try directory.write(second.issuerKeyPEM, to: "issuer.key")
        guard case .unchanged = source.poll(issuer: issuer) else {
            Issue.record("identical credentials were not recognised as unchanged")
            return
        }
        #expect(issuer.generation == generation)
        polling.cancel()
        await polling.value
    }

    @Test("local mode: controller-minted tokens certify proxies; revoked and unknown tokens are refused")
    func localTokens() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.cleanup() }
        let roots = try TrustRoots.generate()
        try Self.writeFiles(roots, to: directory)
        let tokens = LocalTokenValidator()
        let service = IdentityService(
            options: IdentityFixture.serviceOptions(),
            source: FileIssuerSource(directory: directory.url.path, pollInterval: .milliseconds(100)),
            validator: tokens)
        let (task, port) = try await startService(service)
        try await eventually { service.servingCertificate != nil }

        let token = tokens.mint(for: Self.web)
        #expect(token.count == 64)
        try directory.write(token + "\n", to: "token")
        let client = try makeIdentityClient(
            identity: Self.web, tokenPath: directory.path("token"), anchorsPEM: roots.anchorsPEM, port: port)
        let credentials = try await client.certify()
        #expect(credentials.leaf.dnsNames == [Self.web.description])

        // The token of another workload cannot get this identity.
        try directory.write(tokens.mint(for: IdentityName(serviceAccount: "db", namespace: "default")), to: "token")
        #expect(await clientError { try await client.certify() }?.rejection?.code == .identityMismatch)
        tokens.revoke(token)
        try directory.write(token, to: "token")
        let revoked = await clientError { try await client.certify() }
        #expect(revoked?.rejection?.code == .tokenInvalid && revoked?.httpStatus == 401)
        try directory.write("", to: "token")
        #expect(await clientError { try await client.certify() }?.code == .tokenUnreadable)
        // The last good certificate is still there after the failures.
        #expect(client.credentials?.leaf == credentials.leaf)
        await stopService(task)
    }

    @Test("the client refreshes before expiry, counts refreshes, moves the gauge, and survives a controller outage")
    func clientRefresh() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.cleanup() }
        let roots = try TrustRoots.generate()
        try Self.writeFiles(roots, to: directory)
        let tokens = LocalTokenValidator()
        try directory.write(tokens.mint(for: Self.web), to: "token")
        // Two-second leaves (plus one second of skew): a refresh roughly every two seconds.
        var options = IdentityFixture.serviceOptions()
        options.leafLifetime = 2
        options.clockSkew = 1
        options.servingLifetime = 3600
        func makeService(port: Int) -> IdentityService {
            var options = options
            options.port = port
            return IdentityService(
                options: options, source: FileIssuerSource(directory: directory.url.path), validator: tokens)
        }
        let service = makeService(port: 0)
        let (task, port) = try await startService(service)
        try await eventually { service.servingCertificate != nil }

        let metrics = TestMetrics()
        let refresh = RefreshPolicy(
            minimumRefresh: .milliseconds(200), initialBackoff: .milliseconds(100), maximumBackoff: .milliseconds(300))
        let client = try makeIdentityClient(
            identity: Self.web, tokenPath: directory.path("token"), anchorsPEM: roots.anchorsPEM, port: port,
            refresh: refresh, metricsFactory: metrics)
        let run = Task { await client.run() }
        let refreshes = { (try? metrics.expectCounter("identity_cert_refresh_count").totalValue) ?? 0 }
        try await eventually(timeout: .seconds(20)) { refreshes() >= 3 }
        let expirations = try metrics.expectGauge("identity_cert_expiration_timestamp_seconds").values
        #expect(expirations.count >= 3)
        #expect((expirations.last ?? 0) > (expirations.first ?? 0))
        #expect(abs((expirations.last ?? 0) - (client.credentials?.validUntil.timeIntervalSince1970 ?? 0)) < 1)

        // Controller down: the client keeps its certificate and retries with backoff.
        await stopService(task)
        let kept = try #require(client.credentials)
        let countAtOutage = refreshes()
        try await eventually(timeout: .seconds(10)) { client.lastError?.code == .transport }
        #expect(client.credentials?.leaf == kept.leaf)
        #expect(refreshes() == countAtOutage)

        // Back on the same port: the next retry succeeds without any help.
        let restarted = makeService(port: port)
        let (restartedTask, _) = try await startService(restarted)
        try await eventually(timeout: .seconds(10)) { refreshes() > countAtOutage }
        #expect(client.credentials?.leaf != kept.leaf)
        run.cancel()
        await run.value
        await stopService(restartedTask)
    }
}
