import BenchmarkSupport

/// The benchmark's end of the pipe to its API test server child (this binary with `--serve`).
typealias ServerProcess = ChildProcess<ChildReady, ChildCommand, ChildReply>

// MARK: - Messages between the benchmark and its server child (one JSON object per line)

/// What the child prints once the server is up and seeded.
struct ChildReady: Codable, Sendable {
    var endpoint: ServerEndpoint
    var averagePodJSONBytes: Int
    var averageSliceJSONBytes: Int
    var seedSeconds: Double
    var residentBytes: Int
}

/// A request to the child.
struct ChildCommand: Codable, Sendable {
    enum Operation: String, Codable, Sendable {
        /// Flip the `ready` condition of the first endpoint in Service `service`'s EndpointSlice (change number
        /// `sequence`: even makes it not ready, odd ready again).
        case flip
        /// Report the child's RSS.
        case memory
        case quit
    }

    var operation: Operation
    var service = 0
    var sequence = 0
}

/// The child's answer to a ``ChildCommand``.
struct ChildReply: Codable, Sendable {
    var ok = true
    var error: String?
    /// ``MonotonicClock`` just before the write was handed to the server (the change's start).
    var writtenAt: Int64?
    var residentBytes: Int?
}

extension ChildCommand: ChildCommandMessage {
    static let quit = ChildCommand(operation: .quit)
}

extension ChildReply: ChildReplyMessage {}
