import ApusIdentity
import ApusX509
import Foundation
import Testing

@Suite struct IssuerCredentialsTests {
    private func load(
        anchors: String, issuer: String, key: String, now: Date = Date()
    ) -> IdentityError? {
        do {
            _ = try IssuerCredentials(anchorsPEM: anchors, issuerCertificatePEM: issuer, issuerKeyPEM: key, now: now)
            return nil
        } catch {
            return error
        }
    }

    @Test func generatedRootsLoad() throws {
        let roots = try TrustRootsGenerator.generate()
        let credentials = try IssuerCredentials(
            anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
            issuerKeyPEM: roots.issuerKeyPEM)
        #expect(credentials.anchors.count == 1)
        #expect(credentials.issuer.subjectCommonName == "identity.apus.cluster.local")
        #expect(credentials.intermediates.isEmpty)
        #expect(credentials.issuerExpiry == credentials.issuer.notAfter)
        #expect(credentials.anchorsPEM == roots.anchorsPEM)
        #expect(try credentials.issuerKeyPEM == PrivateKey(pem: roots.issuerKeyPEM).pemPKCS8)
    }

    @Test func issuerThatIsNotACAIsRefused() throws {
        let rootKey = try PrivateKey.generateP256()
        let root = try CertificateBuilder.certificateAuthority(commonName: "root.apus.cluster.local", key: rootKey)
            .selfSigned(with: rootKey)
        let leafKey = try PrivateKey.generateP256()
        let leaf = try CertificateBuilder(commonName: "not-a-ca", publicKey: try leafKey.publicKey)
            .signed(by: root, key: rootKey)
        let error = try #require(load(anchors: try root.pem, issuer: try leaf.pem, key: try leafKey.pemPKCS8))
        #expect(error.code == .invalidIssuer)
        #expect(error.message == "issuer 'not-a-ca' is not a CA (basicConstraints CA:TRUE missing)")
        #expect(error.httpStatus == 500)
    }

    @Test func issuerNotChainingToTheAnchorsIsRefused() throws {
        let ours = try TrustRootsGenerator.generate()
        let theirs = try TrustRootsGenerator.generate()
        let error = try #require(
            load(anchors: ours.anchorsPEM, issuer: theirs.issuerCertificatePEM, key: theirs.issuerKeyPEM))
        #expect(error.code == .invalidIssuer)
        #expect(error.message.contains("does not chain to the trust anchors"))
        #expect(error.message.contains("unable to get local issuer certificate"), "\(error)")
        // A bundle holding both anchors accepts it.
        #expect(
            load(
                anchors: ours.anchorsPEM + theirs.anchorsPEM, issuer: theirs.issuerCertificatePEM,
                key: theirs.issuerKeyPEM) == nil)
    }

    @Test func issuerKeyNotMatchingIsRefusedWithoutShowingTheKey() throws {
        let roots = try TrustRootsGenerator.generate()
        let otherKey = try PrivateKey.generateP256().pemPKCS8
        let error = try #require(load(anchors: roots.anchorsPEM, issuer: roots.issuerCertificatePEM, key: otherKey))
        #expect(error.code == .invalidIssuer)
        #expect(error.message.contains("issuer key does not match"))
        #expect(!error.message.contains("PRIVATE KEY"))
    }

    @Test func expiredOrNotYetValidIssuerIsRefused() throws {
        let start = Date(timeIntervalSinceNow: -7200)
        let roots = try TrustRootsGenerator.generate(issuerValidity: 3600, now: start)
        let expired = try #require(
            load(anchors: roots.anchorsPEM, issuer: roots.issuerCertificatePEM, key: roots.issuerKeyPEM))
        #expect(expired.code == .invalidIssuer)
        #expect(expired.message.contains("expired at"))
        let early = try #require(
            load(
                anchors: roots.anchorsPEM, issuer: roots.issuerCertificatePEM, key: roots.issuerKeyPEM,
                now: start.addingTimeInterval(-3600)))
        #expect(early.message.contains("not valid before"))
    }

    @Test func garbageInputsNameTheBrokenPart() throws {
        let roots = try TrustRootsGenerator.generate()
        let anchors = try #require(load(anchors: "nope", issuer: roots.issuerCertificatePEM, key: roots.issuerKeyPEM))
        #expect(anchors.message.hasPrefix("trust anchors:"))
        let issuer = try #require(load(anchors: roots.anchorsPEM, issuer: "", key: roots.issuerKeyPEM))
        #expect(issuer.message.hasPrefix("issuer certificate:"))
        let key = try #require(
            load(
                anchors: roots.anchorsPEM, issuer: roots.issuerCertificatePEM,
                key: "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"))
        #expect(key.message.hasPrefix("issuer key:"))
        #expect([anchors.code, issuer.code, key.code] == [.invalidIssuer, .invalidIssuer, .invalidIssuer])
    }

    @Test func issuerWithItsChainInTheCertificateFileLoads() throws {
        // root -> intermediate -> issuer, with the intermediate shipped after the issuer as cert-manager does.
        let rootKey = try PrivateKey.generateP256()
        var rootBuilder = try CertificateBuilder.certificateAuthority(commonName: "root", key: rootKey)
        rootBuilder.basicConstraints = .certificateAuthority(pathLength: 2)
        let root = try rootBuilder.selfSigned(with: rootKey)
        let middleKey = try PrivateKey.generateP256()
        let middle = try CertificateBuilder.certificateAuthority(commonName: "middle", key: middleKey)
            .signed(by: root, key: rootKey)
        let issuerKey = try PrivateKey.generateP256()
        let issuer = try CertificateBuilder.certificateAuthority(commonName: "issuer", key: issuerKey)
            .signed(by: middle, key: middleKey)
        let credentials = try IssuerCredentials(
            anchorsPEM: try root.pem, issuerCertificatePEM: try issuer.pem + middle.pem,
            issuerKeyPEM: try issuerKey.pemPKCS8)
        #expect(credentials.intermediates == [middle])
        let authority = CertificateAuthority(credentials: credentials)
        let name = identity("web")
        let key = try PrivateKey.generateP256()
        let response = try authority.issue(
            csrDER: try CertificateSigningRequest(key: key, dnsName: name.description).der, identity: name)
        #expect(response.intermediateCertificates == [try issuer.der, try middle.der])
        try Certificate(der: response.leafCertificate).verify(anchors: [root], intermediates: [issuer, middle])
        // Without the middle certificate the issuer does not chain.
        let error = try #require(
            load(anchors: try root.pem, issuer: try issuer.pem, key: try issuerKey.pemPKCS8))
        #expect(error.code == .invalidIssuer)
    }
}
