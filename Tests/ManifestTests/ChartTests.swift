import ApusCore
import Foundation
import Testing

@Suite("charts/apus-crds")
struct ChartTests {
    static let chartCRDs = "charts/apus-crds/files/crds"

    @Test("the chart's CRD copies are byte-equal to crds/ (run hack/sync-chart-crds.sh after editing crds/)")
    func chartCRDsMatchSource() throws {
        let sources = try Repository.crdFiles()
        let copies = try Repository.yamlFiles(in: Self.chartCRDs)
        #expect(copies.map(\.lastPathComponent) == sources.map(\.lastPathComponent))
        for source in sources {
            let copy = Repository.url("\(Self.chartCRDs)/\(source.lastPathComponent)")
            let sourceData = try Data(contentsOf: source)
            let copyData = try? Data(contentsOf: copy)
            #expect(copyData == sourceData, "\(Self.chartCRDs)/\(source.lastPathComponent) differs from crds/")
        }
    }

    @Test("every CRD copy is rendered by a template")
    func everyCRDIsTemplated() throws {
        let templates = try FileManager.default.contentsOfDirectory(
            at: Repository.url("charts/apus-crds/templates"), includingPropertiesForKeys: nil)
        let text = try templates.map { try Repository.text(of: $0) }.joined(separator: "\n")
        for copy in try Repository.yamlFiles(in: Self.chartCRDs) {
            #expect(
                text.contains("files/crds/\(copy.lastPathComponent)"),
                "no template renders \(copy.lastPathComponent)")
        }
        #expect(text.contains("helm.sh/resource-policy"), "CRDs must be kept on uninstall")
    }

    @Test("Chart.yaml and values.yaml")
    func chartMetadata() throws {
        let chart = try #require(try YAMLDocuments.load(Repository.url("charts/apus-crds/Chart.yaml")).first)
        #expect(chart["apiVersion"] == .string("v2"))
        #expect(chart["name"] == .string("apus-crds"))
        #expect(chart["type"] == .string("application"))
        #expect(chart["version"] == .string("0.1.0"))
        #expect(chart["appVersion"]?.stringValue?.isEmpty == false)
        #expect(chart["description"]?.stringValue?.isEmpty == false)
        let values = try #require(try YAMLDocuments.load(Repository.url("charts/apus-crds/values.yaml")).first)
        #expect(values["installGatewayAPICRDs"] == .bool(true))
    }
}
