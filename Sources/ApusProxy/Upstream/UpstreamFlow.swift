import NIOCore

/// The flow control both upstream handlers (``UpstreamHandler``, ``SplicedUpstreamHandler``) apply to their
/// connection: a flush only when a write is pending (the client side asks on every read completion, and a flush
/// through the pipeline is not free), and a `read` held while the client cannot take more response bytes, so
/// the client's backpressure reaches the upstream's socket.
struct UpstreamFlow {
    private var readHeld = false
    private var flushPending = false

    mutating func wrote() {
        flushPending = true
    }

    mutating func flush(_ context: ChannelHandlerContext?) {
        guard flushPending, let context else { return }
        flushPending = false
        context.flush()
    }

    /// The handler's `read(context:)`: passes the read on unless the client is not writable.
    mutating func read(_ context: ChannelHandlerContext, downstreamWritable: Bool) {
        if downstreamWritable {
            context.read()
        } else {
            readHeld = true
        }
    }

    /// Releases a held `read` (the client drained).
    mutating func resumeReads(_ context: ChannelHandlerContext?) {
        guard readHeld, let context else { return }
        readHeld = false
        context.read()
    }
}
