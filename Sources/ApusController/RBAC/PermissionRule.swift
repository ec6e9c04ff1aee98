import ApusCore

/// One grant the controller needs from the API server.
///
/// The controller's components declare what they call (see ``ControllerManager/requiredPermissions``); the
/// checked-in `config/rbac/permissions.json` must equal that list and `config/rbac/*.yaml` must grant exactly it,
/// which the tests enforce. So RBAC can neither lag behind the code (a 403 in production) nor grant more than
/// the code uses.
public struct PermissionRule: Codable, Hashable, Sendable, CustomStringConvertible {
    /// Whether the grant is cluster-wide (ClusterRole) or in the control namespace only (Role).
    public enum Scope: String, Codable, Hashable, Sendable {
        case cluster
        case namespace
    }

    public var apiGroup: String
    /// A plural, optionally with a subresource: `pods`, `serviceprofiles/status`.
    public var resource: String
    public var verbs: [String]
    public var scope: Scope
    public var resourceNames: [String]?

    public init(
        apiGroup: String, resource: String, verbs: [String], scope: Scope, resourceNames: [String]? = nil
    ) {
        self.apiGroup = apiGroup
        self.resource = resource
        self.verbs = verbs.sorted()
        self.scope = scope
        self.resourceNames = resourceNames?.sorted()
    }

    /// A rule for a typed resource, so group and plural come from the same ``ResourceType`` the client uses.
    public init(_ type: ResourceType, subresource: String? = nil, verbs: [String], scope: Scope, names: [String]? = nil)
    {
        self.init(
            apiGroup: type.group, resource: subresource.map { "\(type.plural)/\($0)" } ?? type.plural, verbs: verbs,
            scope: scope, resourceNames: names)
    }

    /// The same grant with verbs and names in a canonical order, for comparisons.
    public var normalized: PermissionRule {
        PermissionRule(apiGroup: apiGroup, resource: resource, verbs: verbs, scope: scope, resourceNames: resourceNames)
    }

    public var description: String {
        let group = apiGroup.isEmpty ? "core" : apiGroup
        let names = resourceNames.map { " names=\($0.joined(separator: ","))" } ?? ""
        return "\(scope.rawValue) \(group)/\(resource) [\(verbs.joined(separator: ","))]\(names)"
    }
}
