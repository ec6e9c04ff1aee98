import ApusCore
import Foundation

/// Turns workload controllers into the Pods their controllers would create, since local mode runs no
/// kube-controller-manager: a Deployment becomes `replicas` Pods `<name>-<hash>-<i>` owned by a ReplicaSet named
/// `<name>-<hash>` (the injector and destination service derive `linkerd.io/proxy-deployment` from that name), a
/// StatefulSet becomes Pods `<name>-<i>`. The hash is of the pod template, so editing the template gives the Pods new
/// names (a rolling replacement: old ones deleted, new ones created) while a replica change keeps the others.
public enum WorkloadExpansion {
    public static let podTemplateHashLabel = "pod-template-hash"

    /// The Pods for a Deployment or StatefulSet object; empty for other kinds.
    /// - Throws: ``ManifestError`` `.invalidObject` when the template or replica count is malformed.
    public static func pods(
        for workload: JSONValue, namespace: String, file: String, document: Int
    ) throws(ManifestError) -> [JSONValue] {
        guard let kind = workload["kind"]?.stringValue, kind == "Deployment" || kind == "StatefulSet",
            let name = workload["metadata"]?["name"]?.stringValue
        else { return [] }
        let replicasValue = workload["spec"]?["replicas"]
        let replicas: Int
        switch replicasValue {
        case nil, .null?: replicas = 1
        case .number(let number)? where number >= 0 && number.rounded() == number && number <= 1000:
            replicas = Int(number)
        default:
            throw ManifestError(
                .invalidObject, file: file, document: document,
                "spec.replicas of \(kind) \(name) must be an integer 0-1000")
        }
        guard let template = workload["spec"]?["template"], case .object = template,
            let spec = template["spec"], case .object = spec
        else {
            throw ManifestError(
                .invalidObject, file: file, document: document, "\(kind) \(name) has no spec.template.spec")
        }
        let templateMetadata = template["metadata"]?.objectValue ?? [:]
        var labels = templateMetadata["labels"]?.objectValue ?? [:]
        let annotations = templateMetadata["annotations"]
        var pods: [JSONValue] = []
        let hash = templateHash(template)
        let owner: [String: JSONValue]
        if kind == "Deployment" {
            labels[podTemplateHashLabel] = .string(hash)
            let replicaSet = "\(name)-\(hash)"
            owner = [
                "apiVersion": .string("apps/v1"), "kind": .string("ReplicaSet"), "name": .string(replicaSet),
                "uid": .string(syntheticUID("\(namespace)/\(replicaSet)")), "controller": .bool(true),
                "blockOwnerDeletion": .bool(true),
            ]
        } else {
            owner = [
                "apiVersion": .string("apps/v1"), "kind": .string("StatefulSet"), "name": .string(name),
                "uid": .string(syntheticUID("\(namespace)/statefulset/\(name)")), "controller": .bool(true),
                "blockOwnerDeletion": .bool(true),
            ]
        }
        for index in 0..<replicas {
            let podName = kind == "Deployment" ? "\(name)-\(hash)-\(index)" : "\(name)-\(index)"
            var podLabels = labels
            if kind == "StatefulSet" { podLabels["statefulset.kubernetes.io/pod-name"] = .string(podName) }
            var metadata: [String: JSONValue] = [
                "name": .string(podName), "namespace": .string(namespace), "labels": .object(podLabels),
                "ownerReferences": .array([.object(owner)]),
            ]
            if let annotations, case .object = annotations { metadata["annotations"] = annotations }
            var podSpec = spec
            if kind == "StatefulSet", case .object(var fields) = podSpec {
                fields["hostname"] = .string(podName)
                podSpec = .object(fields)
            }
            pods.append(
                .object([
                    "apiVersion": .string("v1"), "kind": .string("Pod"), "metadata": .object(metadata), "spec": podSpec,
                ]))
        }
        return pods
    }

    /// A 10-character hash of the template in the alphabet Kubernetes uses for generated names (no vowels).
    static func templateHash(_ template: JSONValue) -> String {
        let bytes = (try? template.jsonData()) ?? Data(template.description.utf8)
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        let alphabet = Array("bcdfghjklmnpqrstvwxz2456789")
        var result = ""
        for _ in 0..<10 {
            result.append(alphabet[Int(hash % UInt64(alphabet.count))])
            hash /= UInt64(alphabet.count)
        }
        return result
    }

    /// A stable UUID-shaped uid for an owner that exists only as a name.
    static func syntheticUID(_ seed: String) -> String {
        var first: UInt64 = 0xcbf2_9ce4_8422_2325
        var second: UInt64 = 0x8422_2325_cbf2_9ce4
        for byte in seed.utf8 {
            first = (first ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
            second = (second ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        let hex = String(format: "%016llx%016llx", first, second)
        let characters = Array(hex)
        return [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { String(characters[$0]) }.joined(separator: "-")
    }
}
