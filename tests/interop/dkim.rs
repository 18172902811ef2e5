//! DKIM (feature `dkim`) through Postfix: a signed message goes through
//! smtpd and cleanup (which add a Received field, a Message-Id and a Date,
//! and store long lines their own way), is kept in the hold queue by an
//! access rule (`dkim-hold@example.net HOLD`, .ci/interop/start.sh), read
//! back with postcat as Postfix would deliver it, and still verifies with
//! mail-auth and the public key given by the test.

use std::process::Command;

use relaymail::dkim::{Canonicalization, DkimConfig, DkimSigner};
use relaymail::{Email, Envelope, Mailer, TlsMode};

use crate::dkim_support::mail_auth_passes;
use crate::{var, Interop};

const RSA: &str = include_str!("../dkim/keys/rsa2048.pem");
const ED25519: &str = include_str!("../dkim/keys/ed25519.pem");
const HOLD: &str = "dkim-hold@example.net";

/// The queue id of a `250 2.0.0 Ok: queued as ID` reply.
fn queue_id(reply: &relaymail::Reply) -> String {
    let text = reply.text();
    text.rsplit(' ')
        .next()
        .filter(|_| text.contains("queued as"))
        .unwrap_or_else(|| panic!("no queue id in {reply}"))
        .to_owned()
}

/// A Postfix command from the interop instance's configuration: the whole
/// output, judged once the command ended.
fn postfix_tool(tool: &str, args: &[&str]) -> Vec<u8> {
    let conf = format!("{}/postfix-conf", var("RELAYMAIL_INTEROP_DIR"));
    let path = format!("/usr/sbin/{tool}");
    let program = if std::path::Path::new(&path).exists() {
        path
    } else {
        tool.to_owned()
    };
    let out = Command::new(&program)
        .arg("-c")
        .arg(&conf)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The held message as Postfix has it (header and body, CRLF line endings
/// as on the wire of the next hop), then removed from the hold queue.
fn held(id: &str) -> Vec<u8> {
    let text = postfix_tool("postcat", &["-bh", "-q", id]);
    postfix_tool("postsuper", &["-d", id, "hold"]);
    let mut out = Vec::with_capacity(text.len() + text.len() / 40);
    for line in text.split(|&b| b == b'\n') {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    // split() gives an empty piece after the final LF.
    out.truncate(out.len() - 2);
    out
}

async fn assert_verifies(what: &str, message: &[u8], signer: &DkimSigner) {
    let text = String::from_utf8_lossy(message);
    assert!(
        text.starts_with("Received: from"),
        "{what}: Postfix's copy: {text}"
    );
    if let Err(v) = mail_auth_passes(message, &signer.dns_name(), &signer.dns_record()).await {
        panic!("{what}: {v:?}\n{text}");
    }
}

#[tokio::test]
async fn signed_mail_still_verifies_as_postfix_queued_it() {
    let Some(env) = Interop::get("postfix dkim") else {
        return;
    };
    for (name, key, canon) in [
        ("rsa relaxed", RSA, Canonicalization::Relaxed),
        ("ed25519 simple", ED25519, Canonicalization::Simple),
    ] {
        let settings = env
            .settings(env.postfix_port, TlsMode::StartTls)
            .dkim(DkimConfig::new("example.com", "mail2024", key).canonicalization(canon, canon))
            .build()
            .expect("settings");
        let signer = settings.dkim().expect("dkim").clone();
        // Through the mailer: composed, signed, sent (BDAT: Postfix offers CHUNKING).
        let mailer = Mailer::new(settings.clone()).expect("mailer");
        let receipt = mailer
            .send_email(
                Email::new()
                    .to(HOLD)
                    .subject(format!("DKIM through Postfix: {name} – Grüße"))
                    .text(format!(
                        "{}\n.a dot first\ntrailing   \n",
                        "a long line ".repeat(400)
                    )),
            )
            .await
            .expect("queued");
        let message = held(&queue_id(receipt.reply()));
        assert_verifies(name, &message, &signer).await;
        mailer.shutdown(std::time::Duration::from_secs(10)).await;
        // A raw message on a bare connection (DATA), with fields Postfix
        // completes (no Date, no Message-ID).
        let s = settings.to_builder().chunking(false).build().expect("settings");
        let mut conn = relaymail::Connection::open(&s).await.expect("connected");
        let envelope = Envelope::new(
            Some("alerts@example.com".parse().expect("address")),
            vec![HOLD.parse().expect("address")],
        )
        .expect("envelope");
        let raw = format!(
            "From: alerts@example.com\r\nTo: {HOLD}\r\nSubject:  raw {name}\r\n\r\nhello\r\n\r\n\r\n"
        );
        let d = conn.send(envelope, raw.into_bytes()).await.expect("queued");
        conn.quit().await.expect("quit");
        let message = held(&queue_id(d.reply()));
        let text = String::from_utf8_lossy(&message);
        assert!(
            text.contains("Message-Id:") && text.contains("Date:"),
            "Postfix added them: {text}"
        );
        assert_verifies(&format!("{name}, raw"), &message, &signer).await;
    }
}
