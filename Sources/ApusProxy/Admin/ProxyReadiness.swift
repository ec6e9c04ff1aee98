import Atomics

/// Whether the proxy may receive traffic: what `GET /ready` answers, and what the kubelet's readiness probe
/// (and, with `proxy-await`, the application's start) waits for.
///
/// A meshed proxy is ready once it holds its identity certificate (it cannot serve mTLS before) and, when a
/// destination service is configured, once discovery has answered for the first time. A standalone proxy needs
/// neither and is ready from the start. Readiness only ever goes from not ready to ready: a later failed
/// certificate refresh keeps the current certificate, so the proxy stays able to serve.
public final class ProxyReadiness: Sendable {
    public let requiresIdentity: Bool
    public let requiresConfig: Bool
    private let identityReady = ManagedAtomic(false)
    private let configReady = ManagedAtomic(false)

    public init(requiresIdentity: Bool, requiresConfig: Bool) {
        self.requiresIdentity = requiresIdentity
        self.requiresConfig = requiresConfig
    }

    /// Requires identity when the configuration has one, and destination config when it names a destination
    /// service.
    public convenience init(configuration: ProxyConfiguration) {
        self.init(requiresIdentity: configuration.identity != nil, requiresConfig: configuration.destination != nil)
    }

    /// The identity client obtained the first certificate.
    public func markIdentityReady() {
        identityReady.store(true, ordering: .releasing)
    }

    /// Discovery answered for the first time (the destination client is connected and serving).
    public func markConfigReady() {
        configReady.store(true, ordering: .releasing)
    }

    public var isReady: Bool { waitingFor.isEmpty }

    /// What readiness still waits for, in words for the 503 body (`identity`, `destination config`).
    public var waitingFor: [String] {
        var waiting: [String] = []
        if requiresIdentity, !identityReady.load(ordering: .acquiring) { waiting.append("identity") }
        if requiresConfig, !configReady.load(ordering: .acquiring) { waiting.append("destination config") }
        return waiting
    }
}
