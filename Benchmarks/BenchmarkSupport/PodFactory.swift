import ApusCore

/// Builds the Pods the benchmark serves: shaped like `kubectl get pod -o json` output of a meshed Deployment
/// replica (an app container and a proxy sidecar with env, ports, resources, mounts and a security context; an
/// owner reference, labels and annotations; a Running status with IPs, conditions and container statuses), about
/// 3 KiB of JSON as the server stores it.
///
/// Fields the client's `Pod` model does not keep (dnsPolicy, schedulerName, qosClass, …) are included on purpose:
/// a real watch stream carries them and the decoder has to skip them, which is part of the cost being measured.
/// Everything is derived from the index, so the parent and the server child agree on names without talking. Both
/// the informer and the destination benchmark serve these Pods, so their memory figures compare.
public enum PodFactory {
    /// Pods spread round-robin over this many namespaces, `bench-00` …
    public static let namespaceCount = 20
    /// The Deployments the Pods belong to, round-robin by index.
    public static let apps = [
        "checkout", "cart", "payments", "catalog", "search", "auth", "orders", "shipping", "frontend", "reviews",
    ]

    /// The namespace of pod `index`.
    public static func namespace(index: Int) -> String {
        "bench-" + String(index % namespaceCount).leftPadded(to: 2)
    }

    /// The name of pod `index`, shaped like a ReplicaSet-generated one.
    public static func name(index: Int) -> String {
        let app = apps[index % apps.count]
        return "\(app)-\(templateHash(app))-\(suffix(index))"
    }

    /// The namespace and name of pod `index`.
    public static func key(index: Int) -> ObjectKey {
        ObjectKey(namespace: namespace(index: index), name: name(index: index))
    }

    /// The address pod `index` reports in its status.
    public static func podIP(index: Int) -> String {
        "10.\(1 + index / 65_536).\((index / 256) % 256).\(index % 256)"
    }

    /// The pod as the server child seeds it.
    public static func pod(index: Int) -> JSONValue {
        let app = apps[index % apps.count]
        let hash = templateHash(app)
        let podIP = podIP(index: index)
        let node = "worker-\(index % 50)"
        let hostIP = "192.168.0.\(10 + index % 50)"
        let created = "2025-03-14T09:26:53Z"
        let labels: JSONValue = .object([
            "app": .string(app), "pod-template-hash": .string(hash), "version": .string("v2.14.1"),
            "linkerd.io/control-plane-ns": .string("apus"),
        ])
        let annotations: JSONValue = .object([
            "linkerd.io/inject": .string("enabled"),
            "linkerd.io/proxy-version": .string("stable-2.14.10"),
        ])
        let appContainer: JSONValue = .object([
            "name": .string(app),
            "image": .string("registry.example.com/commerce/\(app):2.14.1"),
            "imagePullPolicy": .string("IfNotPresent"),
            "env": .array([
                env("LOG_LEVEL", "info"), env("HTTP_PORT", "8080"), env("ADMIN_PORT", "9990"),
                .object([
                    "name": .string("POD_NAME"),
                    "valueFrom": .object(["fieldRef": .object(["fieldPath": .string("metadata.name")])]),
                ]),
            ]),
            "ports": .array([port("http", 8080), port("admin", 9990)]),
            "resources": resources(cpu: ("250m", "1"), memory: ("256Mi", "512Mi")),
            "volumeMounts": .array([
                .object(["name": .string("config"), "mountPath": .string("/etc/\(app)"), "readOnly": .bool(true)])
            ]),
        ])
        let proxyContainer: JSONValue = .object([
            "name": .string("linkerd-proxy"),
            "image": .string("cr.l5d.io/linkerd/proxy:stable-2.14.10"),
            "env": .array([
                env("LINKERD2_PROXY_LOG", "warn,linkerd=info"),
                env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "0.0.0.0:4143"),
            ]),
            "ports": .array([port("linkerd-proxy", 4143), port("linkerd-admin", 4191)]),
            "resources": resources(cpu: ("100m", "1"), memory: ("20Mi", "250Mi")),
            "securityContext": .object(["runAsUser": .number(2102), "readOnlyRootFilesystem": .bool(true)]),
        ])
        let conditions: JSONValue = .array(
            ["Initialized", "Ready", "ContainersReady", "PodScheduled"].map { type in
                .object([
                    "type": .string(type), "status": .string("True"), "lastTransitionTime": .string(created),
                ])
            })
        let containerStatuses: JSONValue = .array(
            [(app, "registry.example.com/commerce/\(app):2.14.1"), ("linkerd-proxy", "cr.l5d.io/linkerd/proxy")].map {
                name, image in
                .object([
                    "name": .string(name), "image": .string(image), "ready": .bool(true), "started": .bool(true),
                    "restartCount": .number(0),
                    "containerID": .string("containerd://\(hex(index &* 7919 &+ name.count, length: 64))"),
                    "state": .object(["running": .object(["startedAt": .string(created)])]),
                ])
            })
        return .object([
            "apiVersion": .string("v1"), "kind": .string("Pod"),
            "metadata": .object([
                "name": .string(name(index: index)), "namespace": .string(namespace(index: index)),
                "generateName": .string("\(app)-\(hash)-"), "labels": labels, "annotations": annotations,
                "ownerReferences": .array([
                    .object([
                        "apiVersion": .string("apps/v1"), "kind": .string("ReplicaSet"),
                        "name": .string("\(app)-\(hash)"), "uid": .string(uuid(index % apps.count)),
                        "controller": .bool(true), "blockOwnerDeletion": .bool(true),
                    ])
                ]),
            ]),
            "spec": .object([
                "containers": .array([appContainer, proxyContainer]),
                "serviceAccountName": .string(app), "nodeName": .string(node),
                "restartPolicy": .string("Always"), "terminationGracePeriodSeconds": .number(30),
                "dnsPolicy": .string("ClusterFirst"), "schedulerName": .string("default-scheduler"),
                "volumes": .array([
                    .object(["name": .string("config"), "configMap": .object(["name": .string("\(app)-config")])])
                ]),
            ]),
            "status": .object([
                "phase": .string("Running"), "podIP": .string(podIP),
                "podIPs": .array([.object(["ip": .string(podIP)])]),
                "hostIP": .string(hostIP), "startTime": .string(created), "qosClass": .string("Burstable"),
                "conditions": conditions, "containerStatuses": containerStatuses,
            ]),
        ])
    }

    // MARK: - Pieces

    private static func env(_ name: String, _ value: String) -> JSONValue {
        .object(["name": .string(name), "value": .string(value)])
    }

    private static func port(_ name: String, _ number: Int) -> JSONValue {
        .object(["name": .string(name), "containerPort": .number(Double(number)), "protocol": .string("TCP")])
    }

    private static func resources(cpu: (String, String), memory: (String, String)) -> JSONValue {
        .object([
            "requests": .object(["cpu": .string(cpu.0), "memory": .string(memory.0)]),
            "limits": .object(["cpu": .string(cpu.1), "memory": .string(memory.1)]),
        ])
    }

    private static func templateHash(_ app: String) -> String {
        let alphabet = Array("bcdfghjklmnpqrstvwxz2456789")
        var value = app.utf8.reduce(5381) { ($0 &* 33) &+ Int($1) } & 0x7fff_ffff_ffff
        return String(
            (0..<10).map { _ in
                defer { value /= alphabet.count }
                return alphabet[value % alphabet.count]
            })
    }

    /// Five characters of the real name generator's alphabet, unique for indexes below 27^5.
    private static func suffix(_ index: Int) -> String {
        let alphabet = Array("bcdfghjklmnpqrstvwxz2456789")
        var value = index
        return String(
            (0..<5).map { _ in
                defer { value /= alphabet.count }
                return alphabet[value % alphabet.count]
            })
    }

    private static func hex(_ seed: Int, length: Int) -> String {
        var state = UInt64(truncatingIfNeeded: seed) &+ 0x9E37_79B9_7F4A_7C15
        var out = ""
        while out.count < length {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            out += String(state >> 33, radix: 16).leftPadded(to: 8)
        }
        return String(out.prefix(length))
    }

    private static func uuid(_ seed: Int) -> String {
        let h = hex(seed, length: 32)
        let parts = [8, 4, 4, 4, 12]
        var index = h.startIndex
        return parts.map { length in
            let end = h.index(index, offsetBy: length)
            defer { index = end }
            return String(h[index..<end])
        }.joined(separator: "-")
    }
}
