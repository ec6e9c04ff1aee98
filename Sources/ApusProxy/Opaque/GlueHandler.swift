import NIOCore

/// One half of a byte pipe between two channels on the same event loop (opaque TCP, and HTTP connections after
/// an Upgrade).
///
/// Backpressure: a side only reads while its partner channel is writable; `read` events are held otherwise and
/// released when the partner's writability returns, so a slow reader stops the fast writer at the socket instead
/// of growing a buffer. Half-close is propagated (`shutdownOutput` on the partner when a side sends FIN), so
/// request/response protocols that signal the end with a FIN work.
final class GlueHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Bytes read on this side, reported to ``onRead`` (metrics), never looked up per read.
    private let onRead: ((Int) -> Void)?
    private let onClose: (() -> Void)?

    private init(onRead: ((Int) -> Void)?, onClose: (() -> Void)?) {
        self.onRead = onRead
        self.onClose = onClose
    }

    /// Two handlers glued to each other: add the first to one channel's pipeline and the second to the other's.
    static func matchedPair(
        firstRead: ((Int) -> Void)? = nil, secondRead: ((Int) -> Void)? = nil, onClose: (() -> Void)? = nil
    ) -> (GlueHandler, GlueHandler) {
        let first = GlueHandler(onRead: firstRead, onClose: onClose)
        let second = GlueHandler(onRead: secondRead, onClose: nil)
        first.partner = second
        second.partner = first
        return (first, second)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        onRead?(bytes.readableBytes)
        partner?.partnerWrite(bytes)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        onClose?()
        partner?.partnerCloseFull()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            partner?.partnerWriteEOF()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if let partner, partner.partnerWritable {
            context.read()
        } else {
            pendingRead = true
        }
    }

    private func partnerWrite(_ data: ByteBuffer) {
        context?.write(wrapOutboundOut(data), promise: nil)
    }

    private func partnerFlush() {
        context?.flush()
    }

    private func partnerWriteEOF() {
        guard let context else { return }
        context.flush()
        context.close(mode: .output, promise: nil)
    }

    private func partnerCloseFull() {
        context?.close(promise: nil)
    }

    private func partnerBecameWritable() {
        if pendingRead, let context {
            pendingRead = false
            context.read()
        }
    }

    private var partnerWritable: Bool { context?.channel.isWritable ?? false }
}
