#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

// core/v1 kinds Apus reads or writes. Fields Apus has no use for are not modelled; decoding ignores them.
// Objects Apus does not own are changed with patches (never a full PUT of a decoded value) so that
// fields missing here are never dropped on the server.

public struct Namespace: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false)

    public struct Status: Codable, Hashable, Sendable {
        public var phase: String?
        public init(phase: String? = nil) { self.phase = phase }
    }

    public var apiVersion: String? = "v1"
    public var kind: String? = "Namespace"
    public var metadata: ObjectMeta
    public var status: Status?

    public init(metadata: ObjectMeta = ObjectMeta(), status: Status? = nil) {
        self.metadata = metadata
        self.status = status
    }
}

public struct EnvVar: Codable, Hashable, Sendable {
    public struct Source: Codable, Hashable, Sendable {
        public struct FieldRef: Codable, Hashable, Sendable {
            public var apiVersion: String?
            public var fieldPath: String
            public init(fieldPath: String) { self.fieldPath = fieldPath }
        }
        public struct KeyRef: Codable, Hashable, Sendable {
            public var name: String?
            public var key: String
            public var optional: Bool?
            public init(name: String?, key: String) {
                self.name = name
                self.key = key
            }
        }
        public var fieldRef: FieldRef?
        public var secretKeyRef: KeyRef?
        public var configMapKeyRef: KeyRef?
        public init(fieldRef: FieldRef? = nil, secretKeyRef: KeyRef? = nil, configMapKeyRef: KeyRef? = nil) {
            self.fieldRef = fieldRef
            self.secretKeyRef = secretKeyRef
            self.configMapKeyRef = configMapKeyRef
        }
    }

    public var name: String
    public var value: String?
    public var valueFrom: Source?

    public init(name: String, value: String? = nil, valueFrom: Source? = nil) {
        self.name = name
        self.value = value
        self.valueFrom = valueFrom
    }
}

public struct ContainerPort: Codable, Hashable, Sendable {
    public var name: String?
    public var containerPort: Int
    public var hostPort: Int?
    public var `protocol`: String?

    public init(name: String? = nil, containerPort: Int, protocol: String? = nil) {
        self.name = name
        self.containerPort = containerPort
        self.protocol = `protocol`
    }
}

public struct VolumeMount: Codable, Hashable, Sendable {
    public var name: String
    public var mountPath: String
    public var readOnly: Bool?
    public var subPath: String?

    public init(name: String, mountPath: String, readOnly: Bool? = nil) {
        self.name = name
        self.mountPath = mountPath
        self.readOnly = readOnly
    }
}

public struct ResourceRequirements: Codable, Hashable, Sendable {
    public var limits: [String: Quantity]?
    public var requests: [String: Quantity]?

    public init(limits: [String: Quantity]? = nil, requests: [String: Quantity]? = nil) {
        self.limits = limits
        self.requests = requests
    }
}

public struct Capabilities: Codable, Hashable, Sendable {
    public var add: [String]?
    public var drop: [String]?
    public init(add: [String]? = nil, drop: [String]? = nil) {
        self.add = add
        self.drop = drop
    }
}

public struct SecurityContext: Codable, Hashable, Sendable {
    public var runAsUser: Int64?
    public var runAsGroup: Int64?
    public var runAsNonRoot: Bool?
    public var readOnlyRootFilesystem: Bool?
    public var allowPrivilegeEscalation: Bool?
    public var privileged: Bool?
    public var capabilities: Capabilities?
    public init() {}
}

public struct PodSecurityContext: Codable, Hashable, Sendable {
    public var runAsUser: Int64?
    public var runAsGroup: Int64?
    public var runAsNonRoot: Bool?
    public var fsGroup: Int64?
    public var supplementalGroups: [Int64]?
    public init() {}
}

/// A probe; only the HTTP and TCP forms matter to the mesh (probes are rewritten to go through the proxy).
public struct Probe: Codable, Hashable, Sendable {
    public struct HTTPGet: Codable, Hashable, Sendable {
        public var path: String?
        public var port: IntOrString
        public var host: String?
        public var scheme: String?
        public init(path: String? = nil, port: IntOrString) {
            self.path = path
            self.port = port
        }
    }
    public struct TCPSocket: Codable, Hashable, Sendable {
        public var port: IntOrString
        public init(port: IntOrString) { self.port = port }
    }
    public var httpGet: HTTPGet?
    public var tcpSocket: TCPSocket?
    public var initialDelaySeconds: Int?
    public var periodSeconds: Int?
    public var timeoutSeconds: Int?
    public var failureThreshold: Int?
    public init(httpGet: HTTPGet? = nil, tcpSocket: TCPSocket? = nil) {
        self.httpGet = httpGet
        self.tcpSocket = tcpSocket
    }
}

public struct Container: Codable, Hashable, Sendable {
    public var name: String
    public var image: String?
    public var imagePullPolicy: String?
    public var command: [String]?
    public var args: [String]?
    public var workingDir: String?
    public var env: [EnvVar]?
    public var ports: [ContainerPort]?
    public var resources: ResourceRequirements?
    public var volumeMounts: [VolumeMount]?
    public var securityContext: SecurityContext?
    public var livenessProbe: Probe?
    public var readinessProbe: Probe?
    public var startupProbe: Probe?
    /// `Always` on an init container makes it a native sidecar (Kubernetes ≥ 1.29).
    public var restartPolicy: String?

    public init(name: String, image: String? = nil, command: [String]? = nil, args: [String]? = nil) {
        self.name = name
        self.image = image
        self.command = command
        self.args = args
    }
}

public struct Volume: Codable, Hashable, Sendable {
    public struct EmptyDir: Codable, Hashable, Sendable {
        public var medium: String?
        public var sizeLimit: Quantity?
        public init(medium: String? = nil) { self.medium = medium }
    }
    public struct SecretSource: Codable, Hashable, Sendable {
        public var secretName: String?
        public var optional: Bool?
        public init(secretName: String? = nil) { self.secretName = secretName }
    }
    public struct ConfigMapSource: Codable, Hashable, Sendable {
        public var name: String?
        public var optional: Bool?
        public init(name: String? = nil) { self.name = name }
    }
    public struct ProjectedSource: Codable, Hashable, Sendable {
        public struct Projection: Codable, Hashable, Sendable {
            public struct ServiceAccountToken: Codable, Hashable, Sendable {
                public var audience: String?
                public var expirationSeconds: Int64?
                public var path: String
                public init(audience: String? = nil, expirationSeconds: Int64? = nil, path: String) {
                    self.audience = audience
                    self.expirationSeconds = expirationSeconds
                    self.path = path
                }
            }
            public var serviceAccountToken: ServiceAccountToken?
            public var secret: JSONValue?
            public var configMap: JSONValue?
            public var downwardAPI: JSONValue?
            public init(serviceAccountToken: ServiceAccountToken? = nil) {
                self.serviceAccountToken = serviceAccountToken
            }
        }
        public var sources: [Projection]
        public var defaultMode: Int?
        public init(sources: [Projection]) { self.sources = sources }
    }

    public var name: String
    public var emptyDir: EmptyDir?
    public var secret: SecretSource?
    public var configMap: ConfigMapSource?
    public var projected: ProjectedSource?
    /// Any other volume source (hostPath, persistentVolumeClaim, …) kept as JSON.
    public var hostPath: JSONValue?
    public var persistentVolumeClaim: JSONValue?
    public var downwardAPI: JSONValue?

    public init(name: String) { self.name = name }
}

public struct PodSpec: Codable, Hashable, Sendable {
    public var containers: [Container]
    public var initContainers: [Container]?
    public var serviceAccountName: String?
    public var automountServiceAccountToken: Bool?
    public var hostNetwork: Bool?
    public var nodeName: String?
    public var restartPolicy: String?
    public var terminationGracePeriodSeconds: Int64?
    public var volumes: [Volume]?
    public var securityContext: PodSecurityContext?

    public init(containers: [Container] = []) { self.containers = containers }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        containers = try c.decodeIfPresent([Container].self, forKey: .containers) ?? []
        initContainers = try c.decodeIfPresent([Container].self, forKey: .initContainers)
        serviceAccountName = try c.decodeIfPresent(String.self, forKey: .serviceAccountName)
        automountServiceAccountToken = try c.decodeIfPresent(Bool.self, forKey: .automountServiceAccountToken)
        hostNetwork = try c.decodeIfPresent(Bool.self, forKey: .hostNetwork)
        nodeName = try c.decodeIfPresent(String.self, forKey: .nodeName)
        restartPolicy = try c.decodeIfPresent(String.self, forKey: .restartPolicy)
        terminationGracePeriodSeconds = try c.decodeIfPresent(Int64.self, forKey: .terminationGracePeriodSeconds)
        volumes = try c.decodeIfPresent([Volume].self, forKey: .volumes)
        securityContext = try c.decodeIfPresent(PodSecurityContext.self, forKey: .securityContext)
    }
}

public struct PodCondition: Codable, Hashable, Sendable {
    public var type: String
    public var status: String
    public var reason: String?
    public var message: String?
    public var lastTransitionTime: Timestamp?
    public init(type: String, status: String) {
        self.type = type
        self.status = status
    }
}

public struct ContainerStatus: Codable, Hashable, Sendable {
    public var name: String
    public var ready: Bool
    public var restartCount: Int
    public var image: String?
    public var containerID: String?
    public var started: Bool?
    public var state: JSONValue?
    public init(name: String, ready: Bool, restartCount: Int = 0) {
        self.name = name
        self.ready = ready
        self.restartCount = restartCount
    }
}

public struct PodIP: Codable, Hashable, Sendable {
    public var ip: String
    public init(ip: String) { self.ip = ip }
}

public struct PodStatus: Codable, Hashable, Sendable {
    /// Pending, Running, Succeeded, Failed or Unknown.
    public var phase: String?
    public var podIP: String?
    public var podIPs: [PodIP]?
    public var hostIP: String?
    public var conditions: [PodCondition]?
    public var containerStatuses: [ContainerStatus]?
    public var initContainerStatuses: [ContainerStatus]?
    public var startTime: Timestamp?
    public init(phase: String? = nil, podIP: String? = nil) {
        self.phase = phase
        self.podIP = podIP
        self.podIPs = podIP.map { [PodIP(ip: $0)] }
    }
}

public struct Pod: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true)

    public var apiVersion: String? = "v1"
    public var kind: String? = "Pod"
    public var metadata: ObjectMeta
    public var spec: PodSpec?
    public var status: PodStatus?

    public init(metadata: ObjectMeta = ObjectMeta(), spec: PodSpec? = nil, status: PodStatus? = nil) {
        self.metadata = metadata
        self.spec = spec
        self.status = status
    }
}

public struct ServicePort: Codable, Hashable, Sendable {
    public var name: String?
    public var port: Int
    public var targetPort: IntOrString?
    public var `protocol`: String?
    /// e.g. `http`, `kubernetes.io/h2c`, `kubernetes.io/ws`; a hint for protocol detection.
    public var appProtocol: String?
    public var nodePort: Int?

    public init(name: String? = nil, port: Int, targetPort: IntOrString? = nil, appProtocol: String? = nil) {
        self.name = name
        self.port = port
        self.targetPort = targetPort
        self.appProtocol = appProtocol
    }
}

public struct ServiceSpec: Codable, Hashable, Sendable {
    /// ClusterIP (default), NodePort, LoadBalancer or ExternalName.
    public var type: String?
    public var selector: [String: String]?
    public var ports: [ServicePort]?
    public var clusterIP: String?
    public var clusterIPs: [String]?
    public var externalName: String?
    public init(type: String? = nil, selector: [String: String]? = nil, ports: [ServicePort]? = nil) {
        self.type = type
        self.selector = selector
        self.ports = ports
    }

    /// A Service with `clusterIP: None` has no virtual IP; its DNS name resolves to the endpoints.
    public var isHeadless: Bool { clusterIP == "None" }
}

public struct Service: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "", version: "v1", plural: "services", kind: "Service", namespaced: true)

    public var apiVersion: String? = "v1"
    public var kind: String? = "Service"
    public var metadata: ObjectMeta
    public var spec: ServiceSpec?
    public var status: JSONValue?

    public init(metadata: ObjectMeta = ObjectMeta(), spec: ServiceSpec? = nil) {
        self.metadata = metadata
        self.spec = spec
    }
}

public struct ObjectReference: Codable, Hashable, Sendable {
    public var apiVersion: String?
    public var kind: String?
    public var namespace: String?
    public var name: String?
    public var uid: String?
    public var resourceVersion: String?
    public var fieldPath: String?
    public init(
        apiVersion: String? = nil, kind: String? = nil, namespace: String? = nil, name: String? = nil,
        uid: String? = nil
    ) {
        self.apiVersion = apiVersion
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.uid = uid
    }

    /// A reference to a typed object, as Events and EndpointSlice `targetRef`s carry.
    public init<R: KubernetesResource>(to object: R) {
        self.init(
            apiVersion: R.resourceType.apiVersion, kind: R.resourceType.kind, namespace: object.metadata.namespace,
            name: object.metadata.name, uid: object.metadata.uid)
        resourceVersion = object.metadata.resourceVersion
    }
}

public struct ServiceAccount: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "", version: "v1", plural: "serviceaccounts", kind: "ServiceAccount", namespaced: true)

    public var apiVersion: String? = "v1"
    public var kind: String? = "ServiceAccount"
    public var metadata: ObjectMeta
    public var automountServiceAccountToken: Bool?
    public var secrets: [ObjectReference]?

    public init(metadata: ObjectMeta = ObjectMeta()) { self.metadata = metadata }
}

/// A Secret. `data` values are raw bytes (base64 on the wire); never log them.
public struct Secret: KubernetesResource, Hashable, CustomStringConvertible {
    public static let resourceType = ResourceType(
        group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true)

    public var apiVersion: String? = "v1"
    public var kind: String? = "Secret"
    public var metadata: ObjectMeta
    /// e.g. `Opaque`, `kubernetes.io/tls`.
    public var type: String?
    public var data: [String: Data]?
    /// Write-only convenience field; the API server merges it into `data`.
    public var stringData: [String: String]?
    public var immutable: Bool?

    public init(metadata: ObjectMeta = ObjectMeta(), type: String? = nil, data: [String: Data]? = nil) {
        self.metadata = metadata
        self.type = type
        self.data = data
    }

    /// Names the keys but never the values, so a Secret printed by accident leaks nothing.
    public var description: String {
        "Secret(\(objectKey), type: \(type ?? "Opaque"), keys: \((data ?? [:]).keys.sorted()))"
    }
}

public struct ConfigMap: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true)

    public var apiVersion: String? = "v1"
    public var kind: String? = "ConfigMap"
    public var metadata: ObjectMeta
    public var data: [String: String]?
    public var binaryData: [String: Data]?
    public var immutable: Bool?

    public init(metadata: ObjectMeta = ObjectMeta(), data: [String: String]? = nil) {
        self.metadata = metadata
        self.data = data
    }
}

/// A core/v1 Event, as `kubectl describe` shows it.
public struct Event: KubernetesResource, Hashable {
    public static let resourceType = ResourceType(
        group: "", version: "v1", plural: "events", kind: "Event", namespaced: true)

    public struct Source: Codable, Hashable, Sendable {
        public var component: String?
        public var host: String?
        public init(component: String? = nil, host: String? = nil) {
            self.component = component
            self.host = host
        }
    }

    public var apiVersion: String? = "v1"
    public var kind: String? = "Event"
    public var metadata: ObjectMeta
    public var involvedObject: ObjectReference
    public var reason: String?
    public var message: String?
    /// `Normal` or `Warning`.
    public var type: String?
    public var count: Int?
    public var firstTimestamp: Timestamp?
    public var lastTimestamp: Timestamp?
    public var eventTime: Timestamp?
    public var source: Source?
    public var reportingComponent: String?
    public var reportingInstance: String?
    public var action: String?

    public init(
        metadata: ObjectMeta = ObjectMeta(), involvedObject: ObjectReference, reason: String? = nil,
        message: String? = nil, type: String? = nil
    ) {
        self.metadata = metadata
        self.involvedObject = involvedObject
        self.reason = reason
        self.message = message
        self.type = type
    }
}
