import ApusCore

// The data plane lands with the proxy issue; until then the binary only reports its version so packaging and
// version checks have something real to call.
let arguments = CommandLine.arguments.dropFirst()
if arguments.contains("--version") || arguments.contains("version") {
    print("apus-proxy \(ApusVersion.current)")
} else {
    print("apus-proxy \(ApusVersion.current): the data plane is not built yet; see README.md's feature table.")
}
