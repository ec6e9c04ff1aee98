import ApusCore
import Logging
import Metrics

/// What a ``Watcher`` reports. A (re)list is bracketed by ``initStart`` and ``initDone`` so a store can
/// replace its contents atomically and find objects deleted while the watch was down.
public enum WatcherEvent<R: Sendable>: Sendable {
    /// A list begins; the objects that follow as ``initApply(_:)`` are the complete state.
    case initStart
    /// One object of the list.
    case initApply(R)
    /// The list is complete; anything not seen since ``initStart`` no longer exists.
    case initDone
    /// An object was added or changed after the list.
    case apply(R)
    /// An object was deleted after the list (carries its last state).
    case delete(R)
}

/// Settings of a ``Watcher``.
public struct WatcherConfiguration: Sendable {
    public var labelSelector: String?
    public var fieldSelector: String?
    /// List page size (`limit`); large clusters are listed in pages so no response is huge.
    public var pageSize: Int
    /// How long the server keeps one watch open before we reconnect from the last resourceVersion.
    public var watchTimeoutSeconds: Int
    /// Delay policy between failed attempts.
    public var backoff: ExponentialBackoff
    /// Receives failures the watcher recovers from (per-object decode errors with their field path, failed
    /// lists and watches, 410 relists). Defaults to logging.
    public var onError: (@Sendable (KubernetesError) -> Void)?
    /// Where `apus_controller_watch_restarts_total` and `apus_controller_watch_relists_total` (label `kind`) go;
    /// nil means the process's bootstrapped backend (`MetricsSystem.factory`) at the time iteration starts.
    public var metricsFactory: (any MetricsFactory)?

    public init(
        labelSelector: String? = nil, fieldSelector: String? = nil, pageSize: Int = 500,
        watchTimeoutSeconds: Int = 290, backoff: ExponentialBackoff = ExponentialBackoff(),
        onError: (@Sendable (KubernetesError) -> Void)? = nil, metricsFactory: (any MetricsFactory)? = nil
    ) {
        self.metricsFactory = metricsFactory
        self.labelSelector = labelSelector
        self.fieldSelector = fieldSelector
        self.pageSize = pageSize
        self.watchTimeoutSeconds = watchTimeoutSeconds
        self.backoff = backoff
        self.onError = onError
    }
}

/// A never-ending, self-healing view of one resource type, in the shape of kube-rs' `watcher`.
///
/// It lists (paginated), then watches from the list's resourceVersion. When the watch ends it resumes from the
/// **last resourceVersion seen**, bookmarks included; when the server says that version is gone (410 /
/// `Expired`) it relists and emits ``WatcherEvent/initStart`` … ``WatcherEvent/initDone`` again. Failures are
/// retried with jittered exponential backoff (a 429's `Retry-After` is honoured) and reported to
/// ``WatcherConfiguration/onError``; objects that fail to decode are reported and skipped. Iteration ends
/// (returns `nil`) only when the consuming task is cancelled.
///
/// ```swift
/// for try await event in Watcher(client: client, ConfigMap.self, namespace: "apus") {
///     switch event {
///     case .initStart: staged = [:]
///     case .initApply(let cm): staged[cm.objectKey] = cm
///     case .initDone: current = staged
///     case .apply(let cm): current[cm.objectKey] = cm
///     case .delete(let cm): current[cm.objectKey] = nil
///     }
/// }
/// ```
public struct Watcher<R: KubernetesResource>: AsyncSequence, Sendable {
    public typealias Element = WatcherEvent<R>

    public let client: KubernetesClient
    /// `nil` watches all namespaces.
    public let namespace: String?
    public let configuration: WatcherConfiguration
    /// Set by an ``Informer`` with a transform: applied to each list page right after it is decoded and to each
    /// watch event, so the untransformed objects of a large list are never all alive at once (they would
    /// fragment the heap the cache is then built in).
    let transform: (@Sendable (R) -> R)?

    public init(
        client: KubernetesClient, _ type: R.Type = R.self, namespace: String? = nil,
        configuration: WatcherConfiguration = WatcherConfiguration()
    ) {
        self.init(client: client, namespace: namespace, configuration: configuration, transform: nil)
    }

    init(
        client: KubernetesClient, namespace: String?, configuration: WatcherConfiguration,
        transform: (@Sendable (R) -> R)?
    ) {
        self.client = client
        self.namespace = namespace
        self.configuration = configuration
        self.transform = transform
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(client: client, namespace: namespace, configuration: configuration, transform: transform)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        private enum State {
            /// Next: emit initStart and list the first page.
            case relist
            /// Listing pages; `continueToken` is nil for the first page.
            case listing(continueToken: String?)
            /// Emitting listed objects, then initDone, then watching from `resourceVersion`.
            case delivering(resourceVersion: String)
            case startWatch(resourceVersion: String)
            case watching(
                WatchStream<R>.AsyncIterator, resourceVersion: String, openedAt: ContinuousClock.Instant, events: Int)
        }

        private let client: KubernetesClient
        private let namespace: String?
        private let configuration: WatcherConfiguration
        private let transform: (@Sendable (R) -> R)?
        private let reportError: @Sendable (KubernetesError) -> Void
        private var state = State.relist
        private var backoff: ExponentialBackoff
        private var listed: [R] = []
        private var listedIndex = 0
        private let metrics: WatchMetrics
        /// Whether a list was started before; every later one is a relist.
        private var hasListed = false

        init(
            client: KubernetesClient, namespace: String?, configuration: WatcherConfiguration,
            transform: (@Sendable (R) -> R)?
        ) {
            self.client = client
            self.namespace = namespace
            self.configuration = configuration
            self.transform = transform
            self.backoff = configuration.backoff
            let logger = client.logger
            let kind = R.resourceType.kind
            self.metrics = WatchMetrics(kind: kind, factory: configuration.metricsFactory ?? MetricsSystem.factory)
            self.reportError =
                configuration.onError ?? { error in
                    logger.warning("watcher error", metadata: ["kind": "\(kind)", "error": "\(error)"])
                }
        }

        private var listOptions: ListOptions {
            ListOptions(labelSelector: configuration.labelSelector, fieldSelector: configuration.fieldSelector)
        }

        public mutating func next() async throws -> WatcherEvent<R>? {
            while !Task.isCancelled {
                switch state {
                case .relist:
                    if hasListed { metrics.relists.increment() }
                    hasListed = true
                    listed.removeAll(keepingCapacity: true)
                    listedIndex = 0
                    state = .listing(continueToken: nil)
                    return .initStart

                case .listing(let continueToken):
                    var options = listOptions
                    options.limit = configuration.pageSize > 0 ? configuration.pageSize : nil
                    options.continue = continueToken
                    do {
                        let page = try await client.list(
                            R.self, namespace: namespace, options: options, onDecodingError: reportError)
                        backoff.reset()
                        if let transform {
                            listed += page.items.map(transform)
                        } else {
                            listed += page.items
                        }
                        if let next = page.metadata.continue, !next.isEmpty {
                            state = .listing(continueToken: next)
                        } else {
                            state = .delivering(resourceVersion: page.metadata.resourceVersion ?? "")
                        }
                    } catch let error as KubernetesError {
                        reportError(error)
                        if error.code == .gone, continueToken != nil {
                            // The continue token expired mid-list: start the list over (still inside the same
                            // initStart, so no second initStart is emitted).
                            listed.removeAll(keepingCapacity: true)
                            listedIndex = 0
                            state = .listing(continueToken: nil)
                        }
                        guard await pause(after: error) else { return nil }
                    } catch {
                        return nil  // cancelled
                    }

                case .delivering(let resourceVersion):
                    if listedIndex < listed.count {
                        let object = listed[listedIndex]
                        listedIndex += 1
                        return .initApply(object)
                    }
                    listed.removeAll(keepingCapacity: false)
                    listedIndex = 0
                    state = .startWatch(resourceVersion: resourceVersion)
                    return .initDone

                case .startWatch(let resourceVersion):
                    var options = listOptions
                    options.resourceVersion = resourceVersion.isEmpty ? nil : resourceVersion
                    options.timeoutSeconds = configuration.watchTimeoutSeconds
                    do {
                        let stream = try await client.watch(
                            R.self, namespace: namespace, options: options, onDecodingError: reportError)
                        state = .watching(
                            stream.makeAsyncIterator(), resourceVersion: resourceVersion, openedAt: .now, events: 0)
                    } catch let error as KubernetesError {
                        reportError(error)
                        if error.code == .gone {
                            state = .relist
                            continue
                        }
                        metrics.restarts.increment()
                        guard await pause(after: error) else { return nil }
                    } catch {
                        return nil
                    }

                case .watching(var iterator, var resourceVersion, let openedAt, var events):
                    // Park a placeholder so `iterator` is the only reference to its buffers while it decodes
                    // (otherwise every chunk would copy them on write).
                    state = .startWatch(resourceVersion: resourceVersion)
                    let event: WatchEvent<R>?
                    do {
                        event = try await iterator.next()
                    } catch let error as KubernetesError {
                        reportError(error)
                        metrics.restarts.increment()
                        guard await pause(after: error) else { return nil }
                        continue
                    } catch {
                        return nil
                    }
                    guard let event else {
                        metrics.restarts.increment()
                        // A stream that closes at once without events (a server refusing watches quietly)
                        // must not turn into a tight reconnect loop.
                        if events == 0, openedAt.duration(to: .now) < .seconds(1) {
                            guard await sleep(backoff.next()) else { return nil }
                        }
                        continue
                    }
                    events += 1
                    switch event {
                    case .added(let object), .modified(let object):
                        resourceVersion = object.metadata.resourceVersion ?? resourceVersion
                        state = .watching(
                            iterator, resourceVersion: resourceVersion, openedAt: openedAt, events: events)
                        backoff.reset()
                        return .apply(transform?(object) ?? object)
                    case .deleted(let object):
                        resourceVersion = object.metadata.resourceVersion ?? resourceVersion
                        state = .watching(
                            iterator, resourceVersion: resourceVersion, openedAt: openedAt, events: events)
                        backoff.reset()
                        return .delete(transform?(object) ?? object)
                    case .bookmark(let version):
                        state = .watching(iterator, resourceVersion: version, openedAt: openedAt, events: events)
                    case .error(let error):
                        reportError(error)
                        if error.code == .gone {
                            state = .relist
                        } else {
                            state = .startWatch(resourceVersion: resourceVersion)
                            metrics.restarts.increment()
                            guard await pause(after: error) else { return nil }
                        }
                    }
                }
            }
            return nil
        }

        /// Sleeps before the next attempt; `false` when cancelled.
        private mutating func pause(after error: KubernetesError) async -> Bool {
            var delay = backoff.next()
            if error.code == .tooManyRequests, let retryAfter = error.retryAfter, retryAfter > delay {
                delay = retryAfter
            }
            return await sleep(delay)
        }

        private func sleep(_ delay: Duration) async -> Bool {
            do {
                try await Task.sleep(for: delay)
                return true
            } catch {
                return false
            }
        }
    }
}
