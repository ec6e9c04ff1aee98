/// Nearest-rank percentiles of a sample, in milliseconds.
public struct Percentiles: Encodable, Sendable {
    public var samples = 0
    public var p50 = 0.0
    public var p99 = 0.0
    public var max = 0.0

    public init() {}

    /// The percentiles of `values`, given in nanoseconds.
    public init(nanoseconds values: [Int64]) {
        let sorted = values.sorted()
        samples = sorted.count
        guard !sorted.isEmpty else { return }
        func rank(_ quantile: Double) -> Double {
            let index = Swift.min(
                sorted.count - 1, Swift.max(0, Int((quantile * Double(sorted.count)).rounded(.up)) - 1))
            return Double(sorted[index]) / 1e6
        }
        p50 = rank(0.50)
        p99 = rank(0.99)
        max = Double(sorted[sorted.count - 1]) / 1e6
    }
}
