import ApusCore
import Testing

@Suite struct RouteRegexTests {
    @Test(arguments: [
        (#"/books/\d+"#, "/books/42", true),
        (#"/books/\d+"#, "/books/", false),
        (#"/books/\d+"#, "/books/42/reviews", false),
        (#"/books/\d+"#, "/books/٤٢", false),  // RE2's \d is ASCII only
        ("/api/v1/users/[^/]*", "/api/v1/users/alice", true),
        ("/api/v1/users/[^/]*", "/api/v1/users/", true),
        ("/api/v1/users/[^/]*", "/api/v1/users/alice/posts", false),
        ("(GET|POST)", "GET", true),
        ("(GET|POST)", "GETX", false),
        ("/a|/b", "/a/anything", false),  // whole-string match, not ^/a|/b$
        ("/a|/b", "/b", true),
        ("/authors/[0-9]{1,3}", "/authors/123", true),
        ("/authors/[0-9]{1,3}", "/authors/1234", false),
        ("/x{2,}", "/xxxx", true),
        ("/x{2,}", "/x", false),
        ("(?i)/Books", "/bOOKS", true),
        ("/Books", "/books", false),
        ("(?i:a)b", "Ab", true),
        ("(?i:a)b", "AB", false),
        (".*", "", true),
        ("a.c", "a\nc", false),
        ("(?s)a.c", "a\nc", true),
        (#"\Qa.b\E"#, "a.b", true),
        (#"\Qa.b\E"#, "axb", false),
        ("[[:alpha:]]+", "abcXYZ", true),
        ("[[:alpha:]]+", "abc1", false),
        (#"\pL+"#, "héllo", true),
        (#"\p{Lu}"#, "É", true),
        (#"[^\d]+"#, "abc", true),
        (#"[\d\-]+"#, "12-34", true),
        (#"\x41\x{1F600}"#, "A😀", true),
        (#"foo\b.*"#, "foo bar", true),
        (#"foo\b.*"#, "foobar", false),
        ("^/anchored$", "/anchored", true),
        ("(?P<id>[a-z]+)-(?<n>[0-9]+)", "abc-12", true),
        ("a{,3}", "a{,3}", true),  // not a valid repetition, so `{` is literal as in Go
        ("é", "é", true),
        ("/literal/path", "/literal/path", true),
        ("/literal/path", "/literal/pat", false),
        ("", "", true),
        ("", "x", false),
    ])
    func matchesWholeString(pattern: String, text: String, expected: Bool) throws {
        #expect(try RouteRegex(pattern).matchesWhole(text) == expected)
    }

    @Test(arguments: [
        ("(abc", "missing closing )"),
        ("abc)", "unexpected )"),
        ("[a-", "missing closing ]"),
        ("*a", "missing argument to repetition operator"),
        ("a**", "invalid nested repetition operator"),
        ("a{1001}", "invalid repeat count"),
        ("a{3,2}", "invalid repeat count"),
        (#"(a)\1"#, "backreferences are not supported"),
        ("(?=a)", "lookahead"),
        ("(?<=a)b", "lookbehind"),
        (#"\q"#, "invalid escape sequence"),
        (#"\p{Greek}"#, "unsupported character class"),
        ("[z-a]", "invalid character class range"),
        ("a\\", "trailing backslash"),
    ])
    func rejectsNonRE2Syntax(pattern: String, message: String) {
        do {
            _ = try RouteRegex(pattern)
            Issue.record("'\(pattern)' compiled")
        } catch {
            #expect(error.message.contains(message), "\(error.message)")
            #expect(error.description.contains(pattern))
        }
    }

    @Test func pathologicalPatternStaysLinear() throws {
        // Exponential for a backtracking engine; linear here.
        let regex = try RouteRegex("(a*)*(a|b)*c")
        let text = String(repeating: "a", count: 20_000)
        let clock = ContinuousClock()
        let elapsed = clock.measure { #expect(!regex.matchesWhole(text)) }
        #expect(elapsed < .seconds(5))
    }

    @Test func matchesSubstrings() throws {
        let regex = try RouteRegex("/b+")
        let text = "x/bbb"
        #expect(regex.matchesWhole(text.dropFirst()))
    }
}
