import ApusCore
import Testing

@Suite struct DestinationAuthorityTests {
    @Test(arguments: [
        ("web", "web.emojivoto.svc.cluster.local", 80, false),
        ("web:8080", "web.emojivoto.svc.cluster.local", 8080, false),
        ("web.other", "web.other.svc.cluster.local", 80, false),
        ("web.other:9090", "web.other.svc.cluster.local", 9090, false),
        ("web.other.svc", "web.other.svc.cluster.local", 80, false),
        ("web.other.svc.cluster.local", "web.other.svc.cluster.local", 80, false),
        ("web.other.svc.cluster.local.", "web.other.svc.cluster.local", 80, false),
        ("web.other.svc.cluster.local.:7000", "web.other.svc.cluster.local", 7000, false),
        ("WEB.Other", "web.other.svc.cluster.local", 80, false),
        ("api.example.com", "api.example.com", 80, false),
        ("example.com.", "example.com", 80, false),
        ("example.com.:443", "example.com", 443, false),
        ("10.0.0.7", "10.0.0.7", 80, true),
        ("10.0.0.7:8080", "10.0.0.7", 8080, true),
        ("[fd00::1]:8080", "fd00::1", 8080, true),
        ("[::1]", "::1", 80, true),
        ("user@web:81", "web.emojivoto.svc.cluster.local", 81, false),
        ("web:", "web.emojivoto.svc.cluster.local", 80, false),
    ])
    func expandsAndNormalizes(authority: String, host: String, port: Int, isIP: Bool) throws {
        let destination = try DestinationAuthority(parsing: authority, clientNamespace: "emojivoto")
        #expect(destination.host == host)
        #expect(destination.port == port)
        #expect(destination.isIPAddress == isIP)
    }

    @Test func clusterDomainIsConfigurable() throws {
        let destination = try DestinationAuthority(
            parsing: "web.ns", clientNamespace: "a", clusterDomain: "corp.example")
        #expect(destination.host == "web.ns.svc.corp.example")
        #expect(destination.service(clusterDomain: "corp.example") == ObjectKey(namespace: "ns", name: "web"))
        #expect(destination.service() == nil)
    }

    @Test(arguments: ["", "web:99999", "web:http", "[fd00::1", "[zz::1]:80", "bad_host!", "a..b", "-:80"])
    func rejectsMalformed(authority: String) {
        #expect(throws: AuthorityError.self) {
            try DestinationAuthority(parsing: authority, clientNamespace: "default")
        }
    }

    @Test func headerPrecedenceIsOverrideThenAuthorityThenHost() throws {
        let all = RouteRequest(
            method: "GET", target: "/", headers: [("Host", "host-svc"), ("L5D-Dst-Override", "override-svc.ns:81")],
            authority: "authority-svc")
        #expect(
            try DestinationAuthority(request: all, clientNamespace: "c")?.host == "override-svc.ns.svc.cluster.local")
        #expect(try DestinationAuthority(request: all, clientNamespace: "c")?.port == 81)

        let noOverride = RouteRequest(method: "GET", target: "/", headers: [("host", "host-svc")], authority: "a-svc")
        #expect(
            try DestinationAuthority(request: noOverride, clientNamespace: "c")?.host == "a-svc.c.svc.cluster.local")

        let hostOnly = RouteRequest(method: "GET", target: "/", headers: [("Host", "host-svc:8080")])
        let destination = try DestinationAuthority(request: hostOnly, clientNamespace: "c")
        #expect(destination?.description == "host-svc.c.svc.cluster.local:8080")

        let absoluteForm = RouteRequest(method: "GET", target: "http://web.ns:9000/x?y=1", headers: [("Host", "other")])
        #expect(absoluteForm.path == "/x")
        #expect(try DestinationAuthority(request: absoluteForm, clientNamespace: "c")?.port == 9000)

        let none = RouteRequest(method: "GET", target: "/", headers: [("l5d-dst-override", "")])
        #expect(try DestinationAuthority(request: none, clientNamespace: "c") == nil)
    }

    @Test func profileInClientNamespaceWinsOverServerNamespace() throws {
        let destination = try DestinationAuthority(parsing: "books.booksapp:7002", clientNamespace: "webapp")
        #expect(
            destination.profileCandidates(clientNamespace: "webapp") == [
                ObjectKey(namespace: "webapp", name: "books.booksapp.svc.cluster.local"),
                ObjectKey(namespace: "booksapp", name: "books.booksapp.svc.cluster.local"),
            ])
        let sameNamespace = try DestinationAuthority(parsing: "books", clientNamespace: "booksapp")
        #expect(
            sameNamespace.profileCandidates(clientNamespace: "booksapp") == [
                ObjectKey(namespace: "booksapp", name: "books.booksapp.svc.cluster.local")
            ])
        let external = try DestinationAuthority(parsing: "api.example.com.", clientNamespace: "webapp")
        #expect(
            external.profileCandidates(clientNamespace: "webapp") == [
                ObjectKey(namespace: "webapp", name: "api.example.com")
            ])
        let ip = try DestinationAuthority(parsing: "10.1.2.3:80", clientNamespace: "webapp")
        #expect(ip.profileCandidates(clientNamespace: "webapp").isEmpty)
    }
}
