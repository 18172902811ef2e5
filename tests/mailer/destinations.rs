//! File and memory destinations: the Mailer delivers without a network, and
//! everything above the delivery (pool, redirect, outbox) works unchanged.

use std::path::PathBuf;

use relaymail::dev::{Destination, MemoryInbox};
use relaymail::outbox::{DirSpool, OutboxPolicy};
use relaymail::{Email, Mailer, Redirect, SendOutcome, SmtpSettings};

use super::WAIT;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relaymail-dest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn email(to: &str, subject: &str) -> Email {
    Email::new().to(to).subject(subject).text("Hello from relaymail.")
}

#[tokio::test]
async fn a_file_destination_writes_each_message_as_eml_and_json() {
    let dir = temp_dir("files").join("mail");
    let settings = SmtpSettings::builder()
        .sender("app@example.com")
        .destination(Destination::file(&dir))
        .build()
        .expect("no host needed");
    let mailer = Mailer::builder(settings)
        .max_connections(2)
        .build()
        .expect("mailer");
    let mut receipts = Vec::new();
    for i in 0..3 {
        let to = format!("user{i}@example.net");
        receipts.push(
            mailer
                .send_email(email(&to, &format!("Note {i}")).cc("audit@example.org"))
                .await
                .expect("written"),
        );
    }
    for (i, r) in receipts.iter().enumerate() {
        let to = format!("user{i}@example.net");
        assert_eq!(
            r.accepted().map(ToString::to_string).collect::<Vec<_>>(),
            [to.as_str(), "audit@example.org"]
        );
        assert!(r.reply().text().contains("written to"), "{}", r.reply().text());
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("the directory was created")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 6, "{names:?}");
    let emls: Vec<&String> = names.iter().filter(|n| n.ends_with(".eml")).collect();
    assert_eq!(emls.len(), 3, "no temporary file is left: {names:?}");
    let mut subjects = Vec::new();
    for eml in emls {
        let id = eml.trim_end_matches(".eml");
        let data = std::fs::read_to_string(dir.join(eml)).expect("eml");
        let json = std::fs::read_to_string(dir.join(format!("{id}.json"))).expect("its envelope");
        let subject = data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .expect("subject")
            .to_owned();
        let n = subject.trim_start_matches("Note ");
        assert_eq!(
            json,
            format!(
                "{{\"id\":\"{id}\",\"from\":\"app@example.com\",\"to\":[\"user{n}@example.net\",\"audit@example.org\"]}}\n"
            )
        );
        subjects.push(subject);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [format!("{id}.eml"), format!("{id}.json")] {
                let mode = std::fs::metadata(dir.join(&f))
                    .expect("meta")
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
    }
    subjects.sort();
    assert_eq!(subjects, ["Note 0", "Note 1", "Note 2"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    let stats = mailer.shutdown(WAIT).await;
    assert_eq!(stats.delivered, 3);
    let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
}

#[tokio::test]
async fn a_memory_destination_from_a_url_records_messages_after_redirect() {
    let settings = SmtpSettings::from_url("memory://redirected-tests?from=app%40example.com").expect("url");
    assert_eq!(
        settings.url().to_string(),
        "memory://redirected-tests?from=app%40example.com"
    );
    let settings = settings
        .to_builder()
        .redirect(Redirect::to(["qa@example.com".parse().expect("address")]))
        .build()
        .expect("settings");
    let mailer = Mailer::builder(settings).build().expect("mailer");
    let inbox = MemoryInbox::named("redirected-tests");
    inbox.take();
    mailer
        .send_email(email("customer@example.net", "Your invoice"))
        .await
        .expect("recorded");
    let got = inbox.wait_for(1, WAIT).await.expect("one message");
    assert_eq!(got[0].from(), "app@example.com");
    assert_eq!(got[0].to(), ["qa@example.com"], "redirect applies above");
    assert!(got[0].text().contains("Subject: Your invoice"));
    assert!(
        got[0].text().contains("customer@example.net"),
        "the original recipient is kept in a header"
    );
    assert_eq!(inbox.take().len(), 1);
    assert!(inbox.is_empty());
}

#[tokio::test]
async fn drafts_in_the_outbox_are_delivered_to_a_memory_destination() {
    let spool_dir = temp_dir("outbox");
    let inbox = MemoryInbox::named("outbox-tests");
    inbox.take();
    let settings = SmtpSettings::builder()
        .sender("app@example.com")
        .destination(Destination::Memory(inbox.clone()))
        .build()
        .expect("settings");
    let mailer = Mailer::builder(settings)
        .outbox(
            DirSpool::open(&spool_dir).expect("spool"),
            OutboxPolicy::default(),
        )
        .build()
        .expect("mailer");
    let message = mailer
        .composer()
        .compose(email("later@example.net", "Queued"))
        .await
        .expect("composed");
    mailer.enqueue(message).await.expect("on disk");
    let got = inbox.wait_for(1, WAIT).await.expect("the deliverer delivered it");
    assert_eq!(got[0].to(), ["later@example.net"]);
    let message = mailer
        .composer()
        .compose(email("now@example.net", "Direct"))
        .await
        .expect("composed");
    assert!(matches!(
        mailer.send_or_enqueue(message).await.expect("sent"),
        SendOutcome::Delivered(_)
    ));
    assert_eq!(inbox.wait_for(2, WAIT).await.expect("two").len(), 2);
    let _ = mailer.shutdown(WAIT).await;
    let _ = std::fs::remove_dir_all(spool_dir);
}

#[test]
fn destination_urls_are_checked_field_by_field_and_round_trip() {
    let s = SmtpSettings::from_url("file:///var/tmp/dev%20mail?from=app@example.com").expect("url");
    assert_eq!(s.destination(), &Destination::file("/var/tmp/dev mail"));
    assert_eq!(s.host(), "localhost", "never contacted");
    let again = SmtpSettings::from_url(&s.url().to_string()).expect("its own URL");
    assert_eq!(again.destination(), s.destination());

    let e = SmtpSettings::from_url("file://relative/dir?from=app@example.com").expect_err("relative");
    assert!(e.field("destination").is_some(), "{e}");
    let e = SmtpSettings::from_url("memory://two words?from=app@example.com").expect_err("name");
    assert!(e.field("destination").is_some(), "{e}");
    // Whatever looks like user information is refused, never echoed.
    for url in [
        "file:///var/mail/ana:s3cret@host?from=app@example.com",
        "memory://ana:s3cret@host?from=app@example.com",
        "file://relative:s3cret/dir?from=app@example.com",
        "memory://ana:s3cret?from=app@example.com",
    ] {
        let e = SmtpSettings::from_url(url).expect_err(url);
        assert!(!format!("{e} {e:?}").contains("s3cret"), "{url}: {e}");
    }
    let at = SmtpSettings::from_url("file:///var/mail/a%40b?from=app@example.com").expect("encoded '@'");
    assert_eq!(at.destination(), &Destination::file("/var/mail/a@b"));
    assert!(at.url().to_string().starts_with("file:///var/mail/a%40b?"));
    let e = SmtpSettings::from_url("memory://ok?from=app@example.com&tls=none").expect_err("param");
    assert!(e.to_string().contains("takes only from"), "{e}");
    // A relay still needs its host.
    let e = SmtpSettings::builder()
        .sender("app@example.com")
        .build()
        .expect_err("no host");
    assert!(e.field("host").is_some(), "{e}");
}

#[cfg(feature = "serde")]
#[test]
fn a_stored_destination_survives_serde_and_a_bad_one_is_a_field_error() {
    let s = SmtpSettings::builder()
        .sender("app@example.com")
        .destination(Destination::memory("stored"))
        .build()
        .expect("settings");
    let json = serde_json::to_string(&s).expect("json");
    assert!(json.contains("\"destination\":\"memory://stored\""), "{json}");
    let back: SmtpSettings = serde_json::from_str(&json).expect("back");
    assert_eq!(back.destination(), &Destination::memory("stored"));
    let relay = json.replace(",\"destination\":\"memory://stored\"", "");
    let relay: SmtpSettings = serde_json::from_str(&relay).expect("relay");
    assert!(relay.destination().is_relay());
    let bad = json.replace("memory://stored", "ftp://x");
    let e = serde_json::from_str::<SmtpSettings>(&bad).expect_err("bad");
    assert!(e.to_string().contains("destination"), "{e}");
}

#[tokio::test]
async fn a_connection_or_diagnosis_never_goes_to_the_placeholder_host() {
    let settings = SmtpSettings::builder()
        .sender("app@example.com")
        .destination(Destination::memory("no-connection"))
        .build()
        .expect("settings");
    let e = relaymail::Connection::open(&settings)
        .await
        .expect_err("no relay");
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("memory://no-connection"), "{e}");
    let report = relaymail::diagnose::verify(&settings).await;
    assert!(!report.is_ok());
    assert!(report.to_string().contains("not to an SMTP relay"), "{report}");
}
