import ApusCore
import ApusDestinationClient
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Where an outbound request or connection goes, as discovery answered it.
public struct ResolvedDestination: Sendable, Hashable {
    /// The authority as the application wrote it (`host:port`); what passthrough connects to.
    public var authority: String
    /// The normalized name (`web` → `web.<ns>.svc.cluster.local:80`), nil when the authority does not parse.
    public var canonical: DestinationAuthority?
    /// `.endpoints` to balance over, `.notFound` to forward as addressed, `.external` for an `ExternalName`.
    public var resolution: Resolution
    /// Routes, retry budget and opaque ports; nil when discovery has none (yet) or is not configured.
    public var profile: DestinationProfile?
    /// ``profile`` compiled for routing (once per profile version, off the request path).
    public var routeTable: RouteTable?

    public init(
        authority: String, canonical: DestinationAuthority?, resolution: Resolution,
        profile: DestinationProfile? = nil, routeTable: RouteTable? = nil
    ) {
        self.authority = authority
        self.canonical = canonical
        self.resolution = resolution
        self.profile = profile
        self.routeTable = routeTable ?? profile.map { RouteTable(profile: $0) }
    }

    /// Whether the proxy forwards to ``authority`` as given (no discovery answer).
    public var isPassthrough: Bool { resolution == .notFound }
}

/// Resolves outbound authorities through the destination service, with a cache so that requests after the
/// first cost a lock-protected dictionary read on the caller's event loop.
///
/// ```
///  resolve("web.shop:80", on: loop)
///    │ static table hit ──────────────────────────────► .endpoints(static) (no control plane needed)
///    │ unparsable / no client ────────────────────────► .notFound (passthrough)
///    └ canonical "web.shop.svc.cluster.local:80"
///        cached ─────────────────────────────────────► loop.makeSucceededFuture (no hop, no allocation of a task)
///        first lookup ─► watchEndpoints + watchProfile ─► waits for the first endpoints frame,
///                        at most `firstFrameTimeout` (then passthrough, logged; the watch keeps going)
///        frames ─► cache updated as they arrive; unused for `idleTimeout` ─► watches cancelled
/// ```
///
/// The first lookup of an authority waits for the endpoints frame only: the profile follows on its own stream
/// and is attached when it arrives (the first requests may see `profile == nil`). While the destination service
/// is unreachable a watch keeps its last value (``DestinationWatch``), so known destinations keep resolving.
/// Idle watches are cancelled like Linkerd's discovery cache (`proxy-outbound-discovery-cache-unused-timeout`,
/// 5 s by default), so a proxy only holds streams for what its application currently talks to.
///
/// The static table (`APUS_PROXY_OUTBOUND_STATIC_ENDPOINTS`) is consulted first, with its keys normalized the
/// same way, so tests and local setups can pin endpoints with or without a control plane.
public final class DestinationResolver: Sendable {
    private struct Waiter {
        let promise: EventLoopPromise<ResolvedDestination>
        let authority: String
        let canonical: DestinationAuthority
    }

    /// One watched destination. `resolution == nil` until the first endpoints frame (or the first-frame timeout).
    private struct Entry {
        let generation: UInt64
        var resolution: Resolution?
        var profile: DestinationProfile?
        var routeTable: RouteTable?
        var waiters: [Waiter] = []
        var lastUsed: NIODeadline
        let endpointsWatch: DestinationWatch<Resolution>
        let profileWatch: DestinationWatch<DestinationProfile>
        var consumers: [Task<Void, Never>] = []

        func cancel() {
            endpointsWatch.cancel()
            profileWatch.cancel()
            for consumer in consumers { consumer.cancel() }
        }
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var nextGeneration: UInt64 = 0
        var sweeper: Task<Void, Never>?
        var isShutdown = false
    }

    public let clusterDomain: String
    /// The namespace short names are expanded in (the proxy's pod namespace).
    public let namespace: String
    public let firstFrameTimeout: Duration
    public let idleTimeout: Duration
    private let client: DestinationClient?
    private let staticTable: [String: EndpointSet]
    /// `APUS_PROXY_OUTBOUND_STATIC_PROFILES`, compiled once; used when discovery has no profile.
    private let staticProfiles: [String: RouteTable]
    private let state = NIOLockedValueBox(State())
    private let logger: Logger

    /// - Parameters:
    ///   - client: the destination client; nil resolves only from `staticEndpoints` (everything else passes
    ///     through).
    ///   - staticEndpoints: authority → endpoints; keys are normalized like looked-up authorities, so `web.shop:80`
    ///     and `web.shop.svc.cluster.local:80` are the same entry.
    ///   - namespace: the proxy's namespace for short names; nil falls back to the client's, then `default`.
    ///   - staticProfiles: authority → profile (keys normalized the same way), for routes without a control plane.
    public init(
        client: DestinationClient?, staticEndpoints: [String: [Endpoint]], clusterDomain: String,
        namespace: String?, staticProfiles: [String: DestinationProfile] = [:],
        firstFrameTimeout: Duration = .seconds(3), idleTimeout: Duration = .seconds(5),
        logger: Logger = Logger(label: "apus.proxy.discovery")
    ) {
        let namespace = namespace ?? client?.configuration.namespace ?? "default"
        var table: [String: EndpointSet] = [:]
        for (authority, endpoints) in staticEndpoints {
            let set = EndpointSet(endpoints.map { ($0.key, $0) }, uniquingKeysWith: { _, last in last })
            table[authority] = set
            if let canonical = try? DestinationAuthority(
                parsing: authority, clientNamespace: namespace, clusterDomain: clusterDomain)
            {
                table[canonical.description] = set
            }
        }
        var profiles: [String: RouteTable] = [:]
        for (authority, profile) in staticProfiles {
            let compiled = RouteTable(profile: profile)
            profiles[authority] = compiled
            if let canonical = try? DestinationAuthority(
                parsing: authority, clientNamespace: namespace, clusterDomain: clusterDomain)
            {
                profiles[canonical.description] = compiled
            }
        }
        self.client = client
        self.staticTable = table
        self.staticProfiles = profiles
        self.clusterDomain = clusterDomain
        self.namespace = namespace
        self.firstFrameTimeout = firstFrameTimeout
        self.idleTimeout = idleTimeout
        self.logger = logger
    }

    deinit { shutdown() }

    /// Completes on `eventLoop`; answers from the cache without a hop once known; the first lookup of an authority
    /// waits for the first destination frame (bounded by ``firstFrameTimeout``; on timeout: passthrough).
    public func resolve(authority: String, on eventLoop: any EventLoop) -> EventLoopFuture<ResolvedDestination> {
        if let known = resolveImmediately(authority: authority) { return eventLoop.makeSucceededFuture(known) }
        let future = lookup(authority: authority, on: eventLoop)
        guard !staticProfiles.isEmpty else { return future }
        return future.map { self.withStaticProfile($0) }
    }

    /// The answer ``resolve(authority:on:)`` would give, when it is known without waiting (static endpoints,
    /// passthrough without a destination client, an authority whose watch already answered); nil when the caller
    /// must wait. The forwarding path asks this first: it saves a future and a callback per request.
    public func resolveImmediately(authority: String) -> ResolvedDestination? {
        if let set = staticTable[authority] {
            return withStaticProfile(
                ResolvedDestination(authority: authority, canonical: canonical(authority), resolution: .endpoints(set)))
        }
        guard let canonical = canonical(authority) else {
            return withStaticProfile(ResolvedDestination(authority: authority, canonical: nil, resolution: .notFound))
        }
        let key = canonical.description
        if let set = staticTable[key] {
            return withStaticProfile(
                ResolvedDestination(authority: authority, canonical: canonical, resolution: .endpoints(set)))
        }
        guard client != nil else {
            return withStaticProfile(
                ResolvedDestination(authority: authority, canonical: canonical, resolution: .notFound))
        }
        let now = NIODeadline.now()
        let known = state.withLockedValue { state -> (Resolution, DestinationProfile?, RouteTable?)? in
            if state.isShutdown { return (.notFound, nil, nil) }
            guard let resolution = state.entries[key]?.resolution else { return nil }
            state.entries[key]?.lastUsed = now
            return (resolution, state.entries[key]?.profile, state.entries[key]?.routeTable)
        }
        guard let (resolution, profile, routeTable) = known else { return nil }
        return withStaticProfile(
            ResolvedDestination(
                authority: authority, canonical: canonical, resolution: resolution, profile: profile,
                routeTable: routeTable))
    }

    /// `APUS_PROXY_OUTBOUND_STATIC_PROFILES` for a destination discovery gave no route table.
    private func withStaticProfile(_ resolved: ResolvedDestination) -> ResolvedDestination {
        guard !staticProfiles.isEmpty, resolved.routeTable == nil else { return resolved }
        let key = resolved.canonical?.description
        guard let table = staticProfiles[resolved.authority] ?? key.flatMap({ staticProfiles[$0] }) else {
            return resolved
        }
        var withProfile = resolved
        withProfile.profile = table.profile
        withProfile.routeTable = table
        return withProfile
    }

    private func lookup(authority: String, on eventLoop: any EventLoop) -> EventLoopFuture<ResolvedDestination> {
        if let set = staticTable[authority] {
            return eventLoop.makeSucceededFuture(
                ResolvedDestination(authority: authority, canonical: canonical(authority), resolution: .endpoints(set)))
        }
        guard let canonical = canonical(authority) else {
            return eventLoop.makeSucceededFuture(
                ResolvedDestination(authority: authority, canonical: nil, resolution: .notFound))
        }
        let key = canonical.description
        if let set = staticTable[key] {
            return eventLoop.makeSucceededFuture(
                ResolvedDestination(authority: authority, canonical: canonical, resolution: .endpoints(set)))
        }
        guard let client else {
            return eventLoop.makeSucceededFuture(
                ResolvedDestination(authority: authority, canonical: canonical, resolution: .notFound))
        }
        enum Step {
            case answer(Resolution, DestinationProfile?, RouteTable?)
            case wait(EventLoopFuture<ResolvedDestination>)
            case started(EventLoopFuture<ResolvedDestination>, generation: UInt64, startSweeper: Bool)
        }
        let now = NIODeadline.now()
        let step = state.withLockedValue { state -> Step in
            if state.isShutdown { return .answer(.notFound, nil, nil) }
            if state.entries[key] != nil {
                state.entries[key]?.lastUsed = now
                if let resolution = state.entries[key]?.resolution {
                    return .answer(resolution, state.entries[key]?.profile, state.entries[key]?.routeTable)
                }
                let promise = eventLoop.makePromise(of: ResolvedDestination.self)
                state.entries[key]?.waiters.append(Waiter(promise: promise, authority: authority, canonical: canonical))
                return .wait(promise.futureResult)
            }
            let promise = eventLoop.makePromise(of: ResolvedDestination.self)
            let generation = state.nextGeneration
            state.nextGeneration += 1
            state.entries[key] = Entry(
                generation: generation, waiters: [Waiter(promise: promise, authority: authority, canonical: canonical)],
                lastUsed: now, endpointsWatch: client.watchEndpoints(authority: key),
                profileWatch: client.watchProfile(authority: key))
            let startSweeper = state.sweeper == nil
            return .started(promise.futureResult, generation: generation, startSweeper: startSweeper)
        }
        switch step {
        case .answer(let resolution, let profile, let routeTable):
            return eventLoop.makeSucceededFuture(
                ResolvedDestination(
                    authority: authority, canonical: canonical, resolution: resolution, profile: profile,
                    routeTable: routeTable))
        case .wait(let future):
            return future
        case .started(let future, let generation, let startSweeper):
            startConsumers(key: key, generation: generation)
            if startSweeper { startSweeping() }
            eventLoop.scheduleTask(in: TimeAmount(firstFrameTimeout)) {
                self.firstFrameTimedOut(key: key, generation: generation)
            }
            return future
        }
    }

    /// Authorities currently watched (canonical `host:port`), for the admin endpoint and tests.
    public var watchedAuthorities: [String] { state.withLockedValue { $0.entries.keys.sorted() } }

    /// Cancels every watch; pending lookups complete as passthrough and later ones pass through.
    public func shutdown() {
        let (entries, sweeper) = state.withLockedValue { state in
            state.isShutdown = true
            defer {
                state.entries = [:]
                state.sweeper = nil
            }
            return (Array(state.entries.values), state.sweeper)
        }
        sweeper?.cancel()
        for entry in entries {
            entry.cancel()
            for waiter in entry.waiters { waiter.promise.succeed(Self.passthrough(waiter)) }
        }
    }

    // MARK: - Internals

    private func canonical(_ authority: String) -> DestinationAuthority? {
        try? DestinationAuthority(parsing: authority, clientNamespace: namespace, clusterDomain: clusterDomain)
    }

    private static func passthrough(_ waiter: Waiter) -> ResolvedDestination {
        ResolvedDestination(authority: waiter.authority, canonical: waiter.canonical, resolution: .notFound)
    }

    /// Starts the tasks that copy the watches' values into the entry. They hold the resolver weakly and end when
    /// the watches are cancelled (their streams finish).
    private func startConsumers(key: String, generation: UInt64) {
        guard
            let (endpoints, profiles) = state.withLockedValue({ state in
                state.entries[key].map { ($0.endpointsWatch.updates, $0.profileWatch.updates) }
            })
        else { return }
        let endpointsConsumer = Task { [weak self] in
            for await resolution in endpoints {
                guard let self else { return }
                self.apply(key: key, generation: generation) { $0.resolution = resolution }
            }
        }
        let profileConsumer = Task { [weak self] in
            for await profile in profiles {
                guard let self else { return }
                let routeTable = RouteTable(profile: profile)
                if !routeTable.problems.isEmpty {
                    self.logger.warning(
                        "parts of the destination profile cannot be used",
                        metadata: ["authority": "\(key)", "problems": "\(routeTable.problems)"])
                }
                self.apply(key: key, generation: generation) {
                    $0.profile = profile
                    $0.routeTable = routeTable
                }
            }
        }
        let orphaned = state.withLockedValue { state -> Bool in
            guard state.entries[key]?.generation == generation else { return true }
            state.entries[key]?.consumers = [endpointsConsumer, profileConsumer]
            return false
        }
        if orphaned {
            endpointsConsumer.cancel()
            profileConsumer.cancel()
        }
    }

    /// Applies a change to the entry (if it is still the same one) and completes the waiters once it resolves.
    private func apply(key: String, generation: UInt64, _ change: (inout Entry) -> Void) {
        let ready = state.withLockedValue { state -> ([Waiter], Resolution, DestinationProfile?, RouteTable?)? in
            guard var entry = state.entries[key], entry.generation == generation else { return nil }
            state.entries[key] = nil  // keep the entry uniquely referenced while mutating it
            change(&entry)
            // Waiters wait for endpoints: a profile arriving first leaves them waiting.
            guard let resolution = entry.resolution, !entry.waiters.isEmpty else {
                state.entries[key] = entry
                return nil
            }
            let waiters = entry.waiters
            entry.waiters = []
            state.entries[key] = entry
            return (waiters, resolution, entry.profile, entry.routeTable)
        }
        guard let (waiters, resolution, profile, routeTable) = ready else { return }
        for waiter in waiters {
            waiter.promise.succeed(
                ResolvedDestination(
                    authority: waiter.authority, canonical: waiter.canonical, resolution: resolution,
                    profile: profile, routeTable: routeTable))
        }
    }

    private func firstFrameTimedOut(key: String, generation: UInt64) {
        let waiters = state.withLockedValue { state -> [Waiter]? in
            guard let entry = state.entries[key], entry.generation == generation, entry.resolution == nil else {
                return nil
            }
            // Later lookups pass through at once until a frame arrives and replaces this.
            state.entries[key]?.resolution = .notFound
            state.entries[key]?.waiters = []
            return entry.waiters
        }
        guard let waiters else { return }
        logger.warning(
            "no destination answer in time; forwarding as addressed",
            metadata: ["authority": "\(key)", "timeout": "\(firstFrameTimeout)"])
        for waiter in waiters { waiter.promise.succeed(Self.passthrough(waiter)) }
    }

    /// Cancels watches unused for ``idleTimeout``; checks at a quarter of it (at least every 100 ms).
    private func startSweeping() {
        let interval = max(idleTimeout / 4, .milliseconds(100))
        let task = Task { [weak self] in
            while !Task.isCancelled {
                do { try await Task.sleep(for: interval) } catch { return }
                guard let self else { return }
                self.sweep(now: .now())
            }
        }
        let keep = state.withLockedValue { state -> Bool in
            guard !state.isShutdown, state.sweeper == nil else { return false }
            state.sweeper = task
            return true
        }
        if !keep { task.cancel() }
    }

    private func sweep(now: NIODeadline) {
        let limit = TimeAmount(idleTimeout)
        let idle = state.withLockedValue { state -> [(String, Entry)] in
            let keys = state.entries.compactMap { key, entry in
                entry.waiters.isEmpty && entry.lastUsed + limit <= now ? key : nil
            }
            return keys.compactMap { key in state.entries.removeValue(forKey: key).map { (key, $0) } }
        }
        for (key, entry) in idle {
            entry.cancel()
            logger.debug("stopped watching an idle destination", metadata: ["authority": "\(key)"])
        }
    }
}
