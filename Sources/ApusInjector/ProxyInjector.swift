import ApusCore
import ApusX509

/// Decides whether a pod joins the mesh and renders the proxy into it: the one implementation behind the admission
/// webhook and `apus inject --manual`, so both produce the same pod.
///
/// It works on the object's JSON so that fields the typed model does not know (ephemeral containers, topology
/// spread constraints, new API fields) are never dropped: the result is a JSON patch of additions and removals that
/// applies to the original object.
///
/// ```swift
/// let injector = ProxyInjector(defaults: InjectorDefaults(trustAnchorsPEM: anchors))
/// let result = injector.inject(podJSON: admissionObject, namespace: namespaceFromCache)
/// if case .inject = result.decision { respond(patch: result.patch, warnings: result.warnings) }
/// ```
///
/// What an injected pod gets (see ``InjectorDefaults`` for the values):
/// - `linkerd-init`, first init container: `apus-proxy-init.sh` installs the iptables redirect
///   (inbound → inbound port, outbound → outbound port, skipping the proxy's UID, the admin and control ports and
///   the skip lists); capabilities NET_ADMIN and NET_RAW only.
/// - `linkerd-proxy`: a native sidecar (init container with `restartPolicy: Always` and a startupProbe on `/ready`)
///   or, with native sidecars off, the first container with a postStart hook that waits for readiness.
/// - Tap: `APUS_PROXY_TAP_SVC_NAME` (only the controller's identity may watch the proxy's requests) and the control
///   port as container port `linkerd-tap`, unless `config.linkerd.io/disable-tap: "true"` is on the pod or namespace.
/// - Volumes for the in-memory identity directory and the projected ServiceAccount token (`identity.l5d.io`).
/// - Labels `linkerd.io/control-plane-ns`, `linkerd.io/workload-ns`, `linkerd.io/proxy-<owner kind>` and
///   annotations `linkerd.io/proxy-version`, `linkerd.io/created-by`, `linkerd.io/trust-root-sha256`.
public struct ProxyInjector: Sendable {
    public let defaults: InjectorDefaults
    /// Hex SHA-256 of the trust anchors PEM; nil without anchors.
    public let trustRootSHA256: String?
    private let listDefaults: ParsedListDefaults

    /// Does the per-configuration work (anchor digest, default port lists) once: the webhook keeps one injector
    /// per set of anchors and calls it for every pod.
    public init(defaults: InjectorDefaults) {
        self.defaults = defaults
        let pem = defaults.trustAnchorsPEM
        trustRootSHA256 = pem.isEmpty ? nil : try? Digest.sha256Hex(pem)
        listDefaults = ParsedListDefaults(defaults)
    }

    // MARK: Webhook

    /// The webhook's decision: the pod's `linkerd.io/inject` wins over the namespace's.
    public func decide(pod: Pod, namespace: Namespace?) -> InjectionDecision {
        guard let json = try? JSONValue(encoding: pod) else { return .skip(reason: SkipReason.notAPod) }
        return decide(podJSON: json, namespace: namespace)
    }

    public func decide(podJSON: JSONValue, namespace: Namespace?) -> InjectionDecision {
        var warnings: [String] = []
        return decision(for: podJSON, context: .webhook(namespace), warnings: &warnings)
    }

    /// Injects a typed Pod. The patch is computed against the model's encoding, which lacks fields the model
    /// does not know; the webhook should prefer ``inject(podJSON:namespace:)`` with the admission object.
    public func inject(pod: Pod, namespace: Namespace?) -> InjectionResult {
        guard let json = try? JSONValue(encoding: pod) else {
            return InjectionResult(decision: .skip(reason: SkipReason.notAPod))
        }
        return inject(podJSON: json, namespace: namespace)
    }

    /// Injects a Pod given as JSON (the AdmissionReview's `request.object`). `namespace` is the pod's Namespace
    /// from the caller's cache (nil if unknown); its annotations decide injection and provide overrides.
    public func inject(podJSON: JSONValue, namespace: Namespace?) -> InjectionResult {
        let owner = WorkloadOwner.of(podMetadata: podJSON["metadata"])
        return run(podJSON, context: .webhook(namespace), owner: owner)
    }

    // MARK: CLI

    /// `apus inject --manual` for a pod template (`spec.template` of a workload, or a Pod itself): the namespace's
    /// `linkerd.io/inject` is ignored (as `linkerd inject` does) and only a pod-level `disabled` prevents injection;
    /// `namespace` still supplies overrides and the `linkerd.io/workload-ns` label when known.
    public func injectTemplate(_ template: JSONValue, owner: WorkloadOwner?, namespace: Namespace?) -> InjectionResult {
        run(template, context: .cli(namespace), owner: owner)
    }

    public func decideTemplate(_ template: JSONValue, namespace: Namespace?) -> InjectionDecision {
        var warnings: [String] = []
        return decision(for: template, context: .cli(namespace), warnings: &warnings)
    }

    // MARK: Uninject

    /// Removes what injection added: proxy and init containers (Linkerd's or Apus's names), their volumes, the
    /// `linkerd.io/*` annotations except `linkerd.io/inject: disabled`, and the labels injection sets.
    public func uninject(_ object: JSONValue) -> UninjectionResult {
        var builder = PatchBuilder(object)
        do {
            let proxyNames = InjectorNames.proxyContainerNames.union(InjectorNames.initContainerNames)
            let isInjected: (JSONValue) -> Bool = { proxyNames.contains($0["name"]?.stringValue ?? "") }
            try builder.removeElements(["spec", "initContainers"], where: isInjected)
            try builder.removeElements(["spec", "containers"], where: isInjected)
            try builder.removeElements(["spec", "volumes"]) {
                InjectorNames.injectedVolumes.contains($0["name"]?.stringValue ?? "")
            }
            try builder.removeEntries(["metadata", "annotations"]) { key, value in
                key.hasPrefix("linkerd.io/")
                    && !(key == InjectorNames.inject && value.stringValue == "disabled")
            }
            try builder.removeEntries(["metadata", "labels"]) { key, _ in
                key == InjectorNames.controlPlaneNamespace || key == InjectorNames.workloadNamespace
                    || key.hasPrefix(InjectorNames.proxyOwnerLabelPrefix)
            }
            // Injection creates a template's metadata when it has none; an empty one is left over from that.
            if builder.operations.count > 0, builder.value(at: ["metadata"]) == .object([:]) {
                try builder.remove(["metadata"])
            }
        } catch {
            return UninjectionResult(
                changed: false, patch: [], uninjectedObject: object,
                warnings: ["the proxy could not be removed: \(error)"])
        }
        return UninjectionResult(
            changed: !builder.operations.isEmpty, patch: builder.operations, uninjectedObject: builder.document)
    }

    // MARK: Decision

    enum Context {
        case webhook(Namespace?)
        case cli(Namespace?)

        var namespace: Namespace? {
            switch self {
            case .webhook(let namespace), .cli(let namespace): return namespace
            }
        }
    }

    func decision(for object: JSONValue, context: Context, warnings: inout [String]) -> InjectionDecision {
        guard let spec = object["spec"]?.objectValue else { return .skip(reason: SkipReason.notAPod) }
        let podValue = object["metadata"]?["annotations"]?[InjectorNames.inject]
        if let podValue, podValue.stringValue == nil {
            warnings.append("\(InjectorNames.inject) on the pod is not a string")
            return .skip(reason: SkipReason.invalidAnnotation)
        }
        let mode: InjectMode
        switch (podValue?.stringValue, context) {
        case ("enabled"?, _): mode = .enabled
        case ("ingress"?, _): mode = .ingress
        case ("disabled"?, _): return .skip(reason: SkipReason.disabledByPod)
        case (let value?, _):
            warnings.append(
                "\(InjectorNames.inject) on the pod: \"\(value)\" is not enabled, disabled or ingress; not injected")
            return .skip(reason: SkipReason.invalidAnnotation)
        case (nil, .cli):
            mode = .enabled
        case (nil, .webhook(let namespace)):
            switch namespace?.metadata.annotations?[InjectorNames.inject] {
            case "enabled"?: mode = .enabled
            case "ingress"?: mode = .ingress
            case "disabled"?: return .skip(reason: SkipReason.disabledByNamespace)
            case nil: return .skip(reason: SkipReason.notEnabled)
            case let value?:
                warnings.append(
                    "\(InjectorNames.inject) on namespace \(namespace?.metadata.name ?? "?"): \"\(value)\" is not "
                        + "enabled, disabled or ingress; not injected")
                return .skip(reason: SkipReason.invalidAnnotation)
            }
        }
        let namespaceName = namespaceName(of: object, context: context)
        if namespaceName == "kube-system" { return .skip(reason: SkipReason.kubeSystem) }
        if namespaceName == defaults.controlPlaneNamespace { return .skip(reason: SkipReason.controlPlaneNamespace) }
        if spec["hostNetwork"]?.boolValue == true { return .skip(reason: SkipReason.hostNetwork) }
        let containers = (spec["containers"]?.arrayValue ?? []) + (spec["initContainers"]?.arrayValue ?? [])
        let proxyNames = InjectorNames.proxyContainerNames
        if containers.contains(where: { proxyNames.contains($0["name"]?.stringValue ?? "") }) {
            return .skip(reason: SkipReason.alreadyInjected)
        }
        if spec["automountServiceAccountToken"]?.boolValue == false, !defaults.serviceAccountTokenProjection {
            return .skip(reason: SkipReason.noServiceAccountToken)
        }
        return .inject(mode: mode)
    }

    private func namespaceName(of object: JSONValue, context: Context) -> String? {
        object["metadata"]?["namespace"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
            ?? context.namespace?.metadata.name
    }

    // MARK: Rendering

    private func run(_ object: JSONValue, context: Context, owner: WorkloadOwner?) -> InjectionResult {
        var warnings: [String] = []
        let decision = decision(for: object, context: context, warnings: &warnings)
        guard case .inject(let mode) = decision else {
            return InjectionResult(decision: decision, warnings: warnings)
        }
        do {
            let builder = try render(
                object, mode: mode, namespace: context.namespace,
                namespaceName: namespaceName(of: object, context: context), owner: owner, warnings: &warnings)
            return InjectionResult(
                decision: decision, patch: builder.operations, warnings: warnings, injectedObject: builder.document)
        } catch {
            warnings.append("\(SkipReason.patchFailed): \(error)")
            return InjectionResult(decision: .skip(reason: SkipReason.patchFailed), warnings: warnings)
        }
    }

    private func render(
        _ object: JSONValue, mode: InjectMode, namespace: Namespace?, namespaceName: String?,
        owner: WorkloadOwner?, warnings: inout [String]
    ) throws(JSONPatchError) -> PatchBuilder {
        let spec = object["spec"] ?? .object([:])
        let containers = spec["containers"]?.arrayValue ?? []
        var namedPorts: [String: Int] = [:]
        for container in containers + (spec["initContainers"]?.arrayValue ?? []) {
            for port in container["ports"]?.arrayValue ?? [] {
                guard let number = port["containerPort"]?.doubleValue.map({ Int($0) }) else { continue }
                if let name = port["name"]?.stringValue { namedPorts[name] = number }
                if port["protocol"]?.stringValue == "UDP" {
                    let containerName = container["name"]?.stringValue ?? "?"
                    warnings.append(
                        "container \(containerName) port \(number)/UDP is not proxied: the proxy carries TCP only")
                }
            }
        }
        var resolver = ConfigResolver(
            pod: Self.stringMap(object["metadata"]?["annotations"]), podSource: "the pod",
            namespace: namespace?.metadata.annotations, namespaceName: namespace?.metadata.name ?? namespaceName,
            namedPorts: namedPorts)
        var config = ResolvedProxyConfig.resolve(defaults: defaults, lists: listDefaults, resolver: &resolver)
        warnings += resolver.warnings
        let ports = config.ports
        if Set([ports.inbound, ports.outbound, ports.admin, ports.control]).count < 4 {
            warnings.append(
                "the proxy ports collide (inbound \(ports.inbound), outbound \(ports.outbound), admin "
                    + "\(ports.admin), control \(ports.control)); using \(defaults.ports.inbound), "
                    + "\(defaults.ports.outbound), \(defaults.ports.admin), \(defaults.ports.control)")
            config.ports = defaults.ports
        }
        if defaults.trustAnchorsPEM.isEmpty {
            warnings.append("no trust anchors are configured: the proxy runs without mesh identity (no mTLS)")
        }

        var builder = PatchBuilder(object)
        try builder.ensureObject(["metadata"])
        var annotations = [
            InjectorNames.createdBy: defaults.createdBy,
            InjectorNames.proxyVersion: config.version,
            InjectorNames.identityMode: trustRootSHA256 == nil ? "disabled" : "default",
        ]
        if let trustRootSHA256 { annotations[InjectorNames.trustRootSHA256] = trustRootSHA256 }
        try builder.setEntries(["metadata", "annotations"], annotations)
        var labels = [InjectorNames.controlPlaneNamespace: defaults.controlPlaneNamespace]
        if let namespaceName { labels[InjectorNames.workloadNamespace] = namespaceName }
        if let owner { labels[owner.labelKey] = owner.name }
        try builder.setEntries(["metadata", "labels"], labels)

        let proxy = proxyContainer(config, mode: mode)
        let initContainer = initContainer(config)
        if config.nativeSidecar {
            try builder.prepend(["spec", "initContainers"], [initContainer, proxy])
        } else {
            try builder.prepend(["spec", "initContainers"], [initContainer])
            try builder.prepend(["spec", "containers"], [proxy])
        }
        var volumes: [JSONValue] = [
            .object([
                "name": .string(InjectorNames.endEntityVolume),
                "emptyDir": .object(["medium": .string("Memory")]),
            ]),
            .object(["name": .string(InjectorNames.xtablesLockVolume), "emptyDir": .object([:])]),
        ]
        if defaults.serviceAccountTokenProjection {
            volumes.append(
                .object([
                    "name": .string(InjectorNames.tokenVolume),
                    "projected": .object([
                        "sources": .array([
                            .object([
                                "serviceAccountToken": .object([
                                    "audience": .string(InjectorNames.tokenAudience),
                                    "expirationSeconds": .number(Double(InjectorNames.tokenExpirationSeconds)),
                                    "path": .string(InjectorNames.tokenFileName),
                                ])
                            ])
                        ])
                    ]),
                ]))
        }
        try builder.append(["spec", "volumes"], volumes)
        return builder
    }

    static func stringMap(_ value: JSONValue?) -> [String: String] {
        (value?.objectValue ?? [:]).compactMapValues(\.stringValue)
    }

    // MARK: Containers

    private static let runtimeDefaultSeccomp: JSONValue = .object(["type": .string("RuntimeDefault")])

    private func resources(_ config: ResolvedProxyConfig) -> JSONValue? {
        var requests: [String: JSONValue] = [:]
        var limits: [String: JSONValue] = [:]
        if let value = config.resources.cpuRequest { requests["cpu"] = .string(value.string) }
        if let value = config.resources.memoryRequest { requests["memory"] = .string(value.string) }
        if let value = config.resources.cpuLimit { limits["cpu"] = .string(value.string) }
        if let value = config.resources.memoryLimit { limits["memory"] = .string(value.string) }
        var result: [String: JSONValue] = [:]
        if !requests.isEmpty { result["requests"] = .object(requests) }
        if !limits.isEmpty { result["limits"] = .object(limits) }
        return result.isEmpty ? nil : .object(result)
    }

    private func httpProbe(_ path: String, port: Int, _ extra: [String: Double]) -> JSONValue {
        var probe: [String: JSONValue] = [
            "httpGet": .object(["path": .string(path), "port": .number(Double(port))])
        ]
        for (key, value) in extra { probe[key] = .number(value) }
        return .object(probe)
    }

    private func proxyContainer(_ config: ResolvedProxyConfig, mode: InjectMode) -> JSONValue {
        let ports = config.ports
        var mounts: [JSONValue] = [
            .object([
                "name": .string(InjectorNames.endEntityVolume),
                "mountPath": .string(InjectorNames.endEntityDirectory),
            ])
        ]
        if defaults.serviceAccountTokenProjection {
            mounts.append(
                .object([
                    "name": .string(InjectorNames.tokenVolume),
                    "mountPath": .string(InjectorNames.tokenDirectory),
                    "readOnly": .bool(true),
                ]))
        }
        var container: [String: JSONValue] = [
            "name": .string(InjectorNames.proxyContainer),
            "image": .string(config.imageReference),
            "imagePullPolicy": .string(config.imagePullPolicy),
            "env": .array(proxyEnvironment(config)),
            "ports": .array(containerPorts(config)),
            "livenessProbe": httpProbe("/live", port: ports.admin, ["initialDelaySeconds": 10, "timeoutSeconds": 1]),
            "readinessProbe": httpProbe(
                "/ready", port: ports.admin, ["initialDelaySeconds": 2, "timeoutSeconds": 1]),
            "securityContext": .object([
                "allowPrivilegeEscalation": .bool(false),
                "capabilities": .object(["drop": .array([.string("ALL")])]),
                "privileged": .bool(false),
                "readOnlyRootFilesystem": .bool(true),
                "runAsNonRoot": .bool(true),
                "runAsUser": .number(Double(config.proxyUID)),
                "runAsGroup": .number(Double(config.proxyUID)),
                "seccompProfile": Self.runtimeDefaultSeccomp,
            ]),
            "terminationMessagePolicy": .string("FallbackToLogsOnError"),
            "volumeMounts": .array(mounts),
        ]
        if let resources = resources(config) { container["resources"] = resources }
        if config.nativeSidecar {
            container["restartPolicy"] = .string("Always")
            if config.proxyAwait {
                container["startupProbe"] = httpProbe(
                    "/ready", port: ports.admin,
                    ["initialDelaySeconds": 0, "periodSeconds": 1, "failureThreshold": 120])
            }
        } else if config.proxyAwait {
            let command = defaults.proxyAwaitCommand + ["--port=\(ports.admin)"]
            container["lifecycle"] = .object([
                "postStart": .object(["exec": .object(["command": .array(command.map { .string($0) })])])
            ])
        }
        return .object(container)
    }

    /// Named so `kubectl port-forward pod/x linkerd-tap` and network policies can refer to them; the control
    /// (tap) port only where tap is on.
    private func containerPorts(_ config: ResolvedProxyConfig) -> [JSONValue] {
        func port(_ name: String, _ number: Int) -> JSONValue {
            .object(["name": .string(name), "containerPort": .number(Double(number))])
        }
        var ports = [
            port(InjectorNames.inboundPortName, config.ports.inbound),
            port(InjectorNames.adminPortName, config.ports.admin),
        ]
        if !config.tapDisabled { ports.append(port(InjectorNames.tapPortName, config.ports.control)) }
        return ports
    }

    private func initContainer(_ config: ResolvedProxyConfig) -> JSONValue {
        let ports = config.ports
        let ignoredInbound =
            [PortRange(ports.control, ports.control), PortRange(ports.admin, ports.admin)]
            + config.skipInboundPorts
        var args = [
            "--incoming-proxy-port", String(ports.inbound),
            "--outgoing-proxy-port", String(ports.outbound),
            "--proxy-uid", String(config.proxyUID),
            "--inbound-ports-to-ignore", ignoredInbound.listText,
        ]
        if !config.skipOutboundPorts.isEmpty {
            args += ["--outbound-ports-to-ignore", config.skipOutboundPorts.listText]
        }
        if !config.skipSubnets.isEmpty {
            args += ["--subnets-to-ignore", config.skipSubnets.joined(separator: ",")]
        }
        var container: [String: JSONValue] = [
            "name": .string(InjectorNames.initContainer),
            "image": .string(config.imageReference),
            "imagePullPolicy": .string(config.imagePullPolicy),
            "command": .array(defaults.proxyInitCommand.map { .string($0) }),
            "args": .array(args.map { .string($0) }),
            "securityContext": .object([
                "allowPrivilegeEscalation": .bool(false),
                "capabilities": .object([
                    "add": .array([.string("NET_ADMIN"), .string("NET_RAW")]),
                    "drop": .array([.string("ALL")]),
                ]),
                "privileged": .bool(false),
                "readOnlyRootFilesystem": .bool(true),
                "runAsNonRoot": .bool(true),
                "runAsUser": .number(65534),
                "runAsGroup": .number(65534),
                "seccompProfile": Self.runtimeDefaultSeccomp,
            ]),
            "terminationMessagePolicy": .string("FallbackToLogsOnError"),
            "volumeMounts": .array([
                .object(["name": .string(InjectorNames.xtablesLockVolume), "mountPath": .string("/run")])
            ]),
        ]
        if let resources = resources(config) { container["resources"] = resources }
        return .object(container)
    }

    /// The `APUS_PROXY_*` contract (`.tmp/proxy-contract.md`); `$(VAR)` references only point at variables defined
    /// earlier in the list, which is when Kubernetes expands them.
    private func proxyEnvironment(_ config: ResolvedProxyConfig) -> [JSONValue] {
        func field(_ name: String, _ path: String) -> JSONValue {
            .object(["name": .string(name), "valueFrom": .object(["fieldRef": .object(["fieldPath": .string(path)])])])
        }
        func plain(_ name: String, _ value: String) -> JSONValue {
            .object(["name": .string(name), "value": .string(value)])
        }
        let ports = config.ports
        var env: [JSONValue] = [
            field("_pod_name", "metadata.name"),
            field("_pod_ns", "metadata.namespace"),
            field("_pod_nodeName", "spec.nodeName"),
            field("_pod_sa", "spec.serviceAccountName"),
            plain("POD_NAME", "$(_pod_name)"),
            plain("POD_NAMESPACE", "$(_pod_ns)"),
            plain("APUS_PROXY_LOG", config.logLevel),
            plain("APUS_PROXY_LOG_FORMAT", config.logFormat),
            plain("APUS_PROXY_INBOUND_LISTEN_ADDR", "0.0.0.0:\(ports.inbound)"),
            plain("APUS_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:\(ports.outbound)"),
            plain("APUS_PROXY_ADMIN_LISTEN_ADDR", "0.0.0.0:\(ports.admin)"),
            plain("APUS_PROXY_CONTROL_LISTEN_ADDR", "0.0.0.0:\(ports.control)"),
            plain("APUS_PROXY_CLUSTER_DOMAIN", defaults.clusterDomain),
            plain("APUS_PROXY_DESTINATION_SVC_ADDR", defaults.destinationAddress),
            plain("APUS_PROXY_DESTINATION_SVC_NAME", defaults.destinationServerName),
            plain(
                "APUS_PROXY_DESTINATION_CONTEXT",
                #"{"ns":"$(_pod_ns)","nodeName":"$(_pod_nodeName)","pod":"$(_pod_name)"}"#),
            plain("APUS_PROXY_OUTBOUND_CONNECT_TIMEOUT", config.outboundConnectTimeout.description),
            plain("APUS_PROXY_INBOUND_CONNECT_TIMEOUT", config.inboundConnectTimeout.description),
            plain("APUS_PROXY_INBOUND_DEFAULT_POLICY", config.defaultInboundPolicy),
            plain("APUS_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION", config.opaquePorts.listText),
        ]
        if let cpuLimit = config.resources.cpuLimit {
            // One event-loop thread per whole CPU of the limit, as Linkerd derives LINKERD2_PROXY_CORES.
            let threads = max(1, Int(cpuLimit.doubleValue.rounded(.up)))
            env.append(plain("APUS_PROXY_THREADS", String(threads)))
        }
        if let grace = config.shutdownGracePeriod {
            env.append(plain("APUS_PROXY_SHUTDOWN_GRACE_PERIOD", grace.description))
        }
        if !defaults.trustAnchorsPEM.isEmpty {
            let tokenFile =
                defaults.serviceAccountTokenProjection
                ? "\(InjectorNames.tokenDirectory)/\(InjectorNames.tokenFileName)" : InjectorNames.defaultTokenFile
            env += [
                plain("APUS_PROXY_IDENTITY_DIR", InjectorNames.endEntityDirectory),
                plain("APUS_PROXY_IDENTITY_TRUST_ANCHORS", defaults.trustAnchorsPEM),
                plain("APUS_PROXY_IDENTITY_TOKEN_FILE", tokenFile),
                plain("APUS_PROXY_IDENTITY_SVC_ADDR", defaults.identityAddress),
                plain("APUS_PROXY_IDENTITY_SVC_NAME", defaults.identityServerName),
                plain(
                    "APUS_PROXY_IDENTITY_LOCAL_NAME",
                    "$(_pod_sa).$(_pod_ns).serviceaccount.identity.\(defaults.controlPlaneNamespace)."
                        + defaults.trustDomain),
            ]
        }
        if !config.tapDisabled {
            // Only the controller's verified mesh identity may tap, as Linkerd's tap injector sets
            // LINKERD2_PROXY_TAP_SVC_NAME to the tap server's.
            env.append(plain("APUS_PROXY_TAP_SVC_NAME", defaults.tapServerName))
        }
        for variable in config.additionalEnv { ConfigResolver.mergeEnv(variable, into: &env) }
        return env
    }
}
