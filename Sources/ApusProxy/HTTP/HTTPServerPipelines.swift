import NIOCore
import NIOHTTP1
import NIOHTTP2

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
    /// An HTTP/1.1 connection: on the spliced path (``HTTP1SpliceHandler``) when it may start there, which hands
    /// it to the codec path (``configureHTTP1Codec(_:shared:client:)``) at the first request it does not take.
    static func configureHTTP1(
        _ channel: Channel, shared: ForwardingContext, client: ClientInfo
    ) throws {
        // The handler reads on while a response is in flight, so a client's FIN (or, over mesh TLS, its
        // close_notify, which NIOSSL then reports the same way) must read as "no more requests": answer, then
        // close, rather than close the connection under the response.
        try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
        guard HTTP1SpliceHandler.accepts(client, configuration: shared.configuration) else {
            try configureHTTP1Codec(channel, shared: shared, client: client)
            return
        }
        try channel.pipeline.syncOperations.addHandler(
            HTTP1SpliceHandler(shared: shared, client: client) { channel in
                try configureHTTP1Codec(channel, shared: shared, client: client)
            })
    }

    private static func configureHTTP1Codec(
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
        // Pipelining, parse errors and draining are `HTTP1ServerConnectionHandler`'s (one hop instead of two, and
        // no read-interest toggling per request); outbound heads are not re-validated: they come from NIO's parser
        // plus the proxy's own fixed names and values.
        try pipeline.configureHTTPServerPipeline(
            withPipeliningAssistance: false, withServerUpgrade: nil, withErrorHandling: false,
            withOutboundHeaderValidation: false, withEncoderConfiguration: HTTPResponseEncoder.Configuration(),
            withDecoderLimitConfiguration: limits)
        try pipeline.addHandler(
            HTTP1ServerConnectionHandler { reason in metrics.httpError(direction: direction, reason: reason) })
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
