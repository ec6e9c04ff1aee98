/// Which listener the traffic came through, Linkerd's `direction` label.
public enum TrafficDirection: String, Sendable, Hashable, CaseIterable {
    case inbound
    case outbound
}

/// How the connection a series describes was secured, rendered as Linkerd renders it so dashboards and
/// `linkerd viz` queries (`tls="true"`) keep working.
public enum TLSStatus: Hashable, Sendable {
    /// Mesh mTLS. `peer` is the other side's verified identity when known: `client_id` on inbound series,
    /// `server_id` on outbound ones.
    case tls(peer: String?)
    /// No mesh TLS; `reason` is Linkerd's `no_tls_reason` (`not_provided_by_remote`, `loopback`, `disabled`,
    /// `no_identity`…).
    case none(reason: String)
}

/// The identity of an HTTP series: everything that stays fixed for the requests one caller sends to one target.
public struct HTTPTrafficLabels: Hashable, Sendable {
    public var direction: TrafficDirection
    /// The logical destination (outbound); Linkerd leaves it off inbound series, so callers pass nil there.
    public var authority: String?
    /// The `ip:port` actually connected to (outbound) or accepted on (inbound).
    public var targetAddress: String
    public var tls: TLSStatus
    /// Destination metadata from ``Endpoint/labels`` (`namespace`, `service`, `pod`, `serviceaccount`, …),
    /// rendered as `dst_<key>`; keys that already start with `dst_` are kept as they are.
    public var destination: [String: String]

    public init(
        direction: TrafficDirection, authority: String? = nil, targetAddress: String, tls: TLSStatus,
        destination: [String: String] = [:]
    ) {
        self.direction = direction
        self.authority = authority
        self.targetAddress = targetAddress
        self.tls = tls
        self.destination = destination
    }
}

/// The identity of a TCP series (one per listener side, peer role, TLS status and target).
public struct TCPTrafficLabels: Hashable, Sendable {
    /// Which end of the proxy the connection is: Linkerd's `peer` label.
    public enum Peer: String, Sendable, Hashable {
        /// The connection a client opened to the proxy (`peer="src"`).
        case source = "src"
        /// The connection the proxy opened to a server (`peer="dst"`).
        case destination = "dst"
    }

    public var direction: TrafficDirection
    public var peer: Peer
    public var tls: TLSStatus
    public var targetAddress: String

    public init(direction: TrafficDirection, peer: Peer, tls: TLSStatus, targetAddress: String) {
        self.direction = direction
        self.peer = peer
        self.tls = tls
        self.targetAddress = targetAddress
    }
}

/// Builds the `name="value",…` part of a series once, when the series is created, so rendering and the hot path
/// never format labels.
enum LabelText {
    static func http(_ labels: HTTPTrafficLabels) -> String {
        var builder = PrometheusText.LabelBuilder()
        builder.add("direction", labels.direction.rawValue)
        if let authority = labels.authority { builder.add("authority", authority) }
        builder.add("target_addr", labels.targetAddress)
        addTLS(labels.tls, direction: labels.direction, to: &builder)
        // Ordered by the rendered name, so the series reads dst_namespace, dst_pod, dst_service… whatever the
        // keys were; ties (two keys naming one label) resolve to the key written with the prefix.
        let destination = labels.destination.map { key, value in
            (PrometheusText.sanitizedLabelName(key.hasPrefix("dst_") ? key : "dst_" + key), key, value)
        }
        for (name, _, value) in destination.sorted(by: { ($0.0, $0.1) < ($1.0, $1.1) }) {
            builder.add(name, value)
        }
        return builder.text
    }

    static func tcp(_ labels: TCPTrafficLabels) -> String {
        var builder = PrometheusText.LabelBuilder()
        builder.add("direction", labels.direction.rawValue)
        builder.add("peer", labels.peer.rawValue)
        builder.add("target_addr", labels.targetAddress)
        addTLS(labels.tls, direction: labels.direction, to: &builder)
        return builder.text
    }

    private static func addTLS(
        _ tls: TLSStatus, direction: TrafficDirection, to builder: inout PrometheusText.LabelBuilder
    ) {
        switch tls {
        case .tls(let peer):
            builder.add("tls", "true")
            if let peer { builder.add(direction == .inbound ? "client_id" : "server_id", peer) }
        case .none(let reason):
            builder.add("tls", "no_identity")
            builder.add("no_tls_reason", reason)
        }
    }
}
