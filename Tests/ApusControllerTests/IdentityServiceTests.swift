import ApusController
import ApusCore
import ApusIdentity
import ApusIdentityClient
import ApusX509
import Foundation
import KubernetesClient
import KubernetesTestServer
import MetricsTestKit
import NIOConcurrencyHelpers
import Testing

/// The identity service against the API test server, the controller authenticated as its ServiceAccount and
/// authorized with exactly the declared permissions (controller-manager + ``IdentityService/requiredPermissions``).
@Suite struct IdentityServiceTests {
    static let web = IdentityName(serviceAccount: "web", namespace: "default")
    static let audience = [TokenReviewValidator.audience]

    @Test("TokenReview through the Kubernetes client: SA tokens map to identities; bad tokens are tokenInvalid")
    func tokenReview() async throws {
        let fixture = try await IdentityFixture.start()
        let server = fixture.server
        let validator = TokenReviewValidator(client: fixture.controller)

        let token = server.mintServiceAccountToken(
            namespace: "default", serviceAccount: "web", audiences: Self.audience)
        let identity = try await validator.validate(token: Array(token.utf8))
        #expect(identity.description == "web.default.serviceaccount.identity.apus.cluster.local")
        #expect(identity == Self.web)

        let garbage = await identityError { try await validator.validate(token: Array("not-a-token".utf8)) }
        #expect(garbage?.code == .tokenInvalid)
        let expired = server.mintServiceAccountToken(
            namespace: "default", serviceAccount: "web", audiences: Self.audience, expiration: .seconds(-1))
        let expiredError = await identityError { try await validator.validate(token: Array(expired.utf8)) }
        #expect(expiredError?.code == .tokenInvalid)
        #expect(expiredError?.message.contains("expired") == true)
        let foreign = server.mintServiceAccountToken(namespace: "default", serviceAccount: "web", audiences: ["vault"])
        let foreignError = await identityError { try await validator.validate(token: Array(foreign.utf8)) }
        #expect(foreignError?.code == .tokenInvalid)
        #expect(foreignError?.message.contains("token audiences") == true)
        // A user that is not a ServiceAccount authenticates but has no workload identity.
        let userError = await identityError { try await validator.validate(token: Array("admin-token".utf8)) }
        #expect(userError?.code == .tokenInvalid)
        #expect(userError?.message.contains("system:serviceaccount") == true)
        let empty = await identityError { try await validator.validate(token: Array("\n".utf8)) }
        #expect(empty?.code == .missingField)

        // A legacy token (API server audience) passes on the retry without audiences, like Linkerd; strictly not.
        let legacy = server.mintServiceAccountToken(namespace: "shop", serviceAccount: "cart")
        #expect(try await validator.validate(token: Array(legacy.utf8)).description.hasPrefix("cart.shop."))
        let strict = TokenReviewValidator(client: fixture.controller, retryWithoutAudiences: false)
        #expect(await identityError { try await strict.validate(token: Array(legacy.utf8)) }?.code == .tokenInvalid)

        #expect(server.requestCount(verb: "create", resource: "tokenreviews") >= 9)
        #expect(fixture.api.refusals.withLockedValue { $0 }.map(\.description) == [])
        try await fixture.shutdown()
    }

    @Test("the Certify endpoint answers every bad request with a typed 4xx and keeps serving after each")
    func rejectionsKeepServing() async throws {
        let fixture = try await IdentityFixture.start()
        let roots = try TrustRoots.generate()
        try await fixture.install(roots)
        let service = fixture.makeService()
        let (task, port) = try await startService(service)
        try await eventually { service.servingCertificate != nil }
        let server = fixture.server
        let identity = Self.web.description
        let token = server.mintServiceAccountToken(
            namespace: "default", serviceAccount: "web", audiences: Self.audience)
        let dbToken = server.mintServiceAccountToken(
            namespace: "default", serviceAccount: "db", audiences: Self.audience)
        func send(_ request: [UInt8]) async throws -> (Int, String) {
            try await rawHTTPS(
                port: port, anchorsPEM: roots.anchorsPEM, serverName: service.serverIdentity.description,
                request: request)
        }
        let garbageCSR =
            Array(
                #"{"identity":"\#(identity)","token":"\#(Data(token.utf8).base64EncodedString())","#.utf8)
            + Array(#""certificateSigningRequest":"AAEC"}"#.utf8)
        let cases: [(name: String, request: [UInt8], status: Int, code: String)] = [
            (
                "no identity", postRequest(body: try certifyBody(identity: nil, token: token, csrFor: identity)), 400,
                "missingField"
            ),
            ("no token", postRequest(body: try certifyBody(identity: identity, token: nil)), 400, "missingField"),
            (
                "no CSR", postRequest(body: try certifyBody(identity: identity, token: token, includeCSR: false)), 400,
                "missingField"
            ),
            (
                "garbage token", postRequest(body: try certifyBody(identity: identity, token: "garbage")), 401,
                "tokenInvalid"
            ),
            (
                "another SA's token", postRequest(body: try certifyBody(identity: identity, token: dbToken)), 403,
                "identityMismatch"
            ),
            (
                "CSR for another identity",
                postRequest(
                    body: try certifyBody(
                        identity: identity, token: token,
                        csrFor: "db.default.serviceaccount.identity.apus.cluster.local")),
                403, "identityMismatch"
            ),
            ("garbage CSR", postRequest(body: garbageCSR), 400, "badCSR"),
            ("invalid identity", postRequest(body: try certifyBody(identity: "web", token: token)), 400, "invalidName"),
            ("malformed JSON", postRequest(body: Array("{not json".utf8)), 400, "malformedRequest"),
            (
                "wrong path", postRequest(path: "/certify", body: try certifyBody(identity: identity, token: token)),
                404,
                "notFound"
            ),
            ("wrong method", postRequest(method: "GET", body: []), 405, "methodNotAllowed"),
            ("oversized body", postRequest(body: Array(repeating: 0x20, count: 100 * 1024)), 413, "payloadTooLarge"),
        ]
        for testCase in cases {
            let (status, body) = try await send(testCase.request)
            #expect(status == testCase.status, "\(testCase.name): \(body)")
            #expect(code(of: body) == testCase.code, "\(testCase.name): \(body)")
            let (okStatus, okBody) = try await send(
                postRequest(body: try certifyBody(identity: identity, token: token)))
            #expect(okStatus == 200, "after \(testCase.name): \(okBody)")
        }
        // Bytes that are not HTTP at all inside TLS: NIO answers 400 and closes; the service carries on.
        let (garbageStatus, _) = try await send(Array("\u{1}\u{2} nonsense\r\n\r\n".utf8))
        #expect(garbageStatus == 400)
        let (status, _) = try await send(postRequest(body: try certifyBody(identity: identity, token: token)))
        #expect(status == 200)

        await stopService(task)
        #expect(fixture.api.refusals.withLockedValue { $0 }.map(\.description) == [])
        try await fixture.shutdown()
    }

    @Test("end to end: the client certifies over TLS, the leaf chains to the anchors, an Event is on the SA")
    func endToEnd() async throws {
        let fixture = try await IdentityFixture.start()
        let roots = try TrustRoots.generate()
        try await fixture.install(roots, tlsForm: false)  // Linkerd's crt.pem/key.pem form
        let service = fixture.makeService()
        let (task, port) = try await startService(service)
        try await eventually { service.servingCertificate != nil }
        let directory = try fixture.webTokenDirectory()
        let client = try makeIdentityClient(
            identity: Self.web, tokenPath: directory.path("token"), anchorsPEM: roots.anchorsPEM, port: port)

        let credentials = try await client.certify()
        #expect(credentials.leaf.dnsNames == [Self.web.description])
        #expect(throws: Never.self) {
            try credentials.leaf.verify(anchors: try roots.anchors, intermediates: credentials.intermediates)
        }
        #expect(credentials.leaf.isSigned(by: try roots.issuer))
        let lifetime = credentials.validUntil.timeIntervalSinceNow
        #expect(lifetime > 86400 - 60 && lifetime <= 86400 + 20)
        #expect(client.serverContext != nil && client.clientContext != nil)

        try await eventually {
            try await fixture.events(reason: "IssuedLeafCertificate").contains {
                $0.involvedObject.kind == "ServiceAccount" && $0.involvedObject.name == "web"
                    && $0.involvedObject.namespace == "default" && ($0.message ?? "").contains(Self.web.description)
            }
        }
        await stopService(task)
        directory.cleanup()
        #expect(fixture.api.refusals.withLockedValue { $0 }.map(\.description) == [])
        try await fixture.shutdown()
    }

    @Test("without issuer credentials Certify answers 503 issuerNotReady saying why; once they appear, 200")
    func missingCredentialsAtStartup() async throws {
        let fixture = try await IdentityFixture.start()
        let roots = try TrustRoots.generate()
        // A serving certificate from outside (as cert-manager would provide), so TLS works before the issuer.
        let authority = CertificateAuthority(
            credentials: try IssuerCredentials(
                anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
                issuerKeyPEM: roots.issuerKeyPEM))
        let serving = try authority.issueServingCertificate(
            dnsNames: [IdentityServiceOptions().serverIdentity.description])
        var options = IdentityFixture.serviceOptions()
        options.servingCertificate = .provided(
            certificateChainPEM: serving.certificateChainPEM, privateKeyPEM: try serving.privateKeyPEM)
        let service = fixture.makeService(options: options)
        let (task, port) = try await startService(service)
        let directory = try fixture.webTokenDirectory()
        let client = try makeIdentityClient(
            identity: Self.web, tokenPath: directory.path("token"), anchorsPEM: roots.anchorsPEM, port: port)

        try await eventually {
            let error = await clientError { try await client.certify() }
            return error?.rejection?.code == .issuerNotReady
                && error?.rejection?.message.contains("Secret apus/apus-identity-issuer does not exist") == true
        }
        let error = await clientError { try await client.certify() }
        #expect(error?.code == .rejected && error?.httpStatus == 503)

        try await fixture.install(roots)
        try await eventually { await clientError { try await client.certify() } == nil }
        #expect(client.credentials?.leaf.isSigned(by: try roots.issuer) == true)
        await stopService(task)
        directory.cleanup()
        try await fixture.shutdown()
    }

    @Test("with its own serving certificate the service bootstraps: clients retry until the issuer is loaded")
    func bootstrapServingCertificate() async throws {
        let fixture = try await IdentityFixture.start()
        let roots = try TrustRoots.generate()
        let service = fixture.makeService()
        let (task, port) = try await startService(service)
        let directory = try fixture.webTokenDirectory()
        var refresh = RefreshPolicy()
        refresh.initialBackoff = .milliseconds(50)
        refresh.maximumBackoff = .milliseconds(200)
        let client = try makeIdentityClient(
            identity: Self.web, tokenPath: directory.path("token"), anchorsPEM: roots.anchorsPEM, port: port,
            refresh: refresh)
        let run = Task { await client.run() }
        // The self-signed bootstrap certificate is not trusted: the handshake fails, the client keeps trying.
        try await eventually { client.lastError?.code == .transport }
        #expect(client.credentials == nil)

        try await fixture.install(roots)
        let credentials = try await client.waitForCredentials()
        #expect(credentials.leaf.isSigned(by: try roots.issuer))
        #expect(service.servingCertificate?.dnsNames.contains(service.serverIdentity.description) == true)
        run.cancel()
        await run.value
        await stopService(task)
        directory.cleanup()
        try await fixture.shutdown()
    }

    @Test("issuer rotation under load: no request fails, new leaves chain to the new issuer, bad Secrets are refused")
    func issuerRotation() async throws {
        let fixture = try await IdentityFixture.start()
        let old = try TrustRoots.generate()
        let new = try TrustRoots.generate()
        let bundle = old.anchorsPEM + new.anchorsPEM
        try await fixture.install(old)
        let metrics = TestMetrics()
        let service = fixture.makeService(metricsFactory: metrics)
        let (task, port) = try await startService(service)
        try await eventually { service.servingCertificate != nil }

        // Step 1 of a Linkerd-style rotation: anchors become the old+new bundle (proxies get it too).
        try await fixture.put(TrustRoots.trustRoots(bundle))
        try await eventually {
            service.issuer.credentials?.anchors.count == 2
        }
        let directory = try fixture.webTokenDirectory()

        struct Loop {
            var failures: [String] = []
            var oldLeaves: [IdentityCredentials] = []
            var newLeaves: [IdentityCredentials] = []
            var stop = false
        }
        let loop = NIOLockedValueBox(Loop())
        let oldIssuer = try old.issuer
        let newIssuer = try new.issuer
        let clients = try (0..<4).map { _ in
            try makeIdentityClient(
                identity: Self.web, tokenPath: directory.path("token"), anchorsPEM: bundle, port: port)
        }
        let workers = clients.map { client in
            Task {
                while !loop.withLockedValue({ $0.stop }) {
                    do {
                        let credentials = try await client.certify()
                        loop.withLockedValue { state in
                            if credentials.leaf.isSigned(by: newIssuer) {
                                state.newLeaves.append(credentials)
                            } else if credentials.leaf.isSigned(by: oldIssuer) {
                                state.oldLeaves.append(credentials)
                            } else {
                                state.failures.append("a leaf signed by neither issuer")
                            }
                        }
                    } catch {
                        loop.withLockedValue { $0.failures.append("\(error)") }
                    }
                }
            }
        }
        try await eventually { loop.withLockedValue { $0.oldLeaves.count >= 8 } }

        // Step 2: the new issuer (under the new root) replaces the old one while requests keep coming.
        try await fixture.put(new.secret())
        try await eventually(timeout: .seconds(15)) { loop.withLockedValue { $0.newLeaves.count >= 8 } }
        #expect(service.issuer.credentials?.issuer == newIssuer)
        try await eventually { try await !fixture.events(reason: "IssuerUpdated").isEmpty }

        // An invalid replacement (certificate and key do not match) is refused; the new issuer keeps signing.
        var broken = new
        broken.issuerKeyPEM = old.issuerKeyPEM
        try await fixture.put(broken.secret())
        try await eventually {
            try await fixture.events(reason: "IssuerValidationFailed").contains {
                $0.type == "Warning" && $0.involvedObject.name == KubernetesIssuerSource.secretName
                    && ($0.message ?? "").contains("does not match")
            }
        }
        let before = loop.withLockedValue { $0.newLeaves.count }
        try await eventually { loop.withLockedValue { $0.newLeaves.count >= before + 8 } }
        #expect(service.issuer.credentials?.issuer == newIssuer)

        loop.withLockedValue { $0.stop = true }
        for worker in workers { await worker.value }
        let state = loop.withLockedValue { $0 }
        #expect(state.failures == [])

        // Old and new leaves both verify against the bundle, and only against their own root.
        let anchors = try Certificate.parseChain(pem: bundle)
        let oldLeaf = try #require(state.oldLeaves.first)
        let newLeaf = try #require(state.newLeaves.last)
        for leaf in [oldLeaf, newLeaf] {
            #expect(throws: Never.self) { try leaf.leaf.verify(anchors: anchors, intermediates: leaf.intermediates) }
        }
        #expect(throws: X509Error.self) {
            try oldLeaf.leaf.verify(anchors: try new.anchors, intermediates: oldLeaf.intermediates)
        }
        // And they interoperate in a mutual TLS handshake (old serves, new connects, and the reverse).
        try await mutualHandshake(server: oldLeaf, client: newLeaf)
        try await mutualHandshake(server: newLeaf, client: oldLeaf)

        let ttl = try #require(try metrics.expectGauge("issuer_cert_ttl_seconds").lastValue)
        #expect(abs(ttl - newIssuer.notAfter.timeIntervalSinceNow) < 60)

        await stopService(task)
        directory.cleanup()
        #expect(fixture.api.refusals.withLockedValue { $0 }.map(\.description) == [])
        try await fixture.shutdown()
    }

    @Test("the identity service's declared permissions pin the Secret and ConfigMap by name")
    func permissionsPinNames() {
        let rules = IdentityService.requiredPermissions
        #expect(rules.contains { $0.resource == "tokenreviews" && $0.verbs == ["create"] && $0.scope == .cluster })
        let secrets = rules.first { $0.resource == "secrets" }
        #expect(secrets?.resourceNames == ["apus-identity-issuer"] && secrets?.scope == .namespace)
        let configMaps = rules.first { $0.resource == "configmaps" }
        #expect(configMaps?.resourceNames == ["apus-identity-trust-roots"] && configMaps?.scope == .namespace)
    }
}
