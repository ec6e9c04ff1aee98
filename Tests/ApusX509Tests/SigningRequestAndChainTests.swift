import ApusX509
import Foundation
import Testing

@Suite struct SigningRequestTests {
    /// `openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -subj /CN=p384` (the key was discarded).
    static let p384RequestPEM = """
        -----BEGIN CERTIFICATE REQUEST-----
        MIIBBzCBjgIBADAPMQ0wCwYDVQQDDARwMzg0MHYwEAYHKoZIzj0CAQYFK4EEACID
        YgAEost7V+7UH2Cj2MVx7E9phIlcUK0hIjPjitxq+RnvHBHmKMn7y1VXuFtR0FF0
        /elzlng3hqvEfJroPy3DOeuPNjhFeyIAY7jDLBAjWdtOk21k15ncIk4F5qrWYaXl
        5prToAAwCgYIKoZIzj0EAwIDaAAwZQIwJ9SrNPrneYCJhLmaJsCpSdbprTI0cAKW
        RhQ1vX769DqfgiIozlCqXgE0Y5/OvVyJAjEAzNwxjsBN4755PvHuyIAB60sXbgvV
        6pVjGDgi1QcrDu1h8O2/mdXZo6iEDV5VOmQ7
        -----END CERTIFICATE REQUEST-----
        """

    @Test func requestRoundTripsThroughDERAndPEMWithItsNames() throws {
        let key = try PrivateKey.generateP256()
        let names: [SubjectAltName] = [
            .dns("web.shop.serviceaccount.identity.apus.cluster.local"), .ipAddress("10.0.0.7"), .ipAddress("::1"),
            .uri("spiffe://cluster.local/ns/shop/sa/web"), .email("web@shop.example"),
        ]
        let request = try CertificateSigningRequest(key: key, commonName: "web", subjectAltNames: names)
        for parsed in [
            try CertificateSigningRequest(der: request.der), try CertificateSigningRequest(pem: request.pem),
        ] {
            #expect(parsed.isSignatureValid)
            #expect(parsed.subjectCommonName == "web")
            #expect(parsed.subjectAltNames == names)
            #expect(parsed.dnsNames == ["web.shop.serviceaccount.identity.apus.cluster.local"])
            #expect(parsed.ipAddresses == ["10.0.0.7", "::1"])
            #expect(parsed.uris == ["spiffe://cluster.local/ns/shop/sa/web"])
            #expect(parsed.emailAddresses == ["web@shop.example"])
            #expect(try parsed.publicKey == key.publicKey)
            #expect(try parsed.publicKey.curveName == "P-256")
        }
        #expect(try request.pem.hasPrefix("-----BEGIN CERTIFICATE REQUEST-----"))
    }

    @Test func identityRequestHasNoCommonNameAndOneDNSName() throws {
        let request = try CertificateSigningRequest(key: try PrivateKey.generateP256(), dnsName: "a.b.example")
        #expect(request.subjectCommonName == nil)
        #expect(request.subjectAltNames == [.dns("a.b.example")])
    }

    @Test func tamperedRequestFailsSignatureCheck() throws {
        let key = try PrivateKey.generateP256()
        var der = try CertificateSigningRequest(key: key, dnsName: "a.b.example").der
        // Flip a byte of the DNS name inside the signed part: still parses, no longer verifies.
        let name = Array("a.b.example".utf8)
        let index = try #require(
            (0...(der.count - name.count)).first { Array(der[$0..<($0 + name.count)]) == name })
        der[index] = UInt8(ascii: "z")
        let tampered = try CertificateSigningRequest(der: der)
        #expect(tampered.dnsNames == ["z.b.example"])
        #expect(!tampered.isSignatureValid)
    }

    @Test func malformedRequestsAreTypedErrors() throws {
        #expect(throws: X509Error(.invalidDER)) { try CertificateSigningRequest(der: []) }
        #expect(throws: X509Error(.invalidDER)) { try CertificateSigningRequest(der: [0x30, 0x03, 0x02, 0x01, 0x00]) }
        #expect(throws: X509Error(.invalidPEM)) { try CertificateSigningRequest(pem: "not pem") }
        let key = try PrivateKey.generateP256()
        #expect(throws: X509Error(.invalidInput)) {
            try CertificateSigningRequest(key: key, commonName: nil, subjectAltNames: [.ipAddress("nope")])
        }
        #expect(throws: X509Error(.invalidInput)) {
            try CertificateSigningRequest(key: key, commonName: nil, subjectAltNames: [.dns("")])
        }
    }

    @Test func builderCertifiesOnlyRequestsThatProveTheirKey() throws {
        let caKey = try PrivateKey.generateP256()
        let ca = try CertificateBuilder.certificateAuthority(commonName: "ca", key: caKey).selfSigned(with: caKey)
        let key = try PrivateKey.generateP256()
        let request = try CertificateSigningRequest(key: key, dnsName: "a.b.example")
        var builder = try CertificateBuilder(certifying: request, commonName: "", validity: 600, backdate: 20)
        builder.dnsNames = ["a.b.example"]
        let leaf = try builder.signed(by: ca, key: caKey)
        #expect(try leaf.publicKey == key.publicKey)
        #expect(leaf.subjectCommonName == nil)
        #expect(abs(leaf.notAfter.timeIntervalSince(leaf.notBefore) - 620) <= 1)

        // The DER-only fast path encodes the same key and verifies like the object path.
        let fast = try Certificate(der: try builder.signedDER(by: ca, key: caKey))
        #expect(try fast.publicKey == key.publicKey)
        #expect(fast.dnsNames == ["a.b.example"])
        try fast.verify(anchors: [ca])
        let p384 = try CertificateSigningRequest(pem: Self.p384RequestPEM)
        #expect(try p384.publicKey.curveName == "P-384")
        let fastP384 = try Certificate(
            der: try CertificateBuilder(certifying: p384, commonName: "p384").signedDER(by: ca, key: caKey))
        #expect(try fastP384.publicKey == p384.publicKey)

        var der = try request.der
        der[der.count - 5] ^= 0x01  // inside the signature
        #expect(throws: X509Error(.invalidInput)) {
            try CertificateBuilder(certifying: try CertificateSigningRequest(der: der), commonName: "x")
        }
    }

    @Test func signaturesVerifyOnlyForTheirMessageAndKey() throws {
        let key = try PrivateKey.generateP256()
        let message = Array("certify me".utf8)
        let signature = try key.signature(for: message)
        #expect(try key.publicKey.isValidSignature(signature, for: message))
        #expect(try !key.publicKey.isValidSignature(signature, for: Array("certify you".utf8)))
        #expect(try !PrivateKey.generateP256().publicKey.isValidSignature(signature, for: message))
    }
}

@Suite struct ChainVerificationTests {
    struct Chain {
        let rootKey: PrivateKey
        let root: Certificate
        let issuerKey: PrivateKey
        let issuer: Certificate
        let leaf: Certificate

        init(issuerValidity: TimeInterval = 3600, issuerIsCA: Bool = true, now: Date = Date()) throws {
            rootKey = try PrivateKey.generateP256()
            root = try CertificateBuilder.certificateAuthority(commonName: "root", key: rootKey, now: now)
                .selfSigned(with: rootKey)
            issuerKey = try PrivateKey.generateP256()
            var issuerBuilder = try CertificateBuilder.certificateAuthority(
                commonName: "issuer", key: issuerKey, validity: issuerValidity, now: now)
            if !issuerIsCA { issuerBuilder.basicConstraints = .endEntity }
            issuer = try issuerBuilder.signed(by: root, key: rootKey)
            var leafBuilder = CertificateBuilder(
                commonName: "leaf", publicKey: try PrivateKey.generateP256().publicKey, validity: 600, now: now)
            leafBuilder.dnsNames = ["leaf.example"]
            leaf = try leafBuilder.signed(by: issuer, key: issuerKey)
        }
    }

    /// The X509Error `body` throws, or nil when it succeeds (another error type is a test failure).
    private func failure(_ body: () throws -> Void) -> X509Error? {
        do {
            try body()
            return nil
        } catch let error as X509Error {
            return error
        } catch {
            Issue.record("unexpected error \(error)")
            return nil
        }
    }

    @Test func leafVerifiesThroughItsIssuer() throws {
        let chain = try Chain()
        try chain.leaf.verify(anchors: [chain.root], intermediates: [chain.issuer])
        try chain.issuer.verify(anchors: [chain.root])
        // Any anchor is trusted, not only self-signed ones (like Go's verifier and Linkerd).
        try chain.leaf.verify(anchors: [chain.issuer])
    }

    @Test func missingIntermediateOrForeignAnchorFails() throws {
        let chain = try Chain()
        let other = try Chain()
        let missing = try #require(failure { try chain.leaf.verify(anchors: [chain.root]) })
        #expect(missing.code == .verificationFailed)
        #expect(missing.openSSLErrors == ["unable to get local issuer certificate"])
        let foreign = try #require(
            failure { try chain.leaf.verify(anchors: [other.root], intermediates: [chain.issuer]) })
        #expect(foreign.code == .verificationFailed)
        #expect(failure { try chain.leaf.verify(anchors: []) }?.code == .verificationFailed)
    }

    @Test func verificationHonoursTheGivenTime() throws {
        let chain = try Chain(issuerValidity: 3600)
        let later = Date(timeIntervalSinceNow: 7200)
        let expired = try #require(
            failure { try chain.leaf.verify(anchors: [chain.root], intermediates: [chain.issuer], at: later) })
        #expect(expired.openSSLErrors == ["certificate has expired"])
        let early = try #require(
            failure {
                try chain.leaf.verify(
                    anchors: [chain.root], intermediates: [chain.issuer], at: Date(timeIntervalSinceNow: -3600))
            })
        #expect(early.openSSLErrors == ["certificate is not yet valid"])
    }

    @Test func intermediateThatIsNotACAIsRejected() throws {
        let chain = try Chain(issuerIsCA: false)
        let error = try #require(
            failure { try chain.leaf.verify(anchors: [chain.root], intermediates: [chain.issuer]) })
        #expect(error.code == .verificationFailed)
        #expect(error.openSSLErrors == ["invalid CA certificate"], "\(error)")
    }
}
