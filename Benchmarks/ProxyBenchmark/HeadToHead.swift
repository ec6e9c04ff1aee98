/// The comparison issue 4's goal is about — the plain hop against HAProxy — repeated in rounds. On a shared
/// 2-core machine one run of a row moves by ±15 % between process starts and with whatever else the host runs, more
/// than the difference being measured; so each round starts both proxies afresh, measures them back to back (in
/// alternating order, so neither always gets the first slot) and compares them within the round, and the verdict
/// is the median over the rounds.
struct HeadToHead: Encodable {
    struct Round: Encodable {
        var apus: Row
        var haproxy: Row
        var apusFirst: Bool

        /// The plain hop's figure over HAProxy's in this round, nil when either has no clean result.
        func ratio(_ figure: (Row) -> Double?) -> Double? {
            guard apus.error == nil, haproxy.error == nil, let mine = figure(apus), let theirs = figure(haproxy),
                theirs > 0
            else { return nil }
            return mine / theirs
        }
    }

    /// The median and the range of one per-round ratio.
    struct Spread: Encodable {
        var median: Double
        var lowest: Double
        var highest: Double

        init?(_ values: [Double]) {
            guard !values.isEmpty else { return nil }
            let sorted = values.sorted()
            let middle = sorted.count / 2
            median = sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
            lowest = sorted[0]
            highest = sorted[sorted.count - 1]
        }
    }

    var rounds: [Round] = []

    static func requestsPerSecond(_ row: Row) -> Double? { row.result?.requestsPerSecond }
    static func p99(_ row: Row) -> Double? { row.result?.p99Milliseconds }
    static func cpuPerRequest(_ row: Row) -> Double? { row.cpuSecondsPerRequest }

    /// Rounds in which both rows have clean figures.
    var completeRounds: Int { rounds.filter { $0.ratio(Self.requestsPerSecond) != nil }.count }
    var rate: Spread? { Spread(rounds.compactMap { $0.ratio(Self.requestsPerSecond) }) }
    var p99: Spread? { Spread(rounds.compactMap { $0.ratio(Self.p99) }) }
    var cpu: Spread? { Spread(rounds.compactMap { $0.ratio(Self.cpuPerRequest) }) }

    enum CodingKeys: String, CodingKey {
        case rounds, rate, p99, cpu
    }

    func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(rounds, forKey: .rounds)
        try container.encodeIfPresent(rate, forKey: .rate)
        try container.encodeIfPresent(p99, forKey: .p99)
        try container.encodeIfPresent(cpu, forKey: .cpu)
    }
}
