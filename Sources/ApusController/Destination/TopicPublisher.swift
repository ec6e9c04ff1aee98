import NIOConcurrencyHelpers

/// A value published for one target, numbered so subscribers and frames can tell newer from older.
public struct Versioned<Value: Sendable>: Sendable {
    /// Strictly increasing per target, starting at 1.
    public let version: UInt64
    public let value: Value
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
    }

    private let state = NIOLockedValueBox(State())
    /// Called (outside the lock) when the last subscriber of a key goes away, so the index can drop its
    /// per-target state.
    private let onIdle: @Sendable (Key) -> Void

    init(onIdle: @escaping @Sendable (Key) -> Void = { _ in }) {
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
            if let latest = topic.latest { continuation.yield(latest) }
            return id
        }
        continuation.onTermination = { [weak self] _ in self?.unsubscribe(key, id: id) }
        return stream
    }

    private func unsubscribe(_ key: Key, id: UInt64) {
        let idle = state.withLockedValue { state -> Bool in
            state.topics[key]?.subscribers[id] = nil
            guard state.topics[key]?.subscribers.isEmpty == true else { return false }
            state.topics[key] = nil
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
            return next.version
        }
    }

    /// The latest value of `key`, if it has subscribers.
    func latest(_ key: Key) -> Versioned<Value>? { state.withLockedValue { $0.topics[key]?.latest } }

    /// Keys with at least one subscriber.
    var keys: [Key] { state.withLockedValue { Array($0.topics.keys) } }

    var subscriberCount: Int { state.withLockedValue { $0.topics.values.reduce(0) { $0 + $1.subscribers.count } } }

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
