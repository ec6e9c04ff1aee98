import ApusCore
import Foundation
import Testing

/// One permission: a verb on a resource, granted cluster-wide or in the controller's namespace.
struct Grant: Hashable, Comparable, CustomStringConvertible {
    var apiGroup: String
    var resource: String
    var verb: String
    var scope: String
    var resourceNames: [String]

    var description: String {
        let names = resourceNames.isEmpty ? "" : " \(resourceNames)"
        return "\(scope) \(apiGroup.isEmpty ? "core" : apiGroup)/\(resource) \(verb)\(names)"
    }

    static func < (lhs: Grant, rhs: Grant) -> Bool { lhs.description < rhs.description }
}

/// An entry of config/rbac/permissions.json.
struct PermissionEntry: Decodable {
    var apiGroup: String
    var resource: String
    var verbs: [String]
    var scope: String
    var resourceNames: [String]?
}

@Suite("config/rbac")
struct RBACTests {
    static let namespace = "apus"
    static let serviceAccount = "apus-controller"

    let objects: [ManifestObject]

    init() throws {
        let kustomization = try #require(try YAMLDocuments.load(Repository.url("config/rbac/kustomization.yaml")).first)
        let files = (kustomization["resources"]?.arrayValue ?? []).compactMap(\.stringValue)
            .map { Repository.url("config/rbac/\($0)") }
        objects = try ManifestObject.load(files)
    }

    private func objects(kind: String) -> [ManifestObject] { objects.filter { $0.kind == kind } }

    /// Every grant the controller's ServiceAccount receives through the bindings in config/rbac.
    private func grantsFromYAML() throws -> [Grant] {
        var grants: [Grant] = []
        for binding in objects(kind: "ClusterRoleBinding") + objects(kind: "RoleBinding") {
            let subjects = binding.object["subjects"]?.arrayValue ?? []
            let bindsController = subjects.contains {
                $0["kind"] == .string("ServiceAccount") && $0["name"] == .string(Self.serviceAccount)
                    && $0["namespace"] == .string(Self.namespace)
            }
            guard bindsController else { continue }
            let roleKind = binding.object.value(at: "roleRef", "kind")?.stringValue ?? ""
            let roleName = binding.object.value(at: "roleRef", "name")?.stringValue ?? ""
            let role = try #require(
                objects(kind: roleKind).first(where: { $0.name == roleName }),
                "\(binding) binds missing \(roleKind) \(roleName)")
            let scope = binding.kind == "ClusterRoleBinding" ? "cluster" : "namespace"
            for rule in role.object["rules"]?.arrayValue ?? [] {
                let names = (rule["resourceNames"]?.arrayValue ?? []).compactMap(\.stringValue).sorted()
                for group in rule["apiGroups"]?.arrayValue?.compactMap(\.stringValue) ?? [] {
                    for resource in rule["resources"]?.arrayValue?.compactMap(\.stringValue) ?? [] {
                        for verb in rule["verbs"]?.arrayValue?.compactMap(\.stringValue) ?? [] {
                            grants.append(
                                Grant(
                                    apiGroup: group, resource: resource, verb: verb, scope: scope, resourceNames: names)
                            )
                        }
                    }
                }
            }
        }
        return grants.sorted()
    }

    private func grantsFromTable() throws -> [Grant] {
        let data = try Data(contentsOf: Repository.url("config/rbac/permissions.json"))
        return try JSONDecoder().decode([PermissionEntry].self, from: data).flatMap { entry in
            entry.verbs.map {
                Grant(
                    apiGroup: entry.apiGroup, resource: entry.resource, verb: $0, scope: entry.scope,
                    resourceNames: (entry.resourceNames ?? []).sorted())
            }
        }.sorted()
    }

    @Test("the RBAC YAML grants exactly what permissions.json lists")
    func yamlMatchesPermissionTable() throws {
        let fromYAML = try grantsFromYAML()
        let fromTable = try grantsFromTable()
        let onlyInYAML = Set(fromYAML).subtracting(fromTable).sorted().map(\.description)
        let onlyInTable = Set(fromTable).subtracting(fromYAML).sorted().map(\.description)
        #expect(onlyInYAML.isEmpty, "granted by the YAML but not in permissions.json: \(onlyInYAML)")
        #expect(onlyInTable.isEmpty, "in permissions.json but not granted by the YAML: \(onlyInTable)")
        #expect(fromYAML.count == Set(fromYAML).count, "the YAML grants something twice")
        #expect(fromTable.count == Set(fromTable).count, "permissions.json lists something twice")
    }

    @Test("no wildcards, no unbound roles, namespaced objects live in apus")
    func leastPrivilegeShape() throws {
        for role in objects(kind: "ClusterRole") + objects(kind: "Role") {
            for rule in role.object["rules"]?.arrayValue ?? [] {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    let values = rule[field]?.arrayValue?.compactMap(\.stringValue) ?? []
                    #expect(!values.contains("*"), "\(role): wildcard in \(field)")
                }
            }
            let bound = (objects(kind: "ClusterRoleBinding") + objects(kind: "RoleBinding")).contains {
                $0.object.value(at: "roleRef", "kind")?.stringValue == role.kind
                    && $0.object.value(at: "roleRef", "name")?.stringValue == role.name
            }
            #expect(bound, "\(role) is not bound to anything")
        }
        for object in objects where ["ServiceAccount", "Role", "RoleBinding"].contains(object.kind) {
            #expect(object.object.value(at: "metadata", "namespace") == .string(Self.namespace), "\(object)")
        }
        #expect(objects(kind: "ServiceAccount").map(\.name) == [Self.serviceAccount])
    }

    @Test("secrets and configmaps, when granted, are readable only by name, only in apus")
    func secretsArePinned() throws {
        let sensitive = try grantsFromYAML().filter {
            $0.apiGroup.isEmpty && ["secrets", "configmaps"].contains($0.resource)
        }
        for grant in sensitive {
            #expect(grant.scope == "namespace" && !grant.resourceNames.isEmpty, "\(grant) is broader than one object")
        }
    }

    @Test("the controller can never change a spec: only status subresources are writable")
    func onlyStatusIsWritable() throws {
        let writes: Set<String> = ["update", "patch", "create", "delete", "deletecollection"]
        for grant in try grantsFromYAML() where writes.contains(grant.verb) {
            // The injector's own webhook registration is the one spec the controller writes (its caBundle).
            let ownWebhook =
                grant.resource == "mutatingwebhookconfigurations"
                && (grant.verb == "create" || grant.resourceNames == ["apus-proxy-injector-webhook-config"])
            let allowed =
                grant.resource.hasSuffix("/status")
                || ["events", "tokenreviews", "leases"].contains(grant.resource) || ownWebhook
            #expect(allowed, "unexpected write permission: \(grant)")
        }
    }
}
