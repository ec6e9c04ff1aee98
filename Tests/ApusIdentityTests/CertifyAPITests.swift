import ApusIdentity
import Foundation
import Testing

@Suite struct CertifyAPITests {
    @Test func requestEncodesBytesAsBase64AndRoundTrips() throws {
        let request = CertifyRequest(
            identity: "web.shop.serviceaccount.identity.apus.cluster.local", token: Array("s3cr3t".utf8),
            certificateSigningRequest: [0x30, 0x82, 0x01])
        let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(request)) as? [String: String]
        #expect(json?["token"] == "czNjcjN0")
        #expect(json?["certificateSigningRequest"] == "MIIB")
        #expect(json?["identity"] == request.identity)
        #expect(try JSONDecoder().decode(CertifyRequest.self, from: JSONEncoder().encode(request)) == request)
        #expect(!request.redactedDescription.contains("s3cr3t"))
    }

    @Test func missingRequestFieldsAreNamed() throws {
        let cases: [(String, String)] = [
            (#"{"token": "dG9r", "certificateSigningRequest": "MIIB"}"#, "identity is missing"),
            (#"{"identity": "x", "certificateSigningRequest": "MIIB"}"#, "token is missing"),
            (
                #"{"identity": "x", "token": "dG9r", "certificateSigningRequest": null}"#,
                "certificateSigningRequest is missing"
            ),
            (#"{"identity": "x", "token": "", "certificateSigningRequest": "MIIB"}"#, "token is missing"),
        ]
        for (body, message) in cases {
            let request = try JSONDecoder().decode(CertifyRequest.self, from: Data(body.utf8))
            #expect(throws: IdentityError(.missingField, message)) { try request.validate() }
        }
        #expect(throws: DecodingError.self) {
            _ = try JSONDecoder().decode(CertifyRequest.self, from: Data(#"{"token": "***"}"#.utf8))
        }
    }

    @Test func responseUsesBase64AndRFC3339() throws {
        let response = CertifyResponse(
            leafCertificate: [1, 2, 3], intermediateCertificates: [[4], [5, 6]],
            validUntil: Date(timeIntervalSince1970: 1_750_003_620))
        let data = try JSONEncoder().encode(response)
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(json["leafCertificate"] as? String == "AQID")
        #expect(json["intermediateCertificates"] as? [String] == ["BA==", "BQY="])
        #expect(json["validUntil"] as? String == "2025-06-15T16:07:00Z")
        #expect(try JSONDecoder().decode(CertifyResponse.self, from: data) == response)

        let fractional =
            #"{"leafCertificate": "AQID", "intermediateCertificates": [], "validUntil": "2025-06-15T16:07:00.5Z"}"#
        let decoded = try JSONDecoder().decode(CertifyResponse.self, from: Data(fractional.utf8))
        #expect(decoded.validUntil == Date(timeIntervalSince1970: 1_750_003_620.5))
        let bad = #"{"leafCertificate": "AQID", "intermediateCertificates": [], "validUntil": "tomorrow"}"#
        #expect(throws: DecodingError.self) { _ = try JSONDecoder().decode(CertifyResponse.self, from: Data(bad.utf8)) }
    }

    @Test func errorsMapToHTTPStatusesAndEncodeAsTheWireBody() throws {
        let statuses = IdentityError.Code.allCases.map { IdentityError($0, "m").httpStatus }
        #expect(statuses == [400, 400, 401, 403, 503, 500, 400])
        let body = try JSONEncoder().encode(IdentityError(.identityMismatch, "nope"))
        let json = try JSONSerialization.jsonObject(with: body) as? [String: String]
        #expect(json == ["code": "identityMismatch", "message": "nope"])
        #expect(try JSONDecoder().decode(IdentityError.self, from: body) == IdentityError(.identityMismatch, "nope"))
    }
}
