/// Builds the `labelSelector` query string and evaluates it locally (the informer's label index and tests use
/// the same rules as the server).
///
/// ```swift
/// let selector = LabelSelector()
///     .equals("app", "web")
///     .in("tier", ["a", "b"])
///     .doesNotExist("legacy")
/// selector.string // "app=web,tier in (a,b),!legacy"
/// ```
public struct LabelSelector: Sendable, Hashable, CustomStringConvertible {
    public enum Requirement: Sendable, Hashable {
        case equals(String, String)
        case notEquals(String, String)
        case `in`(String, [String])
        case notIn(String, [String])
        case exists(String)
        case doesNotExist(String)

        var string: String {
            switch self {
            case .equals(let key, let value): return "\(key)=\(value)"
            case .notEquals(let key, let value): return "\(key)!=\(value)"
            case .in(let key, let values): return "\(key) in (\(values.joined(separator: ",")))"
            case .notIn(let key, let values): return "\(key) notin (\(values.joined(separator: ",")))"
            case .exists(let key): return key
            case .doesNotExist(let key): return "!\(key)"
            }
        }

        func matches(_ labels: [String: String]) -> Bool {
            switch self {
            case .equals(let key, let value): return labels[key] == value
            // As on the server, `!=` and `notin` also match objects without the label.
            case .notEquals(let key, let value): return labels[key] != value
            case .in(let key, let values): return labels[key].map { values.contains($0) } ?? false
            case .notIn(let key, let values): return labels[key].map { !values.contains($0) } ?? true
            case .exists(let key): return labels[key] != nil
            case .doesNotExist(let key): return labels[key] == nil
            }
        }
    }

    public var requirements: [Requirement]

    public init(_ requirements: [Requirement] = []) { self.requirements = requirements }

    /// The selector of a `matchLabels` map, keys sorted so the string is stable.
    public init(matchLabels: [String: String]) {
        self.requirements = matchLabels.sorted { $0.key < $1.key }.map { .equals($0.key, $0.value) }
    }

    public func equals(_ key: String, _ value: String) -> LabelSelector { adding(.equals(key, value)) }
    public func notEquals(_ key: String, _ value: String) -> LabelSelector { adding(.notEquals(key, value)) }
    public func `in`(_ key: String, _ values: [String]) -> LabelSelector { adding(.in(key, values)) }
    public func notIn(_ key: String, _ values: [String]) -> LabelSelector { adding(.notIn(key, values)) }
    public func exists(_ key: String) -> LabelSelector { adding(.exists(key)) }
    public func doesNotExist(_ key: String) -> LabelSelector { adding(.doesNotExist(key)) }

    private func adding(_ requirement: Requirement) -> LabelSelector {
        var copy = self
        copy.requirements.append(requirement)
        return copy
    }

    /// The wire form; empty selects everything.
    public var string: String { requirements.map(\.string).joined(separator: ",") }

    public var description: String { string }

    /// Whether an object with these labels is selected (all requirements must hold).
    public func matches(_ labels: [String: String]?) -> Bool {
        let labels = labels ?? [:]
        return requirements.allSatisfy { $0.matches(labels) }
    }
}
