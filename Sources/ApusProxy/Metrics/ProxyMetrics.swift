import ApusCore
import Atomics
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The proxy's metrics registry: Linkerd's families and labels, rendered in the Prometheus text format.
///
/// Hand-rolled rather than swift-prometheus: the hot path must be a few relaxed atomic adds on a handle the
/// caller already holds, with no lock and no allocation per request. swift-prometheus (through swift-metrics)
/// takes a lock per histogram observation and per dimensioned lookup, needs one metric object per label
/// combination including `status_code`, and renders neither `# HELP` text nor Linkerd's millisecond buckets
/// with bounded cardinality. Here a series is one allocation of atomics made on first use.
///
/// ```swift
/// let metrics = ProxyMetrics(retainIdle: configuration.metricsRetainIdle)
/// // per connection and target, cached by the caller:
/// let http = metrics.http(HTTPTrafficLabels(direction: .outbound, authority: "web.shop.svc.cluster.local:80",
///     targetAddress: "10.0.0.7:8080", tls: .tls(peer: "web.shop.serviceaccount.identity.apus.cluster.local")))
/// http.requestStarted()
/// http.responded(statusCode: 200, grpcStatus: nil, latencyToFirstByteNanos: 1_200_000)
/// let text = metrics.render()   // GET /metrics
/// ```
///
/// **Idle expiry.** A series is dropped once it has counted nothing for `retainIdle` *and* nobody but the
/// registry holds its handle (a connection that keeps its handle keeps its series, so counts are never lost to a
/// handle the registry forgot). Expiry runs in ``sweep()``, which ``render()`` calls; the hot path never reads a
/// clock. A dropped series that comes back starts again from zero, which Prometheus treats as a counter reset.
public final class ProxyMetrics: Sendable {
    public let retainIdle: Duration
    /// The `route_*` families (routing, timeouts, retries), rendered after the traffic families.
    public let routes = RouteMetricsRegistry()
    /// `outbound_http_balancer_endpoints`, reported by the outbound balancers (issue 5).
    public let balancerEndpoints = BalancerEndpointGauges()
    private let state = NIOLockedValueBox(State())
    private let fallbackStartTime: Double

    private struct Tracked<Handle: AnyObject & Sendable>: Sendable {
        var handle: Handle
        var lastActivity: UInt64
        var lastChange: ContinuousClock.Instant
    }

    private struct ErrorKey: Hashable, Sendable {
        var direction: TrafficDirection
        var reason: String
    }

    private struct State: Sendable {
        var http: [HTTPTrafficLabels: Tracked<HTTPTrafficMetrics>] = [:]
        var tcp: [TCPTrafficLabels: Tracked<TCPTrafficMetrics>] = [:]
        var errors: [ErrorKey: ManagedAtomic<UInt64>] = [:]
    }

    public init(retainIdle: Duration = .seconds(600)) {
        self.retainIdle = retainIdle
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        fallbackStartTime = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    /// The handle of one HTTP series, created on first use. Takes a lock: call once per connection and target,
    /// not per request.
    public func http(_ labels: HTTPTrafficLabels) -> HTTPTrafficMetrics {
        state.withLockedValue { state in
            if let tracked = state.http[labels] { return tracked.handle }
            let handle = HTTPTrafficMetrics(labels: labels)
            state.http[labels] = Tracked(handle: handle, lastActivity: 0, lastChange: .now)
            return handle
        }
    }

    /// The handle of one TCP series, created on first use (a lock; call once per connection).
    public func tcp(_ labels: TCPTrafficLabels) -> TCPTrafficMetrics {
        state.withLockedValue { state in
            if let tracked = state.tcp[labels] { return tracked.handle }
            let handle = TCPTrafficMetrics(labels: labels)
            state.tcp[labels] = Tracked(handle: handle, lastActivity: 0, lastChange: .now)
            return handle
        }
    }

    /// Counts an HTTP request the proxy failed itself (`inbound_http_errors_total` /
    /// `outbound_http_errors_total` with `error=<reason>`). Reasons must come from a fixed vocabulary
    /// (`unexpected`, `connect timeout`, `loop`…), never from request data, so cardinality stays bounded.
    public func httpError(direction: TrafficDirection, reason: String) {
        let key = ErrorKey(direction: direction, reason: reason)
        let counter = state.withLockedValue { state -> ManagedAtomic<UInt64> in
            if let counter = state.errors[key] { return counter }
            let counter = ManagedAtomic<UInt64>(0)
            state.errors[key] = counter
            return counter
        }
        counter.wrappingIncrement(ordering: .relaxed)
    }

    /// Drops idle, unreferenced series (see the type's documentation); ``render()`` calls it, and a long-running
    /// proxy that is never scraped may call it on a timer to bound memory.
    public func sweep() {
        let now = ContinuousClock.now
        let retainIdle = self.retainIdle
        state.withLockedValue { state in
            Self.sweep(&state.http, now: now, retainIdle: retainIdle) { $0.activity() }
            Self.sweep(&state.tcp, now: now, retainIdle: retainIdle) { $0.activity() }
        }
    }

    private static func sweep<Labels: Hashable, Handle: AnyObject & Sendable>(
        _ table: inout [Labels: Tracked<Handle>], now: ContinuousClock.Instant, retainIdle: Duration,
        activity: (Handle) -> UInt64
    ) {
        var expired: [Labels] = []
        // By key, not over `table.indices`: an Indices value retains the dictionary's storage, so mutating through
        // it copies the storage and every handle would look shared.
        for labels in Array(table.keys) {
            guard let tracked = table[labels] else { continue }
            let current = activity(tracked.handle)
            if current != tracked.lastActivity {
                table[labels]?.lastActivity = current
                table[labels]?.lastChange = now
                continue
            }
            guard now - tracked.lastChange >= retainIdle else { continue }
            // Under the lock nobody can obtain a new reference, so a unique reference here means no connection
            // holds the handle and none will before it is gone. (`tracked` is a copy: drop it first.)
            _ = consume tracked
            if isKnownUniquelyReferenced(&table[labels]!.handle) { expired.append(labels) }
        }
        for labels in expired { table.removeValue(forKey: labels) }
    }

    /// Number of live series (HTTP + TCP), for tests and debugging cardinality.
    public var seriesCount: Int {
        state.withLockedValue { $0.http.count + $0.tcp.count }
    }

    /// The whole exposition: traffic families, error counters, `process_*` and `proxy_build_info`.
    public func render() -> String {
        sweep()
        let (http, tcp, errors) = state.withLockedValue { state in
            (
                state.http.values.map(\.handle).sorted { $0.labelText < $1.labelText },
                state.tcp.values.map(\.handle).sorted { $0.labelText < $1.labelText },
                state.errors.map { ($0.key, $0.value.load(ordering: .relaxed)) }
            )
        }
        var output = ""
        output.reserveCapacity(4096 + http.count * 4096 + tcp.count * 1024)
        renderHTTP(http, into: &output)
        renderTCP(tcp, into: &output)
        routes.render(into: &output)
        balancerEndpoints.render(into: &output)
        for direction in TrafficDirection.allCases {
            let counts = errors.filter { $0.0.direction == direction }.sorted { $0.0.reason < $1.0.reason }
            guard !counts.isEmpty else { continue }
            let name = "\(direction.rawValue)_http_errors_total"
            PrometheusText.header(
                name, .counter,
                help: "The total number of \(direction.rawValue) HTTP requests that could not be "
                    + "processed due to a proxy error.", into: &output)
            for (key, count) in counts {
                var labels = PrometheusText.LabelBuilder()
                labels.add("error", key.reason)
                PrometheusText.sample(name, labels: labels.text, value: String(count), into: &output)
            }
        }
        renderProcess(into: &output)
        PrometheusText.header(
            "proxy_build_info", .gauge, help: "Proxy build info: the Apus release this proxy runs.", into: &output)
        var build = PrometheusText.LabelBuilder()
        build.add("version", ApusVersion.current)
        build.add("vendor", "apus")
        #if DEBUG
            build.add("profile", "debug")
        #else
            build.add("profile", "release")
        #endif
        PrometheusText.sample("proxy_build_info", labels: build.text, value: "1", into: &output)
        return output
    }

    private func renderHTTP(_ series: [HTTPTrafficMetrics], into output: inout String) {
        guard !series.isEmpty else { return }
        let snapshots = series.map { ($0.labelText, $0.snapshot()) }
        PrometheusText.header(
            "request_total", .counter, help: "Total count of HTTP requests.", into: &output)
        for (labels, snapshot) in snapshots {
            PrometheusText.sample("request_total", labels: labels, value: String(snapshot.requests), into: &output)
        }
        // One entry per series and response class, in a stable order.
        var responses: [(labels: String, response: HTTPTrafficMetrics.Snapshot.Response)] = []
        for (labels, snapshot) in snapshots {
            let classes = snapshot.responses.sorted {
                ($0.responseClass.statusCode, $0.responseClass.grpcStatus ?? -1, $0.responseClass.failure ? 1 : 0)
                    < ($1.responseClass.statusCode, $1.responseClass.grpcStatus ?? -1, $1.responseClass.failure ? 1 : 0)
            }
            for response in classes { responses.append((labels, response)) }
        }
        guard !responses.isEmpty else { return }
        PrometheusText.header(
            "response_total", .counter, help: "Total count of HTTP responses.", into: &output)
        for (labels, response) in responses {
            let responseLabels = Self.responseLabels(labels, response.responseClass, includeClassification: true)
            PrometheusText.sample(
                "response_total", labels: responseLabels, value: String(response.count), into: &output)
        }
        PrometheusText.header(
            "response_latency_ms", .histogram,
            help: "Elapsed times between a request's headers being received and "
                + "its response stream completing.", into: &output)
        for (labels, response) in responses {
            let base = Self.responseLabels(labels, response.responseClass, includeClassification: false)
            var cumulative: UInt64 = 0
            for (index, bound) in HTTPTrafficMetrics.latencyBucketsMilliseconds.enumerated() {
                cumulative &+= response.buckets[index]
                PrometheusText.sample(
                    "response_latency_ms_bucket", labels: base + ",le=\"\(bound)\"", value: String(cumulative),
                    into: &output)
            }
            cumulative &+= response.buckets[HTTPTrafficMetrics.bucketCount - 1]
            PrometheusText.sample(
                "response_latency_ms_bucket", labels: base + ",le=\"+Inf\"", value: String(cumulative), into: &output)
            PrometheusText.sample(
                "response_latency_ms_sum", labels: base,
                value: PrometheusText.number(Double(response.sumNanos) / 1e6), into: &output)
            PrometheusText.sample("response_latency_ms_count", labels: base, value: String(cumulative), into: &output)
        }
    }

    /// Linkerd labels `response_total` with `classification`, `error`, `grpc_status_code` (gRPC only) and
    /// `status_code` (absent when no response came), and the latency histogram with `error` and `status_code`.
    private static func responseLabels(
        _ series: String, _ responseClass: ResponseClass, includeClassification: Bool
    ) -> String {
        var text = series
        responseClass.appendLabels(to: &text, classification: includeClassification)
        return text
    }

    private func renderTCP(_ series: [TCPTrafficMetrics], into output: inout String) {
        guard !series.isEmpty else { return }
        let snapshots = series.map { ($0.labelText, $0.snapshot()) }
        let families: [(String, PrometheusText.MetricType, String, (TCPTrafficMetrics.Snapshot) -> UInt64)] = [
            ("tcp_open_total", .counter, "Total count of opened connections.", { $0.opened }),
            ("tcp_open_connections", .gauge, "Number of currently-open connections.", { $0.open }),
            ("tcp_read_bytes_total", .counter, "Total count of bytes read from peers.", { $0.readBytes }),
            ("tcp_write_bytes_total", .counter, "Total count of bytes written to peers.", { $0.writeBytes }),
        ]
        for (name, type, help, value) in families {
            PrometheusText.header(name, type, help: help, into: &output)
            for (labels, snapshot) in snapshots {
                PrometheusText.sample(name, labels: labels, value: String(value(snapshot)), into: &output)
            }
        }
        PrometheusText.header("tcp_close_total", .counter, help: "Total count of closed connections.", into: &output)
        for (labels, snapshot) in snapshots {
            if snapshot.closedSuccess > 0 || snapshot.closedFailure == 0 {
                PrometheusText.sample(
                    "tcp_close_total", labels: labels + ",classification=\"success\"",
                    value: String(snapshot.closedSuccess), into: &output)
            }
            if snapshot.closedFailure > 0 {
                PrometheusText.sample(
                    "tcp_close_total", labels: labels + ",classification=\"failure\"",
                    value: String(snapshot.closedFailure), into: &output)
            }
        }
    }

    private func renderProcess(into output: inout String) {
        let process = ProcessMetrics.current()
        PrometheusText.header(
            "process_start_time_seconds", .gauge,
            help: "Time that the process started (in seconds since the UNIX "
                + "epoch).", into: &output)
        PrometheusText.sample(
            "process_start_time_seconds", labels: "",
            value: PrometheusText.number(process.startTimeSeconds ?? fallbackStartTime), into: &output)
        if let cpu = process.cpuSeconds {
            PrometheusText.header(
                "process_cpu_seconds_total", .counter, help: "Total user and system CPU time spent in seconds.",
                into: &output)
            PrometheusText.sample(
                "process_cpu_seconds_total", labels: "", value: PrometheusText.number(cpu), into: &output)
        }
        let gauges: [(String, String, UInt64?)] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes.", process.residentBytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", process.virtualBytes),
            ("process_open_fds", "Number of open file descriptors.", process.openFDs.map { UInt64($0) }),
            ("process_max_fds", "Maximum number of open file descriptors.", process.maxFDs),
        ]
        for case (let name, let help, .some(let value)) in gauges {
            PrometheusText.header(name, .gauge, help: help, into: &output)
            PrometheusText.sample(name, labels: "", value: String(value), into: &output)
        }
    }
}
