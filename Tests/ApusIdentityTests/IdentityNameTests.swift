import ApusIdentity
import ApusX509
import Foundation
import Testing

@Suite struct IdentityNameTests {
    @Test func formatsLinkerdIdentities() {
        #expect(
            IdentityName(serviceAccount: "web", namespace: "shop").description
                == "web.shop.serviceaccount.identity.apus.cluster.local")
        #expect(
            IdentityName(serviceAccount: "default", namespace: "emojivoto", controlNamespace: "linkerd").description
                == "default.emojivoto.serviceaccount.identity.linkerd.cluster.local")
        #expect(
            IdentityName(serviceAccount: "a", namespace: "b", trustDomain: "prod.example.com").description
                == "a.b.serviceaccount.identity.apus.prod.example.com")
        #expect(
            IdentityName.issuerName(controlNamespace: "linkerd", trustDomain: "cluster.local")
                == "identity.linkerd.cluster.local")
    }

    @Test(arguments: [
        ("web.shop.serviceaccount.identity.apus.cluster.local", "web", "shop", "apus", "cluster.local"),
        (
            "default.emojivoto.serviceaccount.identity.linkerd.cluster.local", "default", "emojivoto", "linkerd",
            "cluster.local"
        ),
        ("api-v2.team-1.serviceaccount.identity.mesh.example.com", "api-v2", "team-1", "mesh", "example.com"),
        ("a.b.serviceaccount.identity.c.d", "a", "b", "c", "d"),
    ])
    func parsesValidIdentities(text: String, sa: String, ns: String, control: String, domain: String) throws {
        let name = try IdentityName(parsing: text)
        #expect(name.serviceAccount == sa)
        #expect(name.namespace == ns)
        #expect(name.controlNamespace == control)
        #expect(name.trustDomain == domain)
        #expect(name.description == text)
        #expect(name == IdentityName(serviceAccount: sa, namespace: ns, controlNamespace: control, trustDomain: domain))
    }

    @Test(arguments: [
        ("", "not an identity of the form"),
        ("web.shop.svc.cluster.local", "not an identity of the form"),
        ("web.shop.serviceaccount.identity.apus", "not an identity of the form"),
        ("web.shop.serviceaccounts.identity.apus.cluster.local", "not an identity of the form"),
        ("Web.shop.serviceaccount.identity.apus.cluster.local", "service account 'Web' is not a DNS-1123 label"),
        ("web_1.shop.serviceaccount.identity.apus.cluster.local", "service account 'web_1' is not a DNS-1123 label"),
        ("web.-shop.serviceaccount.identity.apus.cluster.local", "namespace '-shop' is not a DNS-1123 label"),
        ("web.shop-.serviceaccount.identity.apus.cluster.local", "namespace 'shop-' is not a DNS-1123 label"),
        (".shop.serviceaccount.identity.apus.cluster.local", "service account is empty"),
        ("web.shop.serviceaccount.identity..cluster.local", "control namespace is empty"),
        ("web.shop.serviceaccount.identity.apus.cluster.local.", "trust domain 'cluster.local.' label is empty"),
        ("web.shop.serviceaccount.identity.apus.cluster..local", "label is empty"),
        (String(repeating: "x", count: 64) + ".shop.serviceaccount.identity.apus.cluster.local", "(at most 63)"),
    ])
    func rejectsInvalidIdentities(text: String, reason: String) {
        do {
            _ = try IdentityName(parsing: text)
            Issue.record("parsed \(text)")
        } catch {
            #expect(error.code == .invalidName)
            #expect(error.httpStatus == 400)
            #expect(error.message.contains(reason), "\(error.message)")
        }
    }

    @Test func rejectsNamesLongerThanDNSAllows() {
        let labels = Array(repeating: String(repeating: "d", count: 60), count: 4).joined(separator: ".")
        let name = IdentityName(serviceAccount: "web", namespace: "shop", trustDomain: labels)
        #expect(throws: IdentityError.self) { try name.validate() }
        #expect(throws: IdentityError.self) { try IdentityName(parsing: name.description) }
    }
}

@Suite struct TrustRootsGeneratorTests {
    @Test func generatesLinkerdShapedRootAndIssuer() throws {
        let now = Date(timeIntervalSince1970: 1_750_000_000)
        let roots = try TrustRootsGenerator.generate(
            trustDomain: "example.org", controlNamespace: "mesh", rootValidity: 20 * 86400, issuerValidity: 5 * 86400,
            now: now)
        let root = try Certificate(pem: roots.anchorsPEM)
        let issuer = try Certificate(pem: roots.issuerCertificatePEM)
        let key = try PrivateKey(pem: roots.issuerKeyPEM)

        #expect(root.subjectCommonName == "root.mesh.example.org")
        #expect(root.issuerCommonName == "root.mesh.example.org")
        #expect(root.isSigned(by: root))
        #expect(root.isCA)
        #expect(root.pathLengthConstraint == 1)
        #expect(root.subjectKeyIdentifier != nil)

        #expect(issuer.subjectCommonName == "identity.mesh.example.org")
        #expect(issuer.issuerCommonName == "root.mesh.example.org")
        #expect(issuer.isSigned(by: root))
        #expect(issuer.isCA)
        #expect(issuer.pathLengthConstraint == 0)
        #expect(issuer.authorityKeyIdentifier == root.subjectKeyIdentifier)
        #expect(issuer.subjectKeyIdentifier != root.subjectKeyIdentifier)
        #expect(issuer.matches(privateKey: key))
        #expect(try key.publicKey.curveName == "P-256")
        #expect(try root.publicKey.curveName == "P-256")

        // Validity: from a minute before `now` for the configured durations.
        #expect(root.notBefore == now.addingTimeInterval(-60))
        #expect(root.notAfter == now.addingTimeInterval(20 * 86400))
        #expect(issuer.notAfter == now.addingTimeInterval(5 * 86400))
        try issuer.verify(anchors: [root], at: now)
    }

    @Test func defaultsAreTenYearRootAndOneYearIssuer() throws {
        let now = Date(timeIntervalSince1970: 1_750_000_000)
        let roots = try TrustRootsGenerator.generate(now: now)
        #expect(try Certificate(pem: roots.anchorsPEM).notAfter == now.addingTimeInterval(10 * 365 * 86400))
        #expect(try Certificate(pem: roots.issuerCertificatePEM).notAfter == now.addingTimeInterval(365 * 86400))
        #expect(try Certificate(pem: roots.anchorsPEM).subjectCommonName == "root.apus.cluster.local")
    }

    @Test func rejectsBadParameters() {
        do {
            _ = try TrustRootsGenerator.generate(controlNamespace: "Apus")
            Issue.record("generated roots for an invalid control namespace")
        } catch {
            #expect(error.code == .invalidName)
            #expect(error.message.contains("control namespace 'Apus' is not a DNS-1123 label"))
        }
        do {
            _ = try TrustRootsGenerator.generate(rootValidity: 86400, issuerValidity: 2 * 86400)
            Issue.record("an issuer outliving its root was generated")
        } catch {
            #expect(error.code == .invalidIssuer)
            #expect(error.message.contains("outlive the root"))
        }
        #expect(throws: IdentityError.self) { _ = try TrustRootsGenerator.generate(trustDomain: "cluster..local") }
    }
}
