import ApusCore
import AsyncHTTPClient
import BenchmarkSupport
import Foundation
import KubernetesClient
import NIOCore
import NIOFoundationCompat
import NIOSSL

/// The floors the informer's watch rate is compared with, measured on the same replayed batch in the same run.
enum Baselines {
    /// The raw bytes of the batch as they arrived, chunk by chunk, cut after the last wanted event.
    struct Capture {
        var chunks: [ByteBuffer]
        var events: Int
        var result: Report.Transfer
    }

    /// Reads the batch as a watch from `fromRevision` with AsyncHTTPClient (same TLS setup as the client) and
    /// only counts newlines: what the server and the transport can deliver, with no decoding at all.
    static func transfer(ready: ChildReady, fromRevision: String, events: Int) async throws -> Capture {
        let http = makeHTTPClient(ready: ready)
        do {
            let capture = try await read(http: http, ready: ready, fromRevision: fromRevision, events: events)
            try await http.shutdown()
            return capture
        } catch {
            try? await http.shutdown()
            throw error
        }
    }

    private static func read(http: HTTPClient, ready: ChildReady, fromRevision: String, events: Int) async throws
        -> Capture
    {
        var request = HTTPClientRequest(
            url: "\(ready.endpoint.baseURL)/api/v1/pods?watch=true&resourceVersion=\(fromRevision)")
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "Authorization", value: "Bearer \(ready.endpoint.token)")
        let response = try await http.execute(request, timeout: .seconds(600))
        guard response.status == .ok else {
            throw BenchmarkError("the transfer baseline's watch got HTTP \(response.status.code)")
        }
        var chunks: [ByteBuffer] = []
        var lines = 0
        var bytes = 0
        var first: ContinuousClock.Instant?
        var iterator = response.body.makeAsyncIterator()
        while lines < events, var chunk = try await iterator.next() {
            if first == nil { first = .now }
            let (count, end) = newlines(in: chunk, upTo: events - lines)
            if let end, let head = chunk.getSlice(at: chunk.readerIndex, length: end) { chunk = head }
            lines += count
            bytes += chunk.readableBytes
            chunks.append(chunk)
        }
        let last = ContinuousClock.now
        guard lines == events, let first else {
            throw BenchmarkError("the transfer baseline's watch ended after \(lines) of \(events) events")
        }
        let seconds = first.duration(to: last).seconds
        return Capture(
            chunks: chunks, events: events,
            result: Report.Transfer(
                events: events, bytes: bytes, eventsPerSecond: Double(events) / seconds,
                bytesPerSecond: Double(bytes) / seconds))
    }

    /// Counts newlines in `chunk`, stopping at the `limit`-th; `end` is the length up to and including it.
    private static func newlines(in chunk: ByteBuffer, upTo limit: Int) -> (count: Int, end: Int?) {
        chunk.withUnsafeReadableBytes { raw in
            var count = 0
            var offset = 0
            guard let base = raw.baseAddress else { return (0, nil) }
            while offset < raw.count {
                guard let found = memchr(base + offset, 0x0A, raw.count - offset) else { break }
                let position = base.distance(to: UnsafeRawPointer(found))
                count += 1
                offset = position + 1
                if count == limit { return (count, offset) }
            }
            return (count, nil)
        }
    }

    /// The shape of a watch line, decoded with synthesized `Decodable` straight into the client's `Pod`.
    private struct PlainWatchEvent: Decodable {
        var type: String
        var object: Pod
    }

    /// Decodes every line with one reused Foundation `JSONDecoder`, in a tight loop on one thread: the cost of
    /// the JSON decoding alone, with no framing, no error reporting and no store.
    static func foundationDecode(capture: Capture) throws -> Report.Decode {
        var all = ByteBuffer()
        for var chunk in capture.chunks { all.writeBuffer(&chunk) }
        var lines: [Data] = []
        lines.reserveCapacity(capture.events)
        while let newline = all.readableBytesView.firstIndex(of: 0x0A) {
            let length = newline - all.readerIndex
            if let line = all.readData(length: length) { lines.append(line) }
            all.moveReaderIndex(forwardBy: 1)
        }
        guard lines.count == capture.events else {
            throw BenchmarkError("captured \(lines.count) lines, expected \(capture.events)")
        }
        let decoder = JSONDecoder()
        let seconds = try fastestOfTwo {
            var modified = 0
            for line in lines {
                let event = try decoder.decode(PlainWatchEvent.self, from: line)
                if event.type == "MODIFIED", event.object.metadata.name != nil { modified += 1 }
            }
            guard modified == capture.events else {
                throw BenchmarkError("the decode baseline found \(modified) MODIFIED Pods in \(capture.events) lines")
            }
        }
        return Report.Decode(events: capture.events, eventsPerSecond: Double(capture.events) / seconds)
    }

    /// Runs `body` twice and returns the shorter time, so a first pass paying for page faults and cold caches
    /// does not understate a floor.
    private static func fastestOfTwo(_ body: () throws -> Void) throws -> Double {
        var best = Double.infinity
        for _ in 0..<2 {
            let started = ContinuousClock.now
            try body()
            best = min(best, started.duration(to: .now).seconds)
        }
        return best
    }

    /// Feeds the captured chunks, as they arrived, to the client's own `WatchEventDecoder<Pod>`: what the
    /// informer pays for framing and decoding, without the network, the store or the handlers.
    static func clientDecoder(capture: Capture) throws -> Report.Decode {
        let seconds = try fastestOfTwo {
            var decoder = WatchEventDecoder<Pod>()
            var decoded = 0
            for chunk in capture.chunks {
                for output in decoder.decode(chunk) {
                    switch output {
                    case .success(.modified): decoded += 1
                    case .success: break
                    case .failure(let error): throw BenchmarkError("WatchEventDecoder failed: \(error)")
                    }
                }
            }
            guard decoded == capture.events else {
                throw BenchmarkError("WatchEventDecoder produced \(decoded) MODIFIED events of \(capture.events)")
            }
        }
        return Report.Decode(events: capture.events, eventsPerSecond: Double(capture.events) / seconds)
    }

    /// Applies the batch, decoded beforehand, to a `StoreWriter` already holding every Pod it touches: the cost
    /// of the store update (dictionary, namespace index, change list) alone.
    static func storeApply(capture: Capture) throws -> Report.Decode {
        var decoder = WatchEventDecoder<Pod>()
        var pods: [Pod] = []
        pods.reserveCapacity(capture.events)
        for chunk in capture.chunks {
            for output in decoder.decode(chunk) {
                if case .success(.modified(let pod)) = output { pods.append(pod) }
            }
        }
        guard pods.count == capture.events else {
            throw BenchmarkError("decoded \(pods.count) Pods for the store reference, expected \(capture.events)")
        }
        let (store, writer) = Store<Pod>.make()
        writer.apply(.initStart)
        for pod in pods { writer.apply(.initApply(pod)) }
        writer.apply(.initDone)
        let distinct = store.count
        var changes = 0
        let seconds = try fastestOfTwo {
            for pod in pods { changes += writer.apply(.apply(pod)).count }
        }
        guard changes == 2 * capture.events, store.count == distinct else {
            throw BenchmarkError("the store reference reported \(changes) changes for \(2 * capture.events) applies")
        }
        return Report.Decode(events: capture.events, eventsPerSecond: Double(capture.events) / seconds)
    }

    // MARK: - List

    /// The pages of one full paginated list, as the server sent them.
    struct ListCapture {
        var pages: [ByteBuffer]
        var objects: Int
        var result: Report.Transfer
    }

    /// Fetches every page of the all-namespaces Pod list the way the informer does (`limit`, then `continue`)
    /// with AsyncHTTPClient and keeps the bodies without decoding them; the continue token is found by a byte
    /// search in the page's tail (the server writes `metadata` last).
    static func listTransfer(ready: ChildReady, pageSize: Int, objects: Int) async throws -> ListCapture {
        let http = makeHTTPClient(ready: ready)
        do {
            var pages: [ByteBuffer] = []
            var bytes = 0
            var token: String?
            let started = ContinuousClock.now
            repeat {
                var url = "\(ready.endpoint.baseURL)/api/v1/pods?limit=\(pageSize)"
                if let token { url += "&continue=\(token)" }
                var request = HTTPClientRequest(url: url)
                request.headers.add(name: "Accept", value: "application/json")
                request.headers.add(name: "Authorization", value: "Bearer \(ready.endpoint.token)")
                let response = try await http.execute(request, timeout: .seconds(120))
                guard response.status == .ok else {
                    throw BenchmarkError(
                        "the list transfer baseline got HTTP \(response.status.code) for page \(pages.count)")
                }
                let page = try await response.body.collect(upTo: 512 * 1024 * 1024)
                bytes += page.readableBytes
                pages.append(page)
                token = continueToken(in: page)
            } while token != nil
            let seconds = started.duration(to: .now).seconds
            try await http.shutdown()
            return ListCapture(
                pages: pages, objects: objects,
                result: Report.Transfer(
                    events: objects, bytes: bytes, eventsPerSecond: Double(objects) / seconds,
                    bytesPerSecond: Double(bytes) / seconds))
        } catch {
            try? await http.shutdown()
            throw error
        }
    }

    /// The value of the last `"continue":"…"` in the page, or nil when it is absent or empty.
    private static func continueToken(in page: ByteBuffer) -> String? {
        let tail =
            page.getBytes(
                at: page.readerIndex + max(0, page.readableBytes - 8192), length: min(8192, page.readableBytes)) ?? []
        let marker = Array(#""continue":""#.utf8)
        guard tail.count >= marker.count else { return nil }
        var start = tail.count - marker.count
        while start >= 0 {
            if tail[start..<start + marker.count].elementsEqual(marker) {
                let valueStart = start + marker.count
                guard let end = tail[valueStart...].firstIndex(of: UInt8(ascii: "\"")) else { return nil }
                let token = String(decoding: tail[valueStart..<end], as: UTF8.self)
                return token.isEmpty ? nil : token.addingPercentEncoding(withAllowedCharacters: .alphanumerics)
            }
            start -= 1
        }
        return nil
    }

    private struct PlainList: Decodable {
        var items: [Pod]
    }

    /// Decodes the captured pages with one reused `JSONDecoder` into `[Pod]`: the list's decoding cost alone.
    static func listDecode(capture: ListCapture) throws -> Report.Decode {
        let pages = capture.pages.map { Data(buffer: $0) }
        let decoder = JSONDecoder()
        let seconds = try fastestOfTwo {
            var objects = 0
            for page in pages { objects += try decoder.decode(PlainList.self, from: page).items.count }
            guard objects == capture.objects else {
                throw BenchmarkError("the list decode baseline found \(objects) Pods, expected \(capture.objects)")
            }
        }
        return Report.Decode(events: capture.objects, eventsPerSecond: Double(capture.objects) / seconds)
    }

    private static func makeHTTPClient(ready: ChildReady) -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.shutdownTimeout = .seconds(1)
        if ready.endpoint.baseURL.hasPrefix("https"),
            let roots = try? NIOSSLCertificate.fromPEMBytes(Array(ready.endpoint.caCertificatePEM.utf8))
        {
            tls.trustRoots = .certificates(roots)
        }
        return HTTPClient(
            eventLoopGroup: HTTPClient.defaultEventLoopGroup,
            configuration: HTTPClient.Configuration(
                tlsConfiguration: tls, redirectConfiguration: .disallow,
                timeout: .init(connect: .seconds(10), read: nil), decompression: .disabled))
    }
}
