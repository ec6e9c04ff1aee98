import Foundation
import Testing

/// Every pod runs a proxy, so what the proxy maps is paid once per pod (issue 4: RSS ≤ 20 MiB idle). Full
/// Foundation brings libFoundation, FoundationInternationalization and ICU's data (~6 MiB resident); the proxy's
/// modules use FoundationEssentials only, so one `import Foundation` in any module the proxy links (or in a new
/// dependency of it) undoes that. This catches it in the debug build the tests run.
@Suite struct ProxyFootprintTests {
    #if os(Linux)
        @Test func theProxyBinaryLoadsNeitherFullFoundationNorICU() throws {
            let binary = builtExecutable("apus-proxy")
            try #require(FileManager.default.isExecutableFile(atPath: binary), "\(binary) is not built")
            // The dynamic loader lists what it would load and exits without running the program (what `ldd` does).
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.environment = ["LD_TRACE_LOADED_OBJECTS": "1"]
            let output = Pipe()
            process.standardOutput = output
            try process.run()
            let listing = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            #expect(process.terminationStatus == 0)
            let libraries = listing.split(whereSeparator: \.isWhitespace).compactMap { $0.split(separator: "/").last }
                .map(String.init)
            #expect(libraries.contains { $0.hasPrefix("libc.so") }, "no dependency listing: \(listing)")
            let unwanted = [
                "libFoundation.so", "libFoundationInternationalization.so", "lib_FoundationICU.so",
                "libFoundationNetworking.so", "libFoundationXML.so",
            ]
            #expect(libraries.filter(unwanted.contains).isEmpty, "apus-proxy loads full Foundation:\n\(listing)")
        }
    #endif
}
