import BenchmarkSupport

/// The benchmark's end of the pipe to its API test server child (this binary with `--serve`).
typealias ServerProcess = ChildProcess<ChildReady, ChildCommand, ChildReply>

// MARK: - Messages between the benchmark and its server child (one JSON object per line)

/// What the child prints once the server is up and seeded.
struct ChildReady: Codable, Sendable {
    var endpoint: ServerEndpoint
    var pods: Int
    /// Average size of one seeded Pod as JSON (as the server serializes it, sorted keys).
    var averagePodJSONBytes: Int
    var seedSeconds: Double
    var residentBytes: Int
}

/// A request to the child.
struct ChildCommand: Codable, Sendable {
    enum Operation: String, Codable, Sendable {
        /// Write `count` updates while no watch is registered, so a watch that resumes afterwards gets them
        /// replayed back-to-back from the event log.
        case replay
        /// Write `count` updates with the watches live.
        case live
        /// Report the child's RSS.
        case memory
        case quit
    }

    var operation: Operation
    var count = 0
}

/// The child's answer to a ``ChildCommand``.
struct ChildReply: Codable, Sendable {
    var ok = true
    var error: String?
    /// resourceVersion before the first and after the last write.
    var fromRevision: String?
    var toRevision: String?
    var writeSeconds: Double?
    /// For `replay`: whether the resumed watch registered before all writes were done (part of the stream was
    /// then live rather than replayed).
    var overlapped: Bool?
    var residentBytes: Int?
}

extension ChildCommand: ChildCommandMessage {
    static let quit = ChildCommand(operation: .quit)
}

extension ChildReply: ChildReplyMessage {}

extension ServerProcess {
    /// Sends `operation` (with `count` for the writes) and waits for the reply.
    @discardableResult
    func send(_ operation: ChildCommand.Operation, count: Int = 0) async throws -> ChildReply {
        try await send(ChildCommand(operation: operation, count: count))
    }
}
