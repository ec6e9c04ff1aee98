import ApusCore
import Foundation
import NIOCore
import NIOFoundationCompat

/// One event of a watch stream (`watch.Event`).
public enum WatchEvent<Object: Sendable>: Sendable {
    case added(Object)
    case modified(Object)
    case deleted(Object)
    /// A progress marker carrying only a resourceVersion: resume from here after a disconnect.
    case bookmark(resourceVersion: String)
    /// The server ended the watch with a `Status`; `.gone` means the resourceVersion is too old (relist).
    case error(KubernetesError)

    /// The object of an added, modified or deleted event.
    public var object: Object? {
        switch self {
        case .added(let object), .modified(let object), .deleted(let object): return object
        case .bookmark, .error: return nil
        }
    }
}

/// Turns the bytes of a watch response (newline-delimited JSON) into events, chunk by chunk.
///
/// Pure and synchronous so it is tested without a server. Chunks may split an event anywhere or carry several;
/// a line that fails to decode yields a `.failure` naming the line, the field path and the object when it can be
/// identified, and decoding continues with the next line, so one bad object never ends a watch.
///
/// ```swift
/// var decoder = WatchEventDecoder<ConfigMap>()
/// for try await chunk in response.body {
///     for result in decoder.decode(chunk) { handle(result) }
/// }
/// for result in decoder.finish() { handle(result) }  // reports a truncated last event
/// ```
public struct WatchEventDecoder<Object: Decodable & Sendable>: Sendable {
    public typealias Output = Result<WatchEvent<Object>, KubernetesError>

    private var pending = ByteBuffer()
    private var lineNumber = 0
    private var discardingOversizedLine = false
    private let maximumLineLength: Int

    /// - Parameter maximumLineLength: a line longer than this is reported and skipped instead of buffered
    ///   without bound (the API server's own limit on an object is about 1.5 MiB; the default leaves room).
    public init(maximumLineLength: Int = 64 * 1024 * 1024) {
        self.maximumLineLength = maximumLineLength
    }

    /// Feeds one chunk; returns the events completed by it, in order.
    public mutating func decode(_ chunk: ByteBuffer) -> [Output] {
        var chunk = chunk
        var outputs: [Output] = []
        while chunk.readableBytes > 0 {
            guard let newline = chunk.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
                if discardingOversizedLine { return outputs }
                pending.writeBuffer(&chunk)
                if pending.readableBytes > maximumLineLength {
                    lineNumber += 1
                    outputs.append(.failure(oversized()))
                    pending.clear()
                    discardingOversizedLine = true
                }
                return outputs
            }
            let length = newline - chunk.readerIndex
            guard var line = chunk.readSlice(length: length) else { break }
            chunk.moveReaderIndex(forwardBy: 1)
            if discardingOversizedLine {
                discardingOversizedLine = false
                continue
            }
            lineNumber += 1
            if pending.readableBytes > 0 {
                pending.writeBuffer(&line)
                if pending.readableBytes > maximumLineLength {
                    outputs.append(.failure(oversized()))
                } else if let output = decodeLine(pending) {
                    outputs.append(output)
                }
                pending.clear()
            } else if line.readableBytes > maximumLineLength {
                outputs.append(.failure(oversized()))
            } else if let output = decodeLine(line) {
                outputs.append(output)
            }
        }
        return outputs
    }

    /// Convenience for tests and non-NIO callers.
    public mutating func decode(_ bytes: some Sequence<UInt8>) -> [Output] {
        decode(ByteBuffer(bytes: Array(bytes)))
    }

    /// Call at the end of the stream: a final line without a newline is decoded if it is complete JSON and
    /// reported as truncated otherwise.
    public mutating func finish() -> [Output] {
        defer {
            pending.clear()
            discardingOversizedLine = false
        }
        guard pending.readableBytes > 0, !isBlank(pending) else { return [] }
        lineNumber += 1
        let line = pending
        switch decodeLine(line) {
        case .some(.failure(let error)) where error.fieldPath == nil:
            return [
                .failure(
                    KubernetesError(
                        code: .decoding,
                        message: "watch stream ended inside an event at line \(lineNumber) "
                            + "(\(line.readableBytes) bytes, truncated object): \(error.message)"))
            ]
        case .some(let output): return [output]
        case .none: return []
        }
    }

    private func oversized() -> KubernetesError {
        KubernetesError(
            code: .decoding, message: "watch event at line \(lineNumber) exceeds \(maximumLineLength) bytes; skipped")
    }

    private func isBlank(_ buffer: ByteBuffer) -> Bool {
        buffer.readableBytesView.allSatisfy { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D || $0 == 0x0A }
    }

    private func decodeLine(_ line: ByteBuffer) -> Output? {
        if isBlank(line) { return nil }
        let decoder = JSONDecoder()
        do {
            return .success(try decoder.decode(WatchLine<Object>.self, from: line).event)
        } catch let error as DecodingError {
            var message = "watch event at line \(lineNumber)"
            if let identity = try? decoder.decode(WatchLineIdentity.self, from: line) {
                message += " (\(identity.summary))"
            }
            var path = decodingErrorFieldPath(error)
            if case .dataCorrupted(let context) = error, context.codingPath.isEmpty {
                message += " is not valid JSON"
                path = nil
            }
            return .failure(
                KubernetesError(
                    code: .decoding, message: "\(message): \(decodingErrorSummary(error))", fieldPath: path))
        } catch {
            return .failure(KubernetesError(code: .decoding, message: "watch event at line \(lineNumber): \(error)"))
        }
    }
}

/// `{"type": …, "object": …}` decoded in one pass: the type decides how the object is read, so bookmarks
/// (which carry only metadata) and ERROR Status objects do not need to decode as `Object`.
private struct WatchLine<Object: Decodable & Sendable>: Decodable {
    let event: WatchEvent<Object>

    enum CodingKeys: String, CodingKey { case type, object }

    private struct Bookmark: Decodable {
        struct Metadata: Decodable { var resourceVersion: String? }
        var metadata: Metadata?
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let type = try container.decode(String.self, forKey: .type)
        switch type {
        case "ADDED": event = .added(try container.decode(Object.self, forKey: .object))
        case "MODIFIED": event = .modified(try container.decode(Object.self, forKey: .object))
        case "DELETED": event = .deleted(try container.decode(Object.self, forKey: .object))
        case "BOOKMARK":
            let bookmark = try container.decode(Bookmark.self, forKey: .object)
            guard let resourceVersion = bookmark.metadata?.resourceVersion, !resourceVersion.isEmpty else {
                throw DecodingError.keyNotFound(
                    WatchLineIdentity.Key.resourceVersion,
                    .init(
                        codingPath: [CodingKeys.object, WatchLineIdentity.Key.metadata],
                        debugDescription: "BOOKMARK without metadata.resourceVersion"))
            }
            event = .bookmark(resourceVersion: resourceVersion)
        case "ERROR":
            let status = try container.decode(Status.self, forKey: .object)
            event = .error(KubernetesError.fromStatus(status))
        default:
            throw DecodingError.dataCorruptedError(
                forKey: .type, in: container,
                debugDescription: "unknown watch event type '\(type)' (expected ADDED, MODIFIED, DELETED, BOOKMARK "
                    + "or ERROR)")
        }
    }
}

/// Best-effort identification of a line that failed to decode, for the error message.
private struct WatchLineIdentity: Decodable {
    enum Key: String, CodingKey { case type, object, metadata, namespace, name, resourceVersion }

    var type: String?
    var namespace: String?
    var name: String?

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        type = try? container.decodeIfPresent(String.self, forKey: .type)
        let object = try? container.nestedContainer(keyedBy: Key.self, forKey: .object)
        let metadata = try? object?.nestedContainer(keyedBy: Key.self, forKey: .metadata)
        namespace = try? metadata?.decodeIfPresent(String.self, forKey: .namespace)
        name = try? metadata?.decodeIfPresent(String.self, forKey: .name)
    }

    var summary: String {
        var parts: [String] = []
        if let type { parts.append(type) }
        if let name { parts.append(ObjectKey(namespace: namespace, name: name).description) }
        return parts.isEmpty ? "unidentified" : parts.joined(separator: " ")
    }
}
