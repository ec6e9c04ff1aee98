import ApusIdentity
import Foundation

/// Settings of the identity service, mirroring the `apus-controller` identity flags and Linkerd's defaults.
public struct IdentityServiceOptions: Sendable {
    /// Where the serving certificate comes from.
    public enum ServingCertificateSource: Sendable, Hashable {
        /// Issued by the identity CA itself for the controller's identity plus ``servingDNSNames`` /
        /// ``servingIPAddresses``, renewed after ``servingRenewalFraction`` of its lifetime and whenever the issuer
        /// changes. Until an issuer is loaded the endpoint presents a self-signed bootstrap certificate, which
        /// proxies do not trust: they retry until the real one is there.
        case issued
        /// A certificate chain and key given from outside (e.g. a cert-manager Secret), used as is.
        case provided(certificateChainPEM: String, privateKeyPEM: String)
    }

    public var controlNamespace: String
    public var trustDomain: String
    /// The ServiceAccount the controller runs as; its identity is the serving certificate's first DNS name, which
    /// proxies verify (`apus-identity.<ns>.serviceaccount.identity.<ns>.<trust-domain>`).
    public var serviceAccount: String
    /// Address to listen on; port 0 picks a free port (see ``IdentityService/waitUntilListening()``).
    public var host: String
    public var port: Int
    public var servingCertificate: ServingCertificateSource
    /// More names for the issued serving certificate, e.g. `apus-identity.apus.svc` or `localhost`.
    public var servingDNSNames: [String]
    public var servingIPAddresses: [String]
    /// Lifetime of the issued serving certificate (nil: the leaf lifetime).
    public var servingLifetime: TimeInterval?
    /// Renew the issued serving certificate after this fraction of its lifetime.
    public var servingRenewalFraction: Double
    /// Validity of issued leaves (Linkerd `-identity-issuance-lifetime`, 24 h).
    public var leafLifetime: TimeInterval
    /// Slack on both ends of a leaf's validity (Linkerd `-identity-clock-skew-allowance`, 20 s).
    public var clockSkew: TimeInterval
    /// Requests with a larger body are answered 413 without being read further.
    public var maximumRequestBytes: Int
    /// Connections silent for this long are closed, so idle or stalled clients do not hold sockets.
    public var idleTimeout: Duration
    /// How often `issuer_cert_ttl_seconds` is refreshed.
    public var gaugeInterval: Duration

    public init(
        controlNamespace: String = "apus", trustDomain: String = "cluster.local",
        serviceAccount: String = "apus-identity", host: String = "0.0.0.0", port: Int = 8080,
        servingCertificate: ServingCertificateSource = .issued, servingDNSNames: [String] = [],
        servingIPAddresses: [String] = [], servingLifetime: TimeInterval? = nil, servingRenewalFraction: Double = 0.5,
        leafLifetime: TimeInterval = 86400, clockSkew: TimeInterval = 20, maximumRequestBytes: Int = 64 * 1024,
        idleTimeout: Duration = .seconds(30), gaugeInterval: Duration = .seconds(15)
    ) {
        self.controlNamespace = controlNamespace
        self.trustDomain = trustDomain
        self.serviceAccount = serviceAccount
        self.host = host
        self.port = port
        self.servingCertificate = servingCertificate
        self.servingDNSNames = servingDNSNames
        self.servingIPAddresses = servingIPAddresses
        self.servingLifetime = servingLifetime
        self.servingRenewalFraction = servingRenewalFraction
        self.leafLifetime = leafLifetime
        self.clockSkew = clockSkew
        self.maximumRequestBytes = maximumRequestBytes
        self.idleTimeout = idleTimeout
        self.gaugeInterval = gaugeInterval
    }

    /// The Certify endpoint's TLS: no client certificates (proxies asking for their first have none).
    public var servingConfiguration: ServingCertificates.Configuration {
        let source: ServingCertificates.Source =
            switch servingCertificate {
            case .issued: .issued
            case .provided(let chain, let key): .provided(certificateChainPEM: chain, privateKeyPEM: key)
            }
        return ServingCertificates.Configuration(
            identity: serverIdentity, source: source, dnsNames: servingDNSNames, ipAddresses: servingIPAddresses,
            lifetime: servingLifetime, renewalFraction: servingRenewalFraction, clientCertificates: .notRequested)
    }

    /// The identity the controller's serving certificate names and proxies expect.
    public var serverIdentity: IdentityName {
        IdentityName(
            serviceAccount: serviceAccount, namespace: controlNamespace, controlNamespace: controlNamespace,
            trustDomain: trustDomain)
    }
}
