import ApusCore
import Foundation

/// A parsed `labelSelector` query parameter (the string syntax of `labels.Parse`).
struct LabelSelector: Sendable, Equatable {
    enum Requirement: Sendable, Equatable {
        case equals(String, String)
        case notEquals(String, String)
        case `in`(String, Set<String>)
        case notIn(String, Set<String>)
        case exists(String)
        case doesNotExist(String)
    }

    var requirements: [Requirement]

    static let everything = LabelSelector(requirements: [])

    /// Parses `a=b,c!=d,e in (x,y),f notin (z),g,!h`. Commas inside parentheses belong to the value set.
    init(parsing text: String) throws(APIError) {
        var requirements: [Requirement] = []
        for term in Self.splitTopLevel(text) {
            let term = term.trimmingCharacters(in: .whitespaces)
            if term.isEmpty { continue }
            requirements.append(try Self.parseTerm(term, in: text))
        }
        self.requirements = requirements
    }

    private init(requirements: [Requirement]) {
        self.requirements = requirements
    }

    func matches(_ labels: [String: String]) -> Bool {
        requirements.allSatisfy { requirement in
            switch requirement {
            case .equals(let key, let value): return labels[key] == value
            case .notEquals(let key, let value): return labels[key] != value
            case .in(let key, let values): return labels[key].map(values.contains) ?? false
            case .notIn(let key, let values): return labels[key].map { !values.contains($0) } ?? true
            case .exists(let key): return labels[key] != nil
            case .doesNotExist(let key): return labels[key] == nil
            }
        }
    }

    func matches(object: JSONValue) -> Bool {
        guard !requirements.isEmpty else { return true }
        var labels: [String: String] = [:]
        for (key, value) in object["metadata"]?["labels"]?.objectValue ?? [:] {
            if let value = value.stringValue { labels[key] = value }
        }
        return matches(labels)
    }

    private static func splitTopLevel(_ text: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var depth = 0
        for character in text {
            switch character {
            case "(": depth += 1
            case ")": depth -= 1
            case "," where depth == 0:
                parts.append(current)
                current = ""
                continue
            default: break
            }
            current.append(character)
        }
        parts.append(current)
        return parts
    }

    private static func parseTerm(_ term: String, in text: String) throws(APIError) -> Requirement {
        func invalid(_ why: String) -> APIError {
            APIError.badRequest("unable to parse requirement: \(why) in label selector \"\(text)\"")
        }
        func key(_ raw: Substring) throws(APIError) -> String {
            let key = raw.trimmingCharacters(in: .whitespaces)
            guard !key.isEmpty, key.allSatisfy(Self.isKeyCharacter) else {
                throw invalid("invalid label key \"\(key)\"")
            }
            return key
        }
        func value(_ raw: Substring) throws(APIError) -> String {
            let value = raw.trimmingCharacters(in: .whitespaces)
            guard value.allSatisfy(Self.isValueCharacter) else { throw invalid("invalid label value \"\(value)\"") }
            return value
        }
        if term.hasPrefix("!") {
            return .doesNotExist(try key(term.dropFirst()))
        }
        if let range = term.range(of: "!=") {
            return .notEquals(try key(term[..<range.lowerBound]), try value(term[range.upperBound...]))
        }
        if let range = term.range(of: "==") {
            return .equals(try key(term[..<range.lowerBound]), try value(term[range.upperBound...]))
        }
        if let range = term.range(of: "=") {
            return .equals(try key(term[..<range.lowerBound]), try value(term[range.upperBound...]))
        }
        if let open = term.firstIndex(of: "(") {
            guard term.hasSuffix(")") else { throw invalid("missing ')'") }
            let head = term[..<open].split(separator: " ", omittingEmptySubsequences: true)
            guard head.count == 2 else { throw invalid("expected '<key> in (...)' or '<key> notin (...)'") }
            let inner = term[term.index(after: open)..<term.index(before: term.endIndex)]
            var values = Set<String>()
            for raw in inner.split(separator: ",", omittingEmptySubsequences: false) {
                values.insert(try value(raw))
            }
            let name = try key(head[0])
            switch head[1] {
            case "in": return .in(name, values)
            case "notin": return .notIn(name, values)
            default: throw invalid("unknown operator \"\(head[1])\"")
            }
        }
        return .exists(try key(term[...]))
    }

    private static func isKeyCharacter(_ character: Character) -> Bool {
        character.isASCII && (character.isLetter || character.isNumber || "-_./".contains(character))
    }

    private static func isValueCharacter(_ character: Character) -> Bool {
        character.isASCII && (character.isLetter || character.isNumber || "-_.".contains(character))
    }
}

/// A parsed `fieldSelector`: `path=value`, `path==value` or `path!=value` terms over dotted JSON paths.
///
/// The real server accepts only the fields each kind indexes (`metadata.name`, `metadata.namespace`, plus e.g.
/// `spec.nodeName`, `status.phase` for pods); this one accepts any dotted path and compares its string form.
struct FieldSelector: Sendable, Equatable {
    struct Requirement: Sendable, Equatable {
        var path: [String]
        var value: String
        var negated: Bool
    }

    var requirements: [Requirement]

    static let everything = FieldSelector(requirements: [])

    private init(requirements: [Requirement]) {
        self.requirements = requirements
    }

    init(parsing text: String) throws(APIError) {
        var requirements: [Requirement] = []
        for term in text.split(separator: ",") {
            let term = term.trimmingCharacters(in: .whitespaces)
            if term.isEmpty { continue }
            let negated: Bool
            let range: Range<String.Index>
            if let found = term.range(of: "!=") {
                negated = true
                range = found
            } else if let found = term.range(of: "==") ?? term.range(of: "=") {
                negated = false
                range = found
            } else {
                throw APIError.badRequest("invalid field selector: '\(term)': expected an operator (=, ==, !=)")
            }
            let path = term[..<range.lowerBound].trimmingCharacters(in: .whitespaces)
            guard !path.isEmpty else { throw APIError.badRequest("invalid field selector: '\(term)': empty field") }
            let value = term[range.upperBound...].trimmingCharacters(in: .whitespaces)
            requirements.append(
                Requirement(path: path.split(separator: ".").map(String.init), value: value, negated: negated))
        }
        self.requirements = requirements
    }

    func matches(object: JSONValue) -> Bool {
        requirements.allSatisfy { requirement in
            var current: JSONValue? = object
            for component in requirement.path { current = current?[component] }
            let actual: String
            switch current {
            case .string(let string): actual = string
            case .bool(let bool): actual = String(bool)
            case .number(let number):
                actual = number.rounded() == number && abs(number) < 9e15 ? String(Int64(number)) : String(number)
            default: actual = ""  // absent fields compare as the empty string, as in the real field sets
            }
            return (actual == requirement.value) != requirement.negated
        }
    }
}
