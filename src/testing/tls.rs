//! Certificates generated per server, and the rustls server configuration.

use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// Common name of the generated CA.
const CA_NAME: &str = "relaymail test CA";

/// Common name of the client certificates the server's CA issues.
pub(super) const CLIENT_NAME: &str = "relaymail test client";

/// Common names of the CA no test server knows and of its client.
const FOREIGN_CA_NAME: &str = "relaymail foreign test CA";
const FOREIGN_CLIENT_NAME: &str = "relaymail foreign client";

/// The CA (PEM, for clients) and the server's leaf certificate and key.
pub(super) struct Certificates {
    pub(super) ca_pem: String,
    ca_der: CertificateDer<'static>,
    ca: Issuer<'static, KeyPair>,
    leaf: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("test server certificate: {error}"),
    )
}

/// A new CA named `name`: its certificate and its issuer.
fn new_ca(name: &str) -> io::Result<(rcgen::Certificate, Issuer<'static, KeyPair>)> {
    let ca_key = KeyPair::generate().map_err(invalid)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(invalid)?;
    ca_params.distinguished_name.push(DnType::CommonName, name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(invalid)?;
    Ok((ca_cert, Issuer::new(ca_params, ca_key)))
}

/// A client certificate named `name` issued by `ca`: (certificate PEM,
/// PKCS#8 key PEM).
fn client_identity(ca: &Issuer<'static, KeyPair>, name: &str) -> io::Result<(String, String)> {
    let key = KeyPair::generate().map_err(invalid)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(invalid)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, ca).map_err(invalid)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A client certificate and key from a CA generated for this call, which
/// no test server trusts.
pub(super) fn foreign_client_identity() -> io::Result<(String, String)> {
    let (_, ca) = new_ca(FOREIGN_CA_NAME)?;
    client_identity(&ca, FOREIGN_CLIENT_NAME)
}

impl Certificates {
    /// A CA and a leaf for `names` signed by it, or self-signed when
    /// `untrusted`.
    pub(super) fn generate(names: &[String], untrusted: bool) -> io::Result<Certificates> {
        let (ca_cert, ca) = new_ca(CA_NAME)?;

        let leaf_key = KeyPair::generate().map_err(invalid)?;
        let mut leaf_params = CertificateParams::new(names.to_vec()).map_err(invalid)?;
        let common_name = names.first().map_or("relaymail-test", String::as_str);
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = if untrusted {
            leaf_params.self_signed(&leaf_key)
        } else {
            leaf_params.use_authority_key_identifier_extension = true;
            leaf_params.signed_by(&leaf_key, &ca)
        }
        .map_err(invalid)?;

        Ok(Certificates {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            ca,
            leaf: leaf.der().clone(),
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        })
    }

    /// A new client certificate issued by this server's CA.
    pub(super) fn client_identity(&self) -> io::Result<(String, String)> {
        client_identity(&self.ca, CLIENT_NAME)
    }

    /// A TLS acceptor presenting the leaf, with the ring provider (never the
    /// process-wide default); with `require_client_cert`, every client must
    /// present a certificate issued by this server's CA; with `tls12_only`,
    /// TLS 1.2 is the only version offered.
    pub(super) fn acceptor(&self, require_client_cert: bool, tls12_only: bool) -> io::Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(io::Error::other)?;
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone()).map_err(io::Error::other)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(io::Error::other)?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(
                vec![self.leaf.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(io::Error::other)?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
