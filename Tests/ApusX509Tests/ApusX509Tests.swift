import ApusX509
import Foundation
import Testing

/// A CA and a leaf it issued, built once per test (P-256 keygen is sub-millisecond).
private struct Fixture {
    let caKey: PrivateKey
    let ca: Certificate
    let leafKey: PrivateKey
    let leaf: Certificate
    let now = Date()

    init() throws {
        caKey = try PrivateKey.generateP256()
        ca = try CertificateBuilder.certificateAuthority(commonName: "root.linkerd.cluster.local", key: caKey, now: now)
            .selfSigned(with: caKey)
        leafKey = try PrivateKey.generateP256()
        var builder = CertificateBuilder(
            commonName: "web.default.serviceaccount.identity.linkerd.cluster.local",
            publicKey: try leafKey.publicKey, validity: 3600, now: now)
        builder.dnsNames = ["web.default.svc", "web.default.svc.cluster.local"]
        builder.ipAddresses = ["10.1.2.3", "::1"]
        builder.extendedKeyUsage = [.serverAuth, .clientAuth]
        leaf = try builder.signed(by: ca, key: caKey)
    }
}

@Test func selfSignedCAHasCAConstraintsAndVerifiesItself() throws {
    let fixture = try Fixture()
    #expect(fixture.ca.isCA)
    #expect(fixture.ca.pathLengthConstraint == nil)
    #expect(fixture.ca.subjectCommonName == "root.linkerd.cluster.local")
    #expect(fixture.ca.issuerCommonName == "root.linkerd.cluster.local")
    #expect(fixture.ca.isSigned(by: fixture.ca))
    #expect(fixture.ca.subjectKeyIdentifier?.count == 20)
    #expect(fixture.ca.notAfter.timeIntervalSince(fixture.now) > 364 * 24 * 3600)
}

@Test func leafCarriesRequestedNamesAndValidity() throws {
    let fixture = try Fixture()
    let leaf = fixture.leaf
    #expect(leaf.subjectCommonName == "web.default.serviceaccount.identity.linkerd.cluster.local")
    #expect(leaf.issuerCommonName == "root.linkerd.cluster.local")
    #expect(leaf.dnsNames == ["web.default.svc", "web.default.svc.cluster.local"])
    #expect(leaf.ipAddresses == ["10.1.2.3", "::1"])
    #expect(!leaf.isCA)
    // Validity is second-granular and backdated a minute for clock skew.
    #expect(abs(leaf.notBefore.timeIntervalSince(fixture.now) + 60) < 1.5)
    #expect(abs(leaf.notAfter.timeIntervalSince(fixture.now) - 3600) < 1.5)
    #expect(leaf.authorityKeyIdentifier == fixture.ca.subjectKeyIdentifier)
    #expect(leaf.subjectKeyIdentifier != nil)
    #expect(leaf.subjectKeyIdentifier != fixture.ca.subjectKeyIdentifier)
    #expect(try leaf.publicKey == fixture.leafKey.publicKey)
}

@Test func leafVerifiesAgainstItsIssuerOnly() throws {
    let fixture = try Fixture()
    let other = try Fixture()
    #expect(fixture.leaf.isSigned(by: fixture.ca))
    #expect(!fixture.leaf.isSigned(by: other.ca))
    #expect(!fixture.ca.isSigned(by: fixture.leaf))
}

@Test func serialsAreRandom128BitPositiveNumbers() throws {
    let fixture = try Fixture()
    let serials = try (0..<5).map { _ in
        try CertificateBuilder(commonName: "x", publicKey: fixture.leafKey.publicKey)
            .signed(by: fixture.ca, key: fixture.caKey).serialNumber
    }
    #expect(Set(serials).count == serials.count)
    for serial in serials {
        #expect(serial.count == 32)
        #expect(serial.allSatisfy { $0.isHexDigit && !$0.isUppercase })
    }
}

@Test func intermediateCarriesPathLength() throws {
    let fixture = try Fixture()
    let key = try PrivateKey.generateP256()
    var builder = CertificateBuilder(commonName: "identity.linkerd.cluster.local", publicKey: try key.publicKey)
    builder.basicConstraints = .certificateAuthority(pathLength: 0)
    let intermediate = try builder.signed(by: fixture.ca, key: fixture.caKey)
    #expect(intermediate.isCA)
    #expect(intermediate.pathLengthConstraint == 0)
    #expect(intermediate.isSigned(by: fixture.ca))
    let leaf = try CertificateBuilder(commonName: "leaf", publicKey: fixture.leafKey.publicKey)
        .signed(by: intermediate, key: key)
    #expect(leaf.isSigned(by: intermediate))
    #expect(!leaf.isSigned(by: fixture.ca))
}

@Test func certificateRoundTripsThroughPEMAndDER() throws {
    let fixture = try Fixture()
    let pem = try fixture.leaf.pem
    #expect(pem.hasPrefix("-----BEGIN CERTIFICATE-----\n"))
    let fromPEM = try Certificate(pem: pem)
    #expect(fromPEM == fixture.leaf)
    #expect(fromPEM.serialNumber == fixture.leaf.serialNumber)
    #expect(fromPEM.dnsNames == fixture.leaf.dnsNames)
    let fromDER = try Certificate(der: try fixture.leaf.der)
    #expect(fromDER == fixture.leaf)
}

@Test func bundleParsesEveryCertificateInOrder() throws {
    let fixture = try Fixture()
    let bundle = try fixture.leaf.pem + fixture.ca.pem
    let chain = try Certificate.parseChain(pem: bundle)
    #expect(chain == [fixture.leaf, fixture.ca])
}

@Test func privateKeyRoundTripsThroughPKCS8() throws {
    let key = try PrivateKey.generateP256()
    let pem = try key.pemPKCS8
    #expect(pem.hasPrefix("-----BEGIN PRIVATE KEY-----\n"))
    let parsed = try PrivateKey(pem: pem)
    #expect(try parsed.publicKeyDER == key.publicKeyDER)
    #expect(try parsed.pemPKCS8 == pem)
    let publicPEM = try key.publicKeyPEM
    #expect(publicPEM.hasPrefix("-----BEGIN PUBLIC KEY-----\n"))
    #expect(try PublicKey(pem: publicPEM) == key.publicKey)
    #expect(try PublicKey(der: key.publicKeyDER) == key.publicKey)
}

@Test func garbageInputRaisesTypedErrorsWithOpenSSLReasons() throws {
    let notPEM = #expect(throws: X509Error.self) { try Certificate(pem: "hello") }
    #expect(notPEM?.code == .invalidPEM)
    #expect(notPEM?.openSSLErrors.isEmpty == false)
    let corrupt = "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n"
    #expect(throws: X509Error(.invalidPEM)) { try Certificate(pem: corrupt) }
    #expect(throws: X509Error(.invalidPEM)) { try Certificate.parseChain(pem: "") }
    #expect(throws: X509Error(.invalidDER)) { try Certificate(der: [0x30, 0x03, 0x01]) }
    #expect(throws: X509Error(.invalidPEM)) { try PrivateKey(pem: "-----BEGIN PRIVATE KEY-----\n!!\n") }
    let fixture = try Fixture()
    // A certificate is not a key.
    #expect(throws: X509Error(.invalidPEM)) { try PrivateKey(pem: try fixture.ca.pem) }
}

/// An encrypted PKCS#8 key (passphrase "secret"), made with `openssl genpkey -aes256`.
private let encryptedKeyPEM = """
    -----BEGIN ENCRYPTED PRIVATE KEY-----
    MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAhqmFgEIcy7gwICCAAw
    DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEENRrtCz2Ck/oyiFtv8fYNuEEgZAc
    20dIP77P34UWDhRj2u3O2JTdUi3XP+HqLTvnbeeV7+T3QUT8tQf5dqy/jmle8wAZ
    U3iPs6ZvRZDOtTZoEM/+kUEWrOAXvSj/CTAok5YxHGjeK/r7om69PSDkGp/wS/jX
    b3339apfLgPvMMd8eJ+jvQNNXI9VkK2lyvdxTDsq3vHwMvHUBOeT8NKyK4Zk34E=
    -----END ENCRYPTED PRIVATE KEY-----
    """

@Test func encryptedKeysAreRejectedWithoutPrompting() {
    // Without an explicit callback OpenSSL would prompt on the terminal and block; here it must fail at once.
    #expect(throws: X509Error(.invalidPEM)) { try PrivateKey(pem: encryptedKeyPEM) }
}

@Test func builderRejectsBadInput() throws {
    let fixture = try Fixture()
    var builder = CertificateBuilder(commonName: "x", publicKey: try fixture.leafKey.publicKey)
    builder.ipAddresses = ["not-an-ip"]
    #expect(throws: X509Error(.invalidInput)) { try builder.signed(by: fixture.ca, key: fixture.caKey) }
    let empty = CertificateBuilder(commonName: "", publicKey: try fixture.leafKey.publicKey)
    #expect(throws: X509Error(.invalidInput)) { try empty.signed(by: fixture.ca, key: fixture.caKey) }
    let mismatched = CertificateBuilder(commonName: "self", publicKey: try fixture.leafKey.publicKey)
    #expect(throws: X509Error(.invalidInput)) { try mismatched.selfSigned(with: fixture.caKey) }
    // notBefore is backdated a minute, so a validity of -2 minutes ends before it starts.
    let inverted = CertificateBuilder(commonName: "x", publicKey: try fixture.leafKey.publicKey, validity: -120)
    #expect(throws: X509Error(.invalidInput)) { try inverted.signed(by: fixture.ca, key: fixture.caKey) }
}
