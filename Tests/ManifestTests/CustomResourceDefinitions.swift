import ApusCore
import Foundation

/// A CRD file from `crds/`, with the accessors the tests need.
struct CRDFile: CustomStringConvertible {
    struct Version {
        var name: String
        var served: Bool
        var storage: Bool
        var schema: JSONValue?
        var definition: JSONValue
    }

    var url: URL
    var object: JSONValue

    var description: String { Repository.relativePath(of: url) }
    var name: String { object.value(at: "metadata", "name")?.stringValue ?? "" }
    var group: String { object.value(at: "spec", "group")?.stringValue ?? "" }
    var kind: String { object.value(at: "spec", "names", "kind")?.stringValue ?? "" }
    var plural: String { object.value(at: "spec", "names", "plural")?.stringValue ?? "" }

    var versions: [Version] {
        (object.value(at: "spec", "versions")?.arrayValue ?? []).map { version in
            Version(
                name: version["name"]?.stringValue ?? "",
                served: version["served"]?.boolValue ?? false,
                storage: version["storage"]?.boolValue ?? false,
                schema: version.value(at: "schema", "openAPIV3Schema"),
                definition: version)
        }
    }

    /// The schema for `apiVersion` (group/version) if this CRD defines and serves it.
    func servedSchema(apiVersion: String) -> JSONValue? {
        let parts = apiVersion.split(separator: "/", maxSplits: 1).map(String.init)
        guard parts.count == 2, parts[0] == group else { return nil }
        return versions.first { $0.name == parts[1] && $0.served }?.schema
    }

    /// Loads every CRD in `crds/`; each file must hold exactly one CustomResourceDefinition.
    static func loadAll() throws -> [CRDFile] {
        try Repository.crdFiles().map { url in
            let documents = try YAMLDocuments.load(url)
            guard documents.count == 1, let object = documents.first,
                object["kind"]?.stringValue == "CustomResourceDefinition"
            else {
                throw ManifestError.unexpectedShape(
                    path: Repository.relativePath(of: url),
                    reason: "expected exactly one CustomResourceDefinition, found \(documents.count) documents")
            }
            return CRDFile(url: url, object: object)
        }
    }
}

/// One object from a manifest file, remembering where it came from for failure messages.
struct ManifestObject: CustomStringConvertible {
    var file: URL
    var index: Int
    var object: JSONValue

    var apiVersion: String { object["apiVersion"]?.stringValue ?? "" }
    var kind: String { object["kind"]?.stringValue ?? "" }
    var name: String { object.value(at: "metadata", "name")?.stringValue ?? "" }

    var description: String { "\(Repository.relativePath(of: file))#\(index) \(kind) \(name)" }

    static func load(_ urls: [URL]) throws -> [ManifestObject] {
        try urls.flatMap { url in
            try YAMLDocuments.load(url).enumerated().map { ManifestObject(file: url, index: $0, object: $1) }
        }
    }
}
