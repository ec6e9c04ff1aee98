import Foundation

// `DestinationBenchmark --serve …` is the API test server child; anything else runs the benchmark (see
// Options.swift and Benchmarks/README.md).
let arguments = Array(CommandLine.arguments.dropFirst())
let status: Int32
if arguments.first == "--serve" {
    status = await ServerChild.main(arguments: Array(arguments.dropFirst()))
} else {
    status = await BenchmarkRunner.main(arguments: arguments)
}
exit(status)
