import NIOHTTP1
import Testing

@testable import ApusProxy

/// The hop-by-hop rewrite runs twice per proxied request and was rewritten to allocate less; these pin what it
/// must keep doing (RFC 9110 §7.6.1): which headers leave, which stay, in which order.
struct HeadRewritingTests {
    private func names(_ headers: HTTPHeaders) -> [String] { headers.map { $0.name } }

    @Test func headersWithoutHopByHopNamesAreLeftAsTheyAre() {
        var headers = HTTPHeaders([("Host", "web:80"), ("Accept", "*/*"), ("X-Trace", "1")])
        HTTPHeadRewriting.stripHopByHop(&headers, keepTETrailers: false)
        #expect(names(headers) == ["Host", "Accept", "X-Trace"])
    }

    @Test func hopByHopHeadersAreRemovedInAnyCaseAndTheRestKeepsItsOrder() {
        var headers = HTTPHeaders([
            ("Server", "nginx"), ("CONNECTION", "keep-alive"), ("Date", "today"), ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"), ("proxy-authorization", "secret"), ("Upgrade", "h2c"),
            ("Content-Type", "text/plain"), ("Trailer", "grpc-status"),
        ])
        HTTPHeadRewriting.stripHopByHop(&headers, keepTETrailers: false)
        #expect(names(headers) == ["Server", "Date", "Content-Type"])
    }

    @Test func headersNamedByConnectionAreRemovedToo() {
        var headers = HTTPHeaders([
            ("Connection", "close, X-Secret ,\tx-other"), ("x-secret", "1"), ("X-Other", "2"), ("X-Kept", "3"),
            ("Close", "not named: close is an option, not a header"),
        ])
        HTTPHeadRewriting.stripHopByHop(&headers, keepTETrailers: false)
        #expect(names(headers) == ["X-Kept", "Close"])
    }

    @Test func teTrailersSurvivesOnlyWhenAsked() {
        var grpc = HTTPHeaders([("te", "Trailers"), ("content-type", "application/grpc")])
        HTTPHeadRewriting.stripHopByHop(&grpc, keepTETrailers: true)
        #expect(grpc.first(name: "te") == "trailers")
        #expect(grpc.first(name: "content-type") == "application/grpc")

        var plain = HTTPHeaders([("TE", "trailers, deflate"), ("accept", "*/*")])
        HTTPHeadRewriting.stripHopByHop(&plain, keepTETrailers: false)
        #expect(names(plain) == ["accept"])

        var other = HTTPHeaders([("TE", "deflate"), ("accept", "*/*")])
        HTTPHeadRewriting.stripHopByHop(&other, keepTETrailers: true)
        #expect(names(other) == ["accept"])
    }

    @Test func chunkedIsRecognisedOnlyAsTheLastCoding() {
        #expect(HTTPHeadRewriting.isChunked(HTTPHeaders([("Transfer-Encoding", "gzip, Chunked")])))
        #expect(!HTTPHeadRewriting.isChunked(HTTPHeaders([("Transfer-Encoding", "chunked, gzip")])))
        #expect(!HTTPHeadRewriting.isChunked(HTTPHeaders([("Content-Length", "5")])))
    }

    @Test func addressesBracketIPv6HostsOnly() {
        #expect(UpstreamTarget(host: "10.0.0.1", port: 80, httpProtocol: .http1).address == "10.0.0.1:80")
        #expect(UpstreamTarget(host: "::1", port: 8080, httpProtocol: .http1).address == "[::1]:8080")
        #expect(TargetAddress(host: "fe80::1", port: 443).description == "[fe80::1]:443")
        #expect(TargetAddress.parse("user@web:80") == nil)
        #expect(TargetAddress.parse("web:8080") == TargetAddress(host: "web", port: 8080))
    }
}
