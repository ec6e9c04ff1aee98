/// Why a client configuration could not be built. Compared by ``code`` only, so tests and callers can
/// match `error == .missingContext` style without caring about the message.
///
/// None of these are expected in a correctly deployed process; they are startup failures to report and exit on.
public struct KubeConfigError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        /// The requested (or current) context is not defined in any kubeconfig file.
        case missingContext
        /// A context names a cluster that is not defined.
        case missingCluster
        /// A context names a user that is not defined.
        case missingUser
        /// No context was requested and no file sets `current-context`.
        case noCurrentContext
        /// A file (kubeconfig, CA, client certificate, token) does not exist or cannot be read.
        case unreadableFile
        /// A kubeconfig file is not valid YAML or does not have the kubeconfig shape.
        case invalidYAML
        /// A field has an unusable value (bad URL, bad base64); ``fieldPath`` names it.
        case invalidField
        /// `KUBERNETES_SERVICE_HOST`/`PORT` are not set.
        case notInCluster
        /// Neither a kubeconfig nor an in-cluster environment exists.
        case noConfiguration
    }

    public let code: Code
    /// What went wrong, with the names involved. Never contains credentials.
    public let message: String
    /// Where in the kubeconfig the problem is, e.g. `clusters[0].cluster.server`.
    public let fieldPath: String?

    init(code: Code, message: String, fieldPath: String? = nil) {
        self.code = code
        self.message = message
        self.fieldPath = fieldPath
    }

    public static func == (lhs: KubeConfigError, rhs: KubeConfigError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public var description: String {
        "KubeConfigError.\(code.rawValue): \(message)" + (fieldPath.map { " (at \($0))" } ?? "")
    }

    /// Patterns for `#expect(throws:)` and `catch` clauses.
    public static let missingContext = KubeConfigError(code: .missingContext, message: "")
    public static let missingCluster = KubeConfigError(code: .missingCluster, message: "")
    public static let missingUser = KubeConfigError(code: .missingUser, message: "")
    public static let noCurrentContext = KubeConfigError(code: .noCurrentContext, message: "")
    public static let unreadableFile = KubeConfigError(code: .unreadableFile, message: "")
    public static let invalidYAML = KubeConfigError(code: .invalidYAML, message: "")
    public static let invalidField = KubeConfigError(code: .invalidField, message: "")
    public static let notInCluster = KubeConfigError(code: .notInCluster, message: "")
    public static let noConfiguration = KubeConfigError(code: .noConfiguration, message: "")

    @inline(never)
    static func missingContext(_ name: String) -> KubeConfigError {
        KubeConfigError(code: .missingContext, message: "context '\(name)' is not defined")
    }

    @inline(never)
    static func missingCluster(_ name: String, context: String) -> KubeConfigError {
        KubeConfigError(code: .missingCluster, message: "context '\(context)' names undefined cluster '\(name)'")
    }

    @inline(never)
    static func missingUser(_ name: String, context: String) -> KubeConfigError {
        KubeConfigError(code: .missingUser, message: "context '\(context)' names undefined user '\(name)'")
    }

    @inline(never)
    static func unreadableFile(_ path: String, _ reason: String) -> KubeConfigError {
        KubeConfigError(code: .unreadableFile, message: "cannot read '\(path)': \(reason)")
    }

    @inline(never)
    static func invalidYAML(_ path: String, _ reason: String, fieldPath: String? = nil) -> KubeConfigError {
        KubeConfigError(
            code: .invalidYAML, message: "'\(path)' is not a valid kubeconfig: \(reason)", fieldPath: fieldPath)
    }

    @inline(never)
    static func invalidField(_ fieldPath: String, _ reason: String) -> KubeConfigError {
        KubeConfigError(code: .invalidField, message: reason, fieldPath: fieldPath)
    }

    @inline(never)
    static func notInCluster(_ reason: String) -> KubeConfigError {
        KubeConfigError(code: .notInCluster, message: reason)
    }

    @inline(never)
    static func noConfiguration(_ reason: String) -> KubeConfigError {
        KubeConfigError(code: .noConfiguration, message: reason)
    }
}
