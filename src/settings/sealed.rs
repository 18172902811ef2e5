//! Sealed settings (feature `serde`): the password encrypted with
//! ChaCha20-Poly1305 (ring) under a 32-byte [`SecretKey`], with a random
//! nonce, bound to the profile name as associated data — a sealed password
//! cannot be moved to another profile, and a wrong key or a changed byte is
//! an error, never garbage.

use std::path::Path;

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::data::SettingsData;
use super::{Auth, SmtpSettings};
use crate::error::{Error, Kind};
use crate::proto::auth::Credential;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const ALGORITHM: &str = "chacha20-poly1305";

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
}

/// An encrypted password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedSecret {
    /// Always `chacha20-poly1305`.
    pub algorithm: String,
    /// The 12-byte nonce, base64.
    pub nonce: String,
    /// Ciphertext and tag, base64.
    pub ciphertext: String,
}

/// Settings whose password is sealed: safe to store as JSON or TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedSettings {
    /// Everything but the password.
    pub settings: SettingsData,
    /// The password (or OAuth2 token), sealed; absent without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SealedSecret>,
}

fn aad(profile: &str) -> Vec<u8> {
    format!("relaymail sealed password v1\0{profile}").into_bytes()
}

impl SmtpSettings {
    /// Seals the settings for storage under `profile` (the associated data:
    /// unsealing under another name fails). Settings whose credentials come
    /// from a [`CredentialProvider`](super::CredentialProvider) cannot be
    /// sealed.
    pub fn seal(&self, key: &SecretKey, profile: &str) -> Result<SealedSettings, Error> {
        let secret = match &self.auth {
            Auth::None => None,
            Auth::Credential(Credential::Password { password, .. }) => Some(password.expose_secret().to_owned()),
            Auth::Credential(Credential::OAuth2 { token, .. }) => Some(token.expose_secret().to_owned()),
            Auth::Provider(_) => {
                return Err(key_error(
                    "settings with a credential provider cannot be stored: store the provider's own configuration",
                ))
            }
        };
        let password = match secret.map(Zeroizing::new) {
            None => None,
            Some(plain) => {
                let mut nonce = [0u8; NONCE_LEN];
                SystemRandom::new()
                    .fill(&mut nonce)
                    .map_err(|_| key_error("the system random generator failed"))?;
                let mut buf = Zeroizing::new(plain.as_bytes().to_vec());
                key.aead()
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad(profile)),
                        &mut *buf,
                    )
                    .map_err(|_| key_error("sealing the password failed"))?;
                Some(SealedSecret {
                    algorithm: ALGORITHM.to_owned(),
                    nonce: B64.encode(nonce),
                    ciphertext: B64.encode(&*buf),
                })
            }
        };
        Ok(SealedSettings {
            settings: self.to_data(),
            password,
        })
    }
}

fn unseal_error() -> Error {
    key_error("the sealed password cannot be opened: wrong key, another profile's data, or altered data")
}

impl SealedSettings {
    /// Opens the password with `key` for `profile` and validates the
    /// settings.
    pub fn unseal(&self, key: &SecretKey, profile: &str) -> Result<SmtpSettings, Error> {
        let secret = match &self.password {
            None => None,
            Some(sealed) => {
                if sealed.algorithm != ALGORITHM {
                    return Err(key_error(format!(
                        "unknown sealing algorithm {:?}",
                        sealed.algorithm
                    )));
                }
                let nonce: [u8; NONCE_LEN] = B64
                    .decode(&sealed.nonce)
                    .ok()
                    .and_then(|n| n.try_into().ok())
                    .ok_or_else(unseal_error)?;
                let mut buf = Zeroizing::new(B64.decode(&sealed.ciphertext).map_err(|_| unseal_error())?);
                let plain = key
                    .aead()
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad(profile)),
                        &mut buf,
                    )
                    .map_err(|_| unseal_error())?;
                let text = std::str::from_utf8(plain).map_err(|_| unseal_error())?;
                Some(SecretString::from(text.to_owned()))
            }
        };
        self.settings.clone().into_settings(secret).map_err(Error::from)
    }

    /// Re-seals with a new key (key rotation).
    pub fn reseal(&self, old: &SecretKey, new: &SecretKey, profile: &str) -> Result<SealedSettings, Error> {
        self.unseal(old, profile)?.seal(new, profile)
    }
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
        assert!(
            sealed.unseal(&key, "backup").is_err(),
            "bound to the profile name"
        );
        let mut tampered = sealed.clone();
        let mut ct = B64
            .decode(&tampered.password.as_ref().expect("pw").ciphertext)
            .expect("b64");
        ct[0] ^= 1;
        tampered.password.as_mut().expect("pw").ciphertext = B64.encode(ct);
        let e = tampered.unseal(&key, "primary").expect_err("tampered");
        assert!(e.to_string().contains("cannot be opened"), "{e}");
        assert!(!e.to_string().contains("Sealed-Pa55word"));
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
}
