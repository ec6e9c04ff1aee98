import NIOCore

/// What the first bytes of a connection say it speaks.
public enum DetectedProtocol: Hashable, Sendable {
    /// An HTTP/1.x request line (a method token followed by a space).
    case http1
    /// The HTTP/2 client connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`), i.e. h2c with prior knowledge.
    case http2
    /// A TLS record carrying a handshake (`0x16 0x03 …`): a ClientHello.
    case tls
    /// Anything else: proxied byte-for-byte.
    case opaque
}

/// Classifies the first bytes of a connection without consuming them.
///
/// Detection answers as soon as the prefix is unambiguous, so an HTTP/1 client that sends `GET ` is classified
/// after four bytes and never waits for the detect timeout. `nil` means "not enough bytes yet".
public enum ProtocolDetector {
    static let http2Preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    /// Methods from RFC 9110 plus the WebDAV and PATCH ones seen in practice; anything else is not HTTP/1 to us
    /// (Linkerd's detection is likewise a fixed prefix check, not a full token grammar).
    static let methods: [[UInt8]] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "PROPFIND", "PROPPATCH",
        "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH", "PURGE",
    ].map { Array(($0 + " ").utf8) }
    /// Longest prefix needed to decide.
    static let maximumPrefix = http2Preface.count

    public static func detect(_ buffer: ByteBuffer) -> DetectedProtocol? {
        buffer.withUnsafeReadableBytes { detect(Array($0)) }
    }

    public static func detect(_ bytes: [UInt8]) -> DetectedProtocol? {
        guard let first = bytes.first else { return nil }
        if first == 0x16 {
            guard bytes.count >= 2 else { return nil }
            return bytes[1] == 0x03 ? .tls : .opaque
        }
        if matches(bytes, http2Preface) { return bytes.count >= http2Preface.count ? .http2 : nil }
        var undecided = false
        for method in methods where matches(bytes, method) {
            if bytes.count >= method.count { return .http1 }
            undecided = true
        }
        return undecided ? nil : .opaque
    }

    /// True when `bytes` and `pattern` agree on their common prefix.
    private static func matches(_ bytes: [UInt8], _ pattern: [UInt8]) -> Bool {
        let count = min(bytes.count, pattern.count)
        var index = 0
        while index < count {
            if bytes[index] != pattern[index] { return false }
            index += 1
        }
        return true
    }
}

/// Holds a new connection's first bytes until ``ProtocolDetector`` can classify them (or the detect timeout
/// fires, which means opaque, as in Linkerd: a server-speaks-first protocol such as MySQL never sends a byte), then
/// lets `configure` build the pipeline for that protocol after this handler, replays the held bytes into it and
/// removes itself.
final class ProtocolDetectHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// Adds the handlers for the protocol after this one, synchronously (we are on the loop).
    typealias Configure = (DetectedProtocol, Channel) throws -> Void

    private let timeout: TimeAmount
    private let configure: Configure
    private var buffered: ByteBuffer?
    private var timer: Scheduled<Void>?
    private var decided = false

    init(timeout: TimeAmount, configure: @escaping Configure) {
        self.timeout = timeout
        self.configure = configure
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startTimer(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        startTimer(context: context)
        context.fireChannelActive()
    }

    private func startTimer(context: ChannelHandlerContext) {
        guard timer == nil else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = loopBound.value
            handler.decide(.opaque, context: context)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        guard !decided else {
            context.fireChannelRead(data)
            return
        }
        if buffered == nil {
            buffered = bytes
        } else {
            buffered!.writeBuffer(&bytes)
        }
        if let detected = ProtocolDetector.detect(buffered!) {
            decide(detected, context: context)
        } else if buffered!.readableBytes >= ProtocolDetector.maximumPrefix {
            decide(.opaque, context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }

    private func decide(_ detected: DetectedProtocol, context: ChannelHandlerContext) {
        guard !decided else { return }
        decided = true
        timer?.cancel()
        timer = nil
        do {
            try configure(detected, context.channel)
        } catch {
            context.close(promise: nil)
            return
        }
        if let bytes = buffered {
            buffered = nil
            context.fireChannelRead(wrapInboundOut(bytes))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
