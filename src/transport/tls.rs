//! rustls client configuration (ring provider, webpki roots, the
//! operating system's roots, extra roots, the `dangerous_*` opt-outs, a
//! client certificate) and the translation of TLS failures into errors that
//! name the fix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

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
    if options.system_roots {
        add_system_roots(&mut roots)?;
    }
    for cert in &options.extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| Error::config(format!("unusable root certificate: {e}")))?;
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS configuration: {e}")))?;
    let builder = if options.dangerous_accept_invalid_certs || options.dangerous_accept_invalid_hostnames {
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
    } else {
        builder.with_root_certificates(roots)
    };
    // The key was loaded and checked against the certificate when the
    // settings were built: no second copy of it is made here.
    let config = match &options.client_identity {
        Some(identity) => {
            builder.with_client_cert_resolver(Arc::new(ClientCertificate::new(identity.certified_key())))
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Adds the operating system's roots (rustls-native-certs): certificates
/// rustls cannot parse are skipped; none usable at all is an error.
#[cfg(feature = "system-roots")]
fn add_system_roots(roots: &mut RootCertStore) -> Result<(), Error> {
    let found = rustls_native_certs::load_native_certs();
    let total = found.certs.len();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    #[cfg(feature = "tracing")]
    for e in &found.errors {
        tracing::warn!(error = %e, "reading the system's trust store");
    }
    if added > 0 {
        return Ok(());
    }
    let env = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .into_iter()
        .filter_map(|var| std::env::var_os(var).map(|v| format!("{var}={}", v.to_string_lossy())))
        .collect::<Vec<_>>();
    let mut message = if total > 0 {
        format!("none of the {total} certificates in the operating system's trust store can be used")
    } else {
        "no certificates found in the operating system's trust store".to_owned()
    };
    if let Some(e) = found.errors.first() {
        message.push_str(&format!(" ({e})"));
    }
    let hint = if env.is_empty() {
        "install the CA certificates (on Debian and Ubuntu the ca-certificates package), set SSL_CERT_FILE to a PEM bundle, or add the relay's CA as a trusted root instead".to_owned()
    } else {
        format!(
            "{} replaces the system's store: point it at a PEM file (or directory) of CA certificates, or unset it",
            env.join(" and ")
        )
    };
    Err(Error::config(message).with_hint(hint))
}

#[cfg(not(feature = "system-roots"))]
fn add_system_roots(_roots: &mut RootCertStore) -> Result<(), Error> {
    Err(Error::config(
        "trusting the operating system's certificate store needs relaymail's cargo feature `system-roots`",
    ))
}

/// Presents the configured client certificate when a server asks for one,
/// and notes whether it did (one per connection, for [`TlsInfo`](super::TlsInfo)).
#[derive(Debug)]
pub(crate) struct ClientCertificate {
    key: Arc<CertifiedKey>,
    sent: AtomicBool,
}

impl ClientCertificate {
    fn new(key: Arc<CertifiedKey>) -> ClientCertificate {
        ClientCertificate {
            key,
            sent: AtomicBool::new(false),
        }
    }

    /// Whether the certificate was sent in the handshake.
    pub(crate) fn was_sent(&self) -> bool {
        self.sent.load(Ordering::Relaxed)
    }
}

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // rustls sends the chain only when the key signs with a scheme the
        // server accepts.
        if self.key.key.choose_scheme(sigschemes).is_some() {
            self.sent.store(true, Ordering::Relaxed);
        }
        Some(Arc::clone(&self.key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The configuration for one connection: with a client certificate, a copy
/// whose certificate resolver notes whether this handshake sent it (the
/// session cache stays shared); without one, `config` itself.
pub(crate) fn for_connection(
    config: Arc<ClientConfig>,
    options: &TlsOptions,
) -> (Arc<ClientConfig>, Option<Arc<ClientCertificate>>) {
    let Some(identity) = &options.client_identity else {
        return (config, None);
    };
    let resolver = Arc::new(ClientCertificate::new(identity.certified_key()));
    let mut own = (*config).clone();
    own.client_auth_cert_resolver = resolver.clone();
    (Arc::new(own), Some(resolver))
}

/// The hint for a TLS alert from the server about the client certificate
/// (or its absence); `None` for other alerts.
fn client_certificate_hint(alert: AlertDescription, options: &TlsOptions) -> Option<&'static str> {
    use AlertDescription as A;
    let about_the_certificate = matches!(
        alert,
        A::CertificateRequired
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
    );
    if !about_the_certificate {
        None
    } else if options.client_identity.is_some() {
        Some(REFUSED_CLIENT_CERTIFICATE)
    } else {
        Some(NEEDS_CLIENT_CERTIFICATE)
    }
}

/// The hint when a server that requires a client certificate got none.
pub(crate) const NEEDS_CLIENT_CERTIFICATE: &str = "the server requires a client certificate: set the certificate and private key the relay's administrator issued (client_certificate_pem)";

/// The hint when a server refused the client certificate it got.
pub(crate) const REFUSED_CLIENT_CERTIFICATE: &str = "the server refused the client certificate: check it is the one the relay's administrator issued and that it has not expired";

/// A TLS alert about the client certificate that arrived after the
/// handshake: with TLS 1.3 the client finishes its handshake before the
/// server has checked the certificate, so the server's refusal comes on the
/// first read of the session, where the greeting (implicit TLS) or the EHLO
/// reply (STARTTLS) would have been. A [`Stage::Tls`] error with the hint;
/// `None` for any other read error.
pub(crate) fn refusal_after_handshake(err: &std::io::Error, options: &TlsOptions) -> Option<Error> {
    let tls_error = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::AlertReceived(alert) = tls_error else {
        return None;
    };
    let hint = client_certificate_hint(*alert, options)?;
    Some(
        Error::new(
            Kind::Tls,
            Some(Stage::Tls),
            format!("the server ended the TLS session after the handshake (alert: {alert:?})"),
        )
        .with_source(tls_error.clone())
        .with_hint(hint),
    )
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
pub(crate) fn handshake_error(
    err: std::io::Error,
    host: &str,
    port: u16,
    implicit: bool,
    options: &TlsOptions,
) -> Error {
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
                CertificateError::UnknownIssuer | CertificateError::BadSignature if options.system_roots => {
                    "the server's certificate is not signed by a trusted authority, the system's trust store included (self-signed or a private CA): add the relay's CA certificate as a trusted root, or to the system's store".to_owned()
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
        rustls::Error::AlertReceived(alert) => match client_certificate_hint(*alert, options) {
            Some(hint) => base.with_source(tls_error.clone()).with_hint(hint),
            None => base.with_source(tls_error.clone()),
        },
        _ => base.with_source(tls_error.clone()),
    }
}

/// A certificate's subject or issuer (the contents of its DER `Name`) as
/// text: `CN=…, O=…`, attributes in certificate order, the common ones by
/// their short names and others by OID; control characters escaped. What
/// cannot be read is shown as `(unreadable name)`, never a panic.
pub(crate) fn distinguished_name(name: &[u8]) -> String {
    fn text(tag: u8, value: &[u8]) -> Option<String> {
        match tag {
            // UTF8String, PrintableString, IA5String
            0x0c | 0x13 | 0x16 => std::str::from_utf8(value).ok().map(str::to_owned),
            // TeletexString: Latin-1 in practice.
            0x14 => Some(value.iter().map(|&b| char::from(b)).collect()),
            // BMPString: UTF-16BE.
            0x1e if value.len().is_multiple_of(2) => {
                let units = value.chunks(2).map(|p| u16::from_be_bytes([p[0], p[1]]));
                char::decode_utf16(units).collect::<Result<String, _>>().ok()
            }
            _ => None,
        }
    }
    fn attribute(oid: &[u8]) -> String {
        match oid {
            [0x55, 0x04, 0x03] => "CN".to_owned(),
            [0x55, 0x04, 0x06] => "C".to_owned(),
            [0x55, 0x04, 0x07] => "L".to_owned(),
            [0x55, 0x04, 0x08] => "ST".to_owned(),
            [0x55, 0x04, 0x0a] => "O".to_owned(),
            [0x55, 0x04, 0x0b] => "OU".to_owned(),
            _ => format!(
                "OID.{}",
                oid.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join("")
            ),
        }
    }
    let mut parts = Vec::new();
    let mut rdns = name;
    while !rdns.is_empty() {
        let Some((0x31, mut set, rest)) = der_item(rdns) else {
            return "(unreadable name)".to_owned();
        };
        rdns = rest;
        while !set.is_empty() {
            let Some((0x30, pair, rest)) = der_item(set) else {
                return "(unreadable name)".to_owned();
            };
            set = rest;
            let Some((0x06, oid, value)) = der_item(pair) else {
                return "(unreadable name)".to_owned();
            };
            let Some((tag, value, _)) = der_item(value) else {
                return "(unreadable name)".to_owned();
            };
            let value = text(tag, value).unwrap_or_else(|| "(unreadable value)".to_owned());
            let value: String = value
                .chars()
                .flat_map(|c| {
                    let escaped: Vec<char> = if c.is_control() {
                        c.escape_default().collect()
                    } else {
                        vec![c]
                    };
                    escaped
                })
                .collect();
            parts.push(format!("{}={value}", attribute(oid)));
        }
    }
    if parts.is_empty() {
        "(empty name)".to_owned()
    } else {
        parts.join(", ")
    }
}

/// One DER item: its tag, its contents and what follows it. Definite
/// lengths of up to four bytes; anything else is `None`.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = (rest.get(..n)?, rest.get(n..)?);
        (
            bytes.iter().fold(0usize, |len, &b| (len << 8) | usize::from(b)),
            rest,
        )
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
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
        let e = handshake_error(
            std::io::Error::other(inner),
            "smtp.example.com",
            587,
            false,
            &TlsOptions::default(),
        );
        assert!(e.is_tls() && e.is_permanent());
        let hint = e.hint().expect("hint");
        assert!(hint.contains("mail.example.net, *.example.org"), "{hint}");
    }

    #[test]
    fn client_certificate_alerts_name_the_fix() {
        let alert = |a| std::io::Error::other(rustls::Error::AlertReceived(a));
        let none = TlsOptions::default();
        let with_identity = TlsOptions {
            client_identity: Some(
                crate::settings::ClientIdentity::from_pem(
                    include_bytes!("../settings/testdata/ec.crt"),
                    include_bytes!("../settings/testdata/ec-sec1.key"),
                )
                .expect("identity"),
            ),
            ..TlsOptions::default()
        };
        // In the handshake (TLS 1.2) and after it (TLS 1.3).
        for (description, options, hint) in [
            (
                AlertDescription::CertificateRequired,
                &none,
                NEEDS_CLIENT_CERTIFICATE,
            ),
            (AlertDescription::HandshakeFailure, &none, ""),
            (
                AlertDescription::UnknownCA,
                &with_identity,
                REFUSED_CLIENT_CERTIFICATE,
            ),
            (
                AlertDescription::CertificateExpired,
                &with_identity,
                REFUSED_CLIENT_CERTIFICATE,
            ),
            (AlertDescription::BadCertificate, &none, NEEDS_CLIENT_CERTIFICATE),
            (AlertDescription::DecodeError, &with_identity, ""),
        ] {
            let e = handshake_error(alert(description), "smtp.example.com", 587, false, options);
            assert!(e.is_tls() && e.stage() == Some(Stage::Tls), "{e}");
            assert_eq!(e.hint().unwrap_or(""), hint, "{description:?}");
            let after = refusal_after_handshake(&alert(description), options);
            match after {
                Some(e) => {
                    assert!(!hint.is_empty(), "{description:?}: {e}");
                    assert!(e.is_tls() && e.stage() == Some(Stage::Tls), "{e}");
                    assert_eq!(e.hint(), Some(hint));
                }
                None => assert!(hint.is_empty(), "{description:?}"),
            }
        }
        // Other read errors are not TLS refusals.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(refusal_after_handshake(&reset, &none).is_none());
        let other = std::io::Error::other(rustls::Error::DecryptError);
        assert!(refusal_after_handshake(&other, &with_identity).is_none());
    }

    #[test]
    fn names_are_read_without_panicking_on_any_input() {
        // SET { SEQUENCE { OID 2.5.4.3, UTF8String "a\x1bb" } }, SET { SEQUENCE { OID 2.5.4.10, PrintableString "O" } }
        let name = [
            0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x03, b'a', 0x1b, b'b', 0x31, 0x0a,
            0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x13, 0x01, b'O',
        ];
        assert_eq!(distinguished_name(&name), "CN=a\\u{1b}b, O=O");
        assert_eq!(distinguished_name(&[]), "(empty name)");
        for cut in 1..name.len() {
            let expected = if cut == 14 {
                // The first attribute whole: a shorter name.
                "CN=a\\u{1b}b"
            } else {
                "(unreadable name)"
            };
            assert_eq!(distinguished_name(&name[..cut]), expected, "{cut}");
        }
        // Long lengths claiming more than there is.
        assert_eq!(
            distinguished_name(&[0x31, 0x84, 0xff, 0xff, 0xff, 0xff]),
            "(unreadable name)"
        );
        assert_eq!(distinguished_name(&[0x31, 0x80]), "(unreadable name)");
        // Every short input: never a panic.
        for a in 0..=255u8 {
            for b in [0x00, 0x01, 0x7f, 0x80, 0x81, 0x84, 0x85, 0xff] {
                let _ = distinguished_name(&[a, b, 0x30, 0x00]);
            }
        }
    }

    #[test]
    fn plain_text_answer_to_implicit_tls() {
        let inner = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let e = handshake_error(
            std::io::Error::other(inner),
            "smtp.example.com",
            587,
            true,
            &TlsOptions::default(),
        );
        assert!(e.hint().is_some_and(|h| h.contains("port 587 speaks plain SMTP")));
    }
}
