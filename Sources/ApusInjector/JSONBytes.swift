import ApusCore

/// A byte-level JSON reader and writer for ``JSONValue``, for the admission webhook's hot path.
///
/// Foundation's `JSONDecoder` reads a `JSONValue` through `Codable` by trying each type in turn, and every failed
/// try builds an error: reading one AdmissionReview cost about as much as the whole injection. This reader walks
/// the bytes once. It is deliberately strict: it accepts only RFC 8259 JSON with valid UTF-8, unique object keys,
/// finite numbers and at most ``maximumDepth`` levels of nesting, and throws on anything else, so a caller can fall
/// back to Foundation for the exact error message it has always given for bad input.
///
/// The writer produces compact JSON with object keys sorted (deterministic output), integers without a fraction
/// (as `JSONValue`'s `Encodable` conformance writes them) and `/` unescaped.
public enum JSONBytes {
    /// Nesting beyond this is refused (Foundation's limit is the same), which also bounds the reader's recursion.
    public static let maximumDepth = 512

    /// Why bytes are not (strict) JSON; `offset` is where reading stopped.
    public struct SyntaxError: Error, Hashable, Sendable, CustomStringConvertible {
        public var offset: Int
        public var reason: String

        public var description: String { "invalid JSON at byte \(offset): \(reason)" }
    }

    /// A value JSON cannot represent.
    public struct WriteError: Error, Hashable, Sendable, CustomStringConvertible {
        public var reason: String

        public var description: String { "cannot write JSON: \(reason)" }
    }

    /// Parses one JSON document (whitespace around it is allowed).
    public static func parse(_ bytes: [UInt8]) throws(SyntaxError) -> JSONValue {
        let result: Result<JSONValue, SyntaxError> = bytes.withUnsafeBufferPointer { buffer in
            var reader = Reader(bytes: buffer)
            do throws(SyntaxError) {
                reader.skipWhitespace()
                let value = try reader.value(depth: 0)
                reader.skipWhitespace()
                guard reader.offset == buffer.count else { throw reader.error("unexpected bytes after the value") }
                return .success(value)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Appends `value` as compact JSON.
    /// - Throws: ``WriteError`` for a NaN or infinite number.
    public static func write(_ value: JSONValue, into output: inout [UInt8]) throws(WriteError) {
        switch value {
        case .null: output.append(contentsOf: "null".utf8)
        case .bool(let flag): output.append(contentsOf: (flag ? "true" : "false").utf8)
        case .number(let number): try writeNumber(number, into: &output)
        case .string(let text): writeString(text, into: &output)
        case .array(let elements):
            output.append(UInt8(ascii: "["))
            for (index, element) in elements.enumerated() {
                if index > 0 { output.append(UInt8(ascii: ",")) }
                try write(element, into: &output)
            }
            output.append(UInt8(ascii: "]"))
        case .object(let members):
            output.append(UInt8(ascii: "{"))
            for (index, key) in members.keys.sorted().enumerated() {
                if index > 0 { output.append(UInt8(ascii: ",")) }
                writeString(key, into: &output)
                output.append(UInt8(ascii: ":"))
                try write(members[key] ?? .null, into: &output)
            }
            output.append(UInt8(ascii: "}"))
        }
    }

    /// The RFC 6902 document for `operations`: each operation with the members its `op` needs, as
    /// ``JSONPatchOperation``'s `Encodable` conformance writes them.
    public static func encode(_ operations: [JSONPatchOperation]) throws(WriteError) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(operations.count * 256)
        output.append(UInt8(ascii: "["))
        for (index, operation) in operations.enumerated() {
            if index > 0 { output.append(UInt8(ascii: ",")) }
            output.append(contentsOf: #"{"op":"#.utf8)
            writeString(operation.op.rawValue, into: &output)
            output.append(contentsOf: #","path":"#.utf8)
            writeString(operation.path, into: &output)
            if let from = operation.from {
                output.append(contentsOf: #","from":"#.utf8)
                writeString(from, into: &output)
            }
            switch operation.op {
            case .add, .replace, .test:
                output.append(contentsOf: #","value":"#.utf8)
                try write(operation.value ?? .null, into: &output)
            case .remove, .move, .copy:
                break
            }
            output.append(UInt8(ascii: "}"))
        }
        output.append(UInt8(ascii: "]"))
        return output
    }

    /// Integral values within ±9e15 as integers (exact in a Double), anything else in Swift's shortest form.
    private static func writeNumber(_ number: Double, into output: inout [UInt8]) throws(WriteError) {
        guard number.isFinite else { throw WriteError(reason: "the number \(number) is not finite") }
        if number.rounded() == number, abs(number) < 9.0e15 {
            output.append(contentsOf: String(Int64(number)).utf8)
        } else {
            output.append(contentsOf: number.description.utf8)
        }
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Appends `text` as a JSON string: `"`, `\` and control characters escaped, everything else (`/` and
    /// non-ASCII included) as its UTF-8 bytes. Runs without escapes are copied in bulk: the patch carries the
    /// trust anchors and the response its base64, kilobytes per review.
    public static func writeString(_ text: String, into output: inout [UInt8]) {
        output.append(UInt8(ascii: "\""))
        let copied: Void? = text.utf8.withContiguousStorageIfAvailable { bytes in
            var runStart = 0
            for index in 0..<bytes.count {
                let byte = bytes[index]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                output.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<index]))
                writeEscaped(byte, into: &output)
                runStart = index + 1
            }
            output.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<bytes.count]))
        }
        if copied == nil {
            for byte in text.utf8 {
                if byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
                    writeEscaped(byte, into: &output)
                } else {
                    output.append(byte)
                }
            }
        }
        output.append(UInt8(ascii: "\""))
    }

    private static func writeEscaped(_ byte: UInt8, into output: inout [UInt8]) {
        switch byte {
        case UInt8(ascii: "\""): output.append(contentsOf: #"\""#.utf8)
        case UInt8(ascii: "\\"): output.append(contentsOf: #"\\"#.utf8)
        case 0x0A: output.append(contentsOf: #"\n"#.utf8)
        case 0x0D: output.append(contentsOf: #"\r"#.utf8)
        case 0x09: output.append(contentsOf: #"\t"#.utf8)
        case 0x08: output.append(contentsOf: #"\b"#.utf8)
        case 0x0C: output.append(contentsOf: #"\f"#.utf8)
        default:
            output.append(contentsOf: #"\u00"#.utf8)
            output.append(hexDigits[Int(byte >> 4)])
            output.append(hexDigits[Int(byte & 0x0F)])
        }
    }
}

extension JSONBytes {
    /// A cursor over the input; every read is bounds-checked against `bytes.count`.
    fileprivate struct Reader {
        let bytes: UnsafeBufferPointer<UInt8>
        var offset = 0

        init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        func error(_ reason: String) -> SyntaxError { SyntaxError(offset: offset, reason: reason) }

        var current: UInt8? { offset < bytes.count ? bytes[offset] : nil }

        mutating func skipWhitespace() {
            while let byte = current, byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 { offset += 1 }
        }

        mutating func value(depth: Int) throws(SyntaxError) -> JSONValue {
            guard let byte = current else { throw error("unexpected end of input") }
            switch byte {
            case UInt8(ascii: "{"): return try object(depth: depth + 1)
            case UInt8(ascii: "["): return try array(depth: depth + 1)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"):
                try literal("true")
                return .bool(true)
            case UInt8(ascii: "f"):
                try literal("false")
                return .bool(false)
            case UInt8(ascii: "n"):
                try literal("null")
                return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                return .number(try number())
            default:
                throw error("unexpected character")
            }
        }

        mutating func literal(_ word: StaticString) throws(SyntaxError) {
            let count = word.utf8CodeUnitCount
            guard bytes.count - offset >= count else { throw error("unexpected end of input") }
            let expected = UnsafeBufferPointer(start: word.utf8Start, count: count)
            for index in 0..<count where bytes[offset + index] != expected[index] {
                throw error("unknown literal")
            }
            offset += count
        }

        mutating func object(depth: Int) throws(SyntaxError) -> JSONValue {
            guard depth <= JSONBytes.maximumDepth else { throw error("nested too deeply") }
            offset += 1  // {
            var members: [String: JSONValue] = [:]
            skipWhitespace()
            if current == UInt8(ascii: "}") {
                offset += 1
                return .object(members)
            }
            while true {
                guard current == UInt8(ascii: "\"") else { throw error("expected a member name") }
                let keyOffset = offset
                let key = try string()
                skipWhitespace()
                guard current == UInt8(ascii: ":") else { throw error("expected ':'") }
                offset += 1
                skipWhitespace()
                let member = try value(depth: depth)
                guard members.updateValue(member, forKey: key) == nil else {
                    throw SyntaxError(offset: keyOffset, reason: "duplicate member name")
                }
                skipWhitespace()
                switch current {
                case UInt8(ascii: ",")?:
                    offset += 1
                    skipWhitespace()
                case UInt8(ascii: "}")?:
                    offset += 1
                    return .object(members)
                default:
                    throw error("expected ',' or '}'")
                }
            }
        }

        mutating func array(depth: Int) throws(SyntaxError) -> JSONValue {
            guard depth <= JSONBytes.maximumDepth else { throw error("nested too deeply") }
            offset += 1  // [
            var elements: [JSONValue] = []
            skipWhitespace()
            if current == UInt8(ascii: "]") {
                offset += 1
                return .array(elements)
            }
            while true {
                elements.append(try value(depth: depth))
                skipWhitespace()
                switch current {
                case UInt8(ascii: ",")?:
                    offset += 1
                    skipWhitespace()
                case UInt8(ascii: "]")?:
                    offset += 1
                    return .array(elements)
                default:
                    throw error("expected ',' or ']'")
                }
            }
        }

        /// A string starting at the opening quote; unescaped runs are copied as they are (after UTF-8 validation).
        mutating func string() throws(SyntaxError) -> String {
            offset += 1  // "
            let start = offset
            var needsValidation = false
            while let byte = current {
                if byte == UInt8(ascii: "\"") {
                    let run = UnsafeBufferPointer(rebasing: bytes[start..<offset])
                    offset += 1
                    if needsValidation, !Self.isValidUTF8(run) { throw error("invalid UTF-8 in a string") }
                    return String(decoding: run, as: UTF8.self)
                }
                if byte == UInt8(ascii: "\\") { break }
                if byte < 0x20 { throw error("unescaped control character in a string") }
                if byte >= 0x80 { needsValidation = true }
                offset += 1
            }
            guard current != nil else { throw error("unterminated string") }
            // Escapes: build the bytes, then validate once.
            var text = Array(UnsafeBufferPointer(rebasing: bytes[start..<offset]))
            while let byte = current {
                switch byte {
                case UInt8(ascii: "\""):
                    offset += 1
                    guard Self.isValidUTF8(text) else { throw error("invalid UTF-8 in a string") }
                    return String(decoding: text, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    offset += 1
                    guard let escaped = current else { throw error("unterminated string") }
                    offset += 1
                    switch escaped {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): text.append(escaped)
                    case UInt8(ascii: "b"): text.append(0x08)
                    case UInt8(ascii: "f"): text.append(0x0C)
                    case UInt8(ascii: "n"): text.append(0x0A)
                    case UInt8(ascii: "r"): text.append(0x0D)
                    case UInt8(ascii: "t"): text.append(0x09)
                    case UInt8(ascii: "u"): try unicodeEscape(into: &text)
                    default: throw error("invalid escape")
                    }
                case 0..<0x20:
                    throw error("unescaped control character in a string")
                default:
                    text.append(byte)
                    offset += 1
                }
            }
            throw error("unterminated string")
        }

        /// `\uXXXX` (the `\u` already read), with a surrogate pair as two escapes; a lone surrogate is refused.
        mutating func unicodeEscape(into text: inout [UInt8]) throws(SyntaxError) {
            var scalarValue = try hex4()
            if (0xD800..<0xDC00).contains(scalarValue) {
                guard bytes.count - offset >= 2, bytes[offset] == UInt8(ascii: "\\"),
                    bytes[offset + 1] == UInt8(ascii: "u")
                else { throw error("unpaired surrogate") }
                offset += 2
                let low = try hex4()
                guard (0xDC00..<0xE000).contains(low) else { throw error("unpaired surrogate") }
                scalarValue = 0x10000 + ((scalarValue - 0xD800) << 10) + (low - 0xDC00)
            }
            guard let scalar = Unicode.Scalar(scalarValue) else { throw error("unpaired surrogate") }
            UTF8.encode(scalar) { text.append($0) }
        }

        mutating func hex4() throws(SyntaxError) -> UInt32 {
            guard bytes.count - offset >= 4 else { throw error("unterminated \\u escape") }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let byte = bytes[offset]
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: throw error("invalid \\u escape")
                }
                value = value << 4 | UInt32(digit)
                offset += 1
            }
            return value
        }

        /// RFC 8259 numbers only (no leading zeros, `+`, `.5` or hex); out-of-range values are refused.
        mutating func number() throws(SyntaxError) -> Double {
            let start = offset
            var integral = true
            if current == UInt8(ascii: "-") { offset += 1 }
            guard let first = current, Self.isDigit(first) else { throw error("expected a digit") }
            offset += 1
            if first != UInt8(ascii: "0") { skipDigits() }
            if current == UInt8(ascii: ".") {
                integral = false
                offset += 1
                guard let digit = current, Self.isDigit(digit) else { throw error("expected a digit") }
                skipDigits()
            }
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                integral = false
                offset += 1
                if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { offset += 1 }
                guard let digit = current, Self.isDigit(digit) else { throw error("expected a digit") }
                skipDigits()
            }
            let text = UnsafeBufferPointer(rebasing: bytes[start..<offset])
            // Integers of up to 18 digits fit an Int64, and converting that rounds exactly as parsing the text
            // would: the common case (ports, counts) needs no string.
            if integral, text.count <= 18 {
                var magnitude: Int64 = 0
                for byte in text where byte != UInt8(ascii: "-") {
                    magnitude = magnitude * 10 + Int64(byte - UInt8(ascii: "0"))
                }
                guard text.first == UInt8(ascii: "-") else { return Double(magnitude) }
                return magnitude == 0 ? -0.0 : Double(-magnitude)
            }
            guard let value = Double(String(decoding: text, as: UTF8.self)), value.isFinite else {
                throw SyntaxError(offset: start, reason: "number out of range")
            }
            return value
        }

        mutating func skipDigits() {
            while let byte = current, Self.isDigit(byte) { offset += 1 }
        }

        static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

        static func isValidUTF8(_ bytes: some Collection<UInt8>) -> Bool {
            var iterator = bytes.makeIterator()
            var parser = Unicode.UTF8.ForwardParser()
            while true {
                switch parser.parseScalar(from: &iterator) {
                case .valid: continue
                case .emptyInput: return true
                case .error: return false
                }
            }
        }
    }
}
