import ApusCore
import Foundation

/// One way an object breaks its schema, named like the API server names it: the field path
/// (`spec.routes[0].timeout`) and the rule that failed.
struct SchemaViolation: Hashable, CustomStringConvertible {
    enum Rule: String, Sendable {
        case type, required, unknownField
        case enumeration = "enum"
        case pattern, minimum, maximum
        case minLength, maxLength, minItems, maxItems, minProperties, maxProperties, format
        case duplicateKey, duplicateItem
        /// The schema itself is unusable at this point (e.g. a pattern that does not compile).
        case invalidSchema
    }

    var path: String
    var rule: Rule
    var detail: String

    /// `path (rule)`, the form `# expect-error:` lines in examples/invalid use.
    var key: String { "\(path.isEmpty ? "<root>" : path) (\(rule.rawValue))" }

    var description: String { "\(key): \(detail)" }
}

/// A validator for the subset of OpenAPI v3 that Kubernetes structural schemas use, applied the way the API server
/// applies a CRD's schema on create and update with strict field validation (kubectl's default).
///
/// It exists so tests can check example objects against our CRDs without an API server. Supported: `type`,
/// `nullable`, `required`, `properties`, `additionalProperties`, `items`, `enum`, `pattern`, `minimum`,
/// `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `minLength`, `maxLength`, `minItems`, `maxItems`,
/// `minProperties`, `maxProperties`, `format` (`date-time`, `int32`, `int64`), `x-kubernetes-int-or-string`,
/// `x-kubernetes-preserve-unknown-fields` and `x-kubernetes-list-type` (`map`, `set`, `atomic`) with
/// `x-kubernetes-list-map-keys`.
///
/// Knowingly not evaluated: `default` (defaulting happens before validation and never makes an object invalid),
/// `description`, and `x-kubernetes-validations` (CEL rules; only the API server evaluates them, so cross-field
/// rules are out of reach here). Any other keyword is reported by `StructuralSchema` as unsupported, so a CRD can
/// never rely on a keyword this validator silently skips.
///
/// Differences from the API server, all deliberate: unknown fields are violations rather than pruned (that is what
/// strict field validation does), and patterns use ICU regular expressions, which agree with the API server's RE2
/// for the syntax our CRDs use.
struct OpenAPIValidator {
    static let evaluatedKeywords: Set<String> = [
        "type", "nullable", "required", "properties", "additionalProperties", "items", "enum", "pattern",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
        "maxItems", "minProperties", "maxProperties", "format", "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    ]
    static let ignoredKeywords: Set<String> = ["description", "default", "x-kubernetes-validations"]
    static let supportedFormats: Set<String> = ["date-time", "int32", "int64"]

    /// Validates a whole custom resource. `metadata` is checked the way the API server checks it for every
    /// object (a name or generateName is required) instead of against the CRD, which may only constrain the name.
    func validateResource(_ object: JSONValue, against schema: JSONValue) -> [SchemaViolation] {
        var violations: [SchemaViolation] = []
        guard case .object(var fields) = object else {
            return [SchemaViolation(path: "", rule: .type, detail: "a resource must be an object")]
        }
        if let metadata = fields.removeValue(forKey: "metadata") {
            checkMetadata(metadata, &violations)
        } else {
            violations.append(SchemaViolation(path: "metadata", rule: .required, detail: "metadata is required"))
        }
        check(.object(fields), schema, at: "", ignoring: ["metadata"], &violations)
        return violations.sorted { $0.key < $1.key }
    }

    /// Validates any value against a schema node.
    func validate(_ value: JSONValue, against schema: JSONValue) -> [SchemaViolation] {
        var violations: [SchemaViolation] = []
        check(value, schema, at: "", ignoring: [], &violations)
        return violations.sorted { $0.key < $1.key }
    }

    private func checkMetadata(_ metadata: JSONValue, _ violations: inout [SchemaViolation]) {
        guard let fields = metadata.objectValue else {
            violations.append(SchemaViolation(path: "metadata", rule: .type, detail: "must be an object"))
            return
        }
        let name = fields["name"]?.stringValue ?? ""
        let generateName = fields["generateName"]?.stringValue ?? ""
        if name.isEmpty && generateName.isEmpty {
            violations.append(
                SchemaViolation(path: "metadata.name", rule: .required, detail: "name or generateName is required"))
        }
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    private func check(
        _ value: JSONValue, _ schemaValue: JSONValue, at path: String, ignoring ignoredFields: Set<String>,
        _ violations: inout [SchemaViolation]
    ) {
        guard let schema = schemaValue.objectValue else {
            violations.append(SchemaViolation(path: path, rule: .invalidSchema, detail: "schema node is not an object"))
            return
        }
        func fail(_ rule: SchemaViolation.Rule, _ detail: String, at where: String? = nil) {
            violations.append(SchemaViolation(path: `where` ?? path, rule: rule, detail: detail))
        }

        if value == .null {
            if schema["nullable"]?.boolValue != true { fail(.type, "must not be null") }
            return
        }
        if schema["x-kubernetes-int-or-string"]?.boolValue == true {
            guard value.stringValue != nil || value.integerValue != nil else {
                fail(.type, "must be an integer or a string, got \(value.typeName)")
                return
            }
        } else if let type = schema["type"]?.stringValue, !value.hasType(type) {
            fail(.type, "must be of type \(type), got \(value.typeName)")
            return
        }

        if let allowed = schema["enum"]?.arrayValue, !allowed.contains(value) {
            fail(.enumeration, "\(value) is not one of \(JSONValue.array(allowed))")
        }

        switch value {
        case .string(let string):
            let length = string.unicodeScalars.count
            if let minimum = schema["minLength"]?.doubleValue, Double(length) < minimum {
                fail(.minLength, "must be at least \(Int(minimum)) characters long")
            }
            if let maximum = schema["maxLength"]?.doubleValue, Double(length) > maximum {
                fail(.maxLength, "must be at most \(Int(maximum)) characters long")
            }
            if let pattern = schema["pattern"]?.stringValue {
                switch PatternCache.matches(pattern, string) {
                case .success(true): break
                case .success(false): fail(.pattern, "\"\(string)\" does not match \(pattern)")
                case .failure(let error): fail(.invalidSchema, "pattern \(pattern) does not compile: \(error)")
                }
            }
            if schema["format"]?.stringValue == "date-time", !RFC3339.isValid(string) {
                fail(.format, "\"\(string)\" is not an RFC 3339 date-time")
            }
        case .number(let number):
            let exclusiveMinimum = schema["exclusiveMinimum"]?.boolValue == true
            if let minimum = schema["minimum"]?.doubleValue,
                exclusiveMinimum ? number <= minimum : number < minimum
            {
                let bound = "\(exclusiveMinimum ? "or equal to " : "")\(JSONValue.number(minimum))"
                fail(.minimum, "\(value) is less than \(bound)")
            }
            let exclusiveMaximum = schema["exclusiveMaximum"]?.boolValue == true
            if let maximum = schema["maximum"]?.doubleValue,
                exclusiveMaximum ? number >= maximum : number > maximum
            {
                let bound = "\(exclusiveMaximum ? "or equal to " : "")\(JSONValue.number(maximum))"
                fail(.maximum, "\(value) is greater than \(bound)")
            }
            switch schema["format"]?.stringValue {
            case "int32" where !(-2_147_483_648...2_147_483_647).contains(number):
                fail(.format, "\(value) does not fit in int32")
            case "int64" where !(-9.223372036854775808e18..<9.223372036854775808e18).contains(number):
                fail(.format, "\(value) does not fit in int64")
            default: break
            }
        case .array(let items):
            if let minimum = schema["minItems"]?.doubleValue, Double(items.count) < minimum {
                fail(.minItems, "must have at least \(Int(minimum)) items")
            }
            if let maximum = schema["maxItems"]?.doubleValue, Double(items.count) > maximum {
                fail(.maxItems, "must have at most \(Int(maximum)) items")
            }
            checkListType(items, schema, at: path, &violations)
            if let itemSchema = schema["items"] {
                for (index, item) in items.enumerated() {
                    check(item, itemSchema, at: "\(path)[\(index)]", ignoring: [], &violations)
                }
            }
        case .object(let fields):
            if let minimum = schema["minProperties"]?.doubleValue, Double(fields.count) < minimum {
                fail(.minProperties, "must have at least \(Int(minimum)) fields")
            }
            if let maximum = schema["maxProperties"]?.doubleValue, Double(fields.count) > maximum {
                fail(.maxProperties, "must have at most \(Int(maximum)) fields")
            }
            for name in schema["required"]?.arrayValue?.compactMap(\.stringValue) ?? []
            where fields[name] == nil && !ignoredFields.contains(name) {
                fail(.required, "\(name) is required", at: Self.join(path, name))
            }
            let properties = schema["properties"]?.objectValue ?? [:]
            let additional = schema["additionalProperties"]
            let preserveUnknown = schema["x-kubernetes-preserve-unknown-fields"]?.boolValue == true
            for (name, fieldValue) in fields.sorted(by: { $0.key < $1.key }) where !ignoredFields.contains(name) {
                let fieldPath = Self.join(path, name)
                if let fieldSchema = properties[name] {
                    check(fieldValue, fieldSchema, at: fieldPath, ignoring: [], &violations)
                } else if let additional, additional.objectValue != nil {
                    check(fieldValue, additional, at: fieldPath, ignoring: [], &violations)
                } else if additional?.boolValue == true || preserveUnknown {
                    continue
                } else {
                    fail(.unknownField, "unknown field \"\(name)\"", at: fieldPath)
                }
            }
        case .bool, .null:
            break
        }
    }

    private func checkListType(
        _ items: [JSONValue], _ schema: [String: JSONValue], at path: String, _ violations: inout [SchemaViolation]
    ) {
        switch schema["x-kubernetes-list-type"]?.stringValue {
        case "set":
            var seen: Set<JSONValue> = []
            for (index, item) in items.enumerated() where !seen.insert(item).inserted {
                violations.append(
                    SchemaViolation(
                        path: "\(path)[\(index)]", rule: .duplicateItem, detail: "duplicate entry \(item)"))
            }
        case "map":
            let keys = schema["x-kubernetes-list-map-keys"]?.arrayValue?.compactMap(\.stringValue) ?? []
            var seen: Set<[JSONValue]> = []
            for (index, item) in items.enumerated() {
                let identity = keys.map { item[$0] ?? .null }
                if !seen.insert(identity).inserted {
                    violations.append(
                        SchemaViolation(
                            path: "\(path)[\(index)]", rule: .duplicateKey,
                            detail:
                                "duplicate entry for key \(keys.joined(separator: ","))=\(JSONValue.array(identity))"))
                }
            }
        default:
            break
        }
    }

    /// `spec.routes` + `name`; keys that are not plain identifiers (annotations, labels) use brackets.
    static func join(_ path: String, _ key: String) -> String {
        let plain = key.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }
        if path.isEmpty { return key }
        return plain ? "\(path).\(key)" : "\(path)[\(key)]"
    }
}

extension JSONValue {
    /// The value as an integer when it is a number without a fractional part; JSON (and the API server) do not
    /// distinguish 3 from 3.0.
    var integerValue: Int64? {
        guard case .number(let number) = self, number.isFinite, number.rounded(.towardZero) == number,
            abs(number) < 9.2e18
        else { return nil }
        return Int64(number)
    }

    var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .number: integerValue != nil ? "integer" : "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }

    func hasType(_ type: String) -> Bool {
        switch (type, self) {
        case ("object", .object), ("array", .array), ("string", .string), ("boolean", .bool), ("number", .number):
            true
        case ("integer", .number):
            integerValue != nil
        default:
            false
        }
    }
}

/// Compiled patterns, shared by every validation (the same few dozen patterns are checked thousands of times).
enum PatternCache {
    struct CompileError: Error, CustomStringConvertible {
        var description: String
    }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var compiled: [String: NSRegularExpression] = [:]

    /// JSON Schema patterns are unanchored: they match when they match anywhere in the string.
    static func matches(_ pattern: String, _ string: String) -> Result<Bool, CompileError> {
        let expression: NSRegularExpression
        do {
            expression = try regex(pattern)
        } catch {
            return .failure(CompileError(description: "\(error)"))
        }
        let range = NSRange(string.startIndex..<string.endIndex, in: string)
        return .success(expression.firstMatch(in: string, range: range) != nil)
    }

    static func regex(_ pattern: String) throws -> NSRegularExpression {
        lock.lock()
        defer { lock.unlock() }
        if let expression = compiled[pattern] { return expression }
        let expression = try NSRegularExpression(pattern: pattern)
        compiled[pattern] = expression
        return expression
    }
}

/// RFC 3339 date-time, the only string format Kubernetes validates in our CRDs (condition timestamps).
enum RFC3339 {
    private static let pattern =
        #"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)"#
        + #"(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"#

    static func isValid(_ string: String) -> Bool {
        (try? PatternCache.matches(pattern, string).get()) == true
    }
}
