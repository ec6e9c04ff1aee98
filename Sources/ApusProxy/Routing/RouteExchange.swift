import ApusCore
import NIOCore
import NIOHTTP1

/// The routing state of one exchange in an ``HTTPForwardHandler``: the selected plan, its metrics, the timers
/// and what a retry needs (the request head, the resolved destination and the replay buffer). Lives on the
/// handler's event loop; ``reset()`` between exchanges cancels whatever is still scheduled.
struct RouteExchange {
    /// Budgeted (ServiceProfile) retries stop here even when the budget would allow more: a request that failed
    /// this often is failing for a reason another try will not fix.
    static let maximumBudgetedAttempts = 4

    /// True once a route was selected for the current exchange (outbound with a profile).
    private(set) var isStarted = false
    private(set) var plan = RoutePlan.unrouted
    private(set) var metrics: RouteMetrics?
    /// Attempts sent so far (the first one included).
    var attempts = 0
    var replay = ReplayBuffer()
    /// Bumped by ``reset()`` so timers of an earlier exchange recognise they are stale.
    private(set) var generation: UInt64 = 0
    /// What another attempt is built from.
    private(set) var head: HTTPRequestHead?
    private(set) var authority = ""
    private(set) var resolved: ResolvedDestination?
    var requestTimer: Scheduled<Void>?
    var responseTimer: Scheduled<Void>?
    var attemptTimer: Scheduled<Void>?
    var backoffTimer: Scheduled<Void>?
    /// `timeout.linkerd.io/idle`: one timer per exchange, re-armed only when it fires before the stream was idle
    /// long enough (parts only record ``lastActivity``; nothing is scheduled or cancelled per body chunk).
    var idleTimer: Scheduled<Void>?
    /// Monotonic nanoseconds of the last part that moved either way (kept only when the route has an idle
    /// timeout).
    private(set) var lastActivity: UInt64 = 0
    private var tracksActivity: Bool { plan.idleTimeout != nil }
    /// The request is gRPC on a route that retries `grpc-status` codes: a 200 response is held until its
    /// trailers tell whether to retry it.
    var holdsGRPCResponses = false
    /// The response of the current attempt, held (not yet sent to the client) until its trailers arrive.
    var held: HeldResponse?
    /// When the head of a gRPC response that streams (not held) arrived: the attempt is counted at its end,
    /// with the `grpc-status` of its trailers.
    var trailersPendingSince: UInt64?
    /// When the current attempt was sent (monotonic nanoseconds), for its latency in the actual metrics.
    var attemptStartedAt: UInt64 = 0
    /// An attempt was sent and its outcome is not counted yet.
    var attemptInFlight = false
    /// How the last counted attempt ended, for the transport metrics of an attempt that is retried.
    var lastAttemptStatus = 0
    var lastAttemptGRPCStatus: Int?
    var lastAttemptError: ResponseError?

    mutating func start(
        _ plan: RoutePlan, metrics: RouteMetrics, head: HTTPRequestHead, authority: String,
        resolved: ResolvedDestination
    ) {
        isStarted = true
        self.plan = plan
        self.metrics = metrics
        self.head = head
        self.authority = authority
        self.resolved = resolved
        replay = ReplayBuffer()
        if plan.mayRetry { replay.enable() }
        if tracksActivity { lastActivity = NIODeadline.now().uptimeNanoseconds }
    }

    /// A part moved (either way): the idle timer measures from the latest one.
    @inline(__always)
    mutating func touch() {
        if tracksActivity { lastActivity = NIODeadline.now().uptimeNanoseconds }
    }

    /// The head with the route's request header edits (what every attempt sends).
    mutating func setHead(_ head: HTTPRequestHead) {
        self.head = head
    }

    mutating func cancelTimers() {
        // One by one rather than through an array literal: this runs twice per exchange and must not allocate.
        requestTimer?.cancel()
        responseTimer?.cancel()
        attemptTimer?.cancel()
        backoffTimer?.cancel()
        idleTimer?.cancel()
        requestTimer = nil
        responseTimer = nil
        attemptTimer = nil
        backoffTimer = nil
        idleTimer = nil
    }

    mutating func cancelAttemptTimer() {
        attemptTimer?.cancel()
        attemptTimer = nil
    }

    mutating func reset() {
        cancelTimers()
        generation &+= 1
        isStarted = false
        plan = .unrouted
        metrics = nil
        attempts = 0
        attemptInFlight = false
        lastAttemptError = nil
        holdsGRPCResponses = false
        held = nil
        trailersPendingSince = nil
        replay = ReplayBuffer()
        head = nil
        resolved = nil
        authority = ""
    }

    /// Exponential backoff with full jitter for count-limited (HTTPRoute) retries: 25 ms doubling, capped at
    /// 250 ms, so a burst of failures does not come back as a synchronized burst of retries.
    static func backoff(afterAttempt attempt: Int) -> TimeAmount {
        let ceiling = min(Int64(25_000_000) << Int64(min(max(attempt - 1, 0), 4)), 250_000_000)
        return .nanoseconds(Int64.random(in: ceiling / 2...ceiling))
    }
}

/// The request parts of an exchange kept for replay: bodies up to ``capacity`` bytes (the first attempt streams
/// them as they arrive; this only holds references to the same buffers). Past the capacity the copy is dropped
/// and the request can no longer be retried.
struct ReplayBuffer {
    static let capacity = 64 * 1024

    private(set) var parts: [HTTPServerRequestPart] = []
    private(set) var bytes = 0
    private(set) var isEnabled = false
    private(set) var overflowed = false

    mutating func enable() {
        isEnabled = true
    }

    mutating func append(_ part: HTTPServerRequestPart) {
        guard isEnabled, !overflowed else { return }
        switch part {
        case .head:
            return
        case .body(let body):
            bytes += body.readableBytes
            if bytes > Self.capacity {
                overflowed = true
                parts = []
                return
            }
        case .end:
            break
        }
        parts.append(part)
    }
}

/// A gRPC response held back from the client until its trailers (`grpc-status`) decide whether the attempt is
/// retried. Bounded like the request replay buffer: a body over ``ReplayBuffer/capacity`` is released and
/// streamed, and the attempt can then no longer be retried.
struct HeldResponse {
    var head: HTTPResponseHead
    /// When the head arrived (monotonic nanoseconds): the attempt's time to first byte.
    var receivedAt: UInt64
    private(set) var bodies: [ByteBuffer] = []
    private(set) var bytes = 0

    init(head: HTTPResponseHead, receivedAt: UInt64) {
        self.head = head
        self.receivedAt = receivedAt
    }

    /// Keeps `body`; false (and nothing kept) when it would take the held bytes over the capacity.
    mutating func append(_ body: ByteBuffer) -> Bool {
        guard bytes + body.readableBytes <= ReplayBuffer.capacity else { return false }
        bytes += body.readableBytes
        bodies.append(body)
        return true
    }
}
