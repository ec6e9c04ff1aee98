import ApusCore
import ApusInjector
import Foundation
import Testing

/// The webhook's fast JSON path must read exactly what Foundation reads, refuse what it cannot vouch for (so the
/// webhook falls back to Foundation's error messages), and write JSON that Foundation reads back unchanged.
@Suite struct JSONBytesTests {
    /// Documents covering every JSON construct, parsed both ways.
    static let documents: [String] = [
        #"{"a":1,"b":[true,false,null],"c":{"d":"e"},"f":-0.5,"g":1e3,"h":-12,"i":0}"#,
        #"  [ 1 , 2.25 ,  "x" ,{ } ,[ ] ]  "#,
        #"{"escapes":"quote \" backslash \\ slash \/ \b\f\n\r\t \u0041\u00e9\u20ac \ud83d\ude00"}"#,
        #"{"utf8":"grüße 日本 😀","empty":""}"#,
        #"{"big":12345678901234567890,"small":1.5e-300,"digits":123456789012345678,"exp":2E+2}"#,
        #"{"nul":"a\u0000b"}"#,
        #""just a string""#,
        "3.14159",
    ]

    @Test("reads every construct exactly as Foundation's JSONDecoder does", arguments: documents)
    func matchesFoundation(text: String) throws {
        let expected = try JSONValue(json: Data(text.utf8))
        #expect(try JSONBytes.parse(Array(text.utf8)) == expected)
    }

    @Test("an AdmissionReview-sized pod reads the same both ways")
    func matchesFoundationOnAPod() throws {
        let pod = InjectorDecisionTests.pod(annotations: ["config.linkerd.io/proxy-log-level": "debug"])
        let bytes = Array(try pod.jsonData())
        #expect(try JSONBytes.parse(bytes) == pod)
    }

    /// Foundation would refuse most of these too; the rest (duplicate keys, deep nesting) are left to it so its
    /// behaviour, not a second opinion, decides.
    static let refused: [(String, [UInt8])] = [
        ("empty", []),
        ("trailing bytes", Array(#"{"a":1} x"#.utf8)),
        ("duplicate member", Array(#"{"a":1,"a":2}"#.utf8)),
        ("leading zero", Array("[01]".utf8)),
        ("bare fraction", Array("[.5]".utf8)),
        ("trailing comma", Array("[1,]".utf8)),
        ("single quotes", Array("{'a':1}".utf8)),
        ("lone high surrogate", Array(#"["\ud83d"]"#.utf8)),
        ("lone low surrogate", Array(#"["\ude00"]"#.utf8)),
        ("raw control character", Array("[\"a\nb\"]".utf8)),
        ("invalid UTF-8", [0x5B, 0x22, 0xC3, 0x28, 0x22, 0x5D]),
        ("unterminated string", Array(#"["abc"#.utf8)),
        ("unknown escape", Array(#"["\x"]"#.utf8)),
        ("number out of range", Array("[1e400]".utf8)),
        ("truncated literal", Array("[tru".utf8)),
        ("byte order mark", [0xEF, 0xBB, 0xBF] + Array("{}".utf8)),
        ("too deep", Array(String(repeating: "[", count: 600).utf8) + Array(String(repeating: "]", count: 600).utf8)),
    ]

    @Test("refuses anything but plain RFC 8259 JSON", arguments: refused)
    func refuses(name: String, bytes: [UInt8]) {
        #expect(throws: JSONBytes.SyntaxError.self, "\(name)") { try JSONBytes.parse(bytes) }
    }

    @Test("nesting up to the limit is read")
    func nestingAtTheLimit() throws {
        let depth = JSONBytes.maximumDepth
        let bytes = Array(String(repeating: "[", count: depth).utf8) + Array(String(repeating: "]", count: depth).utf8)
        var value = try JSONBytes.parse(bytes)
        var levels = 0
        while case .array(let elements) = value {
            levels += 1
            value = elements.first ?? .null
        }
        #expect(levels == depth)
    }

    @Test("writes compact JSON with sorted keys that Foundation reads back unchanged")
    func writesWhatFoundationReads() throws {
        let value: JSONValue = .object([
            "z": .array([.number(1), .number(-2.5), .number(1e20), .number(-0.0), .bool(true), .null]),
            "a": .string("line\nbreak \"quoted\" back\\slash tab\t bell\u{7} /path é 😀"),
            "m": .object([:]),
        ])
        var output: [UInt8] = []
        try JSONBytes.write(value, into: &output)
        let text = String(decoding: output, as: UTF8.self)
        #expect(
            text.hasPrefix(
                #"{"a":"line\nbreak \"quoted\" back\\slash tab\t bell\u0007 /path é 😀","m":{},"z":[1,"#))
        #expect(try JSONValue(json: Data(output)) == value)
        #expect(try JSONBytes.parse(output) == value)
    }

    @Test("a number JSON cannot carry is an error, not output")
    func nonFiniteNumbers() {
        var output: [UInt8] = []
        #expect(throws: JSONBytes.WriteError.self) { try JSONBytes.write(.number(.nan), into: &output) }
        #expect(throws: JSONBytes.WriteError.self) {
            try JSONBytes.encode([.add("/a", .array([.number(.infinity)]))])
        }
    }

    @Test("patches encode the members each operation needs and decode back to the same operations")
    func patchEncoding() throws {
        let operations: [JSONPatchOperation] = [
            .add("/metadata/annotations/linkerd.io~1inject", .string("enabled")),
            .add("/spec/nullable", .null),
            .remove("/spec/volumes/0"),
            .replace("/spec/x", .object(["k": .array([.number(2102)])])),
            JSONPatchOperation(op: .move, path: "/b", from: "/a"),
            JSONPatchOperation(op: .test, path: "/c", value: .bool(false)),
        ]
        let bytes = try JSONBytes.encode(operations)
        #expect(try JSONDecoder().decode([JSONPatchOperation].self, from: Data(bytes)) == operations)
        let json = try JSONValue(json: Data(bytes))
        #expect(
            json.arrayValue?[1] == .object(["op": .string("add"), "path": .string("/spec/nullable"), "value": .null]))
        #expect(json.arrayValue?[2] == .object(["op": .string("remove"), "path": .string("/spec/volumes/0")]))
    }

    @Test("an injected pod's patch written by JSONBytes is the one Foundation writes")
    func injectionPatchMatchesFoundation() throws {
        let injector = ProxyInjector(defaults: InjectorDefaults(trustAnchorsPEM: "-----BEGIN CERTIFICATE-----\nx\n"))
        let result = injector.inject(
            podJSON: InjectorDecisionTests.pod(), namespace: InjectorDecisionTests.namespace(inject: "enabled"))
        #expect(result.decision.isInject)
        let fast = try JSONValue(json: Data(try JSONBytes.encode(result.patch)))
        let foundation = try JSONValue(json: try JSONEncoder().encode(result.patch))
        #expect(fast == foundation)
    }
}

/// Operations edit the document in place; the caller's copy must not see it, and a failing operation must not
/// leave half an edit behind.
@Suite struct JSONPatchInPlaceTests {
    let document: JSONValue = .object([
        "spec": .object(["containers": .array([.object(["name": .string("app")])])]),
        "metadata": .object(["labels": .object(["app": .string("web")])]),
    ])

    @Test("applying a patch leaves the original document unchanged")
    func valueSemantics() throws {
        let original = document
        let patched = try JSONPatch.apply(
            [
                .add("/spec/containers/0/image", .string("app:1")),
                .add("/metadata/labels/tier", .string("front")),
                .remove("/spec/containers/0/name"),
            ], to: document)
        #expect(document == original)
        #expect(patched["spec"]?["containers"]?.arrayValue?.first == .object(["image": .string("app:1")]))
        #expect(patched["metadata"]?["labels"]?["tier"] == .string("front"))
    }

    @Test("errors keep their wording: the missing member, the bad index, the non-container")
    func errorMessages() {
        func reason(_ operation: JSONPatchOperation) -> String? {
            do {
                _ = try JSONPatch.apply([operation], to: document)
                return nil
            } catch {
                return error.reason
            }
        }
        #expect(reason(.add("/nope/x", .null)) == #"no member "nope""#)
        #expect(reason(.add("/spec/containers/3/x", .null)) == "index 3 is out of bounds (1 elements)")
        #expect(reason(.add("/spec/containers/-/x", .null)) == #""-" names no existing element"#)
        #expect(
            reason(.add("/metadata/labels/app/x", .null)) == #"the parent of "x" is neither an object nor an array"#)
        #expect(
            reason(.add("/metadata/labels/app/x/y", .null))
                == #""x" is below a value that is neither an object nor an array"#)
        #expect(reason(.remove("/metadata/labels/tier")) == #"no member "tier""#)
        #expect(reason(.replace("/spec/containers/1", .null)) == "index 1 is out of bounds (1 elements)")
        #expect(reason(.remove("")) == "cannot remove the whole document")
    }

    @Test("replacing the whole document and array elements")
    func replace() throws {
        #expect(try JSONPatch.apply([.replace("", .number(1))], to: document) == .number(1))
        let patched = try JSONPatch.apply([.replace("/spec/containers/0", .string("x"))], to: document)
        #expect(patched["spec"]?["containers"] == .array([.string("x")]))
    }

    @Test("pointer escaping round-trips ASCII and non-ASCII keys")
    func pointerEscaping() {
        for key in ["linkerd.io/inject", "a~b/c", "plain", "ä/ö~ü", "~01"] {
            #expect(JSONPointer.tokens(JSONPointer.path(key)) == [key])
        }
        #expect(JSONPointer.escape("linkerd.io/inject") == "linkerd.io~1inject")
        #expect(JSONPointer.escape("~/") == "~0~1")
    }
}
