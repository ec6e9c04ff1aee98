import COpenSSL

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// One entry of a subjectAltName extension.
///
/// Names a certificate or CSR carries, typed so a CA can refuse kinds it does not issue (Apus identities are exactly
/// one DNS name) instead of silently dropping them.
public enum SubjectAltName: Hashable, Sendable, CustomStringConvertible {
    case dns(String)
    /// Textual IPv4 or IPv6 address (`10.0.0.1`, `::1`); an address of another length is shown as hex.
    case ipAddress(String)
    case uri(String)
    case email(String)
    /// Any other GENERAL_NAME kind (otherName, directoryName, registeredID, ...), by its `GEN_*` number.
    case other(kind: Int)

    public var description: String {
        switch self {
        case .dns(let name): "DNS:\(name)"
        case .ipAddress(let address): "IP:\(address)"
        case .uri(let uri): "URI:\(uri)"
        case .email(let email): "email:\(email)"
        case .other(let kind): "GeneralName(kind \(kind))"
        }
    }
}

/// Builds and reads GENERAL_NAMES stacks. Values are added as typed GENERAL_NAMEs rather than through a config
/// string, so a name containing `,` or `:` cannot inject extra entries.
enum GeneralNames {
    /// A new GENERAL_NAMES stack holding `names`; the caller owns it (`GENERAL_NAMES_free`).
    static func make(_ names: [SubjectAltName], operation: String) throws -> OpaquePointer {
        guard let stack = GENERAL_NAMES_new() else { throw X509Error.fromQueue(.signingFailed, operation) }
        do {
            for name in names {
                switch name {
                case .dns(let value): try pushString(stack, type: GEN_DNS, value, label: "DNS name", operation)
                case .uri(let value): try pushString(stack, type: GEN_URI, value, label: "URI", operation)
                case .email(let value): try pushString(stack, type: GEN_EMAIL, value, label: "email", operation)
                case .ipAddress(let address):
                    guard let octets = a2i_IPADDRESS(address) else {
                        throw X509Error.fromQueue(.invalidInput, "\(operation): '\(address)' is not an IP address")
                    }
                    try push(stack, type: GEN_IPADD, value: UnsafeMutableRawPointer(octets), operation: operation)
                case .other(let kind):
                    throw X509Error(
                        .invalidInput, "\(operation): cannot encode subjectAltName kind \(kind)", openSSLErrors: [])
                }
            }
        } catch {
            GENERAL_NAMES_free(stack)
            throw error
        }
        return stack
    }

    /// Reads a GENERAL_NAMES stack (borrowed) into typed names, in order.
    static func read(_ stack: OpaquePointer) -> [SubjectAltName] {
        var result: [SubjectAltName] = []
        for index in 0..<OPENSSL_sk_num(stack) {
            guard let element = OPENSSL_sk_value(stack, index) else { continue }
            var type: Int32 = 0
            let name = element.assumingMemoryBound(to: GENERAL_NAME.self)
            let value = GENERAL_NAME_get0_value(name, &type)
            func bytes() -> [UInt8] {
                value.map { asn1Bytes($0.assumingMemoryBound(to: ASN1_STRING.self)) } ?? []
            }
            switch type {
            case GEN_DNS: result.append(.dns(String(decoding: bytes(), as: UTF8.self)))
            case GEN_URI: result.append(.uri(String(decoding: bytes(), as: UTF8.self)))
            case GEN_EMAIL: result.append(.email(String(decoding: bytes(), as: UTF8.self)))
            case GEN_IPADD:
                let octets = bytes()
                result.append(.ipAddress(formatIPAddress(octets) ?? hexString(octets)))
            default: result.append(.other(kind: Int(type)))
            }
        }
        return result
    }

    static func formatIPAddress(_ bytes: [UInt8]) -> String? {
        switch bytes.count {
        case 4:
            return bytes.map(String.init).joined(separator: ".")
        case 16:
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            let formatted = bytes.withUnsafeBytes { address in
                inet_ntop(AF_INET6, address.baseAddress, &buffer, socklen_t(buffer.count))
            }
            guard formatted != nil else { return nil }
            let length = buffer.firstIndex(of: 0) ?? buffer.count
            return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        default:
            return nil
        }
    }

    private static func pushString(
        _ stack: OpaquePointer, type: Int32, _ value: String, label: String, _ operation: String
    ) throws {
        guard !value.isEmpty else { throw X509Error(.invalidInput, "\(operation): empty \(label)", openSSLErrors: []) }
        guard let string = ASN1_IA5STRING_new() else { throw X509Error.fromQueue(.signingFailed, operation) }
        let bytes = Array(value.utf8)
        guard ASN1_STRING_set(string, bytes, Int32(bytes.count)) == 1 else {
            ASN1_IA5STRING_free(string)
            throw X509Error.fromQueue(.signingFailed, operation)
        }
        try push(stack, type: type, value: UnsafeMutableRawPointer(string), operation: operation)
    }

    /// Wraps `value` (ownership taken) in a GENERAL_NAME and appends it to `stack`.
    private static func push(
        _ stack: OpaquePointer, type: Int32, value: UnsafeMutableRawPointer, operation: String
    ) throws {
        guard let name = GENERAL_NAME_new() else {
            ASN1_STRING_free(value.assumingMemoryBound(to: ASN1_STRING.self))
            throw X509Error.fromQueue(.signingFailed, operation)
        }
        GENERAL_NAME_set0_value(name, type, value)
        guard OPENSSL_sk_push(stack, name) > 0 else {
            GENERAL_NAME_free(name)
            throw X509Error.fromQueue(.signingFailed, operation)
        }
    }
}
