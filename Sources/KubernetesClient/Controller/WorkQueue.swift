import DequeModule
import Metrics

/// Per-key exponential retry delays: `base × 2^(failures-1)`, capped at `maximum` (client-go's
/// `ItemExponentialFailureRateLimiter`, defaults 5 ms … 1000 s).
///
/// ```swift
/// var limiter = ExponentialFailureRateLimiter<String>()
/// limiter.when("a")  // 5 ms
/// limiter.when("a")  // 10 ms
/// limiter.forget("a")
/// limiter.when("a")  // 5 ms again
/// ```
public struct ExponentialFailureRateLimiter<Key: Hashable & Sendable>: Sendable {
    public var base: Duration
    public var maximum: Duration
    private var failures: [Key: Int] = [:]

    public init(base: Duration = .milliseconds(5), maximum: Duration = .seconds(1000)) {
        self.base = base
        self.maximum = maximum
    }

    /// Records a failure of `key` and returns how long to wait before retrying it.
    public mutating func when(_ key: Key) -> Duration {
        let exponent = failures[key, default: 0]
        failures[key] = exponent + 1
        return ExponentialBackoff(initial: base, maximum: maximum, multiplier: 2, jitter: 0)
            .baseDelay(attempt: exponent)
    }

    /// Clears the failure count of `key` (after it succeeded).
    public mutating func forget(_ key: Key) { failures[key] = nil }

    /// How many failures of `key` were recorded since it was last forgotten.
    public func retries(_ key: Key) -> Int { failures[key, default: 0] }
}

/// A deduplicating work queue of keys for level-based controllers (client-go's rate-limited workqueue).
///
/// - A key added several times before a worker takes it is processed once.
/// - A key being processed is never handed to a second worker: re-adding it marks it dirty, and it is queued
///   again when the first worker calls ``done(_:)``.
/// - ``addRateLimited(_:)`` re-adds after a per-key exponential delay; ``forget(_:)`` resets it.
/// - After ``shutDown()`` adds are ignored and ``next()`` returns `nil` to every worker.
/// - It reports its depth, adds, retries and how long keys wait (``WorkQueueMetrics``, labelled with `name`).
///
/// ```swift
/// let queue = WorkQueue<ObjectKey>()
/// await queue.add(key)
/// while let key = await queue.next() {
///     defer { Task { await queue.done(key) } }
///     …
/// }
/// ```
public actor WorkQueue<Key: Hashable & Sendable> {
    /// Queued keys with the time they were queued (for the queue-latency metric).
    private var queue = Deque<(key: Key, queuedAt: ContinuousClock.Instant)>()
    /// Keys that need processing: queued ones, and processing ones re-added meanwhile.
    private var dirty = Set<Key>()
    private var processing = Set<Key>()
    private var delayed: [Key: (deadline: ContinuousClock.Instant, task: Task<Void, Never>)] = [:]
    private var waiters = Deque<(id: Int, continuation: CheckedContinuation<Key?, Never>)>()
    private var nextWaiterID = 0
    private var rateLimiter: ExponentialFailureRateLimiter<Key>
    private var shuttingDown = false
    private let metrics: WorkQueueMetrics

    /// - Parameters:
    ///   - name: the `name` label of the queue's metrics (a controller passes its own name).
    ///   - metricsFactory: where the metrics go; the process's bootstrapped backend unless a test injects one.
    public init(
        name: String = "default", rateLimiter: ExponentialFailureRateLimiter<Key> = ExponentialFailureRateLimiter(),
        metricsFactory: (any MetricsFactory)? = nil
    ) {
        self.rateLimiter = rateLimiter
        self.metrics = WorkQueueMetrics(name: name, factory: metricsFactory ?? MetricsSystem.factory)
    }

    /// Queues `key` unless it is already waiting.
    public func add(_ key: Key) {
        guard !shuttingDown, dirty.insert(key).inserted else { return }
        guard !processing.contains(key) else { return }
        enqueue(key)
    }

    /// Queues `key` after `delay`. If it is already scheduled, the earlier time wins.
    public func add(_ key: Key, after delay: Duration) {
        guard !shuttingDown else { return }
        guard delay > .zero else {
            add(key)
            return
        }
        let deadline = ContinuousClock.now.advanced(by: delay)
        if let existing = delayed[key], existing.deadline <= deadline { return }
        delayed[key]?.task.cancel()
        let task = Task { [weak self] in
            do { try await Task.sleep(until: deadline, clock: .continuous) } catch { return }
            await self?.fireDelayed(key, deadline: deadline)
        }
        delayed[key] = (deadline, task)
    }

    /// Queues `key` after its next exponential backoff delay.
    public func addRateLimited(_ key: Key) {
        guard !shuttingDown else { return }
        metrics.retries.increment()
        add(key, after: rateLimiter.when(key))
    }

    /// Resets the backoff of `key`; call after it was processed successfully.
    public func forget(_ key: Key) { rateLimiter.forget(key) }

    /// Failures recorded for `key` since the last ``forget(_:)``.
    public func retries(_ key: Key) -> Int { rateLimiter.retries(key) }

    /// The next key to process, waiting until one is queued. `nil` after ``shutDown()`` or when the calling
    /// task is cancelled. Every key returned must be passed to ``done(_:)``.
    public func next() async -> Key? {
        if let key = take() { return key }
        if shuttingDown { return nil }
        nextWaiterID += 1
        let id = nextWaiterID
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Key?, Never>) in
                if Task.isCancelled || shuttingDown {
                    continuation.resume(returning: nil)
                } else if let key = take() {
                    continuation.resume(returning: key)
                } else {
                    waiters.append((id, continuation))
                }
            }
        } onCancel: {
            Task { await self.cancelWaiter(id) }
        }
    }

    /// The next key if one is queued, without waiting.
    public func tryNext() -> Key? { shuttingDown ? nil : take() }

    /// Marks `key` as processed; if it was re-added meanwhile it is queued again.
    public func done(_ key: Key) {
        guard processing.remove(key) != nil else { return }
        if dirty.contains(key), !shuttingDown { enqueue(key) }
    }

    /// Stops the queue: pending and delayed keys are dropped, waiting workers get `nil`.
    public func shutDown() {
        shuttingDown = true
        for (_, entry) in delayed { entry.task.cancel() }
        delayed.removeAll()
        queue.removeAll()
        metrics.depth.record(0)
        dirty.removeAll()
        while let waiter = waiters.popFirst() { waiter.continuation.resume(returning: nil) }
    }

    public var isShuttingDown: Bool { shuttingDown }
    /// Keys waiting to be handed out.
    public var count: Int { queue.count }
    /// Keys handed out and not yet done.
    public var processingCount: Int { processing.count }
    /// Keys scheduled with a delay that has not passed.
    public var delayedCount: Int { delayed.count }

    private func enqueue(_ key: Key) {
        metrics.adds.increment()
        if let waiter = waiters.popFirst() {
            dirty.remove(key)
            processing.insert(key)
            metrics.queueDuration.recordNanoseconds(0)
            waiter.continuation.resume(returning: key)
        } else {
            queue.append((key, .now))
            metrics.depth.record(queue.count)
        }
    }

    private func take() -> Key? {
        guard let (key, queuedAt) = queue.popFirst() else { return nil }
        dirty.remove(key)
        processing.insert(key)
        metrics.depth.record(queue.count)
        metrics.queueDuration.recordNanoseconds(queuedAt.duration(to: .now).metricNanoseconds)
        return key
    }

    private func fireDelayed(_ key: Key, deadline: ContinuousClock.Instant) {
        guard let entry = delayed[key], entry.deadline == deadline else { return }
        delayed[key] = nil
        add(key)
    }

    private func cancelWaiter(_ id: Int) {
        guard let index = waiters.firstIndex(where: { $0.id == id }) else { return }
        waiters.remove(at: index).continuation.resume(returning: nil)
    }
}
