import ApusCore

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

#if canImport(Glibc)
    import Glibc
#endif

/// `apus-proxy await --timeout=2m --port=4191`: blocks until this pod's proxy answers `GET /ready` with 200.
///
/// Without native sidecars the injector makes the proxy the first container and gives it this postStart hook:
/// the kubelet starts the next container only when the hook returns, so the application never starts before the
/// proxy can route its traffic (Linkerd's `linkerd-await`). Exit status: 0 ready, 1 timed out, 2 bad usage.
enum ProxyAwait {
    struct Options: Equatable {
        var timeout: Duration = .seconds(120)
        var port = 4191
    }

    struct UsageError: Error, CustomStringConvertible {
        let description: String
    }

    static func run(_ arguments: [String]) -> Int32 {
        let options: Options
        do {
            options = try parse(arguments)
        } catch {
            writeStandardError("apus-proxy await: \(error)\nusage: apus-proxy await [--timeout=2m] [--port=4191]\n")
            return 2
        }
        let deadline = ContinuousClock.now + options.timeout
        while true {
            if probeReady(port: options.port) { return 0 }
            if ContinuousClock.now >= deadline {
                writeStandardError(
                    "apus-proxy await: the proxy on port \(options.port) was not ready within \(options.timeout)\n")
                return 1
            }
            usleep(100_000)
        }
    }

    /// Accepts `--name=value` and `--name value`, as Linkerd's await does.
    static func parse(_ arguments: [String]) throws(UsageError) -> Options {
        var options = Options()
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            let name: String
            let value: String
            if let equals = argument.firstIndex(of: "=") {
                name = String(argument[..<equals])
                value = String(argument[argument.index(after: equals)...])
            } else {
                name = argument
                index += 1
                guard index < arguments.count else { throw UsageError(description: "\(argument) needs a value") }
                value = arguments[index]
            }
            index += 1
            switch name {
            case "--timeout":
                do {
                    options.timeout = try GoDuration(parsing: value).duration
                } catch {
                    throw UsageError(description: "--timeout '\(value)': \(error)")
                }
            case "--port":
                guard let port = Int(value), (1...65535).contains(port) else {
                    throw UsageError(description: "--port '\(value)' is not a port number")
                }
                options.port = port
            default:
                throw UsageError(description: "unknown argument '\(argument)'")
            }
        }
        return options
    }

    /// One `GET /ready` on 127.0.0.1:`port` over a plain blocking socket (one-second send/receive timeouts);
    /// true only for a 200 status line.
    static func probeReady(port: Int) -> Bool {
        let socketFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socketFD >= 0 else { return false }
        defer { Glibc.close(socketFD) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        let timeoutSize = socklen_t(MemoryLayout<timeval>.size)
        _ = setsockopt(socketFD, SOL_SOCKET, SO_RCVTIMEO, &timeout, timeoutSize)
        _ = setsockopt(socketFD, SOL_SOCKET, SO_SNDTIMEO, &timeout, timeoutSize)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                connect(socketFD, socketAddress, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { return false }
        let request = Array("GET /ready HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n\r\n".utf8)
        let sent = request.withUnsafeBytes { send(socketFD, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == request.count else { return false }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 256)
        while response.count < 12 {
            let received = chunk.withUnsafeMutableBytes { recv(socketFD, $0.baseAddress, $0.count, 0) }
            guard received > 0 else { break }
            response += chunk[0..<received]
        }
        let statusLine = String(decoding: response.prefix(12), as: UTF8.self)
        return statusLine == "HTTP/1.1 200" || statusLine == "HTTP/1.0 200"
    }
}

/// Writes `text` to file descriptor 2 unbuffered, as `FileHandle.standardError` did (FoundationEssentials, which
/// keeps the proxy clear of full Foundation and ICU, has no `FileHandle`).
func writeStandardError(_ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}
