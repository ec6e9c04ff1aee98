#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Why the proxy's environment cannot be turned into a ``ProxyConfiguration``.
///
/// Every case names the environment variable as the operator wrote it (`APUS_PROXY_…` or `LINKERD2_PROXY_…`), so
/// the message points at the line of the pod spec to fix; `value` is what was read, echoed back so a typo is
/// visible in the log without re-reading the manifest.
public enum ProxyConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The variable is set but its value does not parse; `expected` says what would.
    case invalidValue(variable: String, value: String, expected: String)
    /// A group of variables is only usable together (identity, destination) and this one is absent.
    case missingVariable(variable: String, requiredBy: String)
    /// Two variables say the same thing in different ways and disagree (or both are set where one must be).
    case conflictingVariables(String, String, reason: String)
    /// The variable names a file that cannot be read.
    case unreadableFile(variable: String, path: String, reason: String)

    /// The variable the error is about (the first one for ``conflictingVariables(_:_:reason:)``).
    public var variable: String {
        switch self {
        case .invalidValue(let variable, _, _), .missingVariable(let variable, _),
            .unreadableFile(let variable, _, _):
            return variable
        case .conflictingVariables(let first, _, _):
            return first
        }
    }

    public var description: String {
        switch self {
        case .invalidValue(let variable, let value, let expected):
            return "\(variable)=\(Self.quoted(value)) is invalid: expected \(expected)"
        case .missingVariable(let variable, let requiredBy):
            return "\(variable) is not set but \(requiredBy) requires it"
        case .conflictingVariables(let first, let second, let reason):
            return "\(first) and \(second) conflict: \(reason)"
        case .unreadableFile(let variable, let path, let reason):
            return "\(variable)=\(Self.quoted(path)) cannot be read: \(reason)"
        }
    }

    /// Values can be long (PEM bundles, JSON); the message keeps the start, enough to recognise the value.
    private static func quoted(_ value: String) -> String {
        let limit = 200
        let shown = value.count > limit ? String(value.prefix(limit)) + "…" : value
        return "\"" + shown.replacing("\n", with: "\\n") + "\""
    }
}
