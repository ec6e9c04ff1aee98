import ApusCore
import Foundation
import KubernetesClient
import Testing

@Suite("WatchEventDecoder")
struct UnitWatchDecoderTests {
    static func line(_ type: String, name: String, rv: String, data: String = "{}") -> String {
        #"{"type":"\#(type)","object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"\#(name)","#
            + #""namespace":"apus","resourceVersion":"\#(rv)"},"data":\#(data)}}"# + "\n"
    }

    static func names(_ outputs: [WatchEventDecoder<ConfigMap>.Output]) -> [String] {
        outputs.map { output in
            switch output {
            case .success(.added(let cm)): return "ADDED \(cm.metadata.name ?? "")"
            case .success(.modified(let cm)): return "MODIFIED \(cm.metadata.name ?? "")"
            case .success(.deleted(let cm)): return "DELETED \(cm.metadata.name ?? "")"
            case .success(.bookmark(let rv)): return "BOOKMARK \(rv)"
            case .success(.error(let error)): return "ERROR \(error.code)"
            case .failure(let error): return "FAILURE \(error.fieldPath ?? "-")"
            }
        }
    }

    @Test func decodesSeveralEventsInOneChunk() {
        var decoder = WatchEventDecoder<ConfigMap>()
        let chunk =
            Self.line("ADDED", name: "a", rv: "1") + Self.line("MODIFIED", name: "a", rv: "2")
            + Self.line("DELETED", name: "a", rv: "3")
        let outputs = decoder.decode(Array(chunk.utf8))
        #expect(Self.names(outputs) == ["ADDED a", "MODIFIED a", "DELETED a"])
        if case .success(.modified(let cm)) = outputs[1] {
            #expect(cm.metadata.resourceVersion == "2")
        } else {
            Issue.record("expected MODIFIED")
        }
        #expect(decoder.finish().isEmpty)
    }

    @Test func reassemblesEventsSplitAtEveryByte() {
        let stream =
            Self.line("ADDED", name: "a", rv: "1", data: #"{"k":"v\n with newline escape"}"#)
            + Self.line("ADDED", name: "b", rv: "2")
        let bytes = Array(stream.utf8)
        var decoder = WatchEventDecoder<ConfigMap>()
        var outputs: [WatchEventDecoder<ConfigMap>.Output] = []
        for byte in bytes { outputs += decoder.decode([byte]) }
        outputs += decoder.finish()
        #expect(Self.names(outputs) == ["ADDED a", "ADDED b"])
        if case .success(.added(let cm)) = outputs.first {
            #expect(cm.data?["k"] == "v\n with newline escape")
        }
    }

    @Test func splitsAcrossUnevenChunks() {
        let stream = Array(
            (Self.line("ADDED", name: "a", rv: "1") + Self.line("ADDED", name: "b", rv: "2")
                + Self.line("ADDED", name: "c", rv: "3")).utf8)
        var decoder = WatchEventDecoder<ConfigMap>()
        var outputs: [WatchEventDecoder<ConfigMap>.Output] = []
        var index = 0
        var size = 7
        while index < stream.count {
            let end = min(stream.count, index + size)
            outputs += decoder.decode(stream[index..<end])
            index = end
            size = size * 3 % 97 + 1
        }
        #expect(Self.names(outputs) == ["ADDED a", "ADDED b", "ADDED c"])
    }

    @Test func garbageLineIsReportedAndDecodingContinues() throws {
        var decoder = WatchEventDecoder<ConfigMap>()
        let chunk =
            Self.line("ADDED", name: "a", rv: "1") + "this is not json\n" + Self.line("ADDED", name: "b", rv: "2")
        let outputs = decoder.decode(Array(chunk.utf8))
        #expect(Self.names(outputs) == ["ADDED a", "FAILURE -", "ADDED b"])
        guard case .failure(let error) = outputs[1] else { throw FailureExpected() }
        #expect(error == .decoding)
        #expect(error.message.contains("line 2"))
        #expect(error.message.contains("not valid JSON"))
    }

    @Test func badFieldNamesItsPathAndObject() throws {
        var decoder = WatchEventDecoder<ConfigMap>()
        let bad = #"{"type":"ADDED","object":{"metadata":{"name":"broken","namespace":"apus","labels":{"a":7}}}}"#
        let outputs = decoder.decode(Array((bad + "\n" + Self.line("ADDED", name: "ok", rv: "5")).utf8))
        #expect(Self.names(outputs) == ["FAILURE object.metadata.labels.a", "ADDED ok"])
        guard case .failure(let error) = outputs[0] else { throw FailureExpected() }
        #expect(error.message.contains("apus/broken"))
    }

    @Test func truncatedObjectAtEndOfStreamIsReported() throws {
        var decoder = WatchEventDecoder<ConfigMap>()
        let full = Self.line("ADDED", name: "a", rv: "1")
        let truncated = String(Self.line("ADDED", name: "b", rv: "2").prefix(40))
        #expect(Self.names(decoder.decode(Array((full + truncated).utf8))) == ["ADDED a"])
        let tail = decoder.finish()
        #expect(tail.count == 1)
        guard case .failure(let error) = tail.first else { throw FailureExpected() }
        #expect(error == .decoding)
        #expect(error.message.contains("truncated"))
        // The decoder is reusable afterwards.
        #expect(Self.names(decoder.decode(Array(full.utf8))) == ["ADDED a"])
    }

    @Test func lastLineWithoutNewlineIsStillDecoded() {
        var decoder = WatchEventDecoder<ConfigMap>()
        let line = Self.line("ADDED", name: "a", rv: "1").dropLast()
        #expect(decoder.decode(Array(line.utf8)).isEmpty)
        #expect(Self.names(decoder.finish()) == ["ADDED a"])
    }

    @Test func unknownEventTypeIsATypedErrorAtFieldType() throws {
        var decoder = WatchEventDecoder<ConfigMap>()
        let outputs = decoder.decode(
            Array((#"{"type":"EXPLODED","object":{}}"# + "\n" + Self.line("ADDED", name: "a", rv: "1")).utf8))
        #expect(Self.names(outputs) == ["FAILURE type", "ADDED a"])
        guard case .failure(let error) = outputs[0] else { throw FailureExpected() }
        #expect(error.message.contains("EXPLODED"))
    }

    @Test func errorEventWith410BecomesGone() throws {
        var decoder = WatchEventDecoder<ConfigMap>()
        let line =
            #"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","#
            + #""message":"too old resource version: 5 (100)","reason":"Expired","code":410}}"# + "\n"
        let outputs = decoder.decode(Array(line.utf8))
        guard case .success(.error(let error)) = outputs.first else { throw FailureExpected() }
        #expect(error == .gone)
        #expect(error.message == "too old resource version: 5 (100)")
        #expect(error.httpStatus == 410)
    }

    @Test func bookmarkCarriesResourceVersionWithoutDecodingTheObject() {
        // EndpointSlice requires addressType; a bookmark has only metadata and must still decode.
        var decoder = WatchEventDecoder<EndpointSlice>()
        let line = #"{"type":"BOOKMARK","object":{"kind":"EndpointSlice","metadata":{"resourceVersion":"42"}}}"#
        let outputs = decoder.decode(Array((line + "\n").utf8))
        guard case .success(.bookmark(let rv)) = outputs.first else {
            Issue.record("expected a bookmark, got \(outputs)")
            return
        }
        #expect(rv == "42")
    }

    @Test func blankLinesAreIgnored() {
        var decoder = WatchEventDecoder<ConfigMap>()
        let outputs = decoder.decode(Array(("\n  \r\n" + Self.line("ADDED", name: "a", rv: "1")).utf8))
        #expect(Self.names(outputs) == ["ADDED a"])
    }

    @Test func oversizedLineIsSkippedNotBuffered() {
        var decoder = WatchEventDecoder<ConfigMap>(maximumLineLength: 300)
        let big = Array(Self.line("ADDED", name: String(repeating: "x", count: 400), rv: "1").utf8)
        var outputs = decoder.decode(big.prefix(350))
        outputs += decoder.decode(big.dropFirst(350))
        outputs += decoder.decode(Array(Self.line("ADDED", name: "a", rv: "2").utf8))
        #expect(Self.names(outputs) == ["FAILURE -", "ADDED a"])
    }
}

struct FailureExpected: Error {}
