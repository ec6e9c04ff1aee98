import CApusSpawn
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Receives each line a child process writes (stdout and stderr share one pipe, in order), with the source it was
/// launched under (`ns/pod/container`).
public typealias ProcessLogSink = @Sendable (_ source: String, _ line: String) -> Void

/// Why a process could not be started.
public struct LaunchError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        /// `command[0]` is not an executable file on the container's `PATH` (or the path given).
        case executableNotFound
        /// fork/exec failed (the errno is in the message), or the launcher was shut down.
        case spawnFailed
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "LaunchError.\(code.rawValue): \(message)" }
}

/// How a child process ended.
public enum ProcessExit: Hashable, Sendable, CustomStringConvertible {
    case exited(code: Int32)
    case signaled(signal: Int32)
    /// Somebody else reaped it (e.g. a `waitpid(-1)` elsewhere in the process); the status is unknown.
    case lost

    public var isSuccess: Bool { self == .exited(code: 0) }

    public var description: String {
        switch self {
        case .exited(let code): "exit code \(code)"
        case .signaled(let signal): "killed by signal \(signal)"
        case .lost: "exit status unknown"
        }
    }
}

/// What to run.
public struct LaunchSpecification: Sendable, Hashable {
    /// `command[0]` is looked up on `environment["PATH"]` unless it contains a `/`.
    public var command: [String]
    public var environment: [String: String]
    public var workingDirectory: String?
    /// Prefix of every log line, `ns/pod/container`.
    public var logSource: String
    /// Where the process's output goes (truncated at launch; the launcher follows it for the sink). A file, unlike
    /// a pipe, outlives the controller: a process that survives a controller crash keeps logging instead of dying
    /// of SIGPIPE, and the restarted controller follows the same file. Nil: a pipe to the launcher.
    public var logFile: String?

    public init(
        command: [String], environment: [String: String], workingDirectory: String? = nil, logSource: String,
        logFile: String? = nil
    ) {
        self.command = command
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.logSource = logSource
        self.logFile = logFile
    }
}

/// A started child (or an adopted process): the leader of its own process group.
public final class RunningProcess: Sendable {
    public let pid: Int32
    /// The kernel's start time of the process (`/proc/<pid>/stat` field 22, clock ticks since boot): with the pid
    /// it names the process across controller restarts, where a pid alone may have been reused.
    public let startTime: UInt64?
    private let exit: Task<ProcessExit, Never>
    private let exitedFlag: NIOLockedValueBox<Bool>

    init(pid: Int32) {
        self.pid = pid
        self.startTime = ProcessTable.startTime(of: pid)
        let flag = NIOLockedValueBox(false)
        self.exitedFlag = flag
        self.exit = Task.detached {
            // Polling with WNOHANG touches only this pid, so it never steals another child's status from
            // Foundation's Process or NIO; 20 ms keeps crash detection well inside the restart budget.
            while true {
                var status: Int32 = 0
                let result = waitpid(pid, &status, WNOHANG)
                if result == pid {
                    flag.withLockedValue { $0 = true }
                    return RunningProcess.decode(status)
                }
                if result < 0 && errno != EINTR {
                    flag.withLockedValue { $0 = true }
                    return .lost
                }
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    /// A process an earlier controller started: not this process's child, so its exit is seen by polling the
    /// process table (status ``ProcessExit/lost``). Nil when no live process has that pid and start time.
    public static func adopt(pid: Int32, startTime: UInt64) -> RunningProcess? {
        guard pid > 1, ProcessTable.isAlive(pid: pid, startTime: startTime) else { return nil }
        return RunningProcess(adopting: pid, startTime: startTime)
    }

    private init(adopting pid: Int32, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
        let flag = NIOLockedValueBox(false)
        self.exitedFlag = flag
        self.exit = Task.detached {
            while ProcessTable.isAlive(pid: pid, startTime: startTime) {
                try? await Task.sleep(for: .milliseconds(50))
            }
            flag.withLockedValue { $0 = true }
            return .lost
        }
    }

    /// Whether the process has exited (without waiting).
    public var hasExited: Bool { exitedFlag.withLockedValue { $0 } }

    private static func decode(_ status: Int32) -> ProcessExit {
        let low = status & 0x7f
        if low == 0 { return .exited(code: (status >> 8) & 0xff) }
        return .signaled(signal: low)
    }

    /// Sends `signal` to the whole process group, so a shell's children stop with it.
    public func signalGroup(_ signal: Int32) {
        _ = killpg(pid, signal)
        // A process that left its group (setpgid) is signalled alone, while it is provably still the same process.
        if !hasExited, let startTime, ProcessTable.isAlive(pid: pid, startTime: startTime),
            getpgid(pid) != pid
        {
            _ = kill(pid, signal)
        }
    }

    /// Waits until the process has exited and been reaped.
    public func waitForExit() async -> ProcessExit { await exit.value }

    /// SIGTERM to the group, then SIGKILL after `grace` if it is still running.
    @discardableResult
    public func stop(grace: Duration) async -> ProcessExit {
        signalGroup(SIGTERM)
        let exited = await withTaskGroup(of: ProcessExit?.self) { group in
            group.addTask { await self.waitForExit() }
            group.addTask {
                try? await Task.sleep(for: grace)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        if let exited {
            // The leader is gone; stragglers of its group (a shell's background jobs) go too.
            signalGroup(SIGKILL)
            return exited
        }
        signalGroup(SIGKILL)
        return await waitForExit()
    }
}

/// Starts child processes for local mode.
///
/// Every child is started by one dedicated thread through the `apus_spawn` shim: it leads a new process group (so
/// stopping it stops whatever it forked), has default signal dispositions, sees only its own stdin (/dev/null)
/// and output pipe, and gets `SIGKILL` from the kernel when the controller dies (`PR_SET_PDEATHSIG`). The death
/// signal is tied to the *thread* that forked, which is why spawning never happens on a cooperative-pool thread
/// that may be retired: the launcher's thread lives until ``shutdown()``.
///
/// Output is read on the event loop, split into lines and handed to the sink.
public final class ProcessLauncher: Sendable {
    private let pool: NIOThreadPool
    private let group: any EventLoopGroup
    private let sink: ProcessLogSink
    private let parentDeathSignal: Int32

    /// - Parameter killOnParentDeath: deliver SIGKILL to children when this process dies (Linux).
    public init(
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, killOnParentDeath: Bool = true,
        sink: @escaping ProcessLogSink
    ) {
        self.pool = NIOThreadPool(numberOfThreads: 1)
        self.pool.start()
        self.group = group
        self.sink = sink
        self.parentDeathSignal = killOnParentDeath ? SIGKILL : 0
    }

    public func shutdown() async {
        try? await pool.shutdownGracefully()
    }

    /// Finds `name` on `path` (a `PATH` value) the way `execvp` would.
    public static func resolveExecutable(_ name: String, path: String?) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        for directory in (path ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            var info = stat()
            if stat(candidate, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        return nil
    }

    public func launch(_ specification: LaunchSpecification) async throws(LaunchError) -> RunningProcess {
        guard let name = specification.command.first, !name.isEmpty else {
            throw LaunchError(.executableNotFound, "\(specification.logSource): the container has no command")
        }
        guard let executable = Self.resolveExecutable(name, path: specification.environment["PATH"]) else {
            throw LaunchError(
                .executableNotFound,
                "\(specification.logSource): \(name) not found on PATH "
                    + "\(specification.environment["PATH"] ?? "(unset)")")
        }
        var descriptors: [Int32] = [0, 0]
        guard pipe(&descriptors) == 0 else {
            throw LaunchError(.spawnFailed, "pipe: \(String(cString: strerror(errno)))")
        }
        var (readEnd, writeEnd) = (descriptors[0], descriptors[1])
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)
        if let logFile = specification.logFile {
            close(readEnd)
            close(writeEnd)
            readEnd = -1
            writeEnd = open(logFile, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o644)
            guard writeEnd >= 0 else {
                throw LaunchError(
                    .spawnFailed, "cannot open the log file \(logFile): \(String(cString: strerror(errno)))")
            }
        }
        // argv[0] stays the name as written, as execvp would pass it.
        let arguments = [name] + specification.command.dropFirst()
        let environment = specification.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let workingDirectory = specification.workingDirectory
        let signal = parentDeathSignal
        let outputFD = writeEnd
        let result: Int32
        do {
            result = try await pool.runIfActive {
                Self.spawn(
                    executable: executable, arguments: arguments, environment: environment,
                    workingDirectory: workingDirectory, outputFD: outputFD, parentDeathSignal: signal)
            }
        } catch {
            if readEnd >= 0 { close(readEnd) }
            close(writeEnd)
            throw LaunchError(.spawnFailed, "\(specification.logSource): the launcher is shut down")
        }
        close(writeEnd)
        guard result > 0 else {
            if readEnd >= 0 { close(readEnd) }
            throw LaunchError(
                .spawnFailed,
                "\(specification.logSource): cannot start \(executable): \(String(cString: strerror(-result)))")
        }
        let process = RunningProcess(pid: result)
        if let logFile = specification.logFile {
            follow(logFile: logFile, from: 0, source: specification.logSource, until: process)
        } else {
            startReading(readEnd, source: specification.logSource)
        }
        return process
    }

    /// Hands the lines `process` writes to `logFile` (from byte `offset`; nil: the current end) to the sink, until
    /// the process has exited and the file is drained.
    public func follow(logFile: String, from offset: UInt64? = nil, source: String, until process: RunningProcess) {
        let sink = self.sink
        Task.detached {
            guard let handle = FileHandle(forReadingAtPath: logFile) else { return }
            defer { try? handle.close() }
            if let offset {
                try? handle.seek(toOffset: offset)
            } else {
                _ = try? handle.seekToEnd()
            }
            var lines = LineAccumulator()
            while true {
                let finished = process.hasExited
                while let data = try? handle.read(upToCount: 64 * 1024), !data.isEmpty {
                    for line in lines.append(data) { sink(source, line) }
                }
                if finished { break }
                try? await Task.sleep(for: .milliseconds(50))
            }
            if let last = lines.flush() { sink(source, last) }
        }
    }

    private static func spawn(
        executable: String, arguments: [String], environment: [String], workingDirectory: String?, outputFD: Int32,
        parentDeathSignal: Int32
    ) -> Int32 {
        withCStrings(arguments) { argv in
            withCStrings(environment) { envp in
                if let workingDirectory {
                    return apus_spawn(executable, argv, envp, workingDirectory, outputFD, parentDeathSignal)
                }
                return apus_spawn(executable, argv, envp, nil, outputFD, parentDeathSignal)
            }
        }
    }

    private static func withCStrings<T>(
        _ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>?) -> T
    ) -> T {
        let pointers = strings.map { strdup($0) } + [nil]
        defer { for pointer in pointers { free(pointer) } }
        return pointers.withUnsafeBufferPointer { buffer in body(buffer.baseAddress) }
    }

    private func startReading(_ descriptor: Int32, source: String) {
        let sink = self.sink
        let bootstrap = NIOPipeBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(LineSplitter(source: source, sink: sink))
                }
            }
        bootstrap.takingOwnershipOfDescriptor(input: descriptor).whenFailure { _ in
            close(descriptor)
        }
    }
}

/// Splits a child's output into lines for the sink; a partial last line is flushed when the pipe closes.
private final class LineSplitter: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let source: String
    private let sink: ProcessLogSink
    private var pending: [UInt8] = []
    /// One runaway line without a newline must not grow without bound.
    private static let maximumLine = 16 * 1024

    init(source: String, sink: @escaping ProcessLogSink) {
        self.source = source
        self.sink = sink
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        buffer.withUnsafeReadableBytes { bytes in
            for byte in bytes {
                if byte == UInt8(ascii: "\n") {
                    emit()
                } else {
                    pending.append(byte)
                    if pending.count >= Self.maximumLine { emit() }
                }
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !pending.isEmpty { emit() }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelEvent, case .inputClosed = event as? ChannelEvent {
            if !pending.isEmpty { emit() }
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func emit() {
        var line = String(decoding: pending, as: UTF8.self)
        if line.hasSuffix("\r") { line.removeLast() }
        pending.removeAll(keepingCapacity: true)
        sink(source, line)
    }
}

/// Splits bytes into lines (without the line break), bounding a runaway line without a newline.
struct LineAccumulator {
    private var pending: [UInt8] = []
    static let maximumLine = 16 * 1024

    mutating func append(_ data: Data) -> [String] {
        var lines: [String] = []
        for byte in data {
            if byte == UInt8(ascii: "\n") {
                lines.append(take())
            } else {
                pending.append(byte)
                if pending.count >= Self.maximumLine { lines.append(take()) }
            }
        }
        return lines
    }

    mutating func flush() -> String? { pending.isEmpty ? nil : take() }

    private mutating func take() -> String {
        var line = String(decoding: pending, as: UTF8.self)
        if line.hasSuffix("\r") { line.removeLast() }
        pending.removeAll(keepingCapacity: true)
        return line
    }
}

/// What `/proc` says about a process (Linux; elsewhere nothing is known and adoption never happens).
enum ProcessTable {
    /// Field 22 of `/proc/<pid>/stat`, and the state letter (field 3).
    static func stat(of pid: Int32) -> (state: Character, startTime: UInt64)? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return nil }
        let text = String(decoding: data, as: UTF8.self)
        // The command name (field 2) is in parentheses and may itself contain spaces or parentheses.
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let state = fields[0].first, let start = UInt64(fields[19]) else { return nil }
        return (state, start)
    }

    static func startTime(of pid: Int32) -> UInt64? { stat(of: pid)?.startTime }

    /// Whether `pid` is a live (not zombie) process that started at `startTime`.
    static func isAlive(pid: Int32, startTime: UInt64) -> Bool {
        guard let info = stat(of: pid) else { return false }
        return info.startTime == startTime && info.state != "Z" && info.state != "X"
    }
}
