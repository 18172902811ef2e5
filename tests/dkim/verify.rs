//! relaymail's signatures verified by mail-auth: every key form and
//! canonicalization pass, and each change a signature must catch fails.

use relaymail::dkim::{Canonicalization, DkimConfig};

use crate::support::{mail_auth_passes, mail_auth_verdicts};
use crate::{awkward_message, matrix, signer, ED25519, ED25519_OTHER, RSA};

/// `signed` with `find` replaced by `replace` once (which must be there).
fn edit(signed: &[u8], find: &str, replace: &str) -> Vec<u8> {
    let text = String::from_utf8(signed.to_vec()).expect("utf-8");
    assert!(text.contains(find), "{find:?} is in the message");
    text.replacen(find, replace, 1).into_bytes()
}

/// `signed` with `line` (CRLF included) inserted right after the
/// DKIM-Signature field, or at the end of the header section.
fn insert_header(signed: &[u8], line: &str, at_end: bool) -> Vec<u8> {
    let text = String::from_utf8(signed.to_vec()).expect("utf-8");
    if at_end {
        return text
            .replacen("\r\n\r\n", &format!("\r\n{line}\r\n"), 1)
            .into_bytes();
    }
    // The first line that is not part of the DKIM-Signature field.
    let mut at = 0;
    for (i, l) in text.split_inclusive("\r\n").enumerate() {
        if i > 0 && !l.starts_with('\t') {
            break;
        }
        at += l.len();
    }
    let mut out = text[..at].to_owned();
    out.push_str(line);
    out.push_str(&text[at..]);
    out.into_bytes()
}

#[tokio::test]
async fn every_key_form_and_canonicalization_verifies() {
    let message = awkward_message();
    for (name, config) in matrix() {
        let s = signer(config);
        let signed = s.sign(&message).expect("signed");
        if let Err(verdicts) = mail_auth_passes(&signed, &s.dns_name(), &s.dns_record()).await {
            panic!("{name}: {verdicts:?}\n{}", String::from_utf8_lossy(&signed));
        }
    }
}

#[tokio::test]
async fn edge_case_messages_verify() {
    let cases: [(&str, &[u8]); 6] = [
        ("no body", b"From: a@example.com\r\nSubject: x\r\n"),
        ("empty body", b"From: a@example.com\r\n\r\n"),
        ("only empty lines", b"From: a@example.com\r\n\r\n\r\n\r\n"),
        ("no final line break", b"From: a@example.com\r\n\r\nlast line"),
        // Not at the end of the body: mail-auth 0.13 keeps a trailing line
        // of white space in the relaxed form, where RFC 6376 §3.4.4 (and
        // OpenDKIM, Gmail, dkimpy) ignore it as an empty line; dkimpy checks
        // that case (tests/dkim/dkimpy.rs).
        (
            "white space lines",
            b"From: a@example.com\r\n\r\n \t \r\nx\r\n  \r\ny\r\n",
        ),
        ("a very long header", &long_header()),
    ];
    for (name, config) in matrix() {
        let s = signer(config);
        for (what, message) in cases {
            let signed = s.sign(message).expect(what);
            if let Err(verdicts) = mail_auth_passes(&signed, &s.dns_name(), &s.dns_record()).await {
                panic!("{name}, {what}: {verdicts:?}");
            }
        }
    }
}

fn long_header() -> Vec<u8> {
    let to: Vec<String> = (0..40).map(|i| format!("user{i}@example.net")).collect();
    format!(
        "From: a@example.com\r\nTo: {}\r\nSubject: {}\r\n\r\nbody\r\n",
        to.join(",\r\n "),
        "word ".repeat(60)
    )
    .into_bytes()
}

#[tokio::test]
async fn changes_after_signing_fail() {
    for (name, config) in matrix() {
        let s = signer(config);
        let signed = s.sign(&awkward_message()).expect("signed");
        let (dns, record) = (s.dns_name(), s.dns_record());
        mail_auth_passes(&signed, &dns, &record).await.expect(&name);
        let changed: Vec<(&str, Vec<u8>)> = vec![
            ("body", edit(&signed, "99%", "98%")),
            (
                "body appended",
                [signed.as_slice(), b"P.S. click here\r\n"].concat(),
            ),
            ("subject", edit(&signed, "Disk   full", "Disk   empty")),
            (
                "signed header removed",
                edit(&signed, "Cc: audit@example.net\r\n", ""),
            ),
            (
                "second From above",
                insert_header(&signed, "From: attacker@example.org\r\n", false),
            ),
            (
                "second From below",
                insert_header(&signed, "From: attacker@example.org", true),
            ),
        ];
        for (what, message) in changed {
            let verdicts = mail_auth_verdicts(&message, &dns, &record).await;
            assert_eq!(verdicts.len(), 1, "{name}, {what}: {verdicts:?}");
            assert_ne!(verdicts[0], "pass", "{name}: a changed {what} must fail");
        }
        // What a signature does not cover may change: an unsigned field
        // added, or a second Subject above the signed one (only From is
        // oversigned; the verifier reads the bottom-most Subject).
        for (what, message) in [
            (
                "unsigned field",
                insert_header(&signed, "X-Spam-Score: 0.1\r\n", false),
            ),
            (
                "Subject above",
                insert_header(&signed, "Subject: another\r\n", false),
            ),
        ] {
            mail_auth_passes(&message, &dns, &record)
                .await
                .unwrap_or_else(|v| panic!("{name}, {what}: {v:?}"));
        }
    }
}

#[tokio::test]
async fn relaxed_survives_what_relays_do_and_simple_does_not() {
    let message = awkward_message();
    for (key_name, key) in [("rsa", RSA), ("ed25519", ED25519)] {
        for canon in [Canonicalization::Relaxed, Canonicalization::Simple] {
            let s = signer(DkimConfig::new("example.com", "mail2024", key).canonicalization(canon, canon));
            let signed = s.sign(&message).expect("signed");
            // A relay re-folds a header, changes white space in the body and
            // the case of a header name.
            let relayed = edit(
                &edit(
                    &edit(
                        &signed,
                        "To: ops@example.net,\r\n  oncall",
                        "To: ops@example.net, oncall",
                    ),
                    "99%   ",
                    "99% ",
                ),
                "Cc:",
                "CC:",
            );
            let result = mail_auth_passes(&relayed, &s.dns_name(), &s.dns_record()).await;
            match canon {
                Canonicalization::Relaxed => result.unwrap_or_else(|v| panic!("{key_name} relaxed: {v:?}")),
                _ => assert!(result.is_err(), "{key_name} simple must not survive"),
            }
        }
    }
}

#[tokio::test]
async fn another_key_or_name_fails() {
    let s = signer(DkimConfig::new("example.com", "mail2024", ED25519));
    let signed = s.sign(&awkward_message()).expect("signed");
    let other = signer(DkimConfig::new("example.com", "mail2024", ED25519_OTHER));
    let verdicts = mail_auth_verdicts(&signed, &s.dns_name(), &other.dns_record()).await;
    assert!(verdicts.len() == 1 && verdicts[0] != "pass", "{verdicts:?}");
    // The record published under another name: not found.
    let verdicts = mail_auth_verdicts(&signed, "other._domainkey.example.com", &s.dns_record()).await;
    assert!(verdicts.len() == 1 && verdicts[0] != "pass", "{verdicts:?}");
    // RSA signature, Ed25519 record.
    let rsa = signer(DkimConfig::new("example.com", "mail2024", RSA));
    let signed = rsa.sign(&awkward_message()).expect("signed");
    let verdicts = mail_auth_verdicts(&signed, &rsa.dns_name(), &s.dns_record()).await;
    assert!(verdicts.len() == 1 && verdicts[0] != "pass", "{verdicts:?}");
}

#[tokio::test]
async fn a_custom_list_of_signed_fields_is_what_is_signed() {
    let s = signer(
        DkimConfig::new("example.com", "mail2024", ED25519).signed_headers(["Subject", "X-Mailer-Note"]),
    );
    let signed = s.sign(&awkward_message()).expect("signed");
    let text = String::from_utf8_lossy(&signed);
    assert!(text.contains("h=from:from:subject:x-mailer-note;"), "{text}");
    mail_auth_passes(&signed, &s.dns_name(), &s.dns_record())
        .await
        .expect("passes");
    // The To field is not covered now; the custom field is.
    let to_changed = edit(&signed, "ops@example.net", "attacker@example.org");
    mail_auth_passes(&to_changed, &s.dns_name(), &s.dns_record())
        .await
        .expect("To is not signed");
    let note_changed = edit(&signed, "not in the signed list", "changed");
    assert!(mail_auth_passes(&note_changed, &s.dns_name(), &s.dns_record())
        .await
        .is_err());
}
