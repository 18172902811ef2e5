//! The SMTP settings page (feature `admin`) mounted in an application, on
//! <http://127.0.0.1:8025/admin/smtp>, until Ctrl-C.
//!
//! Run: `cargo run --example admin --features admin`
//!
//! Everything stays on this machine: the profile store, its key and the
//! outbox live in a temporary directory (removed on Ctrl-C), and the one
//! profile it starts with points at an SMTP test server in this process
//! (plain text on 127.0.0.1, user `app`, password `demo-password`). Send a
//! test email from the page and the server prints what it received; stop
//! nothing and change the password to see the report of a failed AUTH.
//!
//! **The page has no login of its own.** Whoever reaches the router can
//! change where the application's mail goes, so the application puts its
//! own authentication in front of it — here a `require_login` middleware
//! (HTTP Basic, user `admin`, with the password printed at start-up, or
//! `RELAYMAIL_ADMIN_PASSWORD` if set). Use your application's sessions or
//! single sign-on instead, and serve it over https.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use relaymail::admin::{router, AdminState};
use relaymail::outbox::{DirSpool, OutboxPolicy};
use relaymail::profiles::ProfileStore;
use relaymail::settings::SecretKey;
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Mailer, SmtpSettings, TlsMode};

const ADDRESS: &str = "127.0.0.1:8025";
const MOUNT: &str = "/admin/smtp";
const ADMIN_USER: &str = "admin";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The relay the first profile uses: in this process, on 127.0.0.1.
    let relay = TestServer::start(
        ServerConfig::new()
            .auth_mechanisms(&["PLAIN", "LOGIN"])
            .user("app", "demo-password"),
    )
    .await?;

    let dir = std::env::temp_dir().join(format!("relaymail-admin-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // A profile store with one profile. A real application keeps the key
    // outside the store (a secret manager, an environment variable).
    let store = Arc::new(ProfileStore::new(dir.join("smtp.json"), SecretKey::generate()?));
    let mut profiles = store.load()?;
    let settings = SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(relay.port()))
        .tls(TlsMode::None)
        .sender("app@example.com")
        .credentials("app", "demo-password")
        // The password crosses loopback only: the test relay has no TLS.
        .dangerous(|d| d.allow_plaintext_auth(true))
        .timeout(Duration::from_secs(10))
        .build()?;
    profiles.add("test relay", settings, true)?;
    store.save(&mut profiles)?;

    // The application's mailer follows the store (a save on the page
    // switches it) and keeps what it cannot deliver in an outbox.
    let spool = DirSpool::open(dir.join("outbox"))?;
    let mailer = store.mailer(|s| Mailer::builder(s).outbox(spool, OutboxPolicy::default()).build())?;

    let password = match std::env::var("RELAYMAIL_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => p,
        _ => random_password()?,
    };
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_USER}:{password}"))
    );

    let state = AdminState::new(Arc::clone(&store)).with_mailer(mailer.clone());
    let app = axum::Router::new()
        .nest(MOUNT, router(state))
        .layer(middleware::from_fn_with_state(Arc::new(expected), require_login));

    let listener = tokio::net::TcpListener::bind(ADDRESS).await?;
    println!("settings page: http://{ADDRESS}{MOUNT}");
    println!("log in as {ADMIN_USER:?} with password {password:?}");
    println!(
        "relay: the test server on {} (user \"app\", password \"demo-password\")",
        relay.addr()
    );
    println!("data: {} (removed on exit)", dir.display());
    println!("Ctrl-C to stop");

    // What the relay receives, as it arrives.
    let mut events = relay.subscribe();
    let relay = Arc::new(relay);
    let watcher = {
        let relay = Arc::clone(&relay);
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let relaymail::testing::ServerEvent::MessageAccepted { .. } = event {
                    if let Some(m) = relay.messages().last() {
                        println!(
                            "relay received a message from <{}> to {:?}",
                            m.mail_from, m.rcpt_to
                        );
                    }
                }
            }
        })
    };

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;

    println!("stopping");
    watcher.abort();
    mailer.shutdown(Duration::from_secs(5)).await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The application's authentication in front of the page: HTTP Basic with
/// one user. Anything else gets 401 and the browser's login prompt.
async fn require_login(State(expected): State<Arc<String>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // Digests compared, not the texts: how long the comparison takes says
    // nothing about how much of the password was right.
    let digest = |bytes: &[u8]| ring::digest::digest(&ring::digest::SHA256, bytes);
    if digest(given).as_ref() == digest(expected.as_bytes()).as_ref() {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"relaymail settings\", charset=\"UTF-8\"",
        )],
        "log in to change the SMTP settings\n",
    )
        .into_response()
}

/// 16 random bytes from the operating system, as hex.
fn random_password() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
