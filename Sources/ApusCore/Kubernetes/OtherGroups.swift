#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

// Kinds outside core/v1: discovery, coordination, authentication and admission registration.

/// discovery.k8s.io/v1 EndpointSlice: a chunk of a Service's endpoints.
public struct EndpointSlice: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "discovery.k8s.io", version: "v1", plural: "endpointslices", kind: "EndpointSlice", namespaced: true)

    /// Label naming the Service a slice belongs to.
    public static let serviceNameLabel = "kubernetes.io/service-name"

    public struct Conditions: Codable, Hashable, Sendable {
        /// nil means "unknown", which consumers treat as ready.
        public var ready: Bool?
        public var serving: Bool?
        public var terminating: Bool?
        public init(ready: Bool? = nil, serving: Bool? = nil, terminating: Bool? = nil) {
            self.ready = ready
            self.serving = serving
            self.terminating = terminating
        }
    }

    public struct Endpoint: Codable, Hashable, Sendable {
        public var addresses: [String]
        public var conditions: Conditions?
        public var hostname: String?
        public var nodeName: String?
        public var zone: String?
        public var targetRef: ObjectReference?
        public init(addresses: [String], conditions: Conditions? = nil, targetRef: ObjectReference? = nil) {
            self.addresses = addresses
            self.conditions = conditions
            self.targetRef = targetRef
        }
    }

    public struct Port: Codable, Hashable, Sendable {
        public var name: String?
        public var port: Int?
        public var `protocol`: String?
        public var appProtocol: String?
        public init(name: String? = nil, port: Int? = nil, protocol: String? = nil, appProtocol: String? = nil) {
            self.name = name
            self.port = port
            self.protocol = `protocol`
            self.appProtocol = appProtocol
        }
    }

    public var apiVersion: String? = "discovery.k8s.io/v1"
    public var kind: String? = "EndpointSlice"
    public var metadata: ObjectMeta
    /// IPv4, IPv6 or FQDN.
    public var addressType: String
    public var endpoints: [Endpoint]
    public var ports: [Port]?

    public init(
        metadata: ObjectMeta = ObjectMeta(), addressType: String = "IPv4", endpoints: [Endpoint] = [],
        ports: [Port]? = nil
    ) {
        self.metadata = metadata
        self.addressType = addressType
        self.endpoints = endpoints
        self.ports = ports
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        apiVersion = try c.decodeIfPresent(String.self, forKey: .apiVersion)
        kind = try c.decodeIfPresent(String.self, forKey: .kind)
        metadata = try c.decode(ObjectMeta.self, forKey: .metadata)
        addressType = try c.decode(String.self, forKey: .addressType)
        endpoints = try c.decodeIfPresent([Endpoint].self, forKey: .endpoints) ?? []
        ports = try c.decodeIfPresent([Port].self, forKey: .ports)
    }
}

/// coordination.k8s.io/v1 Lease, used for leader election.
public struct Lease: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "coordination.k8s.io", version: "v1", plural: "leases", kind: "Lease", namespaced: true)

    public struct Spec: Codable, Hashable, Sendable {
        public var holderIdentity: String?
        public var leaseDurationSeconds: Int?
        public var acquireTime: Timestamp?
        public var renewTime: Timestamp?
        public var leaseTransitions: Int?
        public init(
            holderIdentity: String? = nil, leaseDurationSeconds: Int? = nil, acquireTime: Timestamp? = nil,
            renewTime: Timestamp? = nil, leaseTransitions: Int? = nil
        ) {
            self.holderIdentity = holderIdentity
            self.leaseDurationSeconds = leaseDurationSeconds
            self.acquireTime = acquireTime
            self.renewTime = renewTime
            self.leaseTransitions = leaseTransitions
        }
    }

    public var apiVersion: String? = "coordination.k8s.io/v1"
    public var kind: String? = "Lease"
    public var metadata: ObjectMeta
    public var spec: Spec?

    public init(metadata: ObjectMeta = ObjectMeta(), spec: Spec? = nil) {
        self.metadata = metadata
        self.spec = spec
    }
}

/// authentication.k8s.io/v1 TokenReview: asks the API server who a bearer token belongs to.
public struct TokenReview: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "authentication.k8s.io", version: "v1", plural: "tokenreviews", kind: "TokenReview", namespaced: false)

    public struct Spec: Codable, Hashable, Sendable {
        public var token: String
        public var audiences: [String]?
        public init(token: String, audiences: [String]? = nil) {
            self.token = token
            self.audiences = audiences
        }
    }

    public struct UserInfo: Codable, Hashable, Sendable {
        /// `system:serviceaccount:<namespace>:<name>` for a ServiceAccount token.
        public var username: String?
        public var uid: String?
        public var groups: [String]?
        public var extra: [String: [String]]?
        public init(username: String? = nil, uid: String? = nil, groups: [String]? = nil) {
            self.username = username
            self.uid = uid
            self.groups = groups
        }
    }

    public struct Status: Codable, Hashable, Sendable {
        public var authenticated: Bool?
        public var user: UserInfo?
        public var audiences: [String]?
        public var error: String?
        public init(authenticated: Bool? = nil, user: UserInfo? = nil, audiences: [String]? = nil, error: String? = nil)
        {
            self.authenticated = authenticated
            self.user = user
            self.audiences = audiences
            self.error = error
        }
    }

    public var apiVersion: String? = "authentication.k8s.io/v1"
    public var kind: String? = "TokenReview"
    public var metadata: ObjectMeta
    public var spec: Spec
    public var status: Status?

    public init(metadata: ObjectMeta = ObjectMeta(), spec: Spec, status: Status? = nil) {
        self.metadata = metadata
        self.spec = spec
        self.status = status
    }
}

/// admissionregistration.k8s.io/v1 MutatingWebhookConfiguration, which registers the proxy injector.
public struct MutatingWebhookConfiguration: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "admissionregistration.k8s.io", version: "v1", plural: "mutatingwebhookconfigurations",
        kind: "MutatingWebhookConfiguration", namespaced: false)

    public struct ServiceReference: Codable, Hashable, Sendable {
        public var namespace: String
        public var name: String
        public var path: String?
        public var port: Int?
        public init(namespace: String, name: String, path: String? = nil, port: Int? = nil) {
            self.namespace = namespace
            self.name = name
            self.path = path
            self.port = port
        }
    }

    public struct ClientConfig: Codable, Hashable, Sendable {
        public var url: String?
        public var service: ServiceReference?
        public var caBundle: Data?
        public init(url: String? = nil, service: ServiceReference? = nil, caBundle: Data? = nil) {
            self.url = url
            self.service = service
            self.caBundle = caBundle
        }
    }

    public struct Rule: Codable, Hashable, Sendable {
        public var operations: [String]?
        public var apiGroups: [String]?
        public var apiVersions: [String]?
        public var resources: [String]?
        public var scope: String?
        public init(
            operations: [String]? = nil, apiGroups: [String]? = nil, apiVersions: [String]? = nil,
            resources: [String]? = nil, scope: String? = nil
        ) {
            self.operations = operations
            self.apiGroups = apiGroups
            self.apiVersions = apiVersions
            self.resources = resources
            self.scope = scope
        }
    }

    public struct LabelSelectorRequirement: Codable, Hashable, Sendable {
        public var key: String
        /// In, NotIn, Exists or DoesNotExist.
        public var `operator`: String
        public var values: [String]?
        public init(key: String, operator: String, values: [String]? = nil) {
            self.key = key
            self.operator = `operator`
            self.values = values
        }
    }

    public struct LabelSelector: Codable, Hashable, Sendable {
        public var matchLabels: [String: String]?
        public var matchExpressions: [LabelSelectorRequirement]?
        public init(matchLabels: [String: String]? = nil, matchExpressions: [LabelSelectorRequirement]? = nil) {
            self.matchLabels = matchLabels
            self.matchExpressions = matchExpressions
        }
    }

    public struct Webhook: Codable, Hashable, Sendable {
        public var name: String
        public var clientConfig: ClientConfig
        public var rules: [Rule]?
        /// Ignore or Fail.
        public var failurePolicy: String?
        public var matchPolicy: String?
        public var namespaceSelector: LabelSelector?
        public var objectSelector: LabelSelector?
        /// None or NoneOnDryRun.
        public var sideEffects: String
        public var timeoutSeconds: Int?
        public var admissionReviewVersions: [String]
        /// Never or IfNeeded.
        public var reinvocationPolicy: String?
        public init(
            name: String, clientConfig: ClientConfig, rules: [Rule]? = nil, sideEffects: String = "None",
            admissionReviewVersions: [String] = ["v1"]
        ) {
            self.name = name
            self.clientConfig = clientConfig
            self.rules = rules
            self.sideEffects = sideEffects
            self.admissionReviewVersions = admissionReviewVersions
        }
    }

    public var apiVersion: String? = "admissionregistration.k8s.io/v1"
    public var kind: String? = "MutatingWebhookConfiguration"
    public var metadata: ObjectMeta
    public var webhooks: [Webhook]?

    public init(metadata: ObjectMeta = ObjectMeta(), webhooks: [Webhook]? = nil) {
        self.metadata = metadata
        self.webhooks = webhooks
    }
}
