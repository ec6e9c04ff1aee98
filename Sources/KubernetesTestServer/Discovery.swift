import ApusCore

/// The legacy (unaggregated) discovery documents of a kube-apiserver, derived from the resource registry, so
/// `kubectl` and client-go's RESTMapper find every served resource: `/api`, `/api/v1`, `/apis`, `/apis/<group>`
/// and `/apis/<group>/<version>`.
///
/// kubectl 1.32 first asks for aggregated discovery (`apidiscovery.k8s.io/v2`) in its `Accept` header; a server
/// answering plain `application/json` is read as legacy discovery, which is what this serves.
enum Discovery {
    /// Verbs of a main resource; `create`/`deletecollection` are served for every registered resource.
    static let resourceVerbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    static let statusVerbs = ["get", "patch", "update"]

    /// Short names kubectl users type (`kubectl get po`, `kubectl get sp`), as the real server advertises them.
    static let shortNames: [String: [String]] = [
        "pods": ["po"], "services": ["svc"], "namespaces": ["ns"], "nodes": ["no"], "configmaps": ["cm"],
        "serviceaccounts": ["sa"], "endpoints": ["ep"], "events": ["ev"], "persistentvolumes": ["pv"],
        "persistentvolumeclaims": ["pvc"], "replicationcontrollers": ["rc"], "resourcequotas": ["quota"],
        "limitranges": ["limits"], "deployments": ["deploy"], "statefulsets": ["sts"], "daemonsets": ["ds"],
        "replicasets": ["rs"], "cronjobs": ["cj"], "ingresses": ["ing"], "networkpolicies": ["netpol"],
        "poddisruptionbudgets": ["pdb"], "priorityclasses": ["pc"], "storageclasses": ["sc"],
        "customresourcedefinitions": ["crd", "crds"], "certificatesigningrequests": ["csr"],
        "serviceprofiles": ["sp"], "servers": ["srv"], "authorizationpolicies": ["authzpolicy"],
        "serverauthorizations": ["saz", "serverauthz", "srvauthz"],
    ]

    /// The discovery document for `path`, or nil when `path` is not a discovery path of a served group/version.
    static func document(path: String, registry: ResourceRegistry) -> JSONValue? {
        let parts = path.split(separator: "/").map(String.init)
        let resources = registry.all
        switch (parts.first, parts.count) {
        case ("api", 1):
            let versions = Set(resources.filter { $0.type.group.isEmpty }.map(\.type.version))
            return .object([
                "kind": .string("APIVersions"), "versions": .array(sortedVersions(versions).map { .string($0) }),
                "serverAddressByClientCIDRs": .array([]),
            ])
        case ("api", 2):
            return resourceList(group: "", version: parts[1], resources: resources)
        case ("apis", 1):
            let groups = Set(resources.map(\.type.group).filter { !$0.isEmpty }).sorted()
            return .object([
                "kind": .string("APIGroupList"), "apiVersion": .string("v1"),
                "groups": .array(groups.compactMap { apiGroup($0, resources: resources) }),
            ])
        case ("apis", 2):
            guard var group = apiGroup(parts[1], resources: resources) else { return nil }
            group["kind"] = .string("APIGroup")
            group["apiVersion"] = .string("v1")
            return group
        case ("apis", 3):
            return resourceList(group: parts[1], version: parts[2], resources: resources)
        default:
            return nil
        }
    }

    private static func apiGroup(_ name: String, resources: [ResourceInfo]) -> JSONValue? {
        let versions = sortedVersions(Set(resources.filter { $0.type.group == name }.map(\.type.version)))
        guard let preferred = versions.first else { return nil }
        func entry(_ version: String) -> JSONValue {
            .object(["groupVersion": .string("\(name)/\(version)"), "version": .string(version)])
        }
        return .object([
            "name": .string(name), "versions": .array(versions.map(entry)), "preferredVersion": entry(preferred),
        ])
    }

    private static func resourceList(group: String, version: String, resources: [ResourceInfo]) -> JSONValue? {
        let served = resources.filter { $0.type.group == group && $0.type.version == version }
            .sorted { $0.type.plural < $1.type.plural }
        guard !served.isEmpty else { return nil }
        var entries: [JSONValue] = []
        for info in served {
            let type = info.type
            var entry: JSONValue = .object([
                "name": .string(type.plural), "singularName": .string(type.kind.lowercased()),
                "namespaced": .bool(type.namespaced), "kind": .string(type.kind),
                "verbs": .array(resourceVerbs.map { .string($0) }),
            ])
            if let short = shortNames[type.plural] { entry["shortNames"] = .array(short.map { .string($0) }) }
            entries.append(entry)
            if info.hasStatusSubresource {
                entries.append(
                    .object([
                        "name": .string("\(type.plural)/status"), "singularName": .string(""),
                        "namespaced": .bool(type.namespaced), "kind": .string(type.kind),
                        "verbs": .array(statusVerbs.map { .string($0) }),
                    ]))
            }
        }
        return .object([
            "kind": .string("APIResourceList"), "apiVersion": .string("v1"),
            "groupVersion": .string(group.isEmpty ? version : "\(group)/\(version)"),
            "resources": .array(entries),
        ])
    }

    /// Kubernetes version priority: GA before beta before alpha, higher numbers first (`v1`, `v1beta3`,
    /// `v1beta1`, `v1alpha2`); the first is the group's preferred version.
    static func sortedVersions(_ versions: Set<String>) -> [String] {
        func rank(_ version: String) -> (Int, Int, Int, String) {
            let body = version.hasPrefix("v") ? version.dropFirst() : Substring(version)
            let digits = body.prefix { $0.isNumber }
            guard let major = Int(digits) else { return (3, 0, 0, version) }
            let rest = body.dropFirst(digits.count)
            if rest.isEmpty { return (0, -major, 0, version) }
            for (stability, label) in [(1, "beta"), (2, "alpha")] where rest.hasPrefix(label) {
                let minor = Int(rest.dropFirst(label.count)) ?? 0
                return (stability, -major, -minor, version)
            }
            return (3, 0, 0, version)
        }
        return versions.sorted { rank($0) < rank($1) }
    }
}
