//! `SmtpSettings`: everything an administrator sets on an "SMTP settings"
//! page, typed and validated.
//!
//! Build settings with [`SmtpSettings::builder`]; [`SmtpSettingsBuilder::build`]
//! checks every field and returns **all** problems at once as
//! [`FieldError`]s (field name + message), so a settings form can show each
//! next to its field.
//!
//! ```
//! use relaymail::{SmtpSettings, TlsMode};
//! use std::time::Duration;
//!
//! let settings = SmtpSettings::builder()
//!     .host("smtp.example.com")
//!     .tls(TlsMode::StartTls)
//!     .sender("noreply@example.com")
//!     .sender_name("Example App")
//!     .credentials("noreply@example.com", "app-password")
//!     .timeout(Duration::from_secs(20))
//!     .build()
//!     .unwrap();
//! assert_eq!(settings.port(), 587);
//! assert!(format!("{settings:?}").contains("[redacted]"));
//!
//! let errors = SmtpSettings::builder().host("").port(0).sender("not an address").build().unwrap_err();
//! let fields: Vec<&str> = errors.iter().map(|e| e.field()).collect();
//! assert_eq!(fields, ["host", "port", "sender"]);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use secrecy::SecretString;

#[cfg(feature = "serde")]
mod data;
mod identity;
mod oauth2;
mod policy;
mod proxy;
mod route;
#[cfg(feature = "serde")]
mod sealed;
mod update;
mod url;

#[cfg(feature = "serde")]
pub use data::{DkimData, OAuth2Data, ProxyData, SettingsData, StoredSecrets, TimeoutsData};
#[cfg(all(feature = "serde", feature = "dkim"))]
pub(crate) use identity::secret_pem;
pub use identity::ClientIdentity;
pub(crate) use oauth2::{OAuth2Parts, OAuth2Source};
pub use policy::{
    AttachmentLimit, Redirect, ReportAddress, DEFAULT_MAX_DELIVERIES_PER_CONNECTION,
    MAX_DELIVERIES_PER_CONNECTION,
};
pub(crate) use proxy::{host_port, ProxyDestination, ProxyEndpoint, ENTER_PROXY_PASSWORD_AGAIN};
pub use proxy::{Proxy, ProxyKind, UnknownProxyKind};
pub use route::{Relay, DEFAULT_ATTEMPT_DELAY, DEFAULT_PRIMARY_RETRY_AFTER};
use route::{Route, RouteInput};
#[cfg(all(test, feature = "serde"))]
pub(crate) use sealed::seal_version_1;
#[cfg(feature = "serde")]
pub(crate) use sealed::{push_field, tampered};
#[cfg(feature = "serde")]
pub use sealed::{SealedSecret, SealedSettings, SecretKey};
#[cfg(feature = "dkim")]
pub use update::DkimKeyChange;
pub use update::{ClientCertificateChange, PasswordChange, SettingsUpdate};
pub use url::SmtpUrl;

use crate::dev::Destination;
use crate::error::Error;
use crate::proto::address::{Address, AddressPolicy};
use crate::proto::auth::{Credential, Mechanism};
use crate::proto::command::check_helo_name;
use crate::proto::grammar;
use identity::PendingIdentity;

/// How the connection to the relay is secured.
///
/// | mode | port | security |
/// |---|---|---|
/// | [`None`](TlsMode::None) | 25 | none: mail and (if allowed) credentials travel in clear text; anyone on the path can read and change them |
/// | [`StartTlsOpportunistic`](TlsMode::StartTlsOpportunistic) | 587 | encrypted when the server offers STARTTLS, clear text otherwise: protects against passive listeners only — an active attacker can strip the STARTTLS offer |
/// | [`StartTls`](TlsMode::StartTls) | 587 | STARTTLS required: fails closed if the server does not offer it or the upgrade fails; certificates verified |
/// | [`Implicit`](TlsMode::Implicit) | 465 | TLS from the first byte (SMTPS); certificates verified |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsMode {
    /// No TLS at all.
    None,
    /// STARTTLS when offered, clear text otherwise.
    StartTlsOpportunistic,
    /// STARTTLS required (the default): no mail or credentials in clear text.
    #[default]
    StartTls,
    /// Implicit TLS (SMTPS).
    Implicit,
}

impl TlsMode {
    /// The usual port for this mode: 25, 587 or 465.
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::StartTlsOpportunistic | TlsMode::StartTls => 587,
            TlsMode::Implicit => 465,
        }
    }

    /// The short name used in URLs and the command-line tool:
    /// `none`, `starttls-opportunistic`, `starttls`, `implicit`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::StartTlsOpportunistic => "starttls-opportunistic",
            TlsMode::StartTls => "starttls",
            TlsMode::Implicit => "implicit",
        }
    }
}

/// A TLS mode name that [`TlsMode::from_str`](std::str::FromStr::from_str)
/// does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown TLS mode: use none, starttls, starttls-opportunistic or implicit")]
#[non_exhaustive]
pub struct UnknownTlsMode;

impl std::str::FromStr for TlsMode {
    type Err = UnknownTlsMode;

    /// Parses [`as_str`](TlsMode::as_str) names (case-insensitive; `smtps`
    /// and `tls` are accepted for implicit, `plain` for none).
    fn from_str(name: &str) -> Result<TlsMode, UnknownTlsMode> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "none" | "plain" => TlsMode::None,
            "starttls-opportunistic" | "opportunistic" => TlsMode::StartTlsOpportunistic,
            "starttls" | "starttls-required" => TlsMode::StartTls,
            "implicit" | "smtps" | "tls" => TlsMode::Implicit,
            _ => return Err(UnknownTlsMode),
        })
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest timeout [`SmtpSettingsBuilder::build`] accepts for any phase:
/// 24 hours (86,400 s). Longer values are refused with a `timeouts` field
/// error: no SMTP wait needs more, and a deadline far in the future (such as
/// `Duration::MAX`) cannot be represented as an instant.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Per-phase timeouts. Each bounds one wait; a wait that exceeds it fails
/// the connection with [`Error::is_timeout`]. Each must be more than zero
/// and at most [`MAX_TIMEOUT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Resolving the host and opening the TCP connection (all addresses). Default 10 s.
    pub connect: Duration,
    /// The server's 220 greeting. Default 30 s.
    pub greeting: Duration,
    /// A TLS handshake (implicit or after STARTTLS). Default 30 s.
    pub tls_handshake: Duration,
    /// Each command reply (EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, RSET, NOOP, QUIT). Default 30 s.
    pub command: Duration,
    /// Each write to the server, including the message body. Default 60 s.
    pub data: Duration,
    /// The final reply after the end of a message (the server may scan it). Default 120 s.
    pub final_reply: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            greeting: Duration::from_secs(30),
            tls_handshake: Duration::from_secs(30),
            command: Duration::from_secs(30),
            data: Duration::from_secs(60),
            final_reply: Duration::from_secs(120),
        }
    }
}

impl Timeouts {
    /// The same timeout for every phase (the single "Timeout" field of most
    /// settings pages).
    pub fn all(d: Duration) -> Timeouts {
        Timeouts {
            connect: d,
            greeting: d,
            tls_handshake: d,
            command: d,
            data: d,
            final_reply: d,
        }
    }

    /// Every phase's timeout.
    fn phases(&self) -> [Duration; 6] {
        [
            self.connect,
            self.greeting,
            self.tls_handshake,
            self.command,
            self.data,
            self.final_reply,
        ]
    }
}

use crate::future::BoxFuture;

/// Supplies credentials when a connection is opened — for example a fresh
/// OAuth2 access token for OAUTHBEARER or XOAUTH2 (see `OAuth2Provider`,
/// feature `oauth2`), or credentials from a secret store ("default
/// credentials").
///
/// One provider serves every connection of a [`Mailer`](crate::Mailer):
/// several may ask at once.
pub trait CredentialProvider: Send + Sync + fmt::Debug {
    /// Returns the credential to authenticate the next connection with.
    fn credential(&self) -> BoxFuture<'_, Result<Credential, Error>>;

    /// Called when the server refused `rejected`, a bearer token this
    /// provider gave, as expired or invalid ([`Error::is_token_rejected`]:
    /// a `535`, or an error challenge saying `invalid_token`).
    ///
    /// Return `true` when the next [`credential`](Self::credential) call
    /// will give a renewed credential (a cached token forgotten, say):
    /// relaymail then calls it and tries AUTH once more — on the same
    /// connection when the server still allows it, else on a new one. A
    /// second refusal is reported as the authentication error it is. The
    /// default returns `false`: nothing is renewed and the refusal is
    /// reported at once.
    fn token_rejected(&self, rejected: &Credential) -> bool {
        let _ = rejected;
        false
    }
}

/// How the client authenticates.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Auth {
    /// No AUTH.
    #[default]
    None,
    /// A fixed credential (password or OAuth2 token).
    Credential(Credential),
    /// Credentials fetched per connection.
    Provider(Arc<dyn CredentialProvider>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            // Credential's Debug prints `password: "[redacted]"`.
            Auth::Credential(c) => f.debug_tuple("Credential").field(c).finish(),
            Auth::Provider(p) => f.debug_tuple("Provider").field(p).finish(),
        }
    }
}

/// TLS options beyond the mode.
#[derive(Clone, Default)]
pub struct TlsOptions {
    pub(crate) extra_roots: Vec<CertificateDer<'static>>,
    pub(crate) webpki_roots: bool,
    pub(crate) system_roots: bool,
    pub(crate) dangerous_accept_invalid_certs: bool,
    pub(crate) dangerous_accept_invalid_hostnames: bool,
    pub(crate) client_identity: Option<ClientIdentity>,
}

impl TlsOptions {
    /// Root certificates added to (or, without webpki roots, used instead of)
    /// the Mozilla root store.
    pub fn extra_roots(&self) -> &[CertificateDer<'static>] {
        &self.extra_roots
    }

    /// Whether the Mozilla (webpki-roots) root store is trusted.
    pub fn uses_webpki_roots(&self) -> bool {
        self.webpki_roots
    }

    /// Whether the operating system's trust store is trusted too (see
    /// [`SmtpSettingsBuilder::system_roots`]).
    pub fn uses_system_roots(&self) -> bool {
        self.system_roots
    }

    /// The client certificate presented when the server asks for one
    /// (mutual TLS), if any.
    pub fn client_identity(&self) -> Option<&ClientIdentity> {
        self.client_identity.as_ref()
    }

    /// Whether certificate verification is disabled.
    pub fn accepts_invalid_certs(&self) -> bool {
        self.dangerous_accept_invalid_certs
    }

    /// Whether a certificate for another name is accepted.
    pub fn accepts_invalid_hostnames(&self) -> bool {
        self.dangerous_accept_invalid_hostnames
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("extra_roots", &self.extra_roots.len())
            .field("webpki_roots", &self.webpki_roots)
            .field("system_roots", &self.system_roots)
            .field(
                "dangerous_accept_invalid_certs",
                &self.dangerous_accept_invalid_certs,
            )
            .field(
                "dangerous_accept_invalid_hostnames",
                &self.dangerous_accept_invalid_hostnames,
            )
            .field("client_identity", &self.client_identity)
            .finish()
    }
}

/// The sender: an address and an optional display name.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sender {
    /// The mailbox, e.g. `noreply@example.com`; the default From address and
    /// envelope sender. Parsed under [`AddressPolicy::Lenient`] by the
    /// settings builder.
    pub address: Address,
    /// The display name, e.g. `Example App`.
    pub name: Option<String>,
}

/// The server a stored secret was entered for, and what decides which
/// server that is: the host, port and TLS mode, and the trust settings
/// (roots trusted, the `dangerous_*` switches). A secret carried over from
/// stored settings is only kept while all of it stays the same.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServerDestination {
    host: String,
    port: u16,
    tls: TlsMode,
    webpki_roots: bool,
    system_roots: bool,
    dangerous_accept_invalid_certs: bool,
    dangerous_accept_invalid_hostnames: bool,
    extra_roots: Vec<CertificateDer<'static>>,
    /// The backup relays are servers the secret goes to too.
    backups: Vec<Relay>,
}

impl ServerDestination {
    fn new(
        host: &str,
        port: u16,
        tls: TlsMode,
        tls_options: &TlsOptions,
        backups: &[Relay],
    ) -> ServerDestination {
        ServerDestination {
            backups: backups
                .iter()
                .map(|r| Relay::new(r.host().to_ascii_lowercase(), r.port()))
                .collect(),
            host: host.to_ascii_lowercase(),
            port,
            tls,
            webpki_roots: tls_options.webpki_roots,
            system_roots: tls_options.system_roots,
            dangerous_accept_invalid_certs: tls_options.dangerous_accept_invalid_certs,
            dangerous_accept_invalid_hostnames: tls_options.dangerous_accept_invalid_hostnames,
            extra_roots: tls_options.extra_roots.clone(),
        }
    }
}

/// Everything that decides where and how a credential is sent: a
/// credential carried over from stored settings (by
/// [`SmtpSettings::to_builder`] or [`SmtpSettings::apply`] with
/// [`PasswordChange::Keep`]) is only kept while all of it stays the same.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CredentialDestination {
    server: ServerDestination,
    allow_plaintext_auth: bool,
    username: String,
    /// The proxy the connection goes through (kind, host, port), if any.
    proxy: Option<ProxyEndpoint>,
    /// OAuth2 sign-in: the authorization server its refresh token (and
    /// client secret) belong to, as the token endpoint URL and client id.
    authorization: Option<(String, String)>,
}

impl CredentialDestination {
    /// `None` without a fixed credential or OAuth2 sign-in (nothing stored
    /// to protect).
    fn new(
        server: ServerDestination,
        allow_plaintext_auth: bool,
        auth: &Auth,
        oauth2: Option<&OAuth2Source>,
        proxy: Option<&Proxy>,
    ) -> Option<CredentialDestination> {
        let (username, authorization) = match (auth, oauth2) {
            (Auth::Provider(_), Some(source)) => {
                let parts = source.parts();
                (parts.username, Some((parts.token_url, parts.client_id)))
            }
            (Auth::Credential(credential), _) => (credential.username().to_owned(), None),
            _ => return None,
        };
        Some(CredentialDestination {
            server,
            allow_plaintext_auth,
            username,
            proxy: proxy.map(Proxy::endpoint),
            authorization,
        })
    }
}

/// The `password` field error when a kept password would go to changed
/// server settings.
pub(crate) const ENTER_PASSWORD_AGAIN: &str = "enter the password again: the server settings changed";

/// The `oauth2_refresh_token` field error when a kept refresh token would
/// give access tokens to changed server settings, or be sent to another
/// authorization server.
pub(crate) const SIGN_IN_AGAIN: &str =
    "sign in again: the server settings or the authorization server (token endpoint, client id) changed";

/// The `client_key` field error when a kept client key would be used with
/// changed server settings.
pub(crate) const ENTER_CLIENT_KEY_AGAIN: &str =
    "enter the client certificate and its private key again: the server settings changed";

/// Validated settings for one relay. Cheap to clone. `Debug` never shows
/// the password or token (see [`Auth`]).
#[derive(Clone, Debug)]
pub struct SmtpSettings {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: TlsMode,
    pub(crate) tls_options: TlsOptions,
    pub(crate) sender: Sender,
    pub(crate) auth: Auth,
    /// With OAuth2 sign-in: the same provider as `auth`, for storing.
    pub(crate) oauth2: Option<Arc<OAuth2Source>>,
    pub(crate) auth_mechanisms: Option<Vec<Mechanism>>,
    pub(crate) allow_plaintext_auth: bool,
    pub(crate) helo_name: Option<String>,
    pub(crate) timeouts: Timeouts,
    pub(crate) pipelining: bool,
    pub(crate) chunking: bool,
    pub(crate) require_all_recipients: bool,
    pub(crate) destination: Destination,
    pub(crate) route: Route,
    pub(crate) proxy: Option<Proxy>,
    /// DKIM signing (feature `dkim`).
    #[cfg(feature = "dkim")]
    pub(crate) dkim: Option<crate::dkim::DkimSigner>,
    pub(crate) max_deliveries_per_connection: usize,
    pub(crate) redirect: Redirect,
    pub(crate) address_policy: AddressPolicy,
    pub(crate) attachment_limit: AttachmentLimit,
}

impl SmtpSettings {
    /// Starts a builder.
    pub fn builder() -> SmtpSettingsBuilder {
        SmtpSettingsBuilder::default()
    }

    /// The relay's host name or IP address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (the configured one, or the TLS mode's default).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS mode.
    pub fn tls(&self) -> TlsMode {
        self.tls
    }

    /// TLS options.
    pub fn tls_options(&self) -> &TlsOptions {
        &self.tls_options
    }

    /// The sender address and display name.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// How the client authenticates.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The mechanisms AUTH may use, if restricted.
    pub fn auth_mechanisms(&self) -> Option<&[Mechanism]> {
        self.auth_mechanisms.as_deref()
    }

    /// Whether credentials may be sent without TLS.
    pub fn allows_plaintext_auth(&self) -> bool {
        self.allow_plaintext_auth
    }

    /// The configured HELO name, if any (otherwise a default is chosen per
    /// connection: the machine's FQDN, else the local address literal).
    pub fn helo_name(&self) -> Option<&str> {
        self.helo_name.as_deref()
    }

    /// Per-phase timeouts.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Whether PIPELINING is used when offered.
    pub fn uses_pipelining(&self) -> bool {
        self.pipelining
    }

    /// Whether BDAT is used when CHUNKING is offered.
    pub fn uses_chunking(&self) -> bool {
        self.chunking
    }

    /// Whether a message fails (and is not sent) unless every recipient is
    /// accepted.
    pub fn requires_all_recipients(&self) -> bool {
        self.require_all_recipients
    }

    /// Where messages go: the relay (the default), or files or memory in
    /// development and tests (see [`crate::dev`]).
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// The proxy connections go through, if any (see [`Proxy`]).
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    /// Transactions a [`Mailer`](crate::Mailer) connection carries before
    /// it QUITs and a new one is opened (default 20).
    pub fn max_deliveries_per_connection(&self) -> usize {
        self.max_deliveries_per_connection
    }

    /// The redirect to report addresses (default off).
    pub fn redirect(&self) -> &Redirect {
        &self.redirect
    }

    /// How a [`Mailer`](crate::Mailer) reads the addresses of
    /// [`Email`](crate::Email)s (default strict).
    pub fn address_policy(&self) -> AddressPolicy {
        self.address_policy
    }

    /// The attachment size limit of [`Email`](crate::Email)s (default none).
    pub fn attachment_limit(&self) -> AttachmentLimit {
        self.attachment_limit
    }

    /// How messages are DKIM-signed, if they are (see
    /// [`SmtpSettingsBuilder::dkim`]).
    #[cfg(feature = "dkim")]
    pub fn dkim(&self) -> Option<&crate::dkim::DkimSigner> {
        self.dkim.as_ref()
    }

    /// The provider of OAuth2 sign-in ([`SmtpSettingsBuilder::oauth2`]),
    /// if the settings use it: its rotated refresh token, its counters.
    #[cfg(feature = "oauth2")]
    pub fn oauth2_provider(&self) -> Option<&Arc<crate::oauth2::OAuth2Provider>> {
        self.oauth2.as_ref()
    }

    fn credential_destination(&self) -> Option<CredentialDestination> {
        CredentialDestination::new(
            self.server_destination(),
            self.allow_plaintext_auth,
            &self.auth,
            self.oauth2.as_deref(),
            self.proxy.as_ref(),
        )
    }

    /// The server a secret of these settings goes to.
    fn server_destination(&self) -> ServerDestination {
        ServerDestination::new(
            &self.host,
            self.port,
            self.tls,
            &self.tls_options,
            &self.route.backups,
        )
    }

    /// A builder holding these settings (to change some and build again).
    ///
    /// The password (or token) is carried over only as long as the server
    /// stays the same: when the host, port, backup relays, TLS mode,
    /// plain-text AUTH, a `dangerous_*` flag, the trusted roots, the user
    /// name or the proxy (its kind, host or port, or whether there is one)
    /// change, [`build`](SmtpSettingsBuilder::build) reports a `password`
    /// field error ("enter the password again: the server settings
    /// changed") unless the credentials are given again. A stored password
    /// is never handed to a server it was not entered for. Likewise the
    /// proxy's password is kept only while the proxy's kind, host, port and
    /// user name stay the same (else a `proxy_password` error).
    ///
    /// The same holds for a client certificate's private key: when the
    /// host, port, backup relays, TLS mode or trust settings (roots, system
    /// roots, a `dangerous_*` flag) change, `build` reports a `client_key`
    /// field error unless [`client_certificate_pem`](SmtpSettingsBuilder::client_certificate_pem)
    /// gives it again (or [`no_client_certificate`](SmtpSettingsBuilder::no_client_certificate)
    /// removes it).
    pub fn to_builder(&self) -> SmtpSettingsBuilder {
        SmtpSettingsBuilder {
            kept_credential: self.credential_destination(),
            kept_client_key: self
                .tls_options
                .client_identity
                .as_ref()
                .map(|_| self.server_destination()),
            client_identity_pem: None,
            kept_proxy_credential: self.proxy.as_ref().and_then(Proxy::credential_destination),
            proxy: self.proxy.clone(),
            host: Some(self.host.clone()),
            port: Some(u32::from(self.port)),
            tls: self.tls,
            extra_roots_pem: Vec::new(),
            tls_options: self.tls_options.clone(),
            sender: Some(self.sender.address.to_string()),
            sender_name: self.sender.name.clone(),
            auth: self.auth.clone(),
            oauth2: self.oauth2.clone(),
            auth_mechanisms: self.auth_mechanisms.clone(),
            allow_plaintext_auth: self.allow_plaintext_auth,
            helo_name: self.helo_name.clone(),
            timeouts: self.timeouts,
            pipelining: self.pipelining,
            chunking: self.chunking,
            require_all_recipients: self.require_all_recipients,
            destination: self.destination.clone(),
            route: RouteInput::from_route(&self.route),
            #[cfg(feature = "dkim")]
            dkim: self.dkim.as_ref().map(crate::dkim::DkimSigner::to_config),
            max_deliveries_per_connection: self.max_deliveries_per_connection,
            redirect: self.redirect.clone(),
            address_policy: self.address_policy,
            attachment_limit: self.attachment_limit,
        }
    }
}

/// One invalid field: its name (as in the builder method) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    field: &'static str,
    message: String,
}

impl FieldError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> FieldError {
        FieldError {
            field,
            message: message.into(),
        }
    }

    /// The field: `host`, `port`, `sender`, `sender_name`, `username`,
    /// `password`, `helo_name`, `extra_roots`, `system_roots`,
    /// `client_certificate`, `client_key`, `timeouts`, `auth_mechanisms`,
    /// for OAuth2 sign-in `oauth2`, `oauth2_token_url`, `oauth2_client_id`,
    /// `oauth2_scopes`, `oauth2_refresh_token`, `oauth2_client_secret`,
    /// `backup_relays`, `primary_retry_after`, `source_address`,
    /// `connect_attempt_delay`, for a [`Proxy`] `proxy`, `proxy_host`,
    /// `proxy_port`, `proxy_username`, `proxy_password` (see the [`Proxy`]
    /// docs), and for DKIM signing (feature `dkim`) `dkim` (stored DKIM
    /// settings without the feature), `dkim_domain`, `dkim_selector`,
    /// `dkim_key`, `dkim_headers`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong, for a person.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem [`SmtpSettingsBuilder::build`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsErrors(Vec<FieldError>);

impl SettingsErrors {
    /// The problems, in field order.
    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.0.iter()
    }

    /// The problem for one field, if any.
    pub fn field(&self, name: &str) -> Option<&FieldError> {
        self.0.iter().find(|e| e.field == name)
    }

    /// The number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a `SettingsErrors` holds at least one problem.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a SettingsErrors {
    type Item = &'a FieldError;
    type IntoIter = std::slice::Iter<'a, FieldError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for SettingsErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid SMTP settings: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SettingsErrors {}

impl From<SettingsErrors> for Error {
    fn from(e: SettingsErrors) -> Error {
        Error::config(e.to_string())
    }
}

/// The insecure switches of [`SmtpSettingsBuilder::dangerous`]. All off by
/// default.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DangerousSettings {
    accept_invalid_certs: bool,
    accept_invalid_hostnames: bool,
    allow_plaintext_auth: bool,
}

impl DangerousSettings {
    /// Accepts any certificate, expired, self-signed or for another host.
    /// The connection is encrypted but anyone on the path can impersonate
    /// the relay and read the mail and the password. For a lab relay only;
    /// trusting its CA ([`SmtpSettingsBuilder::add_root_certificates_pem`])
    /// is the safe way.
    pub fn accept_invalid_certs(mut self, on: bool) -> Self {
        self.accept_invalid_certs = on;
        self
    }

    /// Accepts a trusted certificate issued for another host name. Any
    /// holder of a certificate from a trusted CA can impersonate the relay.
    pub fn accept_invalid_hostnames(mut self, on: bool) -> Self {
        self.accept_invalid_hostnames = on;
        self
    }

    /// Sends credentials on a connection without TLS. Off: without TLS,
    /// AUTH is refused with an error saying why. Only for a relay on a
    /// trusted network (or loopback): anyone on the path reads the password.
    pub fn allow_plaintext_auth(mut self, on: bool) -> Self {
        self.allow_plaintext_auth = on;
        self
    }
}

/// Builder for [`SmtpSettings`]; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct SmtpSettingsBuilder {
    host: Option<String>,
    port: Option<u32>,
    tls: TlsMode,
    extra_roots_pem: Vec<Vec<u8>>,
    tls_options: TlsOptions,
    sender: Option<String>,
    sender_name: Option<String>,
    auth: Auth,
    oauth2: Option<Arc<OAuth2Source>>,
    auth_mechanisms: Option<Vec<Mechanism>>,
    allow_plaintext_auth: bool,
    helo_name: Option<String>,
    timeouts: Timeouts,
    pipelining: bool,
    chunking: bool,
    require_all_recipients: bool,
    destination: Destination,
    route: RouteInput,
    /// Where the credential carried over by `to_builder` was to be sent;
    /// `None` once credentials are given anew.
    kept_credential: Option<CredentialDestination>,
    /// A client certificate and key given as PEM, read by `build`.
    client_identity_pem: Option<PendingIdentity>,
    /// The server the client key carried over by `to_builder` was entered
    /// for; `None` once a client certificate is given anew or removed.
    kept_client_key: Option<ServerDestination>,
    proxy: Option<Proxy>,
    /// Where the proxy password carried over by `to_builder` was to be
    /// sent; `None` once a proxy is given anew.
    kept_proxy_credential: Option<ProxyDestination>,
    /// DKIM signing as given, checked by `build` (feature `dkim`).
    #[cfg(feature = "dkim")]
    dkim: Option<crate::dkim::DkimConfig>,
    max_deliveries_per_connection: usize,
    redirect: Redirect,
    address_policy: AddressPolicy,
    attachment_limit: AttachmentLimit,
}

impl Default for SmtpSettingsBuilder {
    fn default() -> Self {
        SmtpSettingsBuilder {
            host: None,
            port: None,
            tls: TlsMode::default(),
            extra_roots_pem: Vec::new(),
            tls_options: TlsOptions {
                webpki_roots: true,
                ..TlsOptions::default()
            },
            sender: None,
            sender_name: None,
            auth: Auth::None,
            oauth2: None,
            auth_mechanisms: None,
            allow_plaintext_auth: false,
            helo_name: None,
            timeouts: Timeouts::default(),
            pipelining: true,
            chunking: true,
            require_all_recipients: false,
            destination: Destination::Relay,
            route: RouteInput::default(),
            kept_credential: None,
            client_identity_pem: None,
            kept_client_key: None,
            proxy: None,
            kept_proxy_credential: None,
            #[cfg(feature = "dkim")]
            dkim: None,
            max_deliveries_per_connection: DEFAULT_MAX_DELIVERIES_PER_CONNECTION,
            redirect: Redirect::default(),
            address_policy: AddressPolicy::Strict,
            attachment_limit: AttachmentLimit::default(),
        }
    }
}

impl SmtpSettingsBuilder {
    /// The relay's host name or IP address (required).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The port, 1–65535. Default: 25, 587 or 465 by TLS mode.
    pub fn port(mut self, port: u32) -> Self {
        self.port = Some(port);
        self
    }

    /// The TLS mode. Default: [`TlsMode::StartTls`] (required).
    pub fn tls(mut self, mode: TlsMode) -> Self {
        self.tls = mode;
        self
    }

    /// Trusts the certificates in this PEM text (one or more) as roots, in
    /// addition to the Mozilla roots.
    pub fn add_root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.extra_roots_pem.push(pem.as_ref().to_vec());
        self
    }

    /// Forgets the root certificates added so far (those of the settings
    /// this builder came from included): only the Mozilla roots (and the
    /// system's, when on) are trusted until others are added.
    pub fn clear_root_certificates(mut self) -> Self {
        self.extra_roots_pem.clear();
        self.tls_options.extra_roots.clear();
        self
    }

    /// Whether to trust the Mozilla root store (webpki-roots). Default true;
    /// turn it off to trust only the added roots (a private CA).
    pub fn webpki_roots(mut self, on: bool) -> Self {
        self.tls_options.webpki_roots = on;
        self
    }

    /// Whether to trust the operating system's certificate store too, beside
    /// the Mozilla roots (unless turned off) and the added roots: for a relay
    /// whose CA an administrator installed on the machine. Default false.
    ///
    /// Needs the cargo feature `system-roots`; without it `build` reports a
    /// `system_roots` field error. The store is read when a
    /// [`Connector`](crate::Connector) or [`Mailer`](crate::Mailer) is built
    /// from the settings (and on each reload), through
    /// [rustls-native-certs](https://docs.rs/rustls-native-certs): on Linux
    /// the distribution's CA bundle (as OpenSSL finds it), on macOS the
    /// keychains' trust settings, on Windows the system certificate store.
    /// On every platform the variables `SSL_CERT_FILE` (a PEM bundle) and
    /// `SSL_CERT_DIR` replace the store when set, as in OpenSSL — the usual
    /// way to give a container its CAs. Certificates the store has that
    /// rustls cannot parse are skipped; a store with no usable certificate is
    /// an error when the connector is built (with a hint), never a panic.
    /// Every certificate is then verified by rustls alike on every platform
    /// (the operating system's own verifier, its revocation checks and
    /// policies, are not used).
    ///
    /// With [`webpki_roots(false)`](Self::webpki_roots), the system store
    /// counts as the roots TLS needs.
    pub fn system_roots(mut self, on: bool) -> Self {
        self.tls_options.system_roots = on;
        self
    }

    /// A client certificate for relays that authenticate clients by
    /// certificate (mutual TLS): `chain_pem` holds the client's certificate
    /// first, then any intermediate certificates; `key_pem` the private key
    /// of the first certificate, unencrypted, in PKCS#8 (`BEGIN PRIVATE
    /// KEY`), PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE
    /// KEY`) form; RSA, ECDSA P-256/P-384 and Ed25519 keys are supported.
    /// The certificate is sent in a TLS handshake (implicit or after
    /// STARTTLS) only when the server asks for one.
    ///
    /// [`build`](Self::build) checks them: a certificate PEM without a
    /// certificate, or one it cannot read, is a `client_certificate` field
    /// error; a missing, encrypted or unusable key, or a key that does not
    /// belong to the first certificate, a `client_key` field error. No error
    /// message, `Debug` output, URL or trace ever shows the key; relaymail's
    /// copies of it are wiped from memory when dropped (the key as loaded by
    /// rustls and ring for signing lives as long as the settings). A client
    /// certificate needs TLS: with [`TlsMode::None`] it is a
    /// `client_certificate` field error.
    ///
    /// The URL form has no place for a client certificate; sealed settings
    /// (`SmtpSettings::seal`, feature `serde`) store the key sealed like
    /// the password.
    pub fn client_certificate_pem(mut self, chain_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Self {
        self.kept_client_key = None;
        self.tls_options.client_identity = None;
        self.client_identity_pem = Some(PendingIdentity {
            chain_pem: chain_pem.as_ref().to_vec(),
            key_pem: zeroize::Zeroizing::new(key_pem.as_ref().to_vec()),
        });
        self
    }

    /// No client certificate (the default).
    pub fn no_client_certificate(mut self) -> Self {
        self.kept_client_key = None;
        self.tls_options.client_identity = None;
        self.client_identity_pem = None;
        self
    }

    /// DKIM-signs every message sent with these settings (feature `dkim`):
    /// the signing domain, the selector and the private key (see
    /// [`DkimConfig`](crate::dkim::DkimConfig) and the [`dkim`](crate::dkim)
    /// module for what is signed, when, and what to publish in DNS).
    ///
    /// [`build`](Self::build) checks it: a domain that is not a valid domain
    /// name is a `dkim_domain` field error, a selector that is not DNS
    /// labels a `dkim_selector` one, and a key that is missing, encrypted,
    /// unreadable, neither RSA nor Ed25519, or an RSA key under 2048 (or
    /// over 4096) bits a `dkim_key` one; bad names in a list of signed
    /// fields are a `dkim_headers` one. No error message, `Debug` output,
    /// URL or trace ever shows the key, and relaymail's copies of it are
    /// wiped from memory when dropped.
    ///
    /// The key belongs to the domain, not to the relay: it is kept when the
    /// server settings change. A key carried over ([`SmtpSettings::to_builder`],
    /// [`SmtpSettings::apply`]) is refused when the DKIM domain or selector
    /// changes (a `dkim_key` field error asks for it again).
    ///
    /// The URL form has no place for a DKIM key; sealed settings
    /// (`SmtpSettings::seal`, feature `serde`) store it sealed like the
    /// password.
    #[cfg(feature = "dkim")]
    pub fn dkim(mut self, config: crate::dkim::DkimConfig) -> Self {
        self.dkim = Some(config);
        self
    }

    /// No DKIM signing (the default; feature `dkim`).
    #[cfg(feature = "dkim")]
    pub fn no_dkim(mut self) -> Self {
        self.dkim = None;
        self
    }

    /// The switches that weaken security, all in one place (as rustls
    /// does): each one can expose the mail or the password, and code that
    /// uses one says so where it is written.
    ///
    /// ```
    /// # use relaymail::{SmtpSettings, TlsMode};
    /// // A relay on the same machine, without TLS, that wants a login.
    /// let settings = SmtpSettings::builder()
    ///     .host("127.0.0.1")
    ///     .tls(TlsMode::None)
    ///     .sender("app@example.com")
    ///     .credentials("app", "secret")
    ///     .dangerous(|d| d.allow_plaintext_auth(true))
    ///     .build()?;
    /// # Ok::<(), relaymail::SettingsErrors>(())
    /// ```
    pub fn dangerous(mut self, f: impl FnOnce(DangerousSettings) -> DangerousSettings) -> Self {
        let d = f(DangerousSettings {
            accept_invalid_certs: self.tls_options.dangerous_accept_invalid_certs,
            accept_invalid_hostnames: self.tls_options.dangerous_accept_invalid_hostnames,
            allow_plaintext_auth: self.allow_plaintext_auth,
        });
        self.tls_options.dangerous_accept_invalid_certs = d.accept_invalid_certs;
        self.tls_options.dangerous_accept_invalid_hostnames = d.accept_invalid_hostnames;
        self.allow_plaintext_auth = d.allow_plaintext_auth;
        self
    }

    /// The sender address (required): default From and envelope sender.
    pub fn sender(mut self, address: impl Into<String>) -> Self {
        self.sender = Some(address.into());
        self
    }

    /// The sender's display name.
    pub fn sender_name(mut self, name: impl Into<String>) -> Self {
        self.sender_name = Some(name.into());
        self
    }

    /// User name and password for AUTH.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.kept_credential = None;
        self.oauth2 = None;
        self.auth = Auth::Credential(Credential::Password {
            username: username.into(),
            password: SecretString::from(password.into()),
        });
        self
    }

    /// User name and a fixed OAuth2 access token for OAUTHBEARER or XOAUTH2
    /// (see `oauth2`, feature `oauth2`, for tokens that
    /// renew themselves).
    pub fn oauth2_token(mut self, username: impl Into<String>, token: impl Into<String>) -> Self {
        self.kept_credential = None;
        self.oauth2 = None;
        self.auth = Auth::Credential(Credential::OAuth2 {
            username: username.into(),
            token: SecretString::from(token.into()),
        });
        self
    }

    /// A credential, e.g. with a password already in a [`SecretString`].
    pub fn credential(mut self, credential: Credential) -> Self {
        self.kept_credential = None;
        self.oauth2 = None;
        self.auth = Auth::Credential(credential);
        self
    }

    /// Credentials fetched from a provider for every new connection.
    pub fn credential_provider(mut self, provider: Arc<dyn CredentialProvider>) -> Self {
        self.kept_credential = None;
        self.oauth2 = None;
        self.auth = Auth::Provider(provider);
        self
    }

    /// OAuth2 sign-in with access tokens that renew themselves (feature
    /// `oauth2`): `provider` renews them from a refresh token, for every
    /// connection (OAUTHBEARER when the server offers it, else XOAUTH2).
    /// Unlike another [`credential_provider`](Self::credential_provider),
    /// its configuration can be stored: [`to_data`](SmtpSettings::to_data)
    /// keeps the token endpoint, client id, scopes and user name, and
    /// [`seal`](SmtpSettings::seal) the refresh token and client secret
    /// (feature `serde`).
    ///
    /// Like a password, the refresh token is kept by
    /// [`to_builder`](SmtpSettings::to_builder) only while the server
    /// settings stay the same (else an `oauth2_refresh_token` field error:
    /// sign in again).
    #[cfg(feature = "oauth2")]
    pub fn oauth2(mut self, provider: Arc<crate::oauth2::OAuth2Provider>) -> Self {
        self.kept_credential = None;
        self.auth = Auth::Provider(provider.clone());
        self.oauth2 = Some(provider);
        self
    }

    /// No authentication (the default).
    pub fn no_auth(mut self) -> Self {
        self.kept_credential = None;
        self.oauth2 = None;
        self.auth = Auth::None;
        self
    }

    /// Restricts AUTH to these mechanisms, in this order of preference.
    /// Default: SCRAM-SHA-256, CRAM-MD5, PLAIN, LOGIN for passwords;
    /// OAUTHBEARER, then XOAUTH2, for tokens.
    pub fn auth_mechanisms(mut self, mechanisms: &[Mechanism]) -> Self {
        self.auth_mechanisms = Some(mechanisms.to_vec());
        self
    }

    /// The EHLO/HELO name. Default: the machine's fully qualified name when
    /// it has one, else the local address as a literal such as `[192.0.2.1]`.
    /// An empty string means the default.
    pub fn helo_name(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.helo_name = (!name.trim().is_empty()).then_some(name);
        self
    }

    /// The same timeout for every phase (more than zero, at most
    /// [`MAX_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeouts = Timeouts::all(timeout);
        self
    }

    /// Per-phase timeouts (each more than zero, at most [`MAX_TIMEOUT`]).
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Use PIPELINING when offered (default true).
    pub fn pipelining(mut self, on: bool) -> Self {
        self.pipelining = on;
        self
    }

    /// Use BDAT when CHUNKING is offered (default true).
    pub fn chunking(mut self, on: bool) -> Self {
        self.chunking = on;
        self
    }

    /// Fail a message (and send nothing) unless every recipient is accepted.
    /// Default false: the message goes to the accepted recipients and the
    /// refused are reported.
    pub fn require_all_recipients(mut self, on: bool) -> Self {
        self.require_all_recipients = on;
        self
    }

    /// Where messages go (default: the relay). With a file or memory
    /// destination (see [`crate::dev`]) no network is used: the host may be
    /// left out (it defaults to `localhost`) and credentials are never used.
    pub fn destination(mut self, destination: Destination) -> Self {
        self.destination = destination;
        self
    }

    /// Transactions a [`Mailer`](crate::Mailer) connection carries before
    /// it QUITs and a new one is opened (default 20; 1 to 100,000). After a
    /// [`Mailer::reload`](crate::Mailer::reload) the new value decides
    /// whether a connection is used again.
    pub fn max_deliveries_per_connection(mut self, n: usize) -> Self {
        self.max_deliveries_per_connection = n;
        self
    }

    /// Redirect every message to report addresses (default off). Switched
    /// on without an enabled report address, `build` reports a `redirect`
    /// field error: mail is never sent to the real recipients instead.
    pub fn redirect(mut self, redirect: Redirect) -> Self {
        self.redirect = redirect;
        self
    }

    /// How a [`Mailer`](crate::Mailer) reads the addresses of
    /// [`Email`](crate::Email)s (default [`AddressPolicy::Strict`]).
    pub fn address_policy(mut self, policy: AddressPolicy) -> Self {
        self.address_policy = policy;
        self
    }

    /// The attachment size limit of [`Email`](crate::Email)s (default none;
    /// see [`AttachmentLimit`]). Links need a size limit (else an
    /// `attachment_limit` field error) and a mailer with an attachment
    /// store.
    pub fn attachment_limit(mut self, limit: AttachmentLimit) -> Self {
        self.attachment_limit = limit;
        self
    }

    /// [`build`](Self::build), with problems the caller already found
    /// reported first, together with the builder's own.
    pub(crate) fn build_reporting(self, mut errors: Vec<FieldError>) -> Result<SmtpSettings, SettingsErrors> {
        match self.build() {
            Ok(s) if errors.is_empty() => Ok(s),
            Ok(_) => Err(SettingsErrors(errors)),
            Err(SettingsErrors(more)) => {
                errors.extend(more);
                Err(SettingsErrors(errors))
            }
        }
    }

    /// Validates every field and returns the settings, or every problem found.
    pub fn build(self) -> Result<SmtpSettings, SettingsErrors> {
        let mut errors = Vec::new();
        let mut host = self.host.unwrap_or_default().trim().to_owned();
        if host.is_empty() && !self.destination.is_relay() {
            // Never contacted; a valid name keeps HELO defaults and
            // diagnostics meaningful.
            host = "localhost".to_owned();
        }
        if let Err(message) = validate_host(&host) {
            errors.push(FieldError::new("host", message));
        }
        let port = match self.port {
            None => self.tls.default_port(),
            Some(p) => match u16::try_from(p) {
                Ok(p) if p > 0 => p,
                _ => {
                    errors.push(FieldError::new(
                        "port",
                        format!("{p} is not a port: use 1 to 65535"),
                    ));
                    0
                }
            },
        };
        let sender = self.sender.unwrap_or_default().trim().to_owned();
        let sender = if sender.is_empty() {
            errors.push(FieldError::new("sender", "the sender address is required"));
            None
        } else {
            // Lenient: the sender is often an address-book entry; what it
            // accepts beyond the strict grammar is quoted on the wire.
            match Address::parse(&sender, AddressPolicy::Lenient) {
                Ok(a) => Some(a),
                Err(e) => {
                    errors.push(FieldError::new(
                        "sender",
                        format!("not a valid address: {}", e.reason()),
                    ));
                    None
                }
            }
        };
        if let Some(name) = &self.sender_name {
            if name.chars().any(char::is_control) {
                errors.push(FieldError::new(
                    "sender_name",
                    "the display name may not contain control characters",
                ));
            }
        }
        if let Auth::Credential(c) = &self.auth {
            let user = c.username();
            if user.is_empty() {
                errors.push(FieldError::new("username", "the user name is empty"));
            } else if user.chars().any(char::is_control) {
                errors.push(FieldError::new(
                    "username",
                    "the user name may not contain control characters",
                ));
            }
        }
        if let Some(mechs) = &self.auth_mechanisms {
            if mechs.is_empty() {
                errors.push(FieldError::new(
                    "auth_mechanisms",
                    "at least one mechanism is needed",
                ));
            }
        }
        if let Some(name) = &self.helo_name {
            if let Err(e) = check_helo_name(name.trim()) {
                errors.push(FieldError::new(
                    "helo_name",
                    format!("{e}; use a fully qualified domain name or an address literal like [192.0.2.1]"),
                ));
            }
        }
        let phases = self.timeouts.phases();
        if phases.contains(&Duration::ZERO) {
            errors.push(FieldError::new(
                "timeouts",
                "a timeout of zero would fail every connection",
            ));
        }
        if let Some(longest) = phases.into_iter().filter(|d| *d > MAX_TIMEOUT).max() {
            errors.push(FieldError::new(
                "timeouts",
                format!(
                    "a timeout of {} s is longer than the maximum of {} s (24 hours)",
                    longest.as_secs(),
                    MAX_TIMEOUT.as_secs()
                ),
            ));
        }
        let mut tls_options = self.tls_options;
        for pem in &self.extra_roots_pem {
            match parse_pem_certificates(pem) {
                Ok(certs) => tls_options.extra_roots.extend(certs),
                Err(message) => errors.push(FieldError::new("extra_roots", message)),
            }
        }
        if !tls_options.webpki_roots
            && !tls_options.system_roots
            && tls_options.extra_roots.is_empty()
            && self.tls != TlsMode::None
        {
            errors.push(FieldError::new(
                "extra_roots",
                "without the Mozilla roots or the system's trust store, at least one root certificate is needed",
            ));
        }
        if tls_options.system_roots && !cfg!(feature = "system-roots") {
            errors.push(FieldError::new(
                "system_roots",
                "trusting the operating system's certificate store needs relaymail's cargo feature `system-roots`",
            ));
        }
        if let Some(pending) = &self.client_identity_pem {
            match ClientIdentity::from_pem(&pending.chain_pem, &pending.key_pem) {
                Ok(identity) => tls_options.client_identity = Some(identity),
                Err(problems) => errors.extend(problems),
            }
        }
        let client_certificate_given =
            tls_options.client_identity.is_some() || self.client_identity_pem.is_some();
        if client_certificate_given && self.tls == TlsMode::None {
            errors.push(FieldError::new(
                "client_certificate",
                "a client certificate is only sent over TLS: choose STARTTLS or implicit TLS, or remove the certificate",
            ));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        // An internationalised host name is resolved and verified as A-labels.
        let host = grammar::to_ascii(&host).unwrap_or(host);
        let route = self.route.validate(&Relay::new(host.clone(), port), &mut errors);
        let proxy = self.proxy.map(|p| p.validated(&mut errors));
        if let Some(kept) = &self.kept_credential {
            let now = CredentialDestination::new(
                ServerDestination::new(&host, port, self.tls, &tls_options, &route.backups),
                self.allow_plaintext_auth,
                &self.auth,
                self.oauth2.as_deref(),
                proxy.as_ref(),
            );
            if now.as_ref() != Some(kept) {
                errors.push(if kept.authorization.is_some() {
                    FieldError::new("oauth2_refresh_token", SIGN_IN_AGAIN)
                } else {
                    FieldError::new("password", ENTER_PASSWORD_AGAIN)
                });
            }
        }
        if let Some(kept) = &self.kept_client_key {
            if tls_options.client_identity.is_some()
                && ServerDestination::new(&host, port, self.tls, &tls_options, &route.backups) != *kept
            {
                errors.push(FieldError::new("client_key", ENTER_CLIENT_KEY_AGAIN));
            }
        }
        if let Some(kept) = &self.kept_proxy_credential {
            if proxy.as_ref().and_then(Proxy::credential_destination).as_ref() != Some(kept) {
                errors.push(FieldError::new("proxy_password", ENTER_PROXY_PASSWORD_AGAIN));
            }
        }
        #[cfg(feature = "dkim")]
        let dkim = match self.dkim.as_ref().map(crate::dkim::DkimConfig::validate) {
            None => None,
            Some(Ok(signer)) => Some(signer),
            Some(Err(problems)) => {
                errors.extend(problems);
                None
            }
        };
        if self.max_deliveries_per_connection == 0 {
            errors.push(FieldError::new(
                "max_deliveries_per_connection",
                "must be at least 1: each connection carries at least one message",
            ));
        } else if self.max_deliveries_per_connection > MAX_DELIVERIES_PER_CONNECTION {
            errors.push(FieldError::new(
                "max_deliveries_per_connection",
                format!(
                    "{} is more than the maximum of {MAX_DELIVERIES_PER_CONNECTION} messages per connection",
                    self.max_deliveries_per_connection
                ),
            ));
        }
        if let Some(problem) = self.redirect.problem() {
            errors.push(FieldError::new("redirect", problem));
        }
        if let Some(problem) = self.attachment_limit.problem() {
            errors.push(FieldError::new("attachment_limit", problem));
        }
        let sender = match sender {
            Some(sender) if errors.is_empty() => sender,
            _ => return Err(SettingsErrors(errors)),
        };
        Ok(SmtpSettings {
            host,
            port,
            tls: self.tls,
            tls_options,
            sender: Sender {
                address: sender,
                name: self.sender_name.filter(|n| !n.trim().is_empty()),
            },
            auth: self.auth,
            oauth2: self.oauth2,
            auth_mechanisms: self.auth_mechanisms,
            allow_plaintext_auth: self.allow_plaintext_auth,
            helo_name: self.helo_name.map(|n| n.trim().to_owned()),
            timeouts: self.timeouts,
            pipelining: self.pipelining,
            chunking: self.chunking,
            require_all_recipients: self.require_all_recipients,
            destination: self.destination,
            route,
            proxy,
            #[cfg(feature = "dkim")]
            dkim,
            max_deliveries_per_connection: self.max_deliveries_per_connection,
            redirect: self.redirect,
            address_policy: self.address_policy,
            attachment_limit: self.attachment_limit,
        })
    }
}

fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err("no certificate found in the PEM text".into()),
        Err(e) => Err(format!("unreadable PEM certificate: {e}")),
    }
}

/// A host is an IP address (IPv6 optionally in brackets) or a DNS name
/// ([`grammar::check_host`]: the mailbox domain's label rules, plus `_`
/// and a final dot; U-labels are connected to as A-labels).
pub(crate) fn validate_host(host: &str) -> Result<(), String> {
    grammar::check_host(host).map_err(|e| match e {
        grammar::DomainError::Empty => "the server host is required".to_owned(),
        e => format!("{host:?} is not a valid host name or IP address: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SmtpSettingsBuilder {
        SmtpSettings::builder()
            .host("smtp.example.com")
            .sender("noreply@example.com")
    }

    #[test]
    fn default_ports_follow_the_tls_mode() {
        for (mode, port) in [
            (TlsMode::None, 25),
            (TlsMode::StartTlsOpportunistic, 587),
            (TlsMode::StartTls, 587),
            (TlsMode::Implicit, 465),
        ] {
            assert_eq!(base().tls(mode).build().expect("valid").port(), port);
        }
        assert_eq!(base().port(2525).build().expect("valid").port(), 2525);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let errors = SmtpSettings::builder()
            .host("bad host!")
            .port(70000)
            .sender("a@b.example\r\nRCPT TO:<x@y>")
            .sender_name("x\ny")
            .credentials("", "pw")
            .helo_name("not valid")
            .timeout(Duration::ZERO)
            .add_root_certificates_pem("not pem")
            .build()
            .expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(FieldError::field).collect();
        assert_eq!(
            fields,
            [
                "host",
                "port",
                "sender",
                "sender_name",
                "username",
                "helo_name",
                "timeouts",
                "extra_roots"
            ]
        );
        assert!(errors
            .field("port")
            .is_some_and(|e| e.message().contains("70000")));
        assert!(errors.to_string().starts_with("invalid SMTP settings: host:"));
    }

    #[test]
    fn required_fields() {
        let errors = SmtpSettings::builder().build().expect_err("invalid");
        assert!(errors.field("host").is_some());
        assert!(errors.field("sender").is_some());
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn hosts() {
        for ok in [
            "smtp.example.com",
            "localhost",
            "127.0.0.1",
            "::1",
            "[::1]",
            "mail_relay.corp",
            "x.example.",
        ] {
            assert!(validate_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "-a.example",
            "a b",
            "smtp.example.com:587",
            "ex ample",
            "a/b",
        ] {
            assert!(validate_host(bad).is_err(), "{bad}");
        }
        assert_eq!(base().host("[::1]").build().expect("valid").host(), "::1");
    }

    use crate::proto::command::{check_mailbox, Argument};

    /// The three layers that read a domain — `Address::parse`, the wire
    /// check of MAIL/RCPT, and the settings' host validation — give the
    /// same verdict, because they call the same grammar.
    fn verdicts(domain: &str) -> (bool, bool, bool) {
        let address = format!("ana@{domain}");
        (
            crate::Address::parse(&address, crate::AddressPolicy::Strict).is_ok(),
            check_mailbox(&address, Argument::ForwardPath).is_ok(),
            validate_host(domain).is_ok(),
        )
    }

    #[test]
    fn one_grammar_for_every_layer() {
        let long_utf8_short_a_label = "ü".repeat(32); // 64 bytes, xn--… well under 63
        let long_a_label = "bücher".repeat(11); // its A-label is over 63 bytes
        for (domain, ok) in [
            ("example.net", true),
            ("sub.example.co.uk", true),
            ("bücher.example", true),
            (&*format!("{long_utf8_short_a_label}.example"), true),
            (&*format!("{long_a_label}.example"), false),
            (&*format!("{}.example", "a".repeat(63)), true),
            (&*format!("{}.example", "a".repeat(64)), false),
            ("example..net", false),
            ("-example.net", false),
            ("example-.net", false),
            ("exa mple.net", false),
            ("exa/mple.net", false),
            ("", false),
        ] {
            assert_eq!(verdicts(domain), (ok, ok, ok), "{domain:?}");
        }
        // Where the layers differ on purpose: host names may hold '_' and
        // bare IP addresses; mailbox domains take address literals.
        assert_eq!(verdicts("mail_relay.corp"), (false, false, true));
        assert_eq!(verdicts("[192.0.2.1]"), (true, true, true));
        assert_eq!(verdicts("192.0.2.1"), (true, true, true));
        assert_eq!(
            base().host("smtp.bücher.example").build().expect("valid").host(),
            "smtp.xn--bcher-kva.example",
            "an IDN host is connected to as A-labels"
        );
    }

    mod agreement {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// For any domain, the address layer and the wire check agree,
            /// and host validation agrees on every domain without '_'
            /// (addresses refuse it, hosts allow it).
            #[test]
            fn layers_agree(domain in "[a-z0-9ü_.\\-\\[\\]:]{0,80}") {
                let (address, wire, host) = verdicts(&domain);
                prop_assert_eq!(address, wire, "{:?}", domain);
                let literal = domain.starts_with('[') || domain.parse::<std::net::IpAddr>().is_ok();
                if !domain.contains('_') && !literal && !domain.ends_with('.') {
                    prop_assert_eq!(address, host, "{:?}", domain);
                }
            }
        }
    }

    #[test]
    fn password_never_in_debug() {
        let s = base()
            .credentials("user", "hunter2-very-secret")
            .build()
            .expect("valid");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("password: \"[redacted]\""), "{dbg}");
        let s = base()
            .oauth2_token("user", "ya29.token-secret")
            .build()
            .expect("valid");
        assert!(!format!("{s:?}").contains("ya29"));
    }

    #[test]
    fn empty_helo_means_default() {
        assert_eq!(base().helo_name("  ").build().expect("valid").helo_name(), None);
        assert_eq!(
            base()
                .helo_name("app.example.com")
                .build()
                .expect("valid")
                .helo_name(),
            Some("app.example.com")
        );
        assert!(base().helo_name("[192.0.2.1]").build().is_ok());
    }

    #[test]
    fn huge_timeouts_are_field_errors_not_panics() {
        for huge in [Duration::MAX, MAX_TIMEOUT + Duration::from_nanos(1)] {
            let e = base().timeout(huge).build().expect_err("too long");
            let message = e.field("timeouts").expect("timeouts error").message();
            assert!(message.contains("maximum of 86400 s"), "{message}");
            let one_phase = Timeouts {
                final_reply: huge,
                ..Timeouts::default()
            };
            let e = base().timeouts(one_phase).build().expect_err("too long");
            assert_eq!(e.len(), 1, "{e}");
            assert!(e.field("timeouts").is_some(), "{e}");
        }
        let s = base()
            .timeout(MAX_TIMEOUT)
            .build()
            .expect("the maximum itself is fine");
        assert_eq!(s.timeouts().connect, MAX_TIMEOUT);
    }

    #[test]
    fn timeout_shortcut_sets_every_phase() {
        let s = base().timeout(Duration::from_secs(7)).build().expect("valid");
        assert_eq!(*s.timeouts(), Timeouts::all(Duration::from_secs(7)));
    }

    #[test]
    fn tls_mode_names_round_trip() {
        for m in [
            TlsMode::None,
            TlsMode::StartTlsOpportunistic,
            TlsMode::StartTls,
            TlsMode::Implicit,
        ] {
            assert_eq!(m.as_str().parse(), Ok(m));
        }
        assert_eq!("SMTPS".parse(), Ok(TlsMode::Implicit));
        assert_eq!("ssl3".parse::<TlsMode>(), Err(UnknownTlsMode));
    }

    #[test]
    fn private_ca_only_needs_a_root() {
        let e = base().webpki_roots(false).build().expect_err("no roots");
        assert!(e.field("extra_roots").is_some());
        assert!(base().webpki_roots(false).tls(TlsMode::None).build().is_ok());
    }

    #[test]
    fn system_roots_count_as_the_roots_tls_needs() {
        let built = base().webpki_roots(false).system_roots(true).build();
        if cfg!(feature = "system-roots") {
            let s = built.expect("the system's store is a root store");
            assert!(s.tls_options().uses_system_roots() && !s.tls_options().uses_webpki_roots());
        } else {
            let e = built.expect_err("needs the feature");
            assert_eq!(e.len(), 1, "{e}");
            let message = e.field("system_roots").expect("system_roots").message();
            assert!(message.contains("`system-roots`"), "{message}");
        }
        assert!(!base().build().expect("valid").tls_options().uses_system_roots());
    }

    /// Test keys made with openssl for these tests only (testdata/README.md).
    const CERT: &str = include_str!("testdata/ec.crt");
    const KEY: &str = include_str!("testdata/ec-sec1.key");
    const OTHER_KEY: &str = include_str!("testdata/rsa-pkcs1.key");

    /// A line of the key that appears nowhere else.
    fn key_line(key: &str) -> &str {
        key.lines().nth(1).expect("a key line")
    }

    #[test]
    fn a_client_certificate_is_checked_and_its_key_never_shown() {
        let builder = base().client_certificate_pem(CERT, KEY);
        let s = builder.clone().build().expect("valid");
        let identity = s.tls_options().client_identity().expect("identity");
        assert_eq!(identity.subject(), "CN=relaymail unit test EC, O=Example Org");
        for shown in [
            format!("{builder:?}"),
            format!("{s:?}"),
            format!("{:?}", s.tls_options()),
            format!("{identity:?}"),
            format!("{:?}", s.to_builder()),
        ] {
            assert!(!shown.contains(key_line(KEY)), "{shown}");
        }
        // A key of another certificate, with other problems: all reported,
        // none showing a key.
        let e = base()
            .port(0)
            .client_certificate_pem(CERT, OTHER_KEY)
            .build()
            .expect_err("mismatch");
        let fields: Vec<&str> = e.iter().map(FieldError::field).collect();
        assert_eq!(fields, ["port", "client_key"]);
        let shown = format!("{e}\n{e:?}");
        assert!(
            !shown.contains(key_line(OTHER_KEY)) && !shown.contains(key_line(KEY)),
            "{shown}"
        );
        // Only over TLS.
        let e = base()
            .tls(TlsMode::None)
            .client_certificate_pem(CERT, KEY)
            .build()
            .expect_err("no TLS");
        assert!(e.field("client_certificate").is_some(), "{e}");
        // Removed again.
        let s = s.to_builder().no_client_certificate().build().expect("valid");
        assert!(s.tls_options().client_identity().is_none());
    }

    #[test]
    fn a_kept_client_key_never_follows_a_server_change() {
        let s = base().client_certificate_pem(CERT, KEY).build().expect("valid");
        let cases: Vec<(&str, SmtpSettingsBuilder)> = vec![
            ("host", s.to_builder().host("attacker.example.net")),
            ("port", s.to_builder().port(2525)),
            ("tls", s.to_builder().tls(TlsMode::Implicit)),
            (
                "webpki_roots",
                s.to_builder().webpki_roots(false).add_root_certificates_pem(CERT),
            ),
            ("extra roots", s.to_builder().add_root_certificates_pem(CERT)),
            ("system_roots", s.to_builder().system_roots(true)),
            (
                "dangerous_accept_invalid_certs",
                s.to_builder().dangerous(|d| d.accept_invalid_certs(true)),
            ),
            (
                "dangerous_accept_invalid_hostnames",
                s.to_builder().dangerous(|d| d.accept_invalid_hostnames(true)),
            ),
        ];
        for (what, builder) in cases {
            let e = builder.build().expect_err(what);
            assert_eq!(
                e.field("client_key").map(FieldError::message),
                Some(ENTER_CLIENT_KEY_AGAIN),
                "{what}: {e}"
            );
        }
        // What is not about the server keeps it; entering it again or
        // removing it ends the rule.
        assert!(s
            .to_builder()
            .sender_name("App")
            .helo_name("h.example")
            .build()
            .is_ok());
        assert!(s.to_builder().host(" SMTP.example.com ").build().is_ok());
        assert!(s
            .to_builder()
            .dangerous(|d| d.allow_plaintext_auth(true))
            .build()
            .is_ok());
        assert!(s
            .to_builder()
            .host("other.example.net")
            .client_certificate_pem(CERT, KEY)
            .build()
            .is_ok());
        assert!(s
            .to_builder()
            .host("other.example.net")
            .no_client_certificate()
            .build()
            .is_ok());
    }

    #[test]
    fn system_roots_are_a_trust_change_for_a_kept_password() {
        let s = base().credentials("app", "kept-secret").build().expect("valid");
        let e = s.to_builder().system_roots(true).build().expect_err("changed");
        assert_eq!(
            e.field("password").map(FieldError::message),
            Some(ENTER_PASSWORD_AGAIN),
            "{e}"
        );
    }

    #[test]
    fn to_builder_round_trips() {
        let s = base()
            .port(2525)
            .sender_name("App")
            .helo_name("h.example")
            .build()
            .expect("valid");
        let again = s.to_builder().build().expect("valid");
        assert_eq!(format!("{s:?}"), format!("{again:?}"));
    }
}
