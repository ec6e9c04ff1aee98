import ApusCore
import ApusInjector
import ArgumentParser
import AsyncHTTPClient
import Foundation
import KubernetesClient
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// `apus tap`: streams the requests the proxies of a workload's pods see, live, merged from every pod.
///
/// It finds the target's running meshed pods through the API server, opens `POST /apus.tap.v1/Observe` on each
/// pod's control port (`<pod IP>:4190`, `docs/tap.md`) with the filter built from the flags, and prints the events
/// as they arrive. The proxies decide who may tap; this command authenticates with a bearer token, which local
/// mode generates into `.apus/tap-token` beside its kubeconfig (found there by default).
struct TapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tap",
        abstract: "Watch live requests through the proxies of a workload's pods.",
        discussion: """
            TARGET is deploy/NAME (deployment), sts/NAME (statefulset), ds/NAME (daemonset), pod/NAME (po) or \
            ns/NAME (namespace). Every running meshed pod of the target is tapped on its control port and the \
            events are printed merged, one line each:
              req id=3:1 proxy=in src=127.0.1.2:40112 dst=127.0.1.3:7101 tls=true :method=GET :authority=… :path=/x
              rsp id=3:1 proxy=in src=… dst=… tls=true :status=200 latency=812µs
              end id=3:1 proxy=in src=… dst=… tls=true duration=901µs response-length=312B
            ids are per proxy (connection:stream); src and dst tell the proxies apart. Local mode: \
            apus tap deploy/web -n shop --kubeconfig .apus/kubeconfig (the token is .apus/tap-token). Stop with Ctrl-C.
            """
    )

    enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
        case text, json
    }

    @Argument(help: "What to tap: deploy/NAME, sts/NAME, ds/NAME, pod/NAME or ns/NAME.")
    var target: String

    @Option(name: .shortAndLong, help: "Namespace of the target (default: the kubeconfig context's).")
    var namespace: String?

    @Option(help: "Only requests whose path starts with this prefix (must start with /).")
    var path: String?

    @Option(help: "Only requests with this HTTP method.")
    var method: String?

    @Option(help: "Only requests with this authority (Host).")
    var authority: String?

    @Option(help: "Only requests to this resource (e.g. deploy/books, pod/web-0, svc/books).")
    var to: String?

    @Option(help: "Namespace of --to (default: the target's namespace).")
    var toNamespace: String?

    @Option(help: "At most this many requests per second are shown, over all pods (0: no limit).")
    var maxRps: Double = 100

    @Option(name: .shortAndLong, help: "Output format: text or json (one JSON event per line, with its pod).")
    var output: OutputFormat = .text

    @Option(help: "The kubeconfig file (default: $KUBECONFIG or ~/.kube/config).")
    var kubeconfig: String?

    @Option(help: "The kubeconfig context (default: the current context).")
    var context: String?

    @Option(help: "File with the bearer token the proxies accept (default: tap-token beside the kubeconfig).")
    var tokenFile: String?

    func validate() throws {
        if let path, !path.hasPrefix("/") { throw ValidationError("--path '\(path)' must start with '/'") }
        if maxRps < 0 || !maxRps.isFinite { throw ValidationError("--max-rps must be 0 (no limit) or more") }
        _ = try TapTarget(target)
        if let to { _ = try TapTarget.resource(to, flag: "--to") }
    }

    func run() async throws {
        let target = try TapTarget(target)
        let kubeconfigPaths = resolvedKubeconfigPaths()
        let configuration: ClientConfiguration
        do {
            configuration =
                kubeconfigPaths.isEmpty
                ? try ClientConfiguration.load(context: context)
                : try KubeConfig.load(paths: kubeconfigPaths).configuration(context: context)
        } catch {
            throw TapError("cannot load the kubeconfig: \(error)")
        }
        let token = try readToken(kubeconfigPaths: kubeconfigPaths)
        let targetNamespace = target.kind == .namespace ? target.name : (namespace ?? configuration.namespace)
        let pods = try await tappablePods(target: target, namespace: targetNamespace, configuration: configuration)
        let body = try filterBody(targetNamespace: targetNamespace)

        let printer = TapPrinter(format: output, maxRequestsPerSecond: maxRps)
        let http = HTTPClient(
            eventLoopGroup: HTTPClient.defaultEventLoopGroup,
            configuration: HTTPClient.Configuration(
                redirectConfiguration: .disallow, timeout: .init(connect: .seconds(5), read: nil)))
        let result: Result<Int, Error>
        do {
            let streamed = try await withThrowingTaskGroup(of: Bool.self) { group in
                for pod in pods {
                    group.addTask { try await Self.tap(pod, body: body, token: token, http: http, printer: printer) }
                }
                var streamed = 0
                for try await succeeded in group where succeeded { streamed += 1 }
                return streamed
            }
            result = .success(streamed)
        } catch {
            result = .failure(error)
        }
        try? await http.shutdown()
        if try result.get() == 0 {
            throw TapError("no pod could be tapped (see the messages above)")
        }
    }

    // MARK: Configuration

    /// `--kubeconfig`, or the existing files of `$KUBECONFIG` / `~/.kube/config`; empty means in-cluster.
    private func resolvedKubeconfigPaths() -> [String] {
        if let kubeconfig { return [kubeconfig] }
        return KubeConfig.defaultPaths().filter { FileManager.default.fileExists(atPath: $0) }
    }

    /// `--token-file`, else local mode's `tap-token` beside the kubeconfig when there is one; nil: no token (only
    /// proxies that admit the caller's identity would answer).
    private func readToken(kubeconfigPaths: [String]) throws -> String? {
        var path = tokenFile
        if path == nil, let first = kubeconfigPaths.first {
            let candidate = URL(fileURLWithPath: first).deletingLastPathComponent().appendingPathComponent("tap-token")
            if FileManager.default.fileExists(atPath: candidate.path) { path = candidate.path }
        }
        guard let path else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TapError("cannot read the tap token file \(path)")
        }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else { throw TapError("the tap token file \(path) is empty") }
        return token
    }

    private func filterBody(targetNamespace: String) throws -> [UInt8] {
        var filter = TapFilterRequest()
        filter.pathPrefix = path
        filter.method = method?.uppercased()
        filter.authority = authority
        if let to {
            let resource = try TapTarget.resource(to, flag: "--to")
            filter.to = TapFilterRequest.Resource(namespace: toNamespace ?? targetNamespace, resource: resource)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try encoder.encode(filter))
    }

    // MARK: Pods

    /// The target's pods that can be tapped now: running, with an address, and meshed (injected by the webhook
    /// or local mode). Fails, naming what was found, when there are none.
    private func tappablePods(
        target: TapTarget, namespace: String, configuration: ClientConfiguration
    ) async throws -> [TapPod] {
        let client: KubernetesClient
        do {
            client = try KubernetesClient(configuration: configuration)
        } catch {
            throw TapError("cannot reach the API server: \(error)")
        }
        let pods: [Pod]
        do {
            pods = try await client.list(Pod.self, namespace: namespace).items
            try? await client.shutdown()
        } catch {
            try? await client.shutdown()
            throw TapError("cannot list the pods of namespace \(namespace): \(error)")
        }
        let selected = pods.filter { target.selects($0) }.sorted { ($0.metadata.name ?? "") < ($1.metadata.name ?? "") }
        guard !selected.isEmpty else {
            if target.kind == .namespace {
                throw TapError("namespace \(namespace) has no pods")
            }
            throw TapError("\(target.kind.noun) \(target.name) not found in namespace \(namespace) (no pods of it)")
        }
        let tappable = selected.compactMap(TapPod.init)
        guard !tappable.isEmpty else {
            let states = selected.map { pod in
                let name = pod.metadata.name ?? "?"
                if !TapPod.isMeshed(pod) { return "\(name): not meshed" }
                return "\(name): \(pod.status?.phase ?? "no status")"
            }
            throw TapError(
                "no running meshed pods for \(target.kind.noun)/\(target.name) in namespace \(namespace) "
                    + "(\(states.joined(separator: ", ")))")
        }
        return tappable
    }

    // MARK: Streaming

    /// Streams one pod's events into the printer until its proxy closes the stream. Returns whether the stream
    /// was opened; an authorization failure throws (it would fail the same way on every pod).
    private static func tap(
        _ pod: TapPod, body: [UInt8], token: String?, http: HTTPClient, printer: TapPrinter
    ) async throws -> Bool {
        var request = HTTPClientRequest(url: pod.url)
        request.method = .POST
        request.headers.add(name: "content-type", value: "application/json")
        if let token { request.headers.add(name: "authorization", value: "Bearer \(token)") }
        request.body = .bytes(ByteBuffer(bytes: body))
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .seconds(10))
        } catch {
            printer.warn("cannot tap \(pod.displayName) at \(pod.address): \(error)")
            return false
        }
        guard response.status == .ok else {
            let message = await Self.text(of: response)
            switch response.status.code {
            case 401, 403:
                throw TapError("not authorized to tap \(pod.displayName): \(message)")
            case 404:
                printer.warn("tap is not enabled on \(pod.displayName): \(message)")
            default:
                printer.warn("tap of \(pod.displayName) failed: HTTP \(response.status.code): \(message)")
            }
            return false
        }
        var pending = ByteBuffer()
        do {
            for try await chunk in response.body {
                var chunk = chunk
                pending.writeBuffer(&chunk)
                while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                    let length = newline - pending.readerIndex
                    let line = pending.readString(length: length) ?? ""
                    pending.moveReaderIndex(forwardBy: 1)
                    if !line.isEmpty { printer.handle(line: line, pod: pod) }
                }
                pending.discardReadBytes()
            }
            printer.warn("the tap stream of \(pod.displayName) ended")
        } catch {
            // Cancelled: another pod's failure (or the end) stopped every stream; nothing to report for this one.
            if !Task.isCancelled { printer.warn("the tap stream of \(pod.displayName) broke: \(error)") }
        }
        return true
    }

    private static func text(of response: HTTPClientResponse) async -> String {
        guard let buffer = try? await response.body.collect(upTo: 64 * 1024) else { return "(no readable body)" }
        let text = String(buffer: buffer).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "HTTP \(response.status.code)" : text
    }
}

/// A problem `apus tap` reports as `Error: …` with a non-zero exit status.
struct TapError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// `deploy/NAME`, `pod/NAME`, … as kubectl spells resources.
struct TapTarget: Equatable {
    enum Kind: Equatable {
        case deployment, statefulSet, daemonSet, pod, namespace

        var noun: String {
            switch self {
            case .deployment: "deployment"
            case .statefulSet: "statefulset"
            case .daemonSet: "daemonset"
            case .pod: "pod"
            case .namespace: "namespace"
            }
        }
    }

    static let kinds: [String: Kind] = [
        "deploy": .deployment, "deployment": .deployment, "deployments": .deployment,
        "sts": .statefulSet, "statefulset": .statefulSet, "statefulsets": .statefulSet,
        "ds": .daemonSet, "daemonset": .daemonSet, "daemonsets": .daemonSet,
        "po": .pod, "pod": .pod, "pods": .pod,
        "ns": .namespace, "namespace": .namespace, "namespaces": .namespace,
    ]

    var kind: Kind
    var name: String

    init(_ text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[1].isEmpty else {
            throw ValidationError("the target '\(text)' is not TYPE/NAME (e.g. deploy/web, pod/web-0, ns/shop)")
        }
        guard let kind = Self.kinds[parts[0].lowercased()] else {
            throw ValidationError(
                "unknown resource type '\(parts[0])' in '\(text)': tap takes deploy/NAME, sts/NAME, ds/NAME, "
                    + "pod/NAME or ns/NAME")
        }
        self.kind = kind
        self.name = String(parts[1])
    }

    /// Checks a `--to` resource as far as the client can (the proxy validates the kind list itself).
    static func resource(_ text: String, flag: String) throws -> String {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw ValidationError("\(flag) '\(text)' is not TYPE/NAME (e.g. deploy/books)")
        }
        return text
    }

    /// Whether `pod` belongs to the target. Deployments own pods through a ReplicaSet named
    /// `<deployment>-<pod-template-hash>`; the injector's `linkerd.io/proxy-<kind>` label says the same for
    /// injected pods.
    func selects(_ pod: Pod) -> Bool {
        let labels = pod.metadata.labels ?? [:]
        let owners = pod.metadata.ownerReferences ?? []
        switch kind {
        case .namespace:
            return true
        case .pod:
            return pod.metadata.name == name
        case .deployment:
            if labels["linkerd.io/proxy-deployment"] == name { return true }
            guard let hash = labels["pod-template-hash"] else { return false }
            return owners.contains { $0.kind == "ReplicaSet" && $0.name == "\(name)-\(hash)" }
        case .statefulSet:
            return labels["linkerd.io/proxy-statefulset"] == name
                || owners.contains { $0.kind == "StatefulSet" && $0.name == name }
        case .daemonSet:
            return labels["linkerd.io/proxy-daemonset"] == name
                || owners.contains { $0.kind == "DaemonSet" && $0.name == name }
        }
    }
}

/// A pod whose proxy can be tapped: where its control port is and how to name it in messages.
struct TapPod: Sendable {
    var namespace: String
    var name: String
    var address: String

    var displayName: String { "pod/\(name) (namespace \(namespace))" }
    var url: String { "http://\(address)/apus.tap.v1/Observe" }

    /// nil unless the pod runs, has an address and is meshed.
    init?(_ pod: Pod) {
        guard let name = pod.metadata.name, pod.metadata.deletionTimestamp == nil, pod.status?.phase == "Running",
            let ip = pod.status?.podIP, !ip.isEmpty, Self.isMeshed(pod)
        else { return nil }
        let port =
            pod.metadata.annotations?["config.linkerd.io/control-port"].flatMap { Int($0) }
            .flatMap { (1...65535).contains($0) ? $0 : nil } ?? 4190
        self.namespace = pod.metadata.namespace ?? "default"
        self.name = name
        self.address = ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    /// Injected: the proxy-version annotation the webhook (and local mode) stamps, or a proxy container.
    static func isMeshed(_ pod: Pod) -> Bool {
        if pod.metadata.annotations?[InjectorNames.proxyVersion] != nil { return true }
        let containers = (pod.spec?.initContainers ?? []) + (pod.spec?.containers ?? [])
        return containers.contains { InjectorNames.proxyContainerNames.contains($0.name) }
    }
}

/// One NDJSON event of the tap stream, as far as the text output needs it.
struct TapWireEvent: Decodable {
    struct ID: Decodable {
        var connection: UInt64
        var stream: UInt64
    }

    struct Peer: Decodable {
        var address: String
    }

    var type: String
    var id: ID?
    var direction: String?
    var src: Peer?
    var dst: Peer?
    var tls: Bool?
    var method: String?
    var authority: String?
    var path: String?
    var status: Int?
    var latencyToFirstByteMs: Double?
    var durationMs: Double?
    var responseBytes: UInt64?
    var error: Bool?
    var dropped: UInt64?
    var total: UInt64?
}

/// Prints the merged events of every pod, one whole line at a time (stdout is written unbuffered, so a reader
/// sees each event as it happens), and applies `--max-rps` across pods: an exchange whose request is over the
/// limit is not shown at all (neither its `rsp` nor its `end`).
final class TapPrinter: Sendable {
    private struct State {
        var windowStart = ContinuousClock.now
        var shownInWindow = 0
        var suppressed: Set<String> = []
    }

    private let format: TapCommand.OutputFormat
    private let maxRequestsPerSecond: Double
    private let state = NIOLockedValueBox(State())

    init(format: TapCommand.OutputFormat, maxRequestsPerSecond: Double) {
        self.format = format
        self.maxRequestsPerSecond = maxRequestsPerSecond
    }

    func warn(_ message: String) {
        state.withLockedValue { _ in FileHandle.standardError.write(Data("\(message)\n".utf8)) }
    }

    func handle(line: String, pod: TapPod) {
        guard let event = try? JSONDecoder().decode(TapWireEvent.self, from: Data(line.utf8)) else {
            warn("\(pod.displayName) sent a line that is not a tap event: \(line.prefix(200))")
            return
        }
        let key = event.id.map { "\(pod.namespace)/\(pod.name)/\($0.connection):\($0.stream)" }
        let text: String?
        switch format {
        case .json:
            // The proxy's own line, with the pod it came from in front (pod names need no JSON escaping).
            text = line.hasPrefix("{") ? "{\"pod\":\"\(pod.namespace)/\(pod.name)\"," + line.dropFirst() : nil
        case .text:
            text = Self.text(event, pod: pod)
        }
        state.withLockedValue { state in
            if let key {
                switch event.type {
                case "req":
                    if !admit(&state) {
                        state.suppressed.insert(key)
                        return
                    }
                case "end":
                    if state.suppressed.remove(key) != nil { return }
                default:
                    if state.suppressed.contains(key) { return }
                }
            }
            guard let text else { return }
            FileHandle.standardOutput.write(Data((text + "\n").utf8))
        }
    }

    /// One more request in the current one-second window, unless the limit is reached.
    private func admit(_ state: inout State) -> Bool {
        guard maxRequestsPerSecond > 0 else { return true }
        let now = ContinuousClock.now
        if now - state.windowStart >= .seconds(1) {
            state.windowStart = now
            state.shownInWindow = 0
        }
        guard Double(state.shownInWindow) < maxRequestsPerSecond else { return false }
        state.shownInWindow += 1
        return true
    }

    /// Linkerd's `tap` line format.
    static func text(_ event: TapWireEvent, pod: TapPod) -> String? {
        if event.type == "dropped" {
            return "dropped proxy=\(pod.namespace)/\(pod.name) events=\(event.dropped ?? 0) total=\(event.total ?? 0) "
                + "(this tap is too slow for the traffic; narrow the filter)"
        }
        guard let id = event.id else { return nil }
        let proxy = event.direction == "inbound" ? "in" : "out"
        let common =
            "id=\(id.connection):\(id.stream) proxy=\(proxy) src=\(event.src?.address ?? "-") "
            + "dst=\(event.dst?.address ?? "-") tls=\(event.tls ?? false)"
        switch event.type {
        case "req":
            return "req \(common) :method=\(event.method ?? "-") :authority=\(event.authority ?? "-") "
                + ":path=\(event.path ?? "-")"
        case "rsp":
            return "rsp \(common) :status=\(event.status.map(String.init) ?? "-") "
                + "latency=\(micros(event.latencyToFirstByteMs))µs"
        case "end":
            var line =
                "end \(common) duration=\(micros(event.durationMs))µs response-length=\(event.responseBytes ?? 0)B"
            if event.error == true { line += " error=true" }
            return line
        default:
            return nil
        }
    }

    private static func micros(_ milliseconds: Double?) -> Int {
        guard let milliseconds, milliseconds.isFinite, milliseconds >= 0 else { return 0 }
        return Int((milliseconds * 1000).rounded())
    }
}
