/// One problem found while validating a resource, located by a field path such as
/// `spec.routes[2].condition.pathRegex`.
///
/// Field paths use the Kubernetes `field.Path` notation, so they can be copied into a status condition,
/// an admission `Status.details.causes[].field` or a `kubectl explain` query unchanged.
public struct ValidationIssue: Hashable, Sendable, CustomStringConvertible {
    /// Dotted path from the object root, with `[n]` for list indices.
    public var field: String
    /// What is wrong, naming the offending value where that helps.
    public var message: String

    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }

    public var description: String { "\(field): \(message)" }
}

/// Every problem found in one resource; thrown by ``ServiceProfile/compile()`` and
/// ``HTTPRoute/compile()``.
///
/// Validation keeps going after the first problem so one status condition can list everything to fix.
public struct ValidationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Never empty.
    public var issues: [ValidationIssue]

    public init(issues: [ValidationIssue]) {
        self.issues = issues
    }

    /// `field: message; field: message`, suitable for a condition message.
    public var description: String { issues.map(\.description).joined(separator: "; ") }

    /// The issues as API `Status` causes (reason `FieldValueInvalid`), for an admission webhook denial.
    public var causes: [Status.Cause] {
        issues.map { Status.Cause(reason: "FieldValueInvalid", message: $0.message, field: $0.field) }
    }
}

/// Collects issues under a moving field path; internal helper for the validators.
struct IssueCollector {
    private(set) var issues: [ValidationIssue] = []

    mutating func add(_ field: String, _ message: String) {
        issues.append(ValidationIssue(field: field, message: message))
    }

    func throwIfAny() throws(ValidationError) {
        if !issues.isEmpty { throw ValidationError(issues: issues) }
    }
}
