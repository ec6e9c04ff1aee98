import COpenSSL

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

extension Certificate {
    /// Verifies that this certificate chains to one of `anchors` through `intermediates`, with every certificate
    /// valid at `time`, on OpenSSL's `X509_STORE` path building (signatures, validity, CA constraints, path length).
    ///
    /// Any certificate in `anchors` is a trust anchor, self-signed or not (`X509_V_FLAG_PARTIAL_CHAIN`), which is how
    /// Go's verifier and therefore Linkerd treat a trust bundle. Throws ``X509Error/Code/verificationFailed`` naming
    /// OpenSSL's reason (e.g. "certificate has expired") and the certificate it failed on.
    public func verify(
        anchors: [Certificate], intermediates: [Certificate] = [], at time: Date = Date()
    ) throws(X509Error) {
        OpenSSLErrorQueue.clear()
        let operation = "verifying the chain of \(subjectCommonName ?? dnsNames.first ?? "certificate")"
        guard !anchors.isEmpty else {
            throw X509Error(.verificationFailed, operation, openSSLErrors: ["no trust anchors"])
        }
        guard let store = X509_STORE_new() else { throw X509Error.fromQueue(.verificationFailed, operation) }
        defer { X509_STORE_free(store) }
        for anchor in anchors {
            guard X509_STORE_add_cert(store, anchor.pointer) == 1 else {
                throw X509Error.fromQueue(.verificationFailed, "\(operation): adding a trust anchor")
            }
        }
        guard let untrusted = OPENSSL_sk_new_null() else { throw X509Error.fromQueue(.verificationFailed, operation) }
        // Borrowed pointers: `intermediates` keeps the certificates alive for the whole call.
        defer { OPENSSL_sk_free(untrusted) }
        for intermediate in intermediates {
            guard OPENSSL_sk_push(untrusted, UnsafeRawPointer(intermediate.pointer)) > 0 else {
                throw X509Error.fromQueue(.verificationFailed, operation)
            }
        }
        guard let context = X509_STORE_CTX_new() else { throw X509Error.fromQueue(.verificationFailed, operation) }
        defer { X509_STORE_CTX_free(context) }
        guard X509_STORE_CTX_init(context, store, pointer, untrusted) == 1 else {
            throw X509Error.fromQueue(.verificationFailed, operation)
        }
        X509_STORE_CTX_set_flags(context, UInt(X509_V_FLAG_PARTIAL_CHAIN))
        X509_STORE_CTX_set_time(context, 0, time_t(time.timeIntervalSince1970.rounded(.down)))
        guard X509_verify_cert(context) == 1 else {
            let code = X509_STORE_CTX_get_error(context)
            let reason = X509_verify_cert_error_string(Int(code)).map { String(cString: $0) } ?? "error \(code)"
            let depth = X509_STORE_CTX_get_error_depth(context)
            var failing = ""
            if let current = X509_STORE_CTX_get_current_cert(context),
                let name = Certificate.commonName(of: X509_get_subject_name(current))
            {
                failing = " at '\(name)'"
            }
            OpenSSLErrorQueue.clear()
            throw X509Error(
                .verificationFailed, "\(operation): depth \(depth)\(failing)", openSSLErrors: [reason])
        }
    }
}
