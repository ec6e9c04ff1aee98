/// The parts of an HTTP request that route matching looks at, filled by the proxy without Foundation types.
///
/// The proxy builds one per request from what its HTTP codec already holds (method token, request target,
/// header list); nothing is parsed or copied until a matcher asks for it. Query parameters are parsed lazily
/// and only when a rule has query matches.
///
/// ```swift
/// let request = RouteRequest(method: "GET", target: "/books/7?format=json",
///                            headers: [("Host", "books"), ("x-canary", "1")])
/// request.path       // "/books/7"
/// request.query      // "format=json"
/// ```
public struct RouteRequest: Sendable {
    /// The method token exactly as sent (`GET`, `POST`, …); matching is case-sensitive like HTTP.
    public var method: String
    /// The path without the query string.
    public var path: String
    /// The raw query string without `?`, or nil when the target has none.
    public var query: String?
    /// Header fields in arrival order; names compare case-insensitively.
    public var headers: RouteHeaders
    /// The HTTP/2 `:authority` pseudo-header, or the host of an HTTP/1 absolute-form target; nil otherwise
    /// (HTTP/1 requests then carry the authority in `Host`, which stays in ``headers``).
    public var authority: String?

    public init(
        method: String, path: String, query: String? = nil, headers: RouteHeaders = RouteHeaders(),
        authority: String? = nil
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.authority = authority
    }

    /// Splits an origin-form request target (`/path?query`) into path and query. An absolute-form target
    /// (`http://host/path`, as sent to forward proxies) is reduced to its path too.
    public init(
        method: String, target: String, headers: [(name: String, value: String)] = [], authority: String? = nil
    ) {
        self.method = method
        self.headers = RouteHeaders(headers)
        // Per request: an ASCII origin-form target (the usual one) is split with one byte scan, without
        // character-by-character String work. In ASCII text the first `?` byte is the first `?` character.
        let bytes = target.utf8
        if bytes.first == UInt8(ascii: "/") {
            var mark: String.Index?
            var isASCII = true
            var index = bytes.startIndex
            while index != bytes.endIndex {
                let byte = bytes[index]
                if byte >= 0x80 {
                    isASCII = false
                    break
                }
                if byte == UInt8(ascii: "?"), mark == nil { mark = index }
                index = bytes.index(after: index)
            }
            if isASCII {
                self.authority = authority
                if let mark {
                    self.path = String(target[..<mark])
                    self.query = String(target[target.index(after: mark)...])
                } else {
                    self.path = target
                    self.query = nil
                }
                return
            }
        }
        var rest = Substring(target)
        var targetAuthority: Substring?
        if !rest.hasPrefix("/"), let scheme = rest.firstRange(of: "://") {
            rest = rest[scheme.upperBound...]
            let end = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
            targetAuthority = rest[..<end]
            rest = rest[end...]
        }
        self.authority = authority ?? targetAuthority.map(String.init)
        if let mark = rest.firstIndex(of: "?") {
            self.path = String(rest[..<mark])
            self.query = String(rest[rest.index(after: mark)...])
        } else {
            self.path = String(rest)
            self.query = nil
        }
        if path.isEmpty { path = "/" }
    }

    /// The first value of query parameter `name` (exact, case-sensitive), percent-decoded; `+` is a space.
    public func queryValue(_ name: String) -> String? {
        guard let query else { return nil }
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let equals = pair.firstIndex(of: "=")
            let rawName = equals.map { pair[..<$0] } ?? pair
            guard Self.percentDecode(rawName) == name else { continue }
            return equals.map { Self.percentDecode(pair[pair.index(after: $0)...]) } ?? ""
        }
        return nil
    }

    /// Decodes `%XX` escapes and `+`; malformed escapes are kept literally rather than rejected.
    static func percentDecode(_ text: Substring) -> String {
        guard text.utf8.contains(where: { $0 == UInt8(ascii: "%") || $0 == UInt8(ascii: "+") }) else {
            return String(text)
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%"), iterator.count >= 2,
                let high = hexValue(iterator[iterator.startIndex]),
                let low = hexValue(iterator[iterator.startIndex + 1])
            {
                bytes.append(high << 4 | low)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

/// An ordered header list with case-insensitive name lookup, the shape HTTP/1 and HTTP/2 codecs produce.
///
/// A linear scan is faster than hashing for the ten-or-so headers of a typical request and needs no
/// lower-casing copy of every name.
public struct RouteHeaders: Sendable, ExpressibleByDictionaryLiteral {
    /// Name/value pairs in arrival order; names keep their original spelling.
    public var fields: [(name: String, value: String)]

    public init(_ fields: [(name: String, value: String)] = []) {
        self.fields = fields
    }

    public init(dictionaryLiteral elements: (String, String)...) {
        self.fields = elements.map { (name: $0.0, value: $0.1) }
    }

    /// The first value of `name`, compared ASCII-case-insensitively.
    public func first(_ name: String) -> String? {
        for field in fields where Self.namesEqual(field.name, name) { return field.value }
        return nil
    }

    /// Every value of `name` in order.
    public func values(_ name: String) -> [String] {
        fields.filter { Self.namesEqual($0.name, name) }.map(\.value)
    }

    /// ASCII case-insensitive comparison, which is what HTTP field names need (they are tokens).
    static func namesEqual(_ lhs: String, _ rhs: String) -> Bool {
        let left = lhs.utf8
        let right = rhs.utf8
        guard left.count == right.count else { return false }
        for (a, b) in zip(left, right) where a != b {
            guard lowerASCII(a) == lowerASCII(b) else { return false }
        }
        return true
    }

    @inline(__always)
    static func lowerASCII(_ byte: UInt8) -> UInt8 {
        byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
    }
}
