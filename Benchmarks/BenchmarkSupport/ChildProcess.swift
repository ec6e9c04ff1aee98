import Foundation

/// A child process of the benchmark (this same executable with other arguments) spoken to over its stdin and
/// stdout, one JSON object per line: first a `Ready` line, then one `Reply` per `Command`.
///
/// Running the API test server in a child keeps the server's copy of every object out of the benchmark's RSS, so
/// the memory figures are the measured component's alone.
public final class ChildProcess<Ready: Decodable, Command: ChildCommandMessage, Reply: ChildReplyMessage> {
    private let process: Process
    private let input: FileHandle
    private let output: LineReader

    public var pid: Int32 { process.processIdentifier }

    /// Starts `<this executable> --serve <arguments>`; its stderr is shared with ours so its errors stay visible.
    /// - Parameter outputLabel: the label of the queue that reads the child's stdout.
    public init(serving arguments: [String], outputLabel: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try currentExecutablePath())
        process.arguments = [serveFlag] + arguments
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
        self.output = LineReader(stdout.fileHandleForReading, label: outputLabel)
    }

    /// Waits for the child to have started and seeded the server.
    public func ready() async throws -> Ready {
        guard let line = await output.next() else {
            throw BenchmarkError("the server child exited before it was ready (see its error above)")
        }
        do {
            return try JSONDecoder().decode(Ready.self, from: Data(line.utf8))
        } catch {
            throw BenchmarkError("unexpected first line from the server child: '\(line.prefix(200))'")
        }
    }

    /// Sends one command and waits for the reply.
    /// - Throws: ``BenchmarkError`` when the child failed the command or died.
    @discardableResult
    public func send(_ command: Command) async throws -> Reply {
        let operation = command.operationName
        do {
            try writeJSONLine(command, to: input)
        } catch {
            throw BenchmarkError("cannot write to the server child (did it exit?): \(error)")
        }
        guard let line = await output.next() else {
            throw BenchmarkError("the server child exited while running '\(operation)'")
        }
        let reply: Reply
        do {
            reply = try JSONDecoder().decode(Reply.self, from: Data(line.utf8))
        } catch {
            throw BenchmarkError("unreadable reply from the server child: '\(line.prefix(200))'")
        }
        guard reply.ok else {
            throw BenchmarkError("the server child failed '\(operation)': \(reply.error ?? "no detail")")
        }
        return reply
    }

    /// Runs `body` with the child, then stops it, whether `body` throws or not.
    public func stopping<Result>(after body: (ChildProcess) async throws -> Result) async throws -> Result {
        let result: Result
        do {
            result = try await body(self)
        } catch {
            await stop()
            throw error
        }
        await stop()
        return result
    }

    /// Asks the child to exit and waits up to 10 s; terminates it (by its pid) if it does not.
    public func stop() async {
        if process.isRunning {
            _ = try? await send(.quit)
        }
        try? input.close()
        let deadline = ContinuousClock.now + .seconds(10)
        while process.isRunning, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        if process.isRunning { process.terminate() }
    }
}

/// The path of the running benchmark binary, to start it again as a `--serve` child.
public func currentExecutablePath() throws -> String {
    if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return path }
    if let path = Bundle.main.executablePath { return path }
    throw BenchmarkError("cannot find this executable's path to start the server child")
}
