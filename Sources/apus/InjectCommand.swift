import ApusCore
import ApusInjector
import ArgumentParser
import Foundation
import Yams

/// Options shared by `apus inject` and `apus uninject`: where manifests come from.
struct ManifestInputs: ParsableArguments {
    @Argument(help: "Files or directories with YAML or JSON manifests; - reads standard input.")
    var inputs: [String] = ["-"]
}

/// `apus inject`: adds the mesh to workload manifests and prints them.
///
/// By default only the annotation `linkerd.io/inject: enabled` is added to each pod template, and the webhook
/// renders the proxy when the pods are created (so later proxy settings apply on the next rollout). `--manual`
/// renders the whole sidecar with the webhook's own code, for clusters without the webhook.
struct InjectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inject",
        abstract: "Add the Apus proxy to Kubernetes workload manifests.",
        discussion: """
            Reads multi-document YAML or JSON (List kinds included) and prints every document: Pods, Deployments, \
            StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs and CronJobs are changed, all other \
            documents are printed byte for byte. Example: apus inject deploy.yaml | kubectl apply -f -
            """
    )

    @OptionGroup var source: ManifestInputs

    @Flag(help: "Render the proxy sidecar into the manifests instead of only adding the inject annotation.")
    var manual = false

    @Option(help: "Proxy image (without tag).")
    var proxyImage = InjectorDefaults().proxyImage

    @Option(help: "Proxy image tag.")
    var proxyVersion = ApusVersion.current

    @Option(help: "Namespace of the Apus control plane.")
    var controlPlaneNamespace = "apus"

    @Option(help: "Trust domain of mesh identities.")
    var trustDomain = "cluster.local"

    @Option(help: "Kubernetes cluster domain.")
    var clusterDomain = "cluster.local"

    @Option(help: "PEM file with the identity trust anchors (required for mTLS with --manual).")
    var identityTrustAnchorsFile: String?

    @Flag(inversion: .prefixedEnableDisable, help: "Inject the proxy as a native sidecar (Kubernetes 1.29+).")
    var nativeSidecar = true

    func run() throws {
        var anchors = ""
        if let path = identityTrustAnchorsFile {
            do {
                anchors = try String(contentsOfFile: path, encoding: .utf8)
            } catch {
                throw ValidationError(
                    "cannot read --identity-trust-anchors-file \(path): \(error.localizedDescription)")
            }
        }
        let defaults = InjectorDefaults(
            proxyImage: proxyImage, proxyVersion: proxyVersion, controlPlaneNamespace: controlPlaneNamespace,
            trustDomain: trustDomain, clusterDomain: clusterDomain, trustAnchorsPEM: anchors,
            nativeSidecar: nativeSidecar, createdBy: "apus/cli \(ApusVersion.current)")
        let transformer = ManifestTransformer(
            operation: manual ? .injectManual : .annotate, injector: ProxyInjector(defaults: defaults))
        try transformer.run(inputs: source.inputs)
    }
}

/// `apus uninject`: removes what `apus inject` (either mode) or the webhook added.
struct UninjectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uninject",
        abstract: "Remove the Apus proxy from Kubernetes workload manifests."
    )

    @OptionGroup var source: ManifestInputs

    func run() throws {
        let transformer = ManifestTransformer(
            operation: .uninject, injector: ProxyInjector(defaults: InjectorDefaults()))
        try transformer.run(inputs: source.inputs)
    }
}

/// A problem with one input, named by file and document so the user can find it.
struct ManifestError: Error, CustomStringConvertible {
    var file: String
    var document: Int?
    var message: String

    var description: String {
        if let document { return "\(file): document \(document): \(message)" }
        return "\(file): \(message)"
    }
}

/// Reads manifests, changes the pod templates in them and prints the result; untouched documents keep their
/// exact bytes, changed YAML documents keep their key order (new keys come last) but lose comments.
struct ManifestTransformer {
    enum Operation {
        case annotate, injectManual, uninject
    }

    let operation: Operation
    let injector: ProxyInjector

    /// Where each workload kind keeps its pod template.
    static let templatePaths: [String: [String]] = [
        "Pod": [],
        "Deployment": ["spec", "template"],
        "StatefulSet": ["spec", "template"],
        "DaemonSet": ["spec", "template"],
        "ReplicaSet": ["spec", "template"],
        "ReplicationController": ["spec", "template"],
        "Job": ["spec", "template"],
        "CronJob": ["spec", "jobTemplate", "spec", "template"],
    ]

    func run(inputs: [String]) throws {
        var outputs: [String] = []
        var failed = false
        for input in inputs {
            do {
                for (name, text) in try read(input) {
                    outputs.append(try transform(text, file: name))
                }
            } catch {
                printError("Error: \(error)")
                failed = true
            }
        }
        var output = ""
        for (index, text) in outputs.enumerated() {
            if index > 0 {
                if !output.hasSuffix("\n") { output += "\n" }
                output += "---\n"
            }
            output += text
        }
        FileHandle.standardOutput.write(Data(output.utf8))
        if failed { throw ExitCode.failure }
    }

    /// The files behind an input: stdin, a file, or every `.yaml`/`.yml`/`.json` file under a directory (sorted).
    func read(_ input: String) throws(ManifestError) -> [(String, String)] {
        if input == "-" {
            let data = FileHandle.standardInput.readDataToEndOfFile()
            guard let text = String(data: data, encoding: .utf8) else {
                throw ManifestError(file: "<stdin>", message: "input is not UTF-8")
            }
            return [("<stdin>", text)]
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: input, isDirectory: &isDirectory) else {
            throw ManifestError(file: input, message: "no such file or directory")
        }
        var files: [String] = [input]
        if isDirectory.boolValue {
            let root = URL(fileURLWithPath: input)
            let enumerator = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil)
            files = (enumerator?.allObjects as? [URL] ?? [])
                .filter { ["yaml", "yml", "json"].contains($0.pathExtension.lowercased()) }
                .map(\.path).sorted()
        }
        var result: [(String, String)] = []
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ManifestError(file: file, message: "cannot be read")
            }
            guard let text = String(data: data, encoding: .utf8) else {
                throw ManifestError(file: file, message: "is not UTF-8")
            }
            result.append((file, text))
        }
        return result
    }

    /// Transforms one file's text: JSON stays JSON, YAML stays YAML (document by document).
    func transform(_ text: String, file: String) throws(ManifestError) -> String {
        let trimmed = text.drop { $0.isWhitespace }
        if trimmed.first == "{" || trimmed.first == "[",
            let json = try? JSONValue(json: Data(text.utf8))
        {
            var changed = false
            let result = try transformDocument(json, file: file, document: 1, changed: &changed)
            guard changed else { return text }
            return Self.prettyJSON(result) + "\n"
        }
        return try transformYAML(text, file: file)
    }

    private func transformYAML(_ text: String, file: String) throws(ManifestError) -> String {
        var output = ""
        for (index, chunk) in Self.splitDocuments(text).enumerated() {
            let number = index + 1
            let node: Node?
            do {
                node = try Yams.compose(yaml: chunk.body)
            } catch {
                throw ManifestError(file: file, document: number, message: "invalid YAML: \(error)")
            }
            guard let node, case .mapping = node else {
                output += chunk.separator + chunk.body
                continue
            }
            let json = try YAMLBridge.json(from: node, file: file, document: number)
            var changed = false
            var operations: [JSONPatchOperation] = []
            _ = try transformDocument(
                json, file: file, document: number, changed: &changed, operations: &operations)
            guard changed else {
                output += chunk.separator + chunk.body
                continue
            }
            do {
                let patched = try YAMLBridge.apply(operations, to: node)
                output += chunk.separator + (try Yams.serialize(node: patched, width: -1, allowUnicode: true))
            } catch {
                throw ManifestError(file: file, document: number, message: "cannot write the result: \(error)")
            }
        }
        return output
    }

    func transformDocument(_ json: JSONValue, file: String, document: Int, changed: inout Bool) throws(ManifestError)
        -> JSONValue
    {
        var operations: [JSONPatchOperation] = []
        return try transformDocument(json, file: file, document: document, changed: &changed, operations: &operations)
    }

    /// Collects the operations for a document (a List's items recursively) and returns the changed document.
    func transformDocument(
        _ json: JSONValue, file: String, document: Int, changed: inout Bool, operations: inout [JSONPatchOperation]
    ) throws(ManifestError) -> JSONValue {
        let ops = try collect(json, prefix: [], file: file, document: document)
        guard !ops.isEmpty else { return json }
        changed = true
        operations = ops
        do {
            return try JSONPatch.apply(ops, to: json)
        } catch {
            throw ManifestError(file: file, document: document, message: "cannot apply the change: \(error)")
        }
    }

    private func collect(_ object: JSONValue, prefix: [String], file: String, document: Int) throws(ManifestError)
        -> [JSONPatchOperation]
    {
        let kind = object["kind"]?.stringValue ?? ""
        let name = object["metadata"]?["name"]?.stringValue ?? ""
        let label = "\(kind.lowercased()) \"\(name)\""
        if kind == "List" || kind.hasSuffix("List"), let items = object["items"]?.arrayValue {
            var result: [JSONPatchOperation] = []
            for (index, item) in items.enumerated() {
                result += try collect(item, prefix: prefix + ["items", String(index)], file: file, document: document)
            }
            return result
        }
        guard let templatePath = Self.templatePaths[kind] else { return [] }
        var template = object
        for token in templatePath {
            guard let next = template[token] else {
                throw ManifestError(
                    file: file, document: document,
                    message: "\(label) has no \(templatePath.joined(separator: ".")) pod template")
            }
            template = next
        }
        guard template.objectValue != nil else {
            throw ManifestError(
                file: file, document: document, message: "\(label): the pod template is not an object")
        }
        let namespaceName = object["metadata"]?["namespace"]?.stringValue
        let namespace = namespaceName.map { Namespace(metadata: ObjectMeta(name: $0)) }
        let owner = kind == "Pod" ? nil : WorkloadOwner(kind: kind, name: name)
        let ops: [JSONPatchOperation]
        switch operation {
        case .annotate:
            let decision = injector.decideTemplate(template, namespace: namespace)
            guard case .inject = decision else {
                report("\(label) skipped: \(Self.reason(decision))")
                return []
            }
            let current = template["metadata"]?["annotations"]?[InjectorNames.inject]?.stringValue
            guard current == nil else {
                report("\(label) already has \(InjectorNames.inject): \(current ?? "")")
                return []
            }
            var builder: [JSONPatchOperation] = []
            if template["metadata"]?.objectValue == nil { builder.append(.add("/metadata", .object([:]))) }
            if template["metadata"]?["annotations"]?.objectValue == nil {
                builder.append(.add("/metadata/annotations", .object([:])))
            }
            builder.append(.add(JSONPointer.path("metadata", "annotations", InjectorNames.inject), .string("enabled")))
            ops = builder
            report("\(label) annotated")
        case .injectManual:
            let result = injector.injectTemplate(template, owner: owner, namespace: namespace)
            for warning in result.warnings { report("\(label): warning: \(warning)") }
            guard case .inject = result.decision else {
                report("\(label) skipped: \(Self.reason(result.decision))")
                return []
            }
            ops = result.patch
            report("\(label) injected")
        case .uninject:
            let result = injector.uninject(template)
            for warning in result.warnings { report("\(label): warning: \(warning)") }
            ops = result.patch
            report(result.changed ? "\(label) uninjected" : "\(label) has no proxy")
        }
        let base = JSONPointer.path(prefix + templatePath)
        return ops.map { operation in
            var prefixed = operation
            prefixed.path = base + operation.path
            if let from = operation.from { prefixed.from = base + from }
            return prefixed
        }
    }

    private static func reason(_ decision: InjectionDecision) -> String {
        if case .skip(let reason) = decision { return reason }
        return "injected"
    }

    private func report(_ line: String) { printError(line) }

    /// Splits YAML text at `---` lines; each part keeps its separator line so unchanged parts print verbatim.
    static func splitDocuments(_ text: String) -> [(separator: String, body: String)] {
        var parts: [(separator: String, body: String)] = []
        var separator = ""
        var body = ""
        var lines: [Substring] = []
        var start = text.startIndex
        while start < text.endIndex {
            let end = text[start...].firstIndex(of: "\n").map { text.index(after: $0) } ?? text.endIndex
            lines.append(text[start..<end])
            start = end
        }
        for line in lines {
            let content = line.hasSuffix("\n") ? line.dropLast() : line
            let isSeparator =
                content == "---" || content.hasPrefix("--- ") || content.hasPrefix("---\t")
                || content.hasPrefix("---\r")
            if isSeparator {
                if !separator.isEmpty || !body.isEmpty { parts.append((separator, body)) }
                separator = String(line)
                body = ""
            } else {
                body += line
            }
        }
        if !separator.isEmpty || !body.isEmpty { parts.append((separator, body)) }
        return parts
    }

    static func prettyJSON(_ value: JSONValue) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "\(value)"
    }
}

func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

/// Conversions between Yams nodes and `JSONValue`, and JSON patches applied to nodes so key order survives.
enum YAMLBridge {
    struct Unsupported: Error, CustomStringConvertible {
        var description: String
    }

    static func json(from node: Node, file: String, document: Int) throws(ManifestError) -> JSONValue {
        do {
            return try json(from: node)
        } catch {
            throw ManifestError(file: file, document: document, message: error.description)
        }
    }

    static func json(from node: Node) throws(Unsupported) -> JSONValue {
        switch node {
        case .scalar(let scalar):
            switch Resolver.default.resolveTag(of: node) {
            case .null: return .null
            case .bool: return node.bool.map { .bool($0) } ?? .string(scalar.string)
            case .int: return node.int.map { .number(Double($0)) } ?? .string(scalar.string)
            case .float: return node.float.map { .number($0) } ?? .string(scalar.string)
            default: return .string(scalar.string)
            }
        case .sequence(let sequence):
            var items: [JSONValue] = []
            for item in sequence { items.append(try json(from: item)) }
            return .array(items)
        case .mapping(let mapping):
            var object: [String: JSONValue] = [:]
            for (key, value) in mapping {
                guard let name = key.string else { throw Unsupported(description: "a mapping key is not a string") }
                object[name] = try json(from: value)
            }
            return .object(object)
        case .alias:
            throw Unsupported(description: "YAML aliases are not supported in manifests")
        }
    }

    static func node(from value: JSONValue) -> Node {
        switch value {
        case .null: return Node("null", Tag(.null))
        case .bool(let flag): return Node(flag ? "true" : "false", Tag(.bool))
        case .number(let number):
            if number.rounded() == number, abs(number) < 9.0e15 { return Node(String(Int64(number)), Tag(.int)) }
            return Node(String(number), Tag(.float))
        case .string(let text):
            if text.contains("\n") { return Node(text, Tag(.str), .literal) }
            return .scalar(text.represented())
        case .array(let items):
            return Node(items.map(node(from:)))
        case .object(let object):
            // `name` first, as kubectl and people write it; the rest sorted so output is reproducible.
            let keys = object.keys.sorted { ($0 == "name" ? 0 : 1, $0) < ($1 == "name" ? 0 : 1, $1) }
            return Node(keys.map { (Node($0), node(from: object[$0] ?? .null)) })
        }
    }

    /// Applies `add`, `remove` and `replace` operations (the ones the injector emits) to a node tree.
    static func apply(_ operations: [JSONPatchOperation], to root: Node) throws -> Node {
        var current = root
        for operation in operations {
            guard let tokens = JSONPointer.tokens(operation.path), !tokens.isEmpty else {
                throw Unsupported(description: "cannot patch path \"\(operation.path)\"")
            }
            switch operation.op {
            case .add, .replace:
                let value = node(from: operation.value ?? .null)
                current = try edit(current, tokens[...]) { parent, last in
                    try set(value, in: parent, at: last, inserting: operation.op == .add)
                }
            case .remove:
                current = try edit(current, tokens[...]) { parent, last in try delete(from: parent, at: last) }
            case .move, .copy, .test:
                throw Unsupported(description: "\(operation.op.rawValue) is not supported on YAML")
            }
        }
        return current
    }

    private static func edit(_ node: Node, _ tokens: ArraySlice<String>, _ change: (Node, String) throws -> Node)
        throws -> Node
    {
        guard let first = tokens.first else { return node }
        if tokens.count == 1 { return try change(node, first) }
        switch node {
        case .mapping(var mapping):
            guard let index = mapping.firstIndex(where: { $0.key.string == first }) else {
                throw Unsupported(description: "no member \(first)")
            }
            let entry = mapping[index]
            mapping[index] = (entry.key, try edit(entry.value, tokens.dropFirst(), change))
            return .mapping(mapping)
        case .sequence(var sequence):
            guard let index = Int(first), sequence.indices.contains(index) else {
                throw Unsupported(description: "no element \(first)")
            }
            sequence[index] = try edit(sequence[index], tokens.dropFirst(), change)
            return .sequence(sequence)
        default:
            throw Unsupported(description: "\(first) is below a scalar")
        }
    }

    private static func set(_ value: Node, in parent: Node, at token: String, inserting: Bool) throws -> Node {
        switch parent {
        case .mapping(var mapping):
            if let index = mapping.firstIndex(where: { $0.key.string == token }) {
                mapping[index] = (mapping[index].key, value)
            } else {
                mapping[token] = value
            }
            return .mapping(mapping)
        case .sequence(var sequence):
            let index = token == "-" ? sequence.count : Int(token) ?? -1
            guard index >= 0, index <= sequence.count else { throw Unsupported(description: "no element \(token)") }
            if inserting || index == sequence.count {
                sequence.insert(value, at: index)
            } else {
                sequence[index] = value
            }
            return .sequence(sequence)
        default:
            throw Unsupported(description: "\(token) is below a scalar")
        }
    }

    private static func delete(from parent: Node, at token: String) throws -> Node {
        switch parent {
        case .mapping(var mapping):
            guard let key = mapping.first(where: { $0.key.string == token })?.key else {
                throw Unsupported(description: "no member \(token)")
            }
            mapping[key] = nil
            return .mapping(mapping)
        case .sequence(var sequence):
            guard let index = Int(token), sequence.indices.contains(index) else {
                throw Unsupported(description: "no element \(token)")
            }
            sequence.remove(at: index)
            return .sequence(sequence)
        default:
            throw Unsupported(description: "\(token) is below a scalar")
        }
    }
}
