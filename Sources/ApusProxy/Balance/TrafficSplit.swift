import ApusCore

/// One backend of a traffic split: where requests go and its relative weight.
public struct WeightedBackend: Sendable, Hashable {
    /// `host:port` to resolve and balance over (e.g. `web-v2.shop.svc.cluster.local:80`).
    public var authority: String
    /// Relative weight; 0 sends nothing.
    public var weight: Int64

    public init(authority: String, weight: Int64) {
        self.authority = authority
        self.weight = weight
    }

    /// The backends of a ServiceProfile's `dstOverrides`; weights are quantities (`500m`, `1`, `90`) compared
    /// in thousandths, so `500m` and `1` split 1:2. Entries without an authority or with an unreadable or
    /// negative weight are skipped (the controller reports those in the profile's status).
    public static func from(dstOverrides: [ServiceProfile.WeightedDestination]) -> [WeightedBackend] {
        dstOverrides.compactMap { override in
            guard let authority = override.authority, !authority.isEmpty, let text = override.weight,
                let weight = try? Quantity(parsing: text), weight.value >= 0
            else { return nil }
            var host = authority
            if let colon = host.lastIndex(of: ":"), colon > host.startIndex,
                host[host.index(before: colon)] == "."
            {
                host.remove(at: host.index(before: colon))
            } else if host.hasSuffix(".") {
                host.removeLast()
            }
            return WeightedBackend(authority: host, weight: weight.milliValue)
        }
    }

    /// The backends of an HTTPRoute rule (Services by name, namespace and port; the weights as written).
    /// Backends that are not core Services or name no port are skipped: they cannot be resolved to endpoints.
    public static func from(rule: CompiledHTTPRoute.Rule, clusterDomain: String) -> [WeightedBackend] {
        rule.backends.compactMap { backend in
            guard backend.group.isEmpty, backend.kind == "Service", let port = backend.port else { return nil }
            return WeightedBackend(
                authority: "\(backend.name).\(backend.namespace).svc.\(clusterDomain):\(port)",
                weight: Int64(backend.weight))
        }
    }
}

/// Splits requests across weighted backends with smooth weighted round-robin (nginx's algorithm): exact
/// proportions over every cycle of `sum(weights)` picks, spread out rather than in runs (90/10 sends the 10 %
/// one request at a time), and deterministic, so a 90/10 split is 90/10 after any number of requests rather
/// than only on average.
///
/// Weights change live with ``update(_:)``: backends that stay keep their accumulated credit, so a change
/// takes effect from the next request without a burst to any backend; removed backends drop out at once.
/// Weights are reduced by their greatest common divisor, so `900000m`/`100000m` cycles as fast as `9`/`1`.
///
/// Not thread-safe: one per destination per event loop, like ``LoadBalancer``.
public final class TrafficSplit {
    private var backends: [WeightedBackend] = []
    private var weights: [Int64] = []
    private var credit: [Int64] = []
    private var total: Int64 = 0
    /// The backends this split was built from, to skip unchanged updates.
    public private(set) var current: [WeightedBackend] = []

    public init(_ backends: [WeightedBackend] = []) {
        update(backends)
    }

    /// Applies new backends or weights; unchanged input costs one array comparison.
    public func update(_ next: [WeightedBackend]) {
        if next == current { return }
        var previousCredit: [String: Int64] = [:]
        for (index, backend) in backends.enumerated() { previousCredit[backend.authority] = credit[index] }
        let previousTotal = max(total, 1)
        current = next
        backends = next.filter { $0.weight > 0 }
        let divisor = backends.reduce(Int64(0)) { gcd($0, $1.weight) }
        weights = backends.map { $0.weight / max(divisor, 1) }
        total = weights.reduce(0, +)
        // Credit carries over scaled to the new total, so a backend part-way through its turn stays there.
        credit = backends.map { backend in
            guard let old = previousCredit[backend.authority] else { return 0 }
            return Int64((Double(old) / Double(previousTotal) * Double(total)).rounded())
        }
    }

    /// The backend for the next request; nil when no backend has a positive weight.
    public func pick() -> WeightedBackend? {
        switch backends.count {
        case 0: return nil
        case 1: return backends[0]
        default: break
        }
        var best = 0
        for index in backends.indices {
            credit[index] += weights[index]
            if credit[index] > credit[best] { best = index }
        }
        credit[best] -= total
        return backends[best]
    }

    private func gcd(_ a: Int64, _ b: Int64) -> Int64 {
        var (x, y) = (a, b)
        while y != 0 { (x, y) = (y, x % y) }
        return x
    }
}
