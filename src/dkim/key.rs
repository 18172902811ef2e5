//! A DKIM private key: read from PEM, loaded into ring for signing, and its
//! public half as the DNS record that publishes it.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::PrivateKeyDer;
#[cfg(feature = "serde")]
use zeroize::Zeroizing;

use super::DkimAlgorithm;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The smallest RSA key ring signs with, in bits.
pub(super) const RSA_MIN_BITS: usize = 2048;
/// The largest RSA key ring signs with, in bits.
pub(super) const RSA_MAX_BITS: usize = 4096;

/// A private key loaded for signing.
pub(super) struct SigningKey {
    pair: Pair,
    /// The key as given (PKCS#8 or PKCS#1), for sealing; wiped when dropped.
    #[cfg(feature = "serde")]
    der: Zeroizing<PrivateKeyDer<'static>>,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl SigningKey {
    /// Reads an unencrypted private key from PEM: RSA in PKCS#8 (`BEGIN
    /// PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`), Ed25519 in PKCS#8.
    /// The error is a message for a person that never quotes the key.
    pub(super) fn from_pem(key_pem: &[u8]) -> Result<SigningKey, String> {
        // The PEM error is never shown: its text may quote a line of the key.
        let der = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(der) => der,
            Err(pem::Error::NoItemsFound) => return Err(no_key_message(key_pem)),
            Err(_) => return Err(
                "unreadable PEM private key: give it whole, from its -----BEGIN line to its -----END line"
                    .to_owned(),
            ),
        };
        let pair = match &der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
                .map(Pair::Rsa)
                .map_err(rsa_message)?,
            PrivateKeyDer::Pkcs8(k) => match RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()) {
                Ok(pair) => Pair::Rsa(pair),
                Err(e) if e.to_string() == "WrongAlgorithm" => {
                    Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.secret_pkcs8_der())
                        .map(Pair::Ed25519)
                        .map_err(|e| match e.to_string().as_str() {
                            "WrongAlgorithm" => not_rsa_or_ed25519(),
                            _ => "the Ed25519 private key cannot be used: it is malformed".to_owned(),
                        })?
                }
                Err(e) => return Err(rsa_message(e)),
            },
            _ => return Err(not_rsa_or_ed25519()),
        };
        Ok(SigningKey {
            pair,
            #[cfg(feature = "serde")]
            der: Zeroizing::new(der),
        })
    }

    pub(super) fn algorithm(&self) -> DkimAlgorithm {
        match self.pair {
            Pair::Rsa(_) => DkimAlgorithm::RsaSha256,
            Pair::Ed25519(_) => DkimAlgorithm::Ed25519Sha256,
        }
    }

    /// The key's size in bits: the RSA modulus, or 256 for Ed25519.
    pub(super) fn bits(&self) -> usize {
        match &self.pair {
            Pair::Rsa(k) => k.public().modulus_len() * 8,
            Pair::Ed25519(_) => 256,
        }
    }

    /// The signature of `data` (the canonicalised header fields and
    /// DKIM-Signature field): RSASSA-PKCS1-v1_5 with SHA-256 (RFC 6376
    /// §3.3.1), or Ed25519 over the SHA-256 of the data (RFC 8463 §3).
    pub(super) fn sign(&self, data: &[u8]) -> Result<Vec<u8>, ()> {
        match &self.pair {
            Pair::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), data, &mut sig)
                    .map_err(|_| ())?;
                Ok(sig)
            }
            Pair::Ed25519(k) => {
                let hash = ring::digest::digest(&ring::digest::SHA256, data);
                Ok(k.sign(hash.as_ref()).as_ref().to_vec())
            }
        }
    }

    /// The DNS TXT record that publishes the public key (RFC 6376 §3.6.1):
    /// for RSA the SubjectPublicKeyInfo (as `openssl rsa -pubout` writes
    /// it), for Ed25519 the raw 32-byte key (RFC 8463 §4).
    pub(super) fn dns_record(&self) -> String {
        match &self.pair {
            Pair::Rsa(k) => format!("v=DKIM1; k=rsa; p={}", B64.encode(rsa_spki(k.public().as_ref()))),
            Pair::Ed25519(k) => format!("v=DKIM1; k=ed25519; p={}", B64.encode(k.public_key().as_ref())),
        }
    }

    /// The key as PEM text, in memory wiped when dropped (for sealing),
    /// in the form it was given.
    #[cfg(feature = "serde")]
    pub(super) fn key_pem(&self) -> Option<Zeroizing<String>> {
        let (label, der) = match &*self.der {
            PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
            _ => return None,
        };
        Some(crate::settings::secret_pem(label, der))
    }
}

/// Why no key was found: an encrypted key says so (its header is not secret).
fn no_key_message(key_pem: &[u8]) -> String {
    let has = |needle: &[u8]| key_pem.windows(needle.len()).any(|w| w == needle);
    if has(b"ENCRYPTED PRIVATE KEY") || has(b"Proc-Type: 4,ENCRYPTED") {
        "the DKIM private key is encrypted: give it decrypted (for example `openssl pkey -in key.pem -out key-plain.pem`) and keep that file private".to_owned()
    } else {
        "no private key found in the PEM text: give the DKIM private key (-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)".to_owned()
    }
}

fn not_rsa_or_ed25519() -> String {
    "DKIM signs with RSA (rsa-sha256) or Ed25519 (ed25519-sha256) keys, and this is neither (an EC key?)"
        .to_owned()
}

fn rsa_message(e: ring::error::KeyRejected) -> String {
    match e.to_string().as_str() {
        "TooSmall" => format!(
            "the RSA key is shorter than {RSA_MIN_BITS} bits: relaymail signs with RSA keys of {RSA_MIN_BITS} to {RSA_MAX_BITS} bits (RFC 8301 forbids keys under 1024 bits and recommends 2048); make one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048` and publish its DNS record"
        ),
        "TooLarge" => format!(
            "the RSA key is longer than {RSA_MAX_BITS} bits: relaymail signs with RSA keys of {RSA_MIN_BITS} to {RSA_MAX_BITS} bits (2048 is the usual size)"
        ),
        _ => "the RSA private key cannot be used: it is malformed, inconsistent or has more than two primes".to_owned(),
    }
}

/// DER: a tag and its content with the length in front.
fn der(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

/// An RSAPublicKey (PKCS#1) wrapped in a SubjectPublicKeyInfo (RFC 5280)
/// with the rsaEncryption algorithm.
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    // SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }
    const RSA_ENCRYPTION: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = Vec::with_capacity(rsa_public_key.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(rsa_public_key);
    let mut content = RSA_ENCRYPTION.to_vec();
    der(0x03, &bits, &mut content);
    let mut out = Vec::with_capacity(content.len() + 4);
    der(0x30, &content, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        let mut out = Vec::new();
        der(0x04, &[7; 5], &mut out);
        assert_eq!(out[..2], [0x04, 5]);
        out.clear();
        der(0x04, &[7; 200], &mut out);
        assert_eq!(out[..3], [0x04, 0x81, 200]);
        out.clear();
        der(0x04, &[7; 270], &mut out);
        assert_eq!(out[..4], [0x04, 0x82, 0x01, 0x0e]);
    }
}
