//! Certificates generated per server, and the rustls server configuration.

use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// Common name of the generated CA.
const CA_NAME: &str = "relaymail test CA";

/// The CA (PEM, for clients) and the server's leaf certificate and key.
pub(super) struct Certificates {
    pub(super) ca_pem: String,
    leaf: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("test server certificate: {error}"),
    )
}

impl Certificates {
    /// A CA and a leaf for `names` signed by it, or self-signed when
    /// `untrusted`.
    pub(super) fn generate(names: &[String], untrusted: bool) -> io::Result<Certificates> {
        let ca_key = KeyPair::generate().map_err(invalid)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(invalid)?;
        ca_params.distinguished_name.push(DnType::CommonName, CA_NAME);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(invalid)?;
        let ca = Issuer::new(ca_params, ca_key);

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
            leaf: leaf.der().clone(),
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        })
    }

    /// A TLS acceptor presenting the leaf, with the ring provider (never the
    /// process-wide default).
    pub(super) fn acceptor(&self) -> io::Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.leaf.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(io::Error::other)?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
