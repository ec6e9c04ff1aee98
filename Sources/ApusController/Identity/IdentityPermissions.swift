import ApusCore

extension IdentityService {
    /// Every API call the identity service makes, for `config/rbac` (merged into the controller's list by the
    /// controller-manager):
    /// - `create tokenreviews` (cluster-wide, as reviews are not namespaced) by ``TokenReviewValidator``;
    /// - `list`/`watch` on the issuer Secret and the trust-roots ConfigMap, pinned by name in the control
    ///   namespace, by ``KubernetesIssuerSource``'s informers (each lists and watches with
    ///   `fieldSelector=metadata.name=<name>`, the form RBAC's `resourceNames` can authorize; no `get` is made);
    /// - Events `IssuerUpdated`, `IssuerValidationFailed` and `IssuedLeafCertificate` through the shared
    ///   ``EventRecorder``, whose `create`/`patch` on events the controller-manager already declares.
    public static let requiredPermissions: [PermissionRule] = [
        PermissionRule(TokenReview.resourceType, verbs: ["create"], scope: .cluster),
        PermissionRule(
            Secret.resourceType, verbs: ["list", "watch"], scope: .namespace,
            names: [KubernetesIssuerSource.secretName]),
        PermissionRule(
            ConfigMap.resourceType, verbs: ["list", "watch"], scope: .namespace,
            names: [KubernetesIssuerSource.trustRootsName]),
    ]
}
