import Atomics

/// A fixed number of `UInt64` atomics in one allocation.
///
/// A series needs dozens of counters (a histogram alone has 26 buckets per response class); one `ManagedAtomic`
/// each would be dozens of heap objects and headers per series. One buffer keeps a series a single allocation,
/// made when the caller first asks for the series and never again, so the hot path (``add(_:at:)``) is one
/// relaxed atomic add on memory that is already there.
final class AtomicCounterBlock: @unchecked Sendable {
    // @unchecked: the buffer is only reached through atomic operations (UnsafeAtomic views), never as plain
    // memory, after `init` initialized it and until `deinit`, which runs when no other reference remains.
    typealias Storage = UnsafeAtomic<UInt64>.Storage

    let count: Int
    private let storage: UnsafeMutablePointer<Storage>

    init(count: Int) {
        self.count = count
        storage = UnsafeMutablePointer<Storage>.allocate(capacity: count)
        storage.initialize(repeating: Storage(0), count: count)
    }

    deinit {
        for index in 0..<count { _ = (storage + index).pointee.dispose() }
        storage.deinitialize(count: count)
        storage.deallocate()
    }

    @inline(__always)
    private func atomic(_ index: Int) -> UnsafeAtomic<UInt64> {
        precondition(index >= 0 && index < count, "counter index out of range")
        return UnsafeAtomic(at: storage + index)
    }

    @inline(__always)
    func add(_ value: UInt64, at index: Int) {
        atomic(index).wrappingIncrement(by: value, ordering: .relaxed)
    }

    @inline(__always)
    func load(_ index: Int) -> UInt64 {
        atomic(index).load(ordering: .relaxed)
    }

    /// Claims a slot: stores `desired` if the slot holds `expected`; returns the value the slot holds afterwards.
    @inline(__always)
    func compareExchange(at index: Int, expected: UInt64, desired: UInt64) -> UInt64 {
        let (exchanged, original) = atomic(index).compareExchange(
            expected: expected, desired: desired, ordering: .acquiringAndReleasing)
        return exchanged ? desired : original
    }

    @inline(__always)
    func loadAcquiring(_ index: Int) -> UInt64 {
        atomic(index).load(ordering: .acquiring)
    }
}
