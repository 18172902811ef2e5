//! Serde support (feature `serde`): settings as plain data, JSON or TOML.
//!
//! [`SettingsData`] is the stored form: every field of [`SmtpSettings`]
//! except the password, a proxy's password, a client certificate's private
//! key and a DKIM private key, which are never serialised. [`SmtpSettings`] serialises
//! through it, and deserialises through it *and* the builder's validation.
//! Settings with a user name need their password from elsewhere, and
//! settings with a client certificate its key:
//! [`SealedSettings`](super::SealedSettings) carries them encrypted, or
//! [`SettingsData::into_settings_with`] takes them.
//!
//! OAuth2 sign-in ([`SmtpSettingsBuilder::oauth2`], feature `oauth2`) is
//! stored the same way: the token endpoint, client id, scopes and user name
//! as data ([`OAuth2Data`]), the refresh token and client secret sealed
//! (or given to [`SettingsData::into_settings_with`]).

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    AttachmentLimit, Auth, OAuth2Parts, Proxy, ProxyKind, Redirect, SettingsErrors, SmtpSettings,
    SmtpSettingsBuilder, Timeouts, TlsMode, DEFAULT_MAX_DELIVERIES_PER_CONNECTION,
};
use crate::proto::address::AddressPolicy;
use crate::proto::auth::{Credential, Mechanism};

/// Timeouts in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TimeoutsData {
    /// Connect (resolve + TCP), seconds.
    pub connect: f64,
    /// Greeting, seconds.
    pub greeting: f64,
    /// TLS handshake, seconds.
    pub tls_handshake: f64,
    /// Each command reply, seconds.
    pub command: f64,
    /// Each write, seconds.
    pub data: f64,
    /// The final reply after a message, seconds.
    pub final_reply: f64,
}

/// A [`Proxy`] as plain data, without its password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProxyData {
    /// `socks5` or `http` (HTTP CONNECT).
    pub kind: String,
    /// The proxy's host name or IP address.
    pub host: String,
    /// The proxy's port.
    pub port: u16,
    /// The user name given to the proxy (its password is stored separately,
    /// sealed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// DKIM signing settings as plain data, without the private key (which is
/// stored sealed, never here). Read by a build without the cargo feature
/// `dkim`, they are a `dkim` field error: never settings that send unsigned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DkimData {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// `rsa-sha256` or `ed25519-sha256`: the key's algorithm, checked
    /// against the key when it is given back.
    pub algorithm: String,
    /// `header/body`, each `relaxed` or `simple` (a single name is the
    /// header's, with `simple` for the body, as in the `c=` tag).
    pub canonicalization: String,
    /// The header fields signed when present; absent: the default list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
}

/// OAuth2 sign-in as plain data: the public half. The refresh token and
/// the client secret are stored sealed, never here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OAuth2Data {
    /// The token endpoint, e.g. `https://oauth2.googleapis.com/token`.
    pub token_url: String,
    /// The application's client id.
    pub client_id: String,
    /// The scopes asked for with each renewal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

impl OAuth2Data {
    /// OAuth2 sign-in data: token endpoint, client id, scopes.
    pub fn new(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        scopes: Vec<String>,
    ) -> OAuth2Data {
        OAuth2Data {
            token_url: token_url.into(),
            client_id: client_id.into(),
            scopes,
        }
    }
}

/// Every secret a stored record may need, for
/// [`SettingsData::into_settings_with`]. Start from `StoredSecrets::default()`
/// and set those the record has.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct StoredSecrets {
    /// The relay's password (or OAuth2 access token, for `oauth2` data).
    pub password: Option<SecretString>,
    /// The proxy's password.
    pub proxy_password: Option<SecretString>,
    /// The client certificate's private key, PEM.
    pub client_key_pem: Option<SecretString>,
    /// OAuth2 sign-in's refresh token.
    pub oauth2_refresh_token: Option<SecretString>,
    /// OAuth2 sign-in's client secret (none for a public client).
    pub oauth2_client_secret: Option<SecretString>,
    /// The DKIM private key, PEM (feature `dkim`).
    pub dkim_key_pem: Option<SecretString>,
}

/// [`SmtpSettings`] as plain data, without the password or a client key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SettingsData {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// `none`, `starttls`, `starttls-opportunistic` or `implicit`.
    pub tls: String,
    /// Sender address.
    pub sender: String,
    /// Sender display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// AUTH user name (the password is stored separately, sealed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Whether the credential is a fixed OAuth2 access token (OAUTHBEARER or
    /// XOAUTH2) rather than a password. OAuth2 sign-in with a refresh token
    /// is [`oauth2_client`](Self::oauth2_client).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oauth2: bool,
    /// AUTH mechanisms allowed, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_mechanisms: Option<Vec<String>>,
    /// Allow AUTH without TLS.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// HELO name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helo_name: Option<String>,
    /// Timeouts.
    pub timeouts: TimeoutsData,
    /// Extra root certificates, PEM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_roots_pem: Vec<String>,
    /// Trust the Mozilla roots.
    pub webpki_roots: bool,
    /// Trust the operating system's certificate store too (feature
    /// `system-roots`). Written only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system_roots: bool,
    /// The client certificate chain, PEM (public; its private key is stored
    /// sealed, never here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_pem: Option<String>,
    /// Accept any certificate (dangerous).
    #[serde(default)]
    pub dangerous_accept_invalid_certs: bool,
    /// Accept certificates for other names (dangerous).
    #[serde(default)]
    pub dangerous_accept_invalid_hostnames: bool,
    /// Use PIPELINING when offered.
    pub pipelining: bool,
    /// Use CHUNKING when offered.
    pub chunking: bool,
    /// Fail unless every recipient is accepted.
    #[serde(default)]
    pub require_all_recipients: bool,
    /// Where messages go when not to the relay, in development and tests:
    /// `file:///dir` or `memory://name` (see [`crate::dev`]). Absent: the
    /// relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Backup relays, each `host:port`, tried in order when the primary
    /// cannot be reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backup_relays: Vec<String>,
    /// Seconds a backup relay is used before the primary is tried again.
    /// Absent: 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_retry_after: Option<f64>,
    /// The local IP address connections come from. Absent: the system's
    /// choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// Happy Eyeballs: seconds between the starts of two connection
    /// attempts. Absent: 0.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_attempt_delay: Option<f64>,
    /// The proxy connections go through; absent: a direct connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyData>,
    /// DKIM signing (feature `dkim`); absent: messages are not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<DkimData>,
    /// OAuth2 sign-in with a refresh token (feature `oauth2`), for the user
    /// in `username`; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_client: Option<OAuth2Data>,
    /// Transactions per connection of a [`Mailer`](crate::Mailer). Absent:
    /// 20 (written only when not 20).
    #[serde(
        default = "default_max_deliveries_per_connection",
        skip_serializing_if = "is_default_max_deliveries_per_connection"
    )]
    pub max_deliveries_per_connection: usize,
    /// Redirect to report addresses: `{"enabled": true, "addresses":
    /// [{"address": "qa@example.com", "enabled": true}]}`. Absent: off
    /// (written only when not off and empty).
    #[serde(default, skip_serializing_if = "Redirect::is_default")]
    pub redirect: Redirect,
    /// `strict` or `lenient`. Absent: strict (written only when lenient).
    #[serde(default, skip_serializing_if = "is_strict")]
    pub address_policy: AddressPolicy,
    /// The attachment size limit: `{"max_size": 5000000, "links": true}`.
    /// Absent: no limit (written only when set).
    #[serde(default, skip_serializing_if = "AttachmentLimit::is_default")]
    pub attachment_limit: AttachmentLimit,
}

fn default_max_deliveries_per_connection() -> usize {
    DEFAULT_MAX_DELIVERIES_PER_CONNECTION
}

fn is_default_max_deliveries_per_connection(n: &usize) -> bool {
    *n == DEFAULT_MAX_DELIVERIES_PER_CONNECTION
}

fn is_strict(policy: &AddressPolicy) -> bool {
    *policy == AddressPolicy::Strict
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

impl SmtpSettings {
    /// The settings as plain data, without the password or a client key.
    pub fn to_data(&self) -> SettingsData {
        let oauth2_parts = self.oauth2.as_ref().map(|source| source.parts());
        let (username, oauth2) = match &self.auth {
            Auth::Credential(Credential::Password { username, .. }) => (Some(username.clone()), false),
            Auth::Credential(Credential::OAuth2 { username, .. }) => (Some(username.clone()), true),
            Auth::Provider(_) => (oauth2_parts.as_ref().map(|p| p.username.clone()), false),
            Auth::None => (None, false),
        };
        let t = &self.timeouts;
        SettingsData {
            host: self.host.clone(),
            port: self.port,
            tls: self.tls.as_str().to_owned(),
            sender: self.sender.address.to_string(),
            sender_name: self.sender.name.clone(),
            username,
            oauth2,
            auth_mechanisms: self
                .auth_mechanisms
                .as_ref()
                .map(|m| m.iter().map(|m| m.name().to_owned()).collect()),
            allow_plaintext_auth: self.allow_plaintext_auth,
            helo_name: self.helo_name.clone(),
            timeouts: TimeoutsData {
                connect: t.connect.as_secs_f64(),
                greeting: t.greeting.as_secs_f64(),
                tls_handshake: t.tls_handshake.as_secs_f64(),
                command: t.command.as_secs_f64(),
                data: t.data.as_secs_f64(),
                final_reply: t.final_reply.as_secs_f64(),
            },
            extra_roots_pem: self.tls_options.extra_roots.iter().map(|c| pem(c)).collect(),
            webpki_roots: self.tls_options.webpki_roots,
            system_roots: self.tls_options.system_roots,
            client_certificate_pem: self.tls_options.client_identity.as_ref().map(|c| c.chain_pem()),
            dangerous_accept_invalid_certs: self.tls_options.dangerous_accept_invalid_certs,
            dangerous_accept_invalid_hostnames: self.tls_options.dangerous_accept_invalid_hostnames,
            pipelining: self.pipelining,
            chunking: self.chunking,
            require_all_recipients: self.require_all_recipients,
            destination: self.destination.url(),
            backup_relays: self.route.backups.iter().map(ToString::to_string).collect(),
            primary_retry_after: (self.route.primary_retry_after != super::DEFAULT_PRIMARY_RETRY_AFTER)
                .then_some(self.route.primary_retry_after.as_secs_f64()),
            source_address: self.route.source_address.map(|ip| ip.to_string()),
            connect_attempt_delay: (self.route.attempt_delay != super::DEFAULT_ATTEMPT_DELAY)
                .then_some(self.route.attempt_delay.as_secs_f64()),
            proxy: self.proxy.as_ref().map(|p| ProxyData {
                kind: p.kind.as_str().to_owned(),
                host: p.host.clone(),
                port: p.port,
                username: p.username().map(str::to_owned),
            }),
            #[cfg(feature = "dkim")]
            dkim: self.dkim.as_ref().map(|d| {
                let (header, body) = d.canonicalization();
                DkimData {
                    domain: d.domain().to_owned(),
                    selector: d.selector().to_owned(),
                    algorithm: d.algorithm().as_str().to_owned(),
                    canonicalization: format!("{header}/{body}"),
                    headers: (!d.has_default_headers()).then(|| d.signed_headers().to_vec()),
                }
            }),
            #[cfg(not(feature = "dkim"))]
            dkim: None,
            oauth2_client: oauth2_parts.map(|p| OAuth2Data {
                token_url: p.token_url,
                client_id: p.client_id,
                scopes: p.scopes,
            }),
            max_deliveries_per_connection: self.max_deliveries_per_connection,
            redirect: self.redirect.clone(),
            address_policy: self.address_policy,
            attachment_limit: self.attachment_limit,
        }
    }
}

impl SettingsData {
    /// Validated settings, with `secret` as the password (or OAuth2 token)
    /// when the data names a user. Every problem is reported by field. Data
    /// that holds other secrets (a proxy password, a client or DKIM key, an
    /// OAuth2 refresh token) needs them too:
    /// [`into_settings_with`](Self::into_settings_with).
    pub fn into_settings(self, secret: Option<SecretString>) -> Result<SmtpSettings, SettingsErrors> {
        self.into_settings_with(StoredSecrets {
            password: secret,
            ..StoredSecrets::default()
        })
    }

    /// [`into_settings`](Self::into_settings) with every secret a record may
    /// need ([`StoredSecrets`]): data with OAuth2 sign-in
    /// ([`oauth2_client`](Self::oauth2_client)) needs its refresh token
    /// (and the client secret of a confidential client) and makes a new
    /// `OAuth2Provider` (feature `oauth2`;
    /// without it, an `oauth2` field error); DKIM settings need their key.
    pub fn into_settings_with(self, secrets: StoredSecrets) -> Result<SmtpSettings, SettingsErrors> {
        let StoredSecrets {
            password: secret,
            proxy_password,
            client_key_pem,
            oauth2_refresh_token,
            oauth2_client_secret,
            dkim_key_pem,
        } = secrets;
        let mut errors = Vec::new();
        let tls = self.tls.parse::<TlsMode>().ok().unwrap_or_else(|| {
            errors.push(super::FieldError::new(
                "tls",
                format!("unknown TLS mode {:?}", self.tls),
            ));
            TlsMode::default()
        });
        let secs = |field: &'static str, v: f64, errors: &mut Vec<super::FieldError>| {
            let max = super::MAX_TIMEOUT.as_secs_f64();
            if v.is_finite() && v > 0.0 && v <= max {
                std::time::Duration::from_secs_f64(v)
            } else {
                errors.push(super::FieldError::new(
                    field,
                    format!("{v} is not a number of seconds in (0, {max}]"),
                ));
                std::time::Duration::from_secs(1)
            }
        };
        let t = self.timeouts;
        let timeouts = Timeouts {
            connect: secs("timeouts", t.connect, &mut errors),
            greeting: secs("timeouts", t.greeting, &mut errors),
            tls_handshake: secs("timeouts", t.tls_handshake, &mut errors),
            command: secs("timeouts", t.command, &mut errors),
            data: secs("timeouts", t.data, &mut errors),
            final_reply: secs("timeouts", t.final_reply, &mut errors),
        };
        let mut b: SmtpSettingsBuilder = SmtpSettings::builder()
            .host(self.host)
            .port(u32::from(self.port))
            .tls(tls)
            .sender(self.sender)
            .dangerous(|d| {
                d.allow_plaintext_auth(self.allow_plaintext_auth)
                    .accept_invalid_certs(self.dangerous_accept_invalid_certs)
                    .accept_invalid_hostnames(self.dangerous_accept_invalid_hostnames)
            })
            .timeouts(timeouts)
            .webpki_roots(self.webpki_roots)
            .system_roots(self.system_roots)
            .pipelining(self.pipelining)
            .chunking(self.chunking)
            .require_all_recipients(self.require_all_recipients)
            .max_deliveries_per_connection(self.max_deliveries_per_connection)
            .redirect(self.redirect)
            .address_policy(self.address_policy)
            .attachment_limit(self.attachment_limit);
        if let Some(name) = self.sender_name {
            b = b.sender_name(name);
        }
        if let Some(destination) = &self.destination {
            match crate::dev::Destination::from_url(destination) {
                Ok(d) => b = b.destination(d),
                Err(why) => errors.push(super::FieldError::new("destination", why)),
            }
        }
        if let Some(helo) = self.helo_name {
            b = b.helo_name(helo);
        }
        b = b.backup_relays(self.backup_relays);
        if let Some(v) = self.primary_retry_after {
            b = b.primary_retry_after(secs("primary_retry_after", v, &mut errors));
        }
        if let Some(v) = self.connect_attempt_delay {
            b = b.connect_attempt_delay(secs("connect_attempt_delay", v, &mut errors));
        }
        if let Some(ip) = &self.source_address {
            match ip.trim().parse::<std::net::IpAddr>() {
                Ok(ip) => b = b.source_address(ip),
                Err(_) => errors.push(super::FieldError::new(
                    "source_address",
                    format!("{ip:?} is not an IP address"),
                )),
            }
        }
        for p in &self.extra_roots_pem {
            b = b.add_root_certificates_pem(p.as_bytes());
        }
        if let Some(names) = self.auth_mechanisms {
            let mut mechs = Vec::new();
            for n in names {
                match n.parse::<Mechanism>().ok() {
                    Some(m) => mechs.push(m),
                    None => errors.push(super::FieldError::new(
                        "auth_mechanisms",
                        format!("unknown mechanism {n:?}"),
                    )),
                }
            }
            b = b.auth_mechanisms(&mechs);
        }
        match (self.client_certificate_pem, client_key_pem) {
            (Some(chain), Some(key)) => b = b.client_certificate_pem(chain, key.expose_secret()),
            (Some(_), None) => errors.push(super::FieldError::new(
                "client_key",
                "a client certificate is stored but not its private key: settings with a client certificate are stored sealed",
            )),
            (None, Some(_)) => errors.push(super::FieldError::new(
                "client_certificate",
                "a client key is given but no client certificate is stored",
            )),
            (None, None) => {}
        }
        if let Some(p) = self.proxy {
            match p.kind.parse::<ProxyKind>() {
                Ok(kind) => {
                    let mut proxy = Proxy::new(kind, p.host, p.port);
                    match (p.username, proxy_password) {
                        (Some(user), Some(password)) => proxy = proxy.with_credentials(user, password),
                        (Some(_), None) => errors.push(super::FieldError::new(
                            "proxy_password",
                            "a proxy user name is stored but no proxy password: settings with proxy credentials are stored sealed",
                        )),
                        (None, _) => {}
                    }
                    b = b.proxy(proxy);
                }
                Err(_) => errors.push(super::FieldError::new(
                    "proxy",
                    format!("unknown proxy kind {:?}: use socks5 or http", p.kind),
                )),
            }
        }
        b = dkim_from_data(b, self.dkim, dkim_key_pem, &mut errors);
        let username = match (self.oauth2_client, self.username, oauth2_refresh_token) {
            (Some(client), username, refresh_token) => {
                if secret.is_some() {
                    errors.push(super::FieldError::new(
                        "password",
                        "a password and OAuth2 sign-in cannot both be stored",
                    ));
                }
                match (username, refresh_token) {
                    (Some(username), Some(refresh_token)) => {
                        let parts = OAuth2Parts {
                            token_url: client.token_url,
                            client_id: client.client_id,
                            scopes: client.scopes,
                            username,
                            refresh_token,
                            client_secret: oauth2_client_secret,
                        };
                        match parts.provider() {
                            Ok(provider) => {
                                b.kept_credential = None;
                                b.auth = Auth::Provider(provider.clone());
                                b.oauth2 = Some(provider);
                            }
                            Err(more) => errors.extend(more),
                        }
                    }
                    (None, _) => errors.push(super::FieldError::new(
                        "username",
                        "OAuth2 sign-in is stored without the user name it is for",
                    )),
                    (Some(_), None) => errors.push(super::FieldError::new(
                        "oauth2_refresh_token",
                        "OAuth2 sign-in is stored but not its refresh token: settings with OAuth2 sign-in are stored sealed",
                    )),
                }
                None
            }
            (None, username, refresh_token) => {
                if refresh_token.is_some() || oauth2_client_secret.is_some() {
                    errors.push(super::FieldError::new(
                        "oauth2",
                        "an OAuth2 refresh token or client secret is given but no OAuth2 client is stored",
                    ));
                }
                username
            }
        };
        match (username, secret) {
            (Some(username), Some(secret)) => {
                b = b.credential(if self.oauth2 {
                    Credential::OAuth2 {
                        username,
                        token: secret,
                    }
                } else {
                    Credential::Password {
                        username,
                        password: secret,
                    }
                })
            }
            (Some(_), None) => errors.push(super::FieldError::new(
                "password",
                "a user name is stored but no password: settings with credentials are stored sealed",
            )),
            (None, _) => {}
        }
        b.build_reporting(errors)
    }
}

/// The stored DKIM settings and their key into the builder, or the field
/// errors that keep them out.
#[cfg(feature = "dkim")]
fn dkim_from_data(
    b: SmtpSettingsBuilder,
    data: Option<DkimData>,
    key_pem: Option<SecretString>,
    errors: &mut Vec<super::FieldError>,
) -> SmtpSettingsBuilder {
    use crate::dkim::{Canonicalization, DkimAlgorithm, DkimConfig};
    let data = match (data, key_pem) {
        (None, None) => return b,
        (None, Some(_)) => {
            errors.push(super::FieldError::new(
                "dkim_key",
                "a DKIM key is given but no DKIM settings are stored",
            ));
            return b;
        }
        (Some(_), None) => {
            errors.push(super::FieldError::new(
                "dkim_key",
                "DKIM settings are stored but not their private key: settings with DKIM signing are stored sealed",
            ));
            return b;
        }
        (Some(data), Some(key)) => (data, key),
    };
    let (data, key) = data;
    let Some((header, body)) = Canonicalization::pair_from_name(&data.canonicalization) else {
        errors.push(super::FieldError::new(
            "dkim",
            format!(
                "unknown DKIM canonicalization {:?}: use relaxed/relaxed, relaxed/simple, simple/relaxed or simple/simple",
                data.canonicalization
            ),
        ));
        return b;
    };
    let Some(algorithm) = DkimAlgorithm::from_name(&data.algorithm) else {
        errors.push(super::FieldError::new(
            "dkim",
            format!(
                "unknown DKIM algorithm {:?}: use rsa-sha256 or ed25519-sha256",
                data.algorithm
            ),
        ));
        return b;
    };
    let mut config = DkimConfig::new(data.domain, data.selector, key.expose_secret().as_bytes())
        .canonicalization(header, body);
    if let Some(headers) = data.headers {
        config = config.signed_headers(headers);
    }
    // The stored algorithm names the key's: another key's is refused.
    if let Ok(signer) = config.validate() {
        if signer.algorithm() != algorithm {
            errors.push(super::FieldError::new(
                "dkim_key",
                format!(
                    "the DKIM key is an {} key, but the stored settings sign with {algorithm}",
                    signer.algorithm()
                ),
            ));
        }
    }
    b.dkim(config)
}

/// Stored DKIM settings need the cargo feature `dkim`: without it they are
/// a field error, never settings that send unsigned.
#[cfg(not(feature = "dkim"))]
fn dkim_from_data(
    b: SmtpSettingsBuilder,
    data: Option<DkimData>,
    key_pem: Option<SecretString>,
    errors: &mut Vec<super::FieldError>,
) -> SmtpSettingsBuilder {
    if data.is_some() || key_pem.is_some() {
        errors.push(super::FieldError::new(
            "dkim",
            "these settings DKIM-sign messages, which needs relaymail's cargo feature `dkim`",
        ));
    }
    b
}

impl Serialize for SmtpSettings {
    /// Never the password or a client key.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_data().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SmtpSettings {
    /// Validates like the builder; settings with a user name or a client
    /// certificate fail (their password or key is not in plain data: use
    /// sealed settings).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let data = SettingsData::deserialize(deserializer)?;
        data.into_settings(None).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> SmtpSettings {
        SmtpSettings::builder()
            .host("mail.example.com")
            .port(2525)
            .tls(TlsMode::StartTlsOpportunistic)
            .sender("noreply@example.com")
            .sender_name("Example App")
            .helo_name("app.example.com")
            .timeout(std::time::Duration::from_millis(12_500))
            .auth_mechanisms(&[Mechanism::Plain, Mechanism::Login])
            .pipelining(false)
            .build()
            .expect("settings")
    }

    #[test]
    fn json_and_toml_round_trip() {
        let s = full();
        let json = serde_json::to_string_pretty(&s).expect("json");
        let back: SmtpSettings = serde_json::from_str(&json).expect("parse");
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
        let toml_text = toml::to_string(&s).expect("toml");
        let back: SmtpSettings = toml::from_str(&toml_text).expect("parse");
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
    }

    #[test]
    fn route_settings_round_trip_and_are_absent_when_default() {
        let plain = serde_json::to_value(full()).expect("json");
        for key in [
            "backup_relays",
            "primary_retry_after",
            "source_address",
            "connect_attempt_delay",
        ] {
            assert!(plain.get(key).is_none(), "{key} is not written when default");
        }
        let s = full()
            .to_builder()
            .backup_relays(["b1.example.com:26", "[2001:db8::25]"])
            .primary_retry_after(std::time::Duration::from_secs(60))
            .source_address(std::net::IpAddr::from([192, 0, 2, 10]))
            .connect_attempt_delay(std::time::Duration::from_millis(100))
            .build()
            .expect("settings");
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(
            json["backup_relays"],
            serde_json::json!(["b1.example.com:26", "[2001:db8::25]:2525"])
        );
        assert_eq!(json["source_address"], "192.0.2.10");
        assert_eq!(json["connect_attempt_delay"], 0.1);
        let back: SmtpSettings = serde_json::from_value(json.clone()).expect("parse");
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
        let toml_text = toml::to_string(&s).expect("toml");
        let back: SmtpSettings = toml::from_str(&toml_text).expect("parse");
        assert_eq!(format!("{back:?}"), format!("{s:?}"));

        let mut bad = json;
        bad["source_address"] = "not-an-ip".into();
        bad["backup_relays"] = serde_json::json!(["bad host"]);
        bad["connect_attempt_delay"] = (-1.0).into();
        let data: SettingsData = serde_json::from_value(bad).expect("data");
        let errors = data.into_settings(None).expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field()).collect();
        assert_eq!(
            fields,
            ["connect_attempt_delay", "source_address", "backup_relays"]
        );
    }

    #[test]
    fn the_password_is_never_serialised() {
        let s = full()
            .to_builder()
            .credentials("app", "Sup3r-Secret-Pw")
            .build()
            .expect("settings");
        let json = serde_json::to_string(&s).expect("json");
        let toml_text = toml::to_string(&s).expect("toml");
        for text in [&json, &toml_text] {
            assert!(!text.contains("Sup3r-Secret-Pw"), "{text}");
            assert!(
                text.contains("\"app\"") || text.contains("'app'") || text.contains("= \"app\""),
                "{text}"
            );
        }
        // Without the password the credentials cannot come back.
        let e = serde_json::from_str::<SmtpSettings>(&json).expect_err("no password");
        assert!(e.to_string().contains("password"), "{e}");
        let data: SettingsData = serde_json::from_str(&json).expect("data");
        let back = data
            .into_settings(Some("Sup3r-Secret-Pw".into()))
            .expect("with the password");
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
    }

    #[cfg(feature = "proxy")]
    #[test]
    fn a_proxy_round_trips_without_its_password() {
        let plain = full()
            .to_builder()
            .proxy(Proxy::socks5("proxy.example", 1080))
            .build()
            .expect("settings");
        let json = serde_json::to_string(&plain).expect("json");
        assert!(
            json.contains(r#""proxy":{"kind":"socks5","host":"proxy.example","port":1080}"#),
            "{json}"
        );
        let back: SmtpSettings = serde_json::from_str(&json).expect("parse");
        assert_eq!(format!("{back:?}"), format!("{plain:?}"));
        let back: SmtpSettings = toml::from_str(&toml::to_string(&plain).expect("toml")).expect("parse");
        assert_eq!(format!("{back:?}"), format!("{plain:?}"));

        let s = full()
            .to_builder()
            .proxy(Proxy::http_connect("proxy.example", 3128).with_credentials("px", "Pr0xy-Pw-9"))
            .build()
            .expect("settings");
        let json = serde_json::to_string(&s).expect("json");
        let toml_text = toml::to_string(&s).expect("toml");
        for text in [&json, &toml_text] {
            assert!(!text.contains("Pr0xy-Pw-9") && text.contains("px"), "{text}");
        }
        let e = serde_json::from_str::<SmtpSettings>(&json).expect_err("no proxy password");
        assert!(e.to_string().contains("proxy_password"), "{e}");
        let data: SettingsData = serde_json::from_str(&json).expect("data");
        let back = data
            .into_settings_with(StoredSecrets {
                proxy_password: Some("Pr0xy-Pw-9".into()),
                ..StoredSecrets::default()
            })
            .expect("with the proxy password");
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
    }

    #[test]
    fn a_stored_proxy_is_checked_like_a_typed_one() {
        let mut data = full().to_data();
        data.proxy = Some(ProxyData {
            kind: "socks4".into(),
            host: "proxy.example".into(),
            port: 1080,
            username: None,
        });
        let e = data.clone().into_settings(None).expect_err("unknown kind");
        assert!(
            e.field("proxy").is_some_and(|f| f.message().contains("socks4")),
            "{e}"
        );
        data.proxy = Some(ProxyData {
            kind: "http".into(),
            host: "bad host".into(),
            port: 0,
            username: Some("px".into()),
        });
        let e = data.into_settings(None).expect_err("invalid");
        for f in ["proxy_host", "proxy_port", "proxy_password"] {
            assert!(e.field(f).is_some(), "{f}: {e}");
        }
        assert!(
            serde_json::from_str::<ProxyData>(r#"{"kind":"http","host":"h","port":1,"colour":1}"#).is_err()
        );
    }

    #[test]
    fn invalid_data_gives_field_errors() {
        let mut data = full().to_data();
        data.host = String::new();
        data.tls = "ssl3".into();
        data.timeouts.command = -1.0;
        data.auth_mechanisms = Some(vec!["GSSAPI".into()]);
        let e = data.into_settings(None).expect_err("invalid");
        for f in ["host", "tls", "timeouts", "auth_mechanisms"] {
            assert!(e.field(f).is_some(), "{f}: {e}");
        }
        assert!(serde_json::from_str::<SettingsData>(r#"{"host":"x","colour":"blue"}"#).is_err());
    }

    #[test]
    fn a_bad_stored_sender_is_a_clear_field_error() {
        let good = serde_json::to_value(full()).expect("json");
        for bad in [
            "not an address",
            "a@b.example\r\nRSET",
            "<a@b.example>",
            "a@exa_mple.com",
        ] {
            let mut json = good.clone();
            json["sender"] = serde_json::Value::from(bad);
            let e = serde_json::from_value::<SmtpSettings>(json.clone()).expect_err("refused");
            let text = e.to_string();
            assert!(text.contains("sender: not a valid address"), "{bad:?}: {text}");
            assert!(!text.contains('\r'), "{text}");
            let data: SettingsData = serde_json::from_value(json).expect("data");
            let errors = data.into_settings(None).expect_err("refused");
            assert!(errors.field("sender").is_some(), "{errors}");
        }
    }

    /// Test keys made with openssl for these tests only (testdata/README.md).
    const CERT: &str = include_str!("testdata/ec.crt");
    const KEY: &str = include_str!("testdata/ec-sec1.key");

    #[test]
    fn a_client_certificate_is_data_and_its_key_never_is() {
        let s = full()
            .to_builder()
            .tls(TlsMode::StartTls)
            .client_certificate_pem(CERT, KEY)
            .build()
            .expect("settings");
        let data = s.to_data();
        let chain = data.client_certificate_pem.as_deref().expect("chain");
        assert_eq!(chain.trim(), CERT.trim());
        let key_line = KEY.lines().nth(1).expect("a key line");
        let json = serde_json::to_string(&s).expect("json");
        let toml_text = toml::to_string(&s).expect("toml");
        for text in [&json, &toml_text] {
            assert!(
                !text.contains(key_line) && !text.contains("PRIVATE KEY"),
                "{text}"
            );
        }
        // Without the key the certificate cannot come back.
        let e = serde_json::from_str::<SmtpSettings>(&json).expect_err("no key");
        assert!(e.to_string().contains("client_key"), "{e}");
        assert!(!e.to_string().contains(key_line), "{e}");
        let data: SettingsData = serde_json::from_str(&json).expect("data");
        let back = data
            .clone()
            .into_settings_with(StoredSecrets {
                client_key_pem: Some(KEY.into()),
                ..StoredSecrets::default()
            })
            .expect("with the key");
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
        // A key without a certificate is refused too.
        let mut bare = data;
        bare.client_certificate_pem = None;
        let e = bare
            .into_settings_with(StoredSecrets {
                client_key_pem: Some(KEY.into()),
                ..StoredSecrets::default()
            })
            .expect_err("no certificate");
        assert!(e.field("client_certificate").is_some(), "{e}");
    }

    #[test]
    fn system_roots_are_written_only_when_on() {
        let data = full().to_data();
        let json = serde_json::to_value(&data).expect("json");
        assert!(json.get("system_roots").is_none(), "{json}");
        assert!(json.get("client_certificate_pem").is_none(), "{json}");
        let mut on = data;
        on.system_roots = true;
        let json = serde_json::to_value(&on).expect("json");
        assert_eq!(json["system_roots"], serde_json::Value::Bool(true));
        let back: SettingsData = serde_json::from_value(json).expect("data");
        assert!(back.system_roots);
        let built = back.into_settings(None);
        if cfg!(feature = "system-roots") {
            assert!(built.expect("settings").tls_options().uses_system_roots());
        } else {
            assert!(built.expect_err("feature").field("system_roots").is_some());
        }
    }

    #[cfg(feature = "dkim")]
    mod dkim {
        use super::*;
        use crate::dkim::{Canonicalization, DkimConfig};

        /// Test keys (tests/dkim/keys/README.md).
        const RSA: &str = include_str!("../../tests/dkim/keys/rsa2048.pem");
        const ED25519: &str = include_str!("../../tests/dkim/keys/ed25519.pem");

        fn signing(config: DkimConfig) -> SmtpSettings {
            full().to_builder().dkim(config).build().expect("settings")
        }

        #[test]
        fn dkim_settings_are_data_and_the_key_never_is() {
            let s = signing(
                DkimConfig::new("example.com", "mail2024", RSA)
                    .canonicalization(Canonicalization::Relaxed, Canonicalization::Simple),
            );
            let data = s.to_data();
            assert_eq!(
                data.dkim,
                Some(DkimData {
                    domain: "example.com".into(),
                    selector: "mail2024".into(),
                    algorithm: "rsa-sha256".into(),
                    canonicalization: "relaxed/simple".into(),
                    headers: None,
                })
            );
            let key_line = RSA.lines().nth(1).expect("a key line");
            let json = serde_json::to_string(&s).expect("json");
            let toml_text = toml::to_string(&s).expect("toml");
            for text in [&json, &toml_text] {
                assert!(
                    !text.contains(key_line) && !text.contains("PRIVATE KEY"),
                    "{text}"
                );
                assert!(text.contains("mail2024"), "{text}");
            }
            // Without the key the settings cannot come back (never unsigned).
            let e = serde_json::from_str::<SmtpSettings>(&json).expect_err("no key");
            assert!(
                e.to_string().contains("dkim_key") && !e.to_string().contains(key_line),
                "{e}"
            );
            let data: SettingsData = serde_json::from_str(&json).expect("data");
            let back = data
                .clone()
                .into_settings_with(StoredSecrets {
                    dkim_key_pem: Some(RSA.into()),
                    ..StoredSecrets::default()
                })
                .expect("with the key");
            assert_eq!(format!("{back:?}"), format!("{s:?}"));
            // Another algorithm's key than the stored one is refused.
            let e = data
                .clone()
                .into_settings_with(StoredSecrets {
                    dkim_key_pem: Some(ED25519.into()),
                    ..StoredSecrets::default()
                })
                .expect_err("another algorithm");
            let message = e.field("dkim_key").expect("dkim_key").message();
            assert!(
                message.contains("Ed25519") || message.contains("ed25519"),
                "{message}"
            );
            // A key without DKIM settings, and bad stored values.
            let mut bare = data.clone();
            bare.dkim = None;
            let e = bare
                .into_settings_with(StoredSecrets {
                    dkim_key_pem: Some(RSA.into()),
                    ..StoredSecrets::default()
                })
                .expect_err("no settings");
            assert!(e.field("dkim_key").is_some(), "{e}");
            let mut bad = data;
            if let Some(d) = bad.dkim.as_mut() {
                d.canonicalization = "nowsp".into();
            }
            let e = bad
                .into_settings_with(StoredSecrets {
                    dkim_key_pem: Some(RSA.into()),
                    ..StoredSecrets::default()
                })
                .expect_err("bad");
            assert!(e.field("dkim").is_some(), "{e}");
        }

        #[test]
        fn custom_signed_headers_round_trip_and_defaults_are_not_written() {
            let plain =
                serde_json::to_value(signing(DkimConfig::new("example.com", "s1", ED25519))).expect("json");
            assert_eq!(
                plain["dkim"],
                serde_json::json!({"domain": "example.com", "selector": "s1", "algorithm": "ed25519-sha256", "canonicalization": "relaxed/relaxed"})
            );
            let s =
                signing(DkimConfig::new("example.com", "s1", ED25519).signed_headers(["Subject", "List-Id"]));
            let data = s.to_data();
            assert_eq!(
                data.dkim.as_ref().and_then(|d| d.headers.clone()),
                Some(vec!["from".to_owned(), "subject".into(), "list-id".into()])
            );
            let toml_text = toml::to_string(&data).expect("toml");
            let data: SettingsData = toml::from_str(&toml_text).expect("parse");
            let back = data
                .into_settings_with(StoredSecrets {
                    dkim_key_pem: Some(ED25519.into()),
                    ..StoredSecrets::default()
                })
                .expect("settings");
            assert_eq!(format!("{back:?}"), format!("{s:?}"));
            assert!(serde_json::from_value::<DkimData>(serde_json::json!({"domain": "d", "selector": "s", "algorithm": "a", "canonicalization": "c", "key": "x"})).is_err(), "no room for a key");
        }
    }

    /// A build without the feature refuses stored DKIM settings: never
    /// settings that would send unsigned.
    #[cfg(not(feature = "dkim"))]
    #[test]
    fn stored_dkim_settings_need_the_feature() {
        let mut data = full().to_data();
        data.dkim = Some(DkimData {
            domain: "example.com".into(),
            selector: "s1".into(),
            algorithm: "ed25519-sha256".into(),
            canonicalization: "relaxed/relaxed".into(),
            headers: None,
        });
        let e = data.into_settings(None).expect_err("needs the feature");
        let message = e.field("dkim").expect("dkim").message();
        assert!(message.contains("`dkim`"), "{message}");
    }

    #[test]
    fn addresses_serialize_as_strings_and_are_checked_when_read() {
        let a: crate::Address = "\"john doe\"@example.com".parse().expect("address");
        let json = serde_json::to_string(&a).expect("json");
        assert_eq!(json, r#""\"john doe\"@example.com""#);
        assert_eq!(serde_json::from_str::<crate::Address>(&json).expect("back"), a);
        let e = serde_json::from_str::<crate::Address>(r#""a@b.example>""#).expect_err("refused");
        assert!(e.to_string().contains("invalid address"), "{e}");
    }
}
