import ApusCore
import Foundation
import Logging

/// What the kubelet remembers of a running pod in the state directory (`pods/<ns>/<name>/pod.json`), so a
/// controller restarted after a crash can adopt the pod's processes instead of starting them again.
///
/// A record names processes by pid *and* kernel start time (a pid alone may have been reused meanwhile), keeps the
/// pod's address (the proxies and peers know the pod by it) and the proxy's Certify token (the proxy holds it in a
/// file and renews its certificate with it).
struct PodRecord: Codable, Hashable, Sendable {
    struct Process: Codable, Hashable, Sendable {
        var container: String
        var pid: Int32
        var startTime: UInt64
    }

    var namespace: String
    var name: String
    var address: String
    /// The spec the processes were started from: adoption requires the same spec (an edit made while the
    /// controller was down restarts the pod, as it would have with the controller up).
    var spec: PodSpec?
    /// Whether a proxy runs beside the app (the injection decision the processes were started under).
    var proxied: Bool
    var proxyToken: String?
    var processes: [Process]

    var key: ObjectKey { ObjectKey(namespace: namespace, name: name) }
}

/// Reads and writes ``PodRecord``s under `<state>/pods/`.
struct PodRecordStore: Sendable {
    let podsDirectory: URL

    init(stateDirectory: String) {
        podsDirectory = URL(fileURLWithPath: stateDirectory).appendingPathComponent("pods")
    }

    func directory(of key: ObjectKey) -> URL {
        podsDirectory.appendingPathComponent(key.namespace ?? "default").appendingPathComponent(key.name)
    }

    func save(_ record: PodRecord) throws {
        let directory = directory(of: record.key)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let file = directory.appendingPathComponent("pod.json")
        try encoder.encode(record).write(to: file, options: .atomic)
        _ = chmod(file.path, 0o600)
    }

    /// Removes the pod's folder: record, token, identity and logs.
    func remove(_ key: ObjectKey) {
        let directory = directory(of: key)
        try? FileManager.default.removeItem(at: directory)
        // The namespace's folder goes with its last pod (rmdir fails on a folder that is not empty).
        _ = rmdir(directory.deletingLastPathComponent().path)
    }

    /// Every readable record; unreadable ones are reported and their folders removed (nothing can adopt them).
    func loadAll(logger: Logger) -> [ObjectKey: PodRecord] {
        let manager = FileManager.default
        var records: [ObjectKey: PodRecord] = [:]
        let namespaces = (try? manager.contentsOfDirectory(atPath: podsDirectory.path)) ?? []
        for namespace in namespaces {
            let namespaceDirectory = podsDirectory.appendingPathComponent(namespace)
            for name in (try? manager.contentsOfDirectory(atPath: namespaceDirectory.path)) ?? [] {
                let directory = namespaceDirectory.appendingPathComponent(name)
                let file = directory.appendingPathComponent("pod.json")
                guard let data = manager.contents(atPath: file.path),
                    let record = try? JSONDecoder().decode(PodRecord.self, from: data),
                    record.namespace == namespace, record.name == name
                else {
                    logger.warning("ignoring the unreadable pod record \(file.path)")
                    try? manager.removeItem(at: directory)
                    continue
                }
                records[record.key] = record
            }
        }
        return records
    }
}
