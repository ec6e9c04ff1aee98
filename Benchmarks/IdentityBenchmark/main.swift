import ApusIdentity
import ApusX509
import Foundation

// Certify throughput of `CertificateAuthority.issue` on one thread, next to the signing floor measured in the same
// run. See Benchmarks/README.md ("Identity benchmark").

struct Options {
    var csrs = 5000
    var json = false

    static let usage = "usage: IdentityBenchmark [--csrs N] [--json]"

    init(arguments: [String]) throws {
        var remaining = arguments[...]
        while let flag = remaining.popFirst() {
            switch flag {
            case "--csrs":
                guard let text = remaining.popFirst(), let value = Int(text), value >= 100 else {
                    throw UsageError(message: "--csrs needs a number >= 100")
                }
                csrs = value
            case "--json": json = true
            case "-h", "--help": throw UsageError(message: Options.usage)
            default: throw UsageError(message: "unknown flag \(flag)\n\(Options.usage)")
            }
        }
    }
}

struct UsageError: Error { let message: String }
struct BenchmarkFailure: Error { let message: String }

/// Monotonic nanoseconds.
func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// CPU time of the whole process (all threads), to show the run used one core.
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    let user = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
    let system = Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    return user + system
}

func percentile(_ sorted: [UInt64], _ fraction: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    let index = min(sorted.count - 1, Int((Double(sorted.count) * fraction).rounded(.up)) - 1)
    return Double(sorted[max(0, index)]) / 1000  // microseconds
}

func log(_ options: Options, _ line: String) {
    if !options.json { print(line) }
}

func run(_ options: Options) throws {
    let count = options.csrs
    let roots = try TrustRootsGenerator.generate()
    let credentials = try IssuerCredentials(
        anchorsPEM: roots.anchorsPEM, issuerCertificatePEM: roots.issuerCertificatePEM,
        issuerKeyPEM: roots.issuerKeyPEM)
    let authority = CertificateAuthority(credentials: credentials)

    // Inputs, prepared before anything is timed: one key and CSR per workload, as N proxies would send them.
    var start = now()
    var requests: [(identity: IdentityName, der: [UInt8])] = []
    requests.reserveCapacity(count)
    for index in 0..<count {
        let identity = IdentityName(serviceAccount: "sa-\(index)", namespace: "ns-\(index % 50)")
        let key = try PrivateKey.generateP256()
        requests.append((identity, try CertificateSigningRequest(key: key, dnsName: identity.description).der))
    }
    log(options, "prepared \(count) CSRs in \(String(format: "%.2f", Double(now() - start) / 1e9)) s")

    // Floor 1: ECDSA P-256 signatures of a 32-byte message with the issuer's key: every issue ends with one.
    let issuerKey = try PrivateKey(pem: roots.issuerKeyPEM)
    let message = [UInt8](repeating: 0xa5, count: 32)
    var signature: [UInt8] = []
    for _ in 0..<200 { signature = try issuerKey.signature(for: message) }
    start = now()
    for _ in 0..<count { signature = try issuerKey.signature(for: message) }
    let signPerSecond = Double(count) / (Double(now() - start) / 1e9)

    // Floor 2: ECDSA P-256 verifications: every issue checks the CSR's signature once.
    let publicKey = try issuerKey.publicKey
    start = now()
    for _ in 0..<count where !publicKey.isValidSignature(signature, for: message) {
        throw BenchmarkFailure(message: "a signature did not verify")
    }
    let verifyPerSecond = Double(count) / (Double(now() - start) / 1e9)
    // One verify plus one sign per CSR: what issuing costs if everything else were free.
    let floorPerSecond = 1 / (1 / signPerSecond + 1 / verifyPerSecond)

    // Warm-up, then the measured run: every CSR through `issue` on this one thread.
    for request in requests.prefix(200) {
        _ = try authority.issue(csrDER: request.der, identity: request.identity)
    }
    var latencies = [UInt64](repeating: 0, count: count)
    var responses: [CertifyResponse] = []
    responses.reserveCapacity(count)
    let cpuBefore = processCPUSeconds()
    start = now()
    for (index, request) in requests.enumerated() {
        let begin = now()
        responses.append(try authority.issue(csrDER: request.der, identity: request.identity))
        latencies[index] = now() - begin
    }
    let wall = Double(now() - start) / 1e9
    let cpu = processCPUSeconds() - cpuBefore
    let issuedPerSecond = Double(count) / wall

    // Every leaf must be what was asked for, or the figure is meaningless.
    var serials = Set<String>()
    for (request, response) in zip(requests, responses) {
        let leaf = try Certificate(der: response.leafCertificate)
        guard leaf.dnsNames == [request.identity.description], leaf.isSigned(by: credentials.issuer) else {
            throw BenchmarkFailure(message: "the leaf for \(request.identity) is wrong")
        }
        serials.insert(leaf.serialNumber)
    }
    guard serials.count == count else { throw BenchmarkFailure(message: "serials are not unique") }

    let sorted = latencies.sorted()
    let p50 = percentile(sorted, 0.50)
    let p99 = percentile(sorted, 0.99)
    let maximum = Double(sorted.last ?? 0) / 1000
    if options.json {
        let report: [String: Any] = [
            "csrs": count, "issuedPerSecond": issuedPerSecond.rounded(), "p50Microseconds": p50,
            "p99Microseconds": p99, "maxMicroseconds": maximum, "cpuCores": cpu / wall,
            "signPerSecond": signPerSecond.rounded(), "verifyPerSecond": verifyPerSecond.rounded(),
            "floorPerSecond": floorPerSecond.rounded(), "fractionOfFloor": issuedPerSecond / floorPerSecond,
        ]
        let data = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
        return
    }
    func rate(_ value: Double) -> String { String(format: "%8.0f/s", value) }
    print("")
    print("floor  ECDSA P-256 sign (32-byte message)   \(rate(signPerSecond))")
    print("floor  ECDSA P-256 verify                   \(rate(verifyPerSecond))")
    print("floor  verify + sign per CSR                \(rate(floorPerSecond))")
    print(
        "issue  CertificateAuthority.issue, 1 thread \(rate(issuedPerSecond))  "
            + String(format: "= %.0f%% of the floor", 100 * issuedPerSecond / floorPerSecond))
    print(String(format: "       latency p50 %.0f µs, p99 %.0f µs, max %.0f µs", p50, p99, maximum))
    print(String(format: "       process CPU %.2f cores over %.2f s", cpu / wall, wall))
    print(
        issuedPerSecond >= 2000
            ? "goal (>= 2,000 CSRs/s on one core): met" : "goal (>= 2,000 CSRs/s on one core): MISSED")
}

do {
    try run(try Options(arguments: Array(CommandLine.arguments.dropFirst())))
} catch let error as UsageError {
    FileHandle.standardError.write(Data((error.message + "\n").utf8))
    exit(2)
} catch let error as BenchmarkFailure {
    FileHandle.standardError.write(Data(("error: " + error.message + "\n").utf8))
    exit(1)
} catch {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    exit(1)
}
