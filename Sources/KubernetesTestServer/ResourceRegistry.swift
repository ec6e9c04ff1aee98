import ApusCore

/// How the server treats one resource (one group/version/plural).
struct ResourceInfo: Sendable, Hashable {
    var type: ResourceType
    /// Whether `/status` exists: the main resource then ignores status changes and `/status` changes only status.
    var hasStatusSubresource: Bool
    /// Custom resources always track `metadata.generation`; built-ins only when they have a `spec`.
    var isCustomResource: Bool

    init(type: ResourceType, hasStatusSubresource: Bool, isCustomResource: Bool) {
        self.type = type
        self.hasStatusSubresource = hasStatusSubresource
        self.isCustomResource = isCustomResource
    }

    /// `pods` or `serviceprofiles.linkerd.io`, as the real server names resources in error messages.
    var qualifiedPlural: String { type.group.isEmpty ? type.plural : "\(type.plural).\(type.group)" }

    /// All versions of one group/plural share storage, as all versions of a CRD do in etcd.
    var storageKey: StorageKey { StorageKey(group: type.group, plural: type.plural) }
}

struct StorageKey: Hashable, Sendable {
    var group: String
    var plural: String
}

/// The resources the server serves, looked up by the URL parts.
struct ResourceRegistry: Sendable {
    private var resources: [String: ResourceInfo] = [:]

    static func path(group: String, version: String, plural: String) -> String { "\(group)/\(version)/\(plural)" }

    func lookup(group: String, version: String, plural: String) -> ResourceInfo? {
        resources[Self.path(group: group, version: version, plural: plural)]
    }

    mutating func register(_ info: ResourceInfo) {
        resources[Self.path(group: info.type.group, version: info.type.version, plural: info.type.plural)] = info
    }

    /// The built-in kinds a kube-apiserver serves (scope and status subresource as in Kubernetes 1.30), the
    /// ApusCore kinds, and the Linkerd and Gateway API CRDs Apus reads.
    static var standard: ResourceRegistry {
        var registry = ResourceRegistry()
        func add(
            _ group: String, _ version: String, _ plural: String, _ kind: String, namespaced: Bool = true,
            status: Bool = false, custom: Bool = false
        ) {
            registry.register(
                ResourceInfo(
                    type: ResourceType(
                        group: group, version: version, plural: plural, kind: kind, namespaced: namespaced),
                    hasStatusSubresource: status, isCustomResource: custom))
        }
        add("", "v1", "pods", "Pod", status: true)
        add("", "v1", "services", "Service", status: true)
        add("", "v1", "endpoints", "Endpoints")
        add("", "v1", "namespaces", "Namespace", namespaced: false, status: true)
        add("", "v1", "nodes", "Node", namespaced: false, status: true)
        add("", "v1", "configmaps", "ConfigMap")
        add("", "v1", "secrets", "Secret")
        add("", "v1", "serviceaccounts", "ServiceAccount")
        add("", "v1", "events", "Event")
        add("", "v1", "persistentvolumes", "PersistentVolume", namespaced: false, status: true)
        add("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", status: true)
        add("", "v1", "replicationcontrollers", "ReplicationController", status: true)
        add("", "v1", "resourcequotas", "ResourceQuota", status: true)
        add("", "v1", "limitranges", "LimitRange")
        add("apps", "v1", "deployments", "Deployment", status: true)
        add("apps", "v1", "statefulsets", "StatefulSet", status: true)
        add("apps", "v1", "daemonsets", "DaemonSet", status: true)
        add("apps", "v1", "replicasets", "ReplicaSet", status: true)
        add("apps", "v1", "controllerrevisions", "ControllerRevision")
        add("batch", "v1", "jobs", "Job", status: true)
        add("batch", "v1", "cronjobs", "CronJob", status: true)
        add("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
        add("coordination.k8s.io", "v1", "leases", "Lease")
        add("events.k8s.io", "v1", "events", "Event")
        add("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", namespaced: false)
        add("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", namespaced: false)
        add("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", namespaced: false)
        add(
            "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration",
            namespaced: false)
        add(
            "admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", "ValidatingWebhookConfiguration",
            namespaced: false)
        add(
            "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced: false,
            status: true)
        add("rbac.authorization.k8s.io", "v1", "roles", "Role")
        add("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
        add("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced: false)
        add("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced: false)
        add("networking.k8s.io", "v1", "ingresses", "Ingress", status: true)
        add("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
        add("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", status: true)
        add("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", namespaced: false)
        add("storage.k8s.io", "v1", "storageclasses", "StorageClass", namespaced: false)
        add(
            "certificates.k8s.io", "v1", "certificatesigningrequests", "CertificateSigningRequest",
            namespaced: false, status: true)
        // Linkerd CRDs: both ServiceProfile versions are served from one storage, as the CRD declares them.
        add("linkerd.io", "v1alpha2", "serviceprofiles", "ServiceProfile", status: true, custom: true)
        add("linkerd.io", "v1alpha1", "serviceprofiles", "ServiceProfile", status: true, custom: true)
        add("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", status: true, custom: true)
        add("policy.linkerd.io", "v1beta3", "servers", "Server", custom: true)
        add("policy.linkerd.io", "v1alpha1", "authorizationpolicies", "AuthorizationPolicy", custom: true)
        add("policy.linkerd.io", "v1beta1", "serverauthorizations", "ServerAuthorization", custom: true)
        add("policy.linkerd.io", "v1beta3", "httproutes", "HTTPRoute", status: true, custom: true)
        // The ApusCore kinds, so a kind added there with a new plural is served without editing this table.
        let apusCoreTypes: [ResourceType] = [
            Namespace.resourceType, Pod.resourceType, Service.resourceType, ServiceAccount.resourceType,
            Secret.resourceType, ConfigMap.resourceType, Event.resourceType, EndpointSlice.resourceType,
            Lease.resourceType, TokenReview.resourceType, MutatingWebhookConfiguration.resourceType,
        ]
        for type in apusCoreTypes
        where registry.lookup(group: type.group, version: type.version, plural: type.plural) == nil {
            registry.register(ResourceInfo(type: type, hasStatusSubresource: false, isCustomResource: false))
        }
        return registry
    }
}

extension ResourceRegistry {
    /// Every served group/version/plural, for the discovery documents.
    var all: [ResourceInfo] { Array(resources.values) }
}
