import ApusCore
import Foundation
import Yams

/// Converts YAML to the JSON tree the API server would receive from `kubectl apply`.
///
/// Parsing goes through Yams' node tree rather than `Yams.load`, to control two things `kubectl` does
/// differently from Yams' defaults: timestamps stay strings (the API server validates them as strings with
/// `format: date-time`), and duplicate mapping keys are an error (strict field validation rejects them).
enum YAMLDocuments {
    /// Every non-empty document of a file, in order.
    static func load(_ url: URL) throws -> [JSONValue] {
        try parse(Repository.text(of: url), path: Repository.relativePath(of: url))
    }

    static func parse(_ text: String, path: String = "<inline>") throws -> [JSONValue] {
        let resolver = Resolver.default.removing(.timestamp)
        var documents: [JSONValue] = []
        do {
            // The sequence stops at the first parse error and keeps it in `error` instead of throwing.
            var nodes = try Yams.compose_all(yaml: text, resolver)
            while let node = nodes.next() {
                let value = try convert(node, path: path, at: "")
                if value != .null { documents.append(value) }
            }
            if let error = nodes.error { throw error }
        } catch let error as ManifestError {
            throw error
        } catch {
            throw ManifestError.invalidYAML(path: path, reason: "\(error)")
        }
        return documents
    }

    private static func convert(_ node: Node, path: String, at location: String) throws -> JSONValue {
        switch node {
        case .scalar(let scalar):
            switch node.tag.rawValue {
            case Tag.Name.null.rawValue:
                return .null
            case Tag.Name.bool.rawValue:
                return node.bool.map(JSONValue.bool) ?? .string(scalar.string)
            case Tag.Name.int.rawValue:
                return node.int.map { .number(Double($0)) } ?? .string(scalar.string)
            case Tag.Name.float.rawValue:
                return node.float.map(JSONValue.number) ?? .string(scalar.string)
            default:
                return .string(scalar.string)
            }
        case .sequence(let sequence):
            return .array(
                try sequence.enumerated().map { index, element in
                    try convert(element, path: path, at: "\(location)[\(index)]")
                })
        case .mapping(let mapping):
            var object: [String: JSONValue] = [:]
            for (keyNode, valueNode) in mapping {
                guard let key = keyNode.scalar?.string else {
                    throw ManifestError.invalidYAML(path: path, reason: "non-scalar mapping key at \(location)")
                }
                let child = location.isEmpty ? key : "\(location).\(key)"
                guard object[key] == nil else {
                    throw ManifestError.invalidYAML(path: path, reason: "duplicate key \(child)")
                }
                object[key] = try convert(valueNode, path: path, at: child)
            }
            return .object(object)
        case .alias:
            throw ManifestError.invalidYAML(path: path, reason: "unresolved alias at \(location)")
        }
    }
}

extension JSONValue {
    /// Follows a path of object keys; nil when any step is missing or not an object.
    func value(at keys: String...) -> JSONValue? {
        var current: JSONValue? = self
        for key in keys { current = current?[key] }
        return current
    }
}
