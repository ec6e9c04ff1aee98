import NIOConcurrencyHelpers

/// The identity of a route series: Linkerd's `route_*` families are labelled `direction`, `dst` (the logical
/// destination `host:port`) and `rt_route` (the ServiceProfile route name, the HTTPRoute name, or `[DEFAULT]`).
public struct RouteLabels: Hashable, Sendable {
    public var direction: TrafficDirection
    public var destination: String
    public var route: String

    public init(direction: TrafficDirection, destination: String, route: String) {
        self.direction = direction
        self.destination = destination
        self.route = route
    }
}

/// The counters of one route, so `routes -o wide` can show EFFECTIVE (what the caller saw, retries hidden) next
/// to ACTUAL (every attempt the proxy sent) success rates:
///
/// - `route_request_total`, `route_response_total`, `route_response_latency_ms`: one per request as the client
///   saw it (after retries and timeouts; latency to the first byte of the final answer);
/// - `route_actual_request_total`, `route_actual_response_total`, `route_actual_response_latency_ms`: one per
///   attempt sent to an endpoint;
/// - `route_retryable_total`: requests on a route that may retry; `route_retries_total`: retries sent;
///   `route_retry_skipped_total{reason}`: failures not retried because the budget or limit was spent or the body
///   did not fit the replay buffer; `route_timeouts_total`: requests answered 504 by a route timeout.
///
/// Get the handle once per route and keep it (``RouteMetricsRegistry/route(_:)`` takes a lock); the methods are
/// relaxed atomic adds.
public final class RouteMetrics: Sendable {
    let labels: RouteLabels
    let labelText: String
    let effective: HTTPTrafficMetrics
    let actual: HTTPTrafficMetrics
    private let counters = AtomicCounterBlock(count: 5)

    static let retryableIndex = 0
    static let retriesIndex = 1
    static let skippedBudgetIndex = 2
    static let skippedBodyIndex = 3
    static let timeoutsIndex = 4

    init(labels: RouteLabels) {
        self.labels = labels
        var builder = PrometheusText.LabelBuilder()
        builder.add("direction", labels.direction.rawValue)
        builder.add("dst", labels.destination)
        builder.add("rt_route", labels.route)
        labelText = builder.text
        // The traffic labels are unused: the route text above is what these series render with.
        let placeholder = HTTPTrafficLabels(
            direction: labels.direction, authority: labels.destination, targetAddress: "",
            tls: .none(reason: "route"))
        effective = HTTPTrafficMetrics(labels: placeholder, labelText: labelText)
        actual = HTTPTrafficMetrics(labels: placeholder, labelText: labelText)
    }

    /// A request matched this route; `retryable` when the route may retry it.
    public func requestStarted(retryable: Bool) {
        effective.requestStarted()
        if retryable { counters.add(1, at: Self.retryableIndex) }
    }

    /// The answer the client got (`failed` by the route's classification); `error` when none came (status 0)
    /// or its stream was cut.
    public func responded(
        statusCode: Int, grpcStatus: Int?, latencyToFirstByteNanos: UInt64, failed: Bool,
        error: ResponseError? = nil
    ) {
        effective.responded(
            statusCode: statusCode, grpcStatus: grpcStatus, latencyToFirstByteNanos: latencyToFirstByteNanos,
            failed: failed, error: error)
    }

    /// One attempt was sent to an endpoint.
    public func attemptStarted() {
        actual.requestStarted()
    }

    /// How one attempt ended: status 0 and `error` when it got no response (connect error, reset, timeout).
    public func attemptResponded(
        statusCode: Int, grpcStatus: Int?, latencyToFirstByteNanos: UInt64, failed: Bool,
        error: ResponseError? = nil
    ) {
        actual.responded(
            statusCode: statusCode, grpcStatus: grpcStatus, latencyToFirstByteNanos: latencyToFirstByteNanos,
            failed: failed, error: error)
    }

    public func retried() { counters.add(1, at: Self.retriesIndex) }

    public enum SkipReason: String, Sendable, CaseIterable {
        /// The retry budget (ServiceProfile) or the retry limit (HTTPRoute) was spent.
        case budget
        /// The request body did not fit the replay buffer.
        case body
    }

    public func retrySkipped(_ reason: SkipReason) {
        counters.add(1, at: reason == .budget ? Self.skippedBudgetIndex : Self.skippedBodyIndex)
    }

    public func timedOut() { counters.add(1, at: Self.timeoutsIndex) }

    struct Snapshot {
        var effective: HTTPTrafficMetrics.Snapshot
        var actual: HTTPTrafficMetrics.Snapshot
        var retryable: UInt64
        var retries: UInt64
        var skippedBudget: UInt64
        var skippedBody: UInt64
        var timeouts: UInt64
    }

    func snapshot() -> Snapshot {
        Snapshot(
            effective: effective.snapshot(), actual: actual.snapshot(),
            retryable: counters.load(Self.retryableIndex), retries: counters.load(Self.retriesIndex),
            skippedBudget: counters.load(Self.skippedBudgetIndex), skippedBody: counters.load(Self.skippedBodyIndex),
            timeouts: counters.load(Self.timeoutsIndex))
    }
}

/// All route series of a proxy. Series live as long as the proxy: their number is bounded by the routes of the
/// destinations the application talks to.
public final class RouteMetricsRegistry: Sendable {
    private let series = NIOLockedValueBox<[RouteLabels: RouteMetrics]>([:])

    public init() {}

    /// The handle of one route series, created on first use (a lock: cache it per route and destination).
    public func route(_ labels: RouteLabels) -> RouteMetrics {
        series.withLockedValue { series in
            if let existing = series[labels] { return existing }
            let created = RouteMetrics(labels: labels)
            series[labels] = created
            return created
        }
    }

    /// Appends the `route_*` families (nothing when no request was routed yet).
    func render(into output: inout String) {
        let all = series.withLockedValue { Array($0.values) }.sorted { $0.labelText < $1.labelText }
        guard !all.isEmpty else { return }
        let snapshots = all.map { ($0.labelText, $0.snapshot()) }
        Self.renderHTTP(
            prefix: "route", kind: "", snapshots.map { ($0.0, $0.1.effective) }, into: &output)
        Self.renderHTTP(
            prefix: "route_actual", kind: " actually sent to endpoints (every attempt)",
            snapshots.map { ($0.0, $0.1.actual) }, into: &output)
        let counters: [(String, String, (RouteMetrics.Snapshot) -> UInt64)] = [
            ("route_retryable_total", "Total count of requests on routes that may retry them.", { $0.retryable }),
            ("route_retries_total", "Total count of retries sent.", { $0.retries }),
            ("route_timeouts_total", "Total count of requests answered 504 by a route timeout.", { $0.timeouts }),
        ]
        for (name, help, value) in counters {
            PrometheusText.header(name, .counter, help: help, into: &output)
            for (labels, snapshot) in snapshots {
                PrometheusText.sample(name, labels: labels, value: String(value(snapshot)), into: &output)
            }
        }
        PrometheusText.header(
            "route_retry_skipped_total", .counter,
            help: "Total count of failed attempts not retried, by reason (budget: retry budget or limit spent; "
                + "body: request body over the replay buffer).", into: &output)
        for (labels, snapshot) in snapshots {
            for reason in RouteMetrics.SkipReason.allCases {
                let value = reason == .budget ? snapshot.skippedBudget : snapshot.skippedBody
                PrometheusText.sample(
                    "route_retry_skipped_total", labels: labels + ",reason=\"\(reason.rawValue)\"",
                    value: String(value), into: &output)
            }
        }
    }

    private static func renderHTTP(
        prefix: String, kind: String, _ series: [(String, HTTPTrafficMetrics.Snapshot)], into output: inout String
    ) {
        let requests = "\(prefix)_request_total"
        PrometheusText.header(requests, .counter, help: "Total count of HTTP requests\(kind).", into: &output)
        for (labels, snapshot) in series {
            PrometheusText.sample(requests, labels: labels, value: String(snapshot.requests), into: &output)
        }
        var responses: [(labels: String, response: HTTPTrafficMetrics.Snapshot.Response)] = []
        for (labels, snapshot) in series {
            let classes = snapshot.responses.sorted { $0.responseClass.sortKey < $1.responseClass.sortKey }
            for response in classes { responses.append((labels, response)) }
        }
        guard !responses.isEmpty else { return }
        let total = "\(prefix)_response_total"
        PrometheusText.header(total, .counter, help: "Total count of HTTP responses\(kind).", into: &output)
        for (labels, response) in responses {
            var text = labels
            response.responseClass.appendLabels(to: &text, classification: true)
            PrometheusText.sample(total, labels: text, value: String(response.count), into: &output)
        }
        let latency = "\(prefix)_response_latency_ms"
        PrometheusText.header(
            latency, .histogram,
            help: "Elapsed times between a request's headers being received and its response's first byte\(kind).",
            into: &output)
        for (labels, response) in responses {
            var base = labels
            response.responseClass.appendLabels(to: &base, classification: false)
            var cumulative: UInt64 = 0
            for (index, bound) in HTTPTrafficMetrics.latencyBucketsMilliseconds.enumerated() {
                cumulative &+= response.buckets[index]
                PrometheusText.sample(
                    "\(latency)_bucket", labels: base + ",le=\"\(bound)\"", value: String(cumulative), into: &output)
            }
            cumulative &+= response.buckets[HTTPTrafficMetrics.bucketCount - 1]
            PrometheusText.sample(
                "\(latency)_bucket", labels: base + ",le=\"+Inf\"", value: String(cumulative), into: &output)
            PrometheusText.sample(
                "\(latency)_sum", labels: base, value: PrometheusText.number(Double(response.sumNanos) / 1e6),
                into: &output)
            PrometheusText.sample("\(latency)_count", labels: base, value: String(cumulative), into: &output)
        }
    }
}
