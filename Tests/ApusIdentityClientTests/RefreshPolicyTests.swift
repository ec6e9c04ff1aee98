import ApusIdentityClient
import Foundation
import Testing

@Suite struct RefreshPolicyTests {
    let start = Date(timeIntervalSince1970: 1_700_000_000)

    @Test("refreshes at 70 % of the lifetime without jitter, earlier by at most the jitter fraction")
    func seventyPercent() {
        let policy = RefreshPolicy()
        let day = start.addingTimeInterval(86400)
        #expect(policy.refreshDelay(validFrom: start, validUntil: day, random: 0) == .seconds(60480))
        let earliest = policy.refreshDelay(validFrom: start, validUntil: day, random: 0.999_999)
        #expect(earliest < .seconds(60480) && earliest >= .seconds(60480 * 0.9))
    }

    @Test("the delay is clamped to 10 s … 24 h, and the bounds are injectable")
    func clamped() {
        let policy = RefreshPolicy()
        #expect(
            policy.refreshDelay(validFrom: start, validUntil: start.addingTimeInterval(5), random: 0) == .seconds(10))
        let year = start.addingTimeInterval(365 * 86400)
        #expect(policy.refreshDelay(validFrom: start, validUntil: year, random: 0) == .seconds(86400))
        var fast = policy
        fast.minimumRefresh = .milliseconds(100)
        #expect(
            fast.refreshDelay(validFrom: start, validUntil: start.addingTimeInterval(2), random: 0)
                == .milliseconds(1400))
        // An already expired certificate refreshes at the floor, not at a negative delay.
        #expect(
            fast.refreshDelay(validFrom: start, validUntil: start.addingTimeInterval(-5), random: 0)
                == .milliseconds(100))
    }

    @Test("retries back off exponentially up to the cap, and never past the current certificate's expiry")
    func backoff() {
        let policy = RefreshPolicy()
        #expect(policy.retryDelay(attempt: 1, random: 1) == .seconds(1))
        #expect(policy.retryDelay(attempt: 4, random: 1) == .seconds(8))
        #expect(policy.retryDelay(attempt: 4, random: 0) == .seconds(4))
        #expect(policy.retryDelay(attempt: 40, random: 1) == .seconds(60))
        let soon = start.addingTimeInterval(11)
        #expect(policy.retryDelay(attempt: 10, validUntil: soon, now: start, random: 1) == .seconds(10))
    }
}
