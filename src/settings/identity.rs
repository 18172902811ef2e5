//! A client certificate and its private key, for relays that authenticate
//! clients by certificate (mutual TLS).
//!
//! The key is a secret: held in memory that is wiped when the last clone
//! of the settings is dropped, never shown by `Debug`, never in an error,
//! a URL or a trace. It is checked when it enters
//! ([`SmtpSettingsBuilder::build`](super::SmtpSettingsBuilder::build)): the
//! PEM texts parse, the chain is not empty, and the key belongs to the first
//! certificate.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::FieldError;

/// A client certificate chain and the private key of its first
/// certificate, for [`SmtpSettingsBuilder::client_certificate_pem`](super::SmtpSettingsBuilder::client_certificate_pem).
///
/// Cheap to clone (shared). Its `Debug` shows the certificate's subject and
/// the length of the chain, never the key.
#[derive(Clone)]
pub struct ClientIdentity(Arc<Inner>);

struct Inner {
    chain: Vec<CertificateDer<'static>>,
    /// For sealing; wiped when dropped.
    #[cfg(feature = "serde")]
    key: Zeroizing<PrivateKeyDer<'static>>,
    /// The chain with the key loaded for signing (rustls with ring).
    certified: Arc<CertifiedKey>,
    subject: String,
}

impl ClientIdentity {
    /// Reads a certificate chain and a private key from PEM, and checks
    /// that they belong together. Each problem is a field error on
    /// `client_certificate` or `client_key`; no message quotes the key.
    pub(crate) fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<ClientIdentity, Vec<FieldError>> {
        let mut errors = Vec::new();
        let chain = match CertificateDer::pem_slice_iter(chain_pem).collect::<Result<Vec<_>, _>>() {
            Ok(chain) if !chain.is_empty() => Some(chain),
            Ok(_) => {
                errors.push(FieldError::new(
                    "client_certificate",
                    "no certificate found in the PEM text: give the client certificate (-----BEGIN CERTIFICATE-----), then any intermediate certificates",
                ));
                None
            }
            Err(e) => {
                errors.push(FieldError::new(
                    "client_certificate",
                    format!("unreadable PEM certificate: {e}"),
                ));
                None
            }
        };
        let subject =
            chain
                .as_ref()
                .and_then(|chain| match chain.first().map(webpki::EndEntityCert::try_from) {
                    Some(Ok(cert)) => Some(crate::transport::tls::distinguished_name(cert.subject())),
                    Some(Err(e)) => {
                        errors.push(FieldError::new(
                            "client_certificate",
                            format!("the first certificate cannot be read: {e}"),
                        ));
                        None
                    }
                    None => None,
                });
        // The PEM error is never shown: its text may quote a line of the key.
        let key = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(key) => Some(Zeroizing::new(key)),
            Err(pem::Error::NoItemsFound) => {
                errors.push(FieldError::new("client_key", no_key_message(key_pem)));
                None
            }
            Err(_) => {
                errors.push(FieldError::new(
                    "client_key",
                    "unreadable PEM private key: give it whole, from its -----BEGIN line to its -----END line",
                ));
                None
            }
        };
        let (Some(chain), Some(subject), Some(key)) = (chain, subject, key) else {
            return Err(errors);
        };
        // Loaded from a borrow: no copy of the key that would not be wiped.
        let signing = match rustls::crypto::ring::sign::any_supported_type(&key) {
            Ok(signing) => signing,
            Err(_) => {
                return Err(vec![FieldError::new(
                    "client_key",
                    "the private key cannot be used: relaymail signs with RSA, ECDSA (P-256, P-384) and Ed25519 keys in PKCS#8, PKCS#1 (RSA) or SEC1 (EC) form",
                )])
            }
        };
        let certified = CertifiedKey::new(chain.clone(), signing);
        match certified.keys_match() {
            // Unknown: the key cannot tell its public half (rustls accepts it too).
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(vec![FieldError::new(
                    "client_key",
                    "the private key does not belong to the client certificate: the first certificate in the PEM text must be the one issued for this key",
                )])
            }
            Err(e) => {
                return Err(vec![FieldError::new(
                    "client_certificate",
                    format!("the client certificate cannot be used: {e}"),
                )])
            }
        }
        Ok(ClientIdentity(Arc::new(Inner {
            chain,
            #[cfg(feature = "serde")]
            key,
            certified: Arc::new(certified),
            subject,
        })))
    }

    /// The certificate chain, the client's own certificate first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.0.chain
    }

    /// The subject of the client's certificate, e.g. `CN=app.example.com,
    /// O=Example`: its attributes in certificate order (control characters
    /// escaped).
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// The certificate chain as PEM text (public: no key in it).
    pub fn chain_pem(&self) -> String {
        let mut out = String::new();
        for cert in &self.0.chain {
            push_pem(&mut out, "CERTIFICATE", cert);
        }
        out
    }

    /// The key as PEM text, in memory wiped when dropped (for sealing).
    /// `None` for a key form this release cannot write back.
    #[cfg(feature = "serde")]
    pub(crate) fn key_pem(&self) -> Option<Zeroizing<String>> {
        let (label, der) = match &*self.0.key {
            PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(k) => ("EC PRIVATE KEY", k.secret_sec1_der()),
            _ => return None,
        };
        Some(secret_pem(label, der))
    }

    /// The chain and key loaded for signing.
    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.0.certified)
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("subject", &self.0.subject)
            .field("chain", &self.0.chain.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

/// A private key's DER as one PEM block, in memory wiped when dropped (for
/// sealing): room for the lines is reserved first, so no reallocation
/// leaves a copy behind.
#[cfg(feature = "serde")]
pub(crate) fn secret_pem(label: &str, der: &[u8]) -> Zeroizing<String> {
    let encoded_len = der.len().div_ceil(3) * 4;
    let mut out = Zeroizing::new(String::with_capacity(
        encoded_len + encoded_len / 64 + 2 * label.len() + 40,
    ));
    push_pem(&mut out, label, der);
    out
}

/// Appends one PEM block. The base64 text is written a line at a time into
/// `out` (no other copy of it is made), so that for a key the only copy is
/// `out`, which the caller wipes.
fn push_pem(out: &mut String, label: &str, der: &[u8]) {
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // 48 bytes encode to one 64-character line.
    for chunk in der.chunks(48) {
        let mut line = Zeroizing::new([0u8; 64]);
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(chunk, &mut *line)
            .unwrap_or(0);
        out.push_str(std::str::from_utf8(&line[..n]).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

/// Why no key was found: an encrypted key says so (its header is not secret).
fn no_key_message(key_pem: &[u8]) -> String {
    let encrypted = key_pem
        .windows(b"ENCRYPTED PRIVATE KEY".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY")
        || key_pem
            .windows(b"Proc-Type: 4,ENCRYPTED".len())
            .any(|w| w == b"Proc-Type: 4,ENCRYPTED");
    if encrypted {
        "the private key is encrypted: give it decrypted (for example `openssl pkey -in key.pem -out key-plain.pem`) and keep that file private".to_owned()
    } else {
        "no private key found in the PEM text: give the key of the client certificate (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)".to_owned()
    }
}

/// A client certificate and key given to the builder, read by `build()`.
/// `Debug` shows the sizes only.
#[derive(Clone)]
pub(crate) struct PendingIdentity {
    pub(crate) chain_pem: Vec<u8>,
    pub(crate) key_pem: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for PendingIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingIdentity")
            .field("chain_pem", &format_args!("{} bytes", self.chain_pem.len()))
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test keys made with openssl for these tests only (testdata/README.md).
    const EC_CERT: &str = include_str!("testdata/ec.crt");
    const EC_SEC1: &str = include_str!("testdata/ec-sec1.key");
    const EC_PKCS8: &str = include_str!("testdata/ec-pkcs8.key");
    const EC_ENCRYPTED: &str = include_str!("testdata/ec-encrypted.key");
    const RSA_CERT: &str = include_str!("testdata/rsa.crt");
    const RSA_PKCS1: &str = include_str!("testdata/rsa-pkcs1.key");
    const ED_CERT: &str = include_str!("testdata/ed25519.crt");
    const ED_PKCS8: &str = include_str!("testdata/ed25519-pkcs8.key");

    /// The fields of the errors for this chain and key.
    fn fields(chain: &str, key: &str) -> Vec<(&'static str, String)> {
        match ClientIdentity::from_pem(chain.as_bytes(), key.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .into_iter()
                .map(|e| (e.field(), e.message().to_owned()))
                .collect(),
        }
    }

    /// A line from the middle of a PEM key: text found only in the key.
    fn key_line(key_pem: &str) -> &str {
        key_pem.lines().nth(1).expect("a key line")
    }

    #[test]
    fn every_key_form_rustls_reads_is_accepted() {
        for (chain, key, subject) in [
            (EC_CERT, EC_SEC1, "CN=relaymail unit test EC, O=Example Org"),
            (EC_CERT, EC_PKCS8, "CN=relaymail unit test EC, O=Example Org"),
            (RSA_CERT, RSA_PKCS1, "CN=relaymail unit test RSA"),
            (ED_CERT, ED_PKCS8, "CN=relaymail unit test Ed25519"),
        ] {
            let id = ClientIdentity::from_pem(chain.as_bytes(), key.as_bytes()).expect(subject);
            assert_eq!(id.subject(), subject);
            assert_eq!(id.chain().len(), 1);
            // The chain as PEM reads back as the same certificates.
            let again: Vec<_> = CertificateDer::pem_slice_iter(id.chain_pem().as_bytes())
                .collect::<Result<_, _>>()
                .expect("pem");
            assert_eq!(again, id.chain());
            let shown = format!("{id:?}");
            assert!(
                shown.contains("[redacted]") && !shown.contains(key_line(key)),
                "{shown}"
            );
        }
        // A chain: the client's certificate first, then others.
        let chain = format!("{EC_CERT}{RSA_CERT}");
        let id = ClientIdentity::from_pem(chain.as_bytes(), EC_SEC1.as_bytes()).expect("chain");
        assert_eq!(id.chain().len(), 2);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn the_key_is_written_back_in_its_own_form() {
        for (chain, key, label) in [
            (EC_CERT, EC_SEC1, "EC PRIVATE KEY"),
            (EC_CERT, EC_PKCS8, "PRIVATE KEY"),
            (RSA_CERT, RSA_PKCS1, "RSA PRIVATE KEY"),
            (ED_CERT, ED_PKCS8, "PRIVATE KEY"),
        ] {
            let id = ClientIdentity::from_pem(chain.as_bytes(), key.as_bytes()).expect(label);
            let pem = id.key_pem().expect("pem");
            assert!(pem.starts_with(&format!("-----BEGIN {label}-----\n")), "{label}");
            // The same bytes as openssl wrote (64-character lines).
            assert_eq!(pem.as_str(), key, "{label}");
        }
    }

    #[test]
    fn each_problem_is_a_field_error_that_never_quotes_the_key() {
        let cases: Vec<(&str, String, String, &str, &str)> = vec![
            (
                "empty chain",
                String::new(),
                EC_SEC1.into(),
                "client_certificate",
                "no certificate found",
            ),
            (
                "a key where the chain goes",
                EC_SEC1.into(),
                EC_SEC1.into(),
                "client_certificate",
                "no certificate found",
            ),
            (
                "a broken certificate",
                EC_CERT.replacen("MII", "M!I", 1),
                EC_SEC1.into(),
                "client_certificate",
                "unreadable PEM certificate",
            ),
            (
                "not a certificate inside",
                "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n".into(),
                EC_SEC1.into(),
                "client_certificate",
                "cannot be read",
            ),
            (
                "no key",
                EC_CERT.into(),
                String::new(),
                "client_key",
                "no private key found",
            ),
            (
                "a certificate where the key goes",
                EC_CERT.into(),
                RSA_CERT.into(),
                "client_key",
                "no private key found",
            ),
            (
                "an encrypted key",
                EC_CERT.into(),
                EC_ENCRYPTED.into(),
                "client_key",
                "encrypted",
            ),
            (
                "a truncated key",
                EC_CERT.into(),
                EC_SEC1.lines().take(2).collect::<Vec<_>>().join("\n"),
                "client_key",
                "unreadable PEM private key",
            ),
            (
                "not a key inside",
                EC_CERT.into(),
                "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n".into(),
                "client_key",
                "cannot be used",
            ),
            (
                "another certificate's key",
                EC_CERT.into(),
                RSA_PKCS1.into(),
                "client_key",
                "does not belong to the client certificate",
            ),
            (
                "the chain in the wrong order",
                format!("{RSA_CERT}{EC_CERT}"),
                EC_SEC1.into(),
                "client_key",
                "does not belong",
            ),
        ];
        for (what, chain, key, field, text) in cases {
            let errors = fields(&chain, &key);
            assert!(
                errors.iter().any(|(f, m)| *f == field && m.contains(text)),
                "{what}: {errors:?}"
            );
            for (_, message) in &errors {
                for secret in [EC_SEC1, RSA_PKCS1, EC_ENCRYPTED] {
                    assert!(!message.contains(key_line(secret)), "{what}: {message}");
                }
            }
        }
        // Both fields at once.
        let errors = fields("", "");
        let names: Vec<_> = errors.iter().map(|(f, _)| *f).collect();
        assert_eq!(names, ["client_certificate", "client_key"]);
    }

    #[test]
    fn the_pending_pem_never_shows_the_key() {
        let pending = PendingIdentity {
            chain_pem: EC_CERT.as_bytes().to_vec(),
            key_pem: Zeroizing::new(EC_SEC1.as_bytes().to_vec()),
        };
        let shown = format!("{pending:?}");
        assert!(
            !shown.contains(key_line(EC_SEC1)) && shown.contains("[redacted]"),
            "{shown}"
        );
    }
}
