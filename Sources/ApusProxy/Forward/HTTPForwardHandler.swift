import ApusDestinationClient
import NIOCore
import NIOHTTP1

/// Forwards the requests of one client HTTP/1.1 connection (behind `HTTP1ServerConnectionHandler`, so one exchange
/// at a time) or one HTTP/2 stream (behind `HTTP2FramePayloadToHTTP1ServerCodec`) to an upstream, streaming
/// bodies both ways on the event loop.
///
/// ```
/// client ─parts─► HTTPForwardHandler ──write──► UpstreamHandler ─► upstream (pooled HTTP/1.1 or HTTP/2 stream)
///    ▲                 │  read() held while the upstream is not writable / not connected yet
///    └──── write ◄─────┴──── upstreamRead ◄──── (its read() held while the client is not writable)
/// ```
///
/// Backpressure: neither side reads faster than the other side's socket (or HTTP/2 window) drains, so memory per
/// exchange is bounded by one read batch per side no matter how large the bodies are.
///
/// The target: outbound, `l5d-dst-override` ▸ absolute-form authority ▸ `Host`/`:authority`, resolved through
/// the ``DestinationResolver`` (unknown names pass through to host:port as given); inbound, the original port
/// (`SO_ORIGINAL_DST`) ▸ `apus-orig-dst-port` ▸ the configured default port, on the inbound forward IP.
final class HTTPForwardHandler: ChannelDuplexHandler, UpstreamDelegate, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        /// Between exchanges.
        case idle
        /// Head received; resolving and connecting. Parts read meanwhile wait here (reads are held, so at most
        /// one read batch).
        case connecting(CircularBuffer<HTTPServerRequestPart>)
        case forwarding(UpstreamHandler)
        /// The response is complete (or answered locally) before the request: remaining request parts are
        /// dropped until its end.
        case discarding
        /// After a 101: the pipeline is a byte glue now.
        case upgraded
    }

    private let shared: ForwardingContext
    private var client: ClientInfo
    private var context: ChannelHandlerContext?
    private var state = State.idle
    private var readHeld = false
    private var requestEnded = false
    private var responseStarted = false
    /// The response's `.end` was written (or it was answered locally): a connection closing afterwards, while
    /// the rest of the request is discarded, does not make it a failed response.
    private var responseFinished = false
    private var exchangeOpen = false
    private var clientKeepAlive = true
    private var isUpgradeRequest = false
    /// A 101 waiting for its `.end` (the decoder's last HTTP event) before the pipelines turn into a byte glue.
    private var switchingHead: HTTPResponseHead?
    private var startedAt = NIODeadline.now().uptimeNanoseconds
    private var firstByteNanos: UInt64 = 0
    private var responseStatus = 0
    private var grpcStatus: Int?
    private var metrics = ExchangeMetrics()
    /// Response parts written to the client since the last flush: the upstream's read completion flushes only
    /// then (a complete response was already flushed with its end).
    private var clientFlushPending = false
    /// The last passthrough authority and its parse: a keep-alive client names the same one request after request.
    private var lastPassthrough: (authority: String, address: TargetAddress)?
    /// The connection's upstream pool (``UpstreamPools/pool(for:cache:meshTLS:)``).
    private var upstreamPool: UpstreamPool?
    /// What the current exchange was sent with, for the one retry after a stale keep-alive connection.
    private var sentHead: HTTPRequestHead?
    private var sentTarget: UpstreamTarget?
    private var requestHadBody = false
    private var retriedStale = false
    /// Tap events of the current exchange (issue 5); inert unless someone taps.
    private var tap = TapRecorder()
    /// Routing of the current outbound exchange: plan, route metrics, timers, replay buffer (issue 5).
    private var route = RouteExchange()
    /// Bumped per attempt, so the connect result or timer of an abandoned attempt is ignored.
    private var attemptID: UInt64 = 0
    private var cachedRouteMetrics: RouteMetrics?
    /// BALANCE: the balancer's claim on the endpoint of the current attempt; completed at the response head
    /// (5xx = failure) or on failure, cancelled when the exchange ends first.
    private var lease: EndpointLease?
    /// BALANCE: bumped per exchange and per balancing/split step, so a late answer (a queued pick, a backend's
    /// resolution) for an exchange that ended or an attempt that was superseded (timeout, retry) is dropped.
    private var exchangeGeneration: UInt64 = 0

    init(shared: ForwardingContext, client: ClientInfo) {
        self.shared = shared
        self.client = client
    }

    // MARK: Inbound (client → upstream)

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch state {
        case .idle:
            guard case .head(let head) = part else { return }
            begin(head, context: context)
        case .connecting(var buffered):
            state = .idle
            route.touch()
            if case .body = part { requestHadBody = true }
            buffered.append(part)
            route.replay.append(part)
            state = .connecting(buffered)
            if case .end = part {
                requestEnded = true
                armResponseTimeout()
            }
        case .forwarding(let upstream):
            route.touch()
            switch part {
            case .head:
                return
            case .body(let body):
                requestHadBody = true
                route.replay.append(part)
                upstream.write(.body(.byteBuffer(body)))
            case .end(let trailers):
                requestEnded = true
                route.replay.append(part)
                upstream.write(.end(trailers))
                armResponseTimeout()
            }
        case .discarding:
            if case .end = part {
                requestEnded = true
                state = .idle
                finishExchangeIfDone()
            }
        case .upgraded:
            return
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .forwarding(let upstream) = state { upstream.flush() }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, case .forwarding(let upstream) = state { upstream.resumeReads() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .forwarding(let upstream) = state { upstream.abort() }
        state = .idle
        endExchange(error: .cancel)
        route.reset()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Parse errors were answered by `HTTP1ServerConnectionHandler`; anything else ends the connection.
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) {
        switch state {
        case .connecting:
            readHeld = true
        case .forwarding(let upstream) where !upstream.isWritable:
            readHeld = true
        default:
            context.read()
        }
    }

    private func releaseHeldRead() {
        guard readHeld, let context else { return }
        readHeld = false
        context.read()
    }

    // MARK: Exchange

    private func begin(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        route.reset()
        attemptID &+= 1
        requestEnded = false
        requestHadBody = false
        retriedStale = false
        responseStarted = false
        responseFinished = false
        exchangeOpen = true
        exchangeGeneration &+= 1
        grpcStatus = nil
        responseStatus = 0
        startedAt = NIODeadline.now().uptimeNanoseconds
        clientKeepAlive = client.httpProtocol == .http2 || head.isKeepAlive
        isUpgradeRequest = client.httpProtocol == .http1 && HTTPHeadRewriting.isUpgrade(head.headers)
        shared.inFlight.started()
        tap.nextExchange(head, shared: shared)
        state = .connecting(CircularBuffer(initialCapacity: 4))

        var upstreamHead = head
        // Only when it differs: the setter copies the head's storage (a malloc per request) even for equal values.
        if upstreamHead.version != .http1_1 { upstreamHead.version = .http1_1 }
        if isUpgradeRequest {
            let upgrade = head.headers[canonicalForm: "upgrade"].map(String.init)
            HTTPHeadRewriting.stripHopByHop(&upstreamHead.headers, keepTETrailers: false)
            for value in upgrade { upstreamHead.headers.add(name: "upgrade", value: value) }
            upstreamHead.headers.add(name: "connection", value: "upgrade")
        } else {
            let chunked = HTTPHeadRewriting.isChunked(head.headers)
            HTTPHeadRewriting.stripHopByHop(&upstreamHead.headers, keepTETrailers: true)
            if chunked { upstreamHead.headers.add(name: "transfer-encoding", value: "chunked") }
        }
        switch shared.direction {
        case .outbound: routeOutbound(upstreamHead, context: context)
        case .inbound: routeInbound(upstreamHead, context: context)
        }
    }

    private func routeOutbound(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        var head = head
        guard let authority = HTTPHeadRewriting.targetAuthority(of: head) else {
            fail(ProxyError(.badTarget, "the request names no authority (Host, :authority or absolute URI)"))
            return
        }
        if let absolute = HTTPHeadRewriting.absoluteForm(head.uri) {
            head.uri = absolute.path
            if !head.headers.contains(name: "host") { head.headers.add(name: "host", value: absolute.authority) }
        }
        // `contains` first: `remove` copies the header storage even when nothing matches.
        if head.headers.contains(name: ProxyHeaders.originalProtocol) {
            head.headers.remove(name: ProxyHeaders.originalProtocol)
        }
        if head.headers.contains(name: ProxyHeaders.originalDestinationPort) {
            head.headers.remove(name: ProxyHeaders.originalDestinationPort)
        }
        guard let resolver = shared.resolver else {
            routePassthrough(head, authority: authority, context: context)
            return
        }
        // Known answers (passthrough, static endpoints, a watched destination) skip a future per request.
        if let resolved = resolver.resolveImmediately(authority: authority) {
            routeResolved(head, authority: authority, resolved: resolved, context: context)
            return
        }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let resolvedHead = head
        resolver.resolve(authority: authority, on: context.eventLoop).whenComplete { result in
            let handler = loopBound.value
            guard let context = handler.context else { return }
            switch result {
            case .success(let resolved):
                handler.routeResolved(resolvedHead, authority: authority, resolved: resolved, context: context)
            case .failure:
                handler.routePassthrough(resolvedHead, authority: authority, context: context)
            }
        }
    }

    private func routePassthrough(_ head: HTTPRequestHead, authority: String, context: ChannelHandlerContext) {
        let address: TargetAddress
        if let cached = lastPassthrough, cached.authority == authority {
            address = cached.address
        } else {
            guard let parsed = TargetAddress.parse(authority) else {
                fail(ProxyError(.badTarget, "'\(authority)' is not a host:port to forward to"))
                return
            }
            address = parsed
            lastPassthrough = (authority, parsed)
        }
        let target = UpstreamTarget(
            host: address.host, port: address.port, httpProtocol: isUpgradeRequest ? .http1 : client.httpProtocol)
        connect(head, target: target, authority: authority, destinationLabels: [:], context: context)
    }

    /// - Parameter split: apply the profile's traffic split (`dstOverrides`); false for a backend it chose.
    private func routeResolved(
        _ head: HTTPRequestHead, authority: String, resolved: ResolvedDestination, context: ChannelHandlerContext,
        split: Bool = true
    ) {
        if shared.direction == .outbound, !route.isStarted, !isUpgradeRequest, let table = resolved.routeTable {
            guard
                let routed = startRoute(
                    head, table: table, authority: authority, resolved: resolved, context: context)
            else { return }
            routeResolved(routed, authority: authority, resolved: resolved, context: context)
            return
        }
        if split, let backend = splitBackend(resolved, context: context) {
            routeSplit(head, authority: authority, backend: backend, resolved: resolved, context: context)
            return
        }
        switch resolved.resolution {
        case .notFound:
            routePassthrough(head, authority: authority, context: context)
        case .external(let host, let port):
            let target = UpstreamTarget(
                host: host, port: port, httpProtocol: isUpgradeRequest ? .http1 : client.httpProtocol)
            connect(head, target: target, authority: authority, destinationLabels: [:], context: context)
        case .endpoints(let set):
            balance(head, authority: authority, resolved: resolved, set: set, context: context)
        }
    }

    /// Forwards to `endpoint`, which the balancer picked for this attempt.
    private func forward(
        _ head: HTTPRequestHead, to endpoint: Endpoint, authority: String, context: ChannelHandlerContext
    ) {
        var head = head
        let target: UpstreamTarget
        if let identity = endpoint.identity {
            // A meshed peer: its inbound proxy over mesh TLS; HTTP/1 rides HTTP/2 unless it upgrades.
            let port = endpoint.opaqueTransportPort ?? shared.meshInboundPort
            head.headers.replaceOrAdd(name: ProxyHeaders.originalDestinationPort, value: String(endpoint.port))
            if isUpgradeRequest {
                target = UpstreamTarget(
                    host: endpoint.address, port: port, httpProtocol: .http1, identity: identity)
            } else {
                if client.httpProtocol == .http1 {
                    head.headers.replaceOrAdd(name: ProxyHeaders.originalProtocol, value: "HTTP/1.1")
                    head.headers.remove(name: "transfer-encoding")
                }
                target = UpstreamTarget(
                    host: endpoint.address, port: port, httpProtocol: .http2, identity: identity)
            }
        } else {
            target = UpstreamTarget(
                host: endpoint.address, port: endpoint.port,
                httpProtocol: isUpgradeRequest ? .http1 : client.httpProtocol)
        }
        connect(head, target: target, authority: authority, destinationLabels: endpoint.labels, context: context)
    }

    // MARK: Balancing and traffic split (BALANCE)

    /// Waits (bounded by the fail-fast timeout) for the destination's balancer to pick an endpoint.
    private func balance(
        _ head: HTTPRequestHead, authority: String, resolved: ResolvedDestination, set: EndpointSet,
        context: ChannelHandlerContext
    ) {
        lease?.cancel()
        lease = nil
        let balancer = shared.balancers.balancer(
            for: resolved.canonical?.description ?? resolved.authority, on: context.eventLoop)
        balancer.update(set)
        balancer.update(failureAccrual: resolved.profile?.servicePolicy?.failureAccrual.map(FailureAccrualPolicy.init))
        exchangeGeneration &+= 1
        let generation = exchangeGeneration
        balancer.acquire { [self] result in
            switch result {
            case .success(let picked):
                guard generation == exchangeGeneration, exchangeOpen, case .connecting = state,
                    let context = self.context
                else {
                    picked.cancel()
                    return
                }
                lease = picked
                forward(head, to: picked.endpoint, authority: authority, context: context)
            case .failure(let error):
                guard generation == exchangeGeneration, exchangeOpen else { return }
                fail(ProxyError(.noEndpoints, "\(authority): \(error.message)"))
            }
        }
    }

    /// The backend of the traffic split for this request (the matched HTTPRoute rule's `backendRefs`, else the
    /// ServiceProfile's `dstOverrides`), nil when nothing splits.
    private func splitBackend(_ resolved: ResolvedDestination, context: ChannelHandlerContext) -> WeightedBackend? {
        if route.isStarted, !route.plan.backends.isEmpty {
            return shared.balancers.split(
                for: route.plan.backendsKey, backends: route.plan.backends, on: context.eventLoop
            ).pick()
        }
        guard let overrides = resolved.profile?.dstOverrides, !overrides.isEmpty else { return nil }
        return shared.balancers.split(
            for: resolved.canonical?.description ?? resolved.authority, dstOverrides: overrides, on: context.eventLoop
        ).pick()
    }

    /// Sends the request to the split's backend: the destination itself, or another authority resolved (and
    /// balanced) on its own; the request's `Host` stays as the client wrote it.
    private func routeSplit(
        _ head: HTTPRequestHead, authority: String, backend: WeightedBackend, resolved: ResolvedDestination,
        context: ChannelHandlerContext
    ) {
        guard let resolver = shared.resolver, backend.authority != resolved.canonical?.description else {
            routeResolved(head, authority: authority, resolved: resolved, context: context, split: false)
            return
        }
        if let target = resolver.resolveImmediately(authority: backend.authority) {
            routeResolved(head, authority: authority, resolved: target, context: context, split: false)
            return
        }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        exchangeGeneration &+= 1
        let generation = exchangeGeneration
        resolver.resolve(authority: backend.authority, on: context.eventLoop).whenComplete { result in
            let handler = loopBound.value
            guard generation == handler.exchangeGeneration, let context = handler.context else { return }
            switch result {
            case .success(let target):
                handler.routeResolved(head, authority: authority, resolved: target, context: context, split: false)
            case .failure:
                handler.routePassthrough(head, authority: backend.authority, context: context)
            }
        }
    }

    private func routeInbound(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        var head = head
        switch shared.configuration.inboundPolicy {
        case .deny:
            fail(ProxyError(.unauthorized, "inbound policy 'deny' refuses all traffic"))
            return
        case .allAuthenticated where client.peerIdentity == nil:
            fail(
                ProxyError(.unauthorized, "inbound policy 'all-authenticated' requires a meshed, authenticated client"))
            return
        default:
            break
        }
        let headerPort = head.headers.first(name: ProxyHeaders.originalDestinationPort).flatMap { Int($0) }
        let originalProtocol = head.headers.first(name: ProxyHeaders.originalProtocol)
        head.headers.remove(name: ProxyHeaders.originalDestinationPort)
        head.headers.remove(name: ProxyHeaders.originalProtocol)
        head.headers.remove(name: ProxyHeaders.clientIdentity)
        if let peer = client.peerIdentity { head.headers.add(name: ProxyHeaders.clientIdentity, value: peer) }
        guard let port = client.originalPort ?? headerPort ?? shared.configuration.inboundDefaultPort,
            (1...65535).contains(port)
        else {
            fail(
                ProxyError(
                    .noTargetPort,
                    "no target port: not redirected, no \(ProxyHeaders.originalDestinationPort)"
                        + " header and no default inbound port"))
            return
        }
        let httpProtocol: UpstreamProtocol
        if isUpgradeRequest {
            httpProtocol = .http1
        } else if client.isMeshTLS && client.httpProtocol == .http2 {
            httpProtocol = originalProtocol == "HTTP/1.1" ? .http1 : .http2
        } else {
            httpProtocol = client.httpProtocol
        }
        if httpProtocol == .http1 && client.httpProtocol == .http2 && !head.headers.contains(name: "content-length")
            && head.method != .GET && head.method != .HEAD
        {
            head.headers.add(name: "transfer-encoding", value: "chunked")
        }
        let target = UpstreamTarget(
            host: shared.configuration.inboundForwardIP, port: port, httpProtocol: httpProtocol)
        let authority = head.headers.first(name: "host")
        connect(head, target: target, authority: authority, destinationLabels: [:], context: context)
    }

    private func connect(
        _ head: HTTPRequestHead, target: UpstreamTarget, authority: String?, destinationLabels: [String: String],
        context: ChannelHandlerContext
    ) {
        let tls: TLSStatus =
            shared.direction == .inbound
            ? client.tlsStatus
            : (target.identity.map { .tls(peer: $0) } ?? .none(reason: "not_provided_by_service_discovery"))
        let targetAddress = target.address  // built once: it is a fresh string each time
        let labels = HTTPTrafficLabels(
            direction: shared.direction, authority: shared.direction == .outbound ? authority : nil,
            targetAddress: targetAddress, tls: tls, destination: destinationLabels)
        metrics.requestStarted(labels, registry: shared.metrics)
        attemptStarting(context: context)
        // Tap: the request event once the target is known (the first attempt's; retries are not new requests).
        tap.request(
            TapRecorder.Request(
                head: head, authority: authority, targetAddress: targetAddress, targetIdentity: target.identity,
                destinationLabels: destinationLabels,
                route: route.isStarted ? route.plan.name : TapRecorder.defaultRoute),
            shared: shared, client: client, channel: context.channel)

        let pool = shared.pools.pool(for: context.eventLoop, cache: &upstreamPool, meshTLS: shared.meshTLS)
        sentHead = head
        sentTarget = target
        acquire(head, target: target, from: pool, fresh: false)
    }

    private func acquire(_ head: HTTPRequestHead, target: UpstreamTarget, from pool: UpstreamPool, fresh: Bool) {
        let attempt = attemptID
        pool.acquire(
            target, connectTimeout: shared.connectTimeout, dedicated: isUpgradeRequest, fresh: fresh
        ) { [self] result in
            guard attempt == attemptID else {
                // A route timeout or a retry abandoned this attempt meanwhile.
                if case .success(let upstream) = result { upstream.abort() }
                return
            }
            switch result {
            case .success(let upstream):
                connected(upstream, head: head)
            case .failure(let error):
                if !retryAttempt(after: error) { fail(error) }
            }
        }
    }

    private func connected(_ upstream: UpstreamHandler, head: HTTPRequestHead) {
        guard case .connecting(let buffered) = state, context != nil else {
            // The client went away meanwhile; do not leave a half-used connection in the pool.
            upstream.abort()
            return
        }
        state = .forwarding(upstream)
        upstream.begin(self)
        upstream.write(.head(head))
        for part in buffered {
            switch part {
            case .head: break
            case .body(let body): upstream.write(.body(.byteBuffer(body)))
            case .end(let trailers): upstream.write(.end(trailers))
            }
        }
        upstream.flush()
        if upstream.isWritable { releaseHeldRead() }
    }

    /// Answers the request locally (connect failure, policy, no endpoints) with `l5d-proxy-error`.
    private func fail(_ error: ProxyError) {
        lease?.complete(failed: true)
        lease = nil
        guard let context else { return }
        route.cancelTimers()
        shared.metrics.httpError(direction: shared.direction, reason: error.reason.rawValue)
        if responseStarted {
            // Mid-response there is no way to report it but to cut the stream/connection (after counting it:
            // the close may report the channel inactive at once, which would count a client cancel instead).
            state = .idle
            endExchange(error: ResponseError(error.reason))
            context.close(promise: nil)
            return
        }
        var headers = HTTPHeaders()
        headers.add(name: ProxyHeaders.proxyError, value: error.message)
        answerLocally(status: error.status, headers: headers, context: context)
    }

    /// Answers the request with `status`, `headers` and no body (proxy errors, route redirects).
    private func answerLocally(status: Int, headers: HTTPHeaders, context: ChannelHandlerContext) {
        route.cancelTimers()
        var headers = headers
        headers.add(name: "content-length", value: "0")
        let closeAfter = client.httpProtocol == .http1 && (!requestEnded || !clientKeepAlive)
        if closeAfter { headers.add(name: "connection", value: "close") }
        let head = HTTPResponseHead(
            version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers)
        responseStarted = true
        responseFinished = true
        responseStatus = status
        firstByteNanos = NIODeadline.now().uptimeNanoseconds &- startedAt
        tap.requestWithoutTarget(shared: shared, client: client, channel: context.channel)
        tap.responded(status: status, latencyToFirstByteNanos: firstByteNanos)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        // The state moves on before `.end` is written: writing it makes `HTTP1ServerConnectionHandler` deliver a
        // pipelined next request at once, which must find this handler between exchanges.
        state = requestEnded ? .idle : .discarding
        if closeAfter {
            state = .idle
            endExchange(error: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { [context] _ in
                context.close(promise: nil)
            }
            return
        }
        releaseHeldRead()
        finishExchangeIfDone()
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    private func finishExchangeIfDone() {
        if case .idle = state, requestEnded { endExchange(error: nil) }
    }

    /// - Parameter error: why the exchange ends without a complete response (nil: it completed). A response
    ///   whose head went out is counted with its status, as a failure with `error`; one that never came is
    ///   counted with `error` alone (no `status_code`), as Linkerd does.
    private func endExchange(error: ResponseError?) {
        lease?.cancel()
        lease = nil
        guard exchangeOpen else { return }
        exchangeOpen = false
        let error = responseFinished ? nil : error
        shared.inFlight.finished()
        tap.ended(durationNanos: NIODeadline.now().uptimeNanoseconds &- startedAt, error: error != nil)
        if let since = route.trailersPendingSince {
            // A streamed gRPC attempt that broke before its trailers.
            recordAttempt(status: responseStatus, grpcStatus: nil, error: error ?? .reset, headAt: since)
        }
        if let routeMetrics = route.metrics {
            if responseStarted {
                routeMetrics.responded(
                    statusCode: responseStatus, grpcStatus: grpcStatus, latencyToFirstByteNanos: firstByteNanos,
                    failed: error != nil || route.plan.isFailure(status: responseStatus, grpcStatus: grpcStatus),
                    error: error)
            } else if let error {
                routeMetrics.responded(
                    statusCode: 0, grpcStatus: nil, latencyToFirstByteNanos: 0, failed: true, error: error)
            }
        }
        route.reset()
        metrics.exchangeEnded(
            status: responseStarted ? responseStatus : nil, grpcStatus: grpcStatus,
            latencyToFirstByteNanos: firstByteNanos, error: error)
    }

    // MARK: Routes, timeouts, retries (issue 5)

    /// Selects the route, counts the request, keeps what retries need and arms the request timeout; nil when the
    /// route answered the request itself (redirect, unsupported filter).
    private func startRoute(
        _ head: HTTPRequestHead, table: RouteTable, authority: String, resolved: ResolvedDestination,
        context: ChannelHandlerContext
    ) -> HTTPRequestHead? {
        let plan = table.plan(for: head, authority: authority)
        let labels = RouteLabels(
            direction: .outbound, destination: resolved.canonical?.description ?? authority, route: plan.name)
        let metrics: RouteMetrics
        if let cached = cachedRouteMetrics, cached.labels == labels {
            metrics = cached
        } else {
            metrics = shared.metrics.routes.route(labels)
            cachedRouteMetrics = metrics
        }
        var head = head
        for modifier in plan.requestFilters { modifier.apply(to: &head.headers) }
        route.start(plan, metrics: metrics, head: head, authority: authority, resolved: resolved)
        if case .limited(let policy) = plan.retry, !policy.grpcCodes.isEmpty {
            route.holdsGRPCResponses = Self.isGRPC(head)
        }
        metrics.requestStarted(retryable: plan.mayRetry)
        let now = NIODeadline.now().uptimeNanoseconds
        if case .budgeted(let budget) = plan.retry { budget.deposit(now: now) }
        // Parts read while discovery answered are part of what a retry replays.
        if case .connecting(let buffered) = state { for part in buffered { route.replay.append(part) } }
        switch plan.localAnswer {
        case .redirect(let status, let location):
            var headers = HTTPHeaders()
            headers.add(name: "location", value: location)
            answerLocally(status: status, headers: headers, context: context)
            return nil
        case .failClosed(let reason):
            fail(ProxyError(.unsupportedRoute, reason))
            return nil
        case nil:
            break
        }
        if let timeout = plan.requestTimeout {
            // The request timeout counts from the request head, discovery included.
            let remaining = timeout - .nanoseconds(Int64(clamping: now &- startedAt))
            let generation = route.generation
            route.requestTimer = schedule(in: max(remaining, .zero), context: context) {
                $0.routeTimedOut(generation: generation)
            }
        }
        armResponseTimeout()
        if let idle = plan.idleTimeout {
            let generation = route.generation
            route.idleTimer = schedule(in: idle, context: context) { $0.idleTimerFired(generation: generation) }
        }
        return head
    }

    private static func isGRPC(_ head: HTTPRequestHead) -> Bool {
        guard let type = head.headers.first(name: "content-type") else { return false }
        return type.utf8.count >= 16 && type.lowercased().hasPrefix("application/grpc")
    }

    /// `timeout.linkerd.io/idle`: the timer armed at the route's start fires; if a part moved since, it is armed
    /// again for what is left of the idle period from that part, else the exchange timed out (504 before the
    /// response head, a cut stream/connection after it). Parts only record their time, so a streaming exchange
    /// costs one timer per idle period, not one per chunk.
    private func idleTimerFired(generation: UInt64) {
        guard route.generation == generation, exchangeOpen, let idle = route.plan.idleTimeout, let context else {
            return
        }
        route.idleTimer = nil
        let quiet = Int64(clamping: NIODeadline.now().uptimeNanoseconds &- route.lastActivity)
        guard quiet < idle.nanoseconds else {
            routeTimedOut(generation: generation)
            return
        }
        route.idleTimer = schedule(in: .nanoseconds(idle.nanoseconds - quiet), context: context) {
            $0.idleTimerFired(generation: generation)
        }
    }

    private func schedule(
        in delay: TimeAmount, context: ChannelHandlerContext, _ body: @escaping (HTTPForwardHandler) -> Void
    ) -> Scheduled<Void> {
        context.eventLoop.assumeIsolated().scheduleTask(in: delay) { [weak self] in
            if let self { body(self) }
        }
    }

    /// `timeout.linkerd.io/response` runs from the end of the request until the response ends.
    private func armResponseTimeout() {
        guard route.isStarted, requestEnded, route.responseTimer == nil, let timeout = route.plan.responseTimeout,
            let context
        else { return }
        let generation = route.generation
        route.responseTimer = schedule(in: timeout, context: context) { $0.routeTimedOut(generation: generation) }
    }

    /// A route's request or response timeout expired: the running attempt is cancelled (its HTTP/2 stream reset or
    /// its HTTP/1 connection closed, never returned to the pool) and the client gets 504 with
    /// `l5d-proxy-error: request timed out`, or a reset when its response had already started.
    private func routeTimedOut(generation: UInt64) {
        guard route.generation == generation, exchangeOpen else { return }
        switch state {
        case .connecting, .forwarding: break
        default: return
        }
        route.metrics?.timedOut()
        recordAttempt(status: 0, grpcStatus: nil, error: .timeout)
        if case .forwarding(let upstream) = state { upstream.abort() }
        attemptID &+= 1
        state = requestEnded ? .idle : .discarding
        fail(ProxyError(.requestTimeout, "request timed out"))
    }

    /// The per-attempt timeout (`retry.linkerd.io/timeout`, `timeouts.backendRequest`) expired before the
    /// attempt's response head: the attempt is cancelled and retried if the route allows, else 504.
    private func attemptTimedOut(attempt: UInt64) {
        guard attempt == attemptID, !responseStarted else { return }
        switch state {
        case .connecting, .forwarding: break
        default: return
        }
        if case .forwarding(let upstream) = state { upstream.abort() }
        attemptID &+= 1
        let error = ProxyError(.requestTimeout, "request timed out")
        if retryAttempt(after: error) { return }
        route.metrics?.timedOut()
        state = requestEnded ? .idle : .discarding
        fail(error)
    }

    /// Counts an attempt about to be sent and arms its timeout.
    private func attemptStarting(context: ChannelHandlerContext) {
        guard route.isStarted else { return }
        route.attempts += 1
        route.attemptInFlight = true
        route.attemptStartedAt = NIODeadline.now().uptimeNanoseconds
        route.metrics?.attemptStarted()
        if let timeout = route.plan.attemptTimeout {
            let attempt = attemptID
            route.attemptTimer = schedule(in: timeout, context: context) { $0.attemptTimedOut(attempt: attempt) }
        }
    }

    /// Counts how the running attempt ended in the `route_actual_*` families (once per attempt): its status, or
    /// status 0 and `error` when it got no response.
    /// - Parameter headAt: when the attempt's response head arrived, if not now (a held gRPC response).
    private func recordAttempt(status: Int, grpcStatus: Int?, error: ResponseError? = nil, headAt: UInt64? = nil) {
        guard route.attemptInFlight else { return }
        route.attemptInFlight = false
        route.lastAttemptStatus = status
        route.lastAttemptGRPCStatus = grpcStatus
        route.lastAttemptError = error
        route.metrics?.attemptResponded(
            statusCode: status, grpcStatus: grpcStatus,
            latencyToFirstByteNanos: (headAt ?? NIODeadline.now().uptimeNanoseconds) &- route.attemptStartedAt,
            failed: error != nil || route.plan.isFailure(status: status, grpcStatus: grpcStatus), error: error)
    }

    /// A final response head of an attempt: counted, and retried instead of forwarded when the route says so.
    private func routeAttemptAnswered(_ head: HTTPResponseHead) -> Bool {
        let status = Int(head.status.code)
        let grpc = head.headers.first(name: "grpc-status").flatMap { Int($0) }
        route.cancelAttemptTimer()
        recordAttempt(status: status, grpcStatus: grpc)
        guard route.plan.isRetryable(status: status, grpcStatus: grpc) else { return false }
        return retry()
    }

    /// An attempt failed without a response (connect error, reset, attempt timeout): counted, then retried if the
    /// route allows; false leaves the failure to the caller.
    private func retryAttempt(after error: ProxyError) -> Bool {
        guard route.isStarted else { return false }
        recordAttempt(status: 0, grpcStatus: nil, error: ResponseError(error.reason))
        return retry()
    }

    /// Sends the request again when the route retries, its budget (ServiceProfile) or limit (HTTPRoute) allows,
    /// nothing reached the client yet and the body so far fit the replay buffer. The failed attempt's upstream is
    /// aborted (stream reset / connection closed); the new attempt replays the head and the kept body parts, then
    /// continues with parts still to come.
    /// - Parameter abortUpstream: false when the failed attempt's exchange completed both ways (a gRPC response
    ///   held to its trailers): its connection goes back to the pool instead.
    private func retry(abortUpstream: Bool = true) -> Bool {
        guard route.isStarted, !responseStarted, !isUpgradeRequest, let context, let head = route.head,
            let resolved = route.resolved
        else { return false }
        let metrics = route.metrics
        var backoff: TimeAmount?
        switch route.plan.retry {
        case .none:
            return false
        case .budgeted(let budget):
            if route.replay.overflowed {
                metrics?.retrySkipped(.body)
                return false
            }
            guard route.attempts < RouteExchange.maximumBudgetedAttempts,
                budget.withdraw(now: NIODeadline.now().uptimeNanoseconds)
            else {
                metrics?.retrySkipped(.budget)
                return false
            }
        case .limited(let policy):
            if route.replay.overflowed {
                metrics?.retrySkipped(.body)
                return false
            }
            guard route.attempts <= policy.limit else {
                metrics?.retrySkipped(.budget)
                return false
            }
            backoff = RouteExchange.backoff(afterAttempt: route.attempts)
        }
        metrics?.retried()
        if abortUpstream, case .forwarding(let upstream) = state { upstream.abort() }
        route.held = nil
        lease?.complete(failed: true)
        lease = nil
        self.metrics.exchangeEnded(
            status: route.lastAttemptStatus, grpcStatus: route.lastAttemptGRPCStatus,
            latencyToFirstByteNanos: NIODeadline.now().uptimeNanoseconds &- route.attemptStartedAt,
            error: route.lastAttemptError)
        attemptID &+= 1
        route.cancelAttemptTimer()
        state = .connecting(CircularBuffer(route.replay.parts))
        let authority = route.authority
        guard let backoff else {
            routeResolved(head, authority: authority, resolved: resolved, context: context)
            return true
        }
        let attempt = attemptID
        route.backoffTimer = schedule(in: backoff, context: context) { handler in
            guard handler.attemptID == attempt, let context = handler.context, case .connecting = handler.state
            else { return }
            handler.routeResolved(head, authority: authority, resolved: resolved, context: context)
        }
        return true
    }

    // MARK: UpstreamDelegate (upstream → client)

    var downstreamWritable: Bool { context?.channel.isWritable ?? false }

    func upstreamRead(_ part: HTTPClientResponsePart) {
        guard let context else { return }
        route.touch()
        switch part {
        case .head(var head):
            if head.status == .switchingProtocols && isUpgradeRequest {
                switchingHead = head
                return
            }
            if head.status.code < 200 {
                HTTPHeadRewriting.stripHopByHop(&head.headers, keepTETrailers: false)
                context.write(wrapOutboundOut(.head(head)), promise: nil)
                clientFlushPending = true
                return
            }
            if route.isStarted {
                if holdForTrailers(head) { return }
                if route.holdsGRPCResponses, head.status == .ok, !head.headers.contains(name: "grpc-status") {
                    // Streams (no retry possible): counted at its end with the trailers' `grpc-status`.
                    route.cancelAttemptTimer()
                    route.trailersPendingSince = NIODeadline.now().uptimeNanoseconds
                } else if routeAttemptAnswered(head) {
                    return
                }
            }
            forwardResponseHead(head, context: context)
        case .body(let body):
            if route.held != nil {
                if route.held?.append(body) == true { return }
                // Over the hold bound: what is held goes out, the rest streams, the attempt is final.
                releaseHeldResponse(context: context)
            }
            if tap.isRecording { tap.responseBody(body.readableBytes) }
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            clientFlushPending = true
        case .end(let trailers):
            if let head = switchingHead {
                switchingHead = nil
                switchProtocols(head, context: context)
                return
            }
            if route.held != nil {
                let grpc = trailers?.first(name: "grpc-status").flatMap { Int($0) }
                if retryHeldResponse(grpcStatus: grpc) { return }
                releaseHeldResponse(context: context)
            }
            if let since = route.trailersPendingSince {
                route.trailersPendingSince = nil
                let grpc = trailers?.first(name: "grpc-status").flatMap { Int($0) }
                recordAttempt(status: 200, grpcStatus: grpc, headAt: since)
            }
            if let status = trailers?.first(name: "grpc-status") { grpcStatus = Int(status) }
            // Finish the exchange first: writing `.end` makes `HTTP1ServerConnectionHandler` deliver a pipelined next
            // request at once, which must find this handler between exchanges.
            // A promise only when the connection closes after this write (none per keep-alive response).
            let written = clientKeepAlive ? nil : context.eventLoop.makePromise(of: Void.self)
            responseFinished = true
            responseEnded(written: written?.futureResult, context: context)
            clientFlushPending = false
            context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: written)
        }
    }

    /// gRPC retries on `grpc-status` in trailers (`retry.linkerd.io/grpc`): a 200 response to a gRPC request on
    /// such a route is held instead of forwarded, while a retry is still possible (limit not spent, request body
    /// kept), so nothing reaches the client before the trailers say whether the attempt failed.
    private func holdForTrailers(_ head: HTTPResponseHead) -> Bool {
        guard route.holdsGRPCResponses, route.held == nil, head.status == .ok,
            !head.headers.contains(name: "grpc-status"), !route.replay.overflowed,
            case .limited(let policy) = route.plan.retry, route.attempts <= policy.limit
        else { return false }
        route.cancelAttemptTimer()
        route.held = HeldResponse(head: head, receivedAt: NIODeadline.now().uptimeNanoseconds)
        return true
    }

    /// The held response's trailers arrived: the attempt is counted with their `grpc-status` and retried when
    /// the route lists it (the attempt's connection is reused when its request was complete too).
    private func retryHeldResponse(grpcStatus grpc: Int?) -> Bool {
        guard let held = route.held else { return false }
        recordAttempt(status: 200, grpcStatus: grpc, headAt: held.receivedAt)
        guard route.plan.isRetryable(status: 200, grpcStatus: grpc) else { return false }
        return retry(abortUpstream: !requestEnded)
    }

    /// Sends the held head and body parts on to the client: the attempt is final, counted at its end.
    private func releaseHeldResponse(context: ChannelHandlerContext) {
        guard let held = route.held else { return }
        route.held = nil
        route.trailersPendingSince = held.receivedAt
        forwardResponseHead(held.head, context: context)
        for body in held.bodies {
            if tap.isRecording { tap.responseBody(body.readableBytes) }
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
    }

    /// Writes a final (non-retried) response head to the client, with the route's response header edits.
    private func forwardResponseHead(_ head: HTTPResponseHead, context: ChannelHandlerContext) {
        var head = head
        if route.isStarted {
            for modifier in route.plan.responseFilters { modifier.apply(to: &head.headers) }
        }
        responseStarted = true
        responseStatus = Int(head.status.code)
        lease?.complete(failed: responseStatus >= 500)
        lease = nil
        firstByteNanos = NIODeadline.now().uptimeNanoseconds &- startedAt
        if let status = head.headers.first(name: "grpc-status") { grpcStatus = Int(status) }
        tap.responded(status: responseStatus, latencyToFirstByteNanos: firstByteNanos)
        let chunked = HTTPHeadRewriting.isChunked(head.headers)
        HTTPHeadRewriting.stripHopByHop(&head.headers, keepTETrailers: false)
        if head.version != .http1_1 { head.version = .http1_1 }  // the setter copies even for an equal value
        if client.httpProtocol == .http1 {
            if chunked { head.headers.add(name: "transfer-encoding", value: "chunked") }
            if !clientKeepAlive { head.headers.add(name: "connection", value: "close") }
        }
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        clientFlushPending = true
    }

    private func responseEnded(written: EventLoopFuture<Void>?, context: ChannelHandlerContext) {
        guard case .forwarding(let upstream) = state else { return }
        route.cancelTimers()
        if requestEnded {
            state = .idle
            endExchange(error: nil)
        } else {
            // Early response (e.g. 413 before the upload finished): the upstream cannot be reused; the rest of
            // the request body is dropped.
            upstream.abort()
            state = .discarding
            releaseHeldRead()
        }
        if !clientKeepAlive, let written {
            written.assumeIsolated().whenComplete { [context] _ in context.close(promise: nil) }
        }
    }

    func upstreamReadComplete() {
        guard clientFlushPending, let context else { return }
        clientFlushPending = false
        context.flush()
    }

    func upstreamBecameWritable() {
        releaseHeldRead()
    }

    func upstreamFailed(_ error: ProxyError) {
        guard case .forwarding(let upstream) = state else { return }
        if retryOnFreshConnection(after: upstream) { return }
        if retryAttempt(after: error) { return }
        state = requestEnded ? .idle : .discarding
        fail(error)
    }

    /// A pooled keep-alive connection that the server closed between requests fails the next request before any
    /// response byte. The server cannot have acted on a request it never answered on a connection it was closing,
    /// so, like hyper (and so Linkerd), an idempotent request without a body is sent once more on a new
    /// connection instead of answering 502.
    private func retryOnFreshConnection(after upstream: UpstreamHandler) -> Bool {
        guard upstream.isReused, !responseStarted, !retriedStale, !requestHadBody, let head = sentHead,
            let target = sentTarget, let context, Self.isIdempotent(head.method)
        else { return false }
        let pool = shared.pools.pool(for: context.eventLoop, cache: &upstreamPool, meshTLS: shared.meshTLS)
        retriedStale = true
        var buffered = CircularBuffer<HTTPServerRequestPart>(initialCapacity: 1)
        if requestEnded { buffered.append(.end(nil)) }
        state = .connecting(buffered)
        acquire(head, target: target, from: pool, fresh: true)
        return true
    }

    private static func isIdempotent(_ method: HTTPMethod) -> Bool {
        switch method {
        case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: true
        default: false
        }
    }

    // MARK: Upgrade

    /// After a 101, both connections drop HTTP and are glued byte for byte (WebSocket and friends).
    private func switchProtocols(_ head: HTTPResponseHead, context: ChannelHandlerContext) {
        guard case .forwarding(let upstream) = state, let upstreamChannel = upstream.channel else { return }
        state = .upgraded
        responseStarted = true
        responseStatus = 101
        firstByteNanos = NIODeadline.now().uptimeNanoseconds &- startedAt
        context.writeAndFlush(wrapOutboundOut(.head(head)), promise: nil)
        endExchange(error: nil)

        let tcp = shared.metrics.tcp(
            TCPTrafficLabels(
                direction: shared.direction, peer: .destination, tls: client.tlsStatus,
                targetAddress: upstream.target.address))
        tcp.opened()
        let (clientGlue, upstreamGlue) = GlueHandler.matchedPair(
            firstRead: { tcp.wrote($0) }, secondRead: { tcp.read($0) }, onClose: { tcp.closed(error: nil) })
        let clientPipeline = context.pipeline.syncOperations
        let upstreamPipeline = upstreamChannel.pipeline.syncOperations
        let channel = context.channel
        do {
            // Both glues first, then the decoders: their removal forwards bytes read past the heads.
            if let encoder = try? upstreamPipeline.handler(type: HTTPRequestEncoder.self) {
                upstreamPipeline.removeHandler(encoder, promise: nil)
            }
            upstreamPipeline.removeHandler(upstream, promise: nil)
            try upstreamPipeline.addHandler(upstreamGlue)
            if let connection = try? clientPipeline.handler(type: HTTP1ServerConnectionHandler.self) {
                clientPipeline.removeHandler(connection, promise: nil)
            }
            try clientPipeline.addHandler(clientGlue)
            clientPipeline.removeHandler(context: context, promise: nil)
            if let encoder = try? clientPipeline.handler(type: HTTPResponseEncoder.self) {
                clientPipeline.removeHandler(encoder, promise: nil)
            }
            if let decoder = try? upstreamPipeline.handler(type: ByteToMessageHandler<HTTPResponseDecoder>.self) {
                upstreamPipeline.removeHandler(decoder, promise: nil)
            }
            if let decoder = try? clientPipeline.handler(
                type: ByteToMessageHandler<HTTPDecoder<HTTPServerRequestPart, HTTPServerResponsePart>>.self)
            {
                clientPipeline.removeHandler(decoder, promise: nil)
            }
        } catch {
            channel.close(promise: nil)
            upstreamChannel.close(promise: nil)
            return
        }
        channel.read()
        upstreamChannel.read()
    }
}
