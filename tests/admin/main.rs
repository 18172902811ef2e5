//! The settings page's handlers, called without a socket
//! (`tower::ServiceExt::oneshot`): every page and form, each field error,
//! the CSRF refusal, version conflicts, the test buttons against the
//! in-process SMTP server, the outbox, and what is never in a page.

mod outbox;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use relaymail::admin::{self, AdminState};
use relaymail::profiles::ProfileStore;
use relaymail::settings::{Auth, SecretKey};
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::Mailer;
use tower::ServiceExt;

pub(crate) const WAIT: Duration = Duration::from_secs(10);
pub(crate) const PASSWORD: &str = "S3cret-pw!";
pub(crate) const MOUNT: &str = "/admin/smtp";

/// A page response.
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: String,
}

impl Page {
    pub(crate) fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The text of the element with this id (tags stripped).
    pub(crate) fn text_of(&self, id: &str) -> Option<String> {
        let start = self.body.find(&format!("id=\"{id}\""))?;
        let open_end = start + self.body[start..].find('>')? + 1;
        let tag_start = self.body[..start].rfind('<')?;
        let tag: String = self.body[tag_start + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let close = open_end + self.body[open_end..].find(&format!("</{tag}>"))?;
        let mut text = String::new();
        let mut in_tag = false;
        for c in self.body[open_end..close].chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        Some(text)
    }

    /// The opening tag of the element with this id.
    pub(crate) fn tag_of(&self, id: &str) -> Option<&str> {
        let at = self.body.find(&format!("id=\"{id}\""))?;
        let start = self.body[..at].rfind('<')?;
        let end = at + self.body[at..].find('>')?;
        Some(&self.body[start..=end])
    }
}

/// The page under test, its store, a relay, and the browser's cookie.
pub(crate) struct App {
    pub(crate) router: Router,
    pub(crate) store: Arc<ProfileStore>,
    pub(crate) relay: TestServer,
    pub(crate) cookie: Option<String>,
    pub(crate) mailer: Option<Mailer>,
    _dir: TempDir,
}

pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "relaymail-admin-{}-{name}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn relay_config() -> ServerConfig {
    ServerConfig::new()
        .auth_mechanisms(&["PLAIN", "LOGIN"])
        .user("app", PASSWORD)
}

impl App {
    pub(crate) async fn new(name: &str) -> App {
        App::with(name, relay_config(), |s| s).await
    }

    pub(crate) async fn with(
        name: &str,
        relay: ServerConfig,
        state: impl FnOnce(AdminState) -> AdminState,
    ) -> App {
        let dir = TempDir::new(name);
        let store = Arc::new(ProfileStore::new(
            dir.0.join("smtp.json"),
            SecretKey::generate().expect("key"),
        ));
        let relay = TestServer::start(relay).await.expect("relay");
        let router = Router::new().nest(MOUNT, admin::router(state(AdminState::new(Arc::clone(&store)))));
        App {
            router,
            store,
            relay,
            cookie: None,
            mailer: None,
            _dir: dir,
        }
    }

    pub(crate) async fn call(&mut self, request: Request<Body>) -> Page {
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        if let Some(set) = headers.get(header::SET_COOKIE).and_then(|v| v.to_str().ok()) {
            self.cookie = set.split(';').next().map(str::to_owned);
        }
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .expect("body");
        Page {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).expect("utf-8 page"),
        }
    }

    fn request(&self, method: &str, path: &str) -> axum::http::request::Builder {
        // The list is the mount point itself (no trailing slash).
        let uri = match path.strip_prefix('/') {
            Some(rest) if rest.is_empty() || rest.starts_with('?') => format!("{MOUNT}{rest}"),
            _ => format!("{MOUNT}{path}"),
        };
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(c) = &self.cookie {
            b = b.header(header::COOKIE, c);
        }
        b
    }

    pub(crate) async fn get(&mut self, path: &str) -> Page {
        let request = self.request("GET", path).body(Body::empty()).expect("request");
        self.call(request).await
    }

    /// The CSRF token of a page's forms.
    pub(crate) fn token(page: &Page) -> String {
        let at = page.body.find("name=\"csrf\" value=\"").expect("a csrf field");
        let rest = &page.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').expect("end")].to_owned()
    }

    /// The hidden version of a page's first form.
    pub(crate) fn version(page: &Page) -> String {
        let at = page
            .body
            .find("name=\"version\" value=\"")
            .expect("a version field");
        let rest = &page.body[at + "name=\"version\" value=\"".len()..];
        rest[..rest.find('"').expect("end")].to_owned()
    }

    pub(crate) async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let request = self
            .request("POST", path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .expect("request");
        self.call(request).await
    }

    pub(crate) async fn post_multipart(
        &mut self,
        path: &str,
        fields: &[(String, String)],
        file: Option<(&str, &[u8])>,
    ) -> Page {
        let boundary = "----relaymail-test-boundary-7d3f";
        let mut body = Vec::new();
        for (k, v) in fields {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                    .as_bytes(),
            );
        }
        if let Some((name, bytes)) = file {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"ca.pem\"\r\nContent-Type: application/x-pem-file\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let request = self
            .request("POST", path)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Body::from(body))
            .expect("request");
        self.call(request).await
    }

    /// A complete, valid profile form for the relay, with `changes` applied
    /// (an empty value removes a field: an unchecked checkbox).
    pub(crate) fn profile_fields(&self, page: &Page, changes: &[(&str, &str)]) -> Vec<(String, String)> {
        let port = self.relay.port().to_string();
        let mut fields: Vec<(String, String)> = vec![
            ("csrf", App::token(page).as_str()),
            ("version", App::version(page).as_str()),
            ("name", "main"),
            ("host", "127.0.0.1"),
            ("port", port.as_str()),
            ("tls", "none"),
            ("sender", "noreply@example.com"),
            ("sender_name", "Example App"),
            ("helo_name", ""),
            ("timeout", "5"),
            ("auth", "on"),
            ("username", "app"),
            ("password", PASSWORD),
            ("allow_plaintext_auth", "on"),
            ("ca_pem", ""),
            ("max_deliveries", "7"),
            ("redirect_enabled", ""),
            ("report_address_0", "qa@example.com"),
            ("report_enabled_0", "on"),
            ("report_address_1", ""),
            ("address_policy", "lenient"),
            ("attachment_limit", "1000000"),
            ("attachment_links", ""),
            ("enabled", "on"),
            ("test_on_save", ""),
            ("test_from", ""),
            ("test_to", ""),
            ("action", "save"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in changes {
            match fields.iter_mut().find(|(name, _)| name == k) {
                Some(f) => f.1 = (*v).to_owned(),
                None => fields.push(((*k).to_owned(), (*v).to_owned())),
            }
        }
        // Unchecked checkboxes are not sent at all.
        fields.retain(|(k, v)| {
            !(v.is_empty()
                && matches!(
                    k.as_str(),
                    "auth"
                        | "allow_plaintext_auth"
                        | "redirect_enabled"
                        | "attachment_links"
                        | "enabled"
                        | "test_on_save"
                        | "password_clear"
                        | "report_enabled_0"
                ))
        });
        fields
    }

    /// Creates the profile "main" (or as changed) through the form.
    pub(crate) async fn create(&mut self, changes: &[(&str, &str)]) -> Page {
        let form = self.get("/profiles/new").await;
        assert_eq!(form.status, StatusCode::OK);
        let fields = self.profile_fields(&form, changes);
        self.post_multipart("/profiles/new", &fields, None).await
    }
}

#[tokio::test]
async fn every_page_has_the_security_headers_and_a_strict_cookie() {
    let mut app = App::new("headers").await;
    for path in ["/", "/profiles/new", "/outbox", "/no-such-page"] {
        app.cookie = None;
        let page = app.get(path).await;
        let csp = page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("script-src"), "no script is ever allowed: {csp}");
        assert_eq!(page.headers[header::CACHE_CONTROL], "no-store", "{path}");
        assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        let cookie = page.headers[header::SET_COOKIE].to_str().expect("cookie");
        assert!(
            cookie.contains("SameSite=Strict") && cookie.contains("HttpOnly"),
            "{cookie}"
        );
        assert!(
            cookie.contains(&format!("Path={MOUNT}")),
            "scoped to the mount point: {cookie}"
        );
    }
    let css = app.get("/style.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.headers[header::CONTENT_TYPE]
        .to_str()
        .expect("type")
        .starts_with("text/css"));
    assert_eq!(app.get("/no-such-page").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_profile_is_created_with_every_field_and_listed_as_in_use() {
    let mut app = App::new("create").await;
    let empty = app.get("/").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert!(empty.body.contains("id=\"no-profiles\""), "{}", empty.body);
    let ca = app.relay.ca_pem().to_owned();
    let saved = app
        .create(&[
            ("redirect_enabled", "on"),
            ("test_on_save", "on"),
            ("attachment_limit", "2048"),
            ("ca_pem", ca.as_str()),
            ("helo_name", "app.example.com"),
        ])
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(saved.location(), format!("{MOUNT}?saved=main&released=0"));
    assert!(!saved.location().contains(PASSWORD));

    let profiles = app.store.load().expect("load");
    let p = profiles.get("main").expect("saved");
    assert!(p.enabled() && p.test_on_save());
    let s = p.settings();
    assert_eq!(
        (s.host(), s.port(), s.tls()),
        ("127.0.0.1", app.relay.port(), relaymail::TlsMode::None)
    );
    assert_eq!(s.sender().address.to_string(), "noreply@example.com");
    assert_eq!(s.sender().name.as_deref(), Some("Example App"));
    assert_eq!(s.helo_name(), Some("app.example.com"));
    assert_eq!(s.timeouts().command, Duration::from_secs(5));
    match s.auth() {
        Auth::Credential(c) => assert_eq!(c.username(), "app"),
        other => panic!("credentials expected, got {other:?}"),
    }
    assert_eq!(s.tls_options().extra_roots().len(), 1, "the CA certificate");
    assert_eq!(s.max_deliveries_per_connection(), 7);
    assert!(s.redirect().enabled);
    assert_eq!(s.redirect().addresses[0].address.to_string(), "qa@example.com");
    assert_eq!(s.address_policy(), relaymail::address::AddressPolicy::Lenient);
    assert_eq!(s.attachment_limit().max_size, Some(2048));
    assert!(!s.attachment_limit().links);

    let list = app.get("/").await;
    let row = list
        .tag_of("profiles")
        .map(|_| ())
        .and(list.body.find("data-profile=\"main\""));
    assert!(row.is_some(), "{}", list.body);
    assert!(list.text_of("profiles").expect("table").contains("in use"));
    assert!(list.body.contains("saved") || list.text_of("flash").is_none());
    let flash = app.get("/?saved=main&released=2").await;
    assert_eq!(
        flash.text_of("flash").as_deref(),
        Some("Saved “main”. 2 drafts that waited for a settings fix are due now.")
    );
}

#[tokio::test]
async fn a_post_without_a_valid_token_is_refused_and_changes_nothing() {
    let mut app = App::new("csrf").await;
    assert_eq!(app.create(&[]).await.status, StatusCode::SEE_OTHER);
    let version = app.store.load().expect("load").version();

    // No token at all, a token made for another cookie, and no cookie.
    let form = app.get("/profiles/main").await;
    let mut fields = app.profile_fields(&form, &[("host", "evil.example.net")]);
    fields.retain(|(k, _)| k != "csrf");
    assert_eq!(
        app.post_multipart("/profiles/main", &fields, None).await.status,
        StatusCode::FORBIDDEN
    );

    let mut other = App::new("csrf-other").await;
    let foreign = other.get("/profiles/new").await;
    let mut forged = app.profile_fields(&form, &[("host", "evil.example.net")]);
    for f in &mut forged {
        if f.0 == "csrf" {
            f.1 = App::token(&foreign);
        }
    }
    let refused = app.post_multipart("/profiles/main", &forged, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("nothing was changed"), "{}", refused.body);

    let token = App::token(&form);
    app.cookie = None;
    let no_cookie = app
        .post_form(
            "/profiles/main/delete",
            &[("csrf", &token), ("version", &version.to_string())],
        )
        .await;
    assert_eq!(no_cookie.status, StatusCode::FORBIDDEN);
    let list = app.get("/").await;
    assert_eq!(
        app.post_form("/profiles/main/disable", &[("version", &version.to_string())])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.post_form("/outbox/retry-all", &[("area", "drafts")])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let _ = list;
    let after = app.store.load().expect("load");
    assert_eq!(after.version(), version, "nothing was saved");
    let p = after.get("main").expect("still there");
    assert!(p.enabled());
    assert_eq!(p.settings().host(), "127.0.0.1");
}

#[tokio::test]
async fn each_field_error_is_shown_beside_its_field_and_nothing_is_saved() {
    let mut app = App::new("errors").await;
    /// The form's changes, the input whose error shows, words in the error.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        (&[("port", "70000")], "port", "is not a port"),
        (&[("port", "abc")], "port", "is not a port"),
        (&[("host", "bad host!")], "host", ""),
        (&[("tls", "tls9")], "tls", "unknown TLS mode"),
        (&[("sender", "not an address")], "sender", "not a valid address"),
        (&[("sender", "")], "sender", "required"),
        (&[("timeout", "soon")], "timeout", "is not a timeout"),
        (&[("helo_name", "not a name!")], "helo_name", ""),
        (&[("timeout", "0")], "timeout", "is not a timeout"),
        (&[("username", "")], "username", "empty"),
        (&[("password", "")], "password", "enter the password"),
        (
            &[(
                "ca_pem",
                "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            )],
            "ca_pem",
            "",
        ),
        (&[("max_deliveries", "0")], "max_deliveries", ""),
        (&[("max_deliveries", "many")], "max_deliveries", "whole number"),
        (
            &[("report_address_0", "qa@@example")],
            "report_address_0",
            "not a valid address",
        ),
        (
            &[("attachment_limit", "big")],
            "attachment_limit",
            "is not a size",
        ),
        (
            &[("attachment_limit", ""), ("attachment_links", "on")],
            "attachment_limit",
            "links",
        ),
        (
            &[("address_policy", "anything")],
            "address_policy",
            "strict or lenient",
        ),
        (&[("name", "")], "name", "needs a name"),
    ];
    for (changes, input, words) in cases {
        let page = app.create(changes).await;
        assert_eq!(
            page.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{changes:?}: {}",
            page.body
        );
        let error = page
            .text_of(&format!("{input}-error"))
            .unwrap_or_else(|| panic!("{changes:?}: no {input}-error in {}", page.body));
        assert!(error.contains(words), "{changes:?}: {error:?}");
        let tag = page.tag_of(input).expect("the input");
        assert!(tag.contains("aria-invalid=\"true\""), "{changes:?}: {tag}");
        assert!(
            tag.contains(&format!("{input}-error")),
            "described by its error: {tag}"
        );
        assert!(page.text_of("form-error").is_some(), "a summary at the top");
        assert!(
            !page.body.contains(PASSWORD),
            "{changes:?}: the password came back"
        );
    }
    assert!(app.store.load().expect("load").is_empty(), "nothing was saved");
}

#[tokio::test]
async fn the_password_is_never_shown_and_kept_only_for_the_same_server() {
    let mut app = App::new("password").await;
    assert_eq!(app.create(&[]).await.status, StatusCode::SEE_OTHER);
    let form = app.get("/profiles/main").await;
    assert!(!form.body.contains(PASSWORD));
    let input = form.tag_of("password").expect("password input");
    assert!(
        input.contains("value=\"\"") && input.contains("placeholder=\"unchanged\""),
        "{input}"
    );

    // Kept: the same server, the field left empty.
    let keep = app.profile_fields(&form, &[("password", ""), ("sender_name", "Renamed")]);
    let saved = app.post_multipart("/profiles/main", &keep, None).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let p = app.store.load().expect("load");
    assert!(matches!(
        p.get("main").expect("main").settings().auth(),
        Auth::Credential(_)
    ));

    // Another host with the field left empty: asked again, nothing saved.
    let form = app.get("/profiles/main").await;
    let moved = app.profile_fields(&form, &[("password", ""), ("host", "localhost")]);
    let refused = app.post_multipart("/profiles/main", &moved, None).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        refused
            .text_of("password-error")
            .expect("password error")
            .contains("again"),
        "{}",
        refused.body
    );
    assert_eq!(
        app.store
            .load()
            .expect("load")
            .get("main")
            .expect("main")
            .settings()
            .host(),
        "127.0.0.1"
    );

    // Cleared.
    let form = app.get("/profiles/main").await;
    let cleared = app.profile_fields(&form, &[("password", ""), ("password_clear", "on")]);
    assert_eq!(
        app.post_multipart("/profiles/main", &cleared, None).await.status,
        StatusCode::SEE_OTHER
    );
    let p = app.store.load().expect("load");
    assert!(matches!(
        p.get("main").expect("main").settings().auth(),
        Auth::None
    ));
    let raw = std::fs::read_to_string(app._dir.0.join("smtp.json")).expect("store");
    assert!(!raw.contains(PASSWORD), "the store holds no plain password");
}

#[tokio::test]
async fn a_save_over_someone_elses_save_is_a_conflict_that_shows_what_differs() {
    let mut app = App::new("conflict").await;
    assert_eq!(app.create(&[]).await.status, StatusCode::SEE_OTHER);
    let form = app.get("/profiles/main").await;

    // Someone else saves meanwhile.
    let mut theirs = app.store.load().expect("load");
    let mut update = relaymail::settings::SettingsUpdate::new();
    update.sender = Some("theirs@example.com".to_owned());
    theirs.update("main", update).expect("update");
    app.store.save(&mut theirs).expect("their save");

    let mine = app.profile_fields(&form, &[("password", ""), ("sender", "mine@example.com")]);
    let page = app.post_multipart("/profiles/main", &mine, None).await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page
        .text_of("form-error")
        .expect("error")
        .contains("someone else saved"));
    let diff = page.text_of("conflict").expect("the differences");
    assert!(
        diff.contains("theirs@example.com") && diff.contains("mine@example.com"),
        "{diff}"
    );
    let kept = app.store.load().expect("load");
    assert_eq!(
        kept.get("main")
            .expect("main")
            .settings()
            .sender()
            .address
            .to_string(),
        "theirs@example.com"
    );

    // Saving again from the conflict page replaces theirs deliberately.
    let again = app.profile_fields(&page, &[("password", ""), ("sender", "mine@example.com")]);
    assert_eq!(
        app.post_multipart("/profiles/main", &again, None).await.status,
        StatusCode::SEE_OTHER
    );
    let now = app.store.load().expect("load");
    assert_eq!(
        now.get("main")
            .expect("main")
            .settings()
            .sender()
            .address
            .to_string(),
        "mine@example.com"
    );
}

#[tokio::test]
async fn test_buttons_use_the_unsaved_form_and_show_the_report() {
    let mut app = App::new("tests").await;
    // A new profile, never saved: send a test email with its values.
    let form = app.get("/profiles/new").await;
    let send = app.profile_fields(&form, &[("action", "send"), ("test_to", "admin@example.com")]);
    let page = app.post_multipart("/profiles/new", &send, None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let verdict = page.text_of("verdict").expect("verdict");
    assert!(verdict.contains("delivered"), "{verdict}");
    for stage in ["connect", "greeting", "ehlo", "auth", "mail", "end of data"] {
        assert!(
            page.body
                .contains(&format!("data-stage=\"{stage}\" class=\"ok\"")),
            "{stage} in {}",
            page.body
        );
    }
    let got = app
        .relay
        .wait_for_messages(1, WAIT)
        .await
        .expect("the test email");
    assert_eq!(got[0].rcpt_to, ["admin@example.com"]);
    assert!(!page.body.contains(PASSWORD), "the typed password is not echoed");
    assert!(
        page.text_of("password-note").is_some(),
        "the page says to type it again"
    );
    assert!(app.store.load().expect("load").is_empty(), "a test saves nothing");

    // A wrong password: the auth stage fails, with its hint.
    let wrong = app.profile_fields(&form, &[("action", "test"), ("password", "wrong")]);
    let page = app.post_multipart("/profiles/new", &wrong, None).await;
    assert!(
        page.body.contains("data-stage=\"auth\" class=\"failed\""),
        "{}",
        page.body
    );
    let verdict = page.text_of("verdict").expect("verdict");
    assert!(
        verdict.starts_with("Failed at auth: the server rejected"),
        "{verdict}"
    );
    assert!(
        !verdict.contains("hint:"),
        "the hint is shown once, below: {verdict}"
    );
    assert!(!page.text_of("hint").expect("a hint").trim().is_empty());

    // Test connection with the stored (kept) password of a saved profile.
    assert_eq!(app.create(&[]).await.status, StatusCode::SEE_OTHER);
    let form = app.get("/profiles/main").await;
    let test = app.profile_fields(&form, &[("action", "test"), ("password", "")]);
    let page = app.post_multipart("/profiles/main", &test, None).await;
    assert!(
        page.text_of("verdict").expect("verdict").contains("Connected"),
        "{}",
        page.body
    );
    assert!(page.text_of("password-note").is_none());
}

#[tokio::test]
async fn a_ca_certificate_uploaded_as_a_file_is_trusted() {
    let relay = relay_config().starttls(true);
    let mut app = App::with("upload", relay, |s| s).await;
    let ca = app.relay.ca_pem().to_owned();
    let form = app.get("/profiles/new").await;
    let fields = app.profile_fields(
        &form,
        &[
            ("tls", "starttls"),
            ("allow_plaintext_auth", ""),
            ("action", "send"),
            ("test_to", "a@example.com"),
        ],
    );
    let page = app
        .post_multipart("/profiles/new", &fields, Some(("ca_file", ca.as_bytes())))
        .await;
    assert!(
        page.text_of("verdict").expect("verdict").contains("delivered"),
        "{}",
        page.body
    );
    assert!(page.text_of("tls").expect("TLS details").contains("via STARTTLS"));
    assert!(
        page.tag_of("ca_pem").is_some() && page.body.contains("BEGIN CERTIFICATE"),
        "shown again for the save"
    );

    let without = app.profile_fields(
        &form,
        &[
            ("tls", "starttls"),
            ("allow_plaintext_auth", ""),
            ("action", "test"),
        ],
    );
    let page = app.post_multipart("/profiles/new", &without, None).await;
    assert!(
        page.body.contains("data-stage=\"tls\" class=\"failed\""),
        "untrusted without it: {}",
        page.body
    );
}

#[tokio::test]
async fn sending_test_email_is_limited_per_profile() {
    let mut app = App::with("limit", relay_config(), |s| {
        s.with_test_email_limit(1, Duration::from_secs(3600))
    })
    .await;
    let form = app.get("/profiles/new").await;
    let send = app.profile_fields(&form, &[("action", "send"), ("test_to", "admin@example.com")]);
    assert_eq!(
        app.post_multipart("/profiles/new", &send, None).await.status,
        StatusCode::OK
    );
    let second = app.post_multipart("/profiles/new", &send, None).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(second
        .text_of("form-error")
        .expect("why")
        .contains("Too many test emails"));
    app.relay.wait_for_messages(1, WAIT).await.expect("the first");
    assert_eq!(app.relay.messages().len(), 1, "the second was not sent");
    // Another name for the unsaved profile does not get around the limit.
    let renamed = app.profile_fields(
        &form,
        &[
            ("action", "send"),
            ("test_to", "admin@example.com"),
            ("name", "other"),
        ],
    );
    assert_eq!(
        app.post_multipart("/profiles/new", &renamed, None).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A saved profile has its own allowance.
    assert_eq!(
        app.create(&[("name", "other")]).await.status,
        StatusCode::SEE_OTHER
    );
    let saved = app.get("/profiles/other").await;
    let send = app.profile_fields(
        &saved,
        &[
            ("action", "send"),
            ("test_to", "admin@example.com"),
            ("name", "other"),
            ("password", ""),
        ],
    );
    assert_eq!(
        app.post_multipart("/profiles/other", &send, None).await.status,
        StatusCode::OK
    );
    app.relay
        .wait_for_messages(2, WAIT)
        .await
        .expect("the saved profile's test email");
}

#[tokio::test]
async fn test_on_save_refuses_to_save_settings_that_do_not_connect() {
    let mut app = App::new("test-on-save").await;
    let page = app.create(&[("test_on_save", "on"), ("password", "wrong")]).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.text_of("form-error").expect("why").contains("Not saved"));
    assert!(page.body.contains("data-stage=\"auth\" class=\"failed\""));
    assert!(app.store.load().expect("load").is_empty());
    assert_eq!(
        app.create(&[("test_on_save", "on")]).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn list_actions_enable_reorder_rename_and_delete() {
    let mut app = App::new("list").await;
    assert_eq!(
        app.create(&[("name", "first")]).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        app.create(&[("name", "second")]).await.status,
        StatusCode::SEE_OTHER
    );
    let in_use = |page: &Page| {
        let at = page.body.find("in use").expect("one in use");
        let row = page.body[..at].rfind("data-profile=\"").expect("row");
        page.body[row + 14..].split('"').next().expect("name").to_owned()
    };
    let list = app.get("/").await;
    assert_eq!(in_use(&list), "first");
    let token = App::token(&list);
    let v = app.store.load().expect("load").version().to_string();
    let page = app
        .post_form("/profiles/first/disable", &[("csrf", &token), ("version", &v)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(in_use(&app.get("/").await), "second");

    // A stale version changes nothing.
    let stale = app
        .post_form("/profiles/second/delete", &[("csrf", &token), ("version", &v)])
        .await;
    assert_eq!(stale.location(), format!("{MOUNT}?conflict=1"));
    assert!(app.store.load().expect("load").get("second").is_some());

    let v = app.store.load().expect("load").version().to_string();
    app.post_form("/profiles/second/up", &[("csrf", &token), ("version", &v)])
        .await;
    let order: Vec<String> = app
        .store
        .load()
        .expect("load")
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(order, ["second", "first"]);

    // Rename through the form.
    let form = app.get("/profiles/second").await;
    let renamed = app.profile_fields(&form, &[("name", "primary relay"), ("password", "")]);
    let page = app.post_multipart("/profiles/second", &renamed, None).await;
    assert_eq!(
        page.location(),
        format!("{MOUNT}?saved=primary%20relay&released=0")
    );
    let list = app.get("/").await;
    assert!(
        list.body
            .contains(&format!("href=\"{MOUNT}/profiles/primary%20relay\"")),
        "{}",
        list.body
    );
    // A name already taken.
    let form = app.get("/profiles/first").await;
    let taken = app.profile_fields(&form, &[("name", "primary relay"), ("password", "")]);
    let page = app.post_multipart("/profiles/first", &taken, None).await;
    assert!(page
        .text_of("name-error")
        .expect("name error")
        .contains("already"));

    let v = app.store.load().expect("load").version().to_string();
    let page = app
        .post_form(
            "/profiles/primary%20relay/delete",
            &[("csrf", &token), ("version", &v)],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let names: Vec<String> = app
        .store
        .load()
        .expect("load")
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(names, ["first"]);
    assert_eq!(
        app.get("/profiles/primary%20relay").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn everything_from_the_user_is_escaped() {
    let mut app = App::new("escape").await;
    let evil = "<script>alert(1)</script>";
    assert_eq!(
        app.create(&[("name", evil), ("sender_name", "\"><img src=x>")])
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    let list = app.get("/").await;
    assert!(
        !list.body.contains(evil) && list.body.contains("&lt;script&gt;"),
        "{}",
        list.body
    );
    let form = app.get("/profiles/%3Cscript%3Ealert%281%29%3C%2Fscript%3E").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(!form.body.contains("<img src=x>") && !form.body.contains(evil));
}
