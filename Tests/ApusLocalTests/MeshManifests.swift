/// The local-mesh tests' workloads as YAML documents, so each test states only what differs: the meshed `mesh`
/// namespace, `apus-demo` hello (calling world at `worldURL`) and world pods, their ServiceAccounts and Services.
/// Every app carries the run's `MESH_TEST_RUN` marker, by which the tests find (and clean up) their processes.
enum MeshManifests {
    static let namespace = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: mesh, annotations: {linkerd.io/inject: enabled}}
        """

    static func serviceAccount(_ name: String) -> String {
        """
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: \(name), namespace: mesh}
        """
    }

    static func service(_ name: String, port: Int) -> String {
        """
        apiVersion: v1
        kind: Service
        metadata: {name: \(name), namespace: mesh}
        spec:
          selector: {app: \(name)}
          ports: [{port: \(port)}]
        """
    }

    /// hello on 7100, calling `worldURL` for every request it serves.
    static func helloPod(marker: String, worldURL: String, serviceAccount: Bool = true) -> String {
        pod(
            name: "hello", app: "hello",
            spec: podSpec(
                "hello", port: 7100, marker: marker, environment: [("WORLD_URL", worldURL), ("LATENCY_MS", "0")],
                serviceAccount: serviceAccount ? "hello" : nil))
    }

    /// world on 7101, answering after `latencyMs`, failing `errorRate` of its requests with 500 when given;
    /// labelled `app: <app>` (what the world Service selects, by default).
    static func worldPod(
        name: String = "world", app: String = "world", marker: String, latencyMs: Int = 0, errorRate: Double? = nil,
        serviceAccount: Bool = true, annotations: String? = nil, readiness: Bool = true
    ) -> String {
        var environment = [("LATENCY_MS", String(latencyMs))]
        if let errorRate { environment.append(("ERROR_RATE", "\(errorRate)")) }
        return pod(
            name: name, app: app, annotations: annotations,
            spec: podSpec(
                "world", port: 7101, marker: marker, environment: environment,
                serviceAccount: serviceAccount ? "world" : nil, readiness: readiness))
    }

    /// A one-replica Deployment of world (no ServiceAccount: the pods run as `default`).
    static func worldDeployment(marker: String) -> String {
        let spec = podSpec("world", port: 7101, marker: marker, environment: [("LATENCY_MS", "0")])
        return
            ([
                "apiVersion: apps/v1",
                "kind: Deployment",
                "metadata: {name: world, namespace: mesh}",
                "spec:",
                "  replicas: 1",
                "  selector: {matchLabels: {app: world}}",
                "  template:",
                "    metadata: {labels: {app: world}}",
            ] + spec.map { "    " + $0 }).joined(separator: "\n")
    }

    /// Documents joined into one multi-document file.
    static func file(_ documents: String...) -> String {
        documents.joined(separator: "\n---\n")
    }

    private static func pod(name: String, app: String, annotations: String? = nil, spec: [String]) -> String {
        var lines = ["apiVersion: v1", "kind: Pod", "metadata:", "  name: \(name)", "  namespace: mesh"]
        lines.append("  labels: {app: \(app)}")
        if let annotations { lines.append("  annotations: {\(annotations)}") }
        return (lines + spec).joined(separator: "\n")
    }

    /// The lines of a pod spec (`spec:` and below) running `apus-demo <role>`.
    private static func podSpec(
        _ role: String, port: Int, marker: String, environment: [(String, String)], serviceAccount: String? = nil,
        readiness: Bool = true
    ) -> [String] {
        var lines = ["spec:"]
        if let serviceAccount { lines.append("  serviceAccountName: \(serviceAccount)") }
        lines += ["  containers:", "  - name: app", "    command: [\"apus-demo\", \"\(role)\"]", "    env:"]
        lines += (environment + [("MESH_TEST_RUN", marker)]).map { "    - {name: \($0.0), value: \"\($0.1)\"}" }
        lines.append("    ports: [{containerPort: \(port)}]")
        if readiness {
            lines.append("    readinessProbe: {httpGet: {path: /healthz, port: \(port)}, periodSeconds: 1}")
        }
        return lines
    }
}
