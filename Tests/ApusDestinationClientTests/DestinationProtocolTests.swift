import ApusCore
import ApusDestinationClient
import Foundation
import Testing

@Suite struct DestinationProtocolTests {
    static let a = Endpoint(
        address: "10.0.0.1", port: 8080, identity: "web.shop.serviceaccount.identity.apus.cluster.local")
    static let b = Endpoint(address: "10.0.0.2", port: 8080)
    static let c = Endpoint(address: "fd00::3", port: 8080)

    @Test("diff: added holds new and changed endpoints, removed the vanished keys; applying it reproduces the new set")
    func diffRoundTrip() {
        let old: EndpointSet = [Self.a.key: Self.a, Self.b.key: Self.b]
        var changedA = Self.a
        changedA.identity = "other.shop.serviceaccount.identity.apus.cluster.local"
        let new: EndpointSet = [changedA.key: changedA, Self.c.key: Self.c]
        let diff = EndpointDiff.between(old, new)
        #expect(diff.added == [changedA, Self.c])
        #expect(diff.removed == ["10.0.0.2:8080"])
        var applied = old
        diff.apply(to: &applied)
        #expect(applied == new)
        #expect(EndpointDiff.between(new, new).isEmpty)
        #expect(Self.c.key == "[fd00::3]:8080")
    }

    @Test("frames: endpoint sets produce add/remove diffs; other transitions a full snapshot")
    func framesBetweenResolutions() {
        let old = Resolution.endpoints([Self.a.key: Self.a])
        let new = Resolution.endpoints([Self.b.key: Self.b])
        #expect(
            EndpointFrame.frames(from: old, to: new, version: 2) == [
                .add(version: 2, endpoints: [Self.b]), .remove(version: 2, addresses: [Self.a.key]),
            ])
        #expect(EndpointFrame.frames(from: nil, to: new, version: 1) == [.snapshot(version: 1, endpoints: [Self.b])])
        #expect(
            EndpointFrame.frames(from: old, to: .notFound, version: 3) == [.noEndpoints(version: 3, exists: false)])
        #expect(
            EndpointFrame.frames(from: .notFound, to: .external(host: "db.example.com", port: 5432), version: 4) == [
                .external(version: 4, host: "db.example.com", port: 5432)
            ])
    }

    @Test("every frame encodes to one JSON line and decodes back; unknown types are rejected")
    func frameCodec() throws {
        let frames: [EndpointFrame] = [
            .snapshot(version: 1, endpoints: [Self.a]), .add(version: 2, endpoints: [Self.b]),
            .remove(version: 3, addresses: ["10.0.0.1:8080"]), .noEndpoints(version: 4, exists: false),
            .external(version: 5, host: "db.example.com", port: 5432), .heartbeat,
        ]
        for frame in frames {
            let line = try DestinationProtocol.encodeLine(frame)
            #expect(line.last == UInt8(ascii: "\n"))
            #expect(!line.dropLast().contains(UInt8(ascii: "\n")))
            #expect(try JSONDecoder().decode(EndpointFrame.self, from: line) == frame)
        }
        let profile = ProfileFrame.profile(
            version: 7, profile: .defaultProfile(fullyQualifiedName: "web.shop.svc.cluster.local", port: 80))
        #expect(try JSONDecoder().decode(ProfileFrame.self, from: DestinationProtocol.encodeLine(profile)) == profile)
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(EndpointFrame.self, from: Data(#"{"type":"teleport","version":1}"#.utf8))
        }
    }

    @Test("the default profile compiles to no routes and Linkerd's 0.2 / 10 per s / 10 s budget")
    func defaultProfileCompiles() throws {
        let compiled = try DestinationProfile.defaultProfile(fullyQualifiedName: "web.shop.svc.cluster.local", port: 80)
            .compiledServiceProfile()
        #expect(compiled.routes.isEmpty)
        #expect(compiled.retryBudget == .linkerdDefault)
    }
}

@Suite struct StreamStateTests {
    @Test("lines split across reads are reassembled; an endless line is a protocol violation")
    func lineSplitting() throws {
        var splitter = LineSplitter(maximumLineLength: 64)
        #expect(try splitter.append(Array(#"{"type":"heart"#.utf8)).isEmpty)
        let lines = try splitter.append(Array("beat\"}\n\n{\"a\":1}\n{\"b\"".utf8))
        #expect(lines.map { String(decoding: $0, as: UTF8.self) } == [#"{"type":"heartbeat"}"#, #"{"a":1}"#])
        #expect(throws: DestinationClientError(.protocolViolation, "")) {
            _ = try splitter.append(Array(repeating: UInt8(ascii: "x"), count: 100))
        }
    }

    @Test("snapshot, add, remove rebuild the set; versions going backwards and diffs before a snapshot are rejected")
    func endpointState() throws {
        let a = DestinationProtocolTests.a
        let b = DestinationProtocolTests.b
        var state = EndpointStreamState()
        #expect(throws: DestinationClientError(.protocolViolation, "")) {
            try state.apply(.add(version: 1, endpoints: [a]))
        }
        #expect(try state.apply(.snapshot(version: 1, endpoints: [a])))
        #expect(try state.apply(.add(version: 2, endpoints: [b])))
        #expect(try state.apply(.remove(version: 2, addresses: [a.key])))
        #expect(state.resolution == .endpoints([b.key: b]))
        #expect(try !state.apply(.heartbeat))
        #expect(throws: DestinationClientError(.protocolViolation, "")) {
            try state.apply(.snapshot(version: 1, endpoints: []))
        }
        // A new stream (another controller replica) numbers from 1 again; the kept set stays until its snapshot.
        state.resetVersion()
        #expect(state.resolution == .endpoints([b.key: b]))
        #expect(try state.apply(.noEndpoints(version: 1, exists: false)))
        #expect(state.resolution == .notFound)
    }
}
