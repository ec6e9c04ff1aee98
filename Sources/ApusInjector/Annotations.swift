/// Annotation, label and object names shared with Linkerd, so that Linkerd's tooling (`linkerd check`, viz,
/// dashboards) recognizes pods injected by Apus.
public enum InjectorNames {
    public static let inject = "linkerd.io/inject"
    public static let proxyVersion = "linkerd.io/proxy-version"
    public static let createdBy = "linkerd.io/created-by"
    public static let trustRootSHA256 = "linkerd.io/trust-root-sha256"
    public static let identityMode = "linkerd.io/identity-mode"
    public static let controlPlaneNamespace = "linkerd.io/control-plane-ns"
    public static let workloadNamespace = "linkerd.io/workload-ns"
    /// Labels `linkerd.io/proxy-deployment`, `…-statefulset` etc. start with this.
    public static let proxyOwnerLabelPrefix = "linkerd.io/proxy-"
    /// The namespace label by which a namespace opts out of every Linkerd admission webhook.
    public static let admissionWebhooks = "config.linkerd.io/admission-webhooks"

    public static let proxyContainer = "linkerd-proxy"
    /// Container port names of the proxy: inbound, admin (metrics, probes) and control (tap).
    public static let inboundPortName = "linkerd-proxy"
    public static let adminPortName = "linkerd-admin"
    public static let tapPortName = "linkerd-tap"
    public static let initContainer = "linkerd-init"
    /// Names of proxy containers that mark a pod as injected already (Linkerd's and Apus's own).
    public static let proxyContainerNames: Set<String> = ["linkerd-proxy", "apus-proxy"]
    public static let initContainerNames: Set<String> = ["linkerd-init", "apus-init"]
    public static let endEntityVolume = "linkerd-identity-end-entity"
    public static let tokenVolume = "linkerd-identity-token"
    public static let xtablesLockVolume = "linkerd-proxy-init-xtables-lock"
    public static let injectedVolumes: Set<String> = [endEntityVolume, tokenVolume, xtablesLockVolume]

    public static let endEntityDirectory = "/var/run/linkerd/identity/end-entity"
    public static let tokenDirectory = "/var/run/secrets/tokens"
    public static let tokenFileName = "linkerd-identity-token"
    public static let defaultTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    /// The audience the identity service's TokenReview asks for.
    public static let tokenAudience = "identity.l5d.io"
    public static let tokenExpirationSeconds: Int64 = 86400

    /// Every `config.linkerd.io/*` key the injector reads.
    public enum Config {
        public static let proxyImage = "config.linkerd.io/proxy-image"
        public static let proxyVersion = "config.linkerd.io/proxy-version"
        public static let imagePullPolicy = "config.linkerd.io/image-pull-policy"
        public static let inboundPort = "config.linkerd.io/inbound-port"
        public static let outboundPort = "config.linkerd.io/outbound-port"
        public static let adminPort = "config.linkerd.io/admin-port"
        public static let controlPort = "config.linkerd.io/control-port"
        public static let skipInboundPorts = "config.linkerd.io/skip-inbound-ports"
        public static let skipOutboundPorts = "config.linkerd.io/skip-outbound-ports"
        public static let skipSubnets = "config.linkerd.io/skip-subnets"
        public static let opaquePorts = "config.linkerd.io/opaque-ports"
        public static let cpuRequest = "config.linkerd.io/proxy-cpu-request"
        public static let cpuLimit = "config.linkerd.io/proxy-cpu-limit"
        public static let memoryRequest = "config.linkerd.io/proxy-memory-request"
        public static let memoryLimit = "config.linkerd.io/proxy-memory-limit"
        public static let proxyUID = "config.linkerd.io/proxy-uid"
        public static let logLevel = "config.linkerd.io/proxy-log-level"
        public static let logFormat = "config.linkerd.io/proxy-log-format"
        public static let outboundConnectTimeout = "config.linkerd.io/proxy-outbound-connect-timeout"
        public static let inboundConnectTimeout = "config.linkerd.io/proxy-inbound-connect-timeout"
        public static let defaultInboundPolicy = "config.linkerd.io/default-inbound-policy"
        public static let proxyAwait = "config.linkerd.io/proxy-await"
        public static let nativeSidecar = "config.linkerd.io/proxy-enable-native-sidecar"
        /// Deprecated spellings Linkerd still honours.
        public static let nativeSidecarAlpha = "config.alpha.linkerd.io/proxy-enable-native-sidecar"
        public static let nativeSidecarBeta = "config.beta.linkerd.io/proxy-enable-native-sidecar"
        public static let shutdownGracePeriod = "config.linkerd.io/shutdown-grace-period"
        public static let additionalEnv = "config.linkerd.io/proxy-additional-env"
        /// `"true"` on the pod or its namespace: the proxy gets no tap identity and no tap port, so nobody can
        /// watch its requests (Linkerd's tap injector honours the same key).
        public static let disableTap = "config.linkerd.io/disable-tap"
    }
}
