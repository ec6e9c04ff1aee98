import ApusCore
import ApusDestinationClient
import BenchmarkSupport
import KubernetesClient
import NIOConcurrencyHelpers

/// Timestamps, for one change at a time, when each measured subscriber receives the new endpoint set and when
/// the EndpointSlice informer's handler sees the change (the baseline: the index adds everything after it).
final class PropagationProbe: Sendable {
    private struct State {
        /// Endpoint count the next value must carry; nil between changes.
        var expected: Int?
        var received: [Int64] = []
        var sliceSeenAt: Int64?
        var initialValues = 0
        var failure: String?
    }

    let sliceKey: ObjectKey
    private let state = NIOLockedValueBox(State())

    init(sliceKey: ObjectKey) { self.sliceKey = sliceKey }

    /// Starts waiting for values carrying `endpoints` endpoints (call before triggering the change).
    func arm(expecting endpoints: Int, subscribers: Int) {
        state.withLockedValue { state in
            state.expected = endpoints
            state.received.removeAll(keepingCapacity: true)
            state.received.reserveCapacity(subscribers)
            state.sliceSeenAt = nil
        }
    }

    /// A measured subscriber received `resolution`.
    func received(_ resolution: Resolution) {
        let now = MonotonicClock.nanoseconds()
        state.withLockedValue { state in
            guard let expected = state.expected else {
                state.initialValues += 1
                return
            }
            guard case .endpoints(let set) = resolution, set.count == expected else {
                state.failure = "a subscriber received \(resolution.summary) while \(expected) endpoints were expected"
                return
            }
            state.received.append(now)
        }
    }

    /// The EndpointSlice informer delivered `event` to its handlers.
    func sliceEvent(_ event: InformerEvent<EndpointSlice>) {
        guard case .updated(_, let slice) = event, slice.objectKey == sliceKey else { return }
        let now = MonotonicClock.nanoseconds()
        state.withLockedValue { state in
            if state.expected != nil, state.sliceSeenAt == nil { state.sliceSeenAt = now }
        }
    }

    func disarm() { state.withLockedValue { $0.expected = nil } }

    var receivedCount: Int { state.withLockedValue { $0.received.count } }
    var initialValues: Int { state.withLockedValue { $0.initialValues } }
    var sliceSeen: Bool { state.withLockedValue { $0.sliceSeenAt != nil } }

    /// Latencies in nanoseconds after a write stamped `writtenAt`: every subscriber's, and the informer's.
    func latencies(since writtenAt: Int64) throws -> (subscribers: [Int64], informer: Int64) {
        try state.withLockedValue { state in
            if let failure = state.failure { throw BenchmarkError(failure) }
            guard let seen = state.sliceSeenAt else { throw BenchmarkError("the informer never saw the change") }
            return (state.received.map { $0 - writtenAt }, seen - writtenAt)
        }
    }
}

extension Resolution {
    var summary: String {
        switch self {
        case .endpoints(let set): return "\(set.count) endpoints"
        case .notFound: return "not found"
        case .external(let host, let port): return "external \(host):\(port)"
        }
    }
}
