/// The HTTP metrics handle of a client connection's current exchange, with the handle of the previous
/// exchange's labels kept: a keep-alive client sends request after request to the same target, and the registry
/// lookup takes a lock and hashes every label.
struct ExchangeMetrics {
    private var cachedLabels: HTTPTrafficLabels?
    private var cachedMetrics: HTTPTrafficMetrics?
    /// The handle of the exchange in progress; nil between exchanges (and before the target is known).
    private(set) var current: HTTPTrafficMetrics?

    /// Counts a request to `labels` and makes it the current exchange.
    mutating func requestStarted(_ labels: HTTPTrafficLabels, registry: ProxyMetrics) {
        let metrics: HTTPTrafficMetrics
        if let cachedLabels, cachedLabels == labels, let cachedMetrics {
            metrics = cachedMetrics
        } else {
            metrics = registry.http(labels)
            cachedLabels = labels
            cachedMetrics = metrics
        }
        current = metrics
        metrics.requestStarted()
    }

    /// Counts how the current exchange ended, once. `status` is the response head's status, nil when no head
    /// went out; `error` why there is no (complete) response — a response whose head went out is counted with
    /// its status, as a failure; one that never came with `error` alone (no `status_code`), as Linkerd does.
    mutating func exchangeEnded(status: Int?, grpcStatus: Int?, latencyToFirstByteNanos: UInt64, error: ResponseError?)
    {
        guard let metrics = current else { return }
        current = nil
        if let status {
            metrics.responded(
                statusCode: status, grpcStatus: grpcStatus, latencyToFirstByteNanos: latencyToFirstByteNanos,
                failed: error != nil, error: error)
        } else if let error {
            metrics.responded(statusCode: 0, grpcStatus: nil, latencyToFirstByteNanos: 0, failed: true, error: error)
        }
    }
}
