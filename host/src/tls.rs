//! TLS failures found in an error chain and explained for a person: an
//! untrusted server certificate, a client certificate the server wanted.
//! Each client library wraps rustls' error differently (often inside an
//! `io::Error`); this looks through all of them. A leaf: imports nothing
//! of this crate.

use rustls::Error as TlsError;

/// The TLS failure somewhere in `error`'s chain, explained, naming
/// `ca_key` (the config key of the CA file) where a CA would fix it.
/// `None` when the chain holds no TLS failure.
pub fn failure(error: &(dyn std::error::Error + 'static), ca_key: &str) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = as_tls(error) {
            return Some(explain(tls, ca_key));
        }
        current = error.source();
    }
    None
}

fn as_tls<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a TlsError> {
    error.downcast_ref::<TlsError>().or_else(|| {
        error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<TlsError>())
    })
}

fn explain(error: &TlsError, ca_key: &str) -> String {
    match error {
        TlsError::InvalidCertificate(reason) => format!(
            "the server's certificate is not trusted ({reason:?}); \
             give the CA that signed it in `{ca_key}`"
        ),
        TlsError::AlertReceived(alert) => format!(
            "the server ended the TLS handshake ({alert:?}); \
             does it want a client certificate?"
        ),
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_certificate_error_inside_an_io_error() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TlsError::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let text = failure(&io, "nats.ca_file").expect("a TLS failure");
        assert!(text.contains("not trusted"), "{text}");
        assert!(text.contains("UnknownIssuer"), "{text}");
        assert!(text.contains("`nats.ca_file`"), "{text}");
    }

    #[test]
    fn an_error_without_tls_in_it_is_none() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(failure(&io, "cache.ca_file"), None);
    }
}
