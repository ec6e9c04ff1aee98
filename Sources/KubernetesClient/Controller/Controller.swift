import ApusCore
import Logging
import Metrics

/// What a reconcile asks of the queue.
public enum ReconcileResult: Sendable, Hashable {
    /// The object is in its desired state; forget its backoff.
    case done
    /// Look again after a delay (e.g. a certificate to renew), without counting it as a failure.
    case requeue(after: Duration)
}

/// Reconciles one object towards its desired state, level-based: it reads current state (from stores) by key
/// rather than trusting the event that triggered it.
///
/// ```swift
/// struct LabelEnforcer: Reconciler {
///     let client: KubernetesClient
///     let pods: Store<Pod>
///     func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
///         guard let pod = pods.get(key) else { return .done }  // deleted: nothing to do
///         …
///         return .done
///     }
/// }
/// ```
public protocol Reconciler: Sendable {
    /// Thrown errors requeue the key with exponential backoff, except ``TerminalError`` which drops it.
    func reconcile(_ key: ObjectKey) async throws -> ReconcileResult
}

/// An error retrying cannot fix (invalid user input); the key is dropped until its object changes again.
public struct TerminalError: Error, Sendable, CustomStringConvertible {
    public let underlying: any Error & Sendable

    public init(_ underlying: any Error & Sendable) { self.underlying = underlying }

    public var description: String { "TerminalError(\(underlying))" }
}

/// What the queue does with a key after a reconcile; the one mapping from results to queue operations.
public enum QueueAction: Sendable, Hashable {
    /// Success: reset the key's backoff.
    case forget
    /// Reset the backoff and look again after the delay.
    case forgetAndRequeue(after: Duration)
    /// Failure: requeue with the key's next backoff delay.
    case requeueRateLimited
    /// Terminal failure: reset the backoff and do not requeue.
    case drop

    /// Maps a reconcile outcome to a queue action (controller-runtime's `reconcileHandler`).
    public static func forResult(_ result: Result<ReconcileResult, any Error>) -> QueueAction {
        switch result {
        case .success(.done): return .forget
        case .success(.requeue(let delay)): return .forgetAndRequeue(after: delay)
        case .failure(let error) where error is TerminalError: return .drop
        case .failure: return .requeueRateLimited
        }
    }

    /// Applies this action for `key` to `queue`.
    public func apply<Key: Hashable & Sendable>(to queue: WorkQueue<Key>, key: Key) async {
        switch self {
        case .forget, .drop:
            await queue.forget(key)
        case .forgetAndRequeue(let delay):
            await queue.forget(key)
            await queue.add(key, after: delay)
        case .requeueRateLimited:
            await queue.addRateLimited(key)
        }
    }
}

/// Runs a ``Reconciler`` over a ``WorkQueue`` with N workers. One key is never reconciled twice at once.
///
/// ```swift
/// let controller = Controller(name: "labels", reconciler: LabelEnforcer(client: client, pods: informer.store))
/// try controller.watch(informer)                 // enqueue changed objects
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { await informer.run() }
///     group.addTask { await informer.waitUntilSynced(); await controller.run() }
/// }
/// ```
public final class Controller<Rec: Reconciler>: Sendable {
    public let name: String
    public let reconciler: Rec
    public let queue: WorkQueue<ObjectKey>
    public let workers: Int
    private let logger: Logger
    private let metrics: ReconcileMetrics

    /// - Parameters:
    ///   - queue: defaults to a queue named after the controller (its metrics carry `name="<name>"`).
    ///   - metricsFactory: where reconcile and queue metrics go; the process's bootstrapped backend unless a test
    ///     injects one. See ``ReconcileMetrics`` and ``WorkQueueMetrics`` for the names.
    public init(
        name: String, reconciler: Rec, workers: Int = 2, queue: WorkQueue<ObjectKey>? = nil,
        logger: Logger = Logger(label: "apus.controller"), metricsFactory: (any MetricsFactory)? = nil
    ) {
        let factory = metricsFactory ?? MetricsSystem.factory
        self.name = name
        self.reconciler = reconciler
        self.workers = max(1, workers)
        self.queue = queue ?? WorkQueue(name: name, metricsFactory: factory)
        self.metrics = ReconcileMetrics(controller: name, factory: factory)
        var logger = logger
        logger[metadataKey: "controller"] = "\(name)"
        self.logger = logger
    }

    /// Enqueues the keys `map` returns for every change the informer delivers (default: the object's own
    /// key). Call before the informer runs.
    public func watch<R: KubernetesResource>(
        _ informer: Informer<R>, map: @escaping @Sendable (R) -> [ObjectKey] = { [$0.objectKey] }
    ) throws {
        let queue = self.queue
        try informer.addHandler { event in
            for key in map(event.object) { await queue.add(key) }
            if case .updated(let old, let new) = event, old.objectKey != new.objectKey {
                for key in map(old) { await queue.add(key) }
            }
        }
    }

    public func enqueue(_ key: ObjectKey) async { await queue.add(key) }

    /// Runs the workers until the calling task is cancelled, then shuts the queue down.
    public func run() async {
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                for _ in 0..<workers {
                    group.addTask { await self.work() }
                }
            }
        } onCancel: {
            Task { await self.queue.shutDown() }
        }
        await queue.shutDown()
    }

    private func work() async {
        while let key = await queue.next() {
            let result: Result<ReconcileResult, any Error>
            let started = ContinuousClock.now
            do {
                result = .success(try await reconciler.reconcile(key))
            } catch {
                result = .failure(error)
            }
            let action = QueueAction.forResult(result)
            metrics.record(action, duration: started.duration(to: .now))
            switch (action, result) {
            case (.drop, .failure(let error)):
                logger.error("reconcile failed permanently", metadata: ["key": "\(key)", "error": "\(error)"])
            case (.requeueRateLimited, .failure(let error)):
                let attempt = await queue.retries(key) + 1
                logger.warning(
                    "reconcile failed; retrying",
                    metadata: ["key": "\(key)", "error": "\(error)", "attempt": "\(attempt)"])
            default:
                break
            }
            await action.apply(to: queue, key: key)
            await queue.done(key)
        }
    }
}
