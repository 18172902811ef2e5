//! The settings page (feature `admin`) walked through in a real browser, as
//! an administrator would: headless Chromium driven over WebDriver
//! (chromedriver at `RELAYMAIL_WEBDRIVER`, which `.ci/browser/start.sh`
//! starts). Elements are found by the ids the page promises (see
//! `relaymail::admin`); everything runs on 127.0.0.1.
//!
//! Without `RELAYMAIL_WEBDRIVER` the test prints "skipped" and passes,
//! except under `CI=true`, where it fails. With `RELAYMAIL_SCREENSHOTS=DIR`
//! it saves PNG screenshots of the pages it visits into DIR (the ones under
//! `docs/screenshots/` were made this way).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use relaymail::admin::{router, AdminState};
use relaymail::outbox::{DirSpool, OutboxPolicy};
use relaymail::profiles::ProfileStore;
use relaymail::settings::SecretKey;
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Envelope, Mailer, Message, SendOutcome, SmtpSettings, TlsMode};

/// Upper bound for anything expected to happen.
const WAIT: Duration = Duration::from_secs(10);
/// Between two looks at the outbox page while the retried draft goes out.
const REFRESH: Duration = Duration::from_millis(200);

const USER: &str = "app";
const PASSWORD: &str = "right-password";
const WRONG_PASSWORD: &str = "wrong-password";

/// The WebDriver URL, or `None` ("skipped") outside CI without it.
fn webdriver() -> Option<String> {
    match std::env::var("RELAYMAIL_WEBDRIVER") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "admin_browser: RELAYMAIL_WEBDRIVER is not set under CI=true (.ci/run starts chromedriver)"
            );
            println!("skipped: no RELAYMAIL_WEBDRIVER (.ci/browser/start.sh DIR starts chromedriver and writes DIR/env)");
            None
        }
    }
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relaymail-admin-browser-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Where screenshots go (`RELAYMAIL_SCREENSHOTS`), if anywhere.
fn screenshot_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RELAYMAIL_SCREENSHOTS").filter(|d| !d.is_empty())?;
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    Some(dir)
}

/// Headless Chromium with a profile of its own in `user_data`.
async fn browser(webdriver: &str, user_data: &Path) -> Client {
    let args = [
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--window-size=1280,1000".to_owned(),
        format!("--user-data-dir={}", user_data.display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".to_owned(), serde_json::json!("chrome"));
    caps.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({ "args": args }),
    );
    // Plain http to chromedriver on loopback: no TLS connector.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(webdriver)
        .await
        .expect("a WebDriver session (is chromedriver running?)")
}

/// The browser and where it saves screenshots.
struct Person {
    client: Client,
    shots: Option<PathBuf>,
}

impl Person {
    async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("goto");
    }

    async fn find(&self, id: &str) -> Element {
        match self.client.find(Locator::Id(id)).await {
            Ok(element) => element,
            Err(e) => panic!("#{id} on {}: {e}", self.url().await),
        }
    }

    /// Waits (bounded) for `#id`: after a click that loads a new page, an
    /// element only that page has.
    async fn wait_for(&self, id: &str) -> Element {
        // The page's ids are plain words: `#id` selects the same element.
        self.wait_for_css(&format!("#{id}")).await
    }

    /// Waits (bounded) for an element matching the CSS `selector`.
    async fn wait_for_css(&self, selector: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(selector))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                let source = self.client.source().await.unwrap_or_default();
                panic!("{selector} did not appear on {}: {e}\n{source}", self.url().await)
            }
        }
    }

    async fn exists(&self, id: &str) -> bool {
        !self
            .client
            .find_all(Locator::Id(id))
            .await
            .expect("find_all")
            .is_empty()
    }

    async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    async fn text(&self, id: &str) -> String {
        self.find(id).await.text().await.expect("text")
    }

    /// Replaces the text of the input `#id` by `value`, as typed.
    async fn type_into(&self, id: &str, value: &str) {
        let input = self.find(id).await;
        input.clear().await.expect("clear");
        if !value.is_empty() {
            input.send_keys(value).await.expect("type");
        }
    }

    async fn click(&self, id: &str) {
        self.find(id).await.click().await.expect("click");
    }

    async fn select(&self, id: &str, value: &str) {
        self.find(id).await.select_by_value(value).await.expect("select");
    }

    /// Ticks or unticks the checkbox `#id`.
    async fn check(&self, id: &str, on: bool) {
        let checkbox = self.find(id).await;
        if checkbox.is_selected().await.expect("checked?") != on {
            checkbox.click().await.expect("click");
        }
    }

    async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    async fn screenshot(&self, name: &str) {
        if let Some(dir) = &self.shots {
            let png = self.client.screenshot().await.expect("screenshot");
            std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
        }
    }
}

fn message(subject: &str) -> Message {
    let address = |a: &str| a.parse::<relaymail::Address>().expect("address");
    Message::new(
        Envelope::new(Some(address("app@example.com")), vec![address("ops@example.net")]).expect("envelope"),
        format!("From: app@example.com\r\nTo: ops@example.net\r\nSubject: {subject}\r\n\r\nhello\r\n")
            .into_bytes(),
    )
}

fn subjects(relay: &TestServer) -> Vec<String> {
    relay
        .messages()
        .iter()
        .filter_map(|m| {
            String::from_utf8_lossy(&m.data)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect()
}

fn relay_config() -> ServerConfig {
    ServerConfig::new()
        .starttls(false)
        .auth_mechanisms(&["PLAIN", "LOGIN"])
        .user(USER, PASSWORD)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_sets_up_tests_and_recovers_the_relay() {
    let Some(webdriver) = webdriver() else {
        return;
    };
    let dir = temp_dir("walk");
    let mut relay = TestServer::start(relay_config()).await.expect("relay");
    let relay_port = relay.port();

    // The application's side: a profile store, a mailer that follows it
    // and keeps what it cannot deliver in an outbox (no retry of its own
    // during the test: the first backoff is an hour).
    let store = Arc::new(ProfileStore::new(
        dir.join("smtp.json"),
        SecretKey::generate().expect("key"),
    ));
    let spool = DirSpool::open(dir.join("outbox")).expect("spool");
    let placeholder = SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(relay_port))
        .tls(TlsMode::None)
        .sender("app@example.com")
        .build()
        .expect("settings");
    let mailer = Mailer::builder(placeholder)
        .outbox(
            spool,
            OutboxPolicy::default()
                .with_initial_backoff(Duration::from_secs(3600))
                .with_max_backoff(Duration::from_secs(3600)),
        )
        // The default relay-down rule: while the relay is stopped it may be
        // marked down; "retry all" ends that (Mailer::retry_relay_now).
        .build()
        .expect("mailer");
    store.follow(&mailer);

    // The page, mounted where an application would put it.
    let state = AdminState::new(Arc::clone(&store)).with_mailer(mailer.clone());
    let app = axum::Router::new().nest("/admin/smtp", router(state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}/admin/smtp", listener.local_addr().expect("addr"));
    let http = tokio::spawn(async move { axum::serve(listener, app).await });

    let person = Person {
        client: browser(&webdriver, &dir.join("chromium")).await,
        shots: screenshot_dir(),
    };

    // 1. A new profile with a port out of range: the error is beside the field.
    person.open(&base).await;
    person.find("no-profiles").await;
    person.click("new-profile").await;
    person.wait_for("profile-form").await;
    person.type_into("name", "primary").await;
    person.type_into("host", "127.0.0.1").await;
    person.type_into("port", "70000").await;
    person.select("tls", "none").await;
    person.type_into("sender", "app@example.com").await;
    person.click("save").await;
    let error = person.wait_for("port-error").await;
    assert!(
        !error.text().await.expect("text").trim().is_empty(),
        "the port's error says something"
    );
    let port = person.find("port").await;
    assert_eq!(
        port.attr("aria-invalid").await.expect("attr").as_deref(),
        Some("true")
    );
    let described_by = port
        .attr("aria-describedby")
        .await
        .expect("attr")
        .unwrap_or_default();
    assert!(
        described_by.split_whitespace().any(|id| id == "port-error"),
        "{described_by:?}"
    );
    assert!(store.load().expect("load").is_empty(), "nothing saved");
    person.screenshot("form-port-error").await;

    // 2. The port fixed and the password given: saved, back on the list.
    person.type_into("port", &relay_port.to_string()).await;
    person.check("auth", true).await;
    person.type_into("username", USER).await;
    person.type_into("password", PASSWORD).await;
    // The test relay has no TLS: sign-in in clear text, on loopback only.
    person.check("allow_plaintext_auth", true).await;
    person.check("enabled", true).await;
    person.click("save").await;
    person.wait_for("profiles").await;
    let row = person
        .client
        .find(Locator::Css("tr[data-profile=\"primary\"]"))
        .await
        .expect("the new profile's row");
    assert!(
        row.text().await.expect("text").contains("in use"),
        "the only enabled profile is in use"
    );
    let saved = store.load().expect("load");
    assert_eq!(saved.get("primary").expect("saved").settings().port(), relay_port);
    person.screenshot("list").await;

    // Opened again, the password is not sent back to the browser.
    row.find(Locator::Css("a.edit"))
        .await
        .expect("edit link")
        .click()
        .await
        .expect("click");
    person.wait_for("profile-form").await;
    let password = person.find("password").await;
    assert_eq!(password.prop("value").await.expect("value").as_deref(), Some(""));
    assert!(
        !person.source().await.contains(PASSWORD),
        "the password is not in the page"
    );

    // 3. A test email: delivered, and the relay has it.
    person.type_into("test_to", "admin@example.com").await;
    person.click("send-test").await;
    let verdict = person.wait_for("verdict").await.text().await.expect("text");
    assert!(verdict.contains("delivered"), "verdict: {verdict}");
    let received = relay.wait_for_messages(1, WAIT).await.expect("the test email");
    assert_eq!(received[0].rcpt_to, vec!["admin@example.com".to_owned()]);
    assert_eq!(received[0].auth_user.as_deref(), Some(USER));
    assert!(
        !person.source().await.contains(PASSWORD),
        "the password is not in the report"
    );
    person.screenshot("report-delivered").await;

    // 4. A wrong password: the report says AUTH failed, and why.
    person.type_into("password", WRONG_PASSWORD).await;
    person.click("send-test").await;
    // The page before had a report too: wait for the one only the new
    // report has, a failed auth stage.
    let auth = person
        .wait_for_css("table.stages tr[data-stage=\"auth\"].failed")
        .await;
    assert_eq!(
        auth.attr("class").await.expect("class").as_deref(),
        Some("failed")
    );
    let verdict = person.text("verdict").await;
    assert!(
        verdict.to_lowercase().contains("failed at auth"),
        "verdict: {verdict}"
    );
    assert!(!person.text("hint").await.trim().is_empty(), "a hint");
    let source = person.source().await;
    assert!(
        !source.contains(WRONG_PASSWORD) && !source.contains(PASSWORD),
        "no password in the page"
    );
    assert_eq!(relay.messages().len(), 1, "nothing sent with the wrong password");
    person.screenshot("report-auth-failed").await;

    // 5. The relay goes down: the application's mail waits in the outbox.
    relay.stop().await;
    let outcome = mailer.send_or_enqueue(message("while down")).await.expect("kept");
    let SendOutcome::Deferred { draft, .. } = outcome else {
        panic!("delivered while the relay is down: {outcome:?}");
    };
    person.open(&format!("{base}/outbox")).await;
    let row = format!("tr[data-draft=\"{draft}\"]");
    person
        .client
        .find(Locator::Css(&format!("#drafts {row}")))
        .await
        .expect("the draft's row");
    assert!(!person.exists("outbox-empty").await);
    person.screenshot("outbox-draft").await;

    // The relay is back at the same address; "retry all" sends the draft.
    relay = TestServer::start(relay_config().port(relay_port))
        .await
        .expect("relay again");
    person.click("retry-all").await;
    person.wait_for("flash").await;
    let flash = person.text("flash").await;
    let Ok(received) = relay.wait_for_messages(1, WAIT).await else {
        person.open(&format!("{base}/outbox")).await;
        panic!(
            "the draft was not delivered (flash {flash:?}; sessions {:?}; stats {:?}); the outbox page:\n{}",
            relay.sessions(),
            mailer.stats(),
            person.source().await
        );
    };
    assert_eq!(subjects(&relay), vec!["while down".to_owned()], "{received:?}");
    // The page shows an empty outbox once the deliverer has removed the
    // draft: looked at again a few times, for at most WAIT.
    let deadline = Instant::now() + WAIT;
    loop {
        person.open(&format!("{base}/outbox")).await;
        if person.exists("outbox-empty").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox still shows the draft:\n{}",
            person.source().await
        );
        tokio::time::sleep(REFRESH).await;
    }
    person.screenshot("outbox-empty").await;

    person.client.close().await.expect("close the browser");
    http.abort();
    mailer.shutdown(WAIT).await;
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}
