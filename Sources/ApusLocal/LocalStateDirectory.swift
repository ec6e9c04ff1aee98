import ApusIdentity
import Foundation

/// The state directory of local mode (default `.apus/`):
///
/// ```
/// .apus/
///   identity/ca-bundle.crt, issuer.crt, issuer.key   generated once (apus identity generate's layout)
///   apiserver-token                                  bearer token of the embedded API server, kept across runs
///   kubeconfig                                       rewritten at every start (the API server's port and CA change)
///   tap-token                                        bearer token every proxy accepts for tap (`apus tap`), kept
///                                                    across runs so adopted proxies keep accepting it
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

    /// The path of the tap token file, created on first use: 32 random bytes as hex, readable by the owner only.
    /// Every spawned proxy reads it (`APUS_PROXY_TAP_TOKEN_FILE`) on each tap request, and `apus tap` finds it
    /// beside the kubeconfig; an existing token is kept, so proxies adopted from an earlier run still accept it.
    /// The token itself is never logged.
    func ensureTapToken() throws -> String {
        let path = url("tap-token").path
        if let data = FileManager.default.contents(atPath: path),
            String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).count >= 64
        {
            // Tightened in case it was copied around with a looser mode.
            _ = chmod(path, 0o600)
            return path
        }
        var generator = SystemRandomNumberGenerator()
        let token = (0..<32).map { _ in
            let byte = UInt8.random(in: 0...255, using: &generator)
            return (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }.joined()
        try writePrivateFile(token, to: path)
        return path
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

/// Writes a secret through a temporary file created with mode 0600 (never readable by others, not even
/// between creation and a chmod) and renamed into place.
private func writePrivateFile(_ text: String, to path: String) throws {
    let temporary = path + ".tmp-\(getpid())"
    let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard descriptor >= 0 else {
        throw LocalModeError("cannot create \(temporary): \(String(cString: strerror(errno)))")
    }
    let bytes = Array(text.utf8)
    let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    let closed = close(descriptor)
    guard written == bytes.count, closed == 0, rename(temporary, path) == 0 else {
        let reason = String(cString: strerror(errno))
        unlink(temporary)
        throw LocalModeError("cannot write \(path): \(reason)")
    }
}
