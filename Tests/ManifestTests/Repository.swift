import Foundation

/// Paths into the repository checkout, found from this source file's location so the tests work whatever directory
/// `swift test` runs in (Xcode, CI, a different working directory).
enum Repository {
    /// The checkout's root: this file is `<root>/Tests/ManifestTests/Repository.swift`.
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()
        .deletingLastPathComponent()
        .deletingLastPathComponent()

    static func url(_ relativePath: String) -> URL {
        root.appendingPathComponent(relativePath)
    }

    /// The path of `url` relative to the root, for readable test names and failure messages.
    static func relativePath(of url: URL) -> String {
        let rootPath = root.standardizedFileURL.path
        let path = url.standardizedFileURL.path
        guard path.hasPrefix(rootPath + "/") else { return path }
        return String(path.dropFirst(rootPath.count + 1))
    }

    /// `*.yaml` files directly inside `directory` (not recursive), sorted by name.
    static func yamlFiles(in directory: String) throws -> [URL] {
        try FileManager.default.contentsOfDirectory(
            at: url(directory), includingPropertiesForKeys: nil
        )
        .filter { $0.pathExtension == "yaml" }
        .sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    /// `*.yaml` files anywhere below `directory`, sorted by path, skipping subdirectories named in `excluding`.
    static func yamlFilesRecursively(under directory: String, excluding excluded: Set<String> = []) throws -> [URL] {
        let base = url(directory)
        guard
            let enumerator = FileManager.default.enumerator(
                at: base, includingPropertiesForKeys: [.isDirectoryKey]
            )
        else {
            throw ManifestError.unreadable(path: directory, reason: "cannot list the directory")
        }
        var files: [URL] = []
        for case let file as URL in enumerator {
            let isDirectory = (try? file.resourceValues(forKeys: [.isDirectoryKey]).isDirectory) ?? false
            if isDirectory {
                if excluded.contains(file.lastPathComponent) { enumerator.skipDescendants() }
            } else if file.pathExtension == "yaml" {
                files.append(file)
            }
        }
        return files.sorted { $0.path < $1.path }
    }

    /// The CRD definition files in `crds/` (everything except the kustomization that lists them).
    static func crdFiles() throws -> [URL] {
        try yamlFiles(in: "crds").filter { $0.lastPathComponent != "kustomization.yaml" }
    }

    static func text(of url: URL) throws -> String {
        do {
            return try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw ManifestError.unreadable(path: relativePath(of: url), reason: "\(error)")
        }
    }
}

/// Problems loading manifests, named by file so a failing test says which one to fix.
enum ManifestError: Error, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case invalidYAML(path: String, reason: String)
    case unexpectedShape(path: String, reason: String)

    var description: String {
        switch self {
        case .unreadable(let path, let reason): "\(path): cannot read: \(reason)"
        case .invalidYAML(let path, let reason): "\(path): invalid YAML: \(reason)"
        case .unexpectedShape(let path, let reason): "\(path): \(reason)"
        }
    }
}
