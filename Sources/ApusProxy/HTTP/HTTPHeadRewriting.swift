import NIOHTTP1

/// A `host:port` pair parsed from an authority (`example.com`, `example.com:8080`, `[::1]:8080`, `10.0.0.1:80`).
public struct TargetAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `authority`; `nil` for an empty host, a port outside 1…65535, userinfo, or unbalanced brackets.
    public static func parse(_ authority: String, defaultPort: Int = 80) -> TargetAddress? {
        guard !authority.isEmpty, !authority.utf8.contains(UInt8(ascii: "@")) else { return nil }
        var host = Substring(authority)
        var port = defaultPort
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return nil }
            let rest = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let parsed = Int(rest.dropFirst()) else { return nil }
                port = parsed
            }
        } else if let colon = host.lastIndex(of: ":") {
            guard host.firstIndex(of: ":") == colon, let parsed = Int(host[host.index(after: colon)...]) else {
                return nil
            }
            port = parsed
            host = host[..<colon]
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
        return TargetAddress(host: String(host), port: port)
    }

    public var description: String {
        host.utf8.contains(UInt8(ascii: ":")) ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// The header rewrites a forwarding proxy owes each hop (RFC 9110 §7.6), kept as pure functions so they are
/// tested without sockets.
enum HTTPHeadRewriting {
    /// The authority a request is for: `l5d-dst-override`, else the absolute-form target's authority (what
    /// `http_proxy` clients send), else `Host` (HTTP/2's `:authority` arrives as `host` through the codec).
    static func targetAuthority(of head: HTTPRequestHead) -> String? {
        if let override = head.headers.first(name: ProxyHeaders.destinationOverride), !override.isEmpty {
            return override
        }
        if let absolute = absoluteForm(head.uri) { return absolute.authority }
        if let host = head.headers.first(name: "host"), !host.isEmpty { return host }
        return nil
    }

    /// Splits an absolute-form target (`http://host:port/path?q`) into its authority and origin-form path.
    static func absoluteForm(_ uri: String) -> (authority: String, path: String)? {
        let scheme: String
        if uri.hasPrefix("http://") {
            scheme = "http://"
        } else if uri.hasPrefix("https://") {
            scheme = "https://"
        } else {
            return nil
        }
        let rest = uri.dropFirst(scheme.count)
        guard let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) else { return (String(rest), "/") }
        let path = rest[slash...]
        return (String(rest[..<slash]), path.hasPrefix("?") ? "/" + path : String(path))
    }

    /// Removes the hop-by-hop headers and the ones `Connection` names. `te: trailers` survives when
    /// `keepTETrailers` (gRPC over HTTP/2 requires it end to end).
    ///
    /// Runs twice per proxied request, so it allocates nothing for a head without hop-by-hop headers and, for one
    /// with them (every keep-alive response carries `Connection`), rebuilds the list once instead of removing
    /// name by name.
    static func stripHopByHop(_ headers: inout HTTPHeaders, keepTETrailers: Bool) {
        guard headers.contains(where: { isHopByHop($0.name) }) else { return }
        var named: [String] = []
        for (name, value) in headers where equalsASCIILowercase(name, "connection") {
            // The common values name no other header; only a list is split (allocating).
            if equalsASCIILowercase(value, "keep-alive") || equalsASCIILowercase(value, "close") { continue }
            for element in value.split(separator: ",") {
                let token = element.trimmingASCIISpaces().lowercased()
                if !token.isEmpty && token != "close" && token != "keep-alive" { named.append(token) }
            }
        }
        var teTrailers = false
        if keepTETrailers && headers.contains(name: "te") {
            teTrailers = headers[canonicalForm: "te"].contains { $0.lowercased() == "trailers" }
        }
        var kept: [(String, String)] = []
        kept.reserveCapacity(headers.count)
        for (name, value) in headers where !isHopByHop(name) {
            if named.contains(where: { equalsASCIILowercase(name, $0) }) { continue }
            kept.append((name, value))
        }
        if teTrailers { kept.append(("te", "trailers")) }
        headers = HTTPHeaders(kept)
    }

    /// Whether `name` is one of ``ProxyHeaders/hopByHop``, compared without allocating.
    @inline(__always)
    static func isHopByHop(_ name: String) -> Bool {
        // Every header of every head goes through here twice per request: most names are ruled out by their
        // length alone, the rest compared against the one or two names of that length.
        let length = name.utf8.count
        guard length < hopByHopNamesByLength.count else { return false }
        for candidate in hopByHopNamesByLength[length] where equalsASCIILowercase(name, candidate) { return true }
        return false
    }

    /// ``ProxyHeaders/hopByHop`` indexed by name length.
    private static let hopByHopNamesByLength: [[String]] = {
        var table = [[String]](repeating: [], count: (ProxyHeaders.hopByHop.map(\.utf8.count).max() ?? 0) + 1)
        for name in ProxyHeaders.hopByHop { table[name.utf8.count].append(name) }
        return table
    }()

    /// `name` equals `lowercase` (already lower-cased) ignoring ASCII case, as header names compare.
    @inline(__always)
    static func equalsASCIILowercase(_ name: String, _ lowercase: String) -> Bool {
        guard name.utf8.count == lowercase.utf8.count else { return false }
        var expectedBytes = lowercase.utf8.makeIterator()
        for byte in name.utf8 {
            guard let expected = expectedBytes.next() else { return false }
            if byte != expected
                && !(expected >= UInt8(ascii: "a") && expected <= UInt8(ascii: "z") && byte | 0x20 == expected)
            {
                return false
            }
        }
        return true
    }

    /// Whether `headers` ask for a protocol switch (`Upgrade` named in `Connection`), e.g. WebSocket.
    static func isUpgrade(_ headers: HTTPHeaders) -> Bool {
        headers.contains(name: "upgrade")
            && headers[canonicalForm: "connection"].contains { $0.lowercased() == "upgrade" }
    }

    /// Whether the message body is chunked (`Transfer-Encoding` ending in `chunked`).
    static func isChunked(_ headers: HTTPHeaders) -> Bool {
        // `contains` first: it allocates nothing, and most heads have no `Transfer-Encoding`.
        headers.contains(name: "transfer-encoding")
            && headers[canonicalForm: "transfer-encoding"].last?.lowercased() == "chunked"
    }
}

extension Substring {
    /// Without the spaces and tabs around it (optional whitespace around list elements, RFC 9110 §5.6.1).
    fileprivate func trimmingASCIISpaces() -> Substring {
        var trimmed = self
        while let first = trimmed.first, first == " " || first == "\t" { trimmed = trimmed.dropFirst() }
        while let last = trimmed.last, last == " " || last == "\t" { trimmed = trimmed.dropLast() }
        return trimmed
    }
}
