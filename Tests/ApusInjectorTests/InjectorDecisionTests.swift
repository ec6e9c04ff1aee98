import ApusCore
import ApusInjector
import Foundation
import Testing

@Suite struct InjectorDecisionTests {
    static func pod(
        annotations: [String: String] = [:], namespace: String = "shop", spec: [String: JSONValue] = [:]
    ) -> JSONValue {
        var specObject: [String: JSONValue] = [
            "containers": .array([
                .object(["name": .string("app"), "image": .string("app:1")])
            ])
        ]
        specObject.merge(spec) { _, new in new }
        return .object([
            "apiVersion": .string("v1"), "kind": .string("Pod"),
            "metadata": .object([
                "name": .string("p"), "namespace": .string(namespace),
                "annotations": .object(annotations.mapValues { .string($0) }),
            ]),
            "spec": .object(specObject),
        ])
    }

    static func namespace(_ name: String = "shop", inject: String? = nil, _ extra: [String: String] = [:])
        -> Namespace
    {
        var annotations = extra
        if let inject { annotations[InjectorNames.inject] = inject }
        return Namespace(metadata: ObjectMeta(name: name, annotations: annotations))
    }

    let injector = ProxyInjector(defaults: InjectorDefaults(trustAnchorsPEM: "-----BEGIN CERTIFICATE-----\nx\n"))

    /// Linkerd's truth table (`pkg/inject/report.go`): the pod's annotation wins over the namespace's.
    @Test(
        arguments: [
            (nil, nil, InjectionDecision.skip(reason: SkipReason.notEnabled)),
            ("enabled", nil, .inject(mode: .enabled)),
            ("enabled", "disabled", .skip(reason: SkipReason.disabledByPod)),
            ("disabled", nil, .skip(reason: SkipReason.disabledByNamespace)),
            ("disabled", "enabled", .inject(mode: .enabled)),
            (nil, "enabled", .inject(mode: .enabled)),
            (nil, "ingress", .inject(mode: .ingress)),
            ("ingress", nil, .inject(mode: .ingress)),
            ("bogus", nil, .skip(reason: SkipReason.invalidAnnotation)),
            ("enabled", "yes", .skip(reason: SkipReason.invalidAnnotation)),
            ("bogus", "enabled", .inject(mode: .enabled)),
        ] as [(String?, String?, InjectionDecision)])
    func precedence(namespaceValue: String?, podValue: String?, expected: InjectionDecision) {
        let annotations = podValue.map { [InjectorNames.inject: $0] } ?? [:]
        let decision = injector.decide(
            podJSON: Self.pod(annotations: annotations), namespace: Self.namespace(inject: namespaceValue))
        #expect(decision == expected)
    }

    @Test func invalidInjectValueIsReportedAsAWarning() {
        let result = injector.inject(
            podJSON: Self.pod(annotations: [InjectorNames.inject: "on"]), namespace: Self.namespace())
        #expect(result.decision == .skip(reason: SkipReason.invalidAnnotation))
        #expect(result.warnings.contains { $0.contains("\"on\" is not enabled, disabled or ingress") })
        #expect(result.patch.isEmpty)
    }

    @Test func skipReasons() {
        let enabled = Self.namespace(inject: "enabled")
        #expect(
            injector.decide(podJSON: Self.pod(spec: ["hostNetwork": .bool(true)]), namespace: enabled)
                == .skip(reason: SkipReason.hostNetwork))
        #expect(
            injector.decide(
                podJSON: Self.pod(namespace: "kube-system"),
                namespace: Self.namespace("kube-system", inject: "enabled"))
                == .skip(reason: SkipReason.kubeSystem))
        #expect(
            injector.decide(
                podJSON: Self.pod(namespace: "apus"), namespace: Self.namespace("apus", inject: "enabled"))
                == .skip(reason: SkipReason.controlPlaneNamespace))
        let injected = Self.pod(spec: [
            "initContainers": .array([.object(["name": .string("linkerd-proxy")])])
        ])
        #expect(injector.decide(podJSON: injected, namespace: enabled) == .skip(reason: SkipReason.alreadyInjected))
        let noToken = Self.pod(spec: ["automountServiceAccountToken": .bool(false)])
        #expect(injector.decide(podJSON: noToken, namespace: enabled) == .inject(mode: .enabled))
        let withoutProjection = ProxyInjector(defaults: InjectorDefaults(serviceAccountTokenProjection: false))
        #expect(
            withoutProjection.decide(podJSON: noToken, namespace: enabled)
                == .skip(reason: SkipReason.noServiceAccountToken))
        #expect(
            injector.decide(podJSON: .object(["kind": .string("Pod")]), namespace: enabled)
                == .skip(reason: SkipReason.notAPod))
    }

    /// A typed Pod works too, with the namespace name from the cache when the admission object has none.
    @Test func typedPodAndNamespaceFromCache() throws {
        var pod = Pod(metadata: ObjectMeta(generateName: "web-"), spec: PodSpec(containers: [Container(name: "web")]))
        pod.metadata.ownerReferences = [
            OwnerReference(apiVersion: "apps/v1", kind: "ReplicaSet", name: "web-7d9c5b", uid: "u", controller: true)
        ]
        pod.metadata.labels = ["pod-template-hash": "7d9c5b"]
        let result = injector.inject(pod: pod, namespace: Self.namespace(inject: "enabled"))
        #expect(result.decision == .inject(mode: .enabled))
        let labels = try #require(result.injectedPod?.metadata.labels)
        #expect(labels["linkerd.io/proxy-deployment"] == "web")
        #expect(labels["linkerd.io/workload-ns"] == "shop")
        #expect(labels["linkerd.io/control-plane-ns"] == "apus")
        #expect(result.injectedPod?.metadata.annotations?["linkerd.io/trust-root-sha256"]?.count == 64)
    }

    /// Every override with an invalid value: one warning each, naming the annotation, and the default is used.
    @Test func invalidOverridesFallBackToDefaults() throws {
        let invalid: [String: String] = [
            "config.linkerd.io/proxy-image": "bad image",
            "config.linkerd.io/proxy-version": "v1:2",
            "config.linkerd.io/image-pull-policy": "Sometimes",
            "config.linkerd.io/inbound-port": "70000",
            "config.linkerd.io/outbound-port": "abc",
            "config.linkerd.io/admin-port": "-1",
            "config.linkerd.io/control-port": "",
            "config.linkerd.io/skip-inbound-ports": "22,x",
            "config.linkerd.io/skip-outbound-ports": "10-5",
            "config.linkerd.io/skip-subnets": "10.0.0.0/33",
            "config.linkerd.io/opaque-ports": "unknown-name",
            "config.linkerd.io/proxy-cpu-request": "lots",
            "config.linkerd.io/proxy-cpu-limit": "1 core",
            "config.linkerd.io/proxy-memory-request": "-5Mi",
            "config.linkerd.io/proxy-memory-limit": "12Qi",
            "config.linkerd.io/proxy-uid": "0",
            "config.linkerd.io/proxy-log-level": "loud",
            "config.linkerd.io/proxy-log-format": "xml",
            "config.linkerd.io/proxy-outbound-connect-timeout": "soon",
            "config.linkerd.io/proxy-inbound-connect-timeout": "-1s",
            "config.linkerd.io/default-inbound-policy": "allow-all",
            "config.linkerd.io/proxy-await": "maybe",
            "config.linkerd.io/proxy-enable-native-sidecar": "sometimes",
            "config.linkerd.io/shutdown-grace-period": "1 minute",
            "config.linkerd.io/proxy-additional-env": "{\"name\":\"X\"}",
        ]
        let result = injector.inject(
            podJSON: Self.pod(annotations: invalid.merging([InjectorNames.inject: "enabled"]) { a, _ in a }),
            namespace: Self.namespace())
        #expect(result.decision == .inject(mode: .enabled))
        for key in invalid.keys {
            #expect(result.warnings.contains { $0.hasPrefix("\(key) on the pod:") }, "no warning for \(key)")
        }
        let defaultResult = injector.inject(
            podJSON: Self.pod(annotations: [InjectorNames.inject: "enabled"]), namespace: Self.namespace())
        // Everything rendered is what the defaults give.
        #expect(result.injectedObject?["spec"] == defaultResult.injectedObject?["spec"])
    }

    /// Namespace overrides apply, the pod's win, and an invalid pod value falls back to the namespace's.
    @Test func namespaceOverridesAndPodPrecedence() throws {
        let namespace = Self.namespace(
            inject: "enabled",
            [
                "config.linkerd.io/proxy-log-level": "debug",
                "config.linkerd.io/admin-port": "6191",
                "config.linkerd.io/proxy-additional-env": #"[{"name":"A","value":"ns"},{"name":"B","value":"ns"}]"#,
            ])
        let pod = Self.pod(annotations: [
            "config.linkerd.io/proxy-log-level": "trace",
            "config.linkerd.io/admin-port": "nope",
            "config.linkerd.io/proxy-additional-env": #"[{"name":"B","value":"pod"}]"#,
        ])
        let result = injector.inject(podJSON: pod, namespace: namespace)
        let proxy = try #require(result.injectedPod?.spec?.initContainers?.first { $0.name == "linkerd-proxy" })
        let env = Dictionary((proxy.env ?? []).map { ($0.name, $0.value ?? "") }) { first, _ in first }
        #expect(env["APUS_PROXY_LOG"] == "trace")
        #expect(env["APUS_PROXY_ADMIN_LISTEN_ADDR"] == "0.0.0.0:6191")
        #expect(env["A"] == "ns")
        #expect(env["B"] == "pod")
        #expect(result.warnings.count == 1)
        #expect(result.warnings.first?.hasPrefix("config.linkerd.io/admin-port on the pod") == true)
    }

    /// The env of the proxy is the contract's: identity name from the downward API, destination context.
    @Test func proxyEnvironmentFollowsTheContract() throws {
        let result = injector.inject(
            podJSON: Self.pod(annotations: [InjectorNames.inject: "enabled"]), namespace: Self.namespace())
        let proxy = try #require(result.injectedPod?.spec?.initContainers?.first { $0.name == "linkerd-proxy" })
        #expect(proxy.restartPolicy == "Always")
        #expect(proxy.startupProbe?.httpGet?.path == "/ready")
        #expect(proxy.securityContext?.runAsUser == 2102)
        #expect(proxy.securityContext?.readOnlyRootFilesystem == true)
        #expect(proxy.securityContext?.allowPrivilegeEscalation == false)
        let env = Dictionary((proxy.env ?? []).map { ($0.name, $0) }) { first, _ in first }
        #expect(
            env["APUS_PROXY_IDENTITY_LOCAL_NAME"]?.value
                == "$(_pod_sa).$(_pod_ns).serviceaccount.identity.apus.cluster.local")
        #expect(env["_pod_sa"]?.valueFrom?.fieldRef?.fieldPath == "spec.serviceAccountName")
        #expect(env["APUS_PROXY_IDENTITY_TOKEN_FILE"]?.value == "/var/run/secrets/tokens/linkerd-identity-token")
        #expect(env["APUS_PROXY_DESTINATION_CONTEXT"]?.value?.contains(#""ns":"$(_pod_ns)""#) == true)
        for name in env.keys where name.hasPrefix("APUS_PROXY_") {
            #expect(Self.contractVariables.contains(name), "\(name) is not in the proxy contract")
        }
        let initContainer = try #require(result.injectedPod?.spec?.initContainers?.first)
        #expect(initContainer.name == "linkerd-init")
        #expect(initContainer.securityContext?.capabilities?.add == ["NET_ADMIN", "NET_RAW"])
        let token = try #require(result.injectedPod?.spec?.volumes?.first { $0.name == "linkerd-identity-token" })
        let projection = try #require(token.projected?.sources.first?.serviceAccountToken)
        #expect(projection.audience == "identity.l5d.io")
        #expect(projection.expirationSeconds == 86400)
        let endEntity = result.injectedPod?.spec?.volumes?.first { $0.name == "linkerd-identity-end-entity" }
        #expect(endEntity?.emptyDir?.medium == "Memory")
    }

    static let contractVariables: Set<String> = [
        "APUS_PROXY_OUTBOUND_LISTEN_ADDR", "APUS_PROXY_INBOUND_LISTEN_ADDR", "APUS_PROXY_ADMIN_LISTEN_ADDR",
        "APUS_PROXY_CONTROL_LISTEN_ADDR", "APUS_PROXY_INBOUND_FORWARD_IP", "APUS_PROXY_INBOUND_DEFAULT_PORT",
        "APUS_PROXY_THREADS", "APUS_PROXY_IDENTITY_DIR", "APUS_PROXY_IDENTITY_TOKEN_FILE",
        "APUS_PROXY_IDENTITY_TRUST_ANCHORS", "APUS_PROXY_IDENTITY_LOCAL_NAME", "APUS_PROXY_IDENTITY_SVC_ADDR",
        "APUS_PROXY_IDENTITY_SVC_NAME", "APUS_PROXY_DESTINATION_SVC_ADDR", "APUS_PROXY_DESTINATION_SVC_NAME",
        "APUS_PROXY_DESTINATION_CONTEXT", "APUS_PROXY_CLUSTER_DOMAIN", "APUS_PROXY_LOG", "APUS_PROXY_LOG_FORMAT",
        "APUS_PROXY_OUTBOUND_CONNECT_TIMEOUT", "APUS_PROXY_INBOUND_CONNECT_TIMEOUT",
        "APUS_PROXY_INBOUND_DEFAULT_POLICY", "APUS_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION",
        "APUS_PROXY_SHUTDOWN_GRACE_PERIOD", "APUS_PROXY_TAP_SVC_NAME",
    ]

    /// Without native sidecars the proxy is the first container and holds the app back with a postStart hook.
    @Test func regularSidecarWithAwait() throws {
        let result = injector.inject(
            podJSON: Self.pod(annotations: ["config.linkerd.io/proxy-enable-native-sidecar": "false"]),
            namespace: Self.namespace(inject: "enabled"))
        let spec = try #require(result.injectedPod?.spec)
        #expect(spec.containers.map(\.name) == ["linkerd-proxy", "app"])
        #expect(spec.initContainers?.map(\.name) == ["linkerd-init"])
        let hook = result.injectedObject?["spec"]?["containers"]?.arrayValue?.first?["lifecycle"]?["postStart"]
        #expect(hook?["exec"]?["command"]?.arrayValue?.last == .string("--port=4191"))
        let noAwait = injector.inject(
            podJSON: Self.pod(annotations: [
                "config.linkerd.io/proxy-enable-native-sidecar": "false", "config.linkerd.io/proxy-await": "disabled",
            ]),
            namespace: Self.namespace(inject: "enabled"))
        #expect(noAwait.injectedObject?["spec"]?["containers"]?.arrayValue?.first?["lifecycle"] == nil)
    }

    @Test func uninjectRemovesEverythingInjectionAdded() throws {
        let original = Self.pod(
            annotations: ["keep": "me"], spec: ["volumes": .array([.object(["name": .string("v")])])])
        let injected = try #require(
            injector.inject(podJSON: original, namespace: Self.namespace(inject: "enabled")).injectedObject)
        let result = injector.uninject(injected)
        #expect(result.changed)
        #expect(result.uninjectedObject == original)
        #expect(try JSONPatch.apply(result.patch, to: injected) == original)
        #expect(!injector.uninject(original).changed)
    }
}

@Suite struct JSONPatchTests {
    let document: JSONValue = .object([
        "a/b": .number(1), "m~n": .number(2),
        "list": .array([.string("x"), .string("y")]),
        "obj": .object(["k": .string("v")]),
    ])

    @Test func rfc6902Operations() throws {
        let ops: [JSONPatchOperation] = [
            .add("/list/1", .string("inserted")),
            .add("/list/-", .string("last")),
            .remove(JSONPointer.path("a/b")),
            .replace(JSONPointer.path("m~n"), .number(3)),
            JSONPatchOperation(op: .move, path: "/moved", from: "/obj/k"),
            JSONPatchOperation(op: .copy, path: "/copied", from: "/list/0"),
            JSONPatchOperation(op: .test, path: "/copied", value: .string("x")),
        ]
        let result = try JSONPatch.apply(ops, to: document)
        #expect(
            result
                == .object([
                    "m~n": .number(3),
                    "list": .array([.string("x"), .string("inserted"), .string("y"), .string("last")]),
                    "obj": .object([:]), "moved": .string("v"), "copied": .string("x"),
                ]))
        #expect(JSONPointer.path("a/b", "m~n") == "/a~1b/m~0n")
    }

    @Test func failuresNameTheOperation() {
        #expect(throws: JSONPatchError.self) { try JSONPatch.apply([.remove("/missing")], to: document) }
        #expect(throws: JSONPatchError.self) { try JSONPatch.apply([.add("/list/5", .null)], to: document) }
        #expect(throws: JSONPatchError.self) { try JSONPatch.apply([.add("/list/01", .null)], to: document) }
        #expect(throws: JSONPatchError.self) { try JSONPatch.apply([.add("no-slash", .null)], to: document) }
        do {
            _ = try JSONPatch.apply(
                [.add("/ok", .null), JSONPatchOperation(op: .test, path: "/obj/k", value: .string("w"))], to: document)
            Issue.record("test operation should fail")
        } catch {
            #expect(error.index == 1)
            #expect(error.path == "/obj/k")
        }
    }

    @Test func encodesOnlyTheFieldsAnOperationUses() throws {
        let data = try JSONEncoder().encode([JSONPatchOperation.remove("/a"), .add("/b", .null)])
        let json = try JSONValue(json: data)
        #expect(json.arrayValue?.first == .object(["op": .string("remove"), "path": .string("/a")]))
        #expect(json.arrayValue?.last == .object(["op": .string("add"), "path": .string("/b"), "value": .null]))
        let decoded = try JSONDecoder().decode([JSONPatchOperation].self, from: data)
        #expect(decoded == [.remove("/a"), .add("/b", .null)])
    }
}
