/// Reads HTTP/1.1 heads where they lie in a read buffer, for the spliced path (``HTTP1SpliceHandler``): it finds
/// the few things forwarding needs — the end of the head, `Host`, `Content-Length`, the body framing, the lines a
/// proxy must not pass on — as offsets, and builds no header list or string.
///
/// The request side is deliberately narrow: it recognises the common, unambiguous request (`HTTP/1.1`,
/// origin-form target, one `Host`, at most one `Content-Length`, no `Transfer-Encoding`, `Expect`, `Upgrade` or
/// other hop-by-hop or mesh header) and says ``RequestScan/codecPath`` for anything else, so every request that
/// needs judgement — malformed, smuggling-shaped, over a limit, chunked, an upgrade, routed — is handled by the
/// full codec path exactly as before. The response side cannot hand over (the request is already sent), so it
/// accepts what an HTTP/1.1 client must and calls the rest malformed.
enum HTTP1HeadScanner {
    /// A request head the spliced path can forward as it is. Offsets are from the start of the head.
    struct Request {
        /// Bytes of the head, final empty line included.
        var length: Int
        var host: Range<Int>
        var contentLength: Int
        /// `Connection: close`: answer this request, then close.
        var close: Bool
        var isHEAD: Bool
        /// Safe to send again on a new connection when a pooled one turns out stale (RFC 9110 §9.2.2).
        var isIdempotent: Bool
    }

    enum RequestScan {
        /// The head is not complete yet (and within the size limit).
        case incomplete
        /// The full codec path must take this request (and the rest of the connection).
        case codecPath
        case request(Request)
    }

    /// How a response body ends (RFC 9112 §6.3).
    enum Framing: Equatable {
        case none
        case length(Int)
        case chunked
        /// Read until the server closes the connection.
        case untilClose
    }

    struct Response {
        var length: Int
        var status: Int
        /// `HTTP/1.0`: the status line's version is rewritten to `HTTP/1.1` towards the client.
        var isHTTP10: Bool
        var framing: Framing
        /// The upstream connection can carry another request after this response.
        var reusable: Bool
        /// 1xx other than 101: another head follows.
        var isInformational: Bool { status < 200 }
    }

    enum ResponseScan {
        case incomplete
        case malformed(String)
        case response(Response)
    }

    // MARK: Requests

    /// Scans the request head at the start of `bytes`. `dropped` receives the ranges of lines not to forward
    /// (`Connection: keep-alive|close`).
    static func scanRequest(
        _ bytes: UnsafeRawBufferPointer, maxHeaderBytes: Int, maxHeaderCount: Int, dropped: inout [Range<Int>]
    ) -> RequestScan {
        dropped.removeAll(keepingCapacity: true)
        let count = bytes.count
        // Request line: METHOD SP /target SP HTTP/1.1 CRLF, with a method of capital letters.
        var index = 0
        while index < count, bytes[index] >= UInt8(ascii: "A"), bytes[index] <= UInt8(ascii: "Z") { index += 1 }
        let methodEnd = index
        guard index < count else { return methodEnd > 16 ? .codecPath : .incomplete }
        guard methodEnd > 0, bytes[index] == UInt8(ascii: " ") else { return .codecPath }
        index += 1
        guard index < count else { return .incomplete }
        guard bytes[index] == UInt8(ascii: "/") else { return .codecPath }
        while index < count, bytes[index] > 0x20, bytes[index] < 0x7F { index += 1 }
        guard index + 11 <= count else { return count > maxHeaderBytes ? .codecPath : .incomplete }
        guard matches(bytes, at: index, " HTTP/1.1\r\n") else { return .codecPath }
        index += 11
        let isHEAD = methodEnd == 4 && matches(bytes, at: 0, "HEAD")
        let isIdempotent =
            (methodEnd == 3 && (matches(bytes, at: 0, "GET") || matches(bytes, at: 0, "PUT"))) || isHEAD
            || (methodEnd == 6 && matches(bytes, at: 0, "DELETE"))
            || (methodEnd == 7 && matches(bytes, at: 0, "OPTIONS"))

        var host: Range<Int>?
        var contentLength: Int?
        var close = false
        var headers = 0
        while true {
            guard index < count else { return count > maxHeaderBytes ? .codecPath : .incomplete }
            if bytes[index] == UInt8(ascii: "\r") {
                guard index + 1 < count else { return .incomplete }
                guard bytes[index + 1] == UInt8(ascii: "\n") else { return .codecPath }
                index += 2
                break
            }
            guard let line = scanHeaderLine(bytes, from: index) else {
                return count > maxHeaderBytes ? .codecPath : .incomplete
            }
            guard let line else { return .codecPath }
            headers += 1
            guard headers <= maxHeaderCount, line.end <= maxHeaderBytes else { return .codecPath }
            switch classifyRequestHeader(bytes, name: index..<line.nameEnd) {
            case .other:
                break
            case .host:
                guard host == nil, !line.value.isEmpty else { return .codecPath }
                host = line.value
            case .contentLength:
                guard contentLength == nil, let length = decimal(bytes, line.value) else { return .codecPath }
                contentLength = length
            case .connection:
                if equalsLowercase(bytes, line.value, "close") {
                    close = true
                } else if !equalsLowercase(bytes, line.value, "keep-alive") {
                    return .codecPath
                }
                dropped.append(index..<line.end)
            case .codecPath:
                return .codecPath
            }
            index = line.end
        }
        guard let host else { return .codecPath }
        return .request(
            Request(
                length: index, host: host, contentLength: contentLength ?? 0, close: close, isHEAD: isHEAD,
                isIdempotent: isIdempotent))
    }

    private enum RequestHeader {
        case other, host, contentLength, connection, codecPath
    }

    /// Header names that decide how the request is forwarded: everything hop-by-hop (RFC 9110 §7.6.1), the
    /// framing and expectation headers, and the mesh's own headers, which the codec path adds, checks or strips.
    private static func classifyRequestHeader(_ bytes: UnsafeRawBufferPointer, name: Range<Int>) -> RequestHeader {
        switch name.count {
        case 2: return equalsLowercase(bytes, name, "te") ? .codecPath : .other
        case 4: return equalsLowercase(bytes, name, "host") ? .host : .other
        case 6: return equalsLowercase(bytes, name, "expect") ? .codecPath : .other
        case 7:
            return equalsLowercase(bytes, name, "upgrade") || equalsLowercase(bytes, name, "trailer")
                ? .codecPath : .other
        case 10:
            if equalsLowercase(bytes, name, "connection") { return .connection }
            return equalsLowercase(bytes, name, "keep-alive") ? .codecPath : .other
        case 13: return equalsLowercase(bytes, name, ProxyHeaders.clientIdentity) ? .codecPath : .other
        case 14:
            if equalsLowercase(bytes, name, "content-length") { return .contentLength }
            return equalsLowercase(bytes, name, ProxyHeaders.originalProtocol)
                || equalsLowercase(bytes, name, "http2-settings") ? .codecPath : .other
        case 16:
            return equalsLowercase(bytes, name, "proxy-connection")
                || equalsLowercase(bytes, name, ProxyHeaders.destinationOverride) ? .codecPath : .other
        case 17: return equalsLowercase(bytes, name, "transfer-encoding") ? .codecPath : .other
        case 18:
            return equalsLowercase(bytes, name, "proxy-authenticate")
                || equalsLowercase(bytes, name, ProxyHeaders.originalDestinationPort) ? .codecPath : .other
        case 19: return equalsLowercase(bytes, name, "proxy-authorization") ? .codecPath : .other
        default: return .other
        }
    }

    // MARK: Responses

    /// Scans the response head at the start of `bytes`, sent in answer to a request that was (`requestIsHEAD`)
    /// or was not a HEAD. `dropped` receives the ranges of the hop-by-hop lines (and those `Connection` names).
    /// `Transfer-Encoding` stays: the body is relayed as it came.
    static func scanResponse(
        _ bytes: UnsafeRawBufferPointer, requestIsHEAD: Bool, maxHeaderBytes: Int, dropped: inout [Range<Int>]
    ) -> ResponseScan {
        dropped.removeAll(keepingCapacity: true)
        let count = bytes.count
        guard count >= 13 else { return .incomplete }
        guard matches(bytes, at: 0, "HTTP/1."), bytes[7] == UInt8(ascii: "1") || bytes[7] == UInt8(ascii: "0"),
            bytes[8] == UInt8(ascii: " ")
        else { return .malformed("not an HTTP/1.x status line") }
        let isHTTP10 = bytes[7] == UInt8(ascii: "0")
        var status = 0
        for offset in 9..<12 {
            let digit = bytes[offset] &- UInt8(ascii: "0")
            guard digit < 10 else { return .malformed("status code is not three digits") }
            status = status * 10 + Int(digit)
        }
        guard status >= 100 else { return .malformed("status code \(status)") }
        guard status != 101 else { return .malformed("101 Switching Protocols to a request that did not upgrade") }
        var index = 12
        guard bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\r") else {
            return .malformed("status code is not three digits")
        }
        while index < count, bytes[index] != UInt8(ascii: "\r") {
            guard bytes[index] >= 0x20 || bytes[index] == 0x09, bytes[index] != 0x7F else {
                return .malformed("control character in the reason phrase")
            }
            index += 1
        }
        guard index + 1 < count else { return count > maxHeaderBytes ? .malformed("head too large") : .incomplete }
        guard bytes[index + 1] == UInt8(ascii: "\n") else { return .malformed("CR without LF") }
        index += 2

        var contentLength: Int?
        var chunked = false
        var transferEncoding = false
        var close = isHTTP10
        var namesOthers = false
        var connectionValues: [Range<Int>] = []
        while true {
            guard index < count else { return count > maxHeaderBytes ? .malformed("head too large") : .incomplete }
            if bytes[index] == UInt8(ascii: "\r") {
                guard index + 1 < count else { return .incomplete }
                guard bytes[index + 1] == UInt8(ascii: "\n") else { return .malformed("CR without LF") }
                index += 2
                break
            }
            guard let line = scanHeaderLine(bytes, from: index) else {
                return count > maxHeaderBytes ? .malformed("head too large") : .incomplete
            }
            guard let line else { return .malformed("invalid header line") }
            guard line.end <= maxHeaderBytes else { return .malformed("head too large") }
            let name = index..<line.nameEnd
            if equalsLowercase(bytes, name, "content-length") {
                guard let length = decimal(bytes, line.value) else { return .malformed("invalid Content-Length") }
                guard contentLength == nil || contentLength == length else {
                    return .malformed("conflicting Content-Length values")
                }
                contentLength = length
            } else if equalsLowercase(bytes, name, "transfer-encoding") {
                transferEncoding = true
                chunked = lastTokenIsChunked(bytes, line.value)
            } else if equalsLowercase(bytes, name, "connection") {
                dropped.append(index..<line.end)
                forEachToken(bytes, line.value) { token in
                    if equalsLowercase(bytes, token, "close") {
                        close = true
                    } else if equalsLowercase(bytes, token, "keep-alive") {
                        if isHTTP10 { close = false }
                    } else {
                        namesOthers = true
                    }
                }
                if namesOthers { connectionValues.append(line.value) }
            } else if isResponseHopByHop(bytes, name) {
                dropped.append(index..<line.end)
            }
            index = line.end
        }
        if namesOthers {
            dropNamedHeaders(bytes, headEnd: index, connectionValues: connectionValues, dropped: &dropped)
        }

        let framing: Framing
        if status < 200 || status == 204 || status == 304 || requestIsHEAD {
            framing = .none
        } else if transferEncoding {
            framing = chunked ? .chunked : .untilClose
        } else if let contentLength {
            framing = contentLength == 0 ? .none : .length(contentLength)
        } else {
            framing = .untilClose
        }
        // Both framings at once: the length is ignored and the connection must not be reused (RFC 9112 §6.3).
        let reusable = !close && framing != .untilClose && !(transferEncoding && contentLength != nil)
        return .response(
            Response(length: index, status: status, isHTTP10: isHTTP10, framing: framing, reusable: reusable))
    }

    /// The hop-by-hop names a response drops (`Transfer-Encoding` is not among them here: see ``scanResponse``).
    private static func isResponseHopByHop(_ bytes: UnsafeRawBufferPointer, _ name: Range<Int>) -> Bool {
        switch name.count {
        case 2: equalsLowercase(bytes, name, "te")
        case 7: equalsLowercase(bytes, name, "trailer") || equalsLowercase(bytes, name, "upgrade")
        case 10: equalsLowercase(bytes, name, "keep-alive")
        case 16: equalsLowercase(bytes, name, "proxy-connection")
        case 18: equalsLowercase(bytes, name, "proxy-authenticate")
        case 19: equalsLowercase(bytes, name, "proxy-authorization")
        default: false
        }
    }

    /// Second pass for a `Connection` header that names other headers (rare): drops each line they name.
    private static func dropNamedHeaders(
        _ bytes: UnsafeRawBufferPointer, headEnd: Int, connectionValues: [Range<Int>], dropped: inout [Range<Int>]
    ) {
        var named: [Range<Int>] = []
        for value in connectionValues {
            forEachToken(bytes, value) { token in
                if !equalsLowercase(bytes, token, "close") && !equalsLowercase(bytes, token, "keep-alive") {
                    named.append(token)
                }
            }
        }
        var index = 0
        while index < headEnd, bytes[index] != UInt8(ascii: "\n") { index += 1 }
        index += 1
        while index < headEnd - 2, let scanned = scanHeaderLine(bytes, from: index), let line = scanned {
            let name = index..<line.nameEnd
            if named.contains(where: { equalsIgnoringCase(bytes, name, $0) }),
                !dropped.contains(where: { $0.lowerBound == index })
            {
                dropped.append(index..<line.end)
            }
            index = line.end
        }
        dropped.sort { $0.lowerBound < $1.lowerBound }
    }

    // MARK: Lines and tokens

    struct HeaderLine {
        var nameEnd: Int
        /// The value without surrounding whitespace.
        var value: Range<Int>
        /// Just after the line's CRLF.
        var end: Int
    }

    /// The header line starting at `start`: nil when it is not complete yet, `.some(nil)` when it is not a valid
    /// `token ":" OWS value OWS CRLF` line (no obs-fold, no bare LF, no control characters).
    static func scanHeaderLine(_ bytes: UnsafeRawBufferPointer, from start: Int) -> HeaderLine?? {
        let count = bytes.count
        var index = start
        while index < count, isTokenByte(bytes[index]) { index += 1 }
        guard index < count else { return nil }
        guard index > start, bytes[index] == UInt8(ascii: ":") else { return .some(nil) }
        let nameEnd = index
        index += 1
        while index < count, bytes[index] == UInt8(ascii: " ") || bytes[index] == 0x09 { index += 1 }
        let valueStart = index
        var valueEnd = index
        while index < count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\r") { break }
            guard byte >= 0x20 || byte == 0x09, byte != 0x7F else { return .some(nil) }
            if byte != UInt8(ascii: " ") && byte != 0x09 { valueEnd = index + 1 }
            index += 1
        }
        guard index + 1 < count else { return nil }
        guard bytes[index + 1] == UInt8(ascii: "\n") else { return .some(nil) }
        return HeaderLine(nameEnd: nameEnd, value: valueStart..<valueEnd, end: index + 2)
    }

    /// RFC 9110 `tchar`.
    @inline(__always)
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
            UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
            UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            true
        default:
            false
        }
    }

    /// A `Content-Length` value: digits only, no sign, no list, at most 18 digits.
    static func decimal(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        guard !range.isEmpty, range.count <= 18 else { return nil }
        var value = 0
        for index in range {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            value = value * 10 + Int(digit)
        }
        return value
    }

    /// Calls `body` with each non-empty element of a comma-separated list, without its whitespace.
    static func forEachToken(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ body: (Range<Int>) -> Void) {
        var start = range.lowerBound
        while start < range.upperBound {
            var end = start
            while end < range.upperBound, bytes[end] != UInt8(ascii: ",") { end += 1 }
            var lower = start
            var upper = end
            while lower < upper, bytes[lower] == UInt8(ascii: " ") || bytes[lower] == 0x09 { lower += 1 }
            while upper > lower, bytes[upper - 1] == UInt8(ascii: " ") || bytes[upper - 1] == 0x09 { upper -= 1 }
            if lower < upper { body(lower..<upper) }
            start = end + 1
        }
    }

    private static func lastTokenIsChunked(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        var last: Range<Int>?
        forEachToken(bytes, range) { last = $0 }
        guard let last else { return false }
        return equalsLowercase(bytes, last, "chunked")
    }

    @inline(__always)
    static func matches(_ bytes: UnsafeRawBufferPointer, at offset: Int, _ literal: StaticString) -> Bool {
        let length = literal.utf8CodeUnitCount
        guard offset + length <= bytes.count else { return false }
        let pointer = literal.utf8Start
        for index in 0..<length where bytes[offset + index] != pointer[index] { return false }
        return true
    }

    /// `bytes[range]` equals `lowercase` (lower-case ASCII) ignoring ASCII case.
    @inline(__always)
    static func equalsLowercase(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercase: StaticString)
        -> Bool
    {
        equalsLowercase(
            bytes, range, UnsafeBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount))
    }

    @inline(__always)
    static func equalsLowercase(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercase: String) -> Bool {
        guard range.count == lowercase.utf8.count else { return false }
        return lowercase.utf8.withContiguousStorageIfAvailable { equalsLowercase(bytes, range, $0) } ?? false
    }

    @inline(__always)
    private static func equalsLowercase(
        _ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercase: UnsafeBufferPointer<UInt8>
    ) -> Bool {
        guard range.count == lowercase.count else { return false }
        var index = 0
        while index < lowercase.count {
            let byte = bytes[range.lowerBound + index]
            let expected = lowercase[index]
            if byte != expected
                && !(expected >= UInt8(ascii: "a") && expected <= UInt8(ascii: "z") && byte | 0x20 == expected)
            {
                return false
            }
            index += 1
        }
        return true
    }

    private static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ lhs: Range<Int>, _ rhs: Range<Int>)
        -> Bool
    {
        guard lhs.count == rhs.count else { return false }
        for offset in 0..<lhs.count {
            let a = bytes[lhs.lowerBound + offset]
            let b = bytes[rhs.lowerBound + offset]
            if a != b && !(a | 0x20 == b | 0x20 && (a | 0x20) >= UInt8(ascii: "a") && (a | 0x20) <= UInt8(ascii: "z")) {
                return false
            }
        }
        return true
    }
}

/// Follows a chunked body (RFC 9112 §7.1) as its bytes pass, to find where the message ends; it checks the
/// framing but keeps nothing.
struct ChunkedBodyScanner {
    private enum State {
        case size(value: Int, digits: Int)
        case sizeExtension
        case sizeLF(last: Bool)
        case data(remaining: Int)
        case dataCR
        case dataLF
        case trailerLineStart
        case trailerLine
        case trailerLineLF
        case finalLF
        case done
    }

    private var state = State.size(value: 0, digits: 0)
    private var lineBytes = 0
    /// Bound on a chunk-size line with extensions and on a trailer line.
    static let maximumLine = 8192

    var isDone: Bool {
        if case .done = state { return true }
        return false
    }

    /// Consumes the body's bytes at the start of `bytes`: how many belong to it (fewer than `bytes.count` only
    /// when the body ended there), or nil for a framing error.
    mutating func consume(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var index = 0
        let count = bytes.count
        while index < count {
            switch state {
            case .data(let remaining):
                let take = min(remaining, count - index)
                index += take
                state = take == remaining ? .dataCR : .data(remaining: remaining - take)
                continue
            case .done:
                return index
            default:
                break
            }
            let byte = bytes[index]
            index += 1
            switch state {
            case .size(let value, let digits):
                if let digit = Self.hexValue(byte) {
                    guard digits < 15 else { return nil }
                    state = .size(value: value << 4 | digit, digits: digits + 1)
                } else if digits > 0 && (byte == UInt8(ascii: ";") || byte == UInt8(ascii: " ") || byte == 0x09) {
                    lineBytes = 0
                    state = .sizeExtension
                    pendingSize = value
                } else if digits > 0 && byte == UInt8(ascii: "\r") {
                    pendingSize = value
                    state = .sizeLF(last: value == 0)
                } else {
                    return nil
                }
            case .sizeExtension:
                lineBytes += 1
                guard lineBytes < Self.maximumLine else { return nil }
                if byte == UInt8(ascii: "\r") {
                    state = .sizeLF(last: pendingSize == 0)
                } else if byte == UInt8(ascii: "\n") {
                    return nil
                }
            case .sizeLF(let last):
                guard byte == UInt8(ascii: "\n") else { return nil }
                state = last ? .trailerLineStart : .data(remaining: pendingSize)
            case .dataCR:
                guard byte == UInt8(ascii: "\r") else { return nil }
                state = .dataLF
            case .dataLF:
                guard byte == UInt8(ascii: "\n") else { return nil }
                state = .size(value: 0, digits: 0)
            case .trailerLineStart:
                if byte == UInt8(ascii: "\r") {
                    state = .finalLF
                } else {
                    lineBytes = 1
                    state = .trailerLine
                }
            case .trailerLine:
                lineBytes += 1
                guard lineBytes < Self.maximumLine else { return nil }
                if byte == UInt8(ascii: "\r") {
                    state = .trailerLineLF
                } else if byte == UInt8(ascii: "\n") {
                    return nil
                }
            case .trailerLineLF:
                guard byte == UInt8(ascii: "\n") else { return nil }
                state = .trailerLineStart
            case .finalLF:
                guard byte == UInt8(ascii: "\n") else { return nil }
                state = .done
                return index
            case .data, .done:
                break
            }
        }
        return index
    }

    private var pendingSize = 0

    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }
}
