import NIOConcurrencyHelpers

/// `outbound_http_balancer_endpoints{backend_*, endpoint_state="ready|pending"}`: how many endpoints each
/// destination's balancer can use, and how many failure accrual holds back (Linkerd calls ejected endpoints
/// `pending`), so a circuit breaker at work is visible on `/metrics`.
///
/// Balancers report changes (endpoint-set updates, ejections, recoveries), never per request, so the lock here
/// is off the hot path. With several event loops each loop balances on its own and the counts are summed over
/// them.
public final class BalancerEndpointGauges: Sendable {
    private struct Counts: Sendable {
        var ready = 0
        var pending = 0
    }

    private let counts = NIOLockedValueBox<[String: Counts]>([:])

    public init() {}

    /// Adds the deltas of one balancer of `destination`.
    func adjust(_ destination: String, ready: Int, pending: Int) {
        guard ready != 0 || pending != 0 else { return }
        counts.withLockedValue { counts in
            var entry = counts[destination] ?? Counts()
            entry.ready += ready
            entry.pending += pending
            counts[destination] = entry.ready == 0 && entry.pending == 0 ? nil : entry
        }
    }

    /// Ready and pending endpoints per destination authority.
    public func snapshot() -> [String: (ready: Int, pending: Int)] {
        counts.withLockedValue { $0.mapValues { ($0.ready, $0.pending) } }
    }

    func render(into output: inout String) {
        let snapshot = counts.withLockedValue { $0 }.sorted { $0.key < $1.key }
        guard !snapshot.isEmpty else { return }
        let name = "outbound_http_balancer_endpoints"
        PrometheusText.header(
            name, .gauge, help: "The number of endpoints in a load balancer, ready or pending (failure accrual).",
            into: &output)
        for (destination, counts) in snapshot {
            for (state, value) in [("ready", counts.ready), ("pending", counts.pending)] {
                var labels = PrometheusText.LabelBuilder()
                Self.addBackendLabels(destination, to: &labels)
                labels.add("endpoint_state", state)
                PrometheusText.sample(name, labels: labels.text, value: String(value), into: &output)
            }
        }
    }

    /// `name.namespace.svc.<domain>:port` as Linkerd's `backend_*` labels of a Service; anything else by its
    /// authority.
    private static func addBackendLabels(_ authority: String, to labels: inout PrometheusText.LabelBuilder) {
        let colon = authority.lastIndex(of: ":")
        let host = colon.map { String(authority[..<$0]) } ?? authority
        let port = colon.map { String(authority[authority.index(after: $0)...]) } ?? ""
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        if parts.count >= 3, parts[2] == "svc" {
            labels.add("backend_kind", "Service")
            labels.add("backend_name", String(parts[0]))
            labels.add("backend_namespace", String(parts[1]))
            labels.add("backend_port", port)
        } else {
            labels.add("backend_authority", authority)
        }
    }
}
