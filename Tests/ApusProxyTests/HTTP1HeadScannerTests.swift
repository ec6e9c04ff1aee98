import Testing

@testable import ApusProxy

/// What the spliced path may forward as bytes and what it must leave to the codec path: every request a
/// forwarding proxy has to judge (smuggling shapes, limits, framing, upgrades, mesh headers) goes to the codec,
/// and a prefix of a valid head is never mistaken for a whole one.
struct HTTP1HeadScannerTests {
    private func scanRequest(_ text: String, maxHeaderBytes: Int = 65536, maxHeaderCount: Int = 100)
        -> (HTTP1HeadScanner.RequestScan, [Range<Int>])
    {
        var dropped: [Range<Int>] = []
        let scan = Array(text.utf8).withUnsafeBytes {
            HTTP1HeadScanner.scanRequest(
                $0, maxHeaderBytes: maxHeaderBytes, maxHeaderCount: maxHeaderCount, dropped: &dropped)
        }
        return (scan, dropped)
    }

    private func scanResponse(_ text: String, requestIsHEAD: Bool = false)
        -> (HTTP1HeadScanner.ResponseScan, [Range<Int>])
    {
        var dropped: [Range<Int>] = []
        let scan = Array(text.utf8).withUnsafeBytes {
            HTTP1HeadScanner.scanResponse($0, requestIsHEAD: requestIsHEAD, maxHeaderBytes: 65536, dropped: &dropped)
        }
        return (scan, dropped)
    }

    private func isCodecPath(_ scan: HTTP1HeadScanner.RequestScan) -> Bool {
        if case .codecPath = scan { return true }
        return false
    }

    @Test func aPlainKeepAliveRequestIsForwardedAsItIs() throws {
        let text = "GET /items?id=1 HTTP/1.1\r\nHost: web.shop:8080\r\nUser-Agent: t\r\nContent-Length: 5\r\n\r\nhello"
        let (scan, dropped) = scanRequest(text)
        guard case .request(let head) = scan else {
            Issue.record("not accepted: \(scan)")
            return
        }
        #expect(head.length == text.utf8.count - 5)
        let bytes = Array(text.utf8)
        #expect(String(decoding: bytes[head.host], as: UTF8.self) == "web.shop:8080")
        #expect(head.contentLength == 5)
        #expect(!head.close && !head.isHEAD && head.isIdempotent)
        #expect(dropped.isEmpty)
    }

    @Test func theConnectionLineIsDroppedAndCloseIsNoted() throws {
        let text = "HEAD / HTTP/1.1\r\nhost: a:1\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        let (scan, dropped) = scanRequest(text)
        guard case .request(let head) = scan else {
            Issue.record("not accepted: \(scan)")
            return
        }
        #expect(head.close && head.isHEAD)
        let bytes = Array(text.utf8)
        #expect(dropped.map { String(decoding: bytes[$0], as: UTF8.self) } == ["Connection: close\r\n"])
        let post = scanRequest("POST / HTTP/1.1\r\nHost: a:1\r\nConnection: keep-alive\r\n\r\n")
        guard case .request(let postHead) = post.0 else {
            Issue.record("not accepted: \(post.0)")
            return
        }
        #expect(!postHead.close && !postHead.isIdempotent && post.1.count == 1)
    }

    @Test(
        arguments: [
            // Framing and smuggling shapes: the codec path refuses or handles them.
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            // Upgrades and hop-by-hop headers other than `Connection: keep-alive|close`.
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-private\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: timeout=5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic eA==\r\n\r\n",
            // The mesh's own headers: added, checked or stripped by the codec path.
            "GET / HTTP/1.1\r\nHost: a\r\nl5d-dst-override: b.ns.svc.cluster.local:80\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nl5d-client-id: forged\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nl5d-orig-proto: HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\napus-orig-dst-port: 8080\r\n\r\n",
            // Authority: none, twice, empty, or in the target.
            "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            // Versions, methods and line syntax the codec judges.
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "get / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\nAccept: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\u{01}b\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ])
    func requestsThatNeedJudgementGoToTheCodecPath(_ text: String) {
        #expect(isCodecPath(scanRequest(text).0), "\(text.debugDescription)")
    }

    @Test func headsOverTheLimitsGoToTheCodecPathWhichAnswers431() {
        let many = "GET / HTTP/1.1\r\nHost: a\r\n" + String(repeating: "X-A: 1\r\n", count: 5) + "\r\n"
        #expect(isCodecPath(scanRequest(many, maxHeaderCount: 5).0))
        let long = "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + String(repeating: "b", count: 2000) + "\r\n\r\n"
        #expect(isCodecPath(scanRequest(long, maxHeaderBytes: 1024).0))
        // Still incomplete but already over the limit: no waiting for more.
        let unfinished = "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + String(repeating: "b", count: 2000)
        #expect(isCodecPath(scanRequest(unfinished, maxHeaderBytes: 1024).0))
    }

    @Test func everyPrefixOfAValidHeadIsIncomplete() {
        let text = "DELETE /a/b HTTP/1.1\r\nHost: a:80\r\nConnection: keep-alive\r\nX-Empty:\r\n\r\n"
        let bytes = Array(text.utf8)
        for length in 0..<bytes.count {
            var dropped: [Range<Int>] = []
            let scan = bytes[..<length].withUnsafeBytes {
                HTTP1HeadScanner.scanRequest($0, maxHeaderBytes: 65536, maxHeaderCount: 100, dropped: &dropped)
            }
            guard case .incomplete = scan else {
                Issue.record("prefix of \(length) bytes: \(scan)")
                return
            }
        }
        guard case .request(let head) = scanRequest(text).0 else {
            Issue.record("whole head not accepted")
            return
        }
        #expect(head.length == bytes.count && head.isIdempotent)
    }

    // MARK: Responses

    private func response(_ text: String, requestIsHEAD: Bool = false) -> HTTP1HeadScanner.Response? {
        guard case .response(let head) = scanResponse(text, requestIsHEAD: requestIsHEAD).0 else { return nil }
        return head
    }

    @Test func responseFramingFollowsRFC9112() throws {
        let length = try #require(response("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"))
        #expect(length.framing == .length(12) && length.reusable && length.status == 200)
        let chunked = try #require(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"))
        #expect(chunked.framing == .chunked && chunked.reusable)
        // Transfer-Encoding wins over Content-Length, and such a connection is not reused.
        let both = try #require(response("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"))
        #expect(both.framing == .chunked && !both.reusable)
        let untilClose = try #require(response("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"))
        #expect(untilClose.framing == .untilClose && !untilClose.reusable)
        let head = try #require(response("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", requestIsHEAD: true))
        #expect(head.framing == .none && head.reusable)
        #expect(try #require(response("HTTP/1.1 204 No Content\r\n\r\n")).framing == .none)
        #expect(try #require(response("HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n")).framing == .none)
        let hints = try #require(response("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"))
        #expect(hints.isInformational && hints.framing == .none)
        let old = try #require(response("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n"))
        #expect(old.isHTTP10 && !old.reusable)
        let oldKeepAlive = try #require(
            response("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n"))
        #expect(oldKeepAlive.reusable)
        let closing = try #require(response("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n"))
        #expect(!closing.reusable)
        let noReason = try #require(response("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"))
        #expect(noReason.framing == .none)
    }

    @Test func hopByHopResponseLinesAndTheOnesConnectionNamesAreDropped() {
        let text =
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
            + "Content-Length: 2\r\nx-hop: again\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\nX-Kept: 1\r\n\r\n"
        let (scan, dropped) = scanResponse(text)
        guard case .response = scan else {
            Issue.record("not accepted: \(scan)")
            return
        }
        let bytes = Array(text.utf8)
        let names = dropped.map { String(decoding: bytes[$0], as: UTF8.self).split(separator: ":")[0].lowercased() }
        #expect(names == ["connection", "x-hop", "keep-alive", "x-hop", "upgrade"])
    }

    @Test(
        arguments: [
            "HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n",
            "garbage that is long\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Header: 1\r\n\r\n", "HTTP/1.1 200 OK\r\nA: 1\nB: 2\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ])
    func malformedResponsesAreReported(_ text: String) {
        guard case .malformed = scanResponse(text).0 else {
            Issue.record("accepted: \(text.debugDescription)")
            return
        }
    }

    // MARK: Chunked bodies

    private func consume(_ chunks: [[UInt8]]) -> (taken: Int, done: Bool)? {
        var scanner = ChunkedBodyScanner()
        var taken = 0
        for chunk in chunks {
            guard let consumed = chunk.withUnsafeBytes({ scanner.consume($0) }) else { return nil }
            taken += consumed
            if scanner.isDone { break }
        }
        return (taken, scanner.isDone)
    }

    @Test func chunkedBodyEndIsFoundWhereverTheReadsSplitIt() throws {
        let body = "5;ext=1\r\nhello\r\n1A\r\n" + String(repeating: "z", count: 26) + "\r\n0\r\nx-trailer: t\r\n\r\n"
        let next = "HTTP/1.1 200 OK\r\n"
        let bytes = Array((body + next).utf8)
        let whole = try #require(consume([bytes]))
        #expect(whole.done && whole.taken == body.utf8.count)
        for split in 1..<body.utf8.count {
            let parts = try #require(consume([Array(bytes[..<split]), Array(bytes[split...])]))
            #expect(parts.done && parts.taken == body.utf8.count, "split at \(split)")
        }
        let byteByByte = try #require(consume(bytes.map { [$0] }))
        #expect(byteByByte.done && byteByByte.taken == body.utf8.count)
    }

    @Test(arguments: ["x\r\n", "5\r\nhelloX\r\n", "5\nhello\r\n", "\r\n", "FFFFFFFFFFFFFFFF\r\n", "0\r\nbad\n"])
    func chunkedFramingErrorsAreReported(_ text: String) {
        #expect(consume([Array(text.utf8)]) == nil, "\(text.debugDescription)")
    }
}
