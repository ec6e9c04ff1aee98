import ApusCore
import Foundation
import Testing

@Suite("examples/ against the CRD schemas")
struct ExampleTests {
    let crds: [CRDFile]

    init() throws {
        crds = try CRDFile.loadAll()
    }

    /// The CRD that defines `object`'s kind in its API group, if one of ours does.
    private func definition(for object: ManifestObject) -> CRDFile? {
        crds.first { $0.kind == object.kind && object.apiVersion.hasPrefix("\($0.group)/") }
    }

    @Test("every custom resource in examples/ is valid for its apiVersion")
    func validExamplesPass() throws {
        let files = try Repository.yamlFilesRecursively(under: "examples", excluding: ["invalid"])
        let objects = try ManifestObject.load(files)
        var validatedVersions: Set<String> = []
        for object in objects {
            guard let crd = definition(for: object) else { continue }
            let schema = try #require(
                crd.servedSchema(apiVersion: object.apiVersion), "\(object): \(object.apiVersion) is not served")
            let violations = OpenAPIValidator().validateResource(object.object, against: schema)
            #expect(violations.isEmpty, "\(object):\n\(violations.map(\.description).joined(separator: "\n"))")
            validatedVersions.insert("\(object.apiVersion) \(object.kind)")
        }
        // Every served version of every CRD has at least one example, so no version goes unexercised.
        let served = crds.flatMap { crd in
            crd.versions.filter(\.served).map { "\(crd.group)/\($0.name) \(crd.kind)" }
        }
        #expect(validatedVersions == Set(served))
    }

    @Test("ServiceProfile examples are named after their Service's FQDN in their own namespace")
    func serviceProfileNames() throws {
        let files = try Repository.yamlFilesRecursively(under: "examples", excluding: ["invalid"])
        for object in try ManifestObject.load(files) where object.kind == "ServiceProfile" {
            let namespace = object.object.value(at: "metadata", "namespace")?.stringValue ?? ""
            #expect(object.name.hasSuffix(".\(namespace).svc.cluster.local"), "\(object)")
        }
    }

    @Test(
        "every file in examples/invalid is rejected at the field its expect-error line names",
        arguments: try Repository.yamlFiles(in: "examples/invalid").map(\.lastPathComponent))
    func invalidExamplesFail(file: String) throws {
        let url = Repository.url("examples/invalid/\(file)")
        let expected = try Repository.text(of: url)
            .split(separator: "\n")
            .compactMap { line -> String? in
                let marker = "# expect-error:"
                guard line.hasPrefix(marker) else { return nil }
                return line.dropFirst(marker.count).trimmingCharacters(in: .whitespaces)
            }
        try #require(!expected.isEmpty, "\(file) needs a '# expect-error: <path> (<rule>)' line")

        let objects = try ManifestObject.load([url])
        let object = try #require(objects.first, "\(file) holds no object")
        #expect(objects.count == 1, "\(file): one object per invalid example keeps the expectation unambiguous")
        let crd = try #require(definition(for: object), "\(file): \(object.kind) is not one of our CRDs")
        let schema = try #require(crd.servedSchema(apiVersion: object.apiVersion))

        let violations = OpenAPIValidator().validateResource(object.object, against: schema)
        #expect(violations.map(\.key) == expected, "\(file): got \(violations.map(\.description))")
    }

    @Test("the invalid examples cover the promised mistakes")
    func invalidExamplesCoverage() throws {
        let names = Set(try Repository.yamlFiles(in: "examples/invalid").map(\.lastPathComponent))
        for required in [
            "sp-timeout-not-a-duration.yaml", "sp-status-700.yaml", "sp-negative-retry-ratio.yaml",
            "sp-retryable-is-a-string.yaml",
        ] {
            #expect(names.contains(required), "examples/invalid/\(required) is missing")
        }
    }
}
