import Foundation

/// The API test server running as a child process of the benchmark (this binary with `--serve`).
///
/// A separate process keeps the server's copy of every object (and its event log) out of the benchmark's RSS,
/// so the memory figures are the client's alone.
final class ServerProcess {
    private let process: Process
    private let input: FileHandle
    private let output: LineReader

    var pid: Int32 { process.processIdentifier }

    /// Starts `<this executable> --serve <flags>`; its stderr is shared with ours so its errors stay visible.
    init(options: BenchmarkOptions) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.executablePath())
        process.arguments = ["--serve"] + options.arguments
        let stdin = Pipe()
        let stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        do {
            try process.run()
        } catch {
            throw BenchmarkError("cannot start the server child process: \(error)")
        }
        self.process = process
        self.input = stdin.fileHandleForWriting
        self.output = LineReader(stdout.fileHandleForReading, label: "apus.bench.destination.child-stdout")
    }

    /// Waits for the child to have started and seeded the server.
    func ready() async throws -> ChildReady {
        guard let line = await output.next() else {
            throw BenchmarkError("the server child exited before it was ready (see its error above)")
        }
        do {
            return try JSONDecoder().decode(ChildReady.self, from: Data(line.utf8))
        } catch {
            throw BenchmarkError("unexpected first line from the server child: '\(line.prefix(200))'")
        }
    }

    /// Sends one command and waits for the reply.
    /// - Throws: ``BenchmarkError`` when the child failed the command or died.
    @discardableResult
    func send(_ command: ChildCommand) async throws -> ChildReply {
        let operation = command.operation
        do {
            try writeJSONLine(command, to: input)
        } catch {
            throw BenchmarkError("cannot write to the server child (did it exit?): \(error)")
        }
        guard let line = await output.next() else {
            throw BenchmarkError("the server child exited while running '\(operation.rawValue)'")
        }
        let reply: ChildReply
        do {
            reply = try JSONDecoder().decode(ChildReply.self, from: Data(line.utf8))
        } catch {
            throw BenchmarkError("unreadable reply from the server child: '\(line.prefix(200))'")
        }
        guard reply.ok else {
            throw BenchmarkError("the server child failed '\(operation.rawValue)': \(reply.error ?? "no detail")")
        }
        return reply
    }

    /// Asks the child to exit and waits up to 10 s; terminates it (by its pid) if it does not.
    func stop() async {
        if process.isRunning {
            _ = try? await send(ChildCommand(operation: .quit))
        }
        try? input.close()
        let deadline = ContinuousClock.now + .seconds(10)
        while process.isRunning, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        if process.isRunning { process.terminate() }
    }

    private static func executablePath() throws -> String {
        if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return path }
        if let path = Bundle.main.executablePath { return path }
        throw BenchmarkError("cannot find this executable's path to start the server child")
    }
}
