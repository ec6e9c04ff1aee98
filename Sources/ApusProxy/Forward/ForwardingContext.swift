import ApusDestinationClient
import Atomics
import NIOCore

/// What one client connection (or HTTP/2 stream) is, as far as forwarding decisions go.
struct ClientInfo: Sendable {
    /// The HTTP version the client speaks on this connection.
    var httpProtocol: UpstreamProtocol
    /// The verified mesh identity of the caller (inbound mesh TLS with a client certificate).
    var peerIdentity: String?
    /// The connection arrived over mesh TLS (from another proxy), with or without a client certificate.
    var isMeshTLS: Bool
    /// The port the client originally addressed, when iptables redirected the connection (`SO_ORIGINAL_DST`).
    var originalPort: Int?

    /// The `tls` label of metrics for this client's side of the exchange.
    var tlsStatus: TLSStatus {
        isMeshTLS ? .tls(peer: peerIdentity) : .none(reason: "no_identity")
    }
}

/// Per-event-loop upstream pools, built once for the group's loops; lookups are a dictionary read of immutable
/// state, then loop-bound access (no lock).
final class UpstreamPools: Sendable {
    private let pools: [ObjectIdentifier: NIOLoopBoundBox<UpstreamPool>]

    init(group: EventLoopGroup, meshTLS: MeshTLS?) {
        var pools: [ObjectIdentifier: NIOLoopBoundBox<UpstreamPool>] = [:]
        for loop in group.makeIterator() {
            pools[ObjectIdentifier(loop)] = NIOLoopBoundBox.makeBoxSendingValue(
                UpstreamPool(eventLoop: loop, meshTLS: meshTLS), eventLoop: loop)
        }
        self.pools = pools
    }

    /// The pool of `loop` (call on `loop`); nil for a loop outside the group (then the caller makes a pool of its
    /// own for the connection).
    func pool(for loop: EventLoop) -> UpstreamPool? {
        pools[ObjectIdentifier(loop)]?.value
    }

    /// The pool a connection on `loop` uses, kept in `cache` after the first lookup (a connection's loop never
    /// changes); for a loop outside the group (embedded tests) a pool of the connection's own.
    func pool(for loop: EventLoop, cache: inout UpstreamPool?, meshTLS: MeshTLS) -> UpstreamPool {
        if let cache { return cache }
        let pool = pool(for: loop) ?? UpstreamPool(eventLoop: loop, meshTLS: meshTLS)
        cache = pool
        return pool
    }

    /// Closes all pooled connections, each on its loop.
    func closeAll() {
        for bound in pools.values {
            let loop = bound.eventLoop
            loop.execute { bound.value.closeAll() }
        }
    }
}

/// Counts requests in flight so shutdown can wait for them (up to the grace period).
final class InFlightRequests: Sendable {
    private let count = ManagedAtomic<Int>(0)

    func started() { count.wrappingIncrement(ordering: .relaxed) }
    func finished() { count.wrappingDecrement(ordering: .relaxed) }
    var current: Int { count.load(ordering: .relaxed) }
}

/// What a listener's connections share: configuration, discovery, mesh TLS, metrics and the upstream pools.
final class ForwardingContext: Sendable {
    let direction: TrafficDirection
    let configuration: ProxyConfiguration
    let resolver: DestinationResolver?
    /// Per-destination balancers and traffic splits (issue 5), one per event loop.
    let balancers: Balancers
    let meshTLS: MeshTLS
    let metrics: ProxyMetrics
    let pools: UpstreamPools
    let inFlight: InFlightRequests
    let connectTimeout: TimeAmount
    /// The mesh peer's inbound port when an endpoint does not name one (``Endpoint/opaqueTransportPort``).
    let meshInboundPort: Int
    /// Tap subscribers (issue 5); checked with one atomic load per request.
    let tap: TapHub

    init(
        direction: TrafficDirection, configuration: ProxyConfiguration, resolver: DestinationResolver?,
        balancers: Balancers? = nil, meshTLS: MeshTLS, metrics: ProxyMetrics, pools: UpstreamPools,
        inFlight: InFlightRequests, meshInboundPort: Int = 4143, tap: TapHub = TapHub()
    ) {
        self.direction = direction
        self.configuration = configuration
        self.resolver = resolver
        self.balancers =
            balancers
            ?? (direction == .outbound
                ? Balancers(settings: .outbound, gauges: metrics.balancerEndpoints) : Balancers(settings: .inbound))
        self.meshTLS = meshTLS
        self.metrics = metrics
        self.pools = pools
        self.inFlight = inFlight
        self.meshInboundPort = meshInboundPort
        self.tap = tap
        connectTimeout = TimeAmount(
            direction == .outbound ? configuration.outboundConnectTimeout : configuration.inboundConnectTimeout)
    }
}
