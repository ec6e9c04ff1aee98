import NIOCore
import NIOHTTP1
import NIOHTTP2

/// Answers HTTP/1 parse errors before the decoder closes the connection: 431 for a head over the size or count
/// limits, 400 for everything else — including a request with both `Content-Length` and `Transfer-Encoding` or
/// with two `Content-Length`s (llhttp refuses both), which is exactly the request-smuggling pair. The connection
/// is closed afterwards in every case, so no byte after a malformed head is ever interpreted.
final class HTTPServerLimitsHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private var responseOpen = false
    private let onError: (String) -> Void

    init(onError: @escaping (String) -> Void) {
        self.onError = onError
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let parseError = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        let status: HTTPResponseStatus = parseError == .headerOverflow ? .requestHeaderFieldsTooLarge : .badRequest
        onError(status == .badRequest ? "bad_request" : "headers_too_large")
        if !responseOpen {
            var headers = HTTPHeaders()
            headers.add(name: "connection", value: "close")
            headers.add(name: "content-length", value: "0")
            headers.add(name: ProxyHeaders.proxyError, value: "malformed request: \(parseError)")
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        context.close(promise: nil)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head) where head.status.code >= 200 || head.status == .switchingProtocols:
            responseOpen = true
        case .end:
            responseOpen = false
        default:
            break
        }
        context.write(data, promise: promise)
    }
}

/// Closes an HTTP/2 server connection gracefully on `ChannelShouldQuiesceEvent` (proxy shutdown): GOAWAY, then
/// close once the streams in flight are done.
final class HTTP2QuiesceHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private var openStreams = 0
    private var quiescing = false

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is NIOHTTP2StreamCreatedEvent:
            openStreams += 1
        case is StreamClosedEvent:
            openStreams -= 1
            if quiescing && openStreams <= 0 { context.close(promise: nil) }
        case is ChannelShouldQuiesceEvent:
            quiescing = true
            let goAway = HTTP2Frame(
                streamID: .rootStream,
                payload: .goAway(
                    lastStreamID: .maxID, errorCode: .noError, opaqueData: nil))
            context.writeAndFlush(wrapOutboundOut(goAway), promise: nil)
            if openStreams <= 0 { context.close(promise: nil) }
            return
        default:
            break
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Builds the client-facing HTTP pipelines: both versions end in an ``HTTPForwardHandler`` that sees
/// `HTTPServerRequestPart`s (HTTP/2 through `HTTP2FramePayloadToHTTP1ServerCodec`, so trailers arrive as
/// `.end(headers)`).
enum HTTPServerPipelines {
    static func configureHTTP1(
        _ channel: Channel, shared: ForwardingContext, client: ClientInfo
    ) throws {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = shared.configuration.maxHeaderBytes
        limits.maxHeaderFieldSize = shared.configuration.maxHeaderBytes
        limits.maxHeaderFieldCount = shared.configuration.maxHeaderCount
        let pipeline = channel.pipeline.syncOperations
        let metrics = shared.metrics
        let direction = shared.direction
        // NIO's own setup pairs the request decoder with the response encoder, so the encoder knows which
        // response answers a HEAD: it then keeps `Transfer-Encoding: chunked` from the upstream head but writes
        // no body and no chunk terminator (a terminator there would be read as the start of the next response).
        try pipeline.configureHTTPServerPipeline(
            withPipeliningAssistance: true, withServerUpgrade: nil, withErrorHandling: false,
            withOutboundHeaderValidation: false, withEncoderConfiguration: HTTPResponseEncoder.Configuration(),
            withDecoderLimitConfiguration: limits)
        try pipeline.addHandler(
            HTTPServerLimitsHandler { reason in metrics.httpError(direction: direction, reason: reason) })
        try pipeline.addHandler(HTTPForwardHandler(shared: shared, client: client))
    }

    static func configureHTTP2(
        _ channel: Channel, shared: ForwardingContext, client: ClientInfo
    ) throws {
        let streamClient = ClientInfo(
            httpProtocol: .http2, peerIdentity: client.peerIdentity, isMeshTLS: client.isMeshTLS,
            originalPort: client.originalPort)
        let pipeline = channel.pipeline.syncOperations
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: 1000),
            HTTP2Setting(parameter: .maxHeaderListSize, value: shared.configuration.maxHeaderBytes),
        ]
        _ = try pipeline.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: connection, streamConfiguration: .init(),
            inboundStreamInitializer: { stream in
                stream.eventLoop.makeCompletedFuture {
                    let streamPipeline = stream.pipeline.syncOperations
                    try streamPipeline.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                    try streamPipeline.addHandler(HTTPForwardHandler(shared: shared, client: streamClient))
                }
            })
        try pipeline.addHandler(HTTP2QuiesceHandler())
    }
}
