import NIOConcurrencyHelpers

/// The counters of one HTTP series: `request_total`, `response_total` and `response_latency_ms`.
///
/// Get it once per connection and target from ``ProxyMetrics/http(_:)`` and keep it: the methods are a handful of
/// relaxed atomic adds with no lock and no allocation, safe from any event loop.
///
/// Responses are counted per *response class* (status code, gRPC status, classification), each with its own
/// latency histogram, as Linkerd labels `response_total` and `response_latency_ms` with `status_code`. The first
/// ``slotCount`` classes a series sees get inline slots claimed with a compare-and-swap; a series that sees more
/// distinct classes than that (rare: one target rarely answers with more than a few codes) counts the rest in an
/// overflow table under a lock.
public final class HTTPTrafficMetrics: Sendable {
    /// Linkerd's `response_latency_ms` bucket bounds, in milliseconds; `+Inf` is implicit.
    public static let latencyBucketsMilliseconds: [UInt64] = [
        1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000, 10000, 20000,
        30000, 40000, 50000,
    ]
    static let bucketBoundsNanos: [UInt64] = latencyBucketsMilliseconds.map { $0 * 1_000_000 }
    static let slotCount = 8
    // Per slot: key, latency sum (ns), then one counter per bound plus one for `+Inf`.
    static let bucketCount = latencyBucketsMilliseconds.count + 1
    static let slotStride = 2 + bucketCount
    static let keyOffset = 0
    static let sumOffset = 1
    static let bucketsOffset = 2
    static let requestsIndex = 0
    static let firstSlotIndex = 1

    let labels: HTTPTrafficLabels
    /// `name="value",…` for this series, built once.
    let labelText: String
    private let counters: AtomicCounterBlock
    private let overflow = NIOLockedValueBox<[UInt64: AtomicCounterBlock]>([:])

    /// - Parameter labelText: rendered labels when the series is not a traffic series (route families).
    init(labels: HTTPTrafficLabels, labelText: String? = nil) {
        self.labels = labels
        self.labelText = labelText ?? LabelText.http(labels)
        self.counters = AtomicCounterBlock(count: Self.firstSlotIndex + Self.slotCount * Self.slotStride)
    }

    /// Counts a request the proxy accepted for forwarding (`request_total`).
    @inline(__always)
    public func requestStarted() {
        counters.add(1, at: Self.requestsIndex)
    }

    /// Counts the response (`response_total`) and its time to first byte (`response_latency_ms`).
    ///
    /// The classification is Linkerd's: `failure` for a 5xx status or a non-zero gRPC status, else `success`.
    /// A response the proxy produced itself because there was none (connect error, timeout) is reported with the
    /// status it sent (502, 503, 504) and so counts as a failure too.
    @inline(__always)
    public func responded(statusCode: Int, grpcStatus: Int?, latencyToFirstByteNanos: UInt64) {
        responded(
            statusCode: statusCode, grpcStatus: grpcStatus, latencyToFirstByteNanos: latencyToFirstByteNanos,
            failed: false)
    }

    /// Like ``responded(statusCode:grpcStatus:latencyToFirstByteNanos:)``; `failed` forces `failure` for a
    /// response whose head looked fine but whose stream then broke (reset, truncated body). `error` names why
    /// there is no (complete) response; with `statusCode` 0 (no response head at all) the series has no
    /// `status_code` label, only `error`, as Linkerd reports it.
    public func responded(
        statusCode: Int, grpcStatus: Int?, latencyToFirstByteNanos: UInt64, failed: Bool,
        error: ResponseError? = nil
    ) {
        let key = ResponseClass.key(statusCode: statusCode, grpcStatus: grpcStatus, failed: failed, error: error)
        let bucket = Self.bucketIndex(latencyToFirstByteNanos)
        if let base = claimSlot(key) {
            counters.add(latencyToFirstByteNanos, at: base + Self.sumOffset)
            counters.add(1, at: base + Self.bucketsOffset + bucket)
            return
        }
        let block = overflow.withLockedValue { table -> AtomicCounterBlock in
            if let block = table[key] { return block }
            let block = AtomicCounterBlock(count: Self.slotStride)
            _ = block.compareExchange(at: Self.keyOffset, expected: 0, desired: key)
            table[key] = block
            return block
        }
        block.add(latencyToFirstByteNanos, at: Self.sumOffset)
        block.add(1, at: Self.bucketsOffset + bucket)
    }

    /// The base index of the slot for `key`, claiming a free one; nil when every slot holds another class.
    @inline(__always)
    private func claimSlot(_ key: UInt64) -> Int? {
        var base = Self.firstSlotIndex
        for _ in 0..<Self.slotCount {
            var current = counters.loadAcquiring(base + Self.keyOffset)
            if current == 0 {
                current = counters.compareExchange(at: base + Self.keyOffset, expected: 0, desired: key)
            }
            if current == key { return base }
            base += Self.slotStride
        }
        return nil
    }

    @inline(__always)
    static func bucketIndex(_ nanos: UInt64) -> Int {
        var index = 0
        for bound in bucketBoundsNanos {
            if nanos <= bound { return index }
            index += 1
        }
        return index
    }

    /// A consistent-enough copy for rendering (each counter read once; concurrent updates land in the next scrape).
    struct Snapshot {
        struct Response {
            var responseClass: ResponseClass
            var sumNanos: UInt64
            /// Per-bucket counts, not cumulative; the last is `+Inf`.
            var buckets: [UInt64]
            var count: UInt64 { buckets.reduce(0, &+) }
        }
        var requests: UInt64
        var responses: [Response]
    }

    func snapshot() -> Snapshot {
        var responses: [Snapshot.Response] = []
        func read(_ block: AtomicCounterBlock, base: Int) {
            let key = block.loadAcquiring(base + Self.keyOffset)
            guard key != 0 else { return }
            var buckets: [UInt64] = []
            buckets.reserveCapacity(Self.bucketCount)
            for bucket in 0..<Self.bucketCount { buckets.append(block.load(base + Self.bucketsOffset + bucket)) }
            responses.append(
                Snapshot.Response(
                    responseClass: ResponseClass(key: key), sumNanos: block.load(base + Self.sumOffset),
                    buckets: buckets))
        }
        for slot in 0..<Self.slotCount { read(counters, base: Self.firstSlotIndex + slot * Self.slotStride) }
        for block in overflow.withLockedValue({ Array($0.values) }) { read(block, base: 0) }
        return Snapshot(requests: counters.load(Self.requestsIndex), responses: responses)
    }

    /// A number that changes whenever anything is counted: what idle expiry compares between sweeps.
    func activity() -> UInt64 {
        var total = counters.load(Self.requestsIndex)
        for slot in 0..<Self.slotCount {
            let base = Self.firstSlotIndex + slot * Self.slotStride
            for bucket in 0..<Self.bucketCount { total &+= counters.load(base + Self.bucketsOffset + bucket) }
        }
        for block in overflow.withLockedValue({ Array($0.values) }) {
            for bucket in 0..<Self.bucketCount { total &+= block.load(Self.bucketsOffset + bucket) }
        }
        return total
    }
}

/// Why an exchange ended without a (complete) response: Linkerd's `error` label of `response_total`, which
/// replaces `status_code` when no response head came at all and is added to it when the stream broke after one.
public enum ResponseError: UInt64, Sendable, CaseIterable {
    /// A route timeout (request, response, idle, per attempt) expired.
    case timeout = 1
    /// No connection to the endpoint (refused, connect timeout, TLS handshake).
    case connect
    /// The upstream connection or stream was reset or closed before the response ended.
    case reset
    /// The client went away (closed its connection, reset its stream) before the response ended.
    case cancel

    public var label: String {
        switch self {
        case .timeout: "timeout"
        case .connect: "connect"
        case .reset: "reset"
        case .cancel: "cancel"
        }
    }

    /// The label for an exchange the proxy gave up on for `reason`.
    init(_ reason: ProxyError.Reason) {
        switch reason {
        case .requestTimeout: self = .timeout
        case .connectRefused, .connectTimeout, .tlsFailed, .noEndpoints: self = .connect
        case .upstreamReset: self = .reset
        case .unauthorized, .noTargetPort, .badTarget, .unsupportedRoute: self = .cancel
        }
    }
}

/// `status_code`, `grpc_status_code`, `error` and `classification` of a response, packed into one non-zero
/// `UInt64` so a slot can be claimed with a single compare-and-swap.
struct ResponseClass: Hashable {
    var statusCode: Int
    var grpcStatus: Int?
    var failure: Bool
    var error: ResponseError?

    private static let present: UInt64 = 1 << 40
    private static let failedBit: UInt64 = 1 << 41

    static func key(statusCode: Int, grpcStatus: Int?, failed: Bool, error: ResponseError? = nil) -> UInt64 {
        let status = UInt64(min(max(statusCode, 0), 999))
        let grpc = grpcStatus.map { UInt64(min(max($0, 0), 0xFFFE)) + 1 } ?? 0
        let failure = failed || error != nil || (500...599).contains(status) || (grpc > 1)
        return present | (failure ? failedBit : 0) | ((error?.rawValue ?? 0) << 32) | (status << 16) | grpc
    }

    init(key: UInt64) {
        statusCode = Int((key >> 16) & 0xFFFF)
        let grpc = key & 0xFFFF
        grpcStatus = grpc == 0 ? nil : Int(grpc - 1)
        failure = key & Self.failedBit != 0
        error = ResponseError(rawValue: (key >> 32) & 0xFF)
    }

    /// The labels of `response_total` after the series' own: `classification`, `error` (no or a broken
    /// response), `grpc_status_code` (gRPC only), and `status_code` unless no response head came (Linkerd omits
    /// it then rather than inventing a status). Latency histograms take the labels after `classification`.
    func appendLabels(to text: inout String, classification: Bool) {
        if classification {
            text += failure ? ",classification=\"failure\"" : ",classification=\"success\""
        }
        if let error { text += ",error=\"\(error.label)\"" }
        if classification, let grpcStatus { text += ",grpc_status_code=\"\(grpcStatus)\"" }
        if statusCode != 0 { text += ",status_code=\"\(statusCode)\"" }
    }

    /// Render order: by status, gRPC status, error, then successes first.
    var sortKey: (Int, Int, Int, Int) {
        (statusCode, grpcStatus ?? -1, Int(error?.rawValue ?? 0), failure ? 1 : 0)
    }
}

/// The counters of one TCP series: `tcp_open_total`, `tcp_open_connections`, `tcp_read_bytes_total`,
/// `tcp_write_bytes_total` and `tcp_close_total`. Cache it per connection; every method is one atomic add.
public final class TCPTrafficMetrics: Sendable {
    static let openedIndex = 0
    static let closedSuccessIndex = 1
    static let closedFailureIndex = 2
    static let readIndex = 3
    static let writeIndex = 4

    let labels: TCPTrafficLabels
    let labelText: String
    private let counters = AtomicCounterBlock(count: 5)

    init(labels: TCPTrafficLabels) {
        self.labels = labels
        self.labelText = LabelText.tcp(labels)
    }

    @inline(__always)
    public func opened() {
        counters.add(1, at: Self.openedIndex)
    }

    /// `error` nil: the connection ended cleanly (`classification="success"`); otherwise it failed. The text is
    /// not a label (it would make cardinality unbounded); log it where it happens.
    @inline(__always)
    public func closed(error: String?) {
        counters.add(1, at: error == nil ? Self.closedSuccessIndex : Self.closedFailureIndex)
    }

    /// Bytes read from this connection's peer.
    @inline(__always)
    public func read(_ bytes: Int) {
        counters.add(UInt64(max(bytes, 0)), at: Self.readIndex)
    }

    /// Bytes written to this connection's peer.
    @inline(__always)
    public func wrote(_ bytes: Int) {
        counters.add(UInt64(max(bytes, 0)), at: Self.writeIndex)
    }

    struct Snapshot {
        var opened: UInt64
        var closedSuccess: UInt64
        var closedFailure: UInt64
        var readBytes: UInt64
        var writeBytes: UInt64
        /// Opened and not yet closed; a close reported without its open never drives the gauge negative.
        var open: UInt64 {
            let closed = closedSuccess &+ closedFailure
            return opened > closed ? opened - closed : 0
        }
    }

    func snapshot() -> Snapshot {
        Snapshot(
            opened: counters.load(Self.openedIndex), closedSuccess: counters.load(Self.closedSuccessIndex),
            closedFailure: counters.load(Self.closedFailureIndex), readBytes: counters.load(Self.readIndex),
            writeBytes: counters.load(Self.writeIndex))
    }

    func activity() -> UInt64 {
        let snapshot = snapshot()
        return snapshot.opened &+ snapshot.closedSuccess &+ snapshot.closedFailure &+ snapshot.readBytes
            &+ snapshot.writeBytes
    }
}
