import ApusCore
import ApusIdentity
import ArgumentParser
import Foundation

/// `apus identity …`: trust material for the identity CA.
struct IdentityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "identity",
        abstract: "Manage the mesh's trust anchors and identity issuer.",
        subcommands: [Generate.self]
    )

    /// Generates a trust anchor and an issuer, as `apus install` and local mode need them.
    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate an ECDSA P-256 trust anchor and an issuer signed by it.",
            discussion: """
                Writes ca-bundle.crt (the trust anchors proxies verify against), issuer.crt and issuer.key (the \\
                intermediate CA the controller signs with) into --output-dir, the layout \\
                `apus-controller --identity-issuer-directory` reads. With --kubernetes it prints the ConfigMap \\
                apus-identity-trust-roots and the kubernetes.io/tls Secret apus-identity-issuer instead. The root \\
                key is not kept: rotate by generating a new root and distributing a bundle of old and new roots.
                """
        )

        @Option(help: "Folder to write ca-bundle.crt, issuer.crt and issuer.key into (created if missing).")
        var outputDir: String?

        @Flag(help: "Print Kubernetes manifests (ConfigMap and Secret) on standard output instead of writing files.")
        var kubernetes = false

        @Option(help: "Trust domain of the mesh.")
        var trustDomain = "cluster.local"

        @Option(name: .customLong("controller-namespace"), help: "Namespace of the control plane.")
        var controlNamespace = "apus"

        @Option(help: "Validity of the trust anchor, as a Go duration.")
        var rootValidity = "87600h"

        @Option(help: "Validity of the issuer, as a Go duration (at most the anchor's).")
        var issuerValidity = "8760h"

        func validate() throws {
            guard (outputDir != nil) != kubernetes else {
                throw ValidationError("give exactly one of --output-dir or --kubernetes")
            }
            for (flag, value) in [("--root-validity", rootValidity), ("--issuer-validity", issuerValidity)] {
                guard let duration = try? GoDuration(parsing: value), duration.nanoseconds > 0 else {
                    throw ValidationError("\(flag) must be a positive Go duration such as 8760h, got '\(value)'")
                }
            }
        }

        func run() throws {
            let material: (anchorsPEM: String, issuerCertificatePEM: String, issuerKeyPEM: String)
            do {
                material = try TrustRootsGenerator.generate(
                    trustDomain: trustDomain, controlNamespace: controlNamespace,
                    rootValidity: try GoDuration(parsing: rootValidity).seconds,
                    issuerValidity: try GoDuration(parsing: issuerValidity).seconds)
            } catch {
                throw ValidationError("cannot generate the trust roots: \(error)")
            }
            if kubernetes {
                print(manifests(material))
                return
            }
            guard let outputDir else { return }
            let folder = URL(fileURLWithPath: outputDir)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try write(material.anchorsPEM, to: folder.appendingPathComponent("ca-bundle.crt"), mode: 0o644)
            try write(material.issuerCertificatePEM, to: folder.appendingPathComponent("issuer.crt"), mode: 0o644)
            try write(material.issuerKeyPEM, to: folder.appendingPathComponent("issuer.key"), mode: 0o600)
            print("wrote ca-bundle.crt, issuer.crt and issuer.key to \(folder.path)")
        }

        /// Creates the file with its final permissions before any secret byte is written to it.
        private func write(_ text: String, to url: URL, mode: Int) throws {
            let path = url.path
            guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: mode])
            else { throw ValidationError("cannot create \(path)") }
            try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
            try Data(text.utf8).write(to: url)
        }

        private func manifests(_ material: (anchorsPEM: String, issuerCertificatePEM: String, issuerKeyPEM: String))
            -> String
        {
            func indented(_ text: String) -> String {
                text.split(separator: "\n", omittingEmptySubsequences: false).map { "    \($0)" }.joined(
                    separator: "\n")
            }
            func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }
            return """
                apiVersion: v1
                kind: ConfigMap
                metadata:
                  name: apus-identity-trust-roots
                  namespace: \(controlNamespace)
                data:
                  ca-bundle.crt: |
                \(indented(material.anchorsPEM.trimmingCharacters(in: .newlines)))
                ---
                apiVersion: v1
                kind: Secret
                metadata:
                  name: apus-identity-issuer
                  namespace: \(controlNamespace)
                type: kubernetes.io/tls
                data:
                  tls.crt: \(base64(material.issuerCertificatePEM))
                  tls.key: \(base64(material.issuerKeyPEM))
                  ca.crt: \(base64(material.anchorsPEM))
                """
        }
    }
}
