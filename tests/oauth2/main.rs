//! OAuth2 sign-in end to end, on loopback: an in-process token endpoint
//! ([`TokenEndpoint`]) and the SMTP test server, which accepts a bearer
//! token (OAUTHBEARER or XOAUTH2) only while the test says it is valid.
//! Nothing waits on the clock: tokens expire when the test says so.

#[path = "../support/token_endpoint.rs"]
mod token_endpoint;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use relaymail::oauth2::{OAuth2Client, OAuth2Provider};
use relaymail::profiles::ProfileStore;
use relaymail::settings::SecretKey;
use relaymail::testing::{BearerTokens, ServerConfig, TestServer};
use relaymail::{
    Connection, CredentialProvider, Envelope, Error, Mailer, Mechanism, Message, SmtpSettings, TlsMode,
};
use secrecy::{ExposeSecret, SecretString};
use token_endpoint::TokenEndpoint;

const USER: &str = "app@example.com";
const REFRESH: &str = "1//initial-Refresh-Secret";
const CLIENT_SECRET: &str = "client-S3cret-value";
const WAIT: Duration = Duration::from_secs(10);

/// No token, refresh token or client secret in `text`.
fn assert_clean(text: &str) {
    for secret in ["ya29.access", "1//", "S3cret", "Refresh-Secret"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

fn assert_clean_error(e: &Error) {
    assert_clean(&format!("{e} {e:?} {e:#?} {:?}", e.hint()));
}

async fn smtp(mechanisms: &[&str], tokens: &BearerTokens) -> TestServer {
    TestServer::start(
        ServerConfig::new()
            .starttls(true)
            .auth_mechanisms(mechanisms)
            .require_auth(true)
            .bearer_tokens(tokens),
    )
    .await
    .expect("smtp server")
}

fn provider(endpoint: &TokenEndpoint) -> Arc<OAuth2Provider> {
    let client = OAuth2Client::new(endpoint.url(), "relaymail-test-client")
        .scope("https://mail.google.com/")
        .client_secret(CLIENT_SECRET);
    Arc::new(OAuth2Provider::new(client, USER, REFRESH).expect("provider"))
}

fn settings(server: &TestServer, provider: Arc<OAuth2Provider>) -> SmtpSettings {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(server.port()))
        .tls(TlsMode::StartTls)
        .add_root_certificates_pem(server.ca_pem())
        .webpki_roots(false)
        .sender(USER)
        .oauth2(provider)
        .timeout(WAIT)
        .build()
        .expect("settings")
}

fn message(n: usize) -> Message {
    let envelope = Envelope::new(
        Some(USER.parse().expect("address")),
        vec!["ops@example.net".parse().expect("address")],
    )
    .expect("envelope");
    Message::new(
        envelope,
        format!("Subject: n{n}\r\n\r\nbody {n}\r\n").into_bytes(),
    )
}

/// The command lines of a session.
fn lines(server: &TestServer, session: usize) -> Vec<String> {
    server.sessions()[session]
        .commands
        .iter()
        .map(|c| c.line.clone())
        .collect()
}

#[tokio::test]
async fn expiry_between_messages_is_renewed_once_and_nothing_is_lost() {
    let tokens = BearerTokens::new();
    let server = smtp(&["OAUTHBEARER", "XOAUTH2"], &tokens).await;
    let endpoint = TokenEndpoint::start(REFRESH, USER, &tokens).await;
    endpoint.require_client_secret(CLIENT_SECRET);
    let provider = provider(&endpoint);
    let one_per_connection = settings(&server, provider.clone())
        .to_builder()
        .max_deliveries_per_connection(1)
        .build()
        .expect("settings");
    let mailer = Mailer::builder(one_per_connection)
        .max_connections(1)
        .build()
        .expect("mailer");
    const N: usize = 5;
    for n in 0..N {
        if n == 2 {
            // The access token expires between two messages: the provider
            // still holds it (its expires_in said an hour).
            tokens.expire_all();
        }
        mailer.send(message(n)).await.expect("delivered");
    }
    let messages = server.wait_for_messages(N, WAIT).await.expect("all delivered");
    assert_eq!(messages.len(), N);
    for (n, m) in messages.iter().enumerate() {
        assert!(String::from_utf8_lossy(&m.data).contains(&format!("body {n}")));
        assert_eq!(m.auth_user.as_deref(), Some(USER));
    }
    // One renewal at the start, one after the expiry: no more.
    assert_eq!(endpoint.requests(), 2);
    assert_eq!(provider.refreshes(), 2);
    let log = endpoint.request_log();
    assert!(log.iter().all(|r| r.grant_type == "refresh_token"
        && r.refresh_token == REFRESH
        && r.client_id == "relaymail-test-client"
        && r.client_secret.as_deref() == Some(CLIENT_SECRET)
        && r.scope.as_deref() == Some("https://mail.google.com/")));
    // The third connection: the stale token refused with the error
    // challenge, answered with \x01, then AUTH again on the same
    // connection with the renewed one.
    let third = lines(&server, 2);
    let auth: Vec<&String> = third.iter().filter(|l| l.starts_with("AUTH")).collect();
    assert_eq!(auth, ["AUTH OAUTHBEARER", "AUTH OAUTHBEARER"], "{third:?}");
    let first_auth = third.iter().position(|l| l == "AUTH OAUTHBEARER").expect("auth");
    assert_eq!(third[first_auth + 1], "AQ==", "{third:?}");
    assert_eq!(
        server.sessions()[2].auth_mechanism.as_deref(),
        Some("OAUTHBEARER")
    );
    assert_eq!(server.connections_total(), N);
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn concurrent_first_use_is_one_refresh() {
    let tokens = BearerTokens::new();
    let endpoint = TokenEndpoint::start(REFRESH, USER, &tokens).await;
    let provider = provider(&endpoint);
    // Answers are held until every caller has asked: without single flight
    // each would send its own request.
    endpoint.hold();
    let (started, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut callers = Vec::new();
    for _ in 0..6 {
        let provider = provider.clone();
        let started = started.clone();
        callers.push(tokio::spawn(async move {
            started.send(()).expect("test waits");
            provider.credential().await
        }));
    }
    for _ in 0..6 {
        started_rx.recv().await.expect("started");
    }
    endpoint.wait_requests(1).await;
    endpoint.release();
    let mut seen = Vec::new();
    for caller in callers {
        match caller.await.expect("task").expect("credential") {
            relaymail::Credential::OAuth2 { username, token } => {
                assert_eq!(username, USER);
                seen.push(token.expose_secret().to_owned());
            }
            other => panic!("{other:?}"),
        }
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "every caller got the same token");
    assert_eq!(endpoint.requests(), 1);
    // Cached: later callers do not ask either.
    provider.credential().await.expect("cached");
    assert_eq!(endpoint.requests(), 1);
}

#[tokio::test]
async fn a_token_without_a_usable_lifetime_is_renewed_per_connection() {
    let tokens = BearerTokens::new();
    let server = smtp(&["OAUTHBEARER"], &tokens).await;
    let endpoint = TokenEndpoint::start(REFRESH, USER, &tokens).await;
    // expires_in 0: never reused. (expires_in 3600 above: reused.)
    endpoint.expires_in(Some(0));
    let s = settings(&server, provider(&endpoint));
    for _ in 0..3 {
        Connection::open(&s)
            .await
            .expect("connects")
            .quit()
            .await
            .expect("quit");
    }
    assert_eq!(endpoint.requests(), 3);
}

#[tokio::test]
async fn a_revoked_refresh_token_asks_to_sign_in_again() {
    let tokens = BearerTokens::new();
    let server = smtp(&["OAUTHBEARER"], &tokens).await;
    let endpoint = TokenEndpoint::start(REFRESH, USER, &tokens).await;
    endpoint.revoke(REFRESH);
    let mailer = Mailer::builder(settings(&server, provider(&endpoint)))
        .build()
        .expect("mailer");
    let e = mailer.send(message(0)).await.expect_err("revoked");
    assert!(
        e.is_auth() && e.needs_reauthorization() && e.is_permanent(),
        "{e:?}"
    );
    assert!(!e.is_token_rejected(), "{e:?}");
    let hint = e.hint().expect("hint");
    assert!(hint.contains("sign in again"), "{hint}");
    assert!(e.to_string().contains("invalid_grant"), "{e}");
    assert!(
        e.to_string().contains("Token has been expired or revoked."),
        "{e}"
    );
    assert_clean_error(&e);
    // Not a failure the SMTP server saw: no AUTH was sent.
    assert!(server
        .sessions()
        .iter()
        .all(|s| s.commands.iter().all(|c| !c.line.starts_with("AUTH"))));
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_renewed_token_refused_too_is_an_auth_error_with_a_hint() {
    // The SMTP server accepts no token at all (say, SMTP AUTH is disabled
    // for the mailbox): renewed once, then reported.
    let tokens = BearerTokens::new();
    let server = smtp(&["XOAUTH2"], &tokens).await;
    let unrelated = BearerTokens::new();
    let endpoint = TokenEndpoint::start(REFRESH, USER, &unrelated).await;
    let s = settings(&server, provider(&endpoint));
    let e = Connection::open(&s).await.expect_err("refused");
    assert!(e.is_auth() && e.is_token_rejected(), "{e:?}");
    assert!(
        e.hint()
            .is_some_and(|h| h.contains("renewed") && h.contains("SMTP AUTH")),
        "{e}"
    );
    assert_eq!(endpoint.requests(), 2, "renewed exactly once");
    // XOAUTH2's error challenge is answered with an empty line, twice.
    let session = lines(&server, 0);
    let auth: Vec<usize> = session
        .iter()
        .enumerate()
        .filter(|(_, l)| *l == "AUTH XOAUTH2")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(auth.len(), 2, "{session:?}");
    for i in auth {
        assert_eq!(session[i + 1], "", "{session:?}");
    }
    assert_clean_error(&e);
}

#[tokio::test]
async fn oauthbearer_is_preferred_and_xoauth2_used_otherwise() {
    for (offered, expected) in [
        (&["XOAUTH2", "OAUTHBEARER"][..], Mechanism::OAuthBearer),
        (&["PLAIN", "XOAUTH2"][..], Mechanism::XOAuth2),
        (&["OAUTHBEARER"][..], Mechanism::OAuthBearer),
    ] {
        let tokens = BearerTokens::new();
        let server = smtp(offered, &tokens).await;
        let endpoint = TokenEndpoint::start(REFRESH, USER, &tokens).await;
        let conn = Connection::open(&settings(&server, provider(&endpoint)))
            .await
            .expect("connects");
        assert_eq!(conn.info().auth_mechanism, Some(expected), "{offered:?}");
        conn.quit().await.expect("quit");
        assert_eq!(
            server.sessions()[0].auth_mechanism.as_deref(),
            Some(expected.name())
        );
    }
}

#[tokio::test]
async fn a_rotated_refresh_token_is_kept_and_stored_sealed() {
    let tokens = BearerTokens::new();
    let server = smtp(&["OAUTHBEARER"], &tokens).await;
    let endpoint = TokenEndpoint::start(REFRESH, USER, &tokens).await;
    endpoint.rotate(true);
    let dir = std::env::temp_dir().join(format!("relaymail-oauth2-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("profiles.json");
    let key = SecretKey::generate().expect("key");
    let key_text = key.to_base64();
    let store = ProfileStore::new(&path, key);
    let mut profiles = store.load().expect("empty");
    profiles
        .add("primary", settings(&server, provider(&endpoint)), true)
        .expect("added");
    store.save(&mut profiles).expect("saved");
    let text = std::fs::read_to_string(&path).expect("stored");
    assert_clean(&text);
    assert!(
        text.contains("oauth2_refresh_token") && text.contains("oauth2_client_secret"),
        "{text}"
    );
    assert!(
        text.contains("relaymail-test-client") && text.contains(&endpoint.url()),
        "{text}"
    );

    let mailer = store
        .mailer(|s| Mailer::builder(s.to_builder().max_deliveries_per_connection(1).build()?).build())
        .expect("mailer");
    let provider = mailer
        .settings()
        .oauth2_provider()
        .cloned()
        .expect("the mailer's provider");
    let rotated_seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = rotated_seen.clone();
    provider.on_refresh_token_rotated(move |t| seen.lock().unwrap().push(t.expose_secret().to_owned()));
    mailer.send(message(0)).await.expect("delivered");
    let rotated = provider.take_rotated_refresh_token().expect("rotated");
    assert_eq!(rotated.expose_secret(), "1//rotated-refresh-1");
    assert!(provider.take_rotated_refresh_token().is_none(), "taken once");
    assert_eq!(*rotated_seen.lock().unwrap(), ["1//rotated-refresh-1"]);
    assert!(!endpoint.accepts(REFRESH), "the old refresh token is dead");
    // The provider uses the new one: another renewal works.
    tokens.expire_all();
    mailer
        .send(message(1))
        .await
        .expect("renewed with the rotated token");
    assert_eq!(endpoint.requests(), 2);
    let newest = provider.take_rotated_refresh_token().expect("rotated again");
    assert_eq!(newest.expose_secret(), "1//rotated-refresh-2");
    mailer.shutdown(WAIT).await;

    // Stored sealed: never in clear, and it comes back.
    store
        .save_refresh_token("primary", SecretString::from(newest.expose_secret().to_owned()))
        .expect("stored");
    let text = std::fs::read_to_string(&path).expect("stored");
    assert_clean(&text);
    // Profiles loaded before the rotation are out of date.
    assert!(store.save(&mut profiles).expect_err("stale").is_conflict());
    let again = ProfileStore::new(
        &path,
        SecretKey::from_base64(key_text.expose_secret()).expect("key"),
    );
    let loaded = again.load().expect("loads");
    let settings = loaded.active().expect("active").settings().clone();
    let reloaded = settings.oauth2_provider().expect("provider");
    assert_eq!(reloaded.refresh_token().expose_secret(), "1//rotated-refresh-2");
    assert_clean(&format!("{settings:?} {reloaded:?} {loaded:?}"));
    tokens.expire_all();
    reloaded.access_token().await.expect("the stored token works");
    assert_eq!(endpoint.requests(), 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_hostile_token_endpoint_is_an_error_not_a_panic() {
    let tokens = BearerTokens::new();
    let endpoint = TokenEndpoint::start(REFRESH, USER, &tokens).await;
    fn http(status: &str, content_type: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            http("200 OK", "application/json", &"x".repeat(200_000)),
            "larger than",
        ),
        (b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(), "not an HTTP response"),
        (
            http(
                "200 OK",
                "application/json",
                r#"{"access_token":"1//Refresh-Secret"}"#,
            ),
            "not a token response",
        ),
        (
            http("503 Unavailable", "text/html", "<h1/>"),
            "not a token response",
        ),
        (
            http(
                "400 Bad Request",
                "application/json",
                r#"{"error":"invalid_request","error_description":"bad 1//initial-Refresh-Secret"}"#,
            ),
            "bad [redacted]",
        ),
    ];
    for (answer, expected) in cases {
        endpoint.answer_raw(&answer);
        let p = provider(&endpoint);
        let e = p.access_token().await.expect_err("refused");
        assert!(e.to_string().contains(expected), "{expected}: {e}");
        assert_clean_error(&e);
    }
    // An absurd lifetime is capped, not an overflow.
    endpoint.answer_raw(&http(
        "200 OK",
        "application/json",
        r#"{"access_token":"ya29.access-long","token_type":"bearer","expires_in":18446744073709551615}"#,
    ));
    let p = provider(&endpoint);
    p.access_token().await.expect("a token");
    p.access_token().await.expect("cached");
    // An endpoint that never answers: the provider's timeout.
    endpoint.hold();
    let p = Arc::new(
        OAuth2Provider::new(OAuth2Client::new(endpoint.url(), "id"), USER, REFRESH)
            .expect("provider")
            .timeout(Duration::from_millis(200)),
    );
    let e = p.access_token().await.expect_err("timed out");
    assert!(e.is_timeout() && e.is_transient(), "{e:?}");
}

#[tokio::test]
async fn an_https_token_endpoint_is_verified() {
    let tokens = BearerTokens::new();
    let endpoint = TokenEndpoint::start_tls(REFRESH, USER, &tokens).await;
    assert!(endpoint.url().starts_with("https://localhost:"));
    let client = || OAuth2Client::new(endpoint.url(), "relaymail-test-client");
    // Its CA is not a Mozilla root: refused, and nothing was sent.
    let untrusted = OAuth2Provider::new(client(), USER, REFRESH).expect("provider");
    let e = untrusted.access_token().await.expect_err("unknown issuer");
    assert!(
        e.is_tls() && e.is_permanent() && e.to_string().contains("certificate"),
        "{e}"
    );
    assert!(
        e.hint().is_some_and(|h| h.contains("add_root_certificates_pem")),
        "{e}"
    );
    assert_clean_error(&e);
    assert_eq!(endpoint.requests(), 0);
    // Trusted: the token comes over TLS.
    let trusted = OAuth2Provider::new(client(), USER, REFRESH)
        .expect("provider")
        .add_root_certificates_pem(endpoint.ca_pem())
        .expect("root");
    let token = trusted.access_token().await.expect("token over https");
    assert!(token.expose_secret().starts_with("ya29.access-"));
    assert_eq!(endpoint.requests(), 1);
    assert!(OAuth2Provider::new(client(), USER, REFRESH)
        .expect("provider")
        .add_root_certificates_pem("no pem here")
        .is_err());
}

#[tokio::test]
async fn token_endpoints_must_be_https() {
    let client = OAuth2Client::new("http://oauth2.example.com/token", "id");
    let e = OAuth2Provider::new(client, USER, REFRESH).expect_err("refused");
    assert!(e.is_config() && e.to_string().contains("not https"), "{e}");
    assert_clean_error(&e);
}
