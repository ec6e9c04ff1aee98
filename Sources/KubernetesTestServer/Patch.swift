import ApusCore
import Foundation

/// Patch algorithms over `JSONValue`. Errors are `APIError`s with the codes the real server answers.
enum Patch {
    /// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, anything else replaces.
    static func merge(_ patch: JSONValue, into target: JSONValue) -> JSONValue {
        guard case .object(let patchObject) = patch else { return patch }
        var result = target.objectValue ?? [:]
        for (key, value) in patchObject {
            if value == .null {
                result[key] = nil
            } else {
                result[key] = merge(value, into: result[key] ?? .null)
            }
        }
        return .object(result)
    }

    /// Server-side apply without field ownership: the applied configuration is merged in recursively, lists and
    /// scalars replace, and nothing absent from the configuration is removed (removing a field needs ownership
    /// records, which this server does not keep).
    static func apply(_ configuration: JSONValue, onto target: JSONValue) -> JSONValue {
        guard case .object(let configurationObject) = configuration, case .object(var result) = target else {
            return configuration
        }
        for (key, value) in configurationObject where value != .null {
            result[key] = result[key].map { apply(value, onto: $0) } ?? value
        }
        return .object(result)
    }

    /// RFC 6902 JSON patch. A failed `test` or a path that does not resolve answers 422 Invalid; a malformed
    /// operation list answers 400.
    static func jsonPatch(_ operations: JSONValue, to target: JSONValue) throws(APIError) -> JSONValue {
        guard case .array(let list) = operations else {
            throw APIError.badRequest("json patch must be an array of operations")
        }
        var document = target
        for (index, operation) in list.enumerated() {
            guard case .object(let fields) = operation, let op = fields["op"]?.stringValue,
                let path = fields["path"]?.stringValue
            else {
                throw APIError.badRequest("json patch operation \(index) must have string fields 'op' and 'path'")
            }
            let pointer = try JSONPointer(path)
            func value() throws(APIError) -> JSONValue {
                guard let value = fields["value"] else {
                    throw APIError.badRequest("json patch operation \(index) (\(op)) needs a 'value'")
                }
                return value
            }
            func from() throws(APIError) -> JSONPointer {
                guard let from = fields["from"]?.stringValue else {
                    throw APIError.badRequest("json patch operation \(index) (\(op)) needs a 'from'")
                }
                return try JSONPointer(from)
            }
            switch op {
            case "add":
                document = try pointer.adding(try value(), to: document)
            case "remove":
                document = try pointer.removing(from: document).document
            case "replace":
                _ = try pointer.resolve(in: document)
                document = try pointer.replacing(with: try value(), in: document)
            case "move":
                let source = try from()
                let (remaining, value) = try source.removing(from: document)
                document = try pointer.adding(value, to: remaining)
            case "copy":
                document = try pointer.adding(try from().resolve(in: document), to: document)
            case "test":
                let actual = try pointer.resolve(in: document)
                guard actual == (try value()) else {
                    throw APIError(
                        code: 422, reason: "Invalid",
                        message: "the server rejected our request due to an error in our request: "
                            + "testing value \(path) failed: expected \(try value()), found \(actual)")
                }
            default:
                throw APIError.badRequest("json patch operation \(index): unknown op \"\(op)\"")
            }
        }
        return document
    }
}

/// An RFC 6901 JSON pointer.
struct JSONPointer {
    let tokens: [String]
    let text: String

    init(_ text: String) throws(APIError) {
        self.text = text
        if text.isEmpty {
            tokens = []
            return
        }
        guard text.hasPrefix("/") else { throw APIError.badRequest("invalid JSON pointer \"\(text)\"") }
        tokens = text.dropFirst().split(separator: "/", omittingEmptySubsequences: false).map {
            $0.replacingOccurrences(of: "~1", with: "/").replacingOccurrences(of: "~0", with: "~")
        }
    }

    private func unresolvable(_ why: String) -> APIError {
        APIError(
            code: 422, reason: "Invalid",
            message: "the server rejected our request due to an error in our request: path \(text): \(why)")
    }

    private func arrayIndex(_ token: String, count: Int, allowEnd: Bool) throws(APIError) -> Int {
        if allowEnd, token == "-" { return count }
        guard let index = Int(token), index >= 0, token == String(index),
            index < count || (allowEnd && index == count)
        else { throw unresolvable("array index \"\(token)\" out of range") }
        return index
    }

    func resolve(in document: JSONValue) throws(APIError) -> JSONValue {
        var current = document
        for token in tokens {
            switch current {
            case .object(let object):
                guard let next = object[token] else { throw unresolvable("missing key \"\(token)\"") }
                current = next
            case .array(let array):
                current = array[try arrayIndex(token, count: array.count, allowEnd: false)]
            default:
                throw unresolvable("cannot descend into a scalar at \"\(token)\"")
            }
        }
        return current
    }

    /// Applies `edit` to the parent container of the pointer's last token.
    private func editParent(
        _ document: JSONValue, depth: Int = 0,
        _ edit: (inout JSONValue, String) throws(APIError) -> Void
    ) throws(APIError) -> JSONValue {
        var document = document
        if depth == tokens.count - 1 {
            try edit(&document, tokens[depth])
            return document
        }
        let token = tokens[depth]
        switch document {
        case .object(var object):
            guard let child = object[token] else { throw unresolvable("missing key \"\(token)\"") }
            object[token] = try editParent(child, depth: depth + 1, edit)
            return .object(object)
        case .array(var array):
            let index = try arrayIndex(token, count: array.count, allowEnd: false)
            array[index] = try editParent(array[index], depth: depth + 1, edit)
            return .array(array)
        default:
            throw unresolvable("cannot descend into a scalar at \"\(token)\"")
        }
    }

    func adding(_ value: JSONValue, to document: JSONValue) throws(APIError) -> JSONValue {
        if tokens.isEmpty { return value }
        return try editParent(document) { (parent: inout JSONValue, token: String) throws(APIError) in
            switch parent {
            case .object(var object):
                object[token] = value
                parent = .object(object)
            case .array(var array):
                array.insert(value, at: try arrayIndex(token, count: array.count, allowEnd: true))
                parent = .array(array)
            default:
                throw unresolvable("parent is not an object or array")
            }
        }
    }

    func replacing(with value: JSONValue, in document: JSONValue) throws(APIError) -> JSONValue {
        if tokens.isEmpty { return value }
        return try editParent(document) { (parent: inout JSONValue, token: String) throws(APIError) in
            switch parent {
            case .object(var object):
                object[token] = value
                parent = .object(object)
            case .array(var array):
                array[try arrayIndex(token, count: array.count, allowEnd: false)] = value
                parent = .array(array)
            default:
                throw unresolvable("parent is not an object or array")
            }
        }
    }

    func removing(from document: JSONValue) throws(APIError) -> (document: JSONValue, removed: JSONValue) {
        guard !tokens.isEmpty else { throw unresolvable("cannot remove the whole document") }
        var removed = JSONValue.null
        let result = try editParent(document) { (parent: inout JSONValue, token: String) throws(APIError) in
            switch parent {
            case .object(var object):
                guard let value = object.removeValue(forKey: token) else {
                    throw unresolvable("missing key \"\(token)\"")
                }
                removed = value
                parent = .object(object)
            case .array(var array):
                removed = array.remove(at: try arrayIndex(token, count: array.count, allowEnd: false))
                parent = .array(array)
            default:
                throw unresolvable("parent is not an object or array")
            }
        }
        return (result, removed)
    }
}
