import ApusCore
import KubernetesClient
import Testing

@Suite("WorkQueue")
struct UnitWorkQueueTests {
    @Test func deduplicatesQueuedKeys() async {
        let queue = WorkQueue<String>()
        await queue.add("a")
        await queue.add("b")
        await queue.add("a")
        #expect(await queue.count == 2)
        #expect(await queue.tryNext() == "a")
        #expect(await queue.tryNext() == "b")
        #expect(await queue.tryNext() == nil)
    }

    @Test func keyInProcessingIsNotHandedOutAgainUntilDone() async {
        let queue = WorkQueue<String>()
        await queue.add("a")
        #expect(await queue.next() == "a")
        await queue.add("a")  // marked dirty while processing
        await queue.add("a")
        #expect(await queue.tryNext() == nil, "a second worker must not get a key in flight")
        #expect(await queue.processingCount == 1)
        await queue.done("a")
        #expect(await queue.tryNext() == "a", "the dirty key is processed again after done")
        await queue.done("a")
        #expect(await queue.tryNext() == nil, "and only once")
    }

    @Test func doneWithoutReAddDoesNotRequeue() async {
        let queue = WorkQueue<String>()
        await queue.add("a")
        #expect(await queue.next() == "a")
        await queue.done("a")
        #expect(await queue.count == 0)
        #expect(await queue.processingCount == 0)
    }

    @Test func waitingWorkerIsWokenByAdd() async {
        let queue = WorkQueue<String>()
        async let received = queue.next()
        try? await Task.sleep(for: .milliseconds(20))
        await queue.add("x")
        #expect(await received == "x")
    }

    @Test func concurrentWorkersNeverProcessOneKeyTwiceAtOnce() async {
        let queue = WorkQueue<Int>()
        let tracker = InFlightTracker()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    while let key = await queue.next() {
                        await tracker.begin(key)
                        try? await Task.sleep(for: .milliseconds(1))
                        await tracker.end(key)
                        await queue.done(key)
                    }
                }
            }
            for round in 0..<50 {
                await queue.add(round % 3)
                if round % 7 == 0 { try? await Task.sleep(for: .milliseconds(1)) }
            }
            while true {
                let queued = await queue.count
                let processing = await queue.processingCount
                if queued == 0, processing == 0 { break }
                try? await Task.sleep(for: .milliseconds(5))
            }
            await queue.shutDown()
        }
        #expect(await tracker.violations == 0)
        #expect(await tracker.processed >= 3)
    }

    @Test func delayedAddArrivesAfterTheDelayAndEarlierWins() async throws {
        let queue = WorkQueue<String>()
        await queue.add("late", after: .seconds(30))
        await queue.add("late", after: .milliseconds(30))
        #expect(await queue.delayedCount == 1)
        #expect(await queue.tryNext() == nil)
        let start = ContinuousClock.now
        #expect(await queue.next() == "late")
        #expect(start.duration(to: .now) < .seconds(10))
        #expect(await queue.delayedCount == 0)
    }

    @Test func rateLimitedRequeueBacksOffAndForgetResets() async {
        let queue = WorkQueue<String>(rateLimiter: ExponentialFailureRateLimiter(base: .milliseconds(5)))
        await queue.addRateLimited("a")
        await queue.addRateLimited("a")
        #expect(await queue.retries("a") == 2)
        #expect(await queue.next() == "a")
        await queue.done("a")
        await queue.forget("a")
        #expect(await queue.retries("a") == 0)
    }

    @Test func shutDownReleasesWaitersAndIgnoresAdds() async {
        let queue = WorkQueue<String>()
        async let waiting = queue.next()
        try? await Task.sleep(for: .milliseconds(20))
        await queue.shutDown()
        #expect(await waiting == nil)
        await queue.add("a")
        #expect(await queue.next() == nil)
        #expect(await queue.isShuttingDown)
    }

    @Test func cancelledWaiterReturnsNil() async {
        let queue = WorkQueue<String>()
        let task = Task { await queue.next() }
        try? await Task.sleep(for: .milliseconds(20))
        task.cancel()
        #expect(await task.value == nil)
        await queue.add("a")
        #expect(await queue.tryNext() == "a", "the key was not swallowed by the cancelled waiter")
    }
}

@Suite("Rate limiter")
struct UnitRateLimiterTests {
    @Test func exponentialGrowthFromFiveMillisecondsWithCeiling() {
        var limiter = ExponentialFailureRateLimiter<String>(base: .milliseconds(5), maximum: .seconds(1))
        let delays = (0..<10).map { _ in limiter.when("k") }
        #expect(
            delays == [
                .milliseconds(5), .milliseconds(10), .milliseconds(20), .milliseconds(40), .milliseconds(80),
                .milliseconds(160), .milliseconds(320), .milliseconds(640), .seconds(1), .seconds(1),
            ])
        #expect(limiter.when("other") == .milliseconds(5), "keys back off independently")
        limiter.forget("k")
        #expect(limiter.when("k") == .milliseconds(5))
    }

    @Test func defaultCeilingIsOneThousandSeconds() {
        var limiter = ExponentialFailureRateLimiter<Int>()
        var last = Duration.zero
        for _ in 0..<100 { last = limiter.when(1) }
        #expect(last == .seconds(1000))
    }
}

@Suite("Reconcile result mapping")
struct UnitQueueActionTests {
    struct Boom: Error {}

    @Test func resultsMapToQueueActions() {
        #expect(QueueAction.forResult(.success(.done)) == .forget)
        #expect(
            QueueAction.forResult(.success(.requeue(after: .seconds(5)))) == .forgetAndRequeue(after: .seconds(5)))
        #expect(QueueAction.forResult(.failure(Boom())) == .requeueRateLimited)
        #expect(QueueAction.forResult(.failure(TerminalError(Boom()))) == .drop)
    }

    @Test func controllerRetriesFailuresAndDropsTerminalErrors() async throws {
        actor Attempts {
            var counts: [String: Int] = [:]
            func record(_ key: String) -> Int {
                counts[key, default: 0] += 1
                return counts[key]!
            }
        }
        struct Flaky: Reconciler {
            let attempts: Attempts
            func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
                let attempt = await attempts.record(key.name)
                switch key.name {
                case "flaky" where attempt < 3: throw Boom()
                case "terminal": throw TerminalError(Boom())
                default: return .done
                }
            }
        }
        let attempts = Attempts()
        let controller = Controller(
            name: "test", reconciler: Flaky(attempts: attempts), workers: 2,
            queue: WorkQueue(rateLimiter: ExponentialFailureRateLimiter(base: .milliseconds(1))))
        let run = Task { await controller.run() }
        await controller.enqueue(ObjectKey(namespace: "ns", name: "flaky"))
        await controller.enqueue(ObjectKey(namespace: "ns", name: "terminal"))
        await controller.enqueue(ObjectKey(namespace: "ns", name: "fine"))
        let deadline = ContinuousClock.now.advanced(by: .seconds(10))
        while await attempts.counts["flaky"] ?? 0 < 3, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        try await Task.sleep(for: .milliseconds(50))
        run.cancel()
        await run.value
        let counts = await attempts.counts
        #expect(counts["flaky"] == 3)
        #expect(counts["terminal"] == 1)
        #expect(counts["fine"] == 1)
        #expect(await controller.queue.retries(ObjectKey(namespace: "ns", name: "flaky")) == 0)
        #expect(await controller.queue.isShuttingDown)
    }
}

actor InFlightTracker {
    private var inFlight = Set<Int>()
    private(set) var violations = 0
    private(set) var processed = 0

    func begin(_ key: Int) {
        if !inFlight.insert(key).inserted { violations += 1 }
    }

    func end(_ key: Int) {
        inFlight.remove(key)
        processed += 1
    }
}
