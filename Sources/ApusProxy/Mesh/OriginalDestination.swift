import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The address a connection was originally sent to before iptables redirected it to the proxy
/// (`SO_ORIGINAL_DST`, as Linkerd's proxy-init rules `REDIRECT` pod traffic to 4140/4143).
///
/// The kernel answers from the connection's conntrack NAT entry: `getsockopt(fd, SOL_IP, SO_ORIGINAL_DST)` with
/// a `sockaddr_in` for IPv4, `getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST)` with a `sockaddr_in6` for IPv6
/// (both option number 80). Without a NAT entry it fails (`ENOENT`, or `ENOPROTOOPT` when conntrack is not
/// loaded), and when conntrack tracks an un-NATed connection it returns the local address itself.
///
/// **"Not redirected" is nil.** Both cases (an error, or the connection's own local address) return nil, so
/// callers need one check: nil means the client really addressed the proxy's listener (local mode, a meshed peer
/// dialing the inbound port) and the target port must come from elsewhere (the `apus-orig-dst-port` header, the
/// ``TransportHeader``, the default port).
///
/// NIO exposes no file descriptor; the supported way in is `SocketOptionProvider.unsafeGetSocketOption`, which
/// on the channel's own event loop runs `getsockopt` synchronously.
public enum OriginalDestination {
    /// `SO_ORIGINAL_DST` (`linux/netfilter_ipv4.h`) and `IP6T_SO_ORIGINAL_DST` (`linux/netfilter_ipv6/ip6_tables.h`).
    static let optionName: CInt = 80

    /// The original destination of `channel`'s connection, nil when it was not redirected (see the type's doc).
    ///
    /// Must be called on the channel's event loop (where it completes without blocking); from elsewhere it returns
    /// nil rather than block the caller on the loop — use ``future(of:)`` there.
    public static func of(_ channel: any Channel) -> SocketAddress? {
        guard channel.eventLoop.inEventLoop else { return nil }
        // On the loop the getsockopt runs inline, so the future is already complete and the callback runs now.
        let result = NIOLockedValueBox<SocketAddress?>(nil)
        future(of: channel).whenSuccess { address in result.withLockedValue { $0 = address } }
        return result.withLockedValue { $0 }
    }

    /// ``of(_:)`` from any thread.
    public static func future(of channel: any Channel) -> EventLoopFuture<SocketAddress?> {
        #if os(Linux)
            guard let provider = channel as? any SocketOptionProvider else {
                return channel.eventLoop.makeSucceededFuture(nil)
            }
            let local = channel.localAddress
            let ipv4: EventLoopFuture<SocketAddress?> = provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_IP), name: SocketOptionName(optionName)
            ).map { (address: sockaddr_in) -> SocketAddress? in
                guard address.sin_family == sa_family_t(AF_INET) else { return nil }
                return SocketAddress(address, host: "")
            }
            return ipv4.flatMapError { _ in
                provider.unsafeGetSocketOption(
                    level: SocketOptionLevel(SOL_IPV6), name: SocketOptionName(optionName)
                ).map { (address: sockaddr_in6) -> SocketAddress? in
                    guard address.sin6_family == sa_family_t(AF_INET6) else { return nil }
                    return SocketAddress(address, host: "")
                }
            }.map { original in
                guard let original, !sameEndpoint(original, local) else { return nil }
                return original
            }.recover { _ in nil }
        #else
            return channel.eventLoop.makeSucceededFuture(nil)
        #endif
    }

    /// Whether two addresses are the same IP and port (an IPv4-mapped IPv6 address equals its IPv4 form).
    static func sameEndpoint(_ lhs: SocketAddress, _ rhs: SocketAddress?) -> Bool {
        guard let rhs, lhs.port == rhs.port, let left = lhs.ipAddress, let right = rhs.ipAddress else { return false }
        return unmapped(left) == unmapped(right)
    }

    private static func unmapped(_ ip: String) -> String {
        ip.lowercased().hasPrefix("::ffff:") && ip.contains(".") ? String(ip.dropFirst(7)) : ip.lowercased()
    }
}
