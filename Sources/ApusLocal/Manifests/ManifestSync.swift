import ApusCore
import Foundation
import KubernetesClient
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// Keeps the embedded API server's objects equal to the manifests in a folder: `kubectl apply` as a file watch.
///
/// Every `*.yaml`, `*.yml` and `*.json` file under the folder (recursively; hidden files and editor backups are
/// skipped) is read every ``Options/pollInterval``. Each object is owned by the file it comes from: a new file
/// creates its objects, an edited file updates what changed and deletes what it no longer declares, a removed
/// file deletes its objects. All writes go through the API server, so informers see ADDED, MODIFIED and DELETED
/// exactly as in a cluster.
///
/// A file that does not parse is reported (file and document) and its previously applied objects stay as they
/// were, so a half-saved edit never tears down a running workload. A document with an unsupported kind or a
/// malformed workload is reported and skipped; the file's other documents still apply.
///
/// Admission: Pods (declared or expanded from Deployments/StatefulSets by ``WorkloadExpansion``) that local mode
/// injects get the `linkerd.io/proxy-version` annotation the injector would add, which is how the destination
/// service tells meshed pods apart.
public final class ManifestSync: ServiceLifecycle.Service, Sendable {
    public struct Options: Sendable {
        public var directory: String
        public var pollInterval: Duration
        /// Recorded as `apus.io/local-source` on every object: the file (relative to ``directory``) it came from.
        public static let sourceAnnotation = "apus.io/local-source"

        public init(directory: String, pollInterval: Duration = .milliseconds(250)) {
            self.directory = directory
            self.pollInterval = pollInterval
        }
    }

    /// What one pass changed.
    public struct Report: Sendable, Hashable {
        public var created: [String] = []
        public var updated: [String] = []
        public var deleted: [String] = []
        /// Problems in the current files (also those seen in earlier passes and not yet fixed).
        public var errors: [ManifestError] = []
        /// Writes the API server refused; retried on the next pass.
        public var failures: [String] = []

        public var changed: Bool { !created.isEmpty || !updated.isEmpty || !deleted.isEmpty }
    }

    struct ObjectRef: Hashable, Sendable, CustomStringConvertible {
        var type: ResourceType
        var namespace: String?
        var name: String

        var description: String {
            let kind = type.kind.lowercased()
            return namespace.map { "\(kind) \($0)/\(name)" } ?? "\(kind) \(name)"
        }
    }

    private struct FileState {
        var fingerprint: Data
        var objects: [ObjectRef: JSONValue]
        var errors: [ManifestError]
    }

    private struct State {
        var files: [String: FileState] = [:]
        /// What was last written successfully, per object.
        var applied: [ObjectRef: JSONValue] = [:]
        var reportedErrors: Set<String> = []
    }

    public let options: Options
    private let client: KubernetesClient
    private let injection: LocalInjection
    private let state = NIOLockedValueBox(State())
    /// One pass at a time (the poll loop and tests' ``syncOnce()`` may overlap).
    private let passLock = NIOLockedValueBox(false)
    private let firstPassDone = NIOLockedValueBox(false)
    private let logger: Logger

    public init(
        client: KubernetesClient, options: Options, injection: LocalInjection = LocalInjection(),
        logger: Logger = Logger(label: "apus.local.manifests")
    ) {
        self.client = client
        self.options = options
        self.injection = injection
        self.logger = logger
    }

    /// The manifest problems of the current files.
    public var currentErrors: [ManifestError] {
        state.withLockedValue { state in state.files.keys.sorted().flatMap { state.files[$0]?.errors ?? [] } }
    }

    public func run() async {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                _ = await self.syncOnce()
                self.firstPassDone.withLockedValue { $0 = true }
                do { try await Task.sleep(for: self.options.pollInterval) } catch { return }
            }
        }
    }

    /// Returns once the poll loop has applied the folder once (or the task is cancelled): from then on, a pod
    /// missing from the API server is a pod missing from the manifests.
    public func waitUntilFirstPass() async {
        while !firstPassDone.withLockedValue({ $0 }) {
            do { try await Task.sleep(for: .milliseconds(50)) } catch { return }
        }
    }

    /// Reads the folder once and applies the differences.
    @discardableResult
    public func syncOnce() async -> Report {
        while passLock.withLockedValue({ running in
            if running { return true }
            running = true
            return false
        }) {
            try? await Task.sleep(for: .milliseconds(10))
        }
        defer { passLock.withLockedValue { $0 = false } }
        var report = Report()
        let files = scan()
        await readFiles(files)
        let desired = state.withLockedValue { state in
            var desired: [ObjectRef: JSONValue] = [:]
            for path in state.files.keys.sorted() {
                for (ref, object) in state.files[path]?.objects ?? [:] { desired[ref] = object }
            }
            return desired
        }
        let applied = state.withLockedValue { $0.applied }
        let upserts = desired.filter { applied[$0.key] != $0.value }.sorted { lhs, rhs in
            (LocalKinds.rank(lhs.key.type.kind), lhs.key.description)
                < (LocalKinds.rank(rhs.key.type.kind), rhs.key.description)
        }
        for (ref, object) in upserts {
            do {
                let created = try await apply(ref, object)
                state.withLockedValue { $0.applied[ref] = object }
                if created { report.created.append(ref.description) } else { report.updated.append(ref.description) }
            } catch {
                report.failures.append("\(ref): \(error)")
            }
        }
        let removals = applied.keys.filter { desired[$0] == nil }.sorted { lhs, rhs in
            (LocalKinds.rank(lhs.type.kind), lhs.description) > (LocalKinds.rank(rhs.type.kind), rhs.description)
        }
        for ref in removals {
            do {
                try await client.delete(ref.type, name: ref.name, namespace: ref.namespace)
                state.withLockedValue { $0.applied[ref] = nil }
                report.deleted.append(ref.description)
            } catch let error as KubernetesError where error.code == .notFound {
                state.withLockedValue { $0.applied[ref] = nil }
                report.deleted.append(ref.description)
            } catch {
                report.failures.append("\(ref): \(error)")
            }
        }
        report.errors = currentErrors
        log(report)
        return report
    }

    private func log(_ report: Report) {
        for line in report.created { logger.info("created \(line)") }
        for line in report.updated { logger.info("updated \(line)") }
        for line in report.deleted { logger.info("deleted \(line)") }
        for failure in report.failures { logger.warning("apply failed (retrying): \(failure)") }
        let fresh = state.withLockedValue { state -> [ManifestError] in
            let current = Set(report.errors.map(\.description))
            let fresh = report.errors.filter { !state.reportedErrors.contains($0.description) }
            state.reportedErrors = current
            return fresh
        }
        for error in fresh { logger.error("\(error)") }
    }

    /// Creates the object, or replaces it when it exists. Returns whether it was created.
    private func apply(_ ref: ObjectRef, _ object: JSONValue) async throws -> Bool {
        do {
            _ = try await client.create(ref.type, object, namespace: ref.namespace)
            return true
        } catch let error as KubernetesError where error.code == .alreadyExists {
            let current = try await client.get(ref.type, name: ref.name, namespace: ref.namespace)
            guard case .object(var fields) = object, case .object(var metadata)? = fields["metadata"] else {
                return false
            }
            metadata["resourceVersion"] = current["metadata"]?["resourceVersion"]
            fields["metadata"] = .object(metadata)
            if let status = current["status"] { fields["status"] = status }
            _ = try await client.update(ref.type, .object(fields))
            return false
        }
    }

    // MARK: - Reading

    private static let extensions: Set<String> = ["yaml", "yml", "json"]

    /// Manifest files under the folder, relative paths, sorted.
    private func scan() -> [String] {
        let root = URL(fileURLWithPath: options.directory)
        guard
            let enumerator = FileManager.default.enumerator(
                at: root, includingPropertiesForKeys: [.isRegularFileKey], options: [.skipsHiddenFiles])
        else { return [] }
        var files: [String] = []
        let rootPath = root.standardizedFileURL.path
        for case let url as URL in enumerator {
            guard Self.extensions.contains(url.pathExtension.lowercased()),
                (try? url.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true
            else { continue }
            var path = url.standardizedFileURL.path
            if path.hasPrefix(rootPath + "/") { path.removeFirst(rootPath.count + 1) }
            files.append(path)
        }
        return files.sorted()
    }

    private func readFiles(_ files: [String]) async {
        let present = Set(files)
        state.withLockedValue { state in
            for path in state.files.keys where !present.contains(path) { state.files[path] = nil }
        }
        for path in files {
            let full = URL(fileURLWithPath: options.directory).appendingPathComponent(path).path
            guard let data = FileManager.default.contents(atPath: full) else {
                // Vanished between listing and reading, or unreadable: keep what was applied from it.
                continue
            }
            let unchanged = state.withLockedValue { $0.files[path]?.fingerprint == data }
            if unchanged { continue }
            let previous = state.withLockedValue { $0.files[path]?.objects ?? [:] }
            let (objects, errors) = await objects(in: String(decoding: data, as: UTF8.self), file: path)
            state.withLockedValue { state in
                // A file that does not parse keeps its previous objects (the edit is probably half-saved).
                let keepPrevious = errors.contains { $0.code == .invalidSyntax }
                state.files[path] = FileState(
                    fingerprint: data, objects: keepPrevious ? previous : objects, errors: errors)
            }
        }
    }

    private func objects(in text: String, file: String) async -> ([ObjectRef: JSONValue], [ManifestError]) {
        let entries: [ManifestDocuments.Entry]
        do {
            entries = try ManifestDocuments.parse(text, file: file)
        } catch {
            return ([:], [error])
        }
        var objects: [ObjectRef: JSONValue] = [:]
        var errors: [ManifestError] = []
        var namespaces: [String: Namespace] = [:]
        for entry in entries where entry.object["kind"]?.stringValue == "Namespace" {
            if let namespace = try? entry.object.decode(as: Namespace.self), let name = namespace.metadata.name {
                namespaces[name] = namespace
            }
        }
        for entry in entries {
            do {
                for (ref, object) in try await normalize(entry, file: file, namespaces: namespaces) {
                    objects[ref] = object
                }
            } catch {
                errors.append(error)
            }
        }
        return (objects, errors)
    }

    /// The objects one document stands for (a workload also stands for its Pods), ready to write.
    private func normalize(
        _ entry: ManifestDocuments.Entry, file: String, namespaces: [String: Namespace]
    ) async throws(ManifestError) -> [(ObjectRef, JSONValue)] {
        let object = entry.object
        guard case .object = object else {
            throw ManifestError(.invalidObject, file: file, document: entry.document, "the document is not an object")
        }
        guard let apiVersion = object["apiVersion"]?.stringValue, let kind = object["kind"]?.stringValue else {
            throw ManifestError(
                .invalidObject, file: file, document: entry.document, "apiVersion and kind are required")
        }
        guard let name = object["metadata"]?["name"]?.stringValue, !name.isEmpty else {
            throw ManifestError(
                .invalidObject, file: file, document: entry.document, "\(kind) without metadata.name")
        }
        guard let type = LocalKinds.resourceType(apiVersion: apiVersion, kind: kind) else {
            throw ManifestError(
                .unsupportedKind, file: file, document: entry.document,
                "\(apiVersion) \(kind) \(name) is not served in local mode")
        }
        let namespace = type.namespaced ? (object["metadata"]?["namespace"]?.stringValue ?? "default") : nil
        var result: [(ObjectRef, JSONValue)] = [
            (ObjectRef(type: type, namespace: namespace, name: name), stamp(object, namespace: namespace, file: file))
        ]
        if kind == "Deployment" || kind == "StatefulSet" {
            for pod in try WorkloadExpansion.pods(
                for: object, namespace: namespace ?? "default", file: file, document: entry.document)
            {
                result.append(try await podEntry(pod, file: file, document: entry.document, namespaces: namespaces))
            }
        } else if kind == "Pod" {
            result[0] = try await podEntry(result[0].1, file: file, document: entry.document, namespaces: namespaces)
        }
        return result
    }

    private func podEntry(
        _ object: JSONValue, file: String, document: Int, namespaces: [String: Namespace]
    ) async throws(ManifestError) -> (ObjectRef, JSONValue) {
        let namespace = object["metadata"]?["namespace"]?.stringValue ?? "default"
        let pod: Pod
        do {
            pod = try object.decode(as: Pod.self)
        } catch {
            throw ManifestError(.invalidObject, file: file, document: document, "invalid Pod: \(error)")
        }
        let name = pod.metadata.name ?? ""
        var stamped = stamp(object, namespace: namespace, file: file)
        var namespaceObject = namespaces[namespace]
        if namespaceObject == nil {
            namespaceObject = try? await client.get(Namespace.self, name: namespace)
        }
        if injection.shouldInject(pod: pod, namespace: namespaceObject),
            case .object(var fields) = stamped, case .object(var metadata)? = fields["metadata"]
        {
            var annotations = metadata["annotations"]?.objectValue ?? [:]
            annotations[LocalInjection.proxyVersionAnnotation] = .string(ApusVersion.current)
            metadata["annotations"] = .object(annotations)
            fields["metadata"] = .object(metadata)
            stamped = .object(fields)
        }
        return (ObjectRef(type: Pod.resourceType, namespace: namespace, name: name), stamped)
    }

    private func stamp(_ object: JSONValue, namespace: String?, file: String) -> JSONValue {
        guard case .object(var fields) = object else { return object }
        var metadata = fields["metadata"]?.objectValue ?? [:]
        if let namespace { metadata["namespace"] = .string(namespace) }
        var annotations = metadata["annotations"]?.objectValue ?? [:]
        annotations[Options.sourceAnnotation] = .string(file)
        metadata["annotations"] = .object(annotations)
        fields["metadata"] = .object(metadata)
        return .object(fields)
    }
}
