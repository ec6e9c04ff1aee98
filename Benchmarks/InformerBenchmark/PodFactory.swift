import ApusCore
import BenchmarkSupport

/// The informer benchmark's updates: each rewrites one annotation of one Pod, round-robin.
extension PodFactory {
    /// The annotation each update rewrites, so every update is a real change with a new resourceVersion.
    static let updateAnnotation = "bench.apus.io/update"

    /// `pod` with the update annotation set to `sequence`.
    static func updated(_ pod: JSONValue, sequence: Int) -> JSONValue {
        var pod = pod
        pod["metadata"]?["annotations"]?[updateAnnotation] = .string(String(sequence))
        return pod
    }

    /// The update annotation pod `index` carries after updates `0..<updates` were applied round-robin over
    /// `pods` pods (update `k` touches pod `k % pods`), or nil when none touched it.
    static func expectedUpdate(index: Int, pods: Int, updates: Int) -> Int? {
        guard index < updates else { return nil }
        return index + (updates - 1 - index) / pods * pods
    }
}
