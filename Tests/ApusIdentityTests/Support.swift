import ApusIdentity
import ApusX509
import Foundation

/// A CA built from freshly generated trust roots, plus helpers to request identities from it the way a proxy does.
struct TestAuthority {
    let roots: (anchorsPEM: String, issuerCertificatePEM: String, issuerKeyPEM: String)
    let credentials: IssuerCredentials
    let authority: CertificateAuthority

    init(controlNamespace: String = "apus", leafLifetime: TimeInterval = 86400, now: Date = Date()) throws {
        roots = try TrustRootsGenerator.generate(controlNamespace: controlNamespace, now: now)
        credentials = try IssuerCredentials(
            anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
            issuerKeyPEM: roots.issuerKeyPEM, now: now)
        authority = CertificateAuthority(credentials: credentials, leafLifetime: leafLifetime)
    }

    /// Generates a key, builds the CSR for `identity` and certifies it.
    func issue(_ identity: IdentityName, now: Date = Date()) throws -> IssuedIdentity {
        let key = try PrivateKey.generateP256()
        let csr = try CertificateSigningRequest(key: key, dnsName: identity.description)
        let response = try authority.issue(csrDER: try csr.der, identity: identity, now: now)
        return IssuedIdentity(identity: identity, key: key, response: response)
    }
}

struct IssuedIdentity {
    let identity: IdentityName
    let key: PrivateKey
    let response: CertifyResponse

    var leaf: Certificate { get throws { try Certificate(der: response.leafCertificate) } }
    var intermediates: [Certificate] {
        get throws { try response.intermediateCertificates.map { try Certificate(der: $0) } }
    }
    var leafPEM: String { get throws { try leaf.pem } }
    var chainPEM: String { get throws { try ([leaf] + intermediates).map { try $0.pem }.joined() } }
}

func identity(_ serviceAccount: String, _ namespace: String = "shop") -> IdentityName {
    IdentityName(serviceAccount: serviceAccount, namespace: namespace)
}

/// A directory under the system temporary directory, removed by `remove()`.
struct TemporaryDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("apus-identity-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func write(_ name: String, _ text: String) throws -> String {
        let file = url.appendingPathComponent(name)
        try text.write(to: file, atomically: true, encoding: .utf8)
        return file.path
    }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// Runs `openssl` with `arguments`; returns its exit status and combined output.
func runOpenSSL(_ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["openssl"] + arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Replaces the first occurrence of `old` by `new` (same length) in `bytes`; nil when `old` is absent.
func replacing(_ old: [UInt8], with new: [UInt8], in bytes: [UInt8]) -> [UInt8]? {
    guard old.count == new.count, bytes.count >= old.count else { return nil }
    for start in 0...(bytes.count - old.count) where Array(bytes[start..<(start + old.count)]) == old {
        var result = bytes
        result.replaceSubrange(start..<(start + old.count), with: new)
        return result
    }
    return nil
}
