/// A compiled regular expression in Go/RE2 syntax, matched against a whole string in linear time.
///
/// ServiceProfile `pathRegex` and Gateway API `RegularExpression` matches are written for Go's `regexp`
/// (Linkerd's validator) and Rust's `regex` crate (Linkerd's proxy); both implement RE2 syntax. Apus ships its
/// own small RE2-syntax engine instead of `NSRegularExpression` or Swift `Regex` because:
/// - **Same accepted language.** Lookaround and backreferences are rejected, as Linkerd's validator rejects them,
///   so a profile Apus accepts is one Linkerd accepts too. `\d`, `\w`, `\s` and `\b` are ASCII-only as in RE2
///   (ICU and Swift `Regex` treat them as Unicode classes, so `/books/\d+` would accept Arabic-Indic digits).
/// - **Linear time.** A Pike-VM simulation (no backtracking) costs O(pattern × path) even for patterns like
///   `(a*)*b`, so a hostile profile cannot stall the proxy on a crafted path.
/// - **Hot path without Foundation.** Matching walks the string's UTF-8 and Unicode scalars directly; there is no
///   bridging to `NSString`/UTF-16. Most patterns never reach the VM: compilation finds the literal prefix every
///   match starts with, and `prefix` + `class*`/`class+` patterns (`/api/.*`, `/books/[0-9]+`) are decided by one
///   class test per scalar (see `Program.Shortcut`).
///
/// Patterns are compiled once (in ``ServiceProfile/compile()`` or HTTPRoute compilation) and the
/// value is then shared freely across threads.
///
/// ```swift
/// let regex = try RouteRegex("/books/\\d+")
/// regex.matchesWhole("/books/42")      // true
/// regex.matchesWhole("/books/42/x")    // false: the whole path must match
/// ```
public struct RouteRegex: Sendable, Hashable, CustomStringConvertible {
    /// The pattern as written.
    public let pattern: String
    private let program: Program

    /// Compiles `pattern`; throws when it is not valid RE2 syntax or uses a feature RE2 lacks.
    public init(_ pattern: String) throws(RouteRegexError) {
        var parser = RegexParser(pattern: pattern)
        let node = try parser.parseAll()
        self.pattern = pattern
        self.program = try Program(compiling: node, pattern: pattern)
    }

    /// Whether the entire `text` matches, as if the pattern were written `^(?:pattern)$`.
    ///
    /// Full-match semantics mirror Linkerd, which anchors profile path regexes at both ends, and keep a top-level
    /// alternation such as `/a|/b` from matching `/a/anything`.
    public func matchesWhole(_ text: some StringProtocol) -> Bool {
        program.matchesWhole(text)
    }

    /// ``matchesWhole(_:)`` by the NFA alone, without the compile-time shortcuts; tests compare the two.
    func matchesWholeBySimulation(_ text: some StringProtocol) -> Bool {
        program.simulate(text.unicodeScalars)
    }

    public var description: String { pattern }

    public static func == (lhs: RouteRegex, rhs: RouteRegex) -> Bool { lhs.pattern == rhs.pattern }

    public func hash(into hasher: inout Hasher) { hasher.combine(pattern) }
}

/// A pattern that is not valid RE2 syntax; ``description`` quotes the pattern and names the problem.
public struct RouteRegexError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The pattern that failed to compile.
    public let pattern: String
    /// What is wrong, in the words of Go's `regexp/syntax` where one applies (e.g. `missing closing )`).
    public let message: String

    public var description: String { "invalid regular expression '\(pattern)': \(message)" }
}

// MARK: - Syntax tree

/// Zero-width assertions RE2 supports.
enum RegexAssertion: Hashable, Sendable {
    case beginText, endText, beginLine, endLine, wordBoundary, notWordBoundary

    func holds(previous: Unicode.Scalar?, next: Unicode.Scalar?) -> Bool {
        switch self {
        case .beginText: return previous == nil
        case .endText: return next == nil
        case .beginLine: return previous == nil || previous == "\n"
        case .endLine: return next == nil || next == "\n"
        case .wordBoundary: return Self.isWord(previous) != Self.isWord(next)
        case .notWordBoundary: return Self.isWord(previous) == Self.isWord(next)
        }
    }

    private static func isWord(_ scalar: Unicode.Scalar?) -> Bool {
        guard let value = scalar?.value else { return false }
        return (value >= 0x30 && value <= 0x39) || (value >= 0x41 && value <= 0x5A) || (value >= 0x61 && value <= 0x7A)
            || value == 0x5F
    }
}

/// A set of Unicode scalars: explicit ranges plus Unicode general categories, optionally negated.
struct ScalarClass: Hashable, Sendable {
    var ranges: [ClosedRange<UInt32>] = []
    /// `\p{..}` items; each may itself be negated (`\P{..}` inside a class).
    var categories: [CategoryItem] = []
    var negated = false
    /// Membership of ASCII scalars, precomputed so path matching rarely leaves two bit tests.
    private(set) var asciiLow: UInt64 = 0
    private(set) var asciiHigh: UInt64 = 0

    struct CategoryItem: Hashable, Sendable {
        var categories: [Unicode.GeneralCategory]
        var negated: Bool

        func contains(_ scalar: Unicode.Scalar) -> Bool {
            categories.contains(scalar.properties.generalCategory) != negated
        }
    }

    static let maxScalar: UInt32 = 0x10FFFF

    /// Sorts and merges ranges and fills the ASCII bitmap; call once after building.
    mutating func finish() {
        let sorted = ranges.sorted { $0.lowerBound < $1.lowerBound }
        var merged: [ClosedRange<UInt32>] = []
        for range in sorted {
            if let last = merged.last, range.lowerBound <= last.upperBound &+ 1 {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        ranges = merged
        asciiLow = 0
        asciiHigh = 0
        for value in UInt32(0)..<128 where slowContains(value) {
            if value < 64 { asciiLow |= 1 << UInt64(value) } else { asciiHigh |= 1 << UInt64(value - 64) }
        }
    }

    /// Adds the complement of the current ranges (used for `\D`, `\W`, `\S`, `[^..]` nested items).
    static func complement(of ranges: [ClosedRange<UInt32>]) -> [ClosedRange<UInt32>] {
        var result: [ClosedRange<UInt32>] = []
        var next: UInt32 = 0
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if range.lowerBound > next { result.append(next...(range.lowerBound - 1)) }
            next = max(next, range.upperBound &+ 1)
            if range.upperBound == maxScalar { return result }
        }
        if next <= maxScalar { result.append(next...maxScalar) }
        return result
    }

    /// Adds simple case variants of letters (what `(?i)` needs for paths and header values).
    mutating func addCaseVariants() {
        var extra: [ClosedRange<UInt32>] = []
        for range in ranges {
            // Wide non-ASCII ranges already cover most variants; folding them scalar by scalar is not worth it.
            let upper = range.upperBound - range.lowerBound > 512 ? min(range.upperBound, 0x24F) : range.upperBound
            guard range.lowerBound <= upper else { continue }
            for value in range.lowerBound...upper {
                guard let scalar = Unicode.Scalar(value) else { continue }
                for variant in [scalar.properties.lowercaseMapping, scalar.properties.uppercaseMapping] {
                    let scalars = variant.unicodeScalars
                    if scalars.count == 1, let only = scalars.first, only.value != value {
                        extra.append(only.value...only.value)
                    }
                }
            }
        }
        ranges += extra
    }

    private func slowContains(_ value: UInt32) -> Bool {
        var found = rangesContain(value)
        if !found, !categories.isEmpty, let scalar = Unicode.Scalar(value) {
            found = categories.contains { $0.contains(scalar) }
        }
        return found != negated
    }

    private func rangesContain(_ value: UInt32) -> Bool {
        var low = 0
        var high = ranges.count - 1
        while low <= high {
            let middle = (low + high) / 2
            let range = ranges[middle]
            if value < range.lowerBound {
                high = middle - 1
            } else if value > range.upperBound {
                low = middle + 1
            } else {
                return true
            }
        }
        return false
    }

    @inline(__always)
    func contains(_ scalar: Unicode.Scalar) -> Bool {
        let value = scalar.value
        if value < 64 { return asciiLow & (1 << UInt64(value)) != 0 }
        if value < 128 { return asciiHigh & (1 << UInt64(value - 64)) != 0 }
        return slowContains(value)
    }
}

indirect enum RegexNode: Sendable {
    case empty
    case scalars(ScalarClass)
    case concat([RegexNode])
    case alternate([RegexNode])
    case repetition(RegexNode, min: Int, max: Int?)
    case assertion(RegexAssertion)
}

// MARK: - Parser (Go regexp/syntax, Perl flags)

struct RegexParser {
    private struct Flags {
        var caseInsensitive = false
        var multiLine = false
        var dotAll = false
    }

    private let pattern: String
    private let scalars: [Unicode.Scalar]
    private var index = 0
    private var flags = Flags()
    private var depth = 0

    /// Go's limit on `{n,m}` counts.
    static let maxRepeat = 1000

    init(pattern: String) {
        self.pattern = pattern
        self.scalars = Array(pattern.unicodeScalars)
    }

    mutating func parseAll() throws(RouteRegexError) -> RegexNode {
        let node = try parseAlternation()
        if index < scalars.count {
            // Only an unmatched ')' stops the top-level alternation early.
            throw error("unexpected ): '\(pattern)'")
        }
        return node
    }

    private func error(_ message: String) -> RouteRegexError {
        RouteRegexError(pattern: pattern, message: message)
    }

    private var atEnd: Bool { index >= scalars.count }
    private var current: Unicode.Scalar? { index < scalars.count ? scalars[index] : nil }
    private func peek(_ offset: Int) -> Unicode.Scalar? {
        index + offset < scalars.count ? scalars[index + offset] : nil
    }

    private mutating func parseAlternation() throws(RouteRegexError) -> RegexNode {
        var branches: [RegexNode] = [try parseConcatenation()]
        while current == "|" {
            index += 1
            branches.append(try parseConcatenation())
        }
        return branches.count == 1 ? branches[0] : .alternate(branches)
    }

    private mutating func parseConcatenation() throws(RouteRegexError) -> RegexNode {
        var items: [RegexNode] = []
        var lastWasRepetition = false
        while let scalar = current, scalar != "|", scalar != ")" {
            if let repetition = try parseRepetitionOperator() {
                guard let operand = items.popLast() else {
                    throw error("missing argument to repetition operator: `\(repetition.text)`")
                }
                if lastWasRepetition {
                    throw error("invalid nested repetition operator: `\(repetition.text)`")
                }
                items.append(.repetition(operand, min: repetition.min, max: repetition.max))
                lastWasRepetition = true
                continue
            }
            lastWasRepetition = false
            if let atom = try parseAtom() { items.append(atom) }
        }
        items.removeAll { if case .empty = $0 { return true } else { return false } }
        if items.isEmpty { return .empty }
        return items.count == 1 ? items[0] : .concat(items)
    }

    /// Parses `*`, `+`, `?`, `{n}`, `{n,}`, `{n,m}` and an optional lazy `?` (irrelevant to a yes/no match).
    private mutating func parseRepetitionOperator() throws(RouteRegexError)
        -> (min: Int, max: Int?, text: String)?
    {
        guard let scalar = current else { return nil }
        let start = index
        var result: (min: Int, max: Int?)
        switch scalar {
        case "*":
            result = (0, nil)
            index += 1
        case "+":
            result = (1, nil)
            index += 1
        case "?":
            result = (0, 1)
            index += 1
        case "{":
            // `{` that does not form a valid counted repetition is a literal, as in Go.
            guard let counted = try parseCountedRepetition() else { return nil }
            result = counted
        default:
            return nil
        }
        if current == "?" { index += 1 }
        let text = String(String.UnicodeScalarView(scalars[start..<index]))
        return (result.min, result.max, text)
    }

    private mutating func parseCountedRepetition() throws(RouteRegexError) -> (min: Int, max: Int?)? {
        var cursor = index + 1
        func number() -> Int? {
            var value: Int?
            while cursor < scalars.count, (48...57).contains(scalars[cursor].value) {
                value = min((value ?? 0) * 10 + Int(scalars[cursor].value - 48), 100_000)
                cursor += 1
            }
            return value
        }
        guard let low = number() else { return nil }
        var high: Int? = low
        if cursor < scalars.count, scalars[cursor] == "," {
            cursor += 1
            high = number()
        }
        guard cursor < scalars.count, scalars[cursor] == "}" else { return nil }
        let text = String(String.UnicodeScalarView(scalars[index...cursor]))
        if low > Self.maxRepeat || (high ?? 0) > Self.maxRepeat || (high.map { $0 < low } ?? false) {
            throw error("invalid repeat count: `\(text)`")
        }
        index = cursor + 1
        return (low, high)
    }

    private mutating func parseAtom() throws(RouteRegexError) -> RegexNode? {
        guard let scalar = current else { return nil }
        switch scalar {
        case "(":
            return try parseGroup()
        case "[":
            return .scalars(try parseBracketClass())
        case ".":
            index += 1
            var any = ScalarClass()
            any.ranges = flags.dotAll ? [0...ScalarClass.maxScalar] : [0...9, 11...ScalarClass.maxScalar]
            any.finish()
            return .scalars(any)
        case "^":
            index += 1
            return .assertion(flags.multiLine ? .beginLine : .beginText)
        case "$":
            index += 1
            return .assertion(flags.multiLine ? .endLine : .endText)
        case "\\":
            return try parseEscapeAtom()
        default:
            index += 1
            return .scalars(literalClass(scalar))
        }
    }

    private func literalClass(_ scalar: Unicode.Scalar) -> ScalarClass {
        var set = ScalarClass(ranges: [scalar.value...scalar.value])
        if flags.caseInsensitive { set.addCaseVariants() }
        set.finish()
        return set
    }

    /// Returns nil for a flag-only group such as `(?i)`, which changes flags but matches nothing itself.
    private mutating func parseGroup() throws(RouteRegexError) -> RegexNode? {
        index += 1  // (
        depth += 1
        defer { depth -= 1 }
        if depth > 1000 { throw error("expression nests too deeply") }
        let savedFlags = flags
        if current == "?" {
            index += 1
            switch current {
            case "=", "!":
                throw error("lookahead `(?\(current.map(String.init) ?? ""))` is not supported (RE2 syntax)")
            case "P", "<":
                if current == "P", peek(1) == "=" {
                    throw error("backreferences are not supported (RE2 syntax)")
                }
                if current == "<", peek(1) == "=" || peek(1) == "!" {
                    throw error("lookbehind is not supported (RE2 syntax)")
                }
                if current == "P" { index += 1 }
                guard current == "<" else { throw error("invalid named capture: `\(pattern)`") }
                index += 1
                let nameStart = index
                while let c = current, c != ">" {
                    guard c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "_" else {
                        throw error("invalid named capture: `\(pattern)`")
                    }
                    index += 1
                }
                guard current == ">", index > nameStart else { throw error("invalid named capture: `\(pattern)`") }
                index += 1
            default:
                // Flags: (?flags) applies to the rest of the enclosing group; (?flags:re) to `re` only.
                var negate = false
                var sawFlag = false
                while true {
                    guard let c = current else { throw error("missing closing ): '\(pattern)'") }
                    index += 1
                    switch c {
                    case "i":
                        flags.caseInsensitive = !negate
                        sawFlag = true
                    case "m":
                        flags.multiLine = !negate
                        sawFlag = true
                    case "s":
                        flags.dotAll = !negate
                        sawFlag = true
                    case "U": sawFlag = true  // ungreedy changes captures only, not whether a match exists
                    case "-":
                        if negate { throw error("invalid or unsupported Perl syntax: `(?\(c)`") }
                        negate = true
                        sawFlag = false
                    case ")":
                        guard sawFlag else { throw error("invalid or unsupported Perl syntax: `(?\(c)`") }
                        return nil  // flags stay in effect for the enclosing group
                    case ":":
                        if negate, !sawFlag { throw error("invalid or unsupported Perl syntax: `(?-:`") }
                        let inner = try parseAlternation()
                        guard current == ")" else { throw error("missing closing ): '\(pattern)'") }
                        index += 1
                        flags = savedFlags
                        return inner
                    default:
                        throw error("invalid or unsupported Perl syntax: `(?\(c)`")
                    }
                }
            }
        }
        let inner = try parseAlternation()
        guard current == ")" else { throw error("missing closing ): '\(pattern)'") }
        index += 1
        flags = savedFlags
        return inner
    }

    private mutating func parseEscapeAtom() throws(RouteRegexError) -> RegexNode {
        guard let next = peek(1) else { throw error("trailing backslash at end of expression") }
        switch next {
        case "A":
            index += 2
            return .assertion(.beginText)
        case "z":
            index += 2
            return .assertion(.endText)
        case "b":
            index += 2
            return .assertion(.wordBoundary)
        case "B":
            index += 2
            return .assertion(.notWordBoundary)
        case "Q":
            index += 2
            var items: [RegexNode] = []
            while let c = current {
                if c == "\\", peek(1) == "E" {
                    index += 2
                    break
                }
                items.append(.scalars(literalClass(c)))
                index += 1
            }
            return items.isEmpty ? .empty : .concat(items)
        default:
            var set = ScalarClass()
            try parseEscape(into: &set)
            set.finish()
            return .scalars(set)
        }
    }

    /// Parses one escape (at `\`) that denotes scalars, adding them to `set` (case variants included).
    private mutating func parseEscape(into set: inout ScalarClass) throws(RouteRegexError) {
        index += 1  // backslash
        guard let c = current else { throw error("trailing backslash at end of expression") }
        index += 1
        func single(_ value: UInt32) {
            var literal = ScalarClass(ranges: [value...value])
            if flags.caseInsensitive { literal.addCaseVariants() }
            set.ranges += literal.ranges
        }
        switch c {
        case "d": set.ranges += Self.digit
        case "D": set.ranges += ScalarClass.complement(of: Self.digit)
        case "w": set.ranges += Self.word
        case "W": set.ranges += ScalarClass.complement(of: Self.word)
        case "s": set.ranges += Self.space
        case "S": set.ranges += ScalarClass.complement(of: Self.space)
        case "p", "P": set.categories.append(try parseUnicodeClass(negated: c == "P"))
        case "a": single(7)
        case "f": single(12)
        case "t": single(9)
        case "n": single(10)
        case "r": single(13)
        case "v": single(11)
        case "x": single(try parseHexEscape())
        case "0"..."7":
            // Go allows octal only as \0 or \0nn-style sequences after a leading zero; \1..\9 are backreferences.
            guard c == "0" else { throw error("backreferences are not supported (RE2 syntax): `\\\(c)`") }
            var value: UInt32 = 0
            var count = 0
            while count < 2, let d = current, ("0"..."7").contains(d) {
                value = value * 8 + (d.value - 48)
                index += 1
                count += 1
            }
            single(value)
        case "8", "9": throw error("backreferences are not supported (RE2 syntax): `\\\(c)`")
        default:
            // Any ASCII punctuation may be escaped; escaping a letter or digit that has no meaning is an error.
            if c.isASCII, !c.properties.isAlphabetic, !("0"..."9").contains(c) {
                single(c.value)
            } else {
                throw error("invalid escape sequence: `\\\(c)`")
            }
        }
    }

    private mutating func parseHexEscape() throws(RouteRegexError) -> UInt32 {
        func hex(_ scalar: Unicode.Scalar?) -> UInt32? {
            guard let scalar, scalar.isASCII, let value = UInt32(String(scalar), radix: 16) else { return nil }
            return value
        }
        if current == "{" {
            index += 1
            var value: UInt32 = 0
            var count = 0
            while let digit = hex(current) {
                value = value * 16 + digit
                count += 1
                index += 1
                if value > ScalarClass.maxScalar { throw error("invalid escape sequence: `\\x{...}` out of range") }
            }
            guard current == "}", count > 0 else { throw error("invalid escape sequence: `\\x{`") }
            index += 1
            return value
        }
        guard let high = hex(current), let low = hex(peek(1)) else { throw error("invalid escape sequence: `\\x`") }
        index += 2
        return high * 16 + low
    }

    private mutating func parseUnicodeClass(negated: Bool) throws(RouteRegexError) -> ScalarClass.CategoryItem {
        var name: String
        if current == "{" {
            index += 1
            let start = index
            while let c = current, c != "}" { index += 1 }
            guard current == "}" else { throw error("invalid character class range: missing }") }
            name = String(String.UnicodeScalarView(scalars[start..<index]))
            index += 1
        } else {
            guard let c = current else { throw error("invalid character class range: `\\p`") }
            name = String(c)
            index += 1
        }
        var negate = negated
        if name.hasPrefix("^") {
            negate.toggle()
            name.removeFirst()
        }
        guard let categories = Self.generalCategories[name] else {
            throw error("invalid or unsupported character class range: `\\p{\(name)}`")
        }
        return ScalarClass.CategoryItem(categories: categories, negated: negate)
    }

    private mutating func parseBracketClass() throws(RouteRegexError) -> ScalarClass {
        index += 1  // [
        var set = ScalarClass()
        if current == "^" {
            set.negated = true
            index += 1
        }
        var first = true
        while true {
            guard let c = current else { throw error("missing closing ]: `\(pattern)`") }
            if c == "]", !first {
                index += 1
                break
            }
            first = false
            if c == "[", peek(1) == ":" {
                try parsePosixClass(into: &set)
                continue
            }
            if c == "\\", let next = peek(1), "dDwWsSpP".unicodeScalars.contains(next) {
                var nested = ScalarClass()
                try parseEscape(into: &nested)
                set.ranges += nested.ranges
                set.categories += nested.categories
                continue
            }
            let low = try parseClassScalar()
            var high = low
            if current == "-", let after = peek(1), after != "]" {
                index += 1
                high = try parseClassScalar()
                guard high >= low else {
                    throw error("invalid character class range: `\(Self.text(low))-\(Self.text(high))`")
                }
            }
            var item = ScalarClass(ranges: [low...high])
            if flags.caseInsensitive { item.addCaseVariants() }
            set.ranges += item.ranges
        }
        set.finish()
        return set
    }

    private static func text(_ value: UInt32) -> String {
        Unicode.Scalar(value).map { String($0) } ?? "?"
    }

    private mutating func parseClassScalar() throws(RouteRegexError) -> UInt32 {
        guard let c = current else { throw error("missing closing ]: `\(pattern)`") }
        guard c == "\\" else {
            index += 1
            return c.value
        }
        var single = ScalarClass()
        let savedCase = flags.caseInsensitive
        flags.caseInsensitive = false
        defer { flags.caseInsensitive = savedCase }
        try parseEscape(into: &single)
        guard single.ranges.count == 1, let only = single.ranges.first, only.lowerBound == only.upperBound else {
            throw error("invalid escape sequence in character class")
        }
        return only.lowerBound
    }

    private mutating func parsePosixClass(into set: inout ScalarClass) throws(RouteRegexError) {
        let start = index
        index += 2  // [:
        var negate = false
        if current == "^" {
            negate = true
            index += 1
        }
        let nameStart = index
        while let c = current, c != ":" { index += 1 }
        let name = String(String.UnicodeScalarView(scalars[nameStart..<index]))
        guard current == ":", peek(1) == "]", let ranges = Self.posixClasses[name] else {
            index = start
            // Not a POSIX class: treat '[' as a literal, as Go does.
            index += 1
            set.ranges.append(UInt32(91)...UInt32(91))
            return
        }
        index += 2
        set.ranges += negate ? ScalarClass.complement(of: ranges) : ranges
    }

    private static let digit: [ClosedRange<UInt32>] = [0x30...0x39]
    private static let word: [ClosedRange<UInt32>] = [0x30...0x39, 0x41...0x5A, 0x5F...0x5F, 0x61...0x7A]
    private static let space: [ClosedRange<UInt32>] = [0x09...0x0A, 0x0C...0x0D, 0x20...0x20]

    private static let posixClasses: [String: [ClosedRange<UInt32>]] = [
        "alnum": [0x30...0x39, 0x41...0x5A, 0x61...0x7A],
        "alpha": [0x41...0x5A, 0x61...0x7A],
        "ascii": [0x00...0x7F],
        "blank": [0x09...0x09, 0x20...0x20],
        "cntrl": [0x00...0x1F, 0x7F...0x7F],
        "digit": [0x30...0x39],
        "graph": [0x21...0x7E],
        "lower": [0x61...0x7A],
        "print": [0x20...0x7E],
        "punct": [0x21...0x2F, 0x3A...0x40, 0x5B...0x60, 0x7B...0x7E],
        "space": [0x09...0x0D, 0x20...0x20],
        "upper": [0x41...0x5A],
        "word": [0x30...0x39, 0x41...0x5A, 0x5F...0x5F, 0x61...0x7A],
        "xdigit": [0x30...0x39, 0x41...0x46, 0x61...0x66],
    ]

    private static let generalCategories: [String: [Unicode.GeneralCategory]] = {
        let table: [String: [Unicode.GeneralCategory]] = [
            "Lu": [.uppercaseLetter], "Ll": [.lowercaseLetter], "Lt": [.titlecaseLetter],
            "Lm": [.modifierLetter], "Lo": [.otherLetter],
            "Mn": [.nonspacingMark], "Mc": [.spacingMark], "Me": [.enclosingMark],
            "Nd": [.decimalNumber], "Nl": [.letterNumber], "No": [.otherNumber],
            "Pc": [.connectorPunctuation], "Pd": [.dashPunctuation], "Ps": [.openPunctuation],
            "Pe": [.closePunctuation], "Pi": [.initialPunctuation], "Pf": [.finalPunctuation],
            "Po": [.otherPunctuation],
            "Sm": [.mathSymbol], "Sc": [.currencySymbol], "Sk": [.modifierSymbol], "So": [.otherSymbol],
            "Zs": [.spaceSeparator], "Zl": [.lineSeparator], "Zp": [.paragraphSeparator],
            "Cc": [.control], "Cf": [.format], "Cs": [.surrogate], "Co": [.privateUse],
        ]
        var all = table
        for letter in ["L", "M", "N", "P", "S", "Z", "C"] {
            all[letter] = table.filter { $0.key.hasPrefix(letter) }.flatMap(\.value)
        }
        all["C"]?.append(.unassigned)
        all["Any"] = Array(Set(all.values.flatMap { $0 } + [.unassigned]))
        return all
    }()
}

// MARK: - Program and matcher

/// A Thompson NFA program, simulated Pike-VM style without captures (only "does it match" matters).
private final class Program: Sendable {
    enum Op: Sendable {
        case scalars(Int, next: Int)
        case split(Int, Int)
        case jump(Int)
        case assert(RegexAssertion, next: Int)
        case match
    }

    let ops: [Op]
    let classes: [ScalarClass]
    /// What every match must look like, found at compile time so most paths are decided without the VM.
    let shortcut: Shortcut

    /// Upper bound on program size; keeps `x{1000}{1000}`-style patterns from exhausting memory.
    static let maxOps = 50_000

    /// The matching work a pattern's shape allows to skip. Profiles list routes that mostly begin with a literal
    /// path (`/api/v1/books/[0-9]+`) and are tried first to last, so a request usually fails all but one of them
    /// on its first bytes; running the VM for each (allocation, closure, state sets) was the main cost of routing.
    ///
    /// Prefixes are kept as UTF-8: Swift strings are valid UTF-8, whose encoding is prefix-free per scalar, so a
    /// byte prefix test is exactly the scalar prefix test the VM would perform.
    struct Shortcut: Sendable {
        /// The pattern is this exact text (`/healthz`): a byte comparison decides.
        var literal: [UInt8]?
        /// Every match starts with these bytes (leading literal scalars, after a `^`): a text that does not is
        /// rejected without running the VM.
        var prefix: [UInt8] = []
        /// The pattern is ``prefix`` followed by `class{minimum,}` (`/api/.*`, `/books/[0-9]+`, optionally ended
        /// by `$`): the rest of the text decides with one class test per scalar.
        var tail: (set: ScalarClass, minimum: Int)?
        /// Whether ``tail`` accepts every scalar (`(?s).*`), so only the prefix matters.
        var tailAcceptsAll = false
    }

    init(compiling node: RegexNode, pattern: String) throws(RouteRegexError) {
        var builder = Builder()
        let matchIndex = builder.append(.match)
        let start = try builder.emit(node, next: matchIndex, pattern: pattern)
        // The entry jump goes last so the matcher can find it at `ops.count - 1`.
        var ops = builder.ops
        ops.append(.jump(start))
        self.ops = ops
        self.classes = builder.classes
        self.shortcut = Self.shortcut(of: node)
    }

    /// Reads the pattern as `^? literal* rest` with concatenation flattened (groups do not change what matches).
    static func shortcut(of node: RegexNode) -> Shortcut {
        func single(_ set: ScalarClass) -> Unicode.Scalar? {
            guard set.categories.isEmpty, !set.negated, set.ranges.count == 1, let range = set.ranges.first,
                range.lowerBound == range.upperBound
            else { return nil }
            return Unicode.Scalar(range.lowerBound)
        }
        func flattened(_ node: RegexNode, into items: inout [RegexNode]) {
            switch node {
            case .concat(let children): for child in children { flattened(child, into: &items) }
            case .empty: break
            default: items.append(node)
            }
        }
        var items: [RegexNode] = []
        flattened(node, into: &items)
        var index = 0
        // `^` (not multi-line) holds at the start of the text, where a leading one is always evaluated.
        while index < items.count, case .assertion(.beginText) = items[index] { index += 1 }
        var prefix = String.UnicodeScalarView()
        while index < items.count, case .scalars(let set) = items[index], let scalar = single(set) {
            prefix.append(scalar)
            index += 1
        }
        var shortcut = Shortcut()
        shortcut.prefix = Array(String(prefix).utf8)
        var rest = items[index...]
        if rest.isEmpty {
            shortcut.literal = shortcut.prefix
            return shortcut
        }
        // `$` (not multi-line) at the very end holds exactly at the end of the text, where the match ends anyway.
        while let last = rest.last, case .assertion(.endText) = last { rest = rest.dropLast() }
        if rest.count == 1, let only = rest.first, case .repetition(let body, let minimum, nil) = only,
            case .scalars(let set) = body
        {
            shortcut.tail = (set, minimum)
            shortcut.tailAcceptsAll =
                !set.negated && set.categories.isEmpty && set.ranges == [0...ScalarClass.maxScalar]
        }
        return shortcut
    }

    private struct Builder {
        var ops: [Program.Op] = []
        var classes: [ScalarClass] = []

        mutating func append(_ op: Program.Op) -> Int {
            ops.append(op)
            return ops.count - 1
        }

        /// Emits `node` so that on success control continues at `next`; returns the entry point.
        mutating func emit(_ node: RegexNode, next: Int, pattern: String) throws(RouteRegexError) -> Int {
            guard ops.count < Program.maxOps else {
                throw RouteRegexError(pattern: pattern, message: "expression too large")
            }
            switch node {
            case .empty:
                return next
            case .scalars(let set):
                classes.append(set)
                return append(.scalars(classes.count - 1, next: next))
            case .assertion(let kind):
                return append(.assert(kind, next: next))
            case .concat(let items):
                var entry = next
                for item in items.reversed() { entry = try emit(item, next: entry, pattern: pattern) }
                return entry
            case .alternate(let branches):
                var entries: [Int] = []
                for branch in branches { entries.append(try emit(branch, next: next, pattern: pattern)) }
                var entry = entries[entries.count - 1]
                for branchEntry in entries.dropLast().reversed() { entry = append(.split(branchEntry, entry)) }
                return entry
            case .repetition(let body, let low, let high):
                var entry = next
                if let high {
                    // x{n,m}: n copies, then (m-n) nested optionals x(x(x)?)?.
                    for _ in 0..<(high - low) {
                        let bodyEntry = try emit(body, next: entry, pattern: pattern)
                        entry = append(.split(bodyEntry, next))
                    }
                } else {
                    // x*: loop: split(body → loop, next).
                    let loop = append(.jump(next))
                    let bodyEntry = try emit(body, next: loop, pattern: pattern)
                    ops[loop] = .split(bodyEntry, next)
                    entry = loop
                }
                for _ in 0..<low { entry = try emit(body, next: entry, pattern: pattern) }
                return entry
            }
        }
    }

    func matchesWhole(_ text: some StringProtocol) -> Bool {
        // Native strings expose their UTF-8 contiguously: the shortcuts then compare raw bytes.
        if let decided = text.utf8.withContiguousStorageIfAvailable({ decideByBytes($0) }) {
            switch decided {
            case .match: return true
            case .noMatch: return false
            case .undecided: break
            }
        } else {
            if let literal = shortcut.literal { return text.utf8.elementsEqual(literal) }
            guard text.utf8.starts(with: shortcut.prefix) else { return false }
        }
        guard let tail = shortcut.tail else { return simulate(text.unicodeScalars) }
        if shortcut.tailAcceptsAll, tail.minimum == 0 { return true }
        let restStart = text.utf8.index(text.utf8.startIndex, offsetBy: shortcut.prefix.count)
        var count = 0
        for scalar in text.unicodeScalars[restStart...] {
            guard tail.set.contains(scalar) else { return false }
            count += 1
        }
        return count >= tail.minimum
    }

    private enum Decision { case match, noMatch, undecided }

    /// What the shortcuts decide from the UTF-8 bytes alone: literal and prefix comparisons, and an all-ASCII
    /// tail (one bitmap test per byte). Non-ASCII tails and patterns without a shape are left undecided.
    private func decideByBytes(_ bytes: UnsafeBufferPointer<UInt8>) -> Decision {
        if shortcut.literal != nil {
            return shortcut.literal?.elementsEqual(bytes) == true ? .match : .noMatch
        }
        let prefixCount = shortcut.prefix.count
        guard bytes.count >= prefixCount else { return .noMatch }
        for index in 0..<prefixCount where bytes[index] != shortcut.prefix[index] { return .noMatch }
        guard shortcut.tail != nil else { return .undecided }
        if shortcut.tailAcceptsAll, shortcut.tail?.minimum == 0 { return .match }
        for index in prefixCount..<bytes.count {
            let byte = bytes[index]
            guard byte < 0x80 else { return .undecided }
            if shortcut.tail?.set.contains(Unicode.Scalar(byte)) == false { return .noMatch }
        }
        return bytes.count - prefixCount >= shortcut.tail?.minimum ?? 0 ? .match : .noMatch
    }

    /// The full Pike-VM run over `text`, with no shortcut (what every shortcut must agree with).
    func simulate(_ text: some BidirectionalCollection<Unicode.Scalar>) -> Bool {
        let count = ops.count
        // Two sparse sets (dense + sparse arrays each) and a work stack, all on the stack.
        // Each op is pushed at most once per incoming edge (≤ 2) per closure, hence 2 × count for the stack.
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: count * 6 + 1) { buffer -> Bool in
            guard let base = buffer.baseAddress else { return false }
            buffer.initialize(repeating: 0)
            var current = SparseSet(dense: base, sparse: base + count)
            var next = SparseSet(dense: base + 2 * count, sparse: base + 3 * count)
            let stack = base + 4 * count
            var iterator = text.makeIterator()
            var lookahead = iterator.next()
            addClosure(count - 1, to: &current, previous: nil, next: lookahead, stack: stack)
            while let scalar = lookahead {
                if current.count == 0 { return false }
                lookahead = iterator.next()
                next.clear()
                for position in 0..<current.count {
                    if case .scalars(let classIndex, let target) = ops[current.dense[position]],
                        classes[classIndex].contains(scalar)
                    {
                        addClosure(target, to: &next, previous: scalar, next: lookahead, stack: stack)
                    }
                }
                swap(&current, &next)
            }
            for position in 0..<current.count {
                if case .match = ops[current.dense[position]] { return true }
            }
            return false
        }
    }

    /// Adds `start` and everything reachable through epsilon moves whose assertions hold here.
    private func addClosure(
        _ start: Int, to set: inout SparseSet, previous: Unicode.Scalar?, next: Unicode.Scalar?,
        stack: UnsafeMutablePointer<Int>
    ) {
        var top = 0
        stack[0] = start
        top = 1
        while top > 0 {
            top -= 1
            let pc = stack[top]
            if set.contains(pc) { continue }
            set.insert(pc)
            switch ops[pc] {
            case .jump(let target):
                stack[top] = target
                top += 1
            case .split(let first, let second):
                if !set.contains(second) {
                    stack[top] = second
                    top += 1
                }
                if !set.contains(first) {
                    stack[top] = first
                    top += 1
                }
            case .assert(let kind, let target):
                if kind.holds(previous: previous, next: next) {
                    stack[top] = target
                    top += 1
                }
            case .scalars, .match:
                break
            }
        }
    }

    private struct SparseSet {
        let dense: UnsafeMutablePointer<Int>
        let sparse: UnsafeMutablePointer<Int>
        var count = 0

        init(dense: UnsafeMutablePointer<Int>, sparse: UnsafeMutablePointer<Int>) {
            self.dense = dense
            self.sparse = sparse
        }

        @inline(__always)
        func contains(_ value: Int) -> Bool {
            let slot = sparse[value]
            return slot >= 0 && slot < count && dense[slot] == value
        }

        @inline(__always)
        mutating func insert(_ value: Int) {
            sparse[value] = count
            dense[count] = value
            count += 1
        }

        mutating func clear() { count = 0 }
    }
}
