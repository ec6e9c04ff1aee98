import ApusCore

/// The cluster-wide proxy settings the injector starts from (Linkerd's Helm `proxy.*` values); every field that has
/// a `config.linkerd.io/*` annotation can be overridden per namespace or workload.
///
/// The control-plane addresses default from ``controlPlaneNamespace`` and ``clusterDomain``; the controller passes
/// its own flags here so that webhook and `apus inject --manual` render the same pod.
public struct InjectorDefaults: Sendable, Hashable {
    public struct Ports: Sendable, Hashable {
        public var inbound: Int
        public var outbound: Int
        public var admin: Int
        public var control: Int

        public init(inbound: Int = 4143, outbound: Int = 4140, admin: Int = 4191, control: Int = 4190) {
            self.inbound = inbound
            self.outbound = outbound
            self.admin = admin
            self.control = control
        }
    }

    /// Requests and limits of the proxy container; nil leaves the quantity unset (the namespace's LimitRange applies).
    public struct Resources: Sendable, Hashable {
        public var cpuRequest: Quantity?
        public var cpuLimit: Quantity?
        public var memoryRequest: Quantity?
        public var memoryLimit: Quantity?

        public init(
            cpuRequest: Quantity? = nil, cpuLimit: Quantity? = nil, memoryRequest: Quantity? = nil,
            memoryLimit: Quantity? = nil
        ) {
            self.cpuRequest = cpuRequest
            self.cpuLimit = cpuLimit
            self.memoryRequest = memoryRequest
            self.memoryLimit = memoryLimit
        }
    }

    public var proxyImage: String
    public var proxyVersion: String
    public var imagePullPolicy: String
    public var ports: Ports
    public var proxyUID: Int64
    /// Linkerd filter syntax is accepted (`warn,apus=info`); the proxy uses the last bare level.
    public var logLevel: String
    /// `plain` or `json`.
    public var logFormat: String
    public var resources: Resources
    public var controlPlaneNamespace: String
    public var trustDomain: String
    public var clusterDomain: String
    /// `host:port` of the identity service and the identity its serving certificate names.
    public var identityAddress: String
    public var identityServerName: String
    public var destinationAddress: String
    public var destinationServerName: String
    /// The mesh identity allowed to tap every injected proxy (`APUS_PROXY_TAP_SVC_NAME`): the controller's
    /// ServiceAccount, `apus-controller.<ns>.serviceaccount.identity.<ns>.<trust-domain>`, as Linkerd names its tap
    /// server's.
    public var tapServerName: String
    /// The PEM bundle every proxy trusts; its SHA-256 becomes `linkerd.io/trust-root-sha256` so that pods still
    /// running with old anchors can be found after a rotation.
    public var trustAnchorsPEM: String
    /// Proxy as an init container with `restartPolicy: Always` (Kubernetes ≥ 1.29): it starts before and stops
    /// after the application, which fixes Jobs that never finish and apps that start before the proxy.
    public var nativeSidecar: Bool
    /// Hold the application back until the proxy is ready (startupProbe for native sidecars, postStart otherwise).
    public var proxyAwait: Bool
    public var outboundConnectTimeout: GoDuration
    public var inboundConnectTimeout: GoDuration
    /// nil: the proxy's own default (2m).
    public var shutdownGracePeriod: GoDuration?
    public var defaultInboundPolicy: String
    /// Linkerd's default opaque list; `config.linkerd.io/opaque-ports` replaces it.
    public var opaquePorts: String
    public var skipInboundPorts: String
    public var skipOutboundPorts: String
    public var skipSubnets: String
    /// Extra environment for every proxy (Helm `proxy.additionalEnv`); namespace and workload add to it by name.
    public var additionalEnv: [JSONValue]
    /// The script that installs the iptables redirect inside the proxy image (`proxy-init/apus-proxy-init.sh`).
    public var proxyInitCommand: [String]
    /// The command a regular (non-native) proxy container's postStart hook runs to wait for readiness.
    public var proxyAwaitCommand: [String]
    /// When false the ServiceAccount's default token is used, and pods with `automountServiceAccountToken: false`
    /// cannot be injected (they would have no token to prove their identity with).
    public var serviceAccountTokenProjection: Bool
    /// `linkerd.io/created-by`: who injected the pod (`apus/proxy-injector 0.1.0` or `apus/cli 0.1.0`).
    public var createdBy: String

    public init(
        proxyImage: String = "ghcr.io/apus-mesh/apus-proxy", proxyVersion: String = ApusVersion.current,
        imagePullPolicy: String = "IfNotPresent", ports: Ports = Ports(), proxyUID: Int64 = 2102,
        logLevel: String = "warn,apus=info", logFormat: String = "plain", resources: Resources = Resources(),
        controlPlaneNamespace: String = "apus", trustDomain: String = "cluster.local",
        clusterDomain: String = "cluster.local", identityAddress: String? = nil, identityServerName: String? = nil,
        destinationAddress: String? = nil, destinationServerName: String? = nil, tapServerName: String? = nil,
        trustAnchorsPEM: String = "",
        nativeSidecar: Bool = true, proxyAwait: Bool = true,
        outboundConnectTimeout: GoDuration = GoDuration(nanoseconds: 1_000_000_000),
        inboundConnectTimeout: GoDuration = GoDuration(nanoseconds: 100_000_000),
        shutdownGracePeriod: GoDuration? = nil, defaultInboundPolicy: String = "all-unauthenticated",
        opaquePorts: String = "25,587,3306,4444,5432,6379,9300,11211", skipInboundPorts: String = "",
        skipOutboundPorts: String = "", skipSubnets: String = "", additionalEnv: [JSONValue] = [],
        proxyInitCommand: [String] = ["/usr/lib/apus/apus-proxy-init.sh"],
        proxyAwaitCommand: [String] = ["/usr/bin/apus-proxy", "await", "--timeout=2m"],
        serviceAccountTokenProjection: Bool = true, createdBy: String = "apus/proxy-injector \(ApusVersion.current)"
    ) {
        let ns = controlPlaneNamespace
        let identitySuffix = "serviceaccount.identity.\(ns).\(trustDomain)"
        self.proxyImage = proxyImage
        self.proxyVersion = proxyVersion
        self.imagePullPolicy = imagePullPolicy
        self.ports = ports
        self.proxyUID = proxyUID
        self.logLevel = logLevel
        self.logFormat = logFormat
        self.resources = resources
        self.controlPlaneNamespace = ns
        self.trustDomain = trustDomain
        self.clusterDomain = clusterDomain
        self.identityAddress = identityAddress ?? "apus-identity.\(ns).svc.\(clusterDomain).:8080"
        self.identityServerName = identityServerName ?? "apus-identity.\(ns).\(identitySuffix)"
        self.destinationAddress = destinationAddress ?? "apus-destination.\(ns).svc.\(clusterDomain).:8086"
        self.destinationServerName = destinationServerName ?? "apus-destination.\(ns).\(identitySuffix)"
        self.tapServerName = tapServerName ?? "apus-controller.\(ns).\(identitySuffix)"
        self.trustAnchorsPEM = trustAnchorsPEM
        self.nativeSidecar = nativeSidecar
        self.proxyAwait = proxyAwait
        self.outboundConnectTimeout = outboundConnectTimeout
        self.inboundConnectTimeout = inboundConnectTimeout
        self.shutdownGracePeriod = shutdownGracePeriod
        self.defaultInboundPolicy = defaultInboundPolicy
        self.opaquePorts = opaquePorts
        self.skipInboundPorts = skipInboundPorts
        self.skipOutboundPorts = skipOutboundPorts
        self.skipSubnets = skipSubnets
        self.additionalEnv = additionalEnv
        self.proxyInitCommand = proxyInitCommand
        self.proxyAwaitCommand = proxyAwaitCommand
        self.serviceAccountTokenProjection = serviceAccountTokenProjection
        self.createdBy = createdBy
    }
}
