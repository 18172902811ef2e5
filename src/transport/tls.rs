//! rustls client configuration (ring provider, webpki roots, extra roots,
//! the `dangerous_*` opt-outs) and the translation of TLS failures into
//! errors that name the fix.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Kind, Stage};
use crate::settings::TlsOptions;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client configuration for these options. No process-wide
/// crypto provider is needed: the ring provider is passed explicitly.
pub(crate) fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    if options.webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for cert in &options.extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| Error::config(format!("unusable root certificate: {e}")))?;
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS configuration: {e}")))?;
    let config = if options.dangerous_accept_invalid_certs || options.dangerous_accept_invalid_hostnames {
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::config(format!("TLS configuration: {e}")))?,
            )
        };
        let verifier = Lenient {
            webpki,
            accept_any: options.dangerous_accept_invalid_certs,
            provider,
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The verifier behind the `dangerous_*` switches: full verification with
/// name mismatches forgiven, or no certificate verification at all. The
/// handshake signatures are still checked, so the peer must hold the key of
/// the certificate it shows.
#[derive(Debug)]
struct Lenient {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    accept_any: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.accept_any {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(webpki) = &self.webpki else {
            return Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server name for SNI and certificate verification.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| Error::config(format!("{host:?} cannot be used as a TLS server name: {e}")))
}

/// Turns a failed handshake into an error that says what is wrong and how
/// to fix it. `implicit` tells whether this was implicit TLS (SMTPS).
pub(crate) fn handshake_error(err: std::io::Error, host: &str, port: u16, implicit: bool) -> Error {
    let tls_error = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    let Some(tls_error) = tls_error else {
        let closed = matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        );
        let mut e = Error::new(
            if closed { Kind::Closed } else { Kind::Io },
            Some(Stage::Tls),
            "the TLS handshake failed",
        )
        .with_source(err);
        if implicit && closed {
            e = e.with_hint(format!(
                "the server closed the connection during the handshake: port {port} may not speak implicit TLS; try STARTTLS (usually port 587) or none (25)"
            ));
        }
        return e;
    };
    let message = "the TLS handshake failed";
    let base = Error::new(Kind::Tls, Some(Stage::Tls), message);
    match &tls_error {
        rustls::Error::InvalidCertificate(cert) => {
            let hint = match cert {
                CertificateError::NotValidForNameContext { presented, .. } => format!(
                    "the server's certificate is not valid for {host:?}; it names {}; connect using one of those names",
                    if presented.is_empty() {
                        "no host at all".to_owned()
                    } else {
                        presented.iter().map(|p| presented_name(p)).collect::<Vec<_>>().join(", ")
                    }
                ),
                CertificateError::NotValidForName => {
                    format!("the server's certificate is not valid for {host:?}; connect using a name it lists")
                }
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    "the server's certificate is not signed by a trusted authority (self-signed or a private CA): add the relay's CA certificate as a trusted root".to_owned()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "the server's certificate has expired: the relay's administrator must renew it".to_owned()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "the server's certificate is not valid yet: check the clocks of both machines".to_owned()
                }
                _ => "the server's certificate was refused".to_owned(),
            };
            base.with_source(tls_error.clone()).with_hint(hint)
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } if implicit => base
            .with_source(tls_error.clone())
            .with_hint(format!(
                "the server answered in plain text: port {port} speaks plain SMTP, so use STARTTLS (or none) instead of implicit TLS"
            )),
        _ => base.with_source(tls_error.clone()),
    }
}

/// rustls lists the names a certificate presents in their Debug form
/// (`DnsName("mail.example.org")`); people want `mail.example.org`.
fn presented_name(p: &str) -> &str {
    for prefix in ["DnsName(\"", "IpAddress(\""] {
        if let Some(inner) = p.strip_prefix(prefix).and_then(|r| r.strip_suffix("\")")) {
            return inner;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build_without_a_process_provider() {
        let mut o = TlsOptions {
            webpki_roots: true,
            ..TlsOptions::default()
        };
        assert!(client_config(&o).is_ok());
        o.dangerous_accept_invalid_hostnames = true;
        assert!(client_config(&o).is_ok());
        o.webpki_roots = false;
        o.dangerous_accept_invalid_certs = true;
        assert!(client_config(&o).is_ok());
    }

    #[test]
    fn name_mismatch_lists_the_certificate_names() {
        let inner = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("smtp.example.com").expect("name"),
            presented: vec!["mail.example.net".into(), "*.example.org".into()],
        });
        let e = handshake_error(std::io::Error::other(inner), "smtp.example.com", 587, false);
        assert!(e.is_tls() && e.is_permanent());
        let hint = e.hint().expect("hint");
        assert!(hint.contains("mail.example.net, *.example.org"), "{hint}");
    }

    #[test]
    fn plain_text_answer_to_implicit_tls() {
        let inner = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let e = handshake_error(std::io::Error::other(inner), "smtp.example.com", 587, true);
        assert!(e.hint().is_some_and(|h| h.contains("port 587 speaks plain SMTP")));
    }
}
