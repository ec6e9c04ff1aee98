import ApusCore
import ApusInjector
import Foundation
import Testing

/// Realistic manifests through `apus inject` (annotation and `--manual`) and through the webhook's
/// `ProxyInjector.inject(podJSON:namespace:)`, compared with checked-in outputs.
@Suite struct InjectorGoldenTests {
    static let inputs = [
        "deployment.yaml", "statefulset.yaml", "cronjob.yaml", "pod-init-sidecars.yaml", "pod-hostnetwork.yaml",
        "pod-overrides.yaml", "list.json",
    ]
    static let pods = ["pod-init-sidecars.yaml", "pod-overrides.yaml", "pod-hostnetwork.yaml"]

    static func stem(_ input: String) -> String { String(input.prefix { $0 != "." }) }
    static func ext(_ input: String) -> String { input.hasSuffix(".json") ? "json" : "yaml" }

    @Test(arguments: inputs)
    func annotationMode(input: String) throws {
        let output = try CLI.run(Golden.cliArguments(manual: false) + [Golden.url("inputs/\(input)").path])
        #expect(output.status == 0, "\(output.stderr)")
        try Golden.check(output.stdout, "annotated/\(Self.stem(input)).\(Self.ext(input))")
    }

    @Test(arguments: inputs)
    func manualMode(input: String) throws {
        let output = try CLI.run(Golden.cliArguments(manual: true) + [Golden.url("inputs/\(input)").path])
        #expect(output.status == 0, "\(output.stderr)")
        try Golden.check(output.stdout, "manual/\(Self.stem(input)).\(Self.ext(input))")
    }

    /// The webhook's patch for each pod, checked in as the AdmissionReview would carry it (before base64).
    @Test(arguments: pods)
    func webhookPatch(input: String) throws {
        let pod = try #require(YAMLDocuments.parse(Golden.read("inputs/\(input)")).first)
        let result = ProxyInjector(defaults: try Golden.defaults()).inject(podJSON: pod, namespace: Self.namespace)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let patch = String(decoding: try encoder.encode(result.patch), as: UTF8.self) + "\n"
        try Golden.check(patch, "webhook/\(Self.stem(input)).patch.json")
    }

    static let namespace = Namespace(
        metadata: ObjectMeta(name: "shop", annotations: [InjectorNames.inject: "enabled"]))

    /// The webhook and `--manual` share one implementation: the webhook's patch applied with `JSONPatch.apply`
    /// to the original pod gives exactly the pod `apus inject --manual` prints (apart from `created-by`).
    @Test(arguments: ["pod-init-sidecars.yaml", "pod-overrides.yaml"])
    func webhookPatchReproducesManualOutput(input: String) throws {
        let pod = try #require(YAMLDocuments.parse(Golden.read("inputs/\(input)")).first)
        let result = ProxyInjector(defaults: try Golden.defaults()).inject(podJSON: pod, namespace: Self.namespace)
        #expect(result.decision == .inject(mode: .enabled))
        let patched = try JSONPatch.apply(result.patch, to: pod)
        #expect(patched == result.injectedObject)
        let manual = try CLI.run(Golden.cliArguments(manual: true) + [Golden.url("inputs/\(input)").path])
        let manualPod = try #require(YAMLDocuments.parse(manual.stdout).first)
        #expect(patched.removingCreatedBy() == manualPod.removingCreatedBy())
    }

    /// Fields the typed `Pod` model does not know (topologySpreadConstraints, ephemeral settings) survive.
    @Test func patchKeepsFieldsTheModelDoesNotKnow() throws {
        let deployment = try YAMLDocuments.parse(Golden.read("inputs/deployment.yaml"))[1]
        var pod = try #require(deployment["spec"]?["template"])
        pod["metadata"]?["namespace"] = .string("shop")
        let result = ProxyInjector(defaults: try Golden.defaults()).inject(podJSON: pod, namespace: Self.namespace)
        let injected = try #require(result.injectedObject)
        #expect(injected["spec"]?["topologySpreadConstraints"] == pod["spec"]?["topologySpreadConstraints"])
        #expect(injected["spec"]?["containers"]?.arrayValue?.first?["readinessProbe"] != nil)
        #expect(result.injectedPod?.spec?.initContainers?.map(\.name) == ["linkerd-init", "linkerd-proxy"])
    }

    /// Injecting the output again changes nothing, in the library and in the CLI (byte for byte).
    @Test(arguments: inputs)
    func manualInjectionIsIdempotent(input: String) throws {
        let name = "manual/\(Self.stem(input)).\(Self.ext(input))"
        let again = try CLI.run(Golden.cliArguments(manual: true) + [Golden.url(name).path])
        #expect(again.status == 0)
        #expect(again.stdout == (try Golden.read(name)))
    }

    @Test func webhookSkipsAnInjectedPod() throws {
        let pod = try #require(YAMLDocuments.parse(Golden.read("inputs/pod-overrides.yaml")).first)
        let injector = ProxyInjector(defaults: try Golden.defaults())
        let first = try #require(injector.inject(podJSON: pod, namespace: Self.namespace).injectedObject)
        let second = injector.inject(podJSON: first, namespace: Self.namespace)
        #expect(second.decision == .skip(reason: SkipReason.alreadyInjected))
        #expect(second.patch.isEmpty)
    }

    /// `apus uninject` turns the `--manual` output back into the original workloads.
    @Test(arguments: ["deployment.yaml", "statefulset.yaml", "cronjob.yaml", "list.json"])
    func uninjectRestoresTheOriginal(input: String) throws {
        let manual = Golden.url("manual/\(Self.stem(input)).\(Self.ext(input))")
        let output = try CLI.run(["uninject", manual.path])
        #expect(output.status == 0, "\(output.stderr)")
        #expect(try YAMLDocuments.parse(output.stdout) == YAMLDocuments.parse(Golden.read("inputs/\(input)")))
    }

    /// Documents the CLI does not change keep their bytes, comments included.
    @Test func untouchedDocumentsAreByteIdentical() throws {
        let output = try CLI.run(Golden.cliArguments(manual: true) + [Golden.url("inputs/deployment.yaml").path])
        let original = try Golden.read("inputs/deployment.yaml")
        let configMapEnd = try #require(original.range(of: "---\n")).lowerBound
        #expect(output.stdout.hasPrefix(original[..<configMapEnd]))
        let serviceStart = try #require(original.range(of: "---\napiVersion: v1\nkind: Service")).lowerBound
        #expect(output.stdout.hasSuffix(original[serviceStart...]))
    }

    @Test func readsStandardInputAndDirectories() throws {
        let text = try Golden.read("inputs/cronjob.yaml")
        let fromStdin = try CLI.run(["inject", "-"], stdin: text)
        #expect(fromStdin.status == 0)
        #expect(fromStdin.stdout == (try Golden.read("annotated/cronjob.yaml")))
        let fromDirectory = try CLI.run(["inject", Golden.url("inputs").path])
        #expect(fromDirectory.status == 0)
        // Every input file, in name order, separated by `---`.
        #expect(fromDirectory.stdout.components(separatedBy: "\n---\n").count >= Self.inputs.count)
        #expect(fromDirectory.stdout.contains("\"collector-token\""))
        #expect(fromDirectory.stdout.contains("name: node-agent"))
    }

    @Test func errorsNameTheFileAndDocument() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("apus-inject-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let bad = directory.appendingPathComponent("bad.yaml")
        try "kind: ConfigMap\n---\nkind: Deployment\nspec: [unclosed\n".write(
            to: bad, atomically: true, encoding: .utf8)
        let output = try CLI.run(["inject", bad.path])
        #expect(output.status != 0)
        #expect(output.stderr.contains("bad.yaml: document 2: invalid YAML"))
        let missing = try CLI.run(["inject", directory.appendingPathComponent("absent.yaml").path])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("absent.yaml: no such file or directory"))
        let noTemplate = directory.appendingPathComponent("notemplate.yaml")
        try "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec: {}\n".write(
            to: noTemplate, atomically: true, encoding: .utf8)
        let templateless = try CLI.run(["inject", "--manual", noTemplate.path])
        #expect(templateless.status != 0)
        #expect(templateless.stderr.contains("notemplate.yaml: document 1: deployment \"x\" has no spec.template"))
    }
}
