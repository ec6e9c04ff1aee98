#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// `POST /apus.identity.v1.Identity/Certify` request body.
///
/// Byte fields are base64 strings in JSON. Decoding tolerates absent fields (they decode empty) so the server can
/// answer ``IdentityError/Code/missingField`` naming the field through ``validate()``, rather than a generic
/// decoding error.
public struct CertifyRequest: Codable, Sendable, Hashable {
    /// The identity the proxy asks for, `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>`.
    public var identity: String
    /// The ServiceAccount token (audience `identity.l5d.io`), as bytes.
    public var token: [UInt8]
    /// DER PKCS#10 for a key the proxy generated and keeps.
    public var certificateSigningRequest: [UInt8]

    public init(identity: String, token: [UInt8], certificateSigningRequest: [UInt8]) {
        self.identity = identity
        self.token = token
        self.certificateSigningRequest = certificateSigningRequest
    }

    /// Throws ``IdentityError/Code/missingField`` naming the first empty field.
    public func validate() throws(IdentityError) {
        if identity.isEmpty { throw IdentityError(.missingField, "identity is missing") }
        if token.isEmpty { throw IdentityError(.missingField, "token is missing") }
        if certificateSigningRequest.isEmpty {
            throw IdentityError(.missingField, "certificateSigningRequest is missing")
        }
    }

    private enum CodingKeys: String, CodingKey {
        case identity, token, certificateSigningRequest
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        identity = try container.decodeIfPresent(String.self, forKey: .identity) ?? ""
        token = try container.decodeBase64IfPresent(forKey: .token)
        certificateSigningRequest = try container.decodeBase64IfPresent(forKey: .certificateSigningRequest)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(identity, forKey: .identity)
        try container.encode(Data(token).base64EncodedString(), forKey: .token)
        try container.encode(Data(certificateSigningRequest).base64EncodedString(), forKey: .certificateSigningRequest)
    }

    /// Leaves the token out: it is a bearer credential.
    public var redactedDescription: String {
        "CertifyRequest(identity: \(identity), token: \(token.count) bytes, csr: \(certificateSigningRequest.count) bytes)"
    }
}

/// `Certify` success body: the leaf and the chain up to (not including) the trust anchors, DER, base64 in JSON;
/// `validUntil` is the leaf's notAfter as RFC 3339 (`2025-05-01T12:00:00Z`).
public struct CertifyResponse: Codable, Sendable, Hashable {
    public var leafCertificate: [UInt8]
    public var intermediateCertificates: [[UInt8]]
    public var validUntil: Date

    public init(leafCertificate: [UInt8], intermediateCertificates: [[UInt8]], validUntil: Date) {
        self.leafCertificate = leafCertificate
        self.intermediateCertificates = intermediateCertificates
        self.validUntil = validUntil
    }

    private enum CodingKeys: String, CodingKey {
        case leafCertificate, intermediateCertificates, validUntil
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        leafCertificate = try container.decodeBase64(forKey: .leafCertificate)
        let encoded = try container.decodeIfPresent([String].self, forKey: .intermediateCertificates) ?? []
        intermediateCertificates = try encoded.enumerated().map { index, text in
            guard let data = Data(base64Encoded: text) else {
                throw DecodingError.dataCorruptedError(
                    forKey: .intermediateCertificates, in: container,
                    debugDescription: "intermediateCertificates[\(index)] is not base64")
            }
            return [UInt8](data)
        }
        let text = try container.decode(String.self, forKey: .validUntil)
        guard let date = RFC3339.parse(text) else {
            throw DecodingError.dataCorruptedError(
                forKey: .validUntil, in: container, debugDescription: "'\(text)' is not an RFC 3339 timestamp")
        }
        validUntil = date
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(Data(leafCertificate).base64EncodedString(), forKey: .leafCertificate)
        try container.encode(
            intermediateCertificates.map { Data($0).base64EncodedString() }, forKey: .intermediateCertificates)
        try container.encode(RFC3339.format(validUntil), forKey: .validUntil)
    }
}

enum RFC3339 {
    static func format(_ date: Date) -> String {
        // Certificates have whole-second validity; print fractions only when there are any.
        if date.timeIntervalSince1970.rounded(.down) == date.timeIntervalSince1970 {
            return date.formatted(.iso8601)
        }
        return date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    static func parse(_ text: String) -> Date? {
        if let date = try? Date(text, strategy: .iso8601) { return date }
        return try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
}

extension KeyedDecodingContainer {
    fileprivate func decodeBase64(forKey key: Key) throws -> [UInt8] {
        let text = try decode(String.self, forKey: key)
        guard let data = Data(base64Encoded: text) else {
            throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "not base64")
        }
        return [UInt8](data)
    }

    fileprivate func decodeBase64IfPresent(forKey key: Key) throws -> [UInt8] {
        guard contains(key), try !decodeNil(forKey: key) else { return [] }
        return try decodeBase64(forKey: key)
    }
}
