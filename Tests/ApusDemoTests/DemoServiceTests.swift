import Foundation
import Testing

/// The demo binary as local mode runs it: real processes, real sockets, configuration from the environment.
@Suite struct DemoServiceTests {
    @Test("LATENCY_MS delays application routes but not /healthz; x-served-by names POD_NAME")
    func latencyKnob() async throws {
        let (world, port) = try await DemoProcess.server(
            "world", environment: ["LATENCY_MS": "1500-1600", "POD_NAME": "world-7f9c-abcde"])
        defer { world.stop() }
        try await withClient { client in
            let started = ContinuousClock.now
            let response = try await client.get("http://127.0.0.1:\(port)/")
            let elapsed = ContinuousClock.now - started
            #expect(response.status == 200)
            #expect(response.body == "world\n")
            #expect(response.headers["x-served-by"] == "world-7f9c-abcde")
            #expect(elapsed >= .milliseconds(1500), "answered after \(elapsed)")

            let probeStarted = ContinuousClock.now
            let probe = try await client.get("http://127.0.0.1:\(port)/healthz")
            #expect(probe.status == 200)
            // Far below the 1.5 s the delayed route takes, so a loaded CI machine cannot blur the difference.
            #expect(ContinuousClock.now - probeStarted < .milliseconds(1500))
        }
        #expect(world.text.contains("GET / 200"), "one log line per request:\n\(world.text)")
    }

    @Test("ERROR_RATE fails that share of requests with 500 and never /healthz")
    func errorRateKnob() async throws {
        let (always, alwaysPort) = try await DemoProcess.server(
            "authors", environment: ["ERROR_RATE": "1.0", "LATENCY_MS": "0"])
        defer { always.stop() }
        let (half, halfPort) = try await DemoProcess.server(
            "authors", environment: ["ERROR_RATE": "0.5", "LATENCY_MS": "0"])
        defer { half.stop() }
        try await withClient { client in
            let failed = try await client.get("http://127.0.0.1:\(alwaysPort)/authors")
            #expect(failed.status == 500)
            #expect(failed.body.contains("injected failure"))
            #expect(try await client.get("http://127.0.0.1:\(alwaysPort)/healthz").status == 200)

            var failures = 0
            for _ in 0..<200 where try await client.get("http://127.0.0.1:\(halfPort)/authors/1").status == 500 {
                failures += 1
            }
            // Binomial(200, 0.5): 60...140 is more than 8 standard deviations wide.
            #expect((60...140).contains(failures), "\(failures) of 200 failed")
        }
    }

    @Test("a bad knob stops the service at start with a message naming the variable")
    func badKnobIsRejected() async throws {
        for (variable, value) in [("ERROR_RATE", "1.5"), ("LATENCY_MS", "300-100"), ("PORT", "http")] {
            let process = try DemoProcess(["world"], environment: [variable: value])
            try await process.waitForExit()
            #expect(process.exitStatus != 0)
            #expect(process.text.contains(variable), "\(variable)=\(value):\n\(process.text)")
        }
    }

    @Test("/whoami reflects the request headers the server received, l5d-client-id included")
    func whoami() async throws {
        let (books, port) = try await DemoProcess.server("books", environment: ["POD_NAME": "books-v2-0"])
        defer { books.stop() }
        let response = try await withClient { client in
            try await client.get(
                "http://127.0.0.1:\(port)/whoami",
                headers: [("l5d-client-id", "webapp.booksapp.serviceaccount.identity.apus.cluster.local")])
        }
        struct WhoAmI: Decodable {
            var service: String
            var pod: String
            var headers: [String: String]
        }
        let whoami = try JSONDecoder().decode(WhoAmI.self, from: Data(response.body.utf8))
        #expect(whoami.service == "books")
        #expect(whoami.pod == "books-v2-0")
        #expect(whoami.headers["l5d-client-id"] == "webapp.booksapp.serviceaccount.identity.apus.cluster.local")
        #expect(whoami.headers["host"] == "127.0.0.1:\(port)")
    }

    @Test("webapp composes books and authors; a dead dependency becomes a 502 that names it")
    func webappComposesBooksAndAuthors() async throws {
        let (authors, authorsPort) = try await DemoProcess.server("authors", environment: ["POD_NAME": "authors-0"])
        defer { authors.stop() }
        let authorsURL = "http://127.0.0.1:\(authorsPort)"
        let (books, booksPort) = try await DemoProcess.server(
            "books", environment: ["AUTHORS_URL": authorsURL, "POD_NAME": "books-v1-0"])
        defer { books.stop() }
        let (webapp, webappPort) = try await DemoProcess.server(
            "webapp", environment: ["BOOKS_URL": "http://127.0.0.1:\(booksPort)", "AUTHORS_URL": authorsURL])
        defer { webapp.stop() }

        try await withClient { client in
            let index = try await client.get("http://127.0.0.1:\(webappPort)/")
            #expect(index.status == 200)
            #expect(index.headers["content-type"]?.hasPrefix("text/html") == true)
            #expect(index.body.contains("Moby-Dick</a></td><td>Herman Melville"))

            let page = try await client.get("http://127.0.0.1:\(webappPort)/books/4")
            #expect(page.status == 200)
            #expect(page.body.contains("\"title\" : \"Frankenstein\""))
            #expect(page.body.contains("\"name\" : \"Mary Shelley\""))
            #expect(page.body.contains("\"books\" : \"books-v1-0\""))
            #expect(page.body.contains("\"authors\" : \"authors-0\""))

            #expect(try await client.get("http://127.0.0.1:\(webappPort)/books/99").status == 404)

            authors.stop()
            let broken = try await client.get("http://127.0.0.1:\(webappPort)/books/4")
            #expect(broken.status == 502)
            #expect(broken.body.contains("/authors/3"), "the reason names the failed call: \(broken.body)")
        }
    }

    @Test("hello answers 'hello ' + world through APUS_OUTBOUND_PROXY, with Host naming the service")
    func helloCallsWorldThroughTheOutboundProxy() async throws {
        // The stand-in "proxy" is a world server: it answers whatever Host the request names, so hello can only
        // succeed by sending its request there, and /whoami shows the Host hello put on it.
        let (world, worldPort) = try await DemoProcess.server("world", environment: ["LATENCY_MS": "0"])
        defer { world.stop() }
        let (hello, helloPort) = try await DemoProcess.server(
            "hello",
            environment: [
                "LATENCY_MS": "0", "WORLD_URL": "http://world.example.invalid:7101",
                "APUS_OUTBOUND_PROXY": "127.0.0.1:\(worldPort)",
            ])
        defer { hello.stop() }
        let (probe, probePort) = try await DemoProcess.server(
            "hello",
            environment: [
                "LATENCY_MS": "0", "WORLD_URL": "http://world.example.invalid:7101/whoami",
                "http_proxy": "http://127.0.0.1:\(worldPort)/",
            ])
        defer { probe.stop() }
        try await withClient { client in
            let response = try await client.get("http://127.0.0.1:\(helloPort)/")
            #expect(response.status == 200)
            #expect(response.body == "hello world\n")
            let seen = try await client.get("http://127.0.0.1:\(probePort)/")
            #expect(seen.body.contains("\"host\" : \"world.example.invalid:7101\""), "\(seen.body)")
        }
    }

    @Test("hello's default latency is 500 ms")
    func helloDefaultLatency() async throws {
        let (world, worldPort) = try await DemoProcess.server("world")
        defer { world.stop() }
        let (hello, helloPort) = try await DemoProcess.server(
            "hello", environment: ["WORLD_URL": "http://127.0.0.1:\(worldPort)"])
        defer { hello.stop() }
        let started = ContinuousClock.now
        let response = try await withClient { try await $0.get("http://127.0.0.1:\(helloPort)/") }
        #expect(response.body == "hello world\n")
        #expect(ContinuousClock.now - started >= .milliseconds(500))
    }

    @Test("POST /books adds a book that GET /books then lists; a bad body is a 400")
    func createBook() async throws {
        let (books, port) = try await DemoProcess.server("books")
        defer { books.stop() }
        try await withClient { client in
            let created = try await client.post(
                "http://127.0.0.1:\(port)/books", body: #"{"title":"Dune","authorId":2}"#)
            #expect(created.status == 201)
            #expect(created.body.contains("\"id\" : 7"))
            let bad = try await client.post("http://127.0.0.1:\(port)/books", body: "not json")
            #expect(bad.status == 400)
            let list = try await client.get("http://127.0.0.1:\(port)/books")
            #expect(list.body.contains("Dune"))
        }
    }
}
