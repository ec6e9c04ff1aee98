import ApusIdentity
import Foundation

/// The state directory of local mode (default `.apus/`):
///
/// ```
/// .apus/
///   identity/ca-bundle.crt, issuer.crt, issuer.key   generated once (apus identity generate's layout)
///   apiserver-token                                  bearer token of the embedded API server, kept across runs
///   kubeconfig                                       rewritten at every start (the API server's port and CA change)
///   pods/<namespace>/<name>/pod.json                 the pod's processes, address and spec (``PodRecord``)
///   pods/<namespace>/<name>/<container>.log          each container's output
///   pods/<namespace>/<name>/token, identity/         per proxy: Certify token and end-entity directory
/// ```
struct LocalStateDirectory {
    let root: URL

    init(path: String) throws {
        root = URL(fileURLWithPath: path).standardizedFileURL
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(
            at: root.appendingPathComponent("identity"), withIntermediateDirectories: true)
        // Per-pod files of an earlier run stay: the kubelet adopts the processes of a crashed controller's pods
        // from them and cleans up the rest (see ``PodRecord``).
    }

    func url(_ relative: String) -> URL { root.appendingPathComponent(relative) }

    func write(_ text: String, to relative: String, mode: Int) throws {
        let target = url(relative)
        try Data(text.utf8).write(to: target, options: .atomic)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: target.path)
    }

    /// Generates the trust root and issuer unless all three files are there.
    func ensureTrustRoots(controlNamespace: String, trustDomain: String) throws {
        let names = ["ca-bundle.crt", "issuer.crt", "issuer.key"]
        if names.allSatisfy({ FileManager.default.fileExists(atPath: url("identity/\($0)").path) }) { return }
        let roots = try TrustRootsGenerator.generate(trustDomain: trustDomain, controlNamespace: controlNamespace)
        try write(roots.anchorsPEM, to: "identity/ca-bundle.crt", mode: 0o644)
        try write(roots.issuerCertificatePEM, to: "identity/issuer.crt", mode: 0o644)
        try write(roots.issuerKeyPEM, to: "identity/issuer.key", mode: 0o600)
    }

    /// The API server's bearer token, created on first use.
    func apiServerToken() throws -> String {
        let path = url("apiserver-token")
        if let data = FileManager.default.contents(atPath: path.path) {
            let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            if token.count >= 32 { return token }
        }
        var generator = SystemRandomNumberGenerator()
        let token = (0..<4).map { _ in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
        try write(token, to: "apiserver-token", mode: 0o600)
        return token
    }
}
