import ApusCore
import ApusInjector
import Foundation
import Testing

/// Tap on injected proxies: only the controller's identity may tap (`APUS_PROXY_TAP_SVC_NAME`, as Linkerd's tap
/// injector sets `LINKERD2_PROXY_TAP_SVC_NAME`), the control port is a named container port, and
/// `config.linkerd.io/disable-tap` turns both off.
@Suite struct InjectorTapTests {
    static let anchors = "-----BEGIN CERTIFICATE-----\nx\n"

    /// The injected proxy container of `pod` in `namespace` (inject enabled on the namespace).
    static func proxy(
        _ injector: ProxyInjector, podAnnotations: [String: String] = [:],
        namespaceAnnotations: [String: String] = [:]
    ) throws -> (container: JSONValue, warnings: [String]) {
        var namespaceValues = namespaceAnnotations
        namespaceValues[InjectorNames.inject] = "enabled"
        let result = injector.inject(
            podJSON: InjectorDecisionTests.pod(annotations: podAnnotations),
            namespace: Namespace(metadata: ObjectMeta(name: "shop", annotations: namespaceValues)))
        #expect(result.decision == .inject(mode: .enabled))
        let spec = try #require(result.injectedObject?["spec"])
        let containers = (spec["initContainers"]?.arrayValue ?? []) + (spec["containers"]?.arrayValue ?? [])
        let proxy = try #require(containers.first { $0["name"]?.stringValue == InjectorNames.proxyContainer })
        return (proxy, result.warnings)
    }

    static func env(_ container: JSONValue, _ name: String) -> String? {
        container["env"]?.arrayValue?.first { $0["name"]?.stringValue == name }?["value"]?.stringValue
    }

    static func ports(_ container: JSONValue) -> [String: Int] {
        var ports: [String: Int] = [:]
        for port in container["ports"]?.arrayValue ?? [] {
            if let name = port["name"]?.stringValue, let number = port["containerPort"]?.doubleValue {
                ports[name] = Int(number)
            }
        }
        return ports
    }

    @Test("the controller's ServiceAccount identity may tap, on the named port 4190")
    func tapIdentityAndPort() throws {
        let injector = ProxyInjector(defaults: InjectorDefaults(trustAnchorsPEM: Self.anchors))
        let (proxy, _) = try Self.proxy(injector)
        #expect(
            Self.env(proxy, "APUS_PROXY_TAP_SVC_NAME")
                == "apus-controller.apus.serviceaccount.identity.apus.cluster.local")
        #expect(Self.env(proxy, "APUS_PROXY_CONTROL_LISTEN_ADDR") == "0.0.0.0:4190")
        #expect(Self.ports(proxy) == ["linkerd-proxy": 4143, "linkerd-admin": 4191, "linkerd-tap": 4190])
        // No bearer token in a cluster: tap is by mesh identity only.
        #expect(Self.env(proxy, "APUS_PROXY_TAP_TOKEN_FILE") == nil)
    }

    @Test("the tap identity follows the control-plane namespace and trust domain, like the other identities")
    func tapIdentityFollowsTheSettings() throws {
        let defaults = InjectorDefaults(
            controlPlaneNamespace: "mesh-system", trustDomain: "example.org", trustAnchorsPEM: Self.anchors)
        #expect(defaults.tapServerName == "apus-controller.mesh-system.serviceaccount.identity.mesh-system.example.org")
        #expect(defaults.identityServerName.hasSuffix(".serviceaccount.identity.mesh-system.example.org"))
        let (proxy, _) = try Self.proxy(ProxyInjector(defaults: defaults))
        #expect(Self.env(proxy, "APUS_PROXY_TAP_SVC_NAME") == defaults.tapServerName)
        let custom = InjectorDefaults(tapServerName: "tap.viz.serviceaccount.identity.apus.cluster.local")
        let (customProxy, _) = try Self.proxy(ProxyInjector(defaults: custom))
        #expect(
            Self.env(customProxy, "APUS_PROXY_TAP_SVC_NAME") == "tap.viz.serviceaccount.identity.apus.cluster.local")
    }

    @Test("config.linkerd.io/control-port moves the tap port and its listener together")
    func controlPortAnnotation() throws {
        let injector = ProxyInjector(defaults: InjectorDefaults(trustAnchorsPEM: Self.anchors))
        let (proxy, _) = try Self.proxy(injector, podAnnotations: [InjectorNames.Config.controlPort: "5190"])
        #expect(Self.ports(proxy)["linkerd-tap"] == 5190)
        #expect(Self.env(proxy, "APUS_PROXY_CONTROL_LISTEN_ADDR") == "0.0.0.0:5190")
    }

    @Test(
        "disable-tap on the pod or its namespace: no tap identity and no tap port; the pod's value wins",
        arguments: [
            (["config.linkerd.io/disable-tap": "true"], [:], false),
            ([:], ["config.linkerd.io/disable-tap": "true"], false),
            (["config.linkerd.io/disable-tap": "false"], ["config.linkerd.io/disable-tap": "true"], true),
            (["config.linkerd.io/disable-tap": "true"], ["config.linkerd.io/disable-tap": "false"], false),
            ([:], [:], true),
        ] as [([String: String], [String: String], Bool)])
    func disableTap(pod: [String: String], namespace: [String: String], tapExpected: Bool) throws {
        let injector = ProxyInjector(defaults: InjectorDefaults(trustAnchorsPEM: Self.anchors))
        let (proxy, warnings) = try Self.proxy(injector, podAnnotations: pod, namespaceAnnotations: namespace)
        #expect((Self.env(proxy, "APUS_PROXY_TAP_SVC_NAME") != nil) == tapExpected)
        #expect((Self.ports(proxy)["linkerd-tap"] != nil) == tapExpected)
        // The rest of the proxy is untouched by the annotation.
        #expect(Self.ports(proxy)["linkerd-admin"] == 4191)
        #expect(warnings.allSatisfy { !$0.contains("disable-tap") })
    }

    @Test("an invalid disable-tap value is reported and tap stays on")
    func invalidDisableTap() throws {
        let injector = ProxyInjector(defaults: InjectorDefaults(trustAnchorsPEM: Self.anchors))
        let (proxy, warnings) = try Self.proxy(injector, podAnnotations: [InjectorNames.Config.disableTap: "yes"])
        #expect(Self.env(proxy, "APUS_PROXY_TAP_SVC_NAME") != nil)
        #expect(warnings.contains { $0.contains("config.linkerd.io/disable-tap") && $0.contains("\"yes\"") })
    }
}
