//! Changing stored settings from a settings form (seed 000): every field is
//! optional ("unchanged"), and the password is never echoed back to the form,
//! so it is kept, set anew or cleared explicitly.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{
    AttachmentLimit, Auth, FieldError, OAuth2Parts, Proxy, ProxyKind, Redirect, SettingsErrors, SmtpSettings,
    TlsMode,
};
use crate::proto::address::AddressPolicy;
use crate::proto::auth::Credential;

/// What happens to the stored password.
#[derive(Clone, Debug, Default)]
#[allow(
    clippy::exhaustive_enums,
    reason = "keep, set and clear are every change a stored secret can have"
)]
pub enum PasswordChange {
    /// Keep it (the form's password field was left empty). The default.
    /// Only while the server stays the same: when the host, port, TLS mode,
    /// plain-text AUTH, a `dangerous_*` flag, the trusted roots (system
    /// roots included), the user name, the backup relays or the proxy
    /// change, `Keep` is a `password` field error ("enter the password
    /// again: the server settings changed") — a form that never shows the
    /// password must not let it be sent to a server someone just typed in.
    /// For the proxy's password ([`SettingsUpdate::proxy_password`]) the
    /// same holds of the proxy's kind, host, port and user name (a
    /// `proxy_password` error).
    #[default]
    Keep,
    /// Replace it with a newly typed one.
    Set(SecretString),
    /// Remove the credentials (no AUTH).
    Clear,
}

/// What happens to the stored client certificate and its private key
/// (mutual TLS). Like the password, the key is never echoed back to a form.
#[derive(Clone, Debug, Default)]
#[allow(
    clippy::exhaustive_enums,
    reason = "keep, set and clear are every change a stored secret can have"
)]
pub enum ClientCertificateChange {
    /// Keep it (the form's key field was left empty). The default. Only
    /// while the server stays the same: when the host, port, TLS mode, the
    /// trusted roots (system roots included) or a `dangerous_*` flag
    /// change, `Keep` is a `client_key` field error ("enter the client
    /// certificate and its private key again: the server settings
    /// changed").
    #[default]
    Keep,
    /// Replace it: the certificate chain and the private key, as PEM (see
    /// [`SmtpSettingsBuilder::client_certificate_pem`](super::SmtpSettingsBuilder::client_certificate_pem)).
    Set {
        /// The client's certificate first, then any intermediates.
        chain_pem: String,
        /// The private key of the first certificate.
        key_pem: SecretString,
    },
    /// Remove the client certificate.
    Clear,
}

/// What happens to the stored DKIM private key (feature `dkim`). Like the
/// password, the key is never echoed back to a form.
#[cfg(feature = "dkim")]
#[derive(Clone, Debug, Default)]
#[allow(
    clippy::exhaustive_enums,
    reason = "keep, set and clear are every change a stored secret can have"
)]
pub enum DkimKeyChange {
    /// Keep it (the form's key field was left empty). The default. Only
    /// while the DKIM domain and selector stay the same: the key belongs to
    /// the DNS record at `selector._domainkey.domain` that publishes its
    /// public half, so when either changes, `Keep` is a `dkim_key` field
    /// error ("enter the DKIM private key again"). Changing the relay does
    /// not matter: the key belongs to the domain, not to the server.
    #[default]
    Keep,
    /// Replace it with a newly given key (PEM, see
    /// [`DkimConfig::new`](crate::dkim::DkimConfig::new)). Needs a DKIM
    /// domain and selector, given or stored.
    Set(SecretString),
    /// Stop DKIM signing (the other `dkim_*` fields are then ignored).
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
    /// The backup relays, each `host` or `host:port` (replaces the list;
    /// an empty list removes them). A kept password is refused when the
    /// list changes.
    pub backup_relays: Option<Vec<String>>,
    /// The local source address (`Some(None)`: the system's choice).
    pub source_address: Option<Option<std::net::IpAddr>>,
    /// Trust the operating system's certificate store too (feature
    /// `system-roots`).
    pub system_roots: Option<bool>,
    /// The added root certificates, as PEM text (one or more certificates):
    /// replaces those stored; an empty text removes them. Changing them is
    /// a change of trust settings (a kept password is then refused).
    pub extra_roots_pem: Option<String>,
    /// The client certificate and its private key.
    pub client_certificate: ClientCertificateChange,
    /// The proxy: `Some(Some(kind))` connects through a proxy of this kind
    /// (with `proxy_host`, `proxy_port` and the stored values for what is
    /// not given), `Some(None)` removes the proxy (the other `proxy_*`
    /// fields are then ignored), `None` leaves the kind as it is.
    pub proxy_kind: Option<Option<ProxyKind>>,
    /// The proxy's host.
    pub proxy_host: Option<String>,
    /// The proxy's port (when neither given nor stored: 1080 for SOCKS5).
    pub proxy_port: Option<u16>,
    /// The proxy's user name (kept with its password unless changed; empty:
    /// no proxy credentials).
    pub proxy_username: Option<String>,
    /// The proxy's password, kept only while the proxy's kind, host, port
    /// and user name stay the same (otherwise a `proxy_password` field
    /// error asks for it again).
    pub proxy_password: PasswordChange,
    /// The DKIM signing domain (feature `dkim`). A kept key is refused when
    /// it changes.
    #[cfg(feature = "dkim")]
    pub dkim_domain: Option<String>,
    /// The DKIM selector (feature `dkim`). A kept key is refused when it
    /// changes.
    #[cfg(feature = "dkim")]
    pub dkim_selector: Option<String>,
    /// The DKIM header and body canonicalization (feature `dkim`).
    #[cfg(feature = "dkim")]
    pub dkim_canonicalization: Option<(crate::dkim::Canonicalization, crate::dkim::Canonicalization)>,
    /// The DKIM private key (feature `dkim`).
    #[cfg(feature = "dkim")]
    pub dkim_key: DkimKeyChange,
    /// OAuth2 sign-in's token endpoint URL (feature `oauth2`).
    pub oauth2_token_url: Option<String>,
    /// OAuth2 sign-in's client id.
    pub oauth2_client_id: Option<String>,
    /// OAuth2 sign-in's scopes (replaces the list).
    pub oauth2_scopes: Option<Vec<String>>,
    /// OAuth2 sign-in's refresh token: [`Set`](PasswordChange::Set) after
    /// the user signed in (switches to OAuth2 sign-in, replacing a
    /// password), [`Clear`](PasswordChange::Clear) to stop using OAuth2
    /// sign-in, [`Keep`](PasswordChange::Keep) (the default) to keep the
    /// stored one — only while the token endpoint URL, the client id and
    /// the server settings stay the same (else an `oauth2_refresh_token`
    /// field error: sign in again). The user name is
    /// [`username`](Self::username).
    pub oauth2_refresh_token: PasswordChange,
    /// OAuth2 sign-in's client secret (none: a public client): kept only
    /// while the token endpoint URL and the client id stay the same (else an
    /// `oauth2_client_secret` field error).
    pub oauth2_client_secret: PasswordChange,
    /// Transactions per connection of a [`Mailer`](crate::Mailer) (1 to
    /// 100,000). Not a server change: a kept password stays.
    pub max_deliveries_per_connection: Option<usize>,
    /// The redirect to report addresses (replaces it whole). Not a server
    /// change: a kept password stays.
    pub redirect: Option<Redirect>,
    /// How the addresses of [`Email`](crate::Email)s are read. Not a
    /// server change.
    pub address_policy: Option<AddressPolicy>,
    /// The attachment size limit. Not a server change.
    pub attachment_limit: Option<AttachmentLimit>,
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
    /// only while the server settings stay the same (host, port, backup relays, TLS mode,
    /// plain-text AUTH, `dangerous_*` flags, trusted roots, user name;
    /// otherwise a `password` field error asks for it again);
    /// [`PasswordChange::Set`] needs a user name (given or stored);
    /// [`PasswordChange::Clear`] removes the credentials. The client
    /// certificate's key follows the same rules
    /// ([`ClientCertificateChange`]): kept only while the host, port, TLS
    /// mode and trust settings stay the same (a `client_key` field error
    /// otherwise). Turning the system roots on or off is a change of trust
    /// settings for both.
    /// The proxy's password follows the same rules with the proxy's fields
    /// (`proxy_username`, `proxy_password`; see [`SettingsUpdate`]). A DKIM
    /// key (feature `dkim`) is kept while the DKIM domain and selector stay
    /// the same, whatever happens to the server (`DkimKeyChange`).
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
        let stored_oauth2 = self.oauth2.as_ref().map(|source| source.parts());
        let oauth2 = match &update.oauth2_refresh_token {
            PasswordChange::Set(_) => true,
            PasswordChange::Clear => false,
            PasswordChange::Keep => {
                stored_oauth2.is_some() && !matches!(update.password, PasswordChange::Set(_))
            }
        };
        if oauth2 {
            if matches!(update.password, PasswordChange::Set(_)) {
                errors.push(FieldError::new(
                    "password",
                    "choose a password or OAuth2 sign-in, not both",
                ));
            }
            let stored = stored_oauth2.as_ref();
            let token_url = update
                .oauth2_token_url
                .clone()
                .or_else(|| stored.map(|p| p.token_url.clone()))
                .unwrap_or_default();
            let client_id = update
                .oauth2_client_id
                .clone()
                .or_else(|| stored.map(|p| p.client_id.clone()))
                .unwrap_or_default();
            // The authorization server the stored secrets belong to.
            let same_server = stored.is_some_and(|p| {
                p.token_url.trim() == token_url.trim() && p.client_id.trim() == client_id.trim()
            });
            let mut parts_ok = true;
            let keep_token = matches!(update.oauth2_refresh_token, PasswordChange::Keep);
            let refresh_token = match update.oauth2_refresh_token {
                PasswordChange::Set(token) => Some(token),
                _ if same_server => stored.map(|p| p.refresh_token.clone()),
                _ => {
                    errors.push(FieldError::new(
                        "oauth2_refresh_token",
                        if stored.is_some() {
                            super::SIGN_IN_AGAIN
                        } else {
                            "no refresh token is stored: sign in"
                        },
                    ));
                    None
                }
            };
            let client_secret = match update.oauth2_client_secret {
                PasswordChange::Set(secret) => Some(secret),
                PasswordChange::Clear => None,
                PasswordChange::Keep => match stored.and_then(|p| p.client_secret.clone()) {
                    Some(_) if !same_server => {
                        parts_ok = false;
                        errors.push(FieldError::new(
                            "oauth2_client_secret",
                            "enter the client secret again: the token endpoint or client id changed",
                        ));
                        None
                    }
                    kept => kept,
                },
            };
            // The user name given, else the stored one (of OAuth2 sign-in,
            // or of the password it replaces).
            let username = update
                .username
                .clone()
                .or_else(|| stored.map(|p| p.username.clone()))
                .or_else(|| match &self.auth {
                    Auth::Credential(c) => Some(c.username().to_owned()),
                    _ => None,
                })
                .unwrap_or_default();
            if let (Some(refresh_token), true) = (refresh_token, parts_ok) {
                let parts = OAuth2Parts {
                    token_url,
                    client_id,
                    scopes: update
                        .oauth2_scopes
                        .clone()
                        .or_else(|| stored.map(|p| p.scopes.clone()))
                        .unwrap_or_default(),
                    username,
                    refresh_token,
                    client_secret,
                };
                match parts.provider() {
                    Ok(provider) => {
                        // A kept refresh token stays marked as kept: build()
                        // refuses it when the server settings changed.
                        let kept = std::mem::take(&mut b.kept_credential);
                        b.auth = Auth::Provider(provider.clone());
                        b.oauth2 = Some(provider);
                        if same_server && keep_token {
                            b.kept_credential = kept;
                        }
                    }
                    Err(more) => {
                        errors.extend(more);
                        b.kept_credential = None;
                    }
                }
            } else {
                b.kept_credential = None;
            }
        }
        let stored = match &self.auth {
            Auth::Credential(Credential::Password { username, password }) => {
                Some((username.clone(), password.clone()))
            }
            _ => None,
        };
        if !oauth2 && stored_oauth2.is_some() {
            // Leaving OAuth2 sign-in: a password given now replaces it.
            b = b.no_auth();
        }
        let stored_user = stored_oauth2.as_ref().map(|p| p.username.clone());
        let password_change = if oauth2 {
            PasswordChange::Keep
        } else {
            update.password
        };
        let username_change = if oauth2 { None } else { update.username };
        match (password_change, username_change) {
            (PasswordChange::Clear, Some(user)) if !user.trim().is_empty() => errors.push(FieldError::new(
                "password",
                "a user name needs a password: set one, or clear the user name too",
            )),
            (PasswordChange::Clear, _) => b = b.no_auth(),
            (PasswordChange::Set(password), user) => {
                match user
                    .or_else(|| stored.as_ref().map(|s| s.0.clone()))
                    .or(stored_user)
                {
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
                // The stored password under the given name, still marked as
                // kept: build() refuses it when the name (or the server) changed.
                (Some((_, password)), false) => {
                    b.auth = Auth::Credential(Credential::Password {
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
            b = b.dangerous(|d| d.allow_plaintext_auth(on));
        }
        if let Some(relays) = update.backup_relays {
            b = b.backup_relays(relays);
        }
        if let Some(ip) = update.source_address {
            b = b.source_address(ip);
        }
        if let Some(pem) = update.extra_roots_pem {
            b = b.clear_root_certificates();
            if !pem.trim().is_empty() {
                b = b.add_root_certificates_pem(pem);
            }
        }
        if let Some(on) = update.system_roots {
            b = b.system_roots(on);
        }
        match update.client_certificate {
            // Still marked as kept: build() refuses it when the server changed.
            ClientCertificateChange::Keep => {}
            ClientCertificateChange::Set { chain_pem, key_pem } => {
                b = b.client_certificate_pem(chain_pem, key_pem.expose_secret())
            }
            ClientCertificateChange::Clear => b = b.no_client_certificate(),
        }
        #[cfg(feature = "dkim")]
        {
            b.dkim = dkim_update(
                self.dkim.as_ref(),
                DkimFields {
                    domain: update.dkim_domain,
                    selector: update.dkim_selector,
                    canonicalization: update.dkim_canonicalization,
                    key: update.dkim_key,
                },
                &mut errors,
            );
        }
        // The mailer's policies: checked by build() like every field, never
        // part of where a secret goes.
        if let Some(n) = update.max_deliveries_per_connection {
            b = b.max_deliveries_per_connection(n);
        }
        if let Some(redirect) = update.redirect {
            b = b.redirect(redirect);
        }
        if let Some(policy) = update.address_policy {
            b = b.address_policy(policy);
        }
        if let Some(limit) = update.attachment_limit {
            b = b.attachment_limit(limit);
        }
        let stored = self.proxy.as_ref();
        let kind = match update.proxy_kind {
            Some(kind) => kind,
            None => stored.map(Proxy::kind),
        };
        match kind {
            None => {
                let wants_one = update.proxy_host.is_some()
                    || update.proxy_port.is_some()
                    || update
                        .proxy_username
                        .as_deref()
                        .is_some_and(|u| !u.trim().is_empty())
                    || matches!(update.proxy_password, PasswordChange::Set(_));
                if wants_one && update.proxy_kind.is_none() {
                    errors.push(FieldError::new(
                        "proxy",
                        "choose the proxy's kind (SOCKS5 or HTTP CONNECT) for its host, port and user name",
                    ));
                }
                b = b.no_proxy();
            }
            Some(kind) => {
                let host = update
                    .proxy_host
                    .or_else(|| stored.map(|p| p.host.clone()))
                    .unwrap_or_default();
                let port = update
                    .proxy_port
                    .or_else(|| stored.map(Proxy::port))
                    .unwrap_or(match kind {
                        ProxyKind::Socks5 => 1080,
                        _ => 0,
                    });
                let mut proxy = Proxy::new(kind, host, port);
                let stored_credentials = stored.and_then(|p| p.credentials.clone());
                let mut typed = false;
                match (update.proxy_password, update.proxy_username) {
                    (PasswordChange::Clear, Some(user)) if !user.trim().is_empty() => {
                        errors.push(FieldError::new(
                            "proxy_password",
                            "a proxy user name needs a password: set one, or clear the proxy user name too",
                        ))
                    }
                    (PasswordChange::Clear, _) => typed = true,
                    (PasswordChange::Set(password), user) => {
                        typed = true;
                        match user.or_else(|| stored_credentials.map(|(user, _)| user)) {
                            Some(user) => proxy = proxy.with_credentials(user, password),
                            None => errors.push(FieldError::new(
                                "proxy_username",
                                "a proxy password needs a user name",
                            )),
                        }
                    }
                    (PasswordChange::Keep, Some(user)) => {
                        match (stored_credentials, user.trim().is_empty()) {
                            (_, true) => typed = true,
                            // Still marked as kept: build() refuses it when the
                            // proxy or the user name changed.
                            (Some((_, password)), false) => proxy.credentials = Some((user, password)),
                            (None, false) => errors.push(FieldError::new(
                                "proxy_password",
                                "no proxy password is stored: type one for this proxy user name",
                            )),
                        }
                    }
                    (PasswordChange::Keep, None) => proxy.credentials = stored_credentials,
                }
                let kept = std::mem::take(&mut b.kept_proxy_credential);
                b = b.proxy(proxy);
                if !typed {
                    b.kept_proxy_credential = kept;
                }
            }
        }
        b.build_reporting(errors)
    }
}

/// The `dkim_*` fields of an update.
#[cfg(feature = "dkim")]
struct DkimFields {
    domain: Option<String>,
    selector: Option<String>,
    canonicalization: Option<(crate::dkim::Canonicalization, crate::dkim::Canonicalization)>,
    key: DkimKeyChange,
}

/// The DKIM settings after an update of the stored ones (`stored`): a kept
/// key stays marked as kept, so that `build` refuses it for another domain
/// or selector.
#[cfg(feature = "dkim")]
fn dkim_update(
    stored: Option<&crate::dkim::DkimSigner>,
    update: DkimFields,
    errors: &mut Vec<FieldError>,
) -> Option<crate::dkim::DkimConfig> {
    use crate::dkim::DkimConfig;
    let given = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
    let config = match update.key {
        DkimKeyChange::Clear => {
            if given(&update.domain) || given(&update.selector) {
                errors.push(FieldError::new(
                    "dkim_key",
                    "a DKIM domain and selector need a private key: set one, or clear the domain and selector too",
                ));
            }
            return None;
        }
        DkimKeyChange::Set(pem) => {
            let domain = update
                .domain
                .clone()
                .or_else(|| stored.map(|s| s.domain().to_owned()))
                .unwrap_or_default();
            let selector = update
                .selector
                .clone()
                .or_else(|| stored.map(|s| s.selector().to_owned()))
                .unwrap_or_default();
            match stored {
                // The stored list of signed fields and canonicalization stay.
                Some(s) => s
                    .to_config()
                    .domain(domain)
                    .selector(selector)
                    .private_key_pem(pem.expose_secret()),
                None => DkimConfig::new(domain, selector, pem.expose_secret()),
            }
        }
        DkimKeyChange::Keep => match stored {
            Some(s) => {
                let mut config = s.to_config();
                if let Some(domain) = update.domain {
                    config = config.domain(domain);
                }
                if let Some(selector) = update.selector {
                    config = config.selector(selector);
                }
                config
            }
            None => {
                if given(&update.domain) || given(&update.selector) {
                    errors.push(FieldError::new(
                        "dkim_key",
                        "no DKIM key is stored: give one for this domain and selector",
                    ));
                }
                return None;
            }
        },
    };
    Some(match update.canonicalization {
        Some((header, body)) => config.canonicalization(header, body),
        None => config,
    })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::super::{SmtpSettingsBuilder, ENTER_PASSWORD_AGAIN};
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
                sender_name: Some(Some("Example App".into())),
                helo_name: Some(Some("app.example.com".into())),
                timeout: Some(Duration::from_secs(20)),
                // The form sends the unchanged server fields back as they were.
                host: Some("MAIL.example.com".into()),
                port: Some(587),
                tls: Some(TlsMode::StartTls),
                username: Some("app".into()),
                allow_plaintext_auth: Some(false),
                ..SettingsUpdate::new()
            })
            .expect("valid");
        assert_eq!(kept.sender().name.as_deref(), Some("Example App"));
        assert_eq!(password(&kept), Some(("app".into(), "old-secret".into())));

        // A new server or user name needs the password typed again.
        let moved = s
            .apply(SettingsUpdate {
                host: Some("smtp.example.org".into()),
                ..SettingsUpdate::new()
            })
            .expect_err("the password would follow the host");
        assert_eq!(
            moved.field("password").map(FieldError::message),
            Some(ENTER_PASSWORD_AGAIN)
        );
        let moved = s
            .apply(SettingsUpdate {
                host: Some("smtp.example.org".into()),
                password: PasswordChange::Set("typed-again".into()),
                ..SettingsUpdate::new()
            })
            .expect("typed again");
        assert_eq!(password(&moved), Some(("app".into(), "typed-again".into())));

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
    fn a_kept_password_never_follows_a_server_change() {
        let s = stored();
        let form = |f: fn(&mut SettingsUpdate)| {
            let mut u = SettingsUpdate::new();
            f(&mut u);
            s.apply(u)
        };
        let builder = |f: fn(SmtpSettingsBuilder) -> SmtpSettingsBuilder| f(s.to_builder()).build();
        let cases: Vec<(&str, Result<SmtpSettings, SettingsErrors>)> = vec![
            ("host", form(|u| u.host = Some("attacker.example.net".into()))),
            ("host (address)", form(|u| u.host = Some("192.0.2.7".into()))),
            ("port", form(|u| u.port = Some(2525))),
            ("tls", form(|u| u.tls = Some(TlsMode::None))),
            (
                "tls (opportunistic)",
                form(|u| u.tls = Some(TlsMode::StartTlsOpportunistic)),
            ),
            (
                "allow_plaintext_auth",
                form(|u| u.allow_plaintext_auth = Some(true)),
            ),
            ("username", form(|u| u.username = Some("admin".into()))),
            (
                "backup_relays",
                form(|u| u.backup_relays = Some(vec!["attacker.example.net".into()])),
            ),
            (
                "proxy (added)",
                form(|u| {
                    u.proxy_kind = Some(Some(ProxyKind::Socks5));
                    u.proxy_host = Some("proxy.attacker.example".into());
                }),
            ),
            ("builder: host", builder(|b| b.host("attacker.example.net"))),
            (
                "builder: proxy",
                builder(|b| b.proxy(Proxy::http_connect("proxy.attacker.example", 3128))),
            ),
            ("builder: port", builder(|b| b.port(2525))),
            ("builder: tls", builder(|b| b.tls(TlsMode::Implicit))),
            (
                "builder: allow_plaintext_auth",
                builder(|b| b.dangerous(|d| d.allow_plaintext_auth(true))),
            ),
            (
                "builder: dangerous_accept_invalid_certs",
                builder(|b| b.dangerous(|d| d.accept_invalid_certs(true))),
            ),
            (
                "builder: dangerous_accept_invalid_hostnames",
                builder(|b| b.dangerous(|d| d.accept_invalid_hostnames(true))),
            ),
            // (Added roots: tests/diagnose, with a test server's CA.)
            ("builder: webpki_roots", builder(|b| b.webpki_roots(false))),
            (
                "builder: backup_relays",
                builder(|b| b.backup_relays(["attacker.example.net:25"])),
            ),
        ];
        for (what, result) in cases {
            let e = result.expect_err(what);
            assert_eq!(
                e.field("password").map(FieldError::message),
                Some(ENTER_PASSWORD_AGAIN),
                "{what}: {e}"
            );
            assert!(!format!("{e}{e:?}").contains("old-secret"), "{what}");
        }
        // Together with the form's other problems, all at once.
        let e = s
            .apply(SettingsUpdate {
                host: Some("attacker.example.net".into()),
                sender: Some("not an address".into()),
                ..SettingsUpdate::new()
            })
            .expect_err("invalid");
        assert!(
            e.field("password").is_some() && e.field("sender").is_some(),
            "{e}"
        );
        // Unchanged server settings keep the password, also for a token.
        let token = SmtpSettings::builder()
            .host("mail.example.com")
            .sender("noreply@example.com")
            .oauth2_token("app", "ya29.token")
            .build()
            .expect("settings");
        assert!(token.to_builder().timeout(Duration::from_secs(9)).build().is_ok());
        assert!(token.to_builder().port(2525).build().is_err());
        assert!(s.to_builder().host(" mail.example.com ").build().is_ok());
    }

    /// Test keys made with openssl for these tests only (testdata/README.md).
    const CERT: &str = include_str!("testdata/ec.crt");
    const KEY: &str = include_str!("testdata/ec-sec1.key");
    const RSA_CERT: &str = include_str!("testdata/rsa.crt");
    const RSA_KEY: &str = include_str!("testdata/rsa-pkcs1.key");

    fn subject(s: &SmtpSettings) -> Option<&str> {
        s.tls_options().client_identity().map(|c| c.subject())
    }

    #[test]
    fn client_certificate_keep_set_clear() {
        let s = stored()
            .to_builder()
            .client_certificate_pem(CERT, KEY)
            .build()
            .expect("settings");
        let kept = s
            .apply(SettingsUpdate {
                sender_name: Some(Some("Example App".into())),
                host: Some("MAIL.example.com".into()),
                ..SettingsUpdate::new()
            })
            .expect("kept");
        assert_eq!(subject(&kept), subject(&s));
        let set = s
            .apply(SettingsUpdate {
                client_certificate: ClientCertificateChange::Set {
                    chain_pem: RSA_CERT.into(),
                    key_pem: RSA_KEY.into(),
                },
                ..SettingsUpdate::new()
            })
            .expect("set");
        assert_eq!(subject(&set), Some("CN=relaymail unit test RSA"));
        let cleared = s
            .apply(SettingsUpdate {
                client_certificate: ClientCertificateChange::Clear,
                ..SettingsUpdate::new()
            })
            .expect("cleared");
        assert_eq!(subject(&cleared), None);
        // A bad new pair is the form's field error, the key never shown.
        let e = s
            .apply(SettingsUpdate {
                client_certificate: ClientCertificateChange::Set {
                    chain_pem: CERT.into(),
                    key_pem: RSA_KEY.into(),
                },
                ..SettingsUpdate::new()
            })
            .expect_err("mismatch");
        assert!(e.field("client_key").is_some(), "{e}");
        let update = SettingsUpdate {
            client_certificate: ClientCertificateChange::Set {
                chain_pem: CERT.into(),
                key_pem: KEY.into(),
            },
            ..SettingsUpdate::new()
        };
        let key_line = KEY.lines().nth(1).expect("a key line");
        assert!(!format!("{update:?}{e:?}").contains(key_line));
    }

    #[test]
    fn a_kept_client_key_never_follows_a_server_change() {
        let s = stored()
            .apply(SettingsUpdate {
                password: PasswordChange::Clear,
                client_certificate: ClientCertificateChange::Set {
                    chain_pem: CERT.into(),
                    key_pem: KEY.into(),
                },
                ..SettingsUpdate::new()
            })
            .expect("settings");
        let form = |f: fn(&mut SettingsUpdate)| {
            let mut u = SettingsUpdate::new();
            f(&mut u);
            s.apply(u)
        };
        for (what, result) in [
            ("host", form(|u| u.host = Some("attacker.example.net".into()))),
            ("port", form(|u| u.port = Some(2525))),
            ("tls", form(|u| u.tls = Some(TlsMode::Implicit))),
            ("system_roots", form(|u| u.system_roots = Some(true))),
        ] {
            let e = result.expect_err(what);
            assert_eq!(
                e.field("client_key").map(FieldError::message),
                Some(super::super::ENTER_CLIENT_KEY_AGAIN),
                "{what}: {e}"
            );
        }
        // Typed again with the change, it is accepted.
        let moved = form(|u| {
            u.host = Some("smtp.example.org".into());
            u.client_certificate = ClientCertificateChange::Set {
                chain_pem: CERT.into(),
                key_pem: KEY.into(),
            };
        })
        .expect("entered again");
        assert_eq!(moved.host(), "smtp.example.org");
    }

    #[test]
    fn turning_system_roots_on_asks_for_the_password_again() {
        let e = stored()
            .apply(SettingsUpdate {
                system_roots: Some(true),
                ..SettingsUpdate::new()
            })
            .expect_err("a trust change");
        assert_eq!(
            e.field("password").map(FieldError::message),
            Some(ENTER_PASSWORD_AGAIN),
            "{e}"
        );
    }

    #[cfg(feature = "proxy")]
    fn stored_with_proxy() -> SmtpSettings {
        stored()
            .to_builder()
            .credentials("app", "old-secret")
            .proxy(Proxy::socks5("proxy.example", 1080).with_credentials("px", "old-proxy-pw"))
            .build()
            .expect("settings")
    }

    #[cfg(feature = "proxy")]
    fn proxy_password(s: &SmtpSettings) -> Option<(String, String)> {
        let p = s.proxy()?;
        Some((p.username()?.to_owned(), p.password()?.expose_secret().to_owned()))
    }

    #[cfg(feature = "proxy")]
    #[test]
    fn proxy_password_keep_set_clear() {
        use super::super::ENTER_PROXY_PASSWORD_AGAIN;
        let s = stored_with_proxy();
        // The form sends the proxy's fields back unchanged: both kept.
        let kept = s
            .apply(SettingsUpdate {
                sender_name: Some(Some("Example App".into())),
                proxy_kind: Some(Some(ProxyKind::Socks5)),
                proxy_host: Some("PROXY.example".into()),
                proxy_port: Some(1080),
                proxy_username: Some("px".into()),
                ..SettingsUpdate::new()
            })
            .expect("valid");
        assert_eq!(proxy_password(&kept), Some(("px".into(), "old-proxy-pw".into())));
        assert_eq!(password(&kept), Some(("app".into(), "old-secret".into())));
        // A relay change keeps the proxy's password (it is the proxy's).
        let e = s
            .apply(SettingsUpdate {
                host: Some("smtp.example.org".into()),
                ..SettingsUpdate::new()
            })
            .expect_err("relay password");
        assert!(
            e.field("password").is_some() && e.field("proxy_password").is_none(),
            "{e}"
        );

        type Edit = fn(&mut SettingsUpdate);
        // (what, edit, relay password refused too)
        let cases: [(&str, Edit, bool); 5] = [
            (
                "proxy host",
                |u| u.proxy_host = Some("proxy.attacker.example".into()),
                true,
            ),
            ("proxy port", |u| u.proxy_port = Some(9050), true),
            (
                "proxy kind",
                |u| u.proxy_kind = Some(Some(ProxyKind::HttpConnect)),
                true,
            ),
            ("proxy user", |u| u.proxy_username = Some("root".into()), false),
            (
                "proxy user and host",
                |u| {
                    u.proxy_username = Some("root".into());
                    u.proxy_host = Some("127.0.0.1".into());
                },
                true,
            ),
        ];
        for (what, edit, relay_too) in cases {
            let mut u = SettingsUpdate::new();
            edit(&mut u);
            let e = s.apply(u).expect_err(what);
            assert_eq!(
                e.field("proxy_password").map(FieldError::message),
                Some(ENTER_PROXY_PASSWORD_AGAIN),
                "{what}: {e}"
            );
            assert_eq!(e.field("password").is_some(), relay_too, "{what}: {e}");
            assert!(!format!("{e}{e:?}").contains("old-proxy-pw"), "{what}");
            // Typed again, it is accepted (and the relay's, when asked for).
            let mut u = SettingsUpdate::new();
            edit(&mut u);
            u.proxy_password = PasswordChange::Set("new-proxy-pw".into());
            if relay_too {
                u.password = PasswordChange::Set("typed-again".into());
            }
            let moved = s.apply(u).expect(what);
            assert_eq!(
                proxy_password(&moved).map(|p| p.1),
                Some("new-proxy-pw".into()),
                "{what}"
            );
        }
        // The builder's way: a new proxy carries its own credentials.
        let e = s
            .to_builder()
            .proxy(Proxy::socks5("proxy.example", 1081))
            .build()
            .expect_err("relay password");
        assert!(
            e.field("password").is_some() && e.field("proxy_password").is_none(),
            "{e}"
        );
        assert!(s.to_builder().timeout(Duration::from_secs(9)).build().is_ok());

        let cleared = s
            .apply(SettingsUpdate {
                proxy_password: PasswordChange::Clear,
                ..SettingsUpdate::new()
            })
            .expect("valid");
        let p = cleared.proxy().expect("still a proxy");
        assert!(p.username().is_none() && p.password().is_none());
        assert_eq!(password(&cleared), Some(("app".into(), "old-secret".into())));
        let e = s
            .apply(SettingsUpdate {
                proxy_password: PasswordChange::Clear,
                proxy_username: Some("px".into()),
                ..SettingsUpdate::new()
            })
            .expect_err("a user without a password");
        assert!(e.field("proxy_password").is_some(), "{e}");

        // Removing the proxy sends the relay's password on another path.
        let direct = SettingsUpdate {
            proxy_kind: Some(None),
            proxy_host: Some("ignored.example".into()),
            ..SettingsUpdate::new()
        };
        let e = s.apply(direct).expect_err("relay password");
        assert!(e.field("password").is_some(), "{e}");
        let direct = s
            .apply(SettingsUpdate {
                proxy_kind: Some(None),
                password: PasswordChange::Set("typed-again".into()),
                ..SettingsUpdate::new()
            })
            .expect("direct");
        assert!(direct.proxy().is_none());
    }

    #[test]
    fn proxy_fields_without_a_kind_are_a_field_error() {
        let s = stored();
        let e = s
            .apply(SettingsUpdate {
                proxy_host: Some("proxy.example".into()),
                password: PasswordChange::Clear,
                ..SettingsUpdate::new()
            })
            .expect_err("no kind");
        assert!(
            e.field("proxy").is_some_and(|f| f.message().contains("kind")),
            "{e}"
        );
        let e = s
            .apply(SettingsUpdate {
                proxy_kind: Some(Some(ProxyKind::HttpConnect)),
                proxy_host: Some("proxy.example".into()),
                password: PasswordChange::Set("typed-again".into()),
                ..SettingsUpdate::new()
            })
            .expect_err("an HTTP proxy needs a port");
        assert!(e.field("proxy_port").is_some(), "{e}");
        let e = s
            .apply(SettingsUpdate {
                proxy_kind: Some(Some(ProxyKind::Socks5)),
                proxy_host: Some("proxy.example".into()),
                proxy_password: PasswordChange::Set("pw".into()),
                password: PasswordChange::Set("typed-again".into()),
                ..SettingsUpdate::new()
            })
            .expect_err("a proxy password needs a user");
        assert!(e.field("proxy_username").is_some(), "{e}");
    }

    #[test]
    fn tls_change_moves_a_default_port() {
        let s = stored()
            .apply(SettingsUpdate {
                password: PasswordChange::Clear,
                ..SettingsUpdate::new()
            })
            .expect("no credentials");
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

    #[cfg(feature = "dkim")]
    mod dkim {
        use super::*;
        use crate::dkim::{Canonicalization, DkimConfig, ENTER_DKIM_KEY_AGAIN};

        /// Test keys (tests/dkim/keys/README.md).
        const RSA: &str = include_str!("../../tests/dkim/keys/rsa2048.pem");
        const ED25519: &str = include_str!("../../tests/dkim/keys/ed25519.pem");

        fn signing() -> SmtpSettings {
            stored()
                .to_builder()
                .dkim(DkimConfig::new("example.com", "mail2024", RSA))
                .build()
                .expect("settings")
        }

        fn dkim_of(s: &SmtpSettings) -> Option<(String, String, String)> {
            s.dkim()
                .map(|d| (d.domain().to_owned(), d.selector().to_owned(), d.dns_record()))
        }

        #[test]
        fn dkim_key_keep_set_clear() {
            let s = signing();
            let before = dkim_of(&s).expect("dkim");
            // Kept across a form save that sends the DKIM fields back, and
            // across a relay change: the key belongs to the domain.
            let kept = s
                .apply(SettingsUpdate {
                    dkim_domain: Some("EXAMPLE.com".into()),
                    dkim_selector: Some("mail2024".into()),
                    dkim_canonicalization: Some((Canonicalization::Simple, Canonicalization::Relaxed)),
                    host: Some("smtp.example.org".into()),
                    password: PasswordChange::Set("typed-again".into()),
                    ..SettingsUpdate::new()
                })
                .expect("kept");
            assert_eq!(dkim_of(&kept), Some(before.clone()));
            assert_eq!(
                kept.dkim().expect("dkim").canonicalization(),
                (Canonicalization::Simple, Canonicalization::Relaxed)
            );
            // Set: a new key, the stored domain and selector.
            let set = s
                .apply(SettingsUpdate {
                    dkim_key: DkimKeyChange::Set(ED25519.into()),
                    ..SettingsUpdate::new()
                })
                .expect("set");
            let (domain, selector, record) = dkim_of(&set).expect("dkim");
            assert_eq!((domain.as_str(), selector.as_str()), ("example.com", "mail2024"));
            assert!(record.contains("k=ed25519"), "{record}");
            // Clear: no signing.
            let cleared = s
                .apply(SettingsUpdate {
                    dkim_key: DkimKeyChange::Clear,
                    ..SettingsUpdate::new()
                })
                .expect("cleared");
            assert!(cleared.dkim().is_none());
            let e = s
                .apply(SettingsUpdate {
                    dkim_key: DkimKeyChange::Clear,
                    dkim_domain: Some("example.com".into()),
                    ..SettingsUpdate::new()
                })
                .expect_err("a domain without a key");
            assert!(e.field("dkim_key").is_some(), "{e}");
            // From nothing: Set needs a domain and a selector; Keep has none.
            let e = stored()
                .apply(SettingsUpdate {
                    dkim_key: DkimKeyChange::Set(ED25519.into()),
                    ..SettingsUpdate::new()
                })
                .expect_err("no domain");
            assert!(
                e.field("dkim_domain").is_some() && e.field("dkim_selector").is_some(),
                "{e}"
            );
            let e = stored()
                .apply(SettingsUpdate {
                    dkim_domain: Some("example.com".into()),
                    dkim_selector: Some("s1".into()),
                    ..SettingsUpdate::new()
                })
                .expect_err("no key stored");
            assert!(e.field("dkim_key").is_some(), "{e}");
            let new = stored()
                .apply(SettingsUpdate {
                    dkim_domain: Some("example.com".into()),
                    dkim_selector: Some("s1".into()),
                    dkim_key: DkimKeyChange::Set(ED25519.into()),
                    ..SettingsUpdate::new()
                })
                .expect("new");
            assert_eq!(new.dkim().expect("dkim").selector(), "s1");
            // A bad key is the form's field error, the key never shown.
            let e = s
                .apply(SettingsUpdate {
                    dkim_key: DkimKeyChange::Set(
                        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into(),
                    ),
                    ..SettingsUpdate::new()
                })
                .expect_err("bad key");
            assert!(e.field("dkim_key").is_some(), "{e}");
            let update = SettingsUpdate {
                dkim_key: DkimKeyChange::Set(RSA.into()),
                ..SettingsUpdate::new()
            };
            assert!(!format!("{update:?}").contains(RSA.lines().nth(1).expect("line")));
        }

        #[test]
        fn a_kept_dkim_key_never_signs_for_another_domain_or_selector() {
            let s = signing();
            for (what, update) in [
                (
                    "domain",
                    SettingsUpdate {
                        dkim_domain: Some("other.example".into()),
                        ..SettingsUpdate::new()
                    },
                ),
                (
                    "selector",
                    SettingsUpdate {
                        dkim_selector: Some("mail2025".into()),
                        ..SettingsUpdate::new()
                    },
                ),
            ] {
                let e = s.apply(update).expect_err(what);
                assert_eq!(
                    e.field("dkim_key").map(FieldError::message),
                    Some(ENTER_DKIM_KEY_AGAIN),
                    "{what}: {e}"
                );
            }
            // Given again with the change, it is accepted.
            let moved = s
                .apply(SettingsUpdate {
                    dkim_selector: Some("mail2025".into()),
                    dkim_key: DkimKeyChange::Set(RSA.into()),
                    ..SettingsUpdate::new()
                })
                .expect("given again");
            assert_eq!(moved.dkim().expect("dkim").selector(), "mail2025");
            // The builder's way follows the same rule.
            let config = s.dkim().expect("dkim").to_config().domain("other.example");
            let e = s.to_builder().dkim(config).build().expect_err("moved");
            assert_eq!(
                e.field("dkim_key").map(FieldError::message),
                Some(ENTER_DKIM_KEY_AGAIN)
            );
            // What is not about the DKIM record keeps it, relay changes too.
            assert!(s.to_builder().port(2525).credentials("app", "x").build().is_ok());
        }
    }
}
