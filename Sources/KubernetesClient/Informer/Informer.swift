import ApusCore
import Logging
import NIOConcurrencyHelpers

/// Why an informer call was refused.
public struct InformerError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        /// A handler or event stream was added after ``Informer/run()`` started; it would have missed the
        /// objects already delivered. Register everything before running.
        case alreadyRunning
    }

    public let code: Code
    public let message: String

    public static func == (lhs: InformerError, rhs: InformerError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
    public var description: String { "InformerError.\(code.rawValue): \(message)" }
    public static let alreadyRunning = InformerError(code: .alreadyRunning, message: "")
}

/// Keeps a ``Store`` in sync with the API server and tells handlers what changed.
///
/// ```
///  Watcher<R> ──WatcherEvent──► StoreWriter ──InformerEvent──► handlers (in order, one at a time)
///       ▲                           │                               └─► AsyncStream subscribers
///  list+watch, resume,           Store<R> (read-only, indexed) ◄── controllers read here
///  relist on 410                 resync timer ──► .updated(old: x, new: x) for every object
/// ```
///
/// Handlers run sequentially on the informer's own task, so for each key they see one consistent sequence:
/// an add before any update, nothing after a delete unless the object is re-added. A relist delivers only the
/// difference (adds, changed objects as updates, vanished objects as deletes). Slow handlers delay the
/// following events (watch events queue up meanwhile), so hand real work to a ``WorkQueue``.
///
/// An optional `transform` (client-go's `SetTransform`) rewrites every listed and watched object before it is
/// stored or delivered: the store, its indexers, handlers and event streams see **only transformed objects**,
/// and the full decoded object is freed right after. It keeps large caches small by dropping fields no
/// component reads; see ``Store/make(indexers:transform:)`` for what it must preserve.
///
/// ```swift
/// let informer = Informer(client: client, Pod.self, namespace: "apus", indexers: [.label("app")])
/// try informer.addHandler { event in await queue.add(event.object.objectKey) }
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { await informer.run() }
///     await informer.waitUntilSynced()
///     …
/// }
/// ```
public final class Informer<R: KubernetesResource>: Sendable {
    public typealias Handler = @Sendable (InformerEvent<R>) async -> Void

    private struct Registration {
        var handlers: [Handler] = []
        var streams: [AsyncStream<InformerEvent<R>>.Continuation] = []
        var running = false
    }

    private enum Input: Sendable {
        case watcher(WatcherEvent<R>)
        case resync
    }

    /// The cache this informer fills.
    public let store: Store<R>
    /// The informer's source; with a transform, it already yields transformed objects.
    public let watcher: Watcher<R>
    /// When set, every object is re-delivered as `.updated(old: x, new: x)` this often, so level-based
    /// controllers re-check state they may have missed (client-go's resync).
    public let resyncPeriod: Duration?
    private let writer: StoreWriter<R>
    private let registration = NIOLockedValueBox(Registration())
    private let logger: Logger

    public init(
        client: KubernetesClient, _ type: R.Type = R.self, namespace: String? = nil,
        configuration: WatcherConfiguration = WatcherConfiguration(), resyncPeriod: Duration? = nil,
        indexers: [Indexer<R>] = [], transform: (@Sendable (R) -> R)? = nil
    ) {
        // The watcher applies the transform as each list page arrives (see `Watcher.transform`), so the writer
        // must not apply it a second time.
        let (store, writer) = Store<R>.make(indexers: indexers)
        self.store = store
        self.writer = writer
        self.watcher = Watcher(
            client: client, namespace: namespace, configuration: configuration, transform: transform)
        self.resyncPeriod = resyncPeriod
        self.logger = client.logger
    }

    /// Registers a handler for every change. Must be called before ``run()``.
    /// - Throws: ``InformerError`` `.alreadyRunning` once the informer runs.
    public func addHandler(_ handler: @escaping Handler) throws {
        try registration.withLockedValue { registration in
            guard !registration.running else {
                throw InformerError(code: .alreadyRunning, message: "handlers must be added before run()")
            }
            registration.handlers.append(handler)
        }
    }

    /// Registers separate callbacks for adds, updates and deletes. Must be called before ``run()``.
    public func addHandler(
        onAdd: (@Sendable (R) async -> Void)? = nil, onUpdate: (@Sendable (R, R) async -> Void)? = nil,
        onDelete: (@Sendable (R) async -> Void)? = nil
    ) throws {
        try addHandler { event in
            switch event {
            case .added(let object): await onAdd?(object)
            case .updated(let old, let new): await onUpdate?(old, new)
            case .deleted(let object): await onDelete?(object)
            }
        }
    }

    /// The changes as an `AsyncStream`, finished when ``run()`` returns. Must be called before ``run()``.
    public func events(
        bufferingPolicy: AsyncStream<InformerEvent<R>>.Continuation.BufferingPolicy = .unbounded
    ) throws -> AsyncStream<InformerEvent<R>> {
        let (stream, continuation) = AsyncStream.makeStream(of: InformerEvent<R>.self, bufferingPolicy: bufferingPolicy)
        try registration.withLockedValue { registration in
            guard !registration.running else {
                throw InformerError(code: .alreadyRunning, message: "event streams must be created before run()")
            }
            registration.streams.append(continuation)
        }
        return stream
    }

    public var hasSynced: Bool { store.hasSynced }

    /// Returns once the first full list is in the store (its events may still be on their way to handlers).
    public func waitUntilSynced() async { await store.waitUntilSynced() }

    /// Lists, watches and delivers events until the calling task is cancelled. Run it once.
    public func run() async {
        let (handlers, streams) = registration.withLockedValue { registration in
            registration.running = true
            return (registration.handlers, registration.streams)
        }
        defer { for stream in streams { stream.finish() } }
        let (inputs, input) = AsyncStream.makeStream(of: Input.self)
        let watcher = self.watcher
        let resyncPeriod = self.resyncPeriod
        await withDiscardingTaskGroup { group in
            group.addTask {
                do {
                    for try await event in watcher { input.yield(.watcher(event)) }
                } catch {
                    // The watcher only ends by cancellation.
                }
                input.finish()
            }
            if let resyncPeriod {
                group.addTask {
                    while true {
                        do { try await Task.sleep(for: resyncPeriod) } catch { return }
                        input.yield(.resync)
                    }
                }
            }
            for await next in inputs {
                let changes: [InformerEvent<R>]
                switch next {
                case .watcher(let event):
                    changes = writer.apply(event)
                case .resync:
                    changes = store.list().map { .updated(old: $0, new: $0) }
                }
                for change in changes {
                    for handler in handlers { await handler(change) }
                    for stream in streams { stream.yield(change) }
                }
                if Task.isCancelled { break }
            }
            group.cancelAll()
        }
        logger.debug("informer stopped", metadata: ["kind": "\(R.resourceType.kind)"])
    }
}
