import ApusCore
import Testing

@testable import ApusLocal

/// Reading manifests the way `kubectl apply -f` does, and expanding workloads into the Pods their controllers make.
@Suite struct ManifestParsingTests {
    @Test("multi-document YAML and List kinds become one entry per object, with their document numbers")
    func multiDocumentAndLists() throws {
        let text = """
            apiVersion: v1
            kind: Namespace
            metadata: {name: shop}
            ---
            # only a comment
            ---
            apiVersion: v1
            kind: List
            items:
            - {apiVersion: v1, kind: ServiceAccount, metadata: {name: web, namespace: shop}}
            - {apiVersion: v1, kind: Service, metadata: {name: web, namespace: shop}}
            """
        let entries = try ManifestDocuments.parse(text, file: "app.yaml")
        #expect(entries.map { $0.object["kind"]?.stringValue } == ["Namespace", "ServiceAccount", "Service"])
        #expect(entries.map(\.document) == [1, 3, 3])
    }

    @Test("a syntax error names the file and the document it is in")
    func syntaxErrorNamesFileAndDocument() {
        let text = """
            apiVersion: v1
            kind: Namespace
            metadata: {name: ok}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: [broken
            """
        #expect {
            try ManifestDocuments.parse(text, file: "dir/bad.yaml")
        } throws: { error in
            guard let error = error as? ManifestError else { return false }
            return error.code == .invalidSyntax && error.file == "dir/bad.yaml" && error.document == 2
                && error.description.hasPrefix("dir/bad.yaml (document 2): ")
        }
    }

    @Test("duplicate keys are refused like strict field validation does")
    func duplicateKeys() {
        #expect(throws: ManifestError.self) {
            try ManifestDocuments.parse("kind: Pod\nkind: Service\n", file: "dup.yaml")
        }
    }

    @Test("a Deployment expands into replicas Pods named <name>-<hash>-<i>, owned by a ReplicaSet <name>-<hash>")
    func deploymentExpansion() throws {
        let deployment = try #require(
            try ManifestDocuments.parse(
                """
                apiVersion: apps/v1
                kind: Deployment
                metadata: {name: web, namespace: shop}
                spec:
                  replicas: 3
                  template:
                    metadata:
                      labels: {app: web}
                      annotations: {linkerd.io/inject: enabled}
                    spec:
                      containers: [{name: app, command: [sleep, "100"]}]
                """, file: "web.yaml"
            ).first?.object)
        let pods = try WorkloadExpansion.pods(for: deployment, namespace: "shop", file: "web.yaml", document: 1)
        #expect(pods.count == 3)
        let first = try pods[0].decode(as: Pod.self)
        let hash = try #require(first.metadata.labels?[WorkloadExpansion.podTemplateHashLabel])
        #expect(hash.count == 10)
        #expect(pods.map { $0["metadata"]?["name"]?.stringValue } == (0..<3).map { "web-\(hash)-\($0)" })
        #expect(first.metadata.labels?["app"] == "web")
        #expect(first.metadata.annotations?["linkerd.io/inject"] == "enabled")
        #expect(first.metadata.ownerReferences?.first?.kind == "ReplicaSet")
        #expect(first.metadata.ownerReferences?.first?.name == "web-\(hash)")
        #expect(first.spec?.containers.first?.command == ["sleep", "100"])

        // Same template, other replica count: same names. Other template: other names (rolling replacement).
        var scaled = deployment
        if case .object(var fields) = scaled, case .object(var spec)? = fields["spec"] {
            spec["replicas"] = .number(1)
            fields["spec"] = .object(spec)
            scaled = .object(fields)
        }
        let scaledPods = try WorkloadExpansion.pods(for: scaled, namespace: "shop", file: "web.yaml", document: 1)
        #expect(scaledPods.map { $0["metadata"]?["name"]?.stringValue } == ["web-\(hash)-0"])
    }

    @Test("a malformed replica count is reported with file and document")
    func badReplicas() {
        let deployment: JSONValue = .object([
            "apiVersion": .string("apps/v1"), "kind": .string("Deployment"),
            "metadata": .object(["name": .string("web")]),
            "spec": .object(["replicas": .string("three"), "template": .object(["spec": .object([:])])]),
        ])
        #expect {
            try WorkloadExpansion.pods(for: deployment, namespace: "default", file: "w.yaml", document: 4)
        } throws: { error in
            (error as? ManifestError)?.description == "w.yaml (document 4): spec.replicas of Deployment web must "
                + "be an integer 0-1000"
        }
    }

    @Test("$(VAR) expansion follows the kubelet: defined names replaced, unknown kept, $$ escapes")
    func variableExpansion() {
        let environment = ["POD_IP": "127.0.1.4", "PORT": "8080"]
        #expect(PodEnvironment.expand("$(POD_IP):$(PORT)", environment) == "127.0.1.4:8080")
        #expect(PodEnvironment.expand("$(MISSING)/x", environment) == "$(MISSING)/x")
        #expect(PodEnvironment.expand("$$(POD_IP)", environment) == "$(POD_IP)")
        #expect(PodEnvironment.expand("cost: $5", environment) == "cost: $5")
    }

    @Test("pod addresses are loopback addresses of their own, stable per pod, never 127.0.0.x")
    func addressPool() {
        let pool = AddressPool(first: "127.0.0.9")
        let a = pool.assign(ObjectKey(namespace: "shop", name: "a"))
        let b = pool.assign(ObjectKey(namespace: "shop", name: "b"))
        #expect(a == "127.0.1.1")
        #expect(b == "127.0.1.2")
        #expect(pool.assign(ObjectKey(namespace: "shop", name: "a")) == a)
        let edge = AddressPool(first: "127.0.1.254")
        _ = edge.assign(ObjectKey(namespace: nil, name: "x"))
        #expect(edge.assign(ObjectKey(namespace: nil, name: "y")) == "127.0.2.1")
    }
}
