//! Sealed settings (feature `serde`): the password encrypted with
//! ChaCha20-Poly1305 (ring) under a 32-byte [`SecretKey`], with a random
//! nonce. The associated data binds the seal to the profile name **and every
//! stored setting** (host, port, TLS mode and options, trusted roots,
//! plain-text AUTH, user name, mechanisms … — see [`SealedSecret::version`]):
//! someone who can edit the stored record but has no key cannot point the
//! password at another server; the record then fails to open with
//! [`Error::is_tampered`]. A wrong key or a changed byte is an error, never
//! garbage.
//!
//! A client certificate's private key (mutual TLS,
//! [`SealedSettings::client_key`]) and a proxy's password
//! ([`SealedSettings::proxy_password`]) are sealed the same way, bound to
//! the same data under a label of their own, so that no sealed secret
//! opens in another's place. A DKIM private key ([`SealedSettings::dkim_key`],
//! feature `dkim`) too, and OAuth2 sign-in's refresh token and client
//! secret ([`SealedSettings::oauth2_refresh_token`],
//! [`SealedSettings::oauth2_client_secret`]), each under its own label.
//! The proxy's settings, like every field added
//! after version 2 shipped, are bound only when set, so records sealed
//! before they existed open unchanged.
//!
//! Records sealed by earlier releases (version 1: bound to the profile name
//! only) still open, and are sealed anew in the current format whenever they
//! are sealed again (a [`ProfileStore`](crate::profiles::ProfileStore) does
//! so on its next save). Until then such a record is only as safe as that
//! older format.

use std::path::Path;

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::data::{DkimData, OAuth2Data, ProxyData, SettingsData, StoredSecrets, TimeoutsData};
use super::{Auth, SmtpSettings};
use crate::error::{Error, Kind};
use crate::proto::address::AddressPolicy;
use crate::proto::auth::Credential;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const ALGORITHM: &str = "chacha20-poly1305";
/// Seal version 1 (earlier releases): associated data = the profile name.
const VERSION_PROFILE_ONLY: u32 = 1;
/// Seal version 2: associated data = the profile name and the canonical
/// encoding of every stored setting ([`bound_aad`]).
const VERSION_WHOLE_RECORD: u32 = 2;

/// The key that seals passwords: 32 random bytes. Its `Debug` shows nothing.
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

fn key_error(message: impl Into<String>) -> Error {
    Error::new(Kind::Config, None, message)
}

impl SecretKey {
    /// A new random key (from the operating system's generator).
    pub fn generate() -> Result<SecretKey, Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| key_error("the system random generator failed"))?;
        Ok(SecretKey(bytes))
    }

    /// A key from base64 text (32 bytes once decoded).
    pub fn from_base64(text: &str) -> Result<SecretKey, Error> {
        let decoded = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| key_error("the secret key is not valid base64"))?,
        );
        let bytes: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| key_error(format!("the secret key must be 32 bytes, not {}", decoded.len())))?;
        Ok(SecretKey(Zeroizing::new(bytes)))
    }

    /// A key from an environment variable holding base64.
    pub fn from_env(var: &str) -> Result<SecretKey, Error> {
        let text = Zeroizing::new(
            std::env::var(var)
                .map_err(|_| key_error(format!("the environment variable {var} is not set")))?,
        );
        SecretKey::from_base64(&text)
    }
    /// A key from a file holding base64.
    ///
    /// On unix the file must be private to its owner, as ssh requires of a
    /// private key: a key file readable or writable by group or others is
    /// refused (a [config](Error::is_config) error naming the file and its
    /// mode, with the fix: `chmod 600 <file>`), and nothing is read from it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<SecretKey, Error> {
        use std::io::Read;
        let path = path.as_ref();
        let cannot_read = |e: std::io::Error| {
            Error::new(
                Kind::Io,
                None,
                format!("cannot read the key file {}", path.display()),
            )
            .with_source(e)
        };
        let mut file = std::fs::File::open(path).map_err(cannot_read)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The opened file's mode: what is checked is what is read.
            let mode = file.metadata().map_err(cannot_read)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::new(
                    Kind::Config,
                    None,
                    format!(
                        "the key file {} has mode {mode:04o}: it is readable or writable by group or others, so the key is refused",
                        path.display()
                    ),
                )
                .with_hint(format!(
                    "make it private to its owner: chmod 600 {}",
                    path.display()
                )));
            }
        }
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text).map_err(cannot_read)?;
        SecretKey::from_base64(&text)
    }

    /// The key as base64, to store it (keep it away from the settings).
    pub fn to_base64(&self) -> SecretString {
        B64.encode(self.0.as_ref()).into()
    }

    fn aead(&self) -> LessSafeKey {
        // 32 bytes is the key length of ChaCha20-Poly1305: this cannot fail.
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, self.0.as_ref()).expect("32-byte key"))
    }

    fn check_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, self.0.as_ref())
    }

    /// A value that shows which key sealed a record without revealing it
    /// (HMAC-SHA-256 of a fixed label): it tells "wrong key" apart from
    /// "changed record", which the AEAD alone cannot.
    fn key_check(&self) -> String {
        B64.encode(hmac::sign(&self.check_key(), KEY_CHECK_LABEL))
    }

    fn is_key_check(&self, check: &str) -> bool {
        B64.decode(check)
            .is_ok_and(|tag| hmac::verify(&self.check_key(), KEY_CHECK_LABEL, &tag).is_ok())
    }
}

const KEY_CHECK_LABEL: &[u8] = b"relaymail sealed settings key check v2";
const STORE_MAC_LABEL: &[u8] = b"relaymail profile store authentication v1";

impl SecretKey {
    /// The key that authenticates a whole profile store: a subkey derived
    /// from this one (HMAC-SHA-256 of a fixed label), never the sealing key
    /// itself.
    fn store_key(&self) -> hmac::Key {
        let sub = hmac::sign(&self.check_key(), STORE_MAC_LABEL);
        hmac::Key::new(hmac::HMAC_SHA256, sub.as_ref())
    }

    /// The authentication tag of a profile store's canonical bytes, base64.
    pub(crate) fn store_mac(&self, data: &[u8]) -> String {
        B64.encode(hmac::sign(&self.store_key(), data))
    }

    /// Whether `mac` is the tag of `data` under this key.
    pub(crate) fn verify_store_mac(&self, data: &[u8], mac: &str) -> bool {
        B64.decode(mac)
            .is_ok_and(|tag| hmac::verify(&self.store_key(), data, &tag).is_ok())
    }
}

/// Appends `bytes` with its length in front (so that no two sequences of
/// fields encode alike).
pub(crate) fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// An encrypted password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SealedSecret {
    /// Always `chacha20-poly1305`.
    pub algorithm: String,
    /// What the seal is bound to: `2` (written by this release) the profile
    /// name and every stored setting; `1` (earlier releases; the default when
    /// absent) the profile name only. A version-2 record whose version is
    /// changed does not open.
    #[serde(default = "profile_only_version")]
    pub version: u32,
    /// The 12-byte nonce, base64.
    pub nonce: String,
    /// Ciphertext and tag, base64.
    pub ciphertext: String,
    /// Version 2: a value derived from the key (not the key), so that a
    /// wrong key and a changed record give different errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<String>,
}

fn profile_only_version() -> u32 {
    VERSION_PROFILE_ONLY
}

/// Settings whose password (and client key) is sealed: safe to store as
/// JSON or TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SealedSettings {
    /// Everything but the password and the client key.
    pub settings: SettingsData,
    /// The password (or OAuth2 token), sealed; absent without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SealedSecret>,
    /// The private key of the client certificate (PEM), sealed (always seal
    /// version 2); absent without a client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<SealedSecret>,
    /// The proxy's password, sealed (always version 2); absent without a
    /// proxy user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_password: Option<SealedSecret>,
    /// The DKIM private key (PEM), sealed (always version 2); absent
    /// without DKIM signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim_key: Option<SealedSecret>,
    /// OAuth2 sign-in's refresh token, sealed (always version 2); absent
    /// without OAuth2 sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_refresh_token: Option<SealedSecret>,
    /// OAuth2 sign-in's client secret, sealed (always version 2); absent
    /// for a public client or without OAuth2 sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_client_secret: Option<SealedSecret>,
}

/// Which secret of a record a seal holds: each has associated data of its
/// own, so that one sealed secret never opens as the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// The relay's password or token.
    Relay,
    /// The proxy's password.
    Proxy,
    /// A client certificate's private key (PEM).
    ClientKey,
    /// The DKIM private key (PEM).
    DkimKey,
    /// OAuth2 sign-in's refresh token.
    OAuth2RefreshToken,
    /// OAuth2 sign-in's client secret.
    OAuth2ClientSecret,
}

/// Version 1 associated data (still read, never written).
fn profile_only_aad(profile: &str) -> Vec<u8> {
    format!("relaymail sealed password v1\0{profile}").into_bytes()
}

/// A canonical, unambiguous encoding: each item is its name, a zero byte,
/// the value's length (8 bytes, big-endian) and the value. The same
/// settings always give the same bytes, whatever the field order or
/// spacing of the stored text.
struct Canonical(Vec<u8>);

impl Canonical {
    fn bytes(&mut self, name: &str, value: &[u8]) {
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0);
        self.0.extend_from_slice(&(value.len() as u64).to_be_bytes());
        self.0.extend_from_slice(value);
    }

    fn text(&mut self, name: &str, value: &str) {
        self.bytes(name, value.as_bytes());
    }

    fn flag(&mut self, name: &str, value: bool) {
        self.bytes(name, &[u8::from(value)]);
    }

    fn optional(&mut self, name: &str, value: Option<&str>) {
        self.flag(name, value.is_some());
        if let Some(value) = value {
            self.text(name, value);
        }
    }

    fn list(&mut self, name: &str, values: Option<&[String]>) {
        self.flag(name, values.is_some());
        if let Some(values) = values {
            self.bytes(name, &(values.len() as u64).to_be_bytes());
            for v in values {
                self.text(name, v);
            }
        }
    }

    /// Seconds, to the nanosecond (the precision settings keep), so that a
    /// float read back from text one unit in the last place off still
    /// matches; anything else (negative, not finite, huge) by its bits.
    fn seconds(&mut self, name: &str, secs: f64) {
        let nanos = secs * 1e9;
        if secs.is_finite() && secs >= 0.0 && nanos < u64::MAX as f64 {
            self.bytes(name, &(nanos.round() as u64).to_be_bytes());
        } else {
            self.bytes(&format!("{name} bits"), &secs.to_bits().to_be_bytes());
        }
    }
}

/// Version 2 associated data: the profile name and every field of the
/// stored settings. The destructuring names every field on purpose: a field
/// added to [`SettingsData`] or [`TimeoutsData`] does not compile until it is
/// bound here too.
fn bound_aad(profile: &str, settings: &SettingsData) -> Vec<u8> {
    bound_aad_for(Purpose::Relay, profile, settings)
}

/// [`bound_aad`] for the secret of `purpose`: the relay's password's is the
/// one records have always had; the proxy's starts with a label of its own.
fn bound_aad_for(purpose: Purpose, profile: &str, settings: &SettingsData) -> Vec<u8> {
    let SettingsData {
        host,
        port,
        tls,
        sender,
        sender_name,
        username,
        oauth2,
        auth_mechanisms,
        allow_plaintext_auth,
        helo_name,
        timeouts,
        extra_roots_pem,
        webpki_roots,
        system_roots,
        client_certificate_pem,
        dangerous_accept_invalid_certs,
        dangerous_accept_invalid_hostnames,
        pipelining,
        chunking,
        require_all_recipients,
        destination,
        backup_relays,
        primary_retry_after,
        source_address,
        connect_attempt_delay,
        proxy,
        dkim,
        oauth2_client,
        max_deliveries_per_connection,
        redirect,
        address_policy,
        attachment_limit,
    } = settings;
    let TimeoutsData {
        connect,
        greeting,
        tls_handshake,
        command,
        data,
        final_reply,
    } = timeouts;
    let mut c = Canonical(match purpose {
        Purpose::Relay => b"relaymail sealed settings v2\0".to_vec(),
        Purpose::Proxy => b"relaymail sealed proxy password v2\0".to_vec(),
        Purpose::ClientKey => b"relaymail sealed client key v2\0".to_vec(),
        Purpose::DkimKey => b"relaymail sealed dkim key v2\0".to_vec(),
        Purpose::OAuth2RefreshToken => b"relaymail sealed oauth2 refresh token v2\0".to_vec(),
        Purpose::OAuth2ClientSecret => b"relaymail sealed oauth2 client secret v2\0".to_vec(),
    });
    c.text("profile", profile);
    c.text("host", host);
    c.bytes("port", &port.to_be_bytes());
    c.text("tls", tls);
    c.text("sender", sender);
    c.optional("sender_name", sender_name.as_deref());
    c.optional("username", username.as_deref());
    c.flag("oauth2", *oauth2);
    c.list("auth_mechanisms", auth_mechanisms.as_deref());
    c.flag("allow_plaintext_auth", *allow_plaintext_auth);
    c.optional("helo_name", helo_name.as_deref());
    c.seconds("timeouts.connect", *connect);
    c.seconds("timeouts.greeting", *greeting);
    c.seconds("timeouts.tls_handshake", *tls_handshake);
    c.seconds("timeouts.command", *command);
    c.seconds("timeouts.data", *data);
    c.seconds("timeouts.final_reply", *final_reply);
    c.list("extra_roots_pem", Some(extra_roots_pem));
    c.flag("webpki_roots", *webpki_roots);
    c.flag("dangerous_accept_invalid_certs", *dangerous_accept_invalid_certs);
    c.flag(
        "dangerous_accept_invalid_hostnames",
        *dangerous_accept_invalid_hostnames,
    );
    c.flag("pipelining", *pipelining);
    c.flag("chunking", *chunking);
    c.flag("require_all_recipients", *require_all_recipients);
    // Added after version 2 shipped: bound only when present, so records
    // sealed before they existed still open.
    if let Some(destination) = destination {
        c.text("destination", destination);
    }
    if !backup_relays.is_empty() {
        c.list("backup_relays", Some(backup_relays));
    }
    if let Some(secs) = primary_retry_after {
        c.seconds("primary_retry_after", *secs);
    }
    if let Some(ip) = source_address {
        c.text("source_address", ip);
    }
    if let Some(secs) = connect_attempt_delay {
        c.seconds("connect_attempt_delay", *secs);
    }
    if *system_roots {
        c.flag("system_roots", true);
    }
    if let Some(chain) = client_certificate_pem {
        c.text("client_certificate_pem", chain);
    }
    // Added later still, bound the same way.
    if let Some(ProxyData {
        kind,
        host,
        port,
        username,
    }) = proxy
    {
        c.text("proxy.kind", kind);
        c.text("proxy.host", host);
        c.bytes("proxy.port", &port.to_be_bytes());
        c.optional("proxy.username", username.as_deref());
    }
    // DKIM signing, bound the same way (only when set).
    if let Some(DkimData {
        domain,
        selector,
        algorithm,
        canonicalization,
        headers,
    }) = dkim
    {
        c.text("dkim.domain", domain);
        c.text("dkim.selector", selector);
        c.text("dkim.algorithm", algorithm);
        c.text("dkim.canonicalization", canonicalization);
        c.list("dkim.headers", headers.as_deref());
    }
    // OAuth2 sign-in, bound the same way: every secret of the record is
    // bound to the authorization server its refresh token belongs to.
    if let Some(OAuth2Data {
        token_url,
        client_id,
        scopes,
    }) = oauth2_client
    {
        c.text("oauth2.token_url", token_url);
        c.text("oauth2.client_id", client_id);
        c.list("oauth2.scopes", Some(scopes));
    }
    // What the mailer does with the mail (redirect, deliveries per
    // connection, address policy, attachment limit), bound the same way:
    // only when not the default, so records sealed before they existed
    // still open. A redirect to someone else's address is as good as a
    // changed relay to whoever can edit the file.
    if *max_deliveries_per_connection != super::DEFAULT_MAX_DELIVERIES_PER_CONNECTION {
        c.bytes(
            "max_deliveries_per_connection",
            &(*max_deliveries_per_connection as u64).to_be_bytes(),
        );
    }
    if !redirect.is_default() {
        c.flag("redirect.enabled", redirect.enabled);
        c.bytes(
            "redirect.addresses",
            &(redirect.addresses.len() as u64).to_be_bytes(),
        );
        for a in &redirect.addresses {
            c.text("redirect.address", &a.address.to_string());
            c.flag("redirect.address.enabled", a.enabled);
        }
    }
    if *address_policy != AddressPolicy::Strict {
        c.text(
            "address_policy",
            match address_policy {
                AddressPolicy::Lenient => "lenient",
                _ => "strict",
            },
        );
    }
    if !attachment_limit.is_default() {
        c.flag("attachment_limit.max_size", attachment_limit.max_size.is_some());
        if let Some(max) = attachment_limit.max_size {
            c.bytes("attachment_limit.max_size", &max.to_be_bytes());
        }
        c.flag("attachment_limit.links", attachment_limit.links);
    }
    c.0
}

/// A buffer holding `plain` with room for the tag already reserved: sealing
/// in place then never reallocates, which would leave a copy of the
/// plaintext in freed memory. Zeroed when dropped.
fn sealing_buffer(plain: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(plain.len() + CHACHA20_POLY1305.tag_len()));
    buf.extend_from_slice(plain);
    buf
}

impl SmtpSettings {
    /// Seals the settings for storage under `profile`. The seal is bound to
    /// the profile name and every stored setting: unsealing under another
    /// name, or after any setting was changed in the stored record, fails.
    /// Settings whose credentials come from a
    /// [`CredentialProvider`](super::CredentialProvider) cannot be sealed.
    pub fn seal(&self, key: &SecretKey, profile: &str) -> Result<SealedSettings, Error> {
        let oauth2 = self.oauth2.as_ref().map(|source| source.parts());
        let secret = match &self.auth {
            Auth::None => None,
            Auth::Credential(Credential::Password { password, .. }) => Some(password.expose_secret()),
            Auth::Credential(Credential::OAuth2 { token, .. }) => Some(token.expose_secret()),
            Auth::Provider(_) if oauth2.is_some() => None,
            Auth::Provider(_) => {
                return Err(key_error(
                    "settings with a credential provider cannot be stored: store the provider's own configuration",
                ))
            }
        };
        let settings = self.to_data();
        let password = secret
            .map(|plain| seal_secret(key, plain.as_bytes(), bound_aad(profile, &settings)))
            .transpose()?;
        let proxy_password = self
            .proxy
            .as_ref()
            .and_then(|p| p.password())
            .map(|plain| {
                seal_secret(
                    key,
                    plain.expose_secret().as_bytes(),
                    bound_aad_for(Purpose::Proxy, profile, &settings),
                )
            })
            .transpose()?;
        let client_key = match self.tls_options.client_identity() {
            None => None,
            Some(identity) => {
                let pem = identity
                    .key_pem()
                    .ok_or_else(|| key_error("this form of client key cannot be stored"))?;
                Some(seal_secret(
                    key,
                    pem.as_bytes(),
                    bound_aad_for(Purpose::ClientKey, profile, &settings),
                )?)
            }
        };
        #[cfg(feature = "dkim")]
        let dkim_key = match &self.dkim {
            None => None,
            Some(signer) => {
                let pem = signer
                    .key_pem()
                    .ok_or_else(|| key_error("this form of DKIM key cannot be stored"))?;
                Some(seal_secret(
                    key,
                    pem.as_bytes(),
                    bound_aad_for(Purpose::DkimKey, profile, &settings),
                )?)
            }
        };
        #[cfg(not(feature = "dkim"))]
        let dkim_key = None;
        let (oauth2_refresh_token, oauth2_client_secret) = match &oauth2 {
            None => (None, None),
            Some(parts) => (
                // The refresh token in use now: the last one rotated to.
                Some(seal_secret(
                    key,
                    parts.refresh_token.expose_secret().as_bytes(),
                    bound_aad_for(Purpose::OAuth2RefreshToken, profile, &settings),
                )?),
                parts
                    .client_secret
                    .as_ref()
                    .map(|secret| {
                        seal_secret(
                            key,
                            secret.expose_secret().as_bytes(),
                            bound_aad_for(Purpose::OAuth2ClientSecret, profile, &settings),
                        )
                    })
                    .transpose()?,
            ),
        };
        Ok(SealedSettings {
            settings,
            password,
            proxy_password,
            client_key,
            dkim_key,
            oauth2_refresh_token,
            oauth2_client_secret,
        })
    }
}

/// `plain` sealed under `key` with associated data `aad` and a random
/// nonce, in the current (version 2) format.
fn seal_secret(key: &SecretKey, plain: &[u8], aad: Vec<u8>) -> Result<SealedSecret, Error> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| key_error("the system random generator failed"))?;
    let mut buf = sealing_buffer(plain);
    key.aead()
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut *buf)
        .map_err(|_| key_error("sealing a secret failed"))?;
    Ok(SealedSecret {
        algorithm: ALGORITHM.to_owned(),
        version: VERSION_WHOLE_RECORD,
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(&*buf),
        key_check: Some(key.key_check()),
    })
}

fn unseal_error() -> Error {
    key_error("the sealed password cannot be opened: wrong key, another profile's data, or altered data")
}

pub(crate) fn tampered() -> Error {
    Error::new(
        Kind::Tampered,
        None,
        "the stored settings were changed outside relaymail",
    )
    .with_hint("restore the settings from a backup, or enter the server settings and the password again")
}

impl SealedSettings {
    /// This record's canonical bytes for a store's authentication tag: the
    /// profile name and every setting (as the seal binds them), and the
    /// sealed password as stored, or its absence, and the sealed proxy
    /// password likewise. A record without a proxy password gives the bytes
    /// it always gave (0: no password, 1: a password), so stores written
    /// before proxies existed keep their tag; one with a proxy password is
    /// marked 2 (without) or 3 (with a relay password) and has it last.
    pub(crate) fn authenticated_bytes(&self, profile: &str, out: &mut Vec<u8>) {
        fn secret(out: &mut Vec<u8>, p: &SealedSecret) {
            push_field(out, p.algorithm.as_bytes());
            out.extend_from_slice(&p.version.to_be_bytes());
            push_field(out, p.nonce.as_bytes());
            push_field(out, p.ciphertext.as_bytes());
            match &p.key_check {
                None => out.push(0),
                Some(check) => {
                    out.push(1);
                    push_field(out, check.as_bytes());
                }
            }
        }
        push_field(out, &bound_aad(profile, &self.settings));
        out.push(match (&self.password, &self.proxy_password) {
            (None, None) => 0,
            (Some(_), None) => 1,
            (None, Some(_)) => 2,
            (Some(_), Some(_)) => 3,
        });
        for p in [&self.password, &self.proxy_password].into_iter().flatten() {
            secret(out, p);
        }
        // Added later: present only with a client key, so that the bytes of
        // stores written before stay the same. Its marker (2) cannot start
        // what follows a record otherwise: the next profile's name length
        // (8 bytes, big-endian, far below 2^57) or the end.
        if let Some(k) = &self.client_key {
            out.push(2);
            secret(out, k);
        }
        // Added later still, likewise: marker 3, after the client key.
        if let Some(k) = &self.dkim_key {
            out.push(3);
            secret(out, k);
        }
        // OAuth2 sign-in's secrets, added later still: each present only
        // when set, behind a marker of its own (nonzero like the one
        // above, so that none can start what follows a record).
        if let Some(t) = &self.oauth2_refresh_token {
            out.push(0x10);
            secret(out, t);
        }
        if let Some(c) = &self.oauth2_client_secret {
            out.push(0x11);
            secret(out, c);
        }
    }

    /// Whether a password was sealed under another key than `key` (its
    /// key check says so).
    pub(crate) fn sealed_with_other_key(&self, key: &SecretKey) -> bool {
        [
            &self.password,
            &self.proxy_password,
            &self.client_key,
            &self.dkim_key,
            &self.oauth2_refresh_token,
            &self.oauth2_client_secret,
        ]
        .into_iter()
        .flatten()
        .filter_map(|p| p.key_check.as_deref())
        .any(|check| !key.is_key_check(check))
    }

    /// Whether the password is sealed in the version-1 format of earlier
    /// releases (bound to the profile name only, not to the settings).
    pub fn is_legacy_seal(&self) -> bool {
        self.password
            .as_ref()
            .is_some_and(|p| p.version == VERSION_PROFILE_ONLY)
    }

    /// Opens the password (and the client key) with `key` for `profile` and
    /// validates the settings. A record changed since it was sealed (a
    /// setting, the profile name, the seal version or the sealed bytes) is
    /// an error for which [`Error::is_tampered`] holds, and no password is
    /// returned.
    pub fn unseal(&self, key: &SecretKey, profile: &str) -> Result<SmtpSettings, Error> {
        let secret = match &self.password {
            None => None,
            Some(sealed) => Some(self.open(sealed, key, profile, Purpose::Relay)?),
        };
        let proxy_secret = match &self.proxy_password {
            None => None,
            Some(sealed) => Some(self.open(sealed, key, profile, Purpose::Proxy)?),
        };
        let client_key = match &self.client_key {
            None => None,
            Some(sealed) => Some(self.open(sealed, key, profile, Purpose::ClientKey)?),
        };
        let dkim_key = match &self.dkim_key {
            None => None,
            Some(sealed) => Some(self.open(sealed, key, profile, Purpose::DkimKey)?),
        };
        let oauth2_refresh_token = match &self.oauth2_refresh_token {
            None => None,
            Some(sealed) => Some(self.open(sealed, key, profile, Purpose::OAuth2RefreshToken)?),
        };
        let oauth2_client_secret = match &self.oauth2_client_secret {
            None => None,
            Some(sealed) => Some(self.open(sealed, key, profile, Purpose::OAuth2ClientSecret)?),
        };
        let secrets = StoredSecrets {
            password: secret,
            proxy_password: proxy_secret,
            client_key_pem: client_key,
            oauth2_refresh_token,
            oauth2_client_secret,
            dkim_key_pem: dkim_key,
        };
        self.settings
            .clone()
            .into_settings_with(secrets)
            .map_err(Error::from)
    }

    fn open(
        &self,
        sealed: &SealedSecret,
        key: &SecretKey,
        profile: &str,
        purpose: Purpose,
    ) -> Result<SecretString, Error> {
        if sealed.algorithm != ALGORITHM {
            return Err(key_error(format!(
                "unknown sealing algorithm {:?}",
                sealed.algorithm
            )));
        }
        // The version decides the associated data; a version-2 record read
        // under the version-1 rule does not open (its tag covers the v2 data).
        // Proxy passwords were never sealed in version 1.
        let aad = match (sealed.version, &sealed.key_check) {
            (VERSION_PROFILE_ONLY, None) if purpose == Purpose::Relay => profile_only_aad(profile),
            (VERSION_WHOLE_RECORD, Some(check)) if !key.is_key_check(check) => return Err(unseal_error()),
            (VERSION_WHOLE_RECORD, Some(_)) => bound_aad_for(purpose, profile, &self.settings),
            // Only a record edited by hand has one without the other.
            (VERSION_PROFILE_ONLY | VERSION_WHOLE_RECORD, _) => return Err(tampered()),
            (other, _) => {
                return Err(key_error(format!(
                    "unknown seal version {other}: written by a newer relaymail?"
                )))
            }
        };
        open_secret(sealed, key, aad).ok_or_else(|| match sealed.version {
            VERSION_WHOLE_RECORD => tampered(),
            _ => unseal_error(),
        })
    }

    /// Re-seals with a new key (key rotation), in the current format.
    pub fn reseal(&self, old: &SecretKey, new: &SecretKey, profile: &str) -> Result<SealedSettings, Error> {
        self.unseal(old, profile)?.seal(new, profile)
    }
}

/// Opens one sealed secret with `aad`; `None` when it does not open (a
/// wrong key, changed data, or not text).
fn open_secret(sealed: &SealedSecret, key: &SecretKey, aad: Vec<u8>) -> Option<SecretString> {
    let nonce: [u8; NONCE_LEN] = B64.decode(&sealed.nonce).ok()?.try_into().ok()?;
    let mut buf = Zeroizing::new(B64.decode(&sealed.ciphertext).ok()?);
    let plain = key
        .aead()
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .ok()?;
    let text = std::str::from_utf8(plain).ok()?;
    Some(SecretString::from(text.to_owned()))
}

/// Sealed settings as earlier releases wrote them (seal version 1: the
/// associated data is the profile name only; the record has no `version` or
/// `key_check`), as JSON, to test that such records still open.
#[cfg(test)]
pub(crate) fn seal_version_1(settings: &SmtpSettings, key: &SecretKey, profile: &str) -> serde_json::Value {
    let password = match settings.auth() {
        Auth::Credential(Credential::Password { password, .. }) => password.expose_secret().to_owned(),
        other => panic!("a password is needed: {other:?}"),
    };
    let nonce = [9u8; NONCE_LEN];
    let mut buf = password.into_bytes();
    key.aead()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(format!("relaymail sealed password v1\0{profile}").into_bytes()),
            &mut buf,
        )
        .expect("sealed");
    serde_json::json!({
        "settings": settings.to_data(),
        "password": {
            "algorithm": "chacha20-poly1305",
            "nonce": B64.encode(nonce),
            "ciphertext": B64.encode(buf),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SmtpSettings {
        SmtpSettings::builder()
            .host("mail.example.com")
            .sender("noreply@example.com")
            .credentials("app", "Sealed-Pa55word")
            .build()
            .expect("settings")
    }

    #[test]
    fn seal_and_unseal() {
        let key = SecretKey::generate().expect("key");
        let sealed = settings().seal(&key, "primary").expect("sealed");
        let json = serde_json::to_string(&sealed).expect("json");
        assert!(!json.contains("Sealed-Pa55word"), "{json}");
        let back: SealedSettings = serde_json::from_str(&json).expect("parse");
        let s = back.unseal(&key, "primary").expect("unsealed");
        assert_eq!(format!("{s:?}"), format!("{:?}", settings()));
        match s.auth() {
            Auth::Credential(Credential::Password { password, .. }) => {
                assert_eq!(password.expose_secret(), "Sealed-Pa55word")
            }
            other => panic!("{other:?}"),
        }
        // Timeouts that are not round numbers of seconds, through TOML too.
        let odd = settings()
            .to_builder()
            .timeouts(super::super::Timeouts {
                connect: std::time::Duration::new(12, 345_678_901),
                final_reply: std::time::Duration::new(0, 1),
                ..super::super::Timeouts::default()
            })
            .build()
            .expect("settings");
        let sealed_odd = odd.seal(&key, "primary").expect("sealed");
        let toml_text = toml::to_string(&sealed_odd).expect("toml");
        let back: SealedSettings = toml::from_str(&toml_text).expect("parse");
        let s = back.unseal(&key, "primary").expect("unsealed from TOML");
        assert_eq!(s.timeouts(), odd.timeouts());
        let back: SealedSettings =
            serde_json::from_str(&serde_json::to_string(&sealed_odd).expect("json")).expect("parse");
        back.unseal(&key, "primary").expect("unsealed from JSON");
        // Two seals of the same password differ (random nonce).
        let again = settings().seal(&key, "primary").expect("sealed");
        assert_ne!(again.password, sealed.password);
    }

    #[test]
    fn wrong_key_profile_or_tampering_is_refused() {
        let key = SecretKey::generate().expect("key");
        let sealed = settings().seal(&key, "primary").expect("sealed");
        let other = SecretKey::generate().expect("key");
        assert!(sealed
            .unseal(&other, "primary")
            .expect_err("wrong key")
            .is_config());
        let e = sealed.unseal(&other, "primary").expect_err("wrong key");
        assert!(e.to_string().contains("cannot be opened"), "{e}");
        assert!(!e.is_tampered(), "a wrong key is not a changed record");
        let e = sealed
            .unseal(&key, "backup")
            .expect_err("bound to the profile name");
        assert!(e.is_tampered(), "{e}");
        let mut tampered = sealed.clone();
        let mut ct = B64
            .decode(&tampered.password.as_ref().expect("pw").ciphertext)
            .expect("b64");
        ct[0] ^= 1;
        tampered.password.as_mut().expect("pw").ciphertext = B64.encode(ct);
        let e = tampered.unseal(&key, "primary").expect_err("tampered");
        assert!(e.is_tampered(), "{e}");
        assert!(!format!("{e}{e:?}").contains("Sealed-Pa55word"));
    }

    #[test]
    fn changed_settings_do_not_open() {
        let key = SecretKey::generate().expect("key");
        let sealed = settings().seal(&key, "primary").expect("sealed");
        let mut moved = sealed.clone();
        moved.settings.host = "attacker.example.net".into();
        moved.settings.tls = "none".into();
        moved.settings.allow_plaintext_auth = true;
        let e = moved.unseal(&key, "primary").expect_err("changed host");
        assert!(e.is_tampered(), "{e}");
        assert_eq!(
            e.to_string().split("; hint").next(),
            Some("the stored settings were changed outside relaymail")
        );
        assert!(!format!("{e}{e:?}").contains("Sealed-Pa55word"));
    }

    #[test]
    fn a_backup_relay_or_source_address_added_to_the_record_does_not_open() {
        let key = SecretKey::generate().expect("key");
        let with_backup = settings()
            .to_builder()
            .credentials("app@example.com", "Sealed-Pa55word")
            .backup_relays(["smtp2.example.com"])
            .build()
            .expect("settings");
        let sealed = with_backup.seal(&key, "primary").expect("sealed");
        assert_eq!(
            sealed.unseal(&key, "primary").expect("opens").backup_relays(),
            with_backup.backup_relays()
        );
        let mut moved = sealed.clone();
        moved.settings.backup_relays = vec!["attacker.example.net:587".into()];
        assert!(moved.unseal(&key, "primary").expect_err("changed").is_tampered());
        let mut added = settings().seal(&key, "primary").expect("sealed");
        added.settings.backup_relays = vec!["attacker.example.net:587".into()];
        assert!(added.unseal(&key, "primary").expect_err("added").is_tampered());
        let mut bound = settings().seal(&key, "primary").expect("sealed");
        bound.settings.source_address = Some("127.0.0.9".into());
        assert!(bound.unseal(&key, "primary").expect_err("added").is_tampered());
    }

    #[test]
    fn the_version_tag_decides_and_a_downgrade_does_not_open() {
        let key = SecretKey::generate().expect("key");
        let sealed = settings().seal(&key, "primary").expect("sealed");
        let secret = sealed.password.as_ref().expect("pw");
        assert_eq!(secret.version, VERSION_WHOLE_RECORD);
        assert!(secret.key_check.is_some());
        // Read under the version-1 rule (profile name only): the tag covers
        // the version-2 data, so it does not open — also with the host changed.
        let mut downgraded = sealed.clone();
        let pw = downgraded.password.as_mut().expect("pw");
        pw.version = VERSION_PROFILE_ONLY;
        pw.key_check = None;
        assert!(downgraded.unseal(&key, "primary").is_err());
        downgraded.settings.host = "attacker.example.net".into();
        let e = downgraded.unseal(&key, "primary").expect_err("downgrade");
        assert!(!format!("{e}{e:?}").contains("Sealed-Pa55word"));
        // Half a downgrade is a changed record too.
        let mut half = sealed.clone();
        half.password.as_mut().expect("pw").version = VERSION_PROFILE_ONLY;
        assert!(half.unseal(&key, "primary").expect_err("half").is_tampered());
        let mut future = sealed.clone();
        future.password.as_mut().expect("pw").version = 3;
        let e = future.unseal(&key, "primary").expect_err("unknown version");
        assert!(e.to_string().contains("unknown seal version 3"), "{e}");
    }

    #[test]
    fn version_1_records_still_open_and_are_resealed_as_version_2() {
        let key = SecretKey::generate().expect("key");
        let json = seal_version_1(&settings(), &key, "primary").to_string();
        let back: SealedSettings = serde_json::from_str(&json).expect("parse");
        assert_eq!(
            back.password.as_ref().map(|p| p.version),
            Some(VERSION_PROFILE_ONLY)
        );
        let opened = back.unseal(&key, "primary").expect("a version-1 record opens");
        assert_eq!(format!("{opened:?}"), format!("{:?}", settings()));
        let again = opened.seal(&key, "primary").expect("sealed");
        assert_eq!(
            again.password.as_ref().map(|p| p.version),
            Some(VERSION_WHOLE_RECORD)
        );
        // A version-1 record is bound to its profile name.
        assert!(back.unseal(&key, "backup").is_err());
    }

    /// A record sealed by relaymail before proxies existed (written by that
    /// code, with this key): it opens, and its associated data is what it
    /// was.
    const SEALED_BEFORE_PROXIES: &str = r#"{"settings": {"host": "mail.example.com", "port": 587, "tls": "starttls", "sender": "noreply@example.com", "username": "app", "allow_plaintext_auth": false, "timeouts": {"connect": 10.0, "greeting": 30.0, "tls_handshake": 30.0, "command": 30.0, "data": 60.0, "final_reply": 120.0}, "webpki_roots": true, "dangerous_accept_invalid_certs": false, "dangerous_accept_invalid_hostnames": false, "pipelining": true, "chunking": true, "require_all_recipients": false}, "password": {"algorithm": "chacha20-poly1305", "version": 2, "nonce": "WKn2wj6K5Uz1m2sp", "ciphertext": "H51hSdTdDB+pCkwyDd6eDiRGWgtyLZSBN1plig==", "key_check": "ypekqMMoTLFGCsSkkLR8qvziU54M+6RZA1ukD2bhciA="}}"#;
    const KEY_BEFORE_PROXIES: &str = "cmVsYXltYWlsIHByb3h5IGNvbXBhdCBmaXh0dXJlIGs=";

    #[test]
    fn a_record_sealed_before_proxies_existed_still_opens() {
        let key = SecretKey::from_base64(KEY_BEFORE_PROXIES).expect("key");
        let sealed: SealedSettings = serde_json::from_str(SEALED_BEFORE_PROXIES).expect("parse");
        assert!(sealed.proxy_password.is_none() && sealed.settings.proxy.is_none());
        let s = sealed.unseal(&key, "primary").expect("opens");
        match s.auth() {
            Auth::Credential(Credential::Password { password, .. }) => {
                assert_eq!(password.expose_secret(), "Pre-Proxy-Pw")
            }
            other => panic!("{other:?}"),
        }
        assert!(s.proxy().is_none());
        // Sealed again, the record has the same shape: no proxy fields.
        let again = serde_json::to_value(s.seal(&key, "primary").expect("sealed")).expect("json");
        assert!(again.get("proxy_password").is_none(), "{again}");
        assert!(again["settings"].get("proxy").is_none(), "{again}");
        // A proxy added to the stored record is a change.
        let mut moved: serde_json::Value = serde_json::from_str(SEALED_BEFORE_PROXIES).expect("json");
        moved["settings"]["proxy"] = serde_json::json!({"kind": "socks5", "host": "127.0.0.1", "port": 1080});
        let moved: SealedSettings = serde_json::from_value(moved).expect("parse");
        assert!(moved.unseal(&key, "primary").expect_err("changed").is_tampered());
    }

    #[cfg(feature = "proxy")]
    fn with_proxy() -> SmtpSettings {
        settings()
            .to_builder()
            .credentials("app", "Sealed-Pa55word")
            .proxy(super::super::Proxy::socks5("proxy.example", 1080).with_credentials("px", "Pr0xy-Pa55"))
            .build()
            .expect("settings")
    }

    #[cfg(feature = "proxy")]
    #[test]
    fn the_proxy_password_is_sealed_bound_and_not_swappable() {
        let key = SecretKey::generate().expect("key");
        let sealed = with_proxy().seal(&key, "primary").expect("sealed");
        let json = serde_json::to_string(&sealed).expect("json");
        assert!(
            !json.contains("Pr0xy-Pa55") && !json.contains("Sealed-Pa55word"),
            "{json}"
        );
        assert_eq!(
            sealed.settings.proxy.as_ref().and_then(|p| p.username.as_deref()),
            Some("px")
        );
        let back: SealedSettings = serde_json::from_str(&json).expect("parse");
        let s = back.unseal(&key, "primary").expect("opens");
        assert_eq!(format!("{s:?}"), format!("{:?}", with_proxy()));
        let p = s.proxy().expect("proxy");
        assert_eq!(p.password().map(|s| s.expose_secret()), Some("Pr0xy-Pa55"));
        // Swapped, neither opens as the other.
        let mut swapped = sealed.clone();
        std::mem::swap(&mut swapped.password, &mut swapped.proxy_password);
        assert!(swapped
            .unseal(&key, "primary")
            .expect_err("swapped")
            .is_tampered());
        // The proxy's fields are bound to both passwords.
        type Edit = fn(&mut SettingsData);
        let edits: [(&str, Edit); 5] = [
            ("host", |d| {
                d.proxy.as_mut().expect("p").host = "attacker.example.net".into()
            }),
            ("port", |d| d.proxy.as_mut().expect("p").port = 9050),
            ("kind", |d| d.proxy.as_mut().expect("p").kind = "http".into()),
            ("username", |d| {
                d.proxy.as_mut().expect("p").username = Some("root".into())
            }),
            ("removed", |d| d.proxy = None),
        ];
        for (what, edit) in edits {
            let mut changed = sealed.clone();
            edit(&mut changed.settings);
            let e = changed.unseal(&key, "primary").expect_err(what);
            assert!(e.is_tampered(), "{what}: {e}");
            assert!(!format!("{e}{e:?}").contains("Pr0xy-Pa55"), "{what}");
            // Also with the relay's password gone (only the proxy's is left).
            changed.password = None;
            changed.settings.username = None;
            let e = changed.unseal(&key, "primary").expect_err(what);
            assert!(e.is_tampered(), "{what} (proxy password alone): {e}");
        }
        // A proxy password in the version-1 format never existed.
        let mut old = sealed.clone();
        if let Some(p) = old.proxy_password.as_mut() {
            p.version = VERSION_PROFILE_ONLY;
            p.key_check = None;
        }
        assert!(old.unseal(&key, "primary").expect_err("v1 proxy").is_tampered());
        // Under another key: the key check tells.
        let other = SecretKey::generate().expect("key");
        let proxy_only = with_proxy().to_builder().no_auth().build().expect("settings");
        let sealed = proxy_only.seal(&key, "primary").expect("sealed");
        assert!(sealed.password.is_none() && sealed.proxy_password.is_some());
        assert!(sealed.sealed_with_other_key(&other));
        assert!(!sealed.sealed_with_other_key(&key));
        sealed
            .unseal(&key, "primary")
            .expect("the proxy password alone opens");
    }

    #[test]
    fn same_settings_same_associated_data_whatever_the_text() {
        let data = settings().to_data();
        let json = serde_json::to_value(&data).expect("json");
        // Fields in reverse order, pretty-printed, through TOML too.
        let reversed: serde_json::Map<String, serde_json::Value> = json
            .as_object()
            .expect("object")
            .iter()
            .rev()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let text = serde_json::to_string_pretty(&reversed).expect("text");
        let reread: SettingsData = serde_json::from_str(&text).expect("parse");
        assert_eq!(bound_aad("p", &reread), bound_aad("p", &data));
        let toml_text = toml::to_string(&data).expect("toml");
        let reread: SettingsData = toml::from_str(&toml_text).expect("parse");
        assert_eq!(bound_aad("p", &reread), bound_aad("p", &data));
        let mut other = data.clone();
        other.sender_name = Some(String::new());
        assert_ne!(
            bound_aad("p", &other),
            bound_aad("p", &data),
            "absent is not empty"
        );
    }

    #[test]
    fn sealing_never_reallocates_the_plaintext_buffer() {
        for plain in ["", "x", "Sealed-Pa55word", &"long password ".repeat(40)] {
            let mut buf = sealing_buffer(plain.as_bytes());
            let (ptr, capacity) = (buf.as_ptr(), buf.capacity());
            assert!(capacity >= plain.len() + CHACHA20_POLY1305.tag_len());
            let key = SecretKey::generate().expect("key");
            key.aead()
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key([7; NONCE_LEN]),
                    Aad::from(b"aad"),
                    &mut *buf,
                )
                .expect("sealed");
            assert_eq!(buf.len(), plain.len() + CHACHA20_POLY1305.tag_len());
            assert_eq!(
                (buf.as_ptr(), buf.capacity()),
                (ptr, capacity),
                "no copy left behind"
            );
        }
    }

    /// Test keys made with openssl for these tests only (testdata/README.md).
    const CERT: &str = include_str!("testdata/ec.crt");
    const KEY: &str = include_str!("testdata/ec-sec1.key");

    fn key_line() -> &'static str {
        KEY.lines().nth(1).expect("a key line")
    }

    fn with_client_key() -> SmtpSettings {
        settings()
            .to_builder()
            .client_certificate_pem(CERT, KEY)
            .build()
            .expect("settings")
    }

    fn client_key_pem(s: &SmtpSettings) -> String {
        let identity = s.tls_options().client_identity().expect("identity");
        identity.key_pem().expect("pem").as_str().to_owned()
    }

    #[test]
    fn a_client_key_is_sealed_like_the_password() {
        let key = SecretKey::generate().expect("key");
        let s = with_client_key();
        let sealed = s.seal(&key, "primary").expect("sealed");
        let json = serde_json::to_string(&sealed).expect("json");
        assert!(!json.contains(key_line()), "{json}");
        assert!(sealed.client_key.is_some() && sealed.password.is_some());
        let back: SealedSettings = serde_json::from_str(&json).expect("parse");
        let opened = back.unseal(&key, "primary").expect("unsealed");
        assert_eq!(format!("{opened:?}"), format!("{s:?}"));
        assert_eq!(client_key_pem(&opened), KEY);
        // Key rotation carries it.
        let new = SecretKey::generate().expect("key");
        let rotated = sealed.reseal(&key, &new, "primary").expect("rotated");
        assert_eq!(
            client_key_pem(&rotated.unseal(&new, "primary").expect("new key")),
            KEY
        );
        // A client key alone, without a password.
        let alone = s.to_builder().no_auth().build().expect("settings");
        let sealed = alone.seal(&key, "primary").expect("sealed");
        assert!(sealed.password.is_none());
        assert_eq!(
            client_key_pem(&sealed.unseal(&key, "primary").expect("opens")),
            KEY
        );
    }

    #[test]
    fn a_sealed_client_key_is_bound_to_the_record_and_is_no_password() {
        let key = SecretKey::generate().expect("key");
        let sealed = with_client_key().seal(&key, "primary").expect("sealed");
        let mut cases: Vec<(&str, SealedSettings)> = Vec::new();
        let mut moved = sealed.clone();
        moved.settings.host = "attacker.example.net".into();
        cases.push(("host", moved));
        let mut other_chain = sealed.clone();
        other_chain.settings.client_certificate_pem = Some(include_str!("testdata/rsa.crt").into());
        cases.push(("client_certificate_pem", other_chain));
        let mut system = sealed.clone();
        system.settings.system_roots = true;
        cases.push(("system_roots", system));
        // The sealed password and the sealed key trade places: opened as a
        // password, the key would be sent to the server.
        let mut swapped = sealed.clone();
        std::mem::swap(&mut swapped.password, &mut swapped.client_key);
        cases.push(("swapped", swapped));
        let mut key_as_password = sealed.clone();
        key_as_password.password = sealed.client_key.clone();
        cases.push(("the key as the password", key_as_password));
        let mut version_1 = sealed.clone();
        if let Some(k) = version_1.client_key.as_mut() {
            k.version = VERSION_PROFILE_ONLY;
            k.key_check = None;
        }
        cases.push(("a version-1 client key", version_1));
        for (what, record) in cases {
            let e = record.unseal(&key, "primary").expect_err(what);
            assert!(e.is_tampered(), "{what}: {e}");
            let shown = format!("{e}{e:?}");
            assert!(
                !shown.contains(key_line()) && !shown.contains("Sealed-Pa55word"),
                "{what}: {shown}"
            );
        }
        // The key removed from the record: the certificate needs it.
        let mut no_key = sealed.clone();
        no_key.client_key = None;
        let e = no_key.unseal(&key, "primary").expect_err("no key");
        assert!(e.to_string().contains("client_key"), "{e}");
        // Another key: not a changed record.
        let other = SecretKey::generate().expect("key");
        assert!(!sealed
            .unseal(&other, "primary")
            .expect_err("wrong key")
            .is_tampered());
    }

    #[test]
    fn records_sealed_before_the_new_fields_still_open() {
        // A profile store saved before client certificates and system
        // roots existed (tests/profiles/fixtures), under this test key.
        let store: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/profiles/fixtures/store-0.1-password.json"
        ))
        .expect("fixture");
        let record: SealedSettings =
            serde_json::from_value(store["profiles"][0]["settings"].clone()).expect("record");
        let key = SecretKey::from_base64("cmVsYXltYWlsIGNvbXBhdGliaWxpdHkgZml4dHVyZSE=").expect("key");
        let s = record.unseal(&key, "primary").expect("opens");
        assert_eq!(s.host(), "mail.example.com");
        assert!(!s.tls_options().uses_system_roots() && s.tls_options().client_identity().is_none());
        // Its associated data is the same as before: the new fields, at
        // their defaults, add nothing.
        assert_eq!(s.seal(&key, "primary").expect("sealed").settings, record.settings);
        let mut with_defaults = record.settings.clone();
        with_defaults.system_roots = false;
        with_defaults.client_certificate_pem = None;
        assert_eq!(
            bound_aad("primary", &with_defaults),
            bound_aad("primary", &record.settings)
        );
        let mut on = record.settings.clone();
        on.system_roots = true;
        assert_ne!(bound_aad("primary", &on), bound_aad("primary", &record.settings));
    }

    #[test]
    fn keys_from_text_and_rotation() {
        let key = SecretKey::generate().expect("key");
        let text = key.to_base64();
        let same = SecretKey::from_base64(text.expose_secret()).expect("parse");
        let sealed = settings().seal(&key, "p").expect("sealed");
        sealed.unseal(&same, "p").expect("same key");
        assert!(SecretKey::from_base64("c2hvcnQ=").is_err(), "too short");
        assert!(SecretKey::from_base64("not base64!").is_err());
        assert_eq!(format!("{key:?}"), "SecretKey([redacted])");
        let new = SecretKey::generate().expect("key");
        let rotated = sealed.reseal(&key, &new, "p").expect("rotated");
        rotated.unseal(&new, "p").expect("new key opens it");
        assert!(rotated.unseal(&key, "p").is_err(), "old key does not");
    }

    #[cfg(feature = "dkim")]
    mod dkim {
        use super::*;
        use crate::dkim::DkimConfig;

        /// A test key (tests/dkim/keys/README.md).
        const DKIM_KEY: &str = include_str!("../../tests/dkim/keys/rsa2048.pem");

        fn key_line() -> &'static str {
            DKIM_KEY.lines().nth(1).expect("a key line")
        }

        fn signing() -> SmtpSettings {
            settings()
                .to_builder()
                .dkim(DkimConfig::new("example.com", "mail2024", DKIM_KEY))
                .build()
                .expect("settings")
        }

        #[test]
        fn a_dkim_key_is_sealed_like_the_password() {
            let key = SecretKey::generate().expect("key");
            let s = signing();
            let sealed = s.seal(&key, "primary").expect("sealed");
            assert!(sealed.dkim_key.is_some() && sealed.password.is_some());
            let json = serde_json::to_string(&sealed).expect("json");
            assert!(
                !json.contains(key_line()) && !json.contains("PRIVATE KEY"),
                "{json}"
            );
            let back: SealedSettings = serde_json::from_str(&json).expect("parse");
            let opened = back.unseal(&key, "primary").expect("opens");
            assert_eq!(format!("{opened:?}"), format!("{s:?}"));
            let signer = opened.dkim().expect("dkim");
            assert_eq!(signer.dns_record(), s.dkim().expect("dkim").dns_record());
            // Key rotation carries it; alone, without a password, it opens.
            let new = SecretKey::generate().expect("key");
            let rotated = sealed.reseal(&key, &new, "primary").expect("rotated");
            assert!(rotated.unseal(&new, "primary").expect("opens").dkim().is_some());
            let alone = s.to_builder().no_auth().build().expect("settings");
            let sealed = alone.seal(&key, "primary").expect("sealed");
            assert!(sealed.password.is_none());
            assert!(sealed.unseal(&key, "primary").expect("opens").dkim().is_some());
            // The wrong key is not a changed record.
            let other = SecretKey::generate().expect("key");
            assert!(sealed.sealed_with_other_key(&other));
            assert!(!sealed
                .unseal(&other, "primary")
                .expect_err("wrong key")
                .is_tampered());
        }

        #[test]
        fn a_sealed_dkim_key_is_bound_to_the_record_and_is_no_other_secret() {
            let key = SecretKey::generate().expect("key");
            let sealed = signing().seal(&key, "primary").expect("sealed");
            type Edit = fn(&mut SealedSettings);
            let edits: [(&str, Edit); 10] = [
                ("domain", |r| {
                    r.settings.dkim.as_mut().expect("d").domain = "attacker.example".into()
                }),
                ("selector", |r| {
                    r.settings.dkim.as_mut().expect("d").selector = "s2".into()
                }),
                ("algorithm", |r| {
                    r.settings.dkim.as_mut().expect("d").algorithm = "ed25519-sha256".into()
                }),
                ("canonicalization", |r| {
                    r.settings.dkim.as_mut().expect("d").canonicalization = "simple/simple".into()
                }),
                ("headers", |r| {
                    r.settings.dkim.as_mut().expect("d").headers = Some(vec!["from".into()])
                }),
                ("dkim settings removed", |r| r.settings.dkim = None),
                ("host", |r| r.settings.host = "attacker.example.net".into()),
                ("swapped with the password", |r| {
                    std::mem::swap(&mut r.password, &mut r.dkim_key)
                }),
                ("the key as the password", |r| r.password = r.dkim_key.clone()),
                ("the key as a client key", |r| r.client_key = r.dkim_key.clone()),
            ];
            for (what, edit) in edits {
                let mut record = sealed.clone();
                edit(&mut record);
                let e = record.unseal(&key, "primary").expect_err(what);
                assert!(e.is_tampered(), "{what}: {e}");
                let shown = format!("{e}{e:?}");
                assert!(
                    !shown.contains(key_line()) && !shown.contains("Sealed-Pa55word"),
                    "{what}"
                );
            }
            // A version-1 DKIM key never existed.
            let mut old = sealed.clone();
            if let Some(k) = old.dkim_key.as_mut() {
                k.version = VERSION_PROFILE_ONLY;
                k.key_check = None;
            }
            assert!(old.unseal(&key, "primary").expect_err("v1").is_tampered());
            // The key removed from the record: the settings need it.
            let mut no_key = sealed.clone();
            no_key.dkim_key = None;
            let e = no_key.unseal(&key, "primary").expect_err("no key");
            assert!(e.to_string().contains("dkim_key"), "{e}");
        }

        #[test]
        fn records_without_dkim_keep_their_bytes_and_records_with_it_authenticate_it() {
            let key = SecretKey::generate().expect("key");
            let plain = settings().seal(&key, "primary").expect("sealed");
            // Absent DKIM settings add nothing to the associated data.
            let mut data = plain.settings.clone();
            data.dkim = None;
            assert_eq!(bound_aad("primary", &data), bound_aad("primary", &plain.settings));
            let json = serde_json::to_value(&plain).expect("json");
            assert!(
                json.get("dkim_key").is_none() && json["settings"].get("dkim").is_none(),
                "{json}"
            );
            // With a DKIM key, the store's bytes cover it (marker 3).
            let sealed = signing().seal(&key, "primary").expect("sealed");
            let mut bytes = Vec::new();
            sealed.authenticated_bytes("primary", &mut bytes);
            let mut changed = sealed.clone();
            if let Some(k) = changed.dkim_key.as_mut() {
                k.nonce = B64.encode([1u8; NONCE_LEN]);
            }
            let mut other = Vec::new();
            changed.authenticated_bytes("primary", &mut other);
            assert_ne!(bytes, other);
            let mut without = Vec::new();
            SealedSettings {
                dkim_key: None,
                ..sealed.clone()
            }
            .authenticated_bytes("primary", &mut without);
            assert!(bytes.starts_with(&without) && bytes[without.len()] == 3);
        }
    }
}
