import ApusIdentity
import ApusX509
import Foundation
import Testing

@Suite struct IssuedLeafTests {
    @Test func opensslVerifiesIssuedLeafAgainstAnchorsThroughIssuer() throws {
        let ca = try TestAuthority()
        let issued = try ca.issue(identity("web"))
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let anchors = try directory.write("anchors.pem", ca.roots.anchorsPEM)
        let issuer = try directory.write("issuer.pem", try issued.intermediates.map { try $0.pem }.joined())
        let leaf = try directory.write("leaf.pem", try issued.leafPEM)

        let verified = try runOpenSSL(["verify", "-CAfile", anchors, "-untrusted", issuer, leaf])
        #expect(verified.status == 0, "\(verified.output)")
        #expect(verified.output.contains("leaf.pem: OK"))

        // The same check must fail for a leaf of another CA, so the success above means something.
        let other = try TestAuthority().issue(identity("web"))
        let foreign = try directory.write("foreign.pem", try other.leafPEM)
        let rejected = try runOpenSSL(["verify", "-CAfile", anchors, "-untrusted", issuer, foreign])
        #expect(rejected.status != 0)
        #expect(rejected.output.contains("unable to get local issuer certificate"), "\(rejected.output)")
    }

    @Test func opensslTextShowsSANExtendedKeyUsagesAndValidityWindow() throws {
        let now = Date(timeIntervalSince1970: 1_750_000_000.75)
        let ca = try TestAuthority(leafLifetime: 3600, now: now.addingTimeInterval(-60))
        let name = identity("checkout", "payments")
        let issued = try ca.issue(name, now: now)
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let text = try runOpenSSL(["x509", "-text", "-noout", "-in", try directory.write("leaf.pem", issued.leafPEM)])
        #expect(text.status == 0, "\(text.output)")
        #expect(text.output.contains("DNS:checkout.payments.serviceaccount.identity.apus.cluster.local"))
        #expect(text.output.contains("TLS Web Server Authentication, TLS Web Client Authentication"))
        #expect(text.output.contains("Digital Signature"))
        #expect(text.output.contains("CA:FALSE"))
        let issuerLine = text.output.split(separator: "\n").first { $0.contains("Issuer:") }
        #expect(issuerLine?.contains("identity.apus.cluster.local") == true, "\(text.output)")
        // [now - 20 s, now + 3600 s + 20 s], whole seconds (X.509 has no fractions): 1_749_999_980 and 1_750_003_620.
        #expect(text.output.contains("Not Before: Jun 15 15:06:20 2025 GMT"), "\(text.output)")
        #expect(text.output.contains("Not After : Jun 15 16:07:00 2025 GMT"), "\(text.output)")

        let leaf = try issued.leaf
        #expect(leaf.notBefore == Date(timeIntervalSince1970: 1_749_999_980))
        #expect(leaf.notAfter == Date(timeIntervalSince1970: 1_750_003_620))
        #expect(issued.response.validUntil == leaf.notAfter)
        #expect(leaf.dnsNames == [name.description])
        #expect(leaf.ipAddresses.isEmpty)
        #expect(leaf.extendedKeyUsage == [.serverAuth, .clientAuth])
        #expect(!leaf.isCA)
        #expect(leaf.subjectCommonName == name.description)
        #expect(leaf.authorityKeyIdentifier == ca.credentials.issuer.subjectKeyIdentifier)
        #expect(try leaf.publicKey == issued.key.publicKey)
        #expect(try issued.intermediates == [ca.credentials.issuer])
    }

    @Test func leafDoesNotOutliveItsIssuer() throws {
        let now = Date()
        let roots = try TrustRootsGenerator.generate(issuerValidity: 3600, now: now)
        let credentials = try IssuerCredentials(
            anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
            issuerKeyPEM: roots.issuerKeyPEM, now: now)
        let authority = CertificateAuthority(credentials: credentials, leafLifetime: 86400)
        let key = try PrivateKey.generateP256()
        let name = identity("web")
        let response = try authority.issue(
            csrDER: try CertificateSigningRequest(key: key, dnsName: name.description).der, identity: name, now: now)
        #expect(response.validUntil == credentials.issuerExpiry)
        #expect(try Certificate(der: response.leafCertificate).notAfter == credentials.issuerExpiry)
    }

    @Test func identityLongerThanACommonNameLivesInTheSANOnly() throws {
        let ca = try TestAuthority()
        let name = identity(String(repeating: "a", count: 40), String(repeating: "b", count: 30))
        #expect(name.description.utf8.count > 64)
        let issued = try ca.issue(name)
        let leaf = try issued.leaf
        #expect(leaf.subjectCommonName == nil)
        #expect(leaf.dnsNames == [name.description])
        try leaf.verify(anchors: ca.credentials.anchors, intermediates: try issued.intermediates)
    }

    @Test func eightConcurrentIssuersAllSucceedWithDistinctSerials() async throws {
        let ca = try TestAuthority()
        let authority = ca.authority
        let serials = try await withThrowingTaskGroup(of: [String].self) { group in
            for task in 0..<8 {
                group.addTask {
                    var serials: [String] = []
                    for round in 0..<25 {
                        let name = identity("sa-\(task)-\(round)")
                        let key = try PrivateKey.generateP256()
                        let csr = try CertificateSigningRequest(key: key, dnsName: name.description)
                        let response = try authority.issue(csrDER: try csr.der, identity: name)
                        let leaf = try Certificate(der: response.leafCertificate)
                        guard leaf.dnsNames == [name.description], leaf.isSigned(by: authority.credentials.issuer)
                        else { throw IdentityError(.badCSR, "wrong leaf for \(name)") }
                        serials.append(leaf.serialNumber)
                    }
                    return serials
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(serials.count == 200)
        #expect(Set(serials).count == 200)
    }

    @Test func servingCertificateChainsToAnchorsForServerAuth() throws {
        let ca = try TestAuthority()
        let serving = try ca.authority.issueServingCertificate(
            dnsNames: ["apus-identity.apus.svc", "apus-identity.apus.svc.cluster.local"], ipAddresses: ["127.0.0.1"])
        #expect(serving.certificate.dnsNames == ["apus-identity.apus.svc", "apus-identity.apus.svc.cluster.local"])
        #expect(serving.certificate.ipAddresses == ["127.0.0.1"])
        #expect(serving.certificate.extendedKeyUsage == [.serverAuth])
        #expect(serving.certificate.matches(privateKey: serving.privateKey))
        let chain = try Certificate.parseChain(pem: serving.certificateChainPEM)
        #expect(chain.count == 2)
        try chain[0].verify(anchors: ca.credentials.anchors, intermediates: Array(chain.dropFirst()))
        #expect(!serving.description.contains("PRIVATE KEY"))
        #expect(try serving.privateKeyPEM.contains("BEGIN PRIVATE KEY"))
    }
}

@Suite struct RejectionTests {
    let ca: TestAuthority
    let name = identity("web")
    let key: PrivateKey

    init() throws {
        ca = try TestAuthority()
        key = try PrivateKey.generateP256()
    }

    /// Issues `csr` for `name` and returns the rejection; after it, the same CA must still issue a valid request.
    private func rejection(_ csr: [UInt8], for requested: IdentityName? = nil) throws -> IdentityError {
        var caught: IdentityError?
        do {
            _ = try ca.authority.issue(csrDER: csr, identity: requested ?? name)
        } catch {
            caught = error
        }
        let good = try CertificateSigningRequest(key: key, dnsName: name.description).der
        let response = try ca.authority.issue(csrDER: good, identity: name)
        #expect(try Certificate(der: response.leafCertificate).dnsNames == [name.description])
        return try #require(caught, "the CA issued a certificate it should have refused")
    }

    private func csr(commonName: String? = nil, _ names: [SubjectAltName]) throws -> [UInt8] {
        try CertificateSigningRequest(key: key, commonName: commonName, subjectAltNames: names).der
    }

    @Test func csrSignedByAnotherKeyIsRejected() throws {
        let other = try PrivateKey.generateP256()
        let signedByOther = try CertificateSigningRequest(key: other, dnsName: name.description).der
        // Put this key's SubjectPublicKeyInfo where the signer's was: well-formed DER, signature by another key.
        let tampered = try #require(
            replacing(try other.publicKeyDER, with: try key.publicKeyDER, in: signedByOther))
        #expect(try CertificateSigningRequest(der: tampered).publicKey == key.publicKey)
        let error = try rejection(tampered)
        #expect(error.code == .badCSR)
        #expect(error.message.contains("signature does not verify"))
        #expect(error.httpStatus == 400)
    }

    @Test func twoDNSNamesAreRejected() throws {
        let error = try rejection(try csr([.dns(name.description), .dns("web.shop.svc.cluster.local")]))
        #expect(error.code == .badCSR)
        #expect(error.message.contains("2 DNS names"))
        #expect(error.message.contains("web.shop.svc.cluster.local"))
    }

    @Test func ipURIAndEmailSANsAreRejected() throws {
        let cases: [(SubjectAltName, String)] = [
            (.ipAddress("10.0.0.7"), "IP:10.0.0.7"),
            (.uri("spiffe://cluster.local/ns/shop/sa/web"), "URI:spiffe://cluster.local/ns/shop/sa/web"),
            (.email("web@shop.example"), "email:web@shop.example"),
        ]
        for (extra, shown) in cases {
            let error = try rejection(try csr([.dns(name.description), extra]))
            #expect(error.code == .badCSR)
            #expect(error.message.contains(shown), "\(error)")
        }
    }

    @Test func missingDNSNameIsRejected() throws {
        let error = try rejection(try csr(commonName: name.description, []))
        #expect(error.code == .badCSR)
        #expect(error.message.contains("no DNS subjectAltName"))
    }

    @Test func commonNameDifferentFromTheSANIsRejected() throws {
        let error = try rejection(try csr(commonName: "admin", [.dns(name.description)]))
        #expect(error.code == .badCSR)
        #expect(error.message.contains("common name 'admin'"))
        // Equal is fine.
        let equal = try csr(commonName: name.description, [.dns(name.description)])
        #expect(try Certificate(der: ca.authority.issue(csrDER: equal, identity: name).leafCertificate).isCA == false)
    }

    @Test func csrForAnotherIdentityIsAMismatch() throws {
        let error = try rejection(try csr([.dns(identity("admin").description)]))
        #expect(error.code == .identityMismatch)
        #expect(error.httpStatus == 403)
        #expect(error.message.contains("admin.shop.serviceaccount"))
    }

    @Test func garbageEmptyAndPEMInputsAreRejected() throws {
        let garbage = try rejection([0x30, 0x82, 0xff, 0xff, 0x01, 0x02])
        #expect(garbage.code == .badCSR)
        #expect(garbage.message.contains("not DER-encoded PKCS#10"))

        let pemText = try CertificateSigningRequest(key: key, dnsName: name.description).pem
        let pem = try rejection(Array(pemText.utf8))
        #expect(pem.code == .badCSR)
        #expect(pem.message.contains("PEM text"))

        let empty = try rejection([])
        #expect(empty.code == .missingField)
        #expect(empty.message.contains("certificateSigningRequest"))

        // A certificate is DER too, but not a CSR.
        let certificate = try rejection(try ca.credentials.issuer.der)
        #expect(certificate.code == .badCSR)

        // A valid CSR followed by trailing bytes is not one CSR.
        let trailing = try rejection(try csr([.dns(name.description)]) + [0x00])
        #expect(trailing.code == .badCSR)
    }

    @Test func expiredIssuerMakesTheCANotReady() throws {
        let start = Date(timeIntervalSinceNow: -7200)
        let roots = try TrustRootsGenerator.generate(issuerValidity: 3600, now: start)
        let credentials = try IssuerCredentials(
            anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
            issuerKeyPEM: roots.issuerKeyPEM, now: start)
        let authority = CertificateAuthority(credentials: credentials)
        let good = try CertificateSigningRequest(key: key, dnsName: name.description).der
        do {
            _ = try authority.issue(csrDER: good, identity: name)
            Issue.record("issued from an expired issuer")
        } catch {
            #expect(error.code == .issuerNotReady)
            #expect(error.httpStatus == 503)
            #expect(error.message.contains("expired"))
        }
        // Within its validity the same CA issues.
        _ = try authority.issue(csrDER: good, identity: name, now: start.addingTimeInterval(60))
    }
}
