import ApusX509
import NIOSSL

/// The mesh identity a TLS peer proved: the first DNS SAN of the certificate it presented.
///
/// Mesh certificates carry exactly one DNS SAN, the workload identity (`<sa>.<ns>.serviceaccount.identity.…`),
/// so the first one is the identity. Only call this on a certificate the handshake already verified against the
/// trust anchors; an unverified certificate proves nothing. Shared by the destination server (client identity of
/// a proxy) and the proxy's inbound side (`l5d-client-id`), so both read identities the same way.
public enum PeerCertificateIdentity {
    /// Why a peer has no usable identity.
    public enum Failure: Error, Hashable, Sendable, CustomStringConvertible {
        /// No certificate was presented (plaintext, or TLS without a client certificate).
        case noCertificate
        /// The certificate's DER did not parse; carries the parser's message.
        case unparsable(String)
        /// The certificate has no DNS SAN, so it names no identity.
        case noDNSName

        public var description: String {
            switch self {
            case .noCertificate: "the peer presented no certificate"
            case .unparsable(let message): "the peer certificate does not parse: \(message)"
            case .noDNSName: "the peer certificate names no identity (no DNS SAN)"
            }
        }
    }

    /// The first DNS SAN of `certificate`.
    public static func identity(of certificate: NIOSSLCertificate?) -> Result<String, Failure> {
        guard let certificate else { return .failure(.noCertificate) }
        let names: [String]
        do {
            names = try Certificate(der: try certificate.toDERBytes()).dnsNames
        } catch {
            return .failure(.unparsable("\(error)"))
        }
        guard let identity = names.first else { return .failure(.noDNSName) }
        return .success(identity)
    }
}
