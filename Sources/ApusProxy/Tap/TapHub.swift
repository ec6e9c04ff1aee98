import Atomics
import NIOConcurrencyHelpers
import NIOCore

/// Where the forwarding path publishes tap events and tap subscribers take them from; one per proxy, shared by
/// all event loops.
///
/// ```
/// HTTPForwardHandler ─ isActive? (one atomic load) ─► begin(request) ─► TapExchange (matching subscribers)
///   (data-path loops)                                   │                 ├─ responded(...) ─► rsp
///                                                       └─ req            └─ ended(...)     ─► end
///                                    each subscriber: bounded buffer ─wake─► its tap connection drains it
/// ```
///
/// **The data path never waits for a subscriber.** Publishing appends to each matching subscriber's buffer
/// under that subscriber's lock (a few hundred nanoseconds, no I/O, no allocation beyond the event) and at most
/// schedules one wake-up on the subscriber's loop. When a buffer is full the event is dropped and counted; the
/// subscriber is told how many it lost the next time its connection can take data. Memory per subscriber is thus
/// bounded by its `bufferSize`, however slow or stalled it is.
///
/// With no subscriber, ``isActive`` is false and the forwarding path does nothing else.
public final class TapHub: Sendable {
    private let activeCount = ManagedAtomic<Int>(0)
    private let subscriptions = NIOLockedValueBox<[TapSubscription]>([])
    private let connectionIDs = ManagedAtomic<UInt64>(0)
    /// Client connection → its number in event ids, filled only while tapping (``connectionID(for:)``).
    let connectionNumbers = NIOLockedValueBox<[ObjectIdentifier: UInt64]>([:])
    /// Labels of this proxy's own pod (`pod`, `namespace`), the source of outbound and destination of inbound
    /// traffic.
    public let localLabels: [String: String]

    public init(localLabels: [String: String] = [:]) {
        self.localLabels = localLabels
    }

    /// Whether anyone taps; the forwarding path checks this before doing any tap work.
    @inline(__always)
    public var isActive: Bool { activeCount.load(ordering: .relaxed) > 0 }

    /// The current subscribers (for stats and tests).
    public var subscribers: [TapSubscription] { subscriptions.withLockedValue { $0 } }

    /// Registers a subscriber. `wake` runs (from a data-path loop, at most once until the subscriber drains again)
    /// when events arrive for a subscriber that was waiting; it should hop to the subscriber's loop and drain.
    public func subscribe(_ filter: TapFilter, wake: @escaping @Sendable () -> Void) -> TapSubscription {
        let subscription = TapSubscription(filter: filter, wake: wake)
        subscriptions.withLockedValue { $0.append(subscription) }
        activeCount.wrappingIncrement(ordering: .relaxed)
        return subscription
    }

    /// Removes a subscriber; idempotent. Its undelivered events are released.
    public func unsubscribe(_ subscription: TapSubscription) {
        let removed = subscriptions.withLockedValue { list -> Bool in
            guard let index = list.firstIndex(where: { $0 === subscription }) else { return false }
            list.remove(at: index)
            return true
        }
        if removed {
            activeCount.wrappingDecrement(ordering: .relaxed)
            subscription.close()
        }
    }

    /// A number for a client connection, used in event ids (assigned lazily, only while tapping).
    func nextConnectionID() -> UInt64 {
        connectionIDs.wrappingIncrementThenLoad(ordering: .relaxed)
    }

    /// Publishes the request event to every subscriber whose filter matches, and returns the exchange to report its
    /// response and end to the same subscribers; nil when nobody wants it.
    func begin(_ request: TapRequestInfo) -> TapExchange? {
        let all = subscriptions.withLockedValue { $0 }
        var matching: [TapSubscription] = []
        for subscription in all where subscription.filter.matches(request) {
            matching.append(subscription)
        }
        guard !matching.isEmpty else { return nil }
        let event = TapEvent(request: request, kind: .request)
        for subscription in matching { subscription.offer(event) }
        return TapExchange(request: request, subscribers: matching)
    }
}

/// The subscribers one exchange's events go to, fixed when its request event was published (so a subscriber
/// sees an exchange's `rsp` and `end` only if it saw its `req`).
struct TapExchange {
    let request: TapRequestInfo
    let subscribers: [TapSubscription]

    func publish(_ kind: TapEvent.Kind) {
        let event = TapEvent(request: request, kind: kind)
        for subscription in subscribers { subscription.offer(event) }
    }
}

/// One subscriber: its filter and its bounded event buffer.
public final class TapSubscription: Sendable {
    public let filter: TapFilter
    private let wake: @Sendable () -> Void
    private let state: NIOLockedValueBox<State>

    private struct State {
        var buffer = CircularBuffer<TapEvent>()
        var dropped: UInt64 = 0
        var delivered: UInt64 = 0
        /// The consumer emptied the buffer and asked to be woken by the next event.
        var waiting = true
        var closed = false
    }

    init(filter: TapFilter, wake: @escaping @Sendable () -> Void) {
        self.filter = filter
        self.wake = wake
        state = NIOLockedValueBox(State())
    }

    /// Events lost because the buffer was full.
    public var droppedCount: UInt64 { state.withLockedValue { $0.dropped } }
    /// Events handed to the subscriber's connection.
    public var deliveredCount: UInt64 { state.withLockedValue { $0.delivered } }
    /// Events waiting in the buffer.
    public var bufferedCount: Int { state.withLockedValue { $0.buffer.count } }

    func offer(_ event: TapEvent) {
        let capacity = filter.bufferSize
        let shouldWake = state.withLockedValue { state -> Bool in
            guard !state.closed else { return false }
            guard state.buffer.count < capacity else {
                state.dropped &+= 1
                return false
            }
            state.buffer.append(event)
            guard state.waiting else { return false }
            state.waiting = false
            return true
        }
        if shouldWake { wake() }
    }

    /// Takes up to `limit` events and the total dropped so far. When none are left it marks the subscriber as
    /// waiting, so the next event wakes it.
    func take(limit: Int) -> (events: [TapEvent], droppedTotal: UInt64) {
        state.withLockedValue { state in
            let count = min(limit, state.buffer.count)
            var events: [TapEvent] = []
            events.reserveCapacity(count)
            for _ in 0..<count {
                events.append(state.buffer.removeFirst())
            }
            state.delivered &+= UInt64(events.count)
            state.waiting = state.buffer.isEmpty
            return (events, state.dropped)
        }
    }

    /// Stops waking the subscriber: its connection is gone or it stopped reading for good.
    func close() {
        state.withLockedValue { state in
            state.closed = true
            state.waiting = false
            state.buffer.removeAll()
        }
    }
}
