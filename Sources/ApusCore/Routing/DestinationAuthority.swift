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

    /// The header that overrides `:authority`/`Host` as the destination (set by ingresses and clients).
    public static let overrideHeader = "l5d-dst-override"

    /// Parses and normalizes `authority` (`host`, `host:port`, `[v6]:port`).
    public init(
        parsing authority: String, clientNamespace: String, clusterDomain: String = "cluster.local",
        defaultPort: Int = 80
    ) throws(AuthorityError) {
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
        self.port = port
        if text.hasPrefix("[") {
            self.host = hostPart.lowercased()
            self.isIPAddress = true
            return
        }
        if Self.isIPv4(hostPart) {
            self.host = String(hostPart)
            self.isIPAddress = true
            return
        }
        let absolute = hostPart.hasSuffix(".")
        if absolute { hostPart = hostPart.dropLast() }
        let name = hostPart.lowercased()
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        guard !name.isEmpty, name.utf8.count <= 253,
            labels.allSatisfy(Self.isValidLabel)
        else {
            throw AuthorityError(authority: authority, reason: "has an invalid host name")
        }
        self.isIPAddress = false
        let domain = clusterDomain.hasSuffix(".") ? String(clusterDomain.dropLast()) : clusterDomain
        if absolute || name.hasSuffix(".svc.\(domain)") {
            self.host = name
        } else if labels.count == 1 {
            self.host = "\(name).\(clientNamespace).svc.\(domain)"
        } else if labels.count == 2 {
            self.host = "\(name).svc.\(domain)"
        } else if labels.count == 3, labels[2] == "svc" {
            self.host = "\(name).\(domain)"
        } else {
            self.host = name
        }
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

    /// `host:port`, with brackets around IPv6 addresses.
    public var description: String {
        // A byte scan: Foundation's `contains(_: StringProtocol)` bridges to NSString (the proxy calls this per
        // request).
        isIPAddress && host.utf8.contains(UInt8(ascii: ":")) ? "[\(host)]:\(port)" : "\(host):\(port)"
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
