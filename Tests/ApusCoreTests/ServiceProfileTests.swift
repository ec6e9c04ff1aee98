import ApusCore
import Foundation
import Testing
import Yams

/// Profiles modelled on the examples in Linkerd's documentation (books demo, per-route timeouts, retries,
/// retry budgets, traffic split), written afresh with the same semantics.
@Suite struct ServiceProfileTests {
    static let booksProfile = #"""
        apiVersion: linkerd.io/v1alpha2
        kind: ServiceProfile
        metadata:
          name: books.booksapp.svc.cluster.local
          namespace: booksapp
          uid: 6e1b4c1a-0000-4000-8000-000000000001
          annotations:
            kubectl.kubernetes.io/last-applied-configuration: "{}"
        spec:
          routes:
          - name: GET /books.json
            condition:
              method: GET
              pathRegex: /books\.json
          - name: GET /books/{id}
            condition:
              method: GET
              pathRegex: /books/\d+
            timeout: 300ms
            isRetryable: true
          - name: POST /books.json
            condition:
              method: POST
              pathRegex: /books\.json
            timeout: 1s
          - name: DELETE /books/{id}.json
            condition:
              method: DELETE
              pathRegex: /books/\d+\.json
            responseClasses:
            - condition:
                status:
                  min: 404
                  max: 404
              isFailure: false
            - condition:
                any:
                - status: {min: 500, max: 502}
                - status: {min: 409, max: 409}
              isFailure: true
          retryBudget:
            retryRatio: 0.2
            minRetriesPerSecond: 10
            ttl: 10s
          someFutureField: ignored
        """#

    static let usersProfile = #"""
        apiVersion: linkerd.io/v1alpha2
        kind: ServiceProfile
        metadata:
          name: users.accounts.svc.cluster.local
          namespace: accounts
        spec:
          routes:
          - name: GET /api/v1/users/{name}
            condition:
              all:
              - method: GET
              - pathRegex: /api/v1/users/[^/]*
            timeout: 250ms
            isRetryable: true
            responseClasses:
            - condition:
                not:
                  status: {max: 499}
              isFailure: true
          - name: users-write
            condition:
              all:
              - pathRegex: /api/v1/users(/.*)?
              - not:
                  any:
                  - method: GET
                  - method: HEAD
          retryBudget:
            retryRatio: 0.5
            minRetriesPerSecond: 3
            ttl: 1m
        """#

    static let webappProfile = #"""
        apiVersion: linkerd.io/v1alpha2
        kind: ServiceProfile
        metadata:
          name: webapp.booksapp.svc.cluster.local
          namespace: booksapp
        spec:
          routes:
          - {name: "GET /", condition: {method: GET, pathRegex: /}}
          - {name: "POST /authors", condition: {method: POST, pathRegex: /authors}}
          - {name: "GET /authors/{id}", condition: {method: GET, pathRegex: '/authors/\d+'}}
          - {name: "POST /authors/{id}/edit", condition: {method: POST, pathRegex: '/authors/\d+/edit'}}
          - {name: "POST /books", condition: {method: POST, pathRegex: /books}}
          - {name: "GET /books/{id}", condition: {method: GET, pathRegex: '/books/\d+'}}
          - {name: "POST /books/{id}/delete", condition: {method: POST, pathRegex: '/books/\d+/delete'}}
        """#

    static let splitProfile = #"""
        apiVersion: linkerd.io/v1alpha2
        kind: ServiceProfile
        metadata:
          name: web.emojivoto.svc.cluster.local
          namespace: emojivoto
        spec:
          dstOverrides:
          - authority: web-v1.emojivoto.svc.cluster.local.:8080
            weight: 500m
          - authority: web-v2.emojivoto.svc.cluster.local.:8080
            weight: 500m
          - authority: web-v3.emojivoto.svc.cluster.local:8080
            weight: 0
          opaquePorts:
            "3306": {}
        status:
          conditions:
          - type: Accepted
            status: "True"
            reason: Valid
            lastTransitionTime: "2024-05-01T12:00:00Z"
        """#

    static func decode(_ yaml: String) throws -> ServiceProfile {
        try YAMLDecoder().decode(ServiceProfile.self, from: yaml)
    }

    static func request(_ method: String, _ target: String) -> RouteRequest {
        RouteRequest(method: method, target: target)
    }

    @Test func booksProfileDecodesAllFields() throws {
        let profile = try Self.decode(Self.booksProfile)
        #expect(profile.objectKey == ObjectKey(namespace: "booksapp", name: "books.booksapp.svc.cluster.local"))
        let routes = try #require(profile.spec.routes)
        #expect(routes.count == 4)
        #expect(routes[1].condition?.pathRegex == #"/books/\d+"#)
        #expect(routes[1].timeout == "300ms")
        #expect(routes[3].responseClasses?[1].condition?.any?.count == 2)
        #expect(profile.spec.retryBudget == .init(retryRatio: 0.2, minRetriesPerSecond: 10, ttl: "10s"))
        #expect(ServiceProfile.resourceType.apiVersion == "linkerd.io/v1alpha2")
        #expect(ServiceProfile.resourceType.plural == "serviceprofiles")
    }

    @Test(
        arguments: [
            ("GET", "/books/42", "GET /books/{id}", "300ms", true),
            ("GET", "/books/42?format=json", "GET /books/{id}", "300ms", true),
            ("GET", "/books.json", "GET /books.json", nil, false),
            ("POST", "/books.json", "POST /books.json", "1s", false),
            ("DELETE", "/books/7.json", "DELETE /books/{id}.json", nil, false),
        ] as [(String, String, String, String?, Bool)])
    func booksRequestsPickFirstMatchingRoute(
        method: String, target: String, route: String, timeout: String?, retryable: Bool
    ) throws {
        let compiled = try Self.decode(Self.booksProfile).compile()
        let matched = try #require(compiled.route(for: Self.request(method, target)))
        #expect(matched.name == route)
        #expect(matched.timeout?.description == timeout)
        #expect(matched.isRetryable == retryable)
    }

    @Test(arguments: [
        ("get", "/books/42"),  // method tokens are case-sensitive
        ("GET", "/books/abc"),
        ("GET", "/books/42/reviews"),  // the regex must match the whole path
        ("PUT", "/books/42"),
        ("GET", "/BOOKS.json"),
    ])
    func booksRequestsWithoutRoute(method: String, target: String) throws {
        let compiled = try Self.decode(Self.booksProfile).compile()
        #expect(compiled.route(for: Self.request(method, target)) == nil)
    }

    @Test func responseClassesDecideFailureInOrderWithFiveHundredsDefault() throws {
        let compiled = try Self.decode(Self.booksProfile).compile()
        let delete = try #require(compiled.route(for: Self.request("DELETE", "/books/1.json")))
        #expect(!delete.isFailure(status: 404))  // first class: 404 is not a failure
        #expect(delete.isFailure(status: 409))  // second class via any
        #expect(delete.isFailure(status: 501))
        #expect(delete.isFailure(status: 503))  // no class matches: default 5xx
        #expect(!delete.isFailure(status: 200))
        #expect(!delete.isFailure(status: 400))
        let get = try #require(compiled.route(for: Self.request("GET", "/books/1")))
        #expect(get.isFailure(status: 500))
        #expect(!get.isFailure(status: 404))
        #expect(
            compiled.retryBudget
                == .init(retryRatio: 0.2, minRetriesPerSecond: 10, ttl: .init(nanoseconds: 10_000_000_000)))
    }

    @Test func nestedAllAnyNotConditions() throws {
        let compiled = try Self.decode(Self.usersProfile).compile()
        let read = try #require(compiled.route(for: Self.request("GET", "/api/v1/users/alice")))
        #expect(read.name == "GET /api/v1/users/{name}")
        #expect(read.timeout?.description == "250ms")
        #expect(read.isRetryable)
        // not(status <= 499): 4xx is fine, 5xx fails.
        #expect(!read.isFailure(status: 404))
        #expect(read.isFailure(status: 500))
        #expect(compiled.route(for: Self.request("GET", "/api/v1/users/alice/posts")) == nil)
        let write = try #require(compiled.route(for: Self.request("POST", "/api/v1/users/alice/posts")))
        #expect(write.name == "users-write")
        #expect(!write.isRetryable)
        #expect(write.timeout == nil)
        #expect(compiled.route(for: Self.request("HEAD", "/api/v1/users")) == nil)
        #expect(compiled.route(for: Self.request("DELETE", "/api/v1/users")).map(\.name) == "users-write")
        #expect(compiled.retryBudget.ttl.description == "1m0s")
        #expect(compiled.retryBudget.minRetriesPerSecond == 3)
    }

    @Test(arguments: [
        ("GET", "/", "GET /"),
        ("GET", "/authors/12", "GET /authors/{id}"),
        ("POST", "/authors/12/edit", "POST /authors/{id}/edit"),
        ("POST", "/authors", "POST /authors"),
        ("POST", "/books", "POST /books"),
        ("GET", "/books/3", "GET /books/{id}"),
        ("POST", "/books/3/delete", "POST /books/{id}/delete"),
    ])
    func webappRoutes(method: String, target: String, route: String) throws {
        let compiled = try Self.decode(Self.webappProfile).compile()
        #expect(compiled.route(for: Self.request(method, target))?.name == route)
        #expect(compiled.retryBudget == .linkerdDefault)
    }

    @Test func trafficSplitWeightsAndOpaquePorts() throws {
        let profile = try Self.decode(Self.splitProfile)
        #expect(profile.status?.conditions?[type: "Accepted"]?.status == "True")
        let compiled = try profile.compile()
        #expect(compiled.routes.isEmpty)
        #expect(
            compiled.destinationOverrides.map(\.authority) == [
                "web-v1.emojivoto.svc.cluster.local:8080", "web-v2.emojivoto.svc.cluster.local:8080",
                "web-v3.emojivoto.svc.cluster.local:8080",
            ])
        #expect(compiled.destinationOverrides.map(\.weight.milliValue) == [500, 500, 0])
        #expect(compiled.opaquePorts == [3306])
    }

    @Test func v1alpha1ObjectsDecodeWithTheSameSchema() throws {
        let yaml = Self.booksProfile.replacingOccurrences(of: "linkerd.io/v1alpha2", with: "linkerd.io/v1alpha1")
        let old = try YAMLDecoder().decode(ServiceProfileV1Alpha1.self, from: yaml)
        #expect(ServiceProfileV1Alpha1.resourceType.version == "v1alpha1")
        #expect(old.apiVersion == "linkerd.io/v1alpha1")
        let asCurrent = try Self.decode(yaml)
        #expect(ServiceProfile.supportedAPIVersions.contains(asCurrent.apiVersion ?? ""))
        #expect(old.v1alpha2.spec == asCurrent.spec)
        #expect(old.v1alpha2.apiVersion == "linkerd.io/v1alpha2")
        #expect(try old.v1alpha2.compile().routes.count == 4)
    }

    @Test func roundTripsThroughJSONIncludingRecursiveConditions() throws {
        for yaml in [Self.booksProfile, Self.usersProfile, Self.splitProfile] {
            let profile = try Self.decode(yaml)
            let data = try JSONEncoder().encode(profile)
            let again = try JSONDecoder().decode(ServiceProfile.self, from: data)
            #expect(again == profile)
        }
        let users = try Self.decode(Self.usersProfile)
        let json = try JSONValue(encoding: users)
        let notMatch = json["spec"]?["routes"]?.arrayValue?[1]["condition"]?["all"]?.arrayValue?[1]["not"]
        #expect(notMatch?["any"]?.arrayValue?.count == 2)
    }

    static let malformedProfile = #"""
        apiVersion: linkerd.io/v1alpha2
        kind: ServiceProfile
        metadata: {name: broken.default.svc.cluster.local, namespace: default}
        spec:
          routes:
          - name: fine
            condition: {pathRegex: /ok}
          - name: bad-regex
            condition:
              all:
              - method: GET
              - pathRegex: /books/(\d+
          - name: bad-timeout-and-classes
            condition: {method: GET}
            timeout: 10x
            responseClasses:
            - condition: {status: {min: 600}}
            - condition: {status: {min: 500, max: 400}}
            - condition: {}
            - isFailure: true
          - condition:
              not: {}
          - name: bad-method
            condition: {method: "GE T"}
            timeout: -1s
          retryBudget: {retryRatio: -0.5, minRetriesPerSecond: 10, ttl: ten}
          dstOverrides:
          - authority: a.default.svc.cluster.local
            weight: lots
          - weight: 1
          opaquePorts: {"http": {}}
        """#

    @Test func malformedProfileDecodesAndReportsEveryIssueWithFieldPaths() throws {
        let profile = try Self.decode(Self.malformedProfile)
        #expect(profile.spec.routes?.count == 5)
        do {
            _ = try profile.compile()
            Issue.record("a malformed profile compiled")
        } catch {
            #expect(
                error.issues.map(\.field) == [
                    "spec.routes[1].condition.all[1].pathRegex",
                    "spec.routes[2].timeout",
                    "spec.routes[2].responseClasses[0].condition.status.min",
                    "spec.routes[2].responseClasses[1].condition.status",
                    "spec.routes[2].responseClasses[2].condition",
                    "spec.routes[2].responseClasses[3].condition",
                    "spec.routes[3].name",
                    "spec.routes[3].condition.not",
                    "spec.routes[4].condition.method",
                    "spec.routes[4].timeout",
                    "spec.retryBudget.retryRatio",
                    "spec.retryBudget.ttl",
                    "spec.dstOverrides[0].weight",
                    "spec.dstOverrides[1].authority",
                    "spec.opaquePorts[http]",
                ])
            let messages = Dictionary(error.issues.map { ($0.field, $0.message) }, uniquingKeysWith: { a, _ in a })
            #expect(messages["spec.routes[1].condition.all[1].pathRegex"]?.contains("missing closing )") == true)
            #expect(messages["spec.routes[2].timeout"]?.contains("'10x' has unknown unit 'x'") == true)
            #expect(
                messages["spec.routes[2].responseClasses[0].condition.status.min"] == "status 600 is outside 100-599")
            #expect(messages["spec.routes[2].responseClasses[1].condition.status"] == "max 400 is smaller than min 500")
            #expect(messages["spec.routes[4].timeout"] == "duration '-1s' must not be negative")
            #expect(messages["spec.dstOverrides[0].weight"]?.contains("'lots'") == true)
            #expect(error.causes.first?.field == "spec.routes[1].condition.all[1].pathRegex")
            #expect(
                error.description.hasPrefix("spec.routes[1].condition.all[1].pathRegex: invalid regular expression"))
        }
    }

    @Test func emptyProfileUsesLinkerdDefaults() throws {
        let compiled = try ServiceProfile(metadata: ObjectMeta(name: "x.ns.svc.cluster.local")).compile()
        #expect(compiled.routes.isEmpty)
        #expect(compiled.retryBudget == .linkerdDefault)
        #expect(CompiledServiceProfile.defaultIsFailure(status: 503))
        #expect(!CompiledServiceProfile.defaultIsFailure(status: 499))
    }

    @Test func zeroTimeoutMeansNone() throws {
        let route = ServiceProfile.Route(name: "r", condition: .init(method: "GET"), timeout: "0s")
        let compiled = try ServiceProfile(spec: .init(routes: [route])).compile()
        #expect(compiled.routes.first?.timeout == nil)
    }
}
