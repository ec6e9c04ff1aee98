import ApusCore
import ApusInjector
import Foundation
import Testing
import Yams

/// Golden files live in `Tests/ApusInjectorTests/Golden/`. To regenerate them after an intended change run
/// `UPDATE_GOLDEN=1 swift test --filter ApusInjectorTests` and review the diff before committing.
enum Golden {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden")
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static var updating: Bool { ProcessInfo.processInfo.environment["UPDATE_GOLDEN"] == "1" }

    static func url(_ name: String) -> URL { directory.appendingPathComponent(name) }

    static func read(_ name: String) throws -> String { try String(contentsOf: url(name), encoding: .utf8) }

    /// Compares with the checked-in file (or rewrites it under `UPDATE_GOLDEN=1`); a mismatch names the first
    /// differing line so the failure is readable without a diff tool.
    static func check(_ actual: String, _ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let file = url(name)
        if updating {
            try FileManager.default.createDirectory(
                at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
            try actual.write(to: file, atomically: true, encoding: .utf8)
            return
        }
        guard let expected = try? String(contentsOf: file, encoding: .utf8) else {
            Issue.record("golden \(name) is missing; run with UPDATE_GOLDEN=1", sourceLocation: sourceLocation)
            return
        }
        if actual != expected {
            let a = actual.split(separator: "\n", omittingEmptySubsequences: false)
            let e = expected.split(separator: "\n", omittingEmptySubsequences: false)
            let line = Array(zip(a, e)).firstIndex { $0.0 != $0.1 } ?? min(a.count, e.count)
            let got = line < a.count ? String(a[line]) : "<end>"
            let want = line < e.count ? String(e[line]) : "<end>"
            let message =
                "golden \(name) differs at line \(line + 1): got \(got.debugDescription), expected "
                + "\(want.debugDescription) (UPDATE_GOLDEN=1 regenerates)"
            Issue.record(Comment(rawValue: message), sourceLocation: sourceLocation)
        }
    }

    /// The defaults both the CLI invocation and the webhook tests use, so their outputs can be compared.
    static func defaults(createdBy: String = "apus/proxy-injector test") throws -> InjectorDefaults {
        InjectorDefaults(
            proxyVersion: "v-golden", trustAnchorsPEM: try read("anchors.pem"), createdBy: createdBy)
    }

    static func cliArguments(manual: Bool) -> [String] {
        var arguments = ["inject"]
        if manual {
            arguments += [
                "--manual", "--proxy-version", "v-golden", "--identity-trust-anchors-file",
                url("anchors.pem").path,
            ]
        }
        return arguments
    }
}

/// Runs the built `apus` executable (it sits next to the test bundle).
enum CLI {
    struct Output {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static func run(_ arguments: [String], stdin: String? = nil) throws -> Output {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("apus")
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let input = Pipe()
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
        try input.fileHandleForWriting.close()
        // Read stderr on another thread so neither pipe can fill up and block the child.
        let errorBox = ErrorBox()
        let reader = Thread { errorBox.data = err.fileHandleForReading.readDataToEndOfFile() }
        reader.start()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        while !errorBox.done { Thread.sleep(forTimeInterval: 0.005) }
        return Output(
            status: process.terminationStatus, stdout: normalize(String(decoding: stdout, as: UTF8.self)),
            stderr: String(decoding: errorBox.data ?? Data(), as: UTF8.self))
    }

    /// The client version appears in `linkerd.io/created-by`; goldens must not change with every release.
    static func normalize(_ text: String) -> String {
        text.replacingOccurrences(of: ApusVersion.current, with: "<version>")
    }

    private final class ErrorBox: @unchecked Sendable {
        private let lock = NSLock()
        private var stored: Data?
        var data: Data? {
            get { lock.withLock { stored } }
            set { lock.withLock { stored = newValue } }
        }
        var done: Bool { data != nil }
    }
}

enum YAMLDocuments {
    /// Every document of a YAML (or JSON) text as `JSONValue`, for comparisons that ignore formatting.
    static func parse(_ text: String) throws -> [JSONValue] {
        try Yams.load_all(yaml: text).map { document -> JSONValue in
            let data = try JSONSerialization.data(withJSONObject: document, options: [.fragmentsAllowed])
            return try JSONValue(json: data)
        }
    }
}

extension JSONValue {
    /// Drops `metadata.annotations["linkerd.io/created-by"]`, which differs between CLI and webhook by design.
    func removingCreatedBy() -> JSONValue {
        var copy = self
        if var metadata = copy["metadata"]?.objectValue, var annotations = metadata["annotations"]?.objectValue {
            annotations[InjectorNames.createdBy] = nil
            metadata["annotations"] = .object(annotations)
            copy["metadata"] = .object(metadata)
        }
        return copy
    }
}
