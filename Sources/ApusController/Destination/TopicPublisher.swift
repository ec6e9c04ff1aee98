import Metrics
import NIOConcurrencyHelpers

/// A value published for one target, numbered so subscribers and frames can tell newer from older.
public struct Versioned<Value: Sendable>: Sendable {
    /// Strictly increasing per target, starting at 1.
    public let version: UInt64
    public let value: Value
}

/// The metric objects of one index's publisher, created once per index (publishing only touches atomics).
///
/// - `apus_controller_destination_subscribers{index}` (gauge): open subscriptions (`Get` / `GetProfile`
///   streams, one per proxy and target).
/// - `apus_controller_destination_targets{index}` (gauge): distinct targets with at least one subscriber (the
///   configurations the index keeps computed).
/// - `apus_controller_destination_changes_total{index}` (counter): new values published for a target.
/// - `apus_controller_destination_updates_total{index}` (counter): values handed to subscribers, i.e. changes ×
///   subscribers of the target plus each subscription's first value (what Linkerd's `endpoints_updates` and
///   `profile_updates` count, summed over targets).
///
/// `index` is `endpoints` or `profiles`. Linkerd's per-target `endpoints_subscribers{namespace,service,port}`
/// series are not exported: one series per Service port is too many for a 10,000-service cluster's scrape.
struct DestinationPublisherMetrics: Sendable {
    let subscribers: Gauge
    let targets: Gauge
    let changes: Counter
    let updates: Counter

    init(index: String, factory: any MetricsFactory) {
        let dimensions = [("index", index)]
        subscribers = Gauge(label: "apus_controller_destination_subscribers", dimensions: dimensions, factory: factory)
        targets = Gauge(label: "apus_controller_destination_targets", dimensions: dimensions, factory: factory)
        changes = Counter(
            label: "apus_controller_destination_changes_total", dimensions: dimensions, factory: factory)
        updates = Counter(
            label: "apus_controller_destination_updates_total", dimensions: dimensions, factory: factory)
    }
}

/// Latest-value fan-out per target, the publishing half of every destination index.
///
/// Each subscriber owns an `AsyncStream` with `.bufferingNewest(1)`: a slow subscriber skips intermediate
/// values and always reads the newest one, so memory per subscriber is bounded by one value whatever the churn,
/// and a subscriber never sees an older version after a newer one (values are yielded under the lock in
/// version order). Values are shared (never copied per subscriber), so a change costs O(1) per subscriber.
///
/// The owning index calls every method under its own single writer; the lock here only makes subscription and
/// cancellation from other tasks safe.
final class TopicPublisher<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private struct Topic {
        var latest: Versioned<Value>?
        var subscribers: [UInt64: AsyncStream<Versioned<Value>>.Continuation] = [:]
    }

    private struct State {
        var topics: [Key: Topic] = [:]
        var nextSubscriber: UInt64 = 0
        var subscriberCount = 0
    }

    private let state = NIOLockedValueBox(State())
    /// Called (outside the lock) when the last subscriber of a key goes away, so the index can drop its
    /// per-target state.
    private let onIdle: @Sendable (Key) -> Void
    private let metrics: DestinationPublisherMetrics

    init(metrics: DestinationPublisherMetrics, onIdle: @escaping @Sendable (Key) -> Void = { _ in }) {
        self.metrics = metrics
        self.onIdle = onIdle
    }

    /// Subscribes to `key`; `initial` computes the first value when the key has none yet (under the lock, so it
    /// cannot race a publish). The stream starts with the current value.
    func subscribe(_ key: Key, initial: () -> Value) -> AsyncStream<Versioned<Value>> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: Versioned<Value>.self, bufferingPolicy: .bufferingNewest(1))
        let id = state.withLockedValue { state -> UInt64 in
            state.nextSubscriber += 1
            let id = state.nextSubscriber
            var topic = state.topics[key] ?? Topic()
            if topic.latest == nil { topic.latest = Versioned(version: 1, value: initial()) }
            topic.subscribers[id] = continuation
            state.topics[key] = topic
            state.subscriberCount += 1
            metrics.subscribers.record(state.subscriberCount)
            metrics.targets.record(state.topics.count)
            if let latest = topic.latest {
                continuation.yield(latest)
                metrics.updates.increment()
            }
            return id
        }
        continuation.onTermination = { [weak self] _ in self?.unsubscribe(key, id: id) }
        return stream
    }

    private func unsubscribe(_ key: Key, id: UInt64) {
        let idle = state.withLockedValue { state -> Bool in
            guard state.topics[key]?.subscribers.removeValue(forKey: id) != nil else { return false }
            state.subscriberCount -= 1
            metrics.subscribers.record(state.subscriberCount)
            guard state.topics[key]?.subscribers.isEmpty == true else { return false }
            state.topics[key] = nil
            metrics.targets.record(state.topics.count)
            return true
        }
        if idle { onIdle(key) }
    }

    /// Publishes `value` for `key` if anyone listens and it differs from the latest; returns the new version.
    @discardableResult
    func publish(_ key: Key, _ value: Value, unchanged: (Value, Value) -> Bool) -> UInt64? {
        state.withLockedValue { state -> UInt64? in
            guard var topic = state.topics[key], let latest = topic.latest else { return nil }
            if unchanged(latest.value, value) { return nil }
            let next = Versioned(version: latest.version + 1, value: value)
            topic.latest = next
            for continuation in topic.subscribers.values { continuation.yield(next) }
            state.topics[key] = topic
            metrics.changes.increment()
            metrics.updates.increment(by: Int64(topic.subscribers.count))
            return next.version
        }
    }

    /// The latest value of `key`, if it has subscribers.
    func latest(_ key: Key) -> Versioned<Value>? { state.withLockedValue { $0.topics[key]?.latest } }

    /// Keys with at least one subscriber.
    var keys: [Key] { state.withLockedValue { Array($0.topics.keys) } }

    var subscriberCount: Int { state.withLockedValue { $0.subscriberCount } }

    /// Ends every stream (server shutdown).
    func finishAll() {
        let continuations = state.withLockedValue { state in
            state.topics.values.flatMap { $0.subscribers.values }
        }
        for continuation in continuations { continuation.finish() }
    }
}

extension TopicPublisher where Value: Equatable {
    @discardableResult
    func publish(_ key: Key, _ value: Value) -> UInt64? { publish(key, value, unchanged: ==) }
}
