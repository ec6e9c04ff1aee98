#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Splits a byte stream into NDJSON lines; pure, so framing is tested without sockets.
public struct LineSplitter: Sendable {
    private var pending = Data()
    /// A frame longer than this is a protocol violation (a broken or hostile server), not a reason to grow forever.
    public let maximumLineLength: Int

    public init(maximumLineLength: Int = 16 << 20) {
        self.maximumLineLength = maximumLineLength
    }

    /// Appends `bytes` and returns the complete lines (without the newline), in order.
    public mutating func append(_ bytes: some Sequence<UInt8>) throws(DestinationClientError) -> [Data] {
        pending.append(contentsOf: bytes)
        var lines: [Data] = []
        while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
            let line = pending[pending.startIndex..<newline]
            if !line.isEmpty { lines.append(Data(line)) }
            pending.removeSubrange(pending.startIndex...newline)
        }
        if pending.count > maximumLineLength {
            throw DestinationClientError(.protocolViolation, "a frame exceeds \(maximumLineLength) bytes")
        }
        return lines
    }
}

/// The endpoint state a `Get` stream describes, rebuilt frame by frame.
///
/// A `snapshot` replaces everything (servers send one first and whenever a subscriber fell behind), `add`
/// inserts or replaces by `address:port`, `remove` deletes; versions never go backwards.
public struct EndpointStreamState: Sendable, Hashable {
    public private(set) var resolution: Resolution?
    public private(set) var version: UInt64 = 0

    public init() {}

    /// Applies one frame; returns whether the resolution changed.
    @discardableResult
    public mutating func apply(_ frame: EndpointFrame) throws(DestinationClientError) -> Bool {
        let before = resolution
        switch frame {
        case .heartbeat:
            return false
        case .snapshot(let version, let endpoints):
            try advance(to: version, allowEqual: false)
            resolution = .endpoints(Dictionary(endpoints.map { ($0.key, $0) }) { _, last in last })
        case .add(let version, let endpoints):
            guard case .endpoints(var set) = resolution else {
                throw DestinationClientError(.protocolViolation, "an add frame before any snapshot")
            }
            try advance(to: version, allowEqual: true)
            EndpointDiff(added: endpoints).apply(to: &set)
            resolution = .endpoints(set)
        case .remove(let version, let addresses):
            guard case .endpoints(var set) = resolution else {
                throw DestinationClientError(.protocolViolation, "a remove frame before any snapshot")
            }
            try advance(to: version, allowEqual: true)
            EndpointDiff(removed: addresses).apply(to: &set)
            resolution = .endpoints(set)
        case .noEndpoints(let version, _):
            try advance(to: version, allowEqual: false)
            resolution = .notFound
        case .external(let version, let host, let port):
            try advance(to: version, allowEqual: false)
            resolution = .external(host: host, port: port)
        }
        return resolution != before
    }

    /// Forgets the version (a new stream, e.g. after reconnecting to another server, numbers from 1 again) but
    /// keeps the resolution, which stays in force until the new stream's snapshot replaces it.
    public mutating func resetVersion() { version = 0 }

    private mutating func advance(to next: UInt64, allowEqual: Bool) throws(DestinationClientError) {
        // `add` and `remove` of one change share its version.
        guard next > version || (allowEqual && next == version) else {
            throw DestinationClientError(.protocolViolation, "frame version \(next) after version \(version)")
        }
        version = next
    }
}

/// Why a destination stream failed; the client reconnects after all of them.
public struct DestinationClientError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        /// The server sent something the protocol does not allow (bad JSON, versions going backwards).
        case protocolViolation
        /// The server answered with a non-200 status (the message carries its error text).
        case rejected
        /// No frame (not even a heartbeat) arrived within the idle timeout.
        case idleTimeout
        /// The server ended the stream.
        case streamEnded
        /// The proxy has no usable client certificate (not certified yet, or unparsable PEM); the server would
        /// refuse the connection.
        case noClientCertificate
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
    public var description: String { "DestinationClientError.\(code.rawValue): \(message)" }
}
