import ApusCore
import NIOConcurrencyHelpers

/// Linkerd's retry budget for one destination: retries may add at most `retryRatio` × the requests of the last
/// `ttl`, plus `minRetriesPerSecond` for each second the budget has existed (up to `ttl`'s worth), so a failing
/// service sees at most `(1 + ratio) × offered + min × elapsed` requests instead of a retry storm.
///
/// The window is `ttl` split into ten slots of deposits (requests) and withdrawals (retries); a slot older than
/// `ttl` is dropped, so past traffic stops funding retries. The per-second floor grows with the budget's age
/// rather than being granted all at once (as Finagle's reserve is), so a burst of failures right after startup
/// cannot spend ten seconds' worth of retries in its first millisecond.
///
/// One budget per destination and profile version, shared by the event loops (a lock around a few integers:
/// one uncontended lock per request, no allocation).
public final class RetryBudget: Sendable {
    public let retryRatio: Double
    public let minRetriesPerSecond: Double
    public let ttlNanos: UInt64
    private let slotNanos: UInt64
    private static let slotCount = 10

    private struct Slot {
        var index: UInt64 = .max
        var deposits: UInt64 = 0
        var withdrawals: UInt64 = 0
    }

    private struct State {
        var createdAt: UInt64
        var slots = [Slot](repeating: Slot(), count: RetryBudget.slotCount)
    }

    private let state: NIOLockedValueBox<State>

    /// - Parameter now: the budget's start, in monotonic nanoseconds (`NIODeadline.now().uptimeNanoseconds`).
    public init(_ budget: CompiledServiceProfile.RetryBudget, now: UInt64) {
        retryRatio = max(0, budget.retryRatio)
        minRetriesPerSecond = Double(budget.minRetriesPerSecond)
        let ttl = budget.ttl.nanoseconds > 0 ? UInt64(budget.ttl.nanoseconds) : 10_000_000_000
        ttlNanos = ttl
        slotNanos = max(1, ttl / UInt64(Self.slotCount))
        state = NIOLockedValueBox(State(createdAt: now))
    }

    /// Records one original request (never a retry): it funds `retryRatio` retries.
    public func deposit(now: UInt64) {
        state.withLockedValue { state in
            let slot = currentSlot(&state, now: now)
            state.slots[slot].deposits &+= 1
        }
    }

    /// Takes one retry from the budget; false when it is spent (the failure then goes back to the caller).
    public func withdraw(now: UInt64) -> Bool {
        state.withLockedValue { state in
            let slot = currentSlot(&state, now: now)
            guard balance(state, now: now) >= 1 else { return false }
            state.slots[slot].withdrawals &+= 1
            return true
        }
    }

    /// Retries the budget would allow now (for tests and debugging).
    public func available(now: UInt64) -> Double {
        state.withLockedValue { state in
            _ = currentSlot(&state, now: now)
            return balance(state, now: now)
        }
    }

    private func balance(_ state: State, now: UInt64) -> Double {
        var deposits: UInt64 = 0
        var withdrawals: UInt64 = 0
        for slot in state.slots where slot.index != .max {
            deposits &+= slot.deposits
            withdrawals &+= slot.withdrawals
        }
        let age = min(now &- min(now, state.createdAt), ttlNanos)
        let floor = minRetriesPerSecond * Double(age) / 1e9
        return retryRatio * Double(deposits) + floor - Double(withdrawals)
    }

    /// The slot for `now`, clearing slots that fell out of the window.
    private func currentSlot(_ state: inout State, now: UInt64) -> Int {
        let index = now / slotNanos
        let oldest = index >= UInt64(Self.slotCount) ? index - UInt64(Self.slotCount) + 1 : 0
        for position in state.slots.indices where state.slots[position].index != .max {
            if state.slots[position].index < oldest || state.slots[position].index > index {
                state.slots[position] = Slot()
            }
        }
        let position = Int(index % UInt64(Self.slotCount))
        if state.slots[position].index != index { state.slots[position] = Slot(index: index) }
        return position
    }
}
