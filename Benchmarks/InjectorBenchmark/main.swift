import ApusController
import ApusCore
import ApusIdentity
import ApusInjector
import AsyncHTTPClient
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

// Proxy injector webhook latency over HTTPS at a fixed request rate (open loop: requests are sent on schedule
// whether or not earlier ones have answered, as kube-apiserver does). See Benchmarks/README.md ("Injector
// benchmark"). Goal: p99 <= 5 ms at 200 requests/s.

struct Options {
    var rate = 200
    var seconds = 20
    var warmupSeconds = 2
    var connections = 4

    static let usage = "usage: InjectorBenchmark [--rate N] [--seconds N] [--connections N]"

    init(arguments: [String]) throws {
        var remaining = arguments[...]
        func number(_ flag: String, minimum: Int) throws -> Int {
            guard let text = remaining.popFirst(), let value = Int(text), value >= minimum else {
                throw BenchmarkFailure(message: "\(flag) needs a number >= \(minimum)\n\(Self.usage)")
            }
            return value
        }
        while let flag = remaining.popFirst() {
            switch flag {
            case "--rate": rate = try number(flag, minimum: 1)
            case "--seconds": seconds = try number(flag, minimum: 1)
            case "--connections": connections = try number(flag, minimum: 1)
            case "-h", "--help": throw BenchmarkFailure(message: Self.usage)
            default: throw BenchmarkFailure(message: "unknown flag \(flag)\n\(Self.usage)")
            }
        }
    }
}

struct BenchmarkFailure: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// A Deployment's pod as the API server sends it for review: owner reference, labels, two containers with
/// ports, probes and resources, and a ServiceAccount.
func review(index: Int) -> JSONValue {
    let container: (String, Int) -> JSONValue = { name, port in
        .object([
            "name": .string(name), "image": .string("registry.example/\(name):1.4.2"),
            "ports": .array([.object(["containerPort": .number(Double(port)), "name": .string("http")])]),
            "resources": .object([
                "requests": .object(["cpu": .string("100m"), "memory": .string("128Mi")]),
                "limits": .object(["memory": .string("256Mi")]),
            ]),
            "readinessProbe": .object([
                "httpGet": .object(["path": .string("/ready"), "port": .number(Double(port))])
            ]),
            "env": .array([.object(["name": .string("MODE"), "value": .string("production")])]),
        ])
    }
    let pod: JSONValue = .object([
        "apiVersion": .string("v1"), "kind": .string("Pod"),
        "metadata": .object([
            "generateName": .string("web-7d9c8b5f4-"), "namespace": .string("shop"),
            "labels": .object(["app": .string("web"), "pod-template-hash": .string("7d9c8b5f4")]),
            "ownerReferences": .array([
                .object([
                    "apiVersion": .string("apps/v1"), "kind": .string("ReplicaSet"),
                    "name": .string("web-7d9c8b5f4"), "uid": .string("6b1e0c52-0d7b-4c59-9a3e-5d8f0b0e7a11"),
                    "controller": .bool(true),
                ])
            ]),
        ]),
        "spec": .object([
            "serviceAccountName": .string("web"),
            "containers": .array([container("web", 8080), container("metrics", 9090)]),
        ]),
    ])
    return .object([
        "apiVersion": .string("admission.k8s.io/v1"), "kind": .string("AdmissionReview"),
        "request": .object([
            "uid": .string("bench-\(index)"),
            "kind": .object(["group": .string(""), "version": .string("v1"), "kind": .string("Pod")]),
            "resource": .object(["group": .string(""), "version": .string("v1"), "resource": .string("pods")]),
            "namespace": .string("shop"), "operation": .string("CREATE"), "object": pod,
        ]),
    ])
}

func percentile(_ sorted: [Int64], _ fraction: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    let index = min(sorted.count - 1, max(0, Int((Double(sorted.count) * fraction).rounded(.up)) - 1))
    return Double(sorted[index]) / 1e6  // milliseconds
}

func run(_ options: Options) async throws {
    let roots = try TrustRootsGenerator.generate()
    let issuer = IdentityIssuer()
    issuer.load(
        anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
        issuerKeyPEM: roots.issuerKeyPEM)
    let namespace = Namespace(metadata: ObjectMeta(name: "shop", annotations: ["linkerd.io/inject": "enabled"]))
    let webhook = InjectorWebhook(
        defaults: InjectorDefaults(),
        certificates: ServingCertificates(
            issuer: issuer, configuration: InjectorWebhook.servingConfiguration(ipAddresses: ["127.0.0.1"])),
        configuration: InjectorWebhook.Configuration(host: "127.0.0.1", port: 0),
        namespace: { $0 == "shop" ? namespace : nil })
    let server = Task { try await webhook.run() }
    let port = try await webhook.port()

    // The review itself (decode, decide, patch, encode) without TLS or HTTP: the floor under the latency.
    let sample = Array(try review(index: 0).jsonData())
    for _ in 0..<200 { _ = webhook.answer(reviewBody: sample) }
    let cpuClock = ContinuousClock()
    let cpuStart = cpuClock.now
    let cpuRounds = 1000
    for _ in 0..<cpuRounds { _ = webhook.answer(reviewBody: sample) }
    let perReview = (cpuClock.now - cpuStart) / cpuRounds
    // Of which the injector's decision and patch (ApusInjector), on the already decoded pod.
    let injector = ProxyInjector(defaults: InjectorDefaults(trustAnchorsPEM: roots.anchorsPEM))
    let podJSON = review(index: 0)["request"]?["object"] ?? .null
    let injectStart = cpuClock.now
    for _ in 0..<cpuRounds { _ = injector.inject(podJSON: podJSON, namespace: namespace) }
    let perInject = (cpuClock.now - injectStart) / cpuRounds
    print(String(format: "  of which ProxyInjector.inject: %.0f µs", Double(perInject / .nanoseconds(1)) / 1000))
    print(
        String(
            format: "review processing alone: %.0f µs per AdmissionReview (%d bytes in)",
            Double(perReview / .nanoseconds(1)) / 1000, sample.count))

    var tls = TLSConfiguration.makeClientConfiguration()
    tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(roots.anchorsPEM.utf8)))
    var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
    configuration.httpVersion = .http1Only
    configuration.connectionPool = .init(
        idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: options.connections)
    let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    let url = "https://127.0.0.1:\(port)\(InjectorWebhook.path)"
    let bodies = try (0..<64).map { ByteBuffer(data: try review(index: $0).jsonData()) }

    struct Results {
        var latencies: [Int64] = []
        var errors: [String: Int] = [:]
        var patched = 0
    }
    let results = NIOLockedValueBox(Results())
    let total = (options.warmupSeconds + options.seconds) * options.rate
    let warmup = options.warmupSeconds * options.rate
    let interval = Duration.seconds(1) / options.rate
    print(
        "injector webhook: \(options.rate) requests/s over HTTPS for \(options.seconds) s (+\(options.warmupSeconds) s "
            + "warm-up), \(options.connections) keep-alive connections, "
            + "\(ProcessInfo.processInfo.activeProcessorCount) "
            + "cores")
    let clock = ContinuousClock()
    let start = clock.now
    await withDiscardingTaskGroup { group in
        for index in 0..<total {
            // Open loop: each request leaves at its slot; a slow answer does not delay the next request.
            let slot = start + interval * index
            try? await clock.sleep(until: slot)
            let body = bodies[index % bodies.count]
            group.addTask {
                var request = HTTPClientRequest(url: url)
                request.method = .POST
                request.headers.add(name: "content-type", value: "application/json")
                request.body = .bytes(body)
                do {
                    let response = try await client.execute(request, timeout: .seconds(10))
                    let bytes = try await response.body.collect(upTo: 4 << 20)
                    // Latency counts from the scheduled slot, so queueing in the client is not hidden.
                    let nanoseconds = Int64((clock.now - slot) / .nanoseconds(1))
                    let patched = String(buffer: bytes).contains("\"patchType\":\"JSONPatch\"")
                    results.withLockedValue { results in
                        guard index >= warmup else { return }
                        if response.status == .ok {
                            results.latencies.append(nanoseconds)
                            if patched { results.patched += 1 }
                        } else {
                            results.errors["HTTP \(response.status.code)", default: 0] += 1
                        }
                    }
                } catch {
                    results.withLockedValue { results in
                        if index >= warmup { results.errors["\(error)", default: 0] += 1 }
                    }
                }
            }
        }
    }
    let elapsed = clock.now - start
    try await client.shutdown()
    server.cancel()
    _ = try? await server.value

    let final = results.withLockedValue { $0 }
    let sorted = final.latencies.sorted()
    let measured = sorted.count + final.errors.values.reduce(0, +)
    print(
        "requests measured: \(measured) (\(final.patched) answered with a JSONPatch, "
            + "\(final.errors.values.reduce(0, +)) failed)"
    )
    for (error, count) in final.errors.sorted(by: { $0.key < $1.key }) { print("  error \(count)x: \(error)") }
    print(String(format: "achieved rate: %.1f requests/s", Double(total) / (Double(elapsed / .milliseconds(1)) / 1000)))
    print(
        String(
            format: "latency: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms (goal: p99 <= 5 ms) %@",
            percentile(sorted, 0.5), percentile(sorted, 0.9), percentile(sorted, 0.99), percentile(sorted, 1.0),
            percentile(sorted, 0.99) <= 5 ? "MET" : "MISSED"))
    guard final.errors.isEmpty, final.patched == sorted.count else {
        throw BenchmarkFailure(message: "some requests failed or were not injected")
    }
}

LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = .warning
    return handler
}
do {
    try await run(try Options(arguments: Array(CommandLine.arguments.dropFirst())))
} catch {
    FileHandle.standardError.write(Data("InjectorBenchmark: \(error)\n".utf8))
    exit(1)
}
