import ApusCore

/// How a pod joins the mesh.
public enum InjectMode: String, Hashable, Sendable {
    /// `linkerd.io/inject: enabled`.
    case enabled
    /// `linkerd.io/inject: ingress`: for ingress controllers, which route by the request's `Host`; injected like
    /// `enabled` (the Apus proxy has no separate ingress mode yet).
    case ingress
}

/// Whether a pod gets the proxy.
public enum InjectionDecision: Hashable, Sendable {
    case inject(mode: InjectMode)
    /// `reason` is one of the fixed ``SkipReason`` texts, so it can label a metric; details go to warnings.
    case skip(reason: String)

    public var isInject: Bool {
        if case .inject = self { return true }
        return false
    }
}

/// The fixed reasons for not injecting, worded like Linkerd's report (`pkg/inject/report.go`).
public enum SkipReason {
    public static let notEnabled =
        "neither the namespace nor the pod has the annotation \"linkerd.io/inject: enabled\""
    public static let disabledByPod = "the pod has the annotation \"linkerd.io/inject: disabled\""
    public static let disabledByNamespace = "the namespace has the annotation \"linkerd.io/inject: disabled\""
    public static let invalidAnnotation = "the annotation \"linkerd.io/inject\" has an invalid value"
    public static let hostNetwork = "hostNetwork is enabled"
    public static let alreadyInjected = "pod has a sidecar injected already"
    public static let kubeSystem = "pods in kube-system are never injected"
    public static let controlPlaneNamespace = "pods in the control-plane namespace are never injected"
    public static let noServiceAccountToken =
        "automountServiceAccountToken is false and ServiceAccount token projection is disabled"
    public static let notAPod = "the object is not a pod or pod template"
    public static let patchFailed = "the injection patch could not be built"
}

/// The workload that owns a pod, for the `linkerd.io/proxy-<kind>: <name>` label.
public struct WorkloadOwner: Hashable, Sendable {
    /// Lower-case kind: `deployment`, `statefulset`, `daemonset`, `replicaset`, `job`, `cronjob`,
    /// `replicationcontroller` or `pod`.
    public var kind: String
    public var name: String

    public init(kind: String, name: String) {
        self.kind = kind.lowercased()
        self.name = name
    }

    /// The label key, e.g. `linkerd.io/proxy-deployment`.
    public var labelKey: String { InjectorNames.proxyOwnerLabelPrefix + kind }

    /// The pod's controlling owner; a ReplicaSet whose name is `<deployment>-<pod-template-hash>` counts as its
    /// Deployment (the webhook cannot afford an API call to look the ReplicaSet up).
    public static func of(podMetadata metadata: JSONValue?) -> WorkloadOwner? {
        let owners = metadata?["ownerReferences"]?.arrayValue ?? []
        let controller = owners.first { $0["controller"]?.boolValue == true } ?? owners.first
        guard let controller, let kind = controller["kind"]?.stringValue, let name = controller["name"]?.stringValue
        else { return nil }
        switch kind {
        case "ReplicaSet":
            if let hash = metadata?["labels"]?["pod-template-hash"]?.stringValue, name.hasSuffix("-\(hash)") {
                return WorkloadOwner(kind: "deployment", name: String(name.dropLast(hash.count + 1)))
            }
            return WorkloadOwner(kind: "replicaset", name: name)
        case "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicationController", "Deployment":
            return WorkloadOwner(kind: kind, name: name)
        default:
            return nil
        }
    }
}

/// The outcome of one injection.
public struct InjectionResult: Sendable {
    public var decision: InjectionDecision
    /// RFC 6902 operations relative to the object given (a Pod, or a pod template for
    /// ``ProxyInjector/injectTemplate(_:owner:namespace:)``); empty when skipped. They apply cleanly to the
    /// original object, unknown fields included.
    public var patch: [JSONPatchOperation]
    /// Invalid annotation values (and the value used instead), UDP ports the proxy cannot carry, missing anchors.
    public var warnings: [String]
    /// The object after the patch, every field of the input kept.
    public var injectedObject: JSONValue?
    /// ``injectedObject`` as a typed Pod (fields the model does not know are not in it; use ``injectedObject`` to
    /// write). Decoded on each access rather than with the result: decoding the typed model costs several times
    /// the injection itself, and the admission webhook, which answers with the patch only, never needs it.
    public var injectedPod: Pod? { try? injectedObject?.decode(as: Pod.self) }

    public init(
        decision: InjectionDecision, patch: [JSONPatchOperation] = [], warnings: [String] = [],
        injectedObject: JSONValue? = nil
    ) {
        self.decision = decision
        self.patch = patch
        self.warnings = warnings
        self.injectedObject = injectedObject
    }
}

/// The outcome of removing the proxy from a pod or template.
public struct UninjectionResult: Sendable {
    /// False when there was nothing to remove.
    public var changed: Bool
    public var patch: [JSONPatchOperation]
    public var uninjectedObject: JSONValue
    public var warnings: [String]

    public init(changed: Bool, patch: [JSONPatchOperation], uninjectedObject: JSONValue, warnings: [String] = []) {
        self.changed = changed
        self.patch = patch
        self.uninjectedObject = uninjectedObject
        self.warnings = warnings
    }
}
