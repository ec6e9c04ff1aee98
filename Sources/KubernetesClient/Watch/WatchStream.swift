import AsyncHTTPClient
import NIOCore

/// The events of one open watch request, decoded as the response body streams in (never buffered whole).
///
/// The sequence ends when the server closes the watch (its `timeoutSeconds` passed, or it restarted); it throws
/// ``KubernetesError`` `.transport` when the connection breaks. An `ERROR` event is delivered as
/// ``WatchEvent/error(_:)`` and the server closes the stream after it. Iterate it once.
public struct WatchStream<Object: Decodable & Sendable>: AsyncSequence, Sendable {
    public typealias Element = WatchEvent<Object>

    private let body: HTTPClientResponse.Body
    private let onDecodingError: @Sendable (KubernetesError) -> Void

    init(body: HTTPClientResponse.Body, onDecodingError: @escaping @Sendable (KubernetesError) -> Void) {
        self.body = body
        self.onDecodingError = onDecodingError
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(body: body.makeAsyncIterator(), onDecodingError: onDecodingError)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        private var body: HTTPClientResponse.Body.AsyncIterator
        private var decoder = WatchEventDecoder<Object>()
        private var ready: [WatchEventDecoder<Object>.Output] = []
        private var readyIndex = 0
        private var finished = false
        private let onDecodingError: @Sendable (KubernetesError) -> Void

        init(
            body: HTTPClientResponse.Body.AsyncIterator,
            onDecodingError: @escaping @Sendable (KubernetesError) -> Void
        ) {
            self.body = body
            self.onDecodingError = onDecodingError
        }

        public mutating func next() async throws -> WatchEvent<Object>? {
            while true {
                while readyIndex < ready.count {
                    let output = ready[readyIndex]
                    readyIndex += 1
                    switch output {
                    case .success(let event): return event
                    case .failure(let error): onDecodingError(error)
                    }
                }
                ready.removeAll(keepingCapacity: true)
                readyIndex = 0
                if finished { return nil }
                let chunk: ByteBuffer?
                do {
                    chunk = try await body.next()
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    finished = true
                    throw KubernetesError.transport(error)
                }
                if let chunk {
                    ready = decoder.decode(chunk)
                } else {
                    finished = true
                    ready = decoder.finish()
                }
            }
        }
    }
}
