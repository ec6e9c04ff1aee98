import ApusCore
import Foundation
import Testing

@Suite("CRDs in crds/")
struct CRDTests {
    let crds: [CRDFile]

    init() throws {
        crds = try CRDFile.loadAll()
    }

    @Test("the expected CRDs exist")
    func expectedCRDs() {
        #expect(
            crds.map(\.name).sorted() == [
                "httproutes.gateway.networking.k8s.io", "serviceprofiles.linkerd.io",
            ])
    }

    @Test("every version's schema is structural and uses only validated keywords")
    func schemasAreStructural() throws {
        for crd in crds {
            for version in crd.versions {
                let schema = try #require(version.schema, "\(crd) \(version.name) has no openAPIV3Schema")
                let problems = StructuralSchema.problems(in: schema)
                #expect(problems.isEmpty, "\(crd) \(version.name):\n\(problems.joined(separator: "\n"))")
            }
        }
    }

    @Test("names, versions and file names are consistent")
    func namesAndVersions() {
        for crd in crds {
            #expect(crd.object["apiVersion"]?.stringValue == "apiextensions.k8s.io/v1", "\(crd)")
            #expect(crd.name == "\(crd.plural).\(crd.group)", "\(crd): name must be <plural>.<group>")
            #expect(crd.url.lastPathComponent == "\(crd.name).yaml", "\(crd): file must be named after the CRD")
            #expect(crd.object.value(at: "spec", "scope")?.stringValue == "Namespaced", "\(crd)")
            let names = crd.object.value(at: "spec", "names")
            #expect(names?["listKind"]?.stringValue == "\(crd.kind)List", "\(crd)")
            #expect(names?["singular"]?.stringValue == crd.kind.lowercased(), "\(crd)")
            #expect(crd.versions.filter(\.storage).count == 1, "\(crd): exactly one storage version")
            let storageServed = crd.versions.filter(\.storage).allSatisfy(\.served)
            #expect(storageServed, "\(crd): the storage version is served")
        }
    }

    @Test("ServiceProfile: linkerd.io, short name sp, v1alpha2 storage and v1alpha1 served with the same schema")
    func serviceProfileVersions() throws {
        let crd = try #require(crds.first(where: { $0.name == "serviceprofiles.linkerd.io" }))
        #expect(crd.kind == "ServiceProfile")
        #expect(crd.object.value(at: "spec", "names", "shortNames") == .array([.string("sp")]))
        let versions = Dictionary(uniqueKeysWithValues: crd.versions.map { ($0.name, $0) })
        let v1alpha2 = try #require(versions["v1alpha2"])
        let v1alpha1 = try #require(versions["v1alpha1"])
        #expect(v1alpha2.storage && v1alpha2.served)
        #expect(!v1alpha1.storage && v1alpha1.served)
        #expect(v1alpha1.schema == v1alpha2.schema, "without a conversion webhook both versions must agree")
    }

    @Test("status subresource: declared, and its schema has metav1.Condition-shaped conditions")
    func statusSubresource() throws {
        for crd in crds {
            for version in crd.versions {
                #expect(version.definition.value(at: "subresources", "status") == .object([:]), "\(crd)")
                let status = try #require(
                    version.schema?.value(at: "properties", "status"), "\(crd) \(version.name) has no status schema")
                let conditions =
                    crd.group == "linkerd.io"
                    ? status.value(at: "properties", "conditions", "items")
                    : status.value(at: "properties", "parents", "items", "properties", "conditions", "items")
                let condition = try #require(conditions, "\(crd) \(version.name): no conditions in status")
                let required = Set(condition["required"]?.arrayValue?.compactMap(\.stringValue) ?? [])
                #expect(required == ["type", "status", "reason", "message", "lastTransitionTime"], "\(crd)")
                #expect(
                    condition.value(at: "properties", "status", "enum")
                        == .array([.string("True"), .string("False"), .string("Unknown")]), "\(crd)")
                #expect(condition.value(at: "properties", "lastTransitionTime", "format") == .string("date-time"))
            }
        }
    }

    @Test("printer columns point at fields the schema defines")
    func printerColumns() throws {
        for crd in crds {
            for version in crd.versions {
                let schema = try #require(version.schema)
                for column in version.definition["additionalPrinterColumns"]?.arrayValue ?? [] {
                    let jsonPath = column["jsonPath"]?.stringValue ?? ""
                    #expect(
                        Self.schemaNode(schema, jsonPath: jsonPath) != nil,
                        "\(crd) \(version.name): printer column \(jsonPath) names no field of the schema")
                }
            }
        }
        let serviceProfile = try #require(crds.first(where: { $0.kind == "ServiceProfile" }))
        let columns = serviceProfile.versions.first?.definition["additionalPrinterColumns"]?.arrayValue ?? []
        let paths = columns.compactMap { $0["jsonPath"]?.stringValue }
        #expect(paths.contains(#".status.conditions[?(@.type=="Accepted")].status"#))
    }

    @Test("CRDs in *.k8s.io groups carry the API approval annotation the API server requires")
    func protectedGroupApproval() {
        for crd in crds where crd.group.hasSuffix(".k8s.io") || crd.group.hasSuffix(".kubernetes.io") {
            let approval = crd.object.value(at: "metadata", "annotations", "api-approved.kubernetes.io")
            #expect(approval?.stringValue?.hasPrefix("https://") == true, "\(crd)")
        }
    }

    @Test("crds/kustomization.yaml lists exactly the CRD files")
    func kustomizationListsEveryCRD() throws {
        let kustomization = try #require(try YAMLDocuments.load(Repository.url("crds/kustomization.yaml")).first)
        let listed = kustomization["resources"]?.arrayValue?.compactMap(\.stringValue) ?? []
        #expect(listed.sorted() == crds.map(\.url.lastPathComponent).sorted())
    }

    /// Resolves a printer-column JSONPath such as `.status.conditions[?(@.type=="Ready")].status` against the
    /// schema; metadata is defined by the API server, not the schema, so it always resolves.
    static func schemaNode(_ schema: JSONValue, jsonPath: String) -> JSONValue? {
        guard jsonPath.hasPrefix(".") else { return nil }
        let withoutFilters = jsonPath.replacingOccurrences(
            of: #"\[[^\]]*\]"#, with: "[]", options: .regularExpression)
        var node: JSONValue? = schema
        for component in withoutFilters.dropFirst().split(separator: ".") {
            var name = String(component)
            let isList = name.hasSuffix("[]")
            if isList { name.removeLast(2) }
            if node == schema && name == "metadata" { return .object([:]) }
            node = node?.value(at: "properties", name)
            if isList { node = node?["items"] }
        }
        return node
    }
}
