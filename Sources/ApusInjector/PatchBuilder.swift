import ApusCore

/// Records every change to a document as a JSON patch operation and applies it at once, so the operations are by
/// construction the exact path from the original to the result.
struct PatchBuilder {
    private(set) var document: JSONValue
    private(set) var operations: [JSONPatchOperation] = []

    init(_ document: JSONValue) { self.document = document }

    func value(at path: [String]) -> JSONValue? {
        var current: JSONValue? = document
        for token in path {
            switch current {
            case .object(let object)?: current = object[token]
            case .array(let array)?:
                guard let index = Int(token), array.indices.contains(index) else { return nil }
                current = array[index]
            default: return nil
            }
        }
        return current
    }

    /// Applies `operation` (whose pointer is `path`) to the document in place, then records it. The tokens are
    /// passed along so the pointer just built is not parsed again. An error names the operation as index 0, the
    /// one operation applied.
    private mutating func record(_ operation: JSONPatchOperation, path: [String]) throws(JSONPatchError) {
        try JSONPatch.apply(operation, tokens: path, index: 0, to: &document)
        operations.append(operation)
    }

    mutating func add(_ path: [String], _ value: JSONValue) throws(JSONPatchError) {
        try record(.add(JSONPointer.path(path), value), path: path)
    }

    mutating func remove(_ path: [String]) throws(JSONPatchError) {
        try record(.remove(JSONPointer.path(path)), path: path)
    }

    /// Creates the object at `path` if it is missing (or `null`), so later operations can add members to it.
    mutating func ensureObject(_ path: [String]) throws(JSONPatchError) {
        if value(at: path)?.objectValue == nil { try add(path, .object([:])) }
    }

    /// Sets string entries of a map (labels, annotations): the whole map in one operation when it is missing,
    /// one operation per changed key otherwise. Keys are written in sorted order so patches are reproducible.
    mutating func setEntries(_ path: [String], _ entries: [String: String]) throws(JSONPatchError) {
        guard !entries.isEmpty else { return }
        guard let existing = value(at: path)?.objectValue else {
            try add(path, .object(entries.mapValues { .string($0) }))
            return
        }
        for key in entries.keys.sorted() where existing[key] != .string(entries[key] ?? "") {
            try add(path + [key], .string(entries[key] ?? ""))
        }
    }

    /// Puts `items` at the start of the list at `path`, in order, creating the list when missing.
    mutating func prepend(_ path: [String], _ items: [JSONValue]) throws(JSONPatchError) {
        guard !items.isEmpty else { return }
        guard value(at: path)?.arrayValue != nil else {
            try add(path, .array(items))
            return
        }
        for (offset, item) in items.enumerated() {
            try add(path + [String(offset)], item)
        }
    }

    /// Appends `items` to the list at `path`, creating the list when missing.
    mutating func append(_ path: [String], _ items: [JSONValue]) throws(JSONPatchError) {
        guard !items.isEmpty else { return }
        guard value(at: path)?.arrayValue != nil else {
            try add(path, .array(items))
            return
        }
        for item in items { try add(path + ["-"], item) }
    }

    /// Removes the list elements matching `predicate` (from the end, so indexes stay valid), and the list itself
    /// when nothing is left in it. Returns how many were removed.
    @discardableResult
    mutating func removeElements(_ path: [String], where predicate: (JSONValue) -> Bool) throws(JSONPatchError)
        -> Int
    {
        guard let list = value(at: path)?.arrayValue else { return 0 }
        let doomed = list.indices.filter { predicate(list[$0]) }
        guard !doomed.isEmpty else { return 0 }
        if doomed.count == list.count {
            try remove(path)
        } else {
            for index in doomed.reversed() { try remove(path + [String(index)]) }
        }
        return doomed.count
    }

    /// Removes map keys matching `predicate`, and the map when it ends up empty.
    @discardableResult
    mutating func removeEntries(_ path: [String], where predicate: (String, JSONValue) -> Bool)
        throws(JSONPatchError) -> Int
    {
        guard let map = value(at: path)?.objectValue else { return 0 }
        let doomed = map.filter { predicate($0.key, $0.value) }.keys.sorted()
        guard !doomed.isEmpty else { return 0 }
        if doomed.count == map.count {
            try remove(path)
        } else {
            for key in doomed { try remove(path + [key]) }
        }
        return doomed.count
    }
}
