import Metrics

/// The metric objects of one ``WorkQueue``, created once per queue so adding and taking keys only touches
/// atomics. Names follow client-go's workqueue metrics with the `apus_controller_` prefix; `name` is the
/// queue's (its controller's) name.
///
/// - `apus_controller_workqueue_depth{name}` (gauge): keys waiting to be handed to a worker.
/// - `apus_controller_workqueue_adds_total{name}` (counter): keys queued (deduplicated adds are not counted).
/// - `apus_controller_workqueue_queue_duration_seconds{name}` (histogram): time from queuing a key to a worker
///   taking it; the latency a change waits before its reconcile starts.
/// - `apus_controller_workqueue_retries_total{name}` (counter): rate-limited re-adds after failures.
struct WorkQueueMetrics: Sendable {
    let depth: Gauge
    let adds: Counter
    let queueDuration: Metrics.Timer
    let retries: Counter

    init(name: String, factory: any MetricsFactory) {
        let dimensions = [("name", name)]
        depth = Gauge(label: "apus_controller_workqueue_depth", dimensions: dimensions, factory: factory)
        adds = Counter(label: "apus_controller_workqueue_adds_total", dimensions: dimensions, factory: factory)
        queueDuration = Metrics.Timer(
            label: "apus_controller_workqueue_queue_duration_seconds", dimensions: dimensions,
            preferredDisplayUnit: .seconds, factory: factory)
        retries = Counter(label: "apus_controller_workqueue_retries_total", dimensions: dimensions, factory: factory)
    }
}

/// The metric objects of one ``Controller``, created once. `controller` is the controller's name.
///
/// - `apus_controller_reconcile_total{controller, result}` (counter): reconciles by outcome, `result` one of
///   `success`, `requeue` (asked to look again later), `error` (retried with backoff) or `terminal` (dropped).
/// - `apus_controller_reconcile_errors_total{controller}` (counter): reconciles that threw (`error` + `terminal`).
/// - `apus_controller_reconcile_duration_seconds{controller}` (histogram): time spent in `reconcile(_:)`.
struct ReconcileMetrics: Sendable {
    let success: Counter
    let requeue: Counter
    let error: Counter
    let terminal: Counter
    let errors: Counter
    let duration: Metrics.Timer

    init(controller: String, factory: any MetricsFactory) {
        func outcome(_ result: String) -> Counter {
            Counter(
                label: "apus_controller_reconcile_total", dimensions: [("controller", controller), ("result", result)],
                factory: factory)
        }
        success = outcome("success")
        requeue = outcome("requeue")
        error = outcome("error")
        terminal = outcome("terminal")
        errors = Counter(
            label: "apus_controller_reconcile_errors_total", dimensions: [("controller", controller)],
            factory: factory)
        duration = Metrics.Timer(
            label: "apus_controller_reconcile_duration_seconds", dimensions: [("controller", controller)],
            preferredDisplayUnit: .seconds, factory: factory)
    }

    func record(_ action: QueueAction, duration elapsed: Duration) {
        duration.recordNanoseconds(elapsed.metricNanoseconds)
        switch action {
        case .forget: success.increment()
        case .forgetAndRequeue: requeue.increment()
        case .requeueRateLimited:
            error.increment()
            errors.increment()
        case .drop:
            terminal.increment()
            errors.increment()
        }
    }
}

/// The metric objects of one watcher (one resource kind), created when it starts iterating.
///
/// - `apus_controller_watch_restarts_total{kind}` (counter): watches re-opened after the previous one ended or
///   failed (normal server timeouts included; a high rate with errors in the log means an unhealthy API path).
/// - `apus_controller_watch_relists_total{kind}` (counter): full lists after the first, i.e. the watch's
///   resourceVersion expired (410) and the cache was rebuilt; each one costs a list of every object.
struct WatchMetrics: Sendable {
    let restarts: Counter
    let relists: Counter

    init(kind: String, factory: any MetricsFactory) {
        restarts = Counter(
            label: "apus_controller_watch_restarts_total", dimensions: [("kind", kind)], factory: factory)
        relists = Counter(label: "apus_controller_watch_relists_total", dimensions: [("kind", kind)], factory: factory)
    }
}

extension Duration {
    /// Whole nanoseconds, saturating (metrics only need the magnitude).
    var metricNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return scaled.addingReportingOverflow(attoseconds / 1_000_000_000).overflow
            ? .max : scaled + attoseconds / 1_000_000_000
    }
}
