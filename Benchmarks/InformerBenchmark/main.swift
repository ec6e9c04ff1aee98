import BenchmarkSupport
import Foundation

// `InformerBenchmark --serve …` is the API test server child; anything else runs the benchmark (see Options.swift and
// Benchmarks/README.md).
exit(
    await benchmarkMain(
        Array(CommandLine.arguments.dropFirst()), serve: ServerChild.main, run: BenchmarkRunner.main))
