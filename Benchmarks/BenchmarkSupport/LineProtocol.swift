import Foundation
import NIOConcurrencyHelpers

/// Newline-delimited reading of a pipe without blocking Swift's cooperative thread pool (the reads block a
/// Dispatch thread instead, which matters on a 2-core machine where the pool has two threads).
public final class LineReader: Sendable {
    private let handle: FileHandle
    private let buffer = NIOLockedValueBox<[UInt8]>([])
    private let queue: DispatchQueue

    public init(_ handle: FileHandle, label: String) {
        self.handle = handle
        self.queue = DispatchQueue(label: label)
    }

    /// The next line without its newline, or nil at end of file.
    public func next() async -> String? {
        await withCheckedContinuation { continuation in
            queue.async { continuation.resume(returning: self.nextBlocking()) }
        }
    }

    private func nextBlocking() -> String? {
        while true {
            let line: String?? = buffer.withLockedValue { bytes in
                guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) else { return .none }
                let line = String(decoding: bytes[..<newline], as: UTF8.self)
                bytes.removeSubrange(...newline)
                return .some(line)
            }
            if let line { return line }
            let data = handle.availableData
            if data.isEmpty {
                // End of file: a last line without a newline still counts.
                let rest = buffer.withLockedValue { bytes in
                    defer { bytes.removeAll() }
                    return bytes
                }
                return rest.isEmpty ? nil : String(decoding: rest, as: UTF8.self)
            }
            buffer.withLockedValue { $0.append(contentsOf: data) }
        }
    }
}

/// Writes one line of JSON to a pipe (unbuffered, so the peer sees it at once).
public func writeJSONLine(_ value: some Encodable, to handle: FileHandle) throws {
    var data = try JSONEncoder().encode(value)
    data.append(UInt8(ascii: "\n"))
    try handle.write(contentsOf: data)
}

/// A request from a benchmark to its child process, one JSON object per line.
public protocol ChildCommandMessage: Codable, Sendable {
    /// What the command asks for; its raw value names it in error messages.
    associatedtype Operation: RawRepresentable<String>, Equatable
    var operation: Operation { get }
    /// The command that asks the child to exit (it acknowledges, then stops reading).
    static var quit: Self { get }
}

extension ChildCommandMessage {
    /// Whether this is ``quit``.
    public var isQuit: Bool { operation == Self.quit.operation }
    /// The operation's name, for error messages.
    public var operationName: String { operation.rawValue }
}

/// A child's answer to a ``ChildCommandMessage``, one JSON object per line.
public protocol ChildReplyMessage: Codable, Sendable {
    var ok: Bool { get set }
    /// What went wrong when `ok` is false.
    var error: String? { get set }
    /// A successful reply with nothing else filled in.
    init()
}

/// The child side of the protocol: reads commands from stdin until `quit` or end of file and answers each one on
/// stdout. `quit` is acknowledged with an `ok` reply; a command `handle` throws on is answered with a failed reply
/// naming the error, and the child keeps serving.
/// - Parameter handle: answers one command other than `quit`.
/// - Throws: ``BenchmarkError`` for a line that is not a command, or when stdout cannot be written.
public func serveChildCommands<Command: ChildCommandMessage, Reply: ChildReplyMessage>(
    label: String, handle: (Command) async throws -> Reply
) async throws {
    let reader = LineReader(.standardInput, label: label)
    while let line = await reader.next() {
        let command: Command
        do {
            command = try JSONDecoder().decode(Command.self, from: Data(line.utf8))
        } catch {
            throw BenchmarkError("unreadable command '\(line)': \(error)")
        }
        if command.isQuit {
            try writeJSONLine(Reply(), to: .standardOutput)
            return
        }
        let reply: Reply
        do {
            reply = try await handle(command)
        } catch {
            var failed = Reply()
            failed.ok = false
            failed.error = "\(error)"
            reply = failed
        }
        try writeJSONLine(reply, to: .standardOutput)
    }
}
