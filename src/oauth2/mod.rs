//! OAuth2 access tokens that renew themselves (feature `oauth2`): an
//! [`OAuth2Provider`] holds a refresh token and gets access tokens from the
//! authorization server's token endpoint with the refresh-token grant
//! (RFC 6749 §6), for OAUTHBEARER or XOAUTH2.
//!
//! - Each access token is cached until shortly before it expires
//!   (`expires_in` minus [a margin](OAuth2Provider::expiry_margin)), and
//!   shared by every connection.
//! - Connections that ask at once cause one request to the token endpoint
//!   (single flight): the others wait for its answer.
//! - When the SMTP server refuses a cached token anyway (revoked early, a
//!   clock off), relaymail tells the provider
//!   ([`CredentialProvider::token_rejected`]), which forgets it; AUTH is
//!   tried once more with a renewed one.
//! - A new refresh token in the endpoint's answer (rotation) replaces the
//!   old one at once, and is handed to the application to store
//!   ([`on_refresh_token_rotated`](OAuth2Provider::on_refresh_token_rotated),
//!   [`take_rotated_refresh_token`](OAuth2Provider::take_rotated_refresh_token);
//!   `ProfileStore::save_refresh_token`, feature `serde`, stores it
//!   sealed).
//! - A refresh token the endpoint refuses (`invalid_grant`: revoked,
//!   expired, consent withdrawn) is an [auth](crate::Error::is_auth) error
//!   for which [`Error::needs_reauthorization`] holds: the user must sign in
//!   again.
//!
//! No access token, refresh token or client secret appears in `Debug`
//! output, errors or traces.
//!
//! ```no_run
//! # async fn demo() -> Result<(), relaymail::Error> {
//! use std::sync::Arc;
//! use relaymail::oauth2::{OAuth2Client, OAuth2Provider};
//! use relaymail::{Mailer, SmtpSettings, TlsMode};
//!
//! // Microsoft 365: the app registration's client id, a refresh token from
//! // the user's sign-in (authorization code flow, scope SMTP.Send and
//! // offline_access).
//! let client = OAuth2Client::microsoft("contoso.onmicrosoft.com", "00000000-0000-0000-0000-000000000000");
//! let provider = OAuth2Provider::new(client, "noreply@contoso.com", std::env::var("REFRESH_TOKEN").unwrap_or_default())?;
//! let settings = SmtpSettings::builder()
//!     .host("smtp.office365.com")
//!     .tls(TlsMode::StartTls)
//!     .sender("noreply@contoso.com")
//!     .oauth2(Arc::new(provider))
//!     .build()?;
//! let mailer = Mailer::builder(settings).build()?;
//! # drop(mailer); Ok(()) }
//! ```

mod http;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::oauth2::basic::{BasicClient, BasicErrorResponseType};
use ::oauth2::url::{Host, Url};
use ::oauth2::{
    AuthType, ClientId, ClientSecret, RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::error::{Error, Kind, Stage};
use crate::future::BoxFuture;
use crate::proto::auth::Credential;
use crate::proto::reply::Escaped;
use crate::settings::{CredentialProvider, TlsOptions};

use self::http::{HttpClient, HttpError};

/// Google's token endpoint.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// The scope Gmail's SMTP server needs.
pub const GOOGLE_MAIL_SCOPE: &str = "https://mail.google.com/";

/// The scope Microsoft 365's SMTP server needs (SMTP AUTH with OAuth2).
pub const MICROSOFT_SMTP_SCOPE: &str = "https://outlook.office.com/SMTP.Send";

/// The default [`OAuth2Provider::expiry_margin`]: a token is renewed this
/// long before it expires.
pub const DEFAULT_EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// The default [`OAuth2Provider::timeout`] of one token request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a token is used when the endpoint does not say (`expires_in`
/// absent): a token the SMTP server refuses earlier is renewed anyway.
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(600);

/// The application as the authorization server knows it: where its token
/// endpoint is, its client id, its client secret (none for a public
/// client) and the scopes asked for. Public data but for the secret, which
/// `Debug` never shows.
#[derive(Clone)]
#[non_exhaustive]
pub struct OAuth2Client {
    token_url: String,
    client_id: String,
    client_secret: Option<SecretString>,
    scopes: Vec<String>,
}

impl OAuth2Client {
    /// An application with this token endpoint (`https://`, or `http://`
    /// on a loopback address for tests) and client id; no secret, no
    /// scope.
    pub fn new(token_url: impl Into<String>, client_id: impl Into<String>) -> OAuth2Client {
        OAuth2Client {
            token_url: token_url.into(),
            client_id: client_id.into(),
            client_secret: None,
            scopes: Vec::new(),
        }
    }

    /// Google (Gmail, Google Workspace): the token endpoint
    /// `https://oauth2.googleapis.com/token` and the scope
    /// `https://mail.google.com/`. Add the client secret of the OAuth
    /// client.
    pub fn google(client_id: impl Into<String>) -> OAuth2Client {
        OAuth2Client::new(GOOGLE_TOKEN_URL, client_id).scope(GOOGLE_MAIL_SCOPE)
    }

    /// Microsoft 365 (Exchange Online): the token endpoint
    /// `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token` and
    /// the scopes `https://outlook.office.com/SMTP.Send` and
    /// `offline_access` (without which no refresh token is issued).
    /// `tenant` is the directory's id or domain (or `organizations`).
    pub fn microsoft(tenant: &str, client_id: impl Into<String>) -> OAuth2Client {
        OAuth2Client::new(
            format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
            client_id,
        )
        .scope(MICROSOFT_SMTP_SCOPE)
        .scope("offline_access")
    }

    /// The client secret (confidential clients). Sent in the request body
    /// (`client_secret_post`), which Google and Microsoft accept.
    pub fn client_secret(mut self, secret: impl Into<String>) -> OAuth2Client {
        self.client_secret = Some(SecretString::from(secret.into()));
        self
    }

    /// A client secret already in a [`SecretString`]; `None`: a public
    /// client.
    pub fn with_client_secret(mut self, secret: Option<SecretString>) -> OAuth2Client {
        self.client_secret = secret;
        self
    }

    /// Adds a scope to ask for with each renewal.
    pub fn scope(mut self, scope: impl Into<String>) -> OAuth2Client {
        self.scopes.push(scope.into());
        self
    }

    /// Replaces the scopes asked for.
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> OAuth2Client {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client secret, if any.
    pub fn secret(&self) -> Option<&SecretString> {
        self.client_secret.as_ref()
    }

    /// The scopes asked for.
    pub fn requested_scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The token endpoint as a URL, or why it cannot be one: `https://`,
    /// or `http://` on a loopback address (127.0.0.0/8, `::1`,
    /// `localhost`) for tests; no user name or password in it.
    pub(crate) fn checked_url(&self) -> Result<Url, String> {
        let url = Url::parse(self.token_url.trim())
            .map_err(|e| format!("{:?} is not a URL: {e}", self.token_url))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the token endpoint URL may not hold a user name or password".to_owned());
        }
        if url.fragment().is_some() {
            return Err("the token endpoint URL may not have a #fragment".to_owned());
        }
        let loopback = match url.host() {
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            None => return Err(format!("the token endpoint URL {url} has no host")),
        };
        match url.scheme() {
            "https" => Ok(url),
            "http" if loopback => Ok(url),
            "http" => Err(format!(
                "the token endpoint {url} is not https: refresh tokens and client secrets are only sent over TLS (plain http only to a loopback address, for tests)"
            )),
            other => Err(format!("the token endpoint must be an https URL, not {other}:")),
        }
    }

    /// Checks the client: the URL ([`checked_url`](Self::checked_url)) and
    /// a client id; each problem with its field name.
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Err(why) = self.checked_url() {
            problems.push(("oauth2_token_url", why));
        }
        if self.client_id.trim().is_empty() {
            problems.push(("oauth2_client_id", "the OAuth2 client id is required".to_owned()));
        } else if self.client_id.chars().any(char::is_control) {
            problems.push((
                "oauth2_client_id",
                "the OAuth2 client id may not contain control characters".to_owned(),
            ));
        }
        if self
            .scopes
            .iter()
            .any(|s| s.is_empty() || s.chars().any(|c| c.is_control() || c == ' '))
        {
            problems.push((
                "oauth2_scopes",
                "each OAuth2 scope is one word: no spaces or control characters".to_owned(),
            ));
        }
        problems
    }
}

impl fmt::Debug for OAuth2Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Client")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// What the application is told of each rotated refresh token.
type RotationHook = Arc<dyn Fn(&SecretString) + Send + Sync>;

/// A [`CredentialProvider`] that renews OAuth2 access tokens with a
/// refresh token (RFC 6749 §6); see the [module docs](self).
pub struct OAuth2Provider {
    client: OAuth2Client,
    url: Url,
    username: String,
    margin: Duration,
    http: HttpClient,
    state: Mutex<State>,
    /// Held while a request to the token endpoint is in flight: one at a
    /// time.
    refreshing: tokio::sync::Mutex<()>,
    on_rotated: Mutex<Option<RotationHook>>,
}

struct State {
    /// The refresh token in use: the last one the endpoint gave.
    refresh_token: SecretString,
    cached: Option<Cached>,
    /// A rotated refresh token not yet taken by the application.
    rotated: Option<SecretString>,
    /// Counts the requests to the token endpoint that ended.
    generation: u64,
    /// The outcome of the last request, for those that waited for it.
    last: Option<Result<SecretString, Error>>,
}

struct Cached {
    token: SecretString,
    /// Used until then; renewed after.
    until: Instant,
}

/// An access token and what came with it.
struct Fresh {
    access_token: SecretString,
    expires_in: Option<Duration>,
    refresh_token: Option<SecretString>,
}

impl OAuth2Provider {
    /// A provider for `username` (the mailbox the tokens are for) that
    /// renews access tokens from `client`'s token endpoint with
    /// `refresh_token`.
    ///
    /// # Errors
    ///
    /// A [config](Error::is_config) error when the token endpoint is not an
    /// `https://` URL (plain `http://` is accepted for a loopback address
    /// only, for tests), the client id or user name is empty, or the
    /// refresh token is empty.
    pub fn new(
        client: OAuth2Client,
        username: impl Into<String>,
        refresh_token: impl Into<SecretString>,
    ) -> Result<OAuth2Provider, Error> {
        let username = username.into();
        let refresh_token = refresh_token.into();
        let mut problems: Vec<String> = client.problems().into_iter().map(|(_, why)| why).collect();
        if username.trim().is_empty() || username.chars().any(char::is_control) {
            problems.push(
                "the user name (the mailbox the tokens are for) is required, without control characters"
                    .to_owned(),
            );
        }
        if refresh_token.expose_secret().trim().is_empty() {
            problems.push("the refresh token is empty: sign in to get one".to_owned());
        }
        if !problems.is_empty() {
            return Err(Error::config(format!("OAuth2: {}", problems.join("; "))));
        }
        let url = client
            .checked_url()
            .map_err(|why| Error::config(format!("OAuth2: {why}")))?;
        Ok(OAuth2Provider {
            http: HttpClient {
                tls: token_endpoint_tls(&[])?,
                timeout: DEFAULT_TIMEOUT,
            },
            client,
            url,
            username,
            margin: DEFAULT_EXPIRY_MARGIN,
            state: Mutex::new(State {
                refresh_token,
                cached: None,
                rotated: None,
                generation: 0,
                last: None,
            }),
            refreshing: tokio::sync::Mutex::new(()),
            on_rotated: Mutex::new(None),
        })
    }

    /// Renew an access token this long before it expires (default
    /// [`DEFAULT_EXPIRY_MARGIN`], 60 s). A token is always used for at
    /// least half of its lifetime, however short.
    pub fn expiry_margin(mut self, margin: Duration) -> OAuth2Provider {
        self.margin = margin;
        self
    }

    /// The longest one request to the token endpoint may take, connection
    /// and TLS included (default [`DEFAULT_TIMEOUT`], 30 s).
    pub fn timeout(mut self, timeout: Duration) -> OAuth2Provider {
        self.http.timeout = timeout;
        self
    }

    /// Trusts the certificates in this PEM text as roots for the token
    /// endpoint, beside the Mozilla roots (an authorization server with a
    /// private CA).
    ///
    /// # Errors
    ///
    /// A [config](Error::is_config) error when the text holds no
    /// certificate.
    pub fn add_root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Result<OAuth2Provider, Error> {
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_ref())
            .collect::<Result<_, _>>()
            .map_err(|e| Error::config(format!("OAuth2: unreadable PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(Error::config("OAuth2: no certificate found in the PEM text"));
        }
        self.http.tls = token_endpoint_tls(&certs)?;
        Ok(self)
    }

    /// The user name tokens are for.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The application as the authorization server knows it.
    pub fn client(&self) -> &OAuth2Client {
        &self.client
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The refresh token in use now: the one given, or the last one the
    /// token endpoint rotated it to. Store this one.
    pub fn refresh_token(&self) -> SecretString {
        self.lock().refresh_token.clone()
    }

    /// The refresh token the token endpoint rotated to since the last call,
    /// if it did: store it (sealed) in place of the old one, which may no
    /// longer work. The provider uses it already.
    pub fn take_rotated_refresh_token(&self) -> Option<SecretString> {
        self.lock().rotated.take()
    }

    /// Calls `hook` with each new refresh token the token endpoint rotates
    /// to, right after the renewal that brought it (outside any lock, on
    /// the task that asked for the token: keep it short, or hand the token
    /// to a task of yours). It replaces an earlier hook.
    /// [`take_rotated_refresh_token`](Self::take_rotated_refresh_token)
    /// still gives the token too.
    ///
    /// Settings read from storage make a provider of their own each time
    /// (each load of a profile store, each reload of a mailer from it):
    /// register the hook on the one a mailer uses now,
    /// `mailer.settings().oauth2_provider()`.
    pub fn on_refresh_token_rotated(&self, hook: impl Fn(&SecretString) + Send + Sync + 'static) {
        *self.on_rotated.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(hook));
    }

    /// How many requests the token endpoint answered (or failed) so far.
    pub fn refreshes(&self) -> u64 {
        self.lock().generation
    }

    /// An access token: the cached one while it is fresh, else a new one
    /// from the token endpoint. Callers that ask while a request is in
    /// flight wait for its answer instead of sending their own.
    ///
    /// # Errors
    ///
    /// The token endpoint could not be reached (transient), refused the
    /// refresh token ([`Error::needs_reauthorization`]) or the client
    /// ([auth](Error::is_auth) errors), or sent something else than a
    /// token.
    pub async fn access_token(&self) -> Result<SecretString, Error> {
        let seen = {
            let state = self.lock();
            if let Some(cached) = state.cached.as_ref().filter(|c| Instant::now() < c.until) {
                return Ok(cached.token.clone());
            }
            state.generation
        };
        let _flight = self.refreshing.lock().await;
        {
            // A request ended while this one waited: its answer is this
            // one's too.
            let state = self.lock();
            if state.generation != seen {
                if let Some(last) = &state.last {
                    return last.clone();
                }
            }
        }
        self.refresh().await
    }

    /// One request to the token endpoint (the caller holds `refreshing`).
    async fn refresh(&self) -> Result<SecretString, Error> {
        let refresh_token = self.refresh_token();
        let started = Instant::now();
        #[cfg(feature = "tracing")]
        tracing::debug!(endpoint = %self.endpoint(), "renewing the OAuth2 access token");
        let outcome = self.request(&refresh_token).await;
        let mut rotated = None;
        let result = {
            let mut state = self.lock();
            state.generation += 1;
            let result = match outcome {
                Ok(fresh) => {
                    if let Some(new) = fresh.refresh_token {
                        if new.expose_secret() != state.refresh_token.expose_secret() {
                            state.refresh_token = new.clone();
                            state.rotated = Some(new.clone());
                            rotated = Some(new);
                        }
                    }
                    let lifetime = lifetime(fresh.expires_in, self.margin);
                    state.cached = Some(Cached {
                        token: fresh.access_token.clone(),
                        until: started.checked_add(lifetime).unwrap_or(started),
                    });
                    #[cfg(feature = "tracing")]
                    tracing::debug!(
                        endpoint = %self.endpoint(),
                        reused_for_secs = lifetime.as_secs(),
                        rotated = rotated.is_some(),
                        "OAuth2 access token renewed"
                    );
                    Ok(fresh.access_token)
                }
                Err(e) => {
                    state.cached = None;
                    #[cfg(feature = "tracing")]
                    tracing::warn!(endpoint = %self.endpoint(), error = %e, "renewing the OAuth2 access token failed");
                    Err(e)
                }
            };
            state.last = Some(result.clone());
            result
        };
        if let Some(new) = rotated {
            let hook = self
                .on_rotated
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(hook) = hook {
                hook(&new);
            }
        }
        result
    }

    /// The token endpoint's host (and port), for messages.
    fn endpoint(&self) -> String {
        match (self.url.host_str(), self.url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => self.url.to_string(),
        }
    }

    async fn request(&self, refresh_token: &SecretString) -> Result<Fresh, Error> {
        let mut client = BasicClient::new(ClientId::new(self.client.client_id.clone()))
            .set_token_uri(TokenUrl::from_url(self.url.clone()))
            .set_auth_type(AuthType::RequestBody);
        if let Some(secret) = &self.client.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        let grant = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let response = client
            .exchange_refresh_token(&grant)
            .add_scopes(self.client.scopes.iter().cloned().map(Scope::new))
            .request_async(&self.http)
            .await
            .map_err(|e| self.request_error(e))?;
        let token = response.access_token().secret();
        if token.is_empty() || token.chars().any(char::is_control) || token.contains(' ') {
            return Err(Error::protocol(
                Some(Stage::Auth),
                format!(
                    "the OAuth2 token endpoint {} gave an access token that is empty or not one word",
                    self.endpoint()
                ),
            ));
        }
        if !matches!(response.token_type(), ::oauth2::basic::BasicTokenType::Bearer) {
            return Err(Error::protocol(
                Some(Stage::Auth),
                format!(
                    "the OAuth2 token endpoint {} gave a token of type {:?}, not a bearer token",
                    self.endpoint(),
                    self.scrub(response.token_type().as_ref())
                ),
            ));
        }
        Ok(Fresh {
            access_token: SecretString::from(token.clone()),
            expires_in: response.expires_in(),
            refresh_token: response
                .refresh_token()
                .map(|t| t.secret())
                .filter(|t| !t.is_empty())
                .map(|t| SecretString::from(t.clone())),
        })
    }

    /// Server text without any secret this provider holds (a hostile or
    /// careless endpoint could echo one), shortened, escaped.
    fn scrub(&self, text: &str) -> String {
        let mut text: String = text.chars().take(300).collect();
        let refresh_token = self.refresh_token();
        let mut secrets = vec![refresh_token.expose_secret().to_owned()];
        if let Some(secret) = &self.client.client_secret {
            secrets.push(secret.expose_secret().to_owned());
        }
        if let Some(cached) = &self.lock().cached {
            secrets.push(cached.token.expose_secret().to_owned());
        }
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            text = text.replace(secret.as_str(), "[redacted]");
        }
        Escaped(&text).to_string()
    }

    fn request_error(&self, e: RequestTokenError<HttpError, ::oauth2::basic::BasicErrorResponse>) -> Error {
        let endpoint = self.endpoint();
        match e {
            RequestTokenError::ServerResponse(response) => {
                let code = response.error();
                let said = response
                    .error_description()
                    .map(|d| format!(": {}", self.scrub(d)))
                    .unwrap_or_default();
                let code_text = self.scrub(code.as_ref());
                match code {
                    BasicErrorResponseType::InvalidGrant => Error::new(
                        Kind::Auth,
                        Some(Stage::Auth),
                        format!("the OAuth2 authorization server {endpoint} refused the refresh token (invalid_grant{said})"),
                    )
                    .with_hint(SIGN_IN_AGAIN)
                    .reauthorization(),
                    BasicErrorResponseType::InvalidScope => Error::new(
                        Kind::Auth,
                        Some(Stage::Auth),
                        format!("the OAuth2 authorization server {endpoint} refused the scopes asked for (invalid_scope{said})"),
                    )
                    .with_hint("ask only for the scopes the user granted (for SMTP: https://mail.google.com/, or https://outlook.office.com/SMTP.Send and offline_access), or sign in again granting them")
                    .reauthorization(),
                    BasicErrorResponseType::InvalidClient | BasicErrorResponseType::UnauthorizedClient => Error::new(
                        Kind::Auth,
                        Some(Stage::Auth),
                        format!("the OAuth2 authorization server {endpoint} refused the application ({code_text}{said})"),
                    )
                    .with_hint("check the client id and the client secret of the application's registration (client secrets expire)"),
                    BasicErrorResponseType::Extension(other)
                        if other == "temporarily_unavailable" || other == "server_error" =>
                    {
                        Error::unavailable(format!(
                            "the OAuth2 token endpoint {endpoint} is unavailable ({code_text}{said})"
                        ))
                        .at_stage(Stage::Auth)
                    }
                    _ => Error::new(
                        Kind::Auth,
                        Some(Stage::Auth),
                        format!("the OAuth2 token endpoint {endpoint} refused to renew the access token ({code_text}{said})"),
                    ),
                }
            }
            RequestTokenError::Request(HttpError::Io(io))
                if io
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some() =>
            {
                Error::new(
                    Kind::Tls,
                    Some(Stage::Auth),
                    format!("cannot get an OAuth2 access token from {endpoint}: TLS failed: {io}"),
                )
                .with_hint("the token endpoint's certificate does not verify: check the URL, or trust its CA with add_root_certificates_pem")
            }
            RequestTokenError::Request(http) => {
                let kind = match http {
                    HttpError::Timeout(_) => Kind::Timeout,
                    HttpError::Io(_) => Kind::Io,
                    HttpError::Url(_) => Kind::Config,
                    HttpError::TooLarge | HttpError::Malformed(_) => Kind::Protocol,
                };
                let transient = http.is_transient() || kind == Kind::Protocol;
                Error::new(
                    kind,
                    Some(Stage::Auth),
                    format!("cannot get an OAuth2 access token from {endpoint}: {http}"),
                )
                .transient(transient)
            }
            RequestTokenError::Parse(e, _body) => Error::protocol(
                Some(Stage::Auth),
                format!(
                    "the OAuth2 token endpoint {endpoint} sent an answer that is not a token response (at {})",
                    self.scrub(&e.path().to_string())
                ),
            ),
            RequestTokenError::Other(text) => Error::protocol(
                Some(Stage::Auth),
                format!("the OAuth2 token endpoint {endpoint}: {}", self.scrub(&text)),
            ),
        }
    }
}

/// The hint when the refresh token is refused.
const SIGN_IN_AGAIN: &str = "the refresh token was revoked or has expired (or the user changed their password or withdrew consent): sign in again to grant access anew, and store the new refresh token";

/// The longest an access token is reused, whatever the endpoint says
/// (a hostile `expires_in` of 2^64 s must not overflow the clock).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How long an access token is used: until `margin` before it expires,
/// and at least half of its lifetime, at most [`MAX_LIFETIME`]; when the
/// endpoint does not say, [`UNKNOWN_LIFETIME`].
fn lifetime(expires_in: Option<Duration>, margin: Duration) -> Duration {
    match expires_in {
        None => UNKNOWN_LIFETIME,
        Some(expires_in) => expires_in
            .saturating_sub(margin)
            .max(expires_in / 2)
            .min(MAX_LIFETIME),
    }
}

/// The TLS configuration for the token endpoint: the Mozilla roots and
/// `extra` roots, ring, no client certificate.
fn token_endpoint_tls(
    extra: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let options = TlsOptions {
        webpki_roots: true,
        extra_roots: extra.to_vec(),
        ..TlsOptions::default()
    };
    crate::transport::tls::client_config(&options)
}

impl CredentialProvider for OAuth2Provider {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, Error>> {
        Box::pin(async move {
            let token = self.access_token().await?;
            Ok(Credential::OAuth2 {
                username: self.username.clone(),
                token,
            })
        })
    }

    /// Forgets the cached access token when it is the one refused: the next
    /// [`credential`](CredentialProvider::credential) asks the token
    /// endpoint for a new one (once, however many connections were refused
    /// at the same time). Always `true`.
    fn token_rejected(&self, rejected: &Credential) -> bool {
        if let Credential::OAuth2 { token, .. } = rejected {
            let mut state = self.lock();
            if state
                .cached
                .as_ref()
                .is_some_and(|c| c.token.expose_secret() == token.expose_secret())
            {
                state.cached = None;
            }
            #[cfg(feature = "tracing")]
            tracing::debug!(endpoint = %self.endpoint(), "the SMTP server refused the OAuth2 access token; it will be renewed");
        }
        true
    }
}

impl fmt::Debug for OAuth2Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("OAuth2Provider")
            .field("client", &self.client)
            .field("username", &self.username)
            .field("refresh_token", &"[redacted]")
            .field("access_token_cached", &state.cached.is_some())
            .field("refreshes", &state.generation)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_reused_until_shortly_before_they_expire() {
        let margin = Duration::from_secs(60);
        assert_eq!(
            lifetime(Some(Duration::from_secs(3600)), margin),
            Duration::from_secs(3540)
        );
        // Short-lived tokens: at least half their life.
        assert_eq!(
            lifetime(Some(Duration::from_secs(80)), margin),
            Duration::from_secs(40)
        );
        assert_eq!(
            lifetime(Some(Duration::from_secs(30)), margin),
            Duration::from_secs(15)
        );
        assert_eq!(lifetime(Some(Duration::ZERO), margin), Duration::ZERO);
        assert_eq!(lifetime(None, margin), UNKNOWN_LIFETIME);
        assert_eq!(lifetime(Some(Duration::MAX), margin), MAX_LIFETIME);
        assert_eq!(
            lifetime(Some(Duration::from_secs(100)), Duration::ZERO),
            Duration::from_secs(100)
        );
    }

    #[test]
    fn token_endpoints_must_be_https_except_on_loopback() {
        for ok in [
            "https://oauth2.googleapis.com/token",
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
            "http://127.0.0.1:8080/token",
            "http://127.9.9.9/token",
            "http://[::1]:9000/token",
            "http://localhost:1/t?x=1",
        ] {
            assert!(OAuth2Client::new(ok, "id").checked_url().is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("http://oauth2.example.com/token", "not https"),
            ("http://10.0.0.1/token", "not https"),
            ("http://localhost.example.com/token", "not https"),
            ("ftp://127.0.0.1/token", "https URL"),
            ("https://user:pw@example.com/token", "user name or password"),
            ("https://example.com/token#x", "fragment"),
            ("not a url", "not a URL"),
            ("", "not a URL"),
        ] {
            let e = OAuth2Client::new(bad, "id").checked_url().expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = OAuth2Provider::new(OAuth2Client::new("http://auth.example.com/t", ""), "", "")
            .expect_err("refused");
        let text = e.to_string();
        assert!(e.is_config(), "{text}");
        for part in ["not https", "client id", "user name", "refresh token is empty"] {
            assert!(text.contains(part), "{part}: {text}");
        }
    }

    #[test]
    fn well_known_services() {
        let google = OAuth2Client::google("id.apps.googleusercontent.com").client_secret("s3cret-Client");
        assert_eq!(google.token_url(), "https://oauth2.googleapis.com/token");
        assert_eq!(google.requested_scopes(), ["https://mail.google.com/"]);
        let ms = OAuth2Client::microsoft("contoso.onmicrosoft.com", "app-id");
        assert_eq!(
            ms.token_url(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            ms.requested_scopes(),
            ["https://outlook.office.com/SMTP.Send", "offline_access"]
        );
        let shown = format!("{google:?}");
        assert!(
            !shown.contains("s3cret-Client") && shown.contains("[redacted]"),
            "{shown}"
        );
        let provider = OAuth2Provider::new(google, "me@example.com", "1//refresh-Secret").expect("valid");
        let shown = format!("{provider:?} {provider:#?}");
        assert!(
            !shown.contains("refresh-Secret") && !shown.contains("s3cret-Client"),
            "{shown}"
        );
    }
}
