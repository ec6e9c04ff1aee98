import Foundation

/// `--help` was given: print the usage and exit successfully.
public struct UsageRequested: Error {
    public init() {}
}

/// The flag that makes a benchmark binary run as its own API test server child (see ``ChildProcess``).
public let serveFlag = "--serve"

/// The entry point of a benchmark binary: `--serve …` runs the server child, anything else parses the flags and
/// runs the benchmark.
/// - Returns: the exit status: `run`'s, the child's, 0 after printing the usage for `--help`, 2 for bad flags.
public func benchmarkMain<Options: BenchmarkFlags>(
    _ arguments: [String], serve: ([String]) async -> Int32, run: (Options) async -> Int32
) async -> Int32 {
    if arguments.first == serveFlag { return await serve(Array(arguments.dropFirst())) }
    let options: Options
    do {
        options = try Options.parse(arguments)
    } catch is UsageRequested {
        print(Options.usage)
        return 0
    } catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        return 2
    }
    return await run(options)
}

/// A benchmark's command-line flags; the benchmark and its server child parse the same ones.
public protocol BenchmarkFlags: Sendable {
    init()
    static var usage: String { get }
    /// Serve the API over HTTPS (`--tls`, the default) or plain HTTP (`--no-tls`).
    var tls: Bool { get set }
    /// Print the report as one JSON object (`--json`).
    var json: Bool { get set }
    /// Consumes `flag` (and its value from `reader`) when it is one of this benchmark's own flags.
    /// - Returns: false for a flag it does not know.
    mutating func read(_ flag: String, from reader: inout ArgumentReader) throws -> Bool
    /// Checks the flags against each other once all are read.
    func validate() throws
}

extension BenchmarkFlags {
    public func validate() throws {}

    /// Handles the flags every benchmark has: `--tls`, `--no-tls`, `--json` and `-h`/`--help`.
    /// - Throws: ``UsageRequested`` for help, ``BenchmarkError`` for a flag the benchmark does not know.
    private mutating func readCommon(_ flag: String, reader: ArgumentReader) throws {
        switch flag {
        case "--tls": tls = true
        case "--no-tls": tls = false
        case "--json": json = true
        case "-h", "--help": throw UsageRequested()
        default: throw reader.unknown(flag)
        }
    }

    /// The flags in `arguments`, starting from the defaults.
    /// - Throws: ``UsageRequested`` for `--help`; ``BenchmarkError`` for an unknown flag, a bad value or flags
    ///   that do not fit together.
    public static func parse(_ arguments: [String]) throws -> Self {
        var options = Self()
        var reader = ArgumentReader(arguments, usage: usage)
        while let flag = reader.next() {
            if try !options.read(flag, from: &reader) { try options.readCommon(flag, reader: reader) }
        }
        try options.validate()
        return options
    }
}

/// Reads the values of numeric flags off the remaining arguments.
public struct ArgumentReader {
    /// The arguments not yet consumed.
    public var remaining: ArraySlice<String>
    private let usage: String

    public init(_ arguments: [String], usage: String) {
        remaining = arguments[...]
        self.usage = usage
    }

    /// The next argument (a flag or its value), or nil when all are consumed.
    public mutating func next() -> String? { remaining.popFirst() }

    /// The positive (or, with `allowingZero`, non-negative) number following `flag`; `_` may group digits.
    /// - Throws: ``BenchmarkError`` when it is missing or out of range.
    public mutating func count(after flag: String, allowingZero: Bool = false) throws -> Int {
        guard let text = remaining.popFirst() else { throw BenchmarkError("\(flag) needs a number\n\(usage)") }
        return try Self.number(text, flag: flag, allowingZero: allowingZero)
    }

    /// `text` as a positive (or, with `allowingZero`, non-negative) number given for `flag`; `_` may group digits.
    /// - Throws: ``BenchmarkError`` naming the flag when it is not such an integer.
    public static func number(_ text: String, flag: String, allowingZero: Bool = false) throws -> Int {
        let lowest = allowingZero ? 0 : 1
        guard let value = Int(text.replacingOccurrences(of: "_", with: "")), value >= lowest else {
            let kind = allowingZero ? "a non-negative" : "a positive"
            throw BenchmarkError("\(flag) must be \(kind) integer, got '\(text)'")
        }
        return value
    }

    /// The error for a flag the benchmark does not know, with the usage.
    public func unknown(_ flag: String) -> BenchmarkError { BenchmarkError("unknown argument '\(flag)'\n\(usage)") }

    /// The usage lines of the flags ``BenchmarkFlags`` handles, descriptions starting at `column`, and why the
    /// server runs in a child process (its RSS stays out of `measured`'s figures).
    public static func commonUsage(column: Int, measured: String) -> String {
        func flag(_ name: String, _ text: String) -> String {
            "  " + name.padding(toLength: column - 2, withPad: " ", startingAt: 0) + text
        }
        return [
            flag("--tls", "serve the API over HTTPS with a per-run CA (default)"),
            flag("--no-tls", "serve plain HTTP"),
            flag("--json", "print one JSON object instead of the table"),
            "",
            "The API test server runs in a child process (this binary with --serve), so the RSS figures are the",
            "\(measured)'s alone.",
        ].joined(separator: "\n")
    }
}

/// Prints a progress line on stderr (`… message`), keeping stdout for the report.
public func printProgress(_ message: String) {
    FileHandle.standardError.write(Data("… \(message)\n".utf8))
}

/// Runs a benchmark and prints its report on stdout, or its error on stderr as `<name> failed: <error>`.
/// - Returns: the exit status, 0 or 1.
public func runAndPrint(_ name: String, _ body: () async throws -> String) async -> Int32 {
    do {
        print(try await body())
        return 0
    } catch {
        FileHandle.standardError.write(Data("\(name) failed: \(error)\n".utf8))
        return 1
    }
}
