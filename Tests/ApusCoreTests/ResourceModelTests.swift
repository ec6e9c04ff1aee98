import ApusCore
import Foundation
import Testing
import Yams

@Suite struct ResourceModelTests {
    static func roundTrip<T: Codable & Equatable>(_ value: T) throws -> T {
        try JSONDecoder().decode(T.self, from: try JSONEncoder().encode(value))
    }

    @Test func podFromAPIServerJSONIgnoresUnknownFields() throws {
        let json = #"""
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-7d4b9c-x2x","generateName":"web-7d4b9c-",
             "namespace":"emojivoto","uid":"1f9e","resourceVersion":"4711","generation":1,
             "creationTimestamp":"2024-05-01T12:00:00Z","labels":{"app":"web"},
             "annotations":{"linkerd.io/inject":"enabled"},
             "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d4b9c","uid":"aa",
               "controller":true,"blockOwnerDeletion":true}],
             "managedFields":[{"manager":"kube-controller-manager","operation":"Update"}]},
             "spec":{"containers":[{"name":"web","image":"buoyantio/emojivoto-web:v11",
               "ports":[{"name":"http","containerPort":8080,"protocol":"TCP"}],
               "env":[{"name":"POD_NS","valueFrom":{"fieldRef":{"apiVersion":"v1","fieldPath":"metadata.namespace"}}}],
               "resources":{"requests":{"cpu":"100m","memory":"64Mi"}},
               "readinessProbe":{"httpGet":{"path":"/ready","port":"http"},"periodSeconds":5},
               "terminationMessagePath":"/dev/termination-log"}],
               "serviceAccountName":"web","dnsPolicy":"ClusterFirst","tolerations":[{"operator":"Exists"}]},
             "status":{"phase":"Running","podIP":"10.42.0.7","podIPs":[{"ip":"10.42.0.7"}],
               "startTime":"2024-05-01T12:00:01Z","qosClass":"Burstable",
               "conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2024-05-01T12:00:09Z"}],
               "containerStatuses":[{"name":"web","ready":true,"restartCount":0,"started":true,
                 "state":{"running":{"startedAt":"2024-05-01T12:00:05Z"}},"imageID":"sha256:abc"}]}}
            """#
        let pod = try JSONDecoder().decode(Pod.self, from: Data(json.utf8))
        #expect(pod.objectKey.description == "emojivoto/web-7d4b9c-x2x")
        let container = try #require(pod.spec?.containers.first)
        #expect(container.resources?.requests?["cpu"]?.milliValue == 100)
        #expect(container.resources?.requests?["memory"] == Quantity(integerLiteral: 64 * 1024 * 1024))
        #expect(container.resources?.requests?["memory"]?.value == Decimal(64 * 1024 * 1024))
        #expect(container.readinessProbe?.httpGet?.port == .string("http"))
        #expect(container.env?.first?.valueFrom?.fieldRef?.fieldPath == "metadata.namespace")
        #expect(
            pod.status?.containerStatuses?.first?.state?["running"]?["startedAt"] == .string("2024-05-01T12:00:05Z"))
        #expect(pod.metadata.ownerReferences?.first?.controller == true)
        #expect(try Self.roundTrip(pod) == pod)
    }

    @Test func serviceFromYAML() throws {
        let yaml = """
            apiVersion: v1
            kind: Service
            metadata:
              name: web-svc
              namespace: emojivoto
              creationTimestamp: "2024-05-01T12:00:00Z"
            spec:
              type: ClusterIP
              clusterIP: None
              selector: {app: web}
              ports:
              - {name: http, port: 80, targetPort: 8080, protocol: TCP, appProtocol: kubernetes.io/h2c}
              - {name: admin, port: 9990, targetPort: admin}
              sessionAffinity: None
            status:
              loadBalancer: {}
            """
        let service = try YAMLDecoder().decode(Service.self, from: yaml)
        #expect(service.spec?.isHeadless == true)
        #expect(service.spec?.ports?.map(\.targetPort) == [.int(8080), .string("admin")])
        #expect(service.spec?.ports?.first?.appProtocol == "kubernetes.io/h2c")
        #expect(service.metadata.creationTimestamp == Timestamp(rfc3339: "2024-05-01T12:00:00Z"))
        #expect(try Self.roundTrip(service) == service)
    }

    @Test func endpointSliceWithNullEndpoints() throws {
        let json = #"""
            {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
             "metadata":{"name":"web-svc-abc","namespace":"emojivoto",
                         "labels":{"kubernetes.io/service-name":"web-svc"}},
             "addressType":"IPv4","endpoints":null,"ports":null}
            """#
        let empty = try JSONDecoder().decode(EndpointSlice.self, from: Data(json.utf8))
        #expect(empty.endpoints.isEmpty)
        #expect(empty.ports == nil)
        #expect(empty.metadata.labels?[EndpointSlice.serviceNameLabel] == "web-svc")

        let yaml = """
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: web-svc-def, namespace: emojivoto}
            addressType: IPv4
            endpoints:
            - addresses: [10.42.0.7]
              conditions: {ready: true, serving: true, terminating: false}
              nodeName: node-1
              zone: eu-1a
              targetRef: {kind: Pod, name: web-7d4b9c-x2x, namespace: emojivoto, uid: 1f9e}
              hints: {forZones: [{name: eu-1a}]}
            - addresses: [10.42.0.8]
            ports:
            - {name: http, port: 8080, protocol: TCP}
            """
        let slice = try YAMLDecoder().decode(EndpointSlice.self, from: yaml)
        #expect(slice.endpoints.count == 2)
        #expect(slice.endpoints[0].conditions?.ready == true)
        #expect(slice.endpoints[1].conditions == nil)
        #expect(slice.endpoints[0].targetRef?.name == "web-7d4b9c-x2x")
        #expect(slice.ports?.first?.port == 8080)
        #expect(try Self.roundTrip(slice) == slice)
    }

    @Test func leaseKeepsMicrosecondRenewTime() throws {
        let json = #"""
            {"apiVersion":"coordination.k8s.io/v1","kind":"Lease",
             "metadata":{"name":"apus-controller","namespace":"apus"},
             "spec":{"holderIdentity":"apus-controller-0_1a2b","leaseDurationSeconds":15,
                     "acquireTime":"2024-05-01T12:00:00.000000Z","renewTime":"2024-05-01T12:00:10.123456Z",
                     "leaseTransitions":3}}
            """#
        let lease = try JSONDecoder().decode(Lease.self, from: Data(json.utf8))
        #expect(lease.spec?.renewTime?.precision == .micro)
        #expect(lease.spec?.renewTime?.description == "2024-05-01T12:00:10.123456Z")
        let encoded = try JSONValue(encoding: lease)
        #expect(encoded["spec"]?["renewTime"] == .string("2024-05-01T12:00:10.123456Z"))
        #expect(encoded["spec"]?["acquireTime"] == .string("2024-05-01T12:00:00.000000Z"))
        #expect(try Self.roundTrip(lease) == lease)
    }

    @Test func secretDataIsBase64AndNeverPrinted() throws {
        let json = #"""
            {"apiVersion":"v1","kind":"Secret","type":"kubernetes.io/tls",
             "metadata":{"name":"linkerd-identity-issuer","namespace":"linkerd"},
             "data":{"tls.crt":"LS0tLS1CRUdJTg==","tls.key":"c2VjcmV0LWtleQ=="}}
            """#
        let secret = try JSONDecoder().decode(Secret.self, from: Data(json.utf8))
        #expect(secret.data?["tls.key"] == Data("secret-key".utf8))
        #expect(secret.data?["tls.crt"] == Data("-----BEGIN".utf8))
        #expect(!secret.description.contains("secret-key"))
        #expect(!String(describing: secret).contains("c2VjcmV0LWtleQ"))
        #expect(secret.description.contains("tls.crt"))
        let encoded = try JSONValue(encoding: secret)
        #expect(encoded["data"]?["tls.key"] == .string("c2VjcmV0LWtleQ=="))
        #expect(try Self.roundTrip(secret) == secret)
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(Secret.self, from: Data(#"{"metadata":{},"data":{"k":"%%%"}}"#.utf8))
        }
    }

    @Test func listDecodesNullItems() throws {
        let list = try JSONDecoder().decode(
            KubernetesList<Pod>.self,
            from: Data(#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"9"},"items":null}"#.utf8))
        #expect(list.items.isEmpty)
        #expect(list.metadata.resourceVersion == "9")
    }

    @Test(arguments: [
        ("2024-05-01T12:00:00Z", 1_714_564_800.0, Timestamp.Precision.seconds, "2024-05-01T12:00:00Z"),
        ("2024-05-01T12:00:00.5Z", 1_714_564_800.5, .micro, "2024-05-01T12:00:00.500000Z"),
        ("2024-05-01T12:00:00.123456Z", 1_714_564_800.123456, .micro, "2024-05-01T12:00:00.123456Z"),
        ("2024-05-01T14:30:00+02:30", 1_714_564_800.0, .seconds, "2024-05-01T12:00:00Z"),
        ("2024-05-01T09:00:00-03:00", 1_714_564_800.0, .seconds, "2024-05-01T12:00:00Z"),
        ("1970-01-01T00:00:00Z", 0, .seconds, "1970-01-01T00:00:00Z"),
        ("2000-02-29T23:59:59Z", 951_868_799, .seconds, "2000-02-29T23:59:59Z"),
        ("2024-05-01t12:00:00z", 1_714_564_800.0, .seconds, "2024-05-01T12:00:00Z"),
    ])
    func timestampParsesAndFormats(text: String, epoch: Double, precision: Timestamp.Precision, formatted: String)
        throws
    {
        let timestamp = try #require(Timestamp(rfc3339: text))
        #expect(abs(timestamp.date.timeIntervalSince1970 - epoch) < 1e-6)
        #expect(timestamp.precision == precision)
        #expect(timestamp.description == formatted)
    }

    @Test(arguments: [
        "", "2024-05-01", "2024-05-01T12:00:00", "2024-13-01T12:00:00Z", "2024-05-01T25:00:00Z",
        "2024-05-01T12:00:00.Z", "2024-05-01T12:00:00+0200", "2024-05-01T12:00:00Zjunk", "yesterday",
    ])
    func timestampRejects(text: String) {
        #expect(Timestamp(rfc3339: text) == nil)
    }

    @Test func microTimestampsRoundTripExactly() throws {
        // Many microsecond values across the fraction range must survive decode → encode unchanged.
        for micros in stride(from: 0, to: 1_000_000, by: 9_973) {
            let text = String(format: "2031-12-31T23:59:59.%06dZ", micros)
            let timestamp = try #require(Timestamp(rfc3339: text))
            #expect(timestamp.description == text)
        }
    }
}
