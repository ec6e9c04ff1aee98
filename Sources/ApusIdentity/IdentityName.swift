/// A workload identity in Linkerd's format: `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>`.
///
/// It is the single DNS SAN of every leaf the CA issues, and what peers compare when they check who they talk to,
/// so the text must be exactly what Linkerd would produce for the same ServiceAccount.
///
/// ```swift
/// let name = IdentityName(serviceAccount: "web", namespace: "shop")
/// name.description   // "web.shop.serviceaccount.identity.apus.cluster.local"
/// try IdentityName(parsing: "web.shop.serviceaccount.identity.linkerd.cluster.local").controlNamespace  // "linkerd"
/// ```
public struct IdentityName: Hashable, Sendable, CustomStringConvertible {
    public var serviceAccount: String
    public var namespace: String
    public var controlNamespace: String
    public var trustDomain: String

    /// Takes the parts as given (they come from Kubernetes object names, already DNS-1123); use
    /// ``validate()`` or ``init(parsing:)`` for untrusted text.
    public init(
        serviceAccount: String, namespace: String, controlNamespace: String = "apus",
        trustDomain: String = "cluster.local"
    ) {
        self.serviceAccount = serviceAccount
        self.namespace = namespace
        self.controlNamespace = controlNamespace
        self.trustDomain = trustDomain
    }

    /// Parses and validates an identity: ServiceAccount, namespace and control namespace are DNS-1123 labels
    /// (lower-case alphanumerics and `-`, at most 63 characters), the trust domain is one or more such labels, and
    /// the whole name is at most 253 characters.
    public init(parsing text: String) throws(IdentityError) {
        let labels = text.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard labels.count >= 6, labels[2] == "serviceaccount", labels[3] == "identity" else {
            throw IdentityError(
                .invalidName,
                "'\(text)' is not an identity of the form <sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>"
            )
        }
        self.init(
            serviceAccount: labels[0], namespace: labels[1], controlNamespace: labels[4],
            trustDomain: labels[5...].joined(separator: "."))
        try validate()
    }

    /// Checks every part is a DNS-1123 label (the trust domain: labels joined by dots) and the name fits in DNS.
    public func validate() throws(IdentityError) {
        try Self.checkLabel(serviceAccount, "service account")
        try Self.checkLabel(namespace, "namespace")
        try Self.checkLabel(controlNamespace, "control namespace")
        try Self.checkTrustDomain(trustDomain)
        let length = description.utf8.count
        guard length <= 253 else {
            throw IdentityError(.invalidName, "identity '\(description)' is \(length) characters long (at most 253)")
        }
    }

    /// `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>`.
    public var description: String {
        "\(serviceAccount).\(namespace).serviceaccount.identity.\(controlNamespace).\(trustDomain)"
    }

    /// The issuer's name for a control plane, `identity.<control-ns>.<trust-domain>`: Linkerd's proxies expect the
    /// identity service to present it, so generated issuers use it as their common name.
    public static func issuerName(controlNamespace: String, trustDomain: String) -> String {
        "identity.\(controlNamespace).\(trustDomain)"
    }

    static func checkTrustDomain(_ trustDomain: String) throws(IdentityError) {
        guard trustDomain.utf8.count <= 253 else {
            throw IdentityError(.invalidName, "trust domain '\(trustDomain)' is longer than 253 characters")
        }
        for label in trustDomain.split(separator: ".", omittingEmptySubsequences: false) {
            try checkLabel(String(label), "trust domain '\(trustDomain)' label")
        }
    }

    static func checkLabel(_ label: String, _ what: String) throws(IdentityError) {
        let bytes = Array(label.utf8)
        guard !bytes.isEmpty else { throw IdentityError(.invalidName, "\(what) is empty") }
        guard bytes.count <= 63 else {
            throw IdentityError(.invalidName, "\(what) '\(label)' is \(bytes.count) characters long (at most 63)")
        }
        func isAlphanumeric(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        }
        guard bytes.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: "-") }),
            let first = bytes.first, let last = bytes.last, isAlphanumeric(first), isAlphanumeric(last)
        else {
            throw IdentityError(
                .invalidName,
                "\(what) '\(label)' is not a DNS-1123 label (lower-case letters, digits and '-', "
                    + "starting and ending with a letter or digit)")
        }
    }
}
