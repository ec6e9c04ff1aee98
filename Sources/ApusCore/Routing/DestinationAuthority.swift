/// Where an outbound request is going, as the proxy names it for discovery and ServiceProfile lookup.
///
/// The authority comes from the first of `l5d-dst-override`, `:authority` and `Host` (the override lets an
/// ingress pin the destination regardless of the virtual host). Names are then made fully qualified the way
/// the pod's DNS search path would: `web` → `web.<client-ns>.svc.<domain>`, `web.ns` → `web.ns.svc.<domain>`,
/// `web.ns.svc` → `web.ns.svc.<domain>`. A name written with a trailing dot is already absolute and only loses
/// the dot; IP literals are kept as they are. Two-label names are read as `service.namespace`, which is also
/// what cluster DNS tries first, so an external `example.com` should be written `example.com.` to be exact.
///
/// ```swift
/// let destination = try DestinationAuthority(parsing: "web.emojivoto:8080", clientNamespace: "default")
/// destination.host  // "web.emojivoto.svc.cluster.local"
/// destination.port  // 8080
/// ```
public struct DestinationAuthority: Hashable, Sendable, CustomStringConvertible {
    /// Lower-cased FQDN without trailing dot, or an IP literal (IPv6 without brackets).
    public let host: String
    public let port: Int
    public let isIPAddress: Bool
    /// `host:port`, with brackets around IPv6 addresses; built once, as the proxy uses it as a key per request.
    public let description: String

    /// The header that overrides `:authority`/`Host` as the destination (set by ingresses and clients).
    public static let overrideHeader = "l5d-dst-override"

    /// Parses and normalizes `authority` (`host`, `host:port`, `[v6]:port`).
    public init(
        parsing authority: String, clientNamespace: String, clusterDomain: String = "cluster.local",
        defaultPort: Int = 80
    ) throws(AuthorityError) {
        // The proxy parses every request's authority; the byte-level reading of the common case (ASCII name or
        // IPv4 address, valid port) costs a fraction of the general one, which handles everything else and says
        // what is wrong.
        if let fast = Self.parsedASCII(
            authority, clientNamespace: clientNamespace, clusterDomain: clusterDomain,
            defaultPort: defaultPort)
        {
            self = fast
            return
        }
        try self.init(
            parsingGeneral: authority, clientNamespace: clientNamespace, clusterDomain: clusterDomain,
            defaultPort: defaultPort)
    }

    private init(host: String, port: Int, isIPAddress: Bool) {
        self.host = host
        self.port = port
        self.isIPAddress = isIPAddress
        // A byte scan: Foundation's `contains(_: StringProtocol)` bridges to NSString.
        description = isIPAddress && host.utf8.contains(UInt8(ascii: ":")) ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The general parser (any authority, errors included); `init(parsing:…)` gives the same result faster for
    /// valid ASCII names and IPv4 addresses. Internal so tests can compare the two.
    init(
        parsingGeneral authority: String, clientNamespace: String, clusterDomain: String = "cluster.local",
        defaultPort: Int = 80
    ) throws(AuthorityError) {
        let parts = try Self.generalParts(
            authority, clientNamespace: clientNamespace, clusterDomain: clusterDomain, defaultPort: defaultPort)
        self.init(host: parts.host, port: parts.port, isIPAddress: parts.isIPAddress)
    }

    private static func generalParts(
        _ authority: String, clientNamespace: String, clusterDomain: String, defaultPort: Int
    ) throws(AuthorityError) -> (host: String, port: Int, isIPAddress: Bool) {
        var text = Substring(authority)
        if let at = text.lastIndex(of: "@") { text = text[text.index(after: at)...] }  // userinfo is not routing
        guard !text.isEmpty else { throw AuthorityError(authority: authority, reason: "is empty") }
        var hostPart: Substring
        var portPart: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                throw AuthorityError(authority: authority, reason: "has an unclosed IPv6 bracket")
            }
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else {
                    throw AuthorityError(authority: authority, reason: "has text after the IPv6 address")
                }
                portPart = rest.dropFirst()
            }
            guard Self.isIPv6(hostPart) else {
                throw AuthorityError(authority: authority, reason: "has an invalid IPv6 address")
            }
        } else if let colon = text.lastIndex(of: ":") {
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
        } else {
            hostPart = text
        }
        var port = defaultPort
        if let portPart, !portPart.isEmpty {
            guard portPart.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let value = Int(portPart),
                (1...65535).contains(value)
            else {
                throw AuthorityError(authority: authority, reason: "has invalid port '\(portPart)'")
            }
            port = value
        }
        if text.hasPrefix("[") { return (hostPart.lowercased(), port, true) }
        if Self.isIPv4(hostPart) { return (String(hostPart), port, true) }
        let absolute = hostPart.hasSuffix(".")
        if absolute { hostPart = hostPart.dropLast() }
        let name = hostPart.lowercased()
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        guard !name.isEmpty, name.utf8.count <= 253,
            labels.allSatisfy(Self.isValidLabel)
        else {
            throw AuthorityError(authority: authority, reason: "has an invalid host name")
        }
        let domain = clusterDomain.hasSuffix(".") ? String(clusterDomain.dropLast()) : clusterDomain
        if absolute || name.hasSuffix(".svc.\(domain)") {
            return (name, port, false)
        } else if labels.count == 1 {
            return ("\(name).\(clientNamespace).svc.\(domain)", port, false)
        } else if labels.count == 2 {
            return ("\(name).svc.\(domain)", port, false)
        } else if labels.count == 3, labels[2] == "svc" {
            return ("\(name).\(domain)", port, false)
        } else {
            return (name, port, false)
        }
    }

    /// `init(parsing:…)` for an ASCII authority without brackets whose host is an IPv4 address or a valid name and
    /// whose port (if any) is valid; nil for anything else (the general parser decides and explains).
    ///
    /// For ASCII text, Swift's character-wise `lastIndex(of:)`, `hasSuffix` and `lowercased()` are the byte-wise
    /// operations used here (an ASCII string's characters are its bytes, `\r\n` aside, which no valid host has).
    static func parsedASCII(
        _ authority: String, clientNamespace: String, clusterDomain: String, defaultPort: Int
    ) -> DestinationAuthority? {
        var authority = authority
        return authority.withUTF8 { bytes in
            parsedASCII(bytes, clientNamespace: clientNamespace, clusterDomain: clusterDomain, defaultPort: defaultPort)
        }
    }

    private static func parsedASCII(
        _ bytes: UnsafeBufferPointer<UInt8>, clientNamespace: String, clusterDomain: String, defaultPort: Int
    ) -> DestinationAuthority? {
        guard let first = bytes.first, first != UInt8(ascii: "["), bytes.count <= 512 else { return nil }
        var hostStart = 0
        var colon: Int?
        for index in 0..<bytes.count {
            let byte = bytes[index]
            if byte >= 0x80 { return nil }
            if byte == UInt8(ascii: "@") {
                hostStart = index + 1  // userinfo is not routing
                colon = nil
            } else if byte == UInt8(ascii: ":") {
                colon = index
            }
        }
        var hostEnd = bytes.count
        var port = defaultPort
        if let colon {
            hostEnd = colon
            var value = 0
            var digits = 0
            for byte in bytes[(colon + 1)...] {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9"), digits < 6 else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
                digits += 1
            }
            if digits > 0 {
                guard (1...65535).contains(value) else { return nil }
                port = value
            }
        }
        guard hostStart < hostEnd else { return nil }
        func text(_ range: Range<Int>) -> String {
            String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self)
        }
        if isIPv4(bytes: bytes[hostStart..<hostEnd]) {
            return DestinationAuthority(host: text(hostStart..<hostEnd), port: port, isIPAddress: true)
        }
        let absolute = bytes[hostEnd - 1] == UInt8(ascii: ".")
        let nameEnd = absolute ? hostEnd - 1 : hostEnd
        guard hostStart < nameEnd, nameEnd - hostStart <= 253 else { return nil }
        // Labels: 1-63 of [a-z0-9-_] after lower-casing, first and last alphanumeric.
        var labels = 1
        var labelLength = 0
        var previous = UInt8(ascii: ".")
        var hasUpper = false
        var thirdLabelIsSvc = false
        var labelStart = hostStart
        for index in hostStart..<nameEnd {
            let raw = bytes[index]
            if raw >= UInt8(ascii: "A"), raw <= UInt8(ascii: "Z") { hasUpper = true }
            let byte = RouteHeaders.lowerASCII(raw)
            if byte == UInt8(ascii: ".") {
                guard labelLength > 0, isAlphanumeric(previous) else { return nil }
                if labels == 3 { thirdLabelIsSvc = isSvc(bytes, labelStart..<index) }
                labels += 1
                labelLength = 0
                labelStart = index + 1
            } else {
                guard isHostByte(byte) else { return nil }
                if labelLength == 0, !isAlphanumeric(byte) { return nil }
                labelLength += 1
                guard labelLength <= 63 else { return nil }
            }
            previous = byte
        }
        guard labelLength > 0, isAlphanumeric(previous) else { return nil }
        if labels == 3 { thirdLabelIsSvc = isSvc(bytes, labelStart..<nameEnd) }
        let name =
            hasUpper
            ? String(decoding: bytes[hostStart..<nameEnd].lazy.map(RouteHeaders.lowerASCII), as: UTF8.self)
            : text(hostStart..<nameEnd)
        var domain = clusterDomain
        var domainIsASCII = true
        domain.withUTF8 { domainIsASCII = !$0.contains { $0 >= 0x80 } }
        guard domainIsASCII else { return nil }
        if domain.utf8.last == UInt8(ascii: ".") { domain = String(domain.dropLast()) }
        let host: String
        if absolute || hasSuffix(bytes[hostStart..<nameEnd], svcOf: &domain) {
            host = name
        } else if labels == 1 {
            host = "\(name).\(clientNamespace).svc.\(domain)"
        } else if labels == 2 {
            host = "\(name).svc.\(domain)"
        } else if labels == 3, thirdLabelIsSvc {
            host = "\(name).\(domain)"
        } else {
            host = name
        }
        return DestinationAuthority(host: host, port: port, isIPAddress: false)
    }

    /// The label is `svc` once lower-cased.
    private static func isSvc(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Bool {
        range.count == 3 && RouteHeaders.lowerASCII(bytes[range.lowerBound]) == UInt8(ascii: "s")
            && RouteHeaders.lowerASCII(bytes[range.lowerBound + 1]) == UInt8(ascii: "v")
            && RouteHeaders.lowerASCII(bytes[range.lowerBound + 2]) == UInt8(ascii: "c")
    }

    /// The lower-cased `name` ends with `.svc.<domain>` (compared from the end, byte by byte).
    private static func hasSuffix(_ name: Slice<UnsafeBufferPointer<UInt8>>, svcOf domain: inout String) -> Bool {
        domain.withUTF8 { domainBytes in
            let svc: StaticString = ".svc."
            let suffixLength = svc.utf8CodeUnitCount + domainBytes.count
            guard name.count >= suffixLength else { return false }
            var index = name.endIndex - suffixLength
            for position in 0..<svc.utf8CodeUnitCount {
                if RouteHeaders.lowerASCII(name[index]) != svc.utf8Start[position] { return false }
                index += 1
            }
            for expected in domainBytes {
                if RouteHeaders.lowerASCII(name[index]) != expected { return false }
                index += 1
            }
            return true
        }
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
            || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
    }

    /// `isIPv4(_:)` on bytes: four dot-separated parts of 1-3 digits, each at most 255.
    static func isIPv4(bytes: Slice<UnsafeBufferPointer<UInt8>>) -> Bool {
        var parts = 0
        var digits = 0
        var value = 0
        for byte in bytes {
            if byte == UInt8(ascii: ".") {
                guard digits > 0, value <= 255 else { return false }
                parts += 1
                digits = 0
                value = 0
            } else {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9"), digits < 3 else { return false }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
                digits += 1
            }
        }
        return parts == 3 && digits > 0 && value <= 255
    }

    /// The destination of `request`: the first of `l5d-dst-override`, `:authority` (``RouteRequest/authority``)
    /// and `Host` that is present and non-empty, normalized like `init(parsing:…)`.
    /// Returns nil when the request names no authority at all.
    public init?(
        request: RouteRequest, clientNamespace: String, clusterDomain: String = "cluster.local",
        defaultPort: Int = 80
    ) throws(AuthorityError) {
        let candidates = [request.headers.first(Self.overrideHeader), request.authority, request.headers.first("host")]
        guard let text = candidates.lazy.compactMap({ $0 }).first(where: { !$0.isEmpty }) else { return nil }
        try self.init(
            parsing: text, clientNamespace: clientNamespace, clusterDomain: clusterDomain, defaultPort: defaultPort)
    }

    /// Equal when host, port and kind are (``description`` follows from them).
    public static func == (lhs: DestinationAuthority, rhs: DestinationAuthority) -> Bool {
        lhs.port == rhs.port && lhs.isIPAddress == rhs.isIPAddress && lhs.host == rhs.host
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(host)
        hasher.combine(port)
        hasher.combine(isIPAddress)
    }

    /// The Service this names, when the host is `<service>.<namespace>.svc.<clusterDomain>`.
    public func service(clusterDomain: String = "cluster.local") -> ObjectKey? {
        guard !isIPAddress, host.hasSuffix(".svc.\(clusterDomain)") else { return nil }
        let labels = host.dropLast(".svc.\(clusterDomain)".count).split(separator: ".")
        guard labels.count == 2 else { return nil }
        return ObjectKey(namespace: String(labels[1]), name: String(labels[0]))
    }

    /// ServiceProfile keys to look up, best first: the profile named for this FQDN in the *client's* namespace
    /// (a client-side override, as Linkerd gives precedence to) and then in the *service's* namespace.
    /// IP destinations have no profile.
    public func profileCandidates(clientNamespace: String, clusterDomain: String = "cluster.local") -> [ObjectKey] {
        guard !isIPAddress else { return [] }
        var keys = [ObjectKey(namespace: clientNamespace, name: host)]
        if let service = service(clusterDomain: clusterDomain), service.namespace != clientNamespace {
            keys.append(ObjectKey(namespace: service.namespace, name: host))
        }
        return keys
    }

    /// A DNS label: 1-63 of `[a-z0-9-_]`, starting and ending with a letter or digit.
    private static func isValidLabel(_ label: Substring) -> Bool {
        guard let first = label.utf8.first, let last = label.utf8.last, label.utf8.count <= 63 else { return false }
        let alphanumeric: (UInt8) -> Bool = { isHostByte($0) && $0 != UInt8(ascii: "-") && $0 != UInt8(ascii: "_") }
        return alphanumeric(first) && alphanumeric(last) && label.utf8.allSatisfy(isHostByte)
    }

    private static func isHostByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"),
            UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }

    static func isIPv4(_ text: Substring) -> Bool {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4
            && parts.allSatisfy { part in
                !part.isEmpty && part.count <= 3 && part.utf8.allSatisfy { $0 >= 48 && $0 <= 57 }
                    && (Int(part) ?? 256) <= 255
            }
    }

    private static func isIPv6(_ text: Substring) -> Bool {
        let address = text.split(separator: "%", maxSplits: 1).first ?? text  // zone id
        guard address.contains(":"), address.count <= 45 else { return false }
        let groups = address.split(separator: ":", omittingEmptySubsequences: false)
        let compressed = address.firstRange(of: "::") != nil
        var count = 0
        for (index, group) in groups.enumerated() {
            if group.isEmpty { continue }
            if index == groups.count - 1, group.contains(".") {
                guard isIPv4(group) else { return false }
                count += 2
                continue
            }
            guard group.count <= 4, group.allSatisfy(\.isHexDigit) else { return false }
            count += 1
        }
        return compressed ? count < 8 : count == 8
    }
}

/// An authority that cannot name a destination; ``description`` quotes it and says why.
public struct AuthorityError: Error, Hashable, Sendable, CustomStringConvertible {
    public let authority: String
    public let reason: String

    public var description: String { "authority '\(authority)' \(reason)" }
}
