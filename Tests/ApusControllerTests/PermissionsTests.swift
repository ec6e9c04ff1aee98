import ApusController
import Foundation
import Testing

/// RBAC is kept in step with the code: what the controller's components declare they call is exactly what
/// `config/rbac/permissions.json` lists (ManifestTests check the YAML against that file).
@Suite struct PermissionsTests {
    static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    @Test("config/rbac/permissions.json equals the permissions the controller code declares")
    func checkedInPermissionsMatchCode() throws {
        let file = Self.repositoryRoot.appendingPathComponent("config/rbac/permissions.json")
        let checkedIn = try JSONDecoder().decode([PermissionRule].self, from: Data(contentsOf: file))
        let declared = ControllerManager.requiredPermissions()
        let fileRules = Set(checkedIn.map(\.normalized))
        let codeRules = Set(declared.map(\.normalized))
        #expect(fileRules.count == checkedIn.count, "permissions.json lists a rule twice")
        for missing in codeRules.subtracting(fileRules) {
            Issue.record("the code calls \(missing) but config/rbac does not grant it")
        }
        for extra in fileRules.subtracting(codeRules) {
            Issue.record("config/rbac grants \(extra) but no code uses it")
        }
    }
}
