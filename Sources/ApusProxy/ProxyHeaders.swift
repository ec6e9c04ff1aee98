/// Header names the proxy reads, writes or strips, in one place so the outbound and inbound sides agree.
///
/// The `l5d-` names are Linkerd's own, kept so applications, ingresses and dashboards written for Linkerd work
/// unchanged. The `apus-` names exist only between two Apus proxies: the outbound side adds them, the inbound
/// side consumes them and strips them before the request reaches the application.
public enum ProxyHeaders {
    /// Set by clients and ingresses to pin the destination regardless of `:authority`/`Host`.
    public static let destinationOverride = "l5d-dst-override"
    /// Added by the proxy to a response it generated itself (timeouts, connect failures, policy denials), saying
    /// why in plain words, so a 502 from the mesh is never confused with a 502 from the application.
    public static let proxyError = "l5d-proxy-error"
    /// Between proxies: the HTTP version the application spoke (`HTTP/1.1`) when the outbound proxy carried an
    /// HTTP/1 request over the multiplexed HTTP/2 mesh connection; the inbound proxy downgrades it again.
    /// (Linkerd's name for the same transparent upgrade.)
    public static let originalProtocol = "l5d-orig-proto"
    /// Between proxies: the port the application addressed on the destination pod. A meshed peer is always
    /// reached on its inbound proxy port, so without iptables' original destination (local mode) the target
    /// port travels here; the inbound proxy forwards to its application on this port.
    public static let originalDestinationPort = "apus-orig-dst-port"

    /// Set by the inbound proxy on requests it forwards to its application: the verified mTLS identity of the
    /// calling proxy (Linkerd's name). Any value a client sent is removed first, so the application can trust it.
    public static let clientIdentity = "l5d-client-id"

    /// Headers that belong to a single hop (RFC 9110 §7.6.1) and are never forwarded, plus the ones any
    /// `Connection` header names.
    public static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade",
    ]
}
