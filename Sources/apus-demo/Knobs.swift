import Foundation

/// A setting of the demo that cannot be used, named by the variable or flag it came from.
struct DemoConfigurationError: Error, CustomStringConvertible {
    var setting: String
    var value: String
    var reason: String

    var description: String { "\(setting)='\(value)' \(reason)" }
}

/// Added latency: a fixed number of milliseconds, or a uniform pick from a range for each request.
struct Latency: Sendable, Equatable, CustomStringConvertible {
    var minimumMilliseconds: Int
    var maximumMilliseconds: Int

    static let none = Latency(minimumMilliseconds: 0, maximumMilliseconds: 0)

    init(minimumMilliseconds: Int, maximumMilliseconds: Int) {
        self.minimumMilliseconds = minimumMilliseconds
        self.maximumMilliseconds = maximumMilliseconds
    }

    /// `LATENCY_MS` syntax: `250` or `100-300` (milliseconds, whole numbers, minimum first).
    init(parsing text: String, setting: String = "LATENCY_MS") throws(DemoConfigurationError) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        let numbers = parts.compactMap { Int($0) }
        guard (1...2).contains(parts.count), numbers.count == parts.count, numbers.allSatisfy({ $0 >= 0 }) else {
            throw DemoConfigurationError(
                setting: setting, value: text,
                reason: "is not a latency: use whole milliseconds, fixed ('250') or a range ('100-300')")
        }
        let minimum = numbers[0]
        let maximum = numbers.count == 2 ? numbers[1] : minimum
        guard minimum <= maximum else {
            throw DemoConfigurationError(setting: setting, value: text, reason: "has its minimum above its maximum")
        }
        self.init(minimumMilliseconds: minimum, maximumMilliseconds: maximum)
    }

    /// The delay for one request.
    func sample() -> Duration {
        .milliseconds(Int.random(in: minimumMilliseconds...maximumMilliseconds))
    }

    var description: String {
        minimumMilliseconds == maximumMilliseconds
            ? "\(minimumMilliseconds) ms" : "\(minimumMilliseconds)-\(maximumMilliseconds) ms"
    }
}

/// The faults a demo service injects into its own routes, so the mesh's timeouts, retries and metrics have
/// something to show: a delay before answering, and a share of requests failed with 500.
struct FaultInjection: Sendable, CustomStringConvertible {
    var latency: Latency
    /// Probability in 0...1 that a request is answered 500 (after its delay).
    var errorRate: Double

    init(latency: Latency = .none, errorRate: Double = 0) {
        self.latency = latency
        self.errorRate = errorRate
    }

    /// `LATENCY_MS` and `ERROR_RATE` from `environment`; `defaultLatency` when `LATENCY_MS` is unset or empty.
    static func fromEnvironment(
        _ environment: [String: String], defaultLatency: Latency
    ) throws(DemoConfigurationError) -> FaultInjection {
        var faults = FaultInjection(latency: defaultLatency)
        if let text = environment["LATENCY_MS"], !text.isEmpty {
            faults.latency = try Latency(parsing: text)
        }
        if let text = environment["ERROR_RATE"], !text.isEmpty {
            guard let rate = Double(text.trimmingCharacters(in: .whitespaces)), (0...1).contains(rate) else {
                throw DemoConfigurationError(
                    setting: "ERROR_RATE", value: text, reason: "is not a probability between 0.0 and 1.0")
            }
            faults.errorRate = rate
        }
        return faults
    }

    /// Waits the configured delay, then returns a 500 for the failing share of requests (nil: answer normally).
    func apply() async -> DemoResponse? {
        let delay = latency.sample()
        if delay > .zero {
            try? await Task.sleep(for: delay)
        }
        if errorRate > 0, Double.random(in: 0..<1) < errorRate {
            return .error("injected failure (ERROR_RATE=\(errorRate))", status: .internalServerError)
        }
        return nil
    }

    var description: String { "latency \(latency), error rate \(errorRate)" }
}
