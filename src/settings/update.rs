//! Changing stored settings from a settings form (seed 000): every field is
//! optional ("unchanged"), and the password is never echoed back to the form,
//! so it is kept, set anew or cleared explicitly.

use std::time::Duration;

use secrecy::SecretString;

use super::{Auth, FieldError, SettingsErrors, SmtpSettings, TlsMode};
use crate::proto::auth::Credential;

/// What happens to the stored password.
#[derive(Clone, Debug, Default)]
pub enum PasswordChange {
    /// Keep it (the form's password field was left empty). The default.
    #[default]
    Keep,
    /// Replace it with a newly typed one.
    Set(SecretString),
    /// Remove the credentials (no AUTH).
    Clear,
}

/// A partial change to [`SmtpSettings`]: `None` leaves a field as it is;
/// `Some(None)` on an optional field removes it.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SettingsUpdate {
    /// Server host.
    pub host: Option<String>,
    /// Server port.
    pub port: Option<u32>,
    /// TLS mode.
    pub tls: Option<TlsMode>,
    /// Sender address.
    pub sender: Option<String>,
    /// Sender display name.
    pub sender_name: Option<Option<String>>,
    /// User name for AUTH (kept with the password unless changed).
    pub username: Option<String>,
    /// The password.
    pub password: PasswordChange,
    /// HELO name (`Some(None)`: back to the default).
    pub helo_name: Option<Option<String>>,
    /// One timeout for every phase.
    pub timeout: Option<Duration>,
    /// Allow AUTH without TLS.
    pub allow_plaintext_auth: Option<bool>,
}

impl SettingsUpdate {
    /// An update that changes nothing.
    pub fn new() -> SettingsUpdate {
        SettingsUpdate::default()
    }
}

impl SmtpSettings {
    /// The settings with `update` applied, validated as a whole: either every
    /// field is valid and the new settings are returned, or every problem is
    /// reported and nothing changes (`self` is untouched either way).
    ///
    /// Password rules: [`PasswordChange::Keep`] keeps the stored password
    /// (also under a new user name); [`PasswordChange::Set`] needs a user
    /// name (given or stored); [`PasswordChange::Clear`] removes the
    /// credentials.
    pub fn apply(&self, update: SettingsUpdate) -> Result<SmtpSettings, SettingsErrors> {
        let mut b = self.to_builder();
        let mut errors = Vec::new();
        if let Some(host) = update.host {
            b = b.host(host);
        }
        if let Some(port) = update.port {
            b = b.port(port);
        } else if let Some(tls) = update.tls {
            // A new TLS mode with the old default port moves to the new default.
            if self.port == self.tls.default_port() {
                b = b.port(u32::from(tls.default_port()));
            }
        }
        if let Some(tls) = update.tls {
            b = b.tls(tls);
        }
        if let Some(sender) = update.sender {
            b = b.sender(sender);
        }
        match update.sender_name {
            Some(Some(name)) => b = b.sender_name(name),
            Some(None) => b.sender_name = None,
            None => {}
        }
        let stored = match &self.auth {
            Auth::Credential(Credential::Password { username, password }) => {
                Some((username.clone(), password.clone()))
            }
            _ => None,
        };
        match (update.password, update.username) {
            (PasswordChange::Clear, Some(user)) if !user.trim().is_empty() => errors.push(FieldError::new(
                "password",
                "a user name needs a password: set one, or clear the user name too",
            )),
            (PasswordChange::Clear, _) => b = b.no_auth(),
            (PasswordChange::Set(password), user) => {
                match user.or_else(|| stored.as_ref().map(|s| s.0.clone())) {
                    Some(user) => {
                        b = b.credential(Credential::Password {
                            username: user,
                            password,
                        })
                    }
                    None => errors.push(FieldError::new("username", "a password needs a user name")),
                }
            }
            (PasswordChange::Keep, Some(user)) => match (&stored, user.trim().is_empty()) {
                (_, true) => b = b.no_auth(),
                (Some((_, password)), false) => {
                    b = b.credential(Credential::Password {
                        username: user,
                        password: password.clone(),
                    })
                }
                (None, false) => errors.push(FieldError::new(
                    "password",
                    "no password is stored: type one for this user name",
                )),
            },
            (PasswordChange::Keep, None) => {}
        }
        if let Some(helo) = update.helo_name {
            b.helo_name = helo;
        }
        if let Some(t) = update.timeout {
            b = b.timeout(t);
        }
        if let Some(on) = update.allow_plaintext_auth {
            b = b.allow_plaintext_auth(on);
        }
        b.build_reporting(errors)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn stored() -> SmtpSettings {
        SmtpSettings::builder()
            .host("mail.example.com")
            .sender("noreply@example.com")
            .credentials("app", "old-secret")
            .build()
            .expect("settings")
    }

    fn password(s: &SmtpSettings) -> Option<(String, String)> {
        match s.auth() {
            Auth::Credential(Credential::Password { username, password }) => {
                Some((username.clone(), password.expose_secret().to_owned()))
            }
            _ => None,
        }
    }

    #[test]
    fn keep_set_clear() {
        let s = stored();
        let kept = s
            .apply(SettingsUpdate {
                host: Some("smtp.example.org".into()),
                ..SettingsUpdate::new()
            })
            .expect("valid");
        assert_eq!(kept.host(), "smtp.example.org");
        assert_eq!(password(&kept), Some(("app".into(), "old-secret".into())));

        let renamed = s
            .apply(SettingsUpdate {
                username: Some("app2".into()),
                ..SettingsUpdate::new()
            })
            .expect("valid");
        assert_eq!(password(&renamed), Some(("app2".into(), "old-secret".into())));

        let set = s
            .apply(SettingsUpdate {
                password: PasswordChange::Set("new-secret".into()),
                ..SettingsUpdate::new()
            })
            .expect("valid");
        assert_eq!(password(&set), Some(("app".into(), "new-secret".into())));

        let cleared = s
            .apply(SettingsUpdate {
                password: PasswordChange::Clear,
                ..SettingsUpdate::new()
            })
            .expect("valid");
        assert!(matches!(cleared.auth(), Auth::None));
        assert_eq!(
            password(&s),
            Some(("app".into(), "old-secret".into())),
            "the original is untouched"
        );
    }

    #[test]
    fn validated_as_a_whole_nothing_half_applied() {
        let s = stored();
        let e = s
            .apply(SettingsUpdate {
                host: Some(String::new()),
                port: Some(0),
                sender: Some("not an address".into()),
                username: Some("x".into()),
                password: PasswordChange::Clear,
                ..SettingsUpdate::new()
            })
            .expect_err("invalid");
        for field in ["host", "port", "sender", "password"] {
            assert!(e.field(field).is_some(), "{field}: {e}");
        }
        assert_eq!(s.host(), "mail.example.com");
        let no_user = SmtpSettings::builder()
            .host("mail.example.com")
            .sender("a@example.com")
            .build()
            .expect("settings");
        let e = no_user
            .apply(SettingsUpdate {
                password: PasswordChange::Set("p".into()),
                ..SettingsUpdate::new()
            })
            .expect_err("needs a user");
        assert!(e.field("username").is_some());
    }

    #[test]
    fn tls_change_moves_a_default_port() {
        let s = stored();
        assert_eq!(s.port(), 587);
        let implicit = s
            .apply(SettingsUpdate {
                tls: Some(TlsMode::Implicit),
                ..SettingsUpdate::new()
            })
            .expect("valid");
        assert_eq!(implicit.port(), 465);
        let custom = s
            .apply(SettingsUpdate {
                port: Some(2525),
                ..SettingsUpdate::new()
            })
            .expect("valid")
            .apply(SettingsUpdate {
                tls: Some(TlsMode::Implicit),
                ..SettingsUpdate::new()
            })
            .expect("valid");
        assert_eq!(custom.port(), 2525, "a custom port stays");
    }
}
