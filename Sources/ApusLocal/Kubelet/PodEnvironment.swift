import ApusCore

/// The environment a container's process gets, built the way the kubelet builds it: downward-API and literal
/// `env` entries in order, each able to refer to earlier ones with `$(NAME)` (`$$(` escapes), and the same
/// expansion applied to `command` and `args`.
enum PodEnvironment {
    /// Resolves `env` over `base`. Entries the local kubelet cannot resolve (Secret/ConfigMap references, unknown
    /// field paths) are left out and reported.
    static func resolve(
        _ env: [EnvVar], base: [String: String], pod: Pod, podIP: String
    ) -> (environment: [String: String], problems: [String]) {
        var environment = base
        var problems: [String] = []
        for variable in env {
            if let value = variable.value {
                environment[variable.name] = expand(value, environment)
            } else if let fieldPath = variable.valueFrom?.fieldRef?.fieldPath {
                if let value = field(fieldPath, pod: pod, podIP: podIP) {
                    environment[variable.name] = value
                } else {
                    problems.append("env \(variable.name): unsupported fieldRef \(fieldPath)")
                }
            } else if variable.valueFrom != nil {
                problems.append("env \(variable.name): Secret/ConfigMap references are not resolved in local mode")
            } else {
                environment[variable.name] = ""
            }
        }
        return (environment, problems)
    }

    static func field(_ path: String, pod: Pod, podIP: String) -> String? {
        switch path {
        case "metadata.name": return pod.metadata.name
        case "metadata.namespace": return pod.metadata.namespace ?? "default"
        case "metadata.uid": return pod.metadata.uid
        case "spec.serviceAccountName": return pod.spec?.serviceAccountName ?? "default"
        case "spec.nodeName": return "local"
        case "status.podIP", "status.hostIP": return podIP
        default:
            for (prefix, map) in [
                ("metadata.labels['", pod.metadata.labels), ("metadata.annotations['", pod.metadata.annotations),
            ] where path.hasPrefix(prefix) && path.hasSuffix("']") {
                let key = String(path.dropFirst(prefix.count).dropLast(2))
                return map?[key] ?? ""
            }
            return nil
        }
    }

    /// Kubernetes' `$(VAR)` expansion: defined variables are replaced, undefined references stay verbatim,
    /// `$$` is a literal `$`.
    static func expand(_ text: String, _ environment: [String: String]) -> String {
        guard text.contains("$") else { return text }
        var result = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            let next = text.index(after: index)
            guard character == "$", next < text.endIndex else {
                result.append(character)
                index = next
                continue
            }
            if text[next] == "$" {
                result.append("$")
                index = text.index(after: next)
            } else if text[next] == "(", let close = text[next...].firstIndex(of: ")") {
                let name = String(text[text.index(after: next)..<close])
                if let value = environment[name] {
                    result += value
                } else {
                    result += text[index...close]
                }
                index = text.index(after: close)
            } else {
                result.append(character)
                index = next
            }
        }
        return result
    }
}
