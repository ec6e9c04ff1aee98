import ApusCore
import Foundation

/// Checks that a CRD version's `openAPIV3Schema` is structural in the sense of the Kubernetes API ("Specifying a
/// structural schema" in the CustomResourceDefinition task docs on kubernetes.io) and that it only uses keywords
/// `OpenAPIValidator` implements, so example validation in these tests is complete.
///
/// The API server refuses non-structural schemas in apiextensions.k8s.io/v1; finding the problem here gives a
/// path into the schema instead of a rejected `kubectl apply` in a cluster.
enum StructuralSchema {
    static let validTypes: Set<String> = ["object", "array", "string", "integer", "number", "boolean"]

    /// Every problem found, each prefixed with its location in the schema (e.g. `properties.spec.items`).
    static func problems(in schema: JSONValue) -> [String] {
        var problems: [String] = []
        guard let root = schema.objectValue else { return ["<root>: the schema must be an object"] }
        if root["type"]?.stringValue != "object" {
            problems.append("<root>: the root schema must have type object")
        }
        if let metadata = root["properties"]?["metadata"] {
            checkMetadata(metadata, &problems)
        }
        check(schema, at: "", &problems)
        return problems
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    private static func check(_ nodeValue: JSONValue, at path: String, _ problems: inout [String]) {
        let location = path.isEmpty ? "<root>" : path
        func problem(_ text: String) { problems.append("\(location): \(text)") }
        guard let node = nodeValue.objectValue else {
            problem("schema node must be an object")
            return
        }

        let known = OpenAPIValidator.evaluatedKeywords.union(OpenAPIValidator.ignoredKeywords)
        for keyword in node.keys.sorted() where !known.contains(keyword) {
            switch keyword {
            case "$ref":
                problem("$ref is not allowed in a structural schema")
            case "allOf", "anyOf", "oneOf", "not":
                problem("\(keyword) is not implemented by the ManifestTests validator; model the field directly")
            default:
                problem("keyword \(keyword) is not implemented by the ManifestTests validator")
            }
        }

        let type = node["type"]?.stringValue
        let intOrString = node["x-kubernetes-int-or-string"]?.boolValue == true
        let preserveUnknown = node["x-kubernetes-preserve-unknown-fields"]?.boolValue == true
        if let type, !validTypes.contains(type) { problem("unknown type \(type)") }
        if type == nil && !intOrString && !preserveUnknown {
            problem("missing type (needed unless x-kubernetes-int-or-string or x-kubernetes-preserve-unknown-fields)")
        }
        if intOrString && type != nil { problem("x-kubernetes-int-or-string must not also set type") }
        if node["nullable"] != nil && type == nil { problem("nullable without a type") }

        let properties = node["properties"]
        let additional = node["additionalProperties"]
        if properties != nil && additional != nil { problem("properties and additionalProperties are exclusive") }
        if additional?.boolValue == false { problem("additionalProperties: false is not allowed") }
        if (properties != nil || additional != nil) && type != "object" {
            problem("properties or additionalProperties on a node that is not type object")
        }

        if type == "array" {
            if node["items"]?.objectValue == nil { problem("an array must have items with a single schema") }
        } else if node["items"] != nil {
            problem("items on a node that is not type array")
        }

        let stringy = type == "string" || intOrString
        let numeric = type == "integer" || type == "number" || intOrString
        for keyword in ["pattern", "minLength", "maxLength"] where node[keyword] != nil && !stringy {
            problem("\(keyword) on a node that cannot hold a string")
        }
        for keyword in ["minimum", "maximum"] where node[keyword] != nil && !numeric {
            problem("\(keyword) on a node that cannot hold a number")
        }
        if let pattern = node["pattern"]?.stringValue, case .failure(let error) = PatternCache.matches(pattern, "") {
            problem("pattern does not compile: \(error)")
        }
        if let format = node["format"]?.stringValue, !OpenAPIValidator.supportedFormats.contains(format) {
            problem("format \(format) is not validated by the API server or by these tests")
        }

        let propertyNames = Set(properties?.objectValue?.keys.map { $0 } ?? [])
        for name in node["required"]?.arrayValue ?? [] {
            guard let name = name.stringValue else {
                problem("required entries must be strings")
                continue
            }
            if !propertyNames.contains(name) { problem("required field \(name) is not among the properties") }
        }

        checkListType(node, problem)
        checkValidations(node, problem)
        checkValues(node, problem)

        if let properties = properties?.objectValue {
            for (name, child) in properties.sorted(by: { $0.key < $1.key }) {
                check(child, at: join(path, "properties.\(name)"), &problems)
            }
        }
        if let additional, additional.objectValue != nil {
            check(additional, at: join(path, "additionalProperties"), &problems)
        }
        if let items = node["items"], items.objectValue != nil {
            check(items, at: join(path, "items"), &problems)
        }
    }

    private static func checkListType(_ node: [String: JSONValue], _ problem: (String) -> Void) {
        let listType = node["x-kubernetes-list-type"]?.stringValue
        let mapKeys = node["x-kubernetes-list-map-keys"]?.arrayValue?.compactMap(\.stringValue)
        switch listType {
        case nil:
            if mapKeys != nil { problem("x-kubernetes-list-map-keys without x-kubernetes-list-type: map") }
        case "atomic", "set":
            if mapKeys != nil { problem("x-kubernetes-list-map-keys is only for x-kubernetes-list-type: map") }
        case "map":
            guard let mapKeys, !mapKeys.isEmpty else {
                problem("x-kubernetes-list-type: map needs x-kubernetes-list-map-keys")
                return
            }
            let items = node["items"]?.objectValue
            let itemProperties = items?["properties"]?.objectValue ?? [:]
            let required = Set(items?["required"]?.arrayValue?.compactMap(\.stringValue) ?? [])
            for key in mapKeys {
                guard let keySchema = itemProperties[key] else {
                    problem("list map key \(key) is not a property of the items")
                    continue
                }
                if !required.contains(key) && keySchema["default"] == nil {
                    problem("list map key \(key) must be required or have a default")
                }
            }
        case let other?:
            problem("unknown x-kubernetes-list-type \(other)")
        }
        if listType != nil && node["type"]?.stringValue != "array" {
            problem("x-kubernetes-list-type on a node that is not type array")
        }
    }

    private static func checkValidations(_ node: [String: JSONValue], _ problem: (String) -> Void) {
        guard let rules = node["x-kubernetes-validations"] else { return }
        guard let rules = rules.arrayValue else {
            problem("x-kubernetes-validations must be a list")
            return
        }
        for (index, rule) in rules.enumerated() {
            if (rule["rule"]?.stringValue ?? "").isEmpty { problem("x-kubernetes-validations[\(index)] has no rule") }
            if (rule["message"]?.stringValue ?? "").isEmpty {
                problem("x-kubernetes-validations[\(index)] has no message (users would see the raw CEL)")
            }
        }
    }

    /// `enum` values and `default` must themselves satisfy the node, or the API server rejects the CRD (defaults)
    /// or the enum entry can never be used.
    private static func checkValues(_ node: [String: JSONValue], _ problem: (String) -> Void) {
        let validator = OpenAPIValidator()
        var withoutEnum = node
        withoutEnum.removeValue(forKey: "enum")
        for value in node["enum"]?.arrayValue ?? [] {
            for violation in validator.validate(value, against: .object(withoutEnum)) {
                problem("enum value \(value) is invalid: \(violation)")
            }
        }
        if node["enum"] != nil && node["enum"]?.arrayValue == nil { problem("enum must be a list") }
        if let value = node["default"] {
            for violation in validator.validate(value, against: .object(node)) {
                problem("default \(value) is invalid: \(violation)")
            }
        }
    }

    /// Only `metadata.name` and `metadata.generateName` may be constrained, and only with string restrictions.
    private static func checkMetadata(_ metadata: JSONValue, _ problems: inout [String]) {
        guard let node = metadata.objectValue else { return }
        for keyword in node.keys.sorted() where !["type", "description", "properties"].contains(keyword) {
            problems.append("properties.metadata: \(keyword) is not allowed on metadata")
        }
        for (name, child) in node["properties"]?.objectValue ?? [:] {
            if name != "name" && name != "generateName" {
                problems.append("properties.metadata: only name and generateName may be constrained, not \(name)")
            }
            let allowed: Set<String> = ["type", "description", "pattern", "minLength", "maxLength"]
            for keyword in child.objectValue?.keys.sorted() ?? [] where !allowed.contains(keyword) {
                problems.append("properties.metadata.properties.\(name): \(keyword) is not allowed")
            }
        }
    }

    private static func join(_ path: String, _ component: String) -> String {
        path.isEmpty ? component : "\(path).\(component)"
    }
}
