import ApusCore

/// One RFC 6902 operation, as an AdmissionReview response carries it (base64 of the JSON array).
///
/// Only the fields the operation needs are encoded, so `{"op":"remove","path":"/a"}` round-trips unchanged.
public struct JSONPatchOperation: Codable, Hashable, Sendable, CustomStringConvertible {
    public enum Op: String, Codable, Hashable, Sendable {
        case add, remove, replace, move, copy, test
    }

    public var op: Op
    /// RFC 6901 JSON pointer; build it with ``JSONPointer/path(_:)`` so `/` and `~` in keys are escaped.
    public var path: String
    public var value: JSONValue?
    /// Source pointer of `move` and `copy`.
    public var from: String?

    public init(op: Op, path: String, value: JSONValue? = nil, from: String? = nil) {
        self.op = op
        self.path = path
        self.value = value
        self.from = from
    }

    public static func add(_ path: String, _ value: JSONValue) -> Self { Self(op: .add, path: path, value: value) }
    public static func remove(_ path: String) -> Self { Self(op: .remove, path: path) }
    public static func replace(_ path: String, _ value: JSONValue) -> Self {
        Self(op: .replace, path: path, value: value)
    }

    private enum CodingKeys: String, CodingKey {
        case op, path, value, from
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        op = try container.decode(Op.self, forKey: .op)
        path = try container.decode(String.self, forKey: .path)
        from = try container.decodeIfPresent(String.self, forKey: .from)
        // `"value": null` is a value (add a null), not a missing one.
        value = container.contains(.value) ? try container.decode(JSONValue.self, forKey: .value) : nil
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(op, forKey: .op)
        try container.encode(path, forKey: .path)
        if let from { try container.encode(from, forKey: .from) }
        switch op {
        case .add, .replace, .test: try container.encode(value ?? .null, forKey: .value)
        case .remove, .move, .copy: break
        }
    }

    public var description: String {
        switch op {
        case .remove: return "remove \(path)"
        case .move, .copy: return "\(op.rawValue) \(from ?? "?") → \(path)"
        case .add, .replace, .test: return "\(op.rawValue) \(path) = \(value ?? .null)"
        }
    }
}

/// Why a patch did not apply; `index` is the failing operation's position in the list.
public struct JSONPatchError: Error, Hashable, Sendable, CustomStringConvertible {
    public var index: Int
    public var path: String
    public var reason: String

    public init(index: Int, path: String, reason: String) {
        self.index = index
        self.path = path
        self.reason = reason
    }

    public var description: String { "JSON patch operation \(index) at \(path): \(reason)" }
}

/// RFC 6901 JSON pointers.
public enum JSONPointer {
    /// Joins unescaped reference tokens: `path("metadata", "annotations", "linkerd.io/inject")` is
    /// `/metadata/annotations/linkerd.io~1inject`.
    public static func path(_ tokens: String...) -> String { path(tokens) }

    public static func path(_ tokens: [String]) -> String {
        tokens.map { "/" + escape($0) }.joined()
    }

    public static func escape(_ token: String) -> String {
        // Almost no token needs escaping, and the Foundation replacement costs microseconds even when it finds
        // nothing: an injection builds dozens of pointers per request.
        guard token.utf8.contains(where: { $0 == UInt8(ascii: "~") || $0 == UInt8(ascii: "/") }) else {
            return token
        }
        // Label and annotation keys (`linkerd.io/inject`) are ASCII: escape their bytes directly.
        guard token.utf8.allSatisfy({ $0 < 0x80 }) else {
            return token.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
        }
        var escaped: [UInt8] = []
        escaped.reserveCapacity(token.utf8.count + 4)
        for byte in token.utf8 {
            switch byte {
            case UInt8(ascii: "~"): escaped += [UInt8(ascii: "~"), UInt8(ascii: "0")]
            case UInt8(ascii: "/"): escaped += [UInt8(ascii: "~"), UInt8(ascii: "1")]
            default: escaped.append(byte)
            }
        }
        return String(decoding: escaped, as: UTF8.self)
    }

    /// The unescaped tokens of a pointer; `""` is the whole document.
    public static func tokens(_ pointer: String) -> [String]? {
        if pointer.isEmpty { return [] }
        guard pointer.hasPrefix("/") else { return nil }
        return pointer.dropFirst().split(separator: "/", omittingEmptySubsequences: false).map { token in
            guard token.utf8.contains(UInt8(ascii: "~")) else { return String(token) }
            return token.replacingOccurrences(of: "~1", with: "/").replacingOccurrences(of: "~0", with: "~")
        }
    }
}

/// An RFC 6902 implementation over `JSONValue`, used to check that the webhook's patch reproduces the injected pod
/// and by `apus inject` to apply the same operations to documents.
///
/// Operations edit the document in place: each container on the pointer's path is detached from its parent while
/// it changes, so it is uniquely referenced and not copied. Copying instead (as a value-returning walk does) costs
/// a copy of every dictionary and array on the path per operation, which dominated the webhook's injection time.
public enum JSONPatch {
    /// Applies `operations` in order; the first one that does not apply throws and nothing is returned.
    public static func apply(_ operations: [JSONPatchOperation], to document: JSONValue) throws(JSONPatchError)
        -> JSONValue
    {
        var current = document
        for (index, operation) in operations.enumerated() {
            guard let tokens = JSONPointer.tokens(operation.path) else {
                throw JSONPatchError(
                    index: index, path: operation.path,
                    reason: "the path is not a JSON pointer (it must start with /)")
            }
            try apply(operation, tokens: tokens, index: index, to: &current)
        }
        return current
    }

    /// Applies one operation whose path is already split into `tokens`. `add`, `remove`, `replace` and `test`
    /// leave `document` unchanged when they throw; a failing `move` may have removed its source already.
    /// - Parameter index: the operation's position, for the error.
    static func apply(
        _ operation: JSONPatchOperation, tokens: [String], index: Int, to document: inout JSONValue
    ) throws(JSONPatchError) {
        func fail(_ reason: String) -> JSONPatchError {
            JSONPatchError(index: index, path: operation.path, reason: reason)
        }
        switch operation.op {
        case .add:
            guard let value = operation.value else { throw fail("add needs a value") }
            try insert(value, at: tokens[...], in: &document, fail)
        case .remove:
            guard !tokens.isEmpty else { throw fail("cannot remove the whole document") }
            try withParent(of: tokens[...], in: &document, fail) {
                (parent: inout JSONValue, last: String) throws(JSONPatchError) in
                _ = try delete(from: &parent, at: last, fail)
            }
        case .replace:
            guard let value = operation.value else { throw fail("replace needs a value") }
            guard !tokens.isEmpty else {
                document = value
                return
            }
            try withParent(of: tokens[...], in: &document, fail) {
                (parent: inout JSONValue, last: String) throws(JSONPatchError) in
                // The member must exist; an array element is replaced at its index. Once the delete succeeded
                // the insert cannot fail: the parent is the same container with room at that index.
                _ = try delete(from: &parent, at: last, fail)
                try insert(value, into: &parent, at: last, fail)
            }
        case .test:
            guard let value = operation.value else { throw fail("test needs a value") }
            let found = try resolve(document, tokens, fail)
            guard found == value else { throw fail("test failed: found \(found), expected \(value)") }
        case .move, .copy:
            guard let fromPointer = operation.from, let fromTokens = JSONPointer.tokens(fromPointer) else {
                throw fail("\(operation.op.rawValue) needs a valid from pointer")
            }
            let value = try resolve(document, fromTokens, fail)
            if operation.op == .move {
                if tokens.count > fromTokens.count, Array(tokens.prefix(fromTokens.count)) == fromTokens {
                    throw fail("cannot move a value into itself")
                }
                guard !fromTokens.isEmpty else { throw fail("cannot move the whole document") }
                try withParent(of: fromTokens[...], in: &document, fail) {
                    (parent: inout JSONValue, last: String) throws(JSONPatchError) in
                    _ = try delete(from: &parent, at: last, fail)
                }
            }
            try insert(value, at: tokens[...], in: &document, fail)
        }
    }

    /// Adds `value` at the pointer `tokens`; an empty pointer replaces the document.
    private static func insert(
        _ value: JSONValue, at tokens: ArraySlice<String>, in document: inout JSONValue,
        _ fail: (String) -> JSONPatchError
    ) throws(JSONPatchError) {
        guard !tokens.isEmpty else {
            document = value
            return
        }
        try withParent(of: tokens, in: &document, fail) {
            (parent: inout JSONValue, last: String) throws(JSONPatchError) in
            try insert(value, into: &parent, at: last, fail)
        }
    }

    /// Runs `change` on the container holding the pointer's last token (`tokens` is not empty), in place. A
    /// container on the way is detached (its slot holds `null`) while it changes and put back afterwards, also
    /// when `change` throws.
    private static func withParent(
        of tokens: ArraySlice<String>, in document: inout JSONValue, _ fail: (String) -> JSONPatchError,
        _ change: (inout JSONValue, String) throws(JSONPatchError) -> Void
    ) throws(JSONPatchError) {
        guard let first = tokens.first else { return }
        if tokens.count == 1 {
            try change(&document, first)
            return
        }
        let rest = tokens.dropFirst()
        switch document {
        case .object(var object):
            guard object[first] != nil else { throw fail("no member \"\(first)\"") }
            document = .null
            defer { document = .object(object) }
            try withParent(of: rest, in: &object[first, default: .null], fail, change)
        case .array(var array):
            let index = try arrayIndex(first, count: array.count, allowEnd: false, fail)
            document = .null
            defer { document = .array(array) }
            try withParent(of: rest, in: &array[index], fail, change)
        default:
            throw fail("\"\(first)\" is below a value that is neither an object nor an array")
        }
    }

    private static func insert(
        _ value: JSONValue, into parent: inout JSONValue, at token: String, _ fail: (String) -> JSONPatchError
    ) throws(JSONPatchError) {
        switch parent {
        case .object(var object):
            parent = .null
            object[token] = value
            parent = .object(object)
        case .array(var array):
            let index = try arrayIndex(token, count: array.count, allowEnd: true, fail)
            parent = .null
            array.insert(value, at: index)
            parent = .array(array)
        default:
            throw fail("the parent of \"\(token)\" is neither an object nor an array")
        }
    }

    /// Removes the member or element `token` of `parent` and returns it.
    private static func delete(
        from parent: inout JSONValue, at token: String, _ fail: (String) -> JSONPatchError
    ) throws(JSONPatchError) -> JSONValue {
        switch parent {
        case .object(var object):
            guard object[token] != nil else { throw fail("no member \"\(token)\"") }
            parent = .null
            let removed = object.removeValue(forKey: token) ?? .null
            parent = .object(object)
            return removed
        case .array(var array):
            let index = try arrayIndex(token, count: array.count, allowEnd: false, fail)
            parent = .null
            let removed = array.remove(at: index)
            parent = .array(array)
            return removed
        default:
            throw fail("the parent of \"\(token)\" is neither an object nor an array")
        }
    }

    private static func resolve(
        _ document: JSONValue, _ tokens: [String], _ fail: (String) -> JSONPatchError
    ) throws(JSONPatchError) -> JSONValue {
        var current = document
        for token in tokens {
            switch current {
            case .object(let object):
                guard let child = object[token] else { throw fail("no member \"\(token)\"") }
                current = child
            case .array(let array):
                current = array[try arrayIndex(token, count: array.count, allowEnd: false, fail)]
            default:
                throw fail("\"\(token)\" is below a value that is neither an object nor an array")
            }
        }
        return current
    }

    /// RFC 6901 array indexes: decimal without leading zeros; `-` (one past the end) only where adding.
    private static func arrayIndex(
        _ token: String, count: Int, allowEnd: Bool, _ fail: (String) -> JSONPatchError
    ) throws(JSONPatchError) -> Int {
        if token == "-" {
            guard allowEnd else { throw fail("\"-\" names no existing element") }
            return count
        }
        guard let index = Int(token), index >= 0, token == String(index) else {
            throw fail("\"\(token)\" is not an array index")
        }
        guard index < count || (allowEnd && index == count) else {
            throw fail("index \(index) is out of bounds (\(count) elements)")
        }
        return index
    }
}
