//! The SMTP settings page, ready to mount (feature `admin`): an
//! [`axum::Router`] with the screens every application that sends mail
//! builds by hand (seeds 000–004) — named profiles, the edit form with every
//! setting, "test connection" and "send test email" with the stage-by-stage
//! report, and the outbox.
//!
//! # The page has no login of its own
//!
//! **Whoever can reach this router can change where your application's mail
//! goes and read the addresses in its outbox.** Mount it under your own path
//! and behind your own authentication and authorization (a middleware layer
//! that only lets administrators through), exactly as you would an admin
//! screen of your own:
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<relaymail::profiles::ProfileStore>, mailer: relaymail::Mailer) {
//! use axum::{middleware, Router};
//! use relaymail::admin::{self, AdminState};
//!
//! async fn admins_only(
//!     request: axum::extract::Request,
//!     next: middleware::Next,
//! ) -> axum::response::Response {
//!     // Your application's session check goes here; this one refuses all.
//!     let is_admin = false;
//!     if !is_admin {
//!         return axum::http::StatusCode::FORBIDDEN.into_response();
//!     }
//!     next.run(request).await
//! }
//! # use axum::response::IntoResponse;
//!
//! let page = admin::router(AdminState::new(store).with_mailer(mailer));
//! let app: Router = Router::new()
//!     .nest("/admin/smtp", page)
//!     .layer(middleware::from_fn(admins_only));
//! # let _ = app;
//! # }
//! ```
//!
//! # What it does
//!
//! - **Profiles** (`GET /`): the list with name, host, TLS mode and whether
//!   each is enabled; the one in use (the first enabled) is marked. Each can
//!   be edited, enabled or disabled, moved up or down, or deleted.
//! - **The edit form** (`GET /profiles/new`, `GET /profiles/{name}`): host,
//!   port (empty: the TLS mode's port), TLS mode, sender address and name,
//!   HELO name, timeout, sign-in and user name, the password (never shown:
//!   left empty it is kept — only while the server stays the same —, typed
//!   it is replaced, or cleared), trusted CA certificates (PEM, pasted or
//!   uploaded), deliveries per connection, redirect to report addresses,
//!   the address policy, the attachment limit and links, and whether a
//!   connection test must pass before a save. Errors appear beside their
//!   fields, in the words of [`SettingsErrors`](crate::settings::SettingsErrors).
//!   Every save checks the version the form was opened at: when another
//!   administrator saved in between, nothing is written and the page shows
//!   what differs.
//! - **Test buttons** on the form use its unsaved values (a kept password
//!   included) and show the [`diagnose::Report`](crate::diagnose::Report):
//!   every stage with its time and replies, TLS version and certificate
//!   names, the failing stage and its hint. Test emails are limited per
//!   profile ([`AdminState::with_test_email_limit`]).
//! - **The outbox** (`GET /outbox`): waiting and failed drafts, a page at a
//!   time, with their last error; a draft's envelope, size and headers
//!   (its body only when asked for); retry now, retry all, delete. A save that fixes the
//!   settings releases the drafts that waited on a settings error
//!   ([`ProfileStore::save_and_release`](crate::profiles::ProfileStore::save_and_release))
//!   and says how many.
//!
//! # Security
//!
//! Every POST carries a CSRF token (the HMAC, under a per-process key, of a
//! random `SameSite=Strict`, `HttpOnly` cookie); a POST without a valid one
//! gets 403 and changes nothing. Every response has a strict
//! `Content-Security-Policy` (no scripts at all, styles from this router
//! only, no framing), `Cache-Control: no-store`, `X-Content-Type-Options:
//! nosniff` and `Referrer-Policy: same-origin`. Every value is HTML-escaped.
//! No password, key or token is ever written into a page, a redirect or a
//! log. The pages work without JavaScript (they have none).

mod csrf;
mod form;
mod outbox;
mod views;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, OriginalUri, Path, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};

use crate::mailer::Mailer;
use crate::profiles::{ProfileStore, Profiles};

/// What the settings page works on: the profile store, and optionally the
/// application's [`Mailer`] (for its outbox, and so that a save releases its
/// drafts). See the [module docs](self).
#[derive(Clone)]
pub struct AdminState {
    store: Arc<ProfileStore>,
    mailer: Option<Mailer>,
    test_limit: (usize, Duration),
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("store", &self.store)
            .field("mailer", &self.mailer.is_some())
            .field("test_limit", &self.test_limit)
            .finish()
    }
}

impl AdminState {
    /// The page for the profiles in `store`. Follow the store with your
    /// mailers ([`ProfileStore::mailer`], [`ProfileStore::follow`]) so that
    /// saves reach them.
    pub fn new(store: Arc<ProfileStore>) -> AdminState {
        AdminState {
            store,
            mailer: None,
            test_limit: (5, Duration::from_secs(60)),
        }
    }

    /// The application's mailer: the outbox page shows its
    /// [outbox](Mailer::outbox), and its deliverer is woken after a retry.
    pub fn with_mailer(mut self, mailer: Mailer) -> AdminState {
        self.mailer = Some(mailer);
        self
    }

    /// At most `count` test emails per profile in any `per` (default 5 per
    /// minute): the button sends real mail, to any address typed in. A
    /// count of 0 turns test emails off.
    pub fn with_test_email_limit(mut self, count: usize, per: Duration) -> AdminState {
        self.test_limit = (count, per);
        self
    }
}

/// The state the handlers share.
pub(crate) struct Inner {
    store: Arc<ProfileStore>,
    mailer: Option<Mailer>,
    csrf: Option<csrf::CsrfKey>,
    limit: (usize, Duration),
    sent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

type Shared = Arc<Inner>;

impl Inner {
    /// Counts a test email for `profile`; `Err(wait)` when over the limit.
    fn allow_test_email(&self, profile: &str) -> Result<(), Duration> {
        let (count, per) = self.limit;
        if count == 0 {
            return Err(per);
        }
        let now = Instant::now();
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        // Forget profiles whose window has passed (bounded memory).
        sent.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < per));
        let times = sent.entry(profile.to_owned()).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= per) {
            times.pop_front();
        }
        if times.len() >= count {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(per.saturating_sub(now.duration_since(oldest)));
        }
        times.push_back(now);
        Ok(())
    }
}

/// The settings page as a router, to mount under the application's own path
/// and behind its own authentication (see the [module docs](self)).
pub fn router(state: AdminState) -> Router {
    let inner = Arc::new(Inner {
        store: state.store,
        mailer: state.mailer,
        csrf: csrf::CsrfKey::random(),
        limit: state.test_limit,
        sent: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/", get(list))
        .route("/style.css", get(style))
        .route("/profiles/new", get(form::new_form).post(form::submit_new))
        .route("/profiles/{name}", get(form::edit_form).post(form::submit_edit))
        .route("/profiles/{name}/{action}", post(list_action))
        .route("/outbox", get(outbox::page))
        .route("/outbox/retry-all", post(outbox::retry_all))
        .route("/outbox/{area}/{id}", get(outbox::inspect))
        .route("/outbox/{area}/{id}/{action}", post(outbox::action))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(inner)
}

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Per request: where the router is mounted, and the CSRF cookie.
pub(crate) struct Ctx {
    /// The mount point, without a trailing slash ("" at the root).
    base: String,
    /// The CSRF cookie's value (new when the request had none).
    cookie: String,
    /// Whether the cookie must be set in the response.
    new_cookie: bool,
    inner: Shared,
}

impl FromRequestParts<Shared> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Shared,
    ) -> Result<Ctx, Response> {
        let inner_path = parts.uri.path().to_owned();
        let full = parts
            .extensions
            .get::<OriginalUri>()
            .map(|u| u.0.path().to_owned())
            .unwrap_or_else(|| inner_path.clone());
        let base = mount_point(&full, &inner_path);
        let (cookie, new_cookie) = match csrf::cookie_value(&parts.headers) {
            Some(c) => (c, false),
            None => match csrf::new_cookie() {
                Some(c) => (c, true),
                None => return Err(no_randomness()),
            },
        };
        if state.csrf.is_none() {
            return Err(no_randomness());
        }
        Ok(Ctx {
            base,
            cookie,
            new_cookie,
            inner: Arc::clone(state),
        })
    }
}

fn no_randomness() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the operating system's random number generator failed",
    )
        .into_response()
}

/// The mount point: the original path without the router's own part.
fn mount_point(full: &str, inner: &str) -> String {
    let base = if inner == "/" {
        full.trim_end_matches('/')
    } else {
        full.strip_suffix(inner).unwrap_or("")
    };
    base.trim_end_matches('/').to_owned()
}

impl Ctx {
    /// A URL under the mount point (`path` starts with `/`). The list is
    /// the mount point itself (`/admin/smtp`, not `/admin/smtp/`: a nested
    /// router's root has no trailing slash).
    fn url(&self, path: &str) -> String {
        match path.strip_prefix('/') {
            Some(rest) if (rest.is_empty() || rest.starts_with('?')) && !self.base.is_empty() => {
                format!("{}{rest}", self.base)
            }
            _ => format!("{}{path}", self.base),
        }
    }

    /// The token for this request's forms.
    fn token(&self) -> String {
        self.inner
            .csrf
            .as_ref()
            .map(|k| k.token(&self.cookie))
            .unwrap_or_default()
    }

    /// Whether a POST's token is valid (never when the request had no cookie).
    fn verify(&self, token: Option<&str>) -> bool {
        !self.new_cookie
            && self
                .inner
                .csrf
                .as_ref()
                .zip(token)
                .is_some_and(|(k, t)| k.verify(&self.cookie, t))
    }

    /// A page, with the cookie set when it is new.
    fn page(&self, status: StatusCode, markup: maud::Markup) -> Response {
        let mut response = (status, Html(markup.into_string())).into_response();
        self.set_cookie(&mut response);
        response
    }

    fn set_cookie(&self, response: &mut Response) {
        if self.new_cookie {
            let path = if self.base.is_empty() { "/" } else { &self.base };
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{}={}; Path={path}; HttpOnly; SameSite=Strict",
                csrf::COOKIE,
                self.cookie
            )) {
                response.headers_mut().append(header::SET_COOKIE, v);
            }
        }
    }

    /// 303 to `path` under the mount point.
    fn see_other(&self, path: &str) -> Response {
        Redirect::to(&self.url(path)).into_response()
    }

    /// The refusal of a POST without a valid token.
    fn forbidden(&self) -> Response {
        self.page(StatusCode::FORBIDDEN, views::forbidden(self))
    }
}

/// A path segment, percent-encoded (profile names may hold anything).
fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], views::STYLE).into_response()
}

async fn not_found(ctx: Ctx) -> Response {
    ctx.page(
        StatusCode::NOT_FOUND,
        views::message(&ctx, "Not found", "There is no such page."),
    )
}

/// What a redirect back to the list says.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Flash {
    #[serde(default)]
    saved: Option<String>,
    #[serde(default)]
    deleted: Option<String>,
    #[serde(default)]
    changed: Option<String>,
    #[serde(default)]
    released: Option<usize>,
    #[serde(default)]
    conflict: Option<u8>,
    #[serde(default)]
    retried: Option<usize>,
    #[serde(default)]
    removed: Option<u8>,
}

impl Flash {
    fn text(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(name) = &self.saved {
            parts.push(format!("Saved “{name}”."));
        }
        if let Some(name) = &self.deleted {
            parts.push(format!("Deleted “{name}”."));
        }
        if let Some(name) = &self.changed {
            parts.push(format!("Changed “{name}”."));
        }
        match self.released {
            Some(0) | None => {}
            Some(1) => parts.push("1 draft that waited for a settings fix is due now.".to_owned()),
            Some(n) => parts.push(format!("{n} drafts that waited for a settings fix are due now.")),
        }
        if self.conflict.is_some() {
            parts.push(
                "Nothing was changed: someone else saved the profiles in the meantime. This is the current list."
                    .to_owned(),
            );
        }
        match self.retried {
            None => {}
            Some(1) => parts.push("1 draft is due now.".to_owned()),
            Some(n) => parts.push(format!("{n} drafts are due now.")),
        }
        if self.removed.is_some() {
            parts.push("The draft was deleted.".to_owned());
        }
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

async fn list(ctx: Ctx, Query(flash): Query<Flash>) -> Response {
    match ctx.inner.store.load() {
        Ok(profiles) => ctx.page(StatusCode::OK, views::list(&ctx, &profiles, flash.text())),
        Err(e) => ctx.page(
            StatusCode::INTERNAL_SERVER_ERROR,
            views::message(&ctx, "The profiles cannot be read", &e.to_string()),
        ),
    }
}

/// The hidden fields of a list action's form.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ListAction {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    version: Option<u64>,
}

async fn list_action(
    ctx: Ctx,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<ListAction>,
) -> Response {
    if !ctx.verify(form.csrf.as_deref()) {
        return ctx.forbidden();
    }
    let store = &ctx.inner.store;
    let mut profiles = match store.load() {
        Ok(p) => p,
        Err(e) => return error_page(&ctx, &e),
    };
    if form.version != Some(profiles.version()) {
        return ctx.see_other("/?conflict=1");
    }
    let changed = match action.as_str() {
        "delete" => profiles.remove(&name).map(|_| "deleted"),
        "enable" => profiles.set_enabled(&name, true).map(|()| "changed"),
        "disable" => profiles.set_enabled(&name, false).map(|()| "changed"),
        "up" | "down" => move_profile(&mut profiles, &name, action == "up").map(|()| "changed"),
        _ => return not_found(ctx).await,
    };
    let said = match changed {
        Ok(said) => said,
        Err(e) => return error_page(&ctx, &e),
    };
    match store.save_and_release(&mut profiles).await {
        Ok(released) => ctx.see_other(&format!("/?{said}={}&released={released}", encode_segment(&name))),
        Err(e) if e.is_conflict() => ctx.see_other("/?conflict=1"),
        Err(e) => error_page(&ctx, &e),
    }
}

fn move_profile(profiles: &mut Profiles, name: &str, up: bool) -> Result<(), crate::Error> {
    let index = profiles
        .iter()
        .position(|p| p.name() == name)
        .ok_or_else(|| crate::Error::config(format!("there is no profile named {name:?}")))?;
    let to = if up {
        index.saturating_sub(1)
    } else {
        (index + 1).min(profiles.len().saturating_sub(1))
    };
    profiles.move_to(name, to)
}

fn error_page(ctx: &Ctx, e: &crate::Error) -> Response {
    ctx.page(
        StatusCode::INTERNAL_SERVER_ERROR,
        views::message(ctx, "That did not work", &e.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State over a store that is never read, with this test-email limit.
    fn inner(limit: (usize, Duration)) -> Inner {
        Inner {
            store: Arc::new(ProfileStore::new(
                "/nonexistent/profiles.json",
                crate::settings::SecretKey::generate().expect("key"),
            )),
            mailer: None,
            csrf: None,
            limit,
            sent: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn the_mount_point_is_what_precedes_the_routers_path() {
        assert_eq!(mount_point("/", "/"), "");
        assert_eq!(mount_point("/admin/smtp", "/"), "/admin/smtp");
        assert_eq!(mount_point("/admin/smtp/", "/"), "/admin/smtp");
        assert_eq!(
            mount_point("/admin/smtp/profiles/a", "/profiles/a"),
            "/admin/smtp"
        );
        assert_eq!(mount_point("/profiles/a", "/profiles/a"), "");
    }

    #[test]
    fn the_list_is_the_mount_point_itself() {
        let ctx = |base: &str| Ctx {
            base: base.to_owned(),
            cookie: String::new(),
            new_cookie: false,
            inner: Arc::new(inner((1, Duration::from_secs(1)))),
        };
        let nested = ctx("/admin/smtp");
        assert_eq!(nested.url("/"), "/admin/smtp");
        assert_eq!(nested.url("/?saved=a"), "/admin/smtp?saved=a");
        assert_eq!(nested.url("/outbox"), "/admin/smtp/outbox");
        let root = ctx("");
        assert_eq!(root.url("/"), "/");
        assert_eq!(root.url("/?saved=a"), "/?saved=a");
    }

    #[test]
    fn names_are_encoded_as_one_segment() {
        assert_eq!(encode_segment("main relay"), "main%20relay");
        assert_eq!(encode_segment("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn the_test_email_limit_counts_per_profile() {
        let inner = inner((2, Duration::from_secs(3600)));
        assert!(inner.allow_test_email("a").is_ok());
        assert!(inner.allow_test_email("a").is_ok());
        let wait = inner.allow_test_email("a").expect_err("third in the hour");
        assert!(wait > Duration::from_secs(3000), "{wait:?}");
        assert!(inner.allow_test_email("b").is_ok(), "another profile");
    }
}
