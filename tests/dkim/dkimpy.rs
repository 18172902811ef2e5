//! relaymail's signatures verified by Python's dkimpy (tests/dkim/
//! dkimpy_verify.py in a child process), its DNS lookup replaced by the
//! test's records. Without python3, dkimpy or PyNaCl the test says it was
//! skipped — except under `CI=true`, where that is a failure: CI installs
//! them (.ci/run) and must never pass without this check.

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use relaymail::dkim::{DkimConfig, DkimSigner};
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Email, Mailer, SmtpSettings, TlsMode};

use crate::{awkward_message, matrix, signer, ED25519, ED25519_OTHER, RSA, WAIT};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One message for dkimpy to judge.
struct Case {
    name: String,
    expect_pass: bool,
    dns_name: String,
    record: String,
    message: Vec<u8>,
}

impl Case {
    fn new(name: impl Into<String>, expect_pass: bool, published: &DkimSigner, message: Vec<u8>) -> Case {
        Case {
            name: name.into(),
            expect_pass,
            dns_name: published.dns_name(),
            record: published.dns_record(),
            message,
        }
    }

    fn line(&self) -> String {
        format!(
            "{} {} {} {} {}\n",
            self.name,
            if self.expect_pass { "pass" } else { "fail" },
            self.dns_name,
            B64.encode(&self.record),
            B64.encode(&self.message)
        )
    }
}

/// Runs dkimpy on `cases`; `None` when it cannot run here (outside CI).
fn dkimpy(cases: &[Case]) -> Option<String> {
    let under_ci = std::env::var("CI").as_deref() == Ok("true");
    let python = std::env::var("RELAYMAIL_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dkim/dkimpy_verify.py");
    let child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(!under_ci, "CI=true but {python} cannot be run: {e}");
            eprintln!("dkimpy: skipped ({python} cannot be run: {e})");
            return None;
        }
    };
    let input: String = cases.iter().map(Case::line).collect();
    {
        // Written then closed, so the script sees the end of its input. A
        // script that died early makes this fail; its output says why.
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(input.as_bytes());
    }
    // The whole output, both streams, before anything is judged.
    let out = child.wait_with_output().expect("the child's output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let shown = format!(
        "exit: {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        out.status.code()
    );
    if out.status.code() == Some(3) && stdout.starts_with("skipped:") {
        assert!(!under_ci, "CI=true but dkimpy cannot run:\n{shown}");
        eprintln!("dkimpy: {}", stdout.trim());
        return None;
    }
    let expected_summary = format!("dkimpy: {} passed, 0 failed", cases.len());
    assert!(
        out.status.success() && stdout.lines().last() == Some(expected_summary.as_str()),
        "dkimpy disagrees:\n{shown}"
    );
    for case in cases {
        let line = format!(
            "ok {}: {}",
            case.name,
            if case.expect_pass { "pass" } else { "fail" }
        );
        assert!(stdout.lines().any(|l| l == line), "no {line:?}:\n{shown}");
    }
    eprintln!("{expected_summary}");
    Some(stdout)
}

#[tokio::test]
async fn dkimpy_verifies_what_relaymail_signs() {
    let mut cases = Vec::new();
    let message = awkward_message();
    for (name, config) in matrix() {
        let s = signer(config);
        let signed = s.sign(&message).expect("signed");
        cases.push(Case::new(format!("{name}-awkward"), true, &s, signed.clone()));
        let simple = s
            .sign(b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n")
            .expect("signed");
        cases.push(Case::new(format!("{name}-plain"), true, &s, simple));
        cases.push(Case::new(
            format!("{name}-empty-body"),
            true,
            &s,
            s.sign(b"From: a@example.com\r\n\r\n").expect("signed"),
        ));
        // Lines of white space at the end of the body: empty lines in the
        // relaxed form (RFC 6376 §3.4.4), ignored at the end.
        let trailing = s
            .sign(b"From: a@example.com\r\n\r\n \t \r\nx\r\n  \r\n\t\r\n\r\n")
            .expect("signed");
        cases.push(Case::new(
            format!("{name}-trailing-white-space-lines"),
            true,
            &s,
            trailing,
        ));
        // What must fail does, so a pass means something.
        let text = String::from_utf8(signed).expect("utf-8");
        cases.push(Case::new(
            format!("{name}-body-changed"),
            false,
            &s,
            text.replacen("99%", "98%", 1).into_bytes(),
        ));
        cases.push(Case::new(
            format!("{name}-second-from"),
            false,
            &s,
            text.replacen("\r\n\r\n", "\r\nFrom: attacker@example.org\r\n\r\n", 1)
                .into_bytes(),
        ));
    }
    let ed = signer(DkimConfig::new("example.com", "mail2024", ED25519));
    let other = signer(DkimConfig::new("example.com", "mail2024", ED25519_OTHER));
    cases.push(Case::new(
        "ed25519-other-key",
        false,
        &other,
        ed.sign(&message).expect("signed"),
    ));
    dkimpy(&cases);
}

/// Messages as a server received them from the mailer (composed by
/// relaymail, signed, sent over SMTP, DATA and BDAT), verified by dkimpy.
#[tokio::test]
async fn dkimpy_verifies_mail_sent_through_the_test_server() {
    let mut cases = Vec::new();
    for (key_name, key, chunking) in [("rsa", RSA, false), ("ed25519", ED25519, true)] {
        let srv = TestServer::start(ServerConfig::new().chunking(chunking))
            .await
            .expect("server");
        let settings = SmtpSettings::builder()
            .host("127.0.0.1")
            .port(u32::from(srv.port()))
            .tls(TlsMode::None)
            .sender("noreply@example.com")
            .sender_name("Example App")
            .dkim(DkimConfig::new("example.com", "mail2024", key))
            .build()
            .expect("settings");
        let s = settings.dkim().expect("dkim").clone();
        let mailer = Mailer::new(settings).expect("mailer");
        mailer
            .send_email(
                Email::new()
                    .to("ops@example.net")
                    .subject("Grüße from relaymail")
                    .text("Line one\n.starts with a dot\nÜmlaut and   spaces   \n")
                    .html("<p>Hello</p>"),
            )
            .await
            .expect("sent");
        let got = srv.wait_for_messages(1, WAIT).await.expect("received");
        assert_eq!(got[0].via_bdat, chunking);
        cases.push(Case::new(
            format!("mailer-{key_name}"),
            true,
            &s,
            got[0].data.clone(),
        ));
        mailer.shutdown(WAIT).await;
    }
    dkimpy(&cases);
}
