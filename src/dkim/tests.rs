//! Unit tests of the signer: what is refused and why, what is signed, how
//! the field looks. Verification by independent implementations (Stalwart's
//! mail-auth, Python's dkimpy) is in `tests/dkim`.

use super::*;
use crate::SmtpSettings;

const RSA: &str = include_str!("../../tests/dkim/keys/rsa2048.pem");
const RSA_PKCS1: &str = include_str!("../../tests/dkim/keys/rsa2048-pkcs1.pem");
const ED25519: &str = include_str!("../../tests/dkim/keys/ed25519.pem");
const ED25519_ENCRYPTED: &str = include_str!("../../tests/dkim/keys/ed25519-encrypted.pem");
const RSA_1024: &str = include_str!("../../tests/dkim/keys/rsa1024.pem");
const EC: &str = include_str!("../../tests/dkim/keys/ec-p256.pem");

const MESSAGE: &[u8] = b"From: Alerts <alerts@example.com>\r\nTo: ops@example.net\r\nSubject: disk full\r\nDate: Tue, 1 Apr 2025 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\nX-Not-Signed: 1\r\n\r\n/var is at 99%\r\n";

/// A line from the middle of a PEM key: text found only in the key.
fn key_line(pem: &str) -> &str {
    pem.lines().nth(1).expect("a key line")
}

fn signer(key: &str) -> DkimSigner {
    DkimConfig::new("example.com", "mail2024", key)
        .validate()
        .expect("valid")
}

fn fields_of(config: DkimConfig) -> Vec<(&'static str, String)> {
    match config.validate() {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| (e.field(), e.message().to_owned()))
            .collect(),
    }
}

/// The DKIM-Signature field of a signed message, unfolded, and its tags.
fn signature_tags(signed: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(signed).expect("utf-8");
    let field = text
        .split("\r\n")
        .scan(false, |done, line| {
            if *done {
                return None;
            }
            if !line.starts_with('\t') && !line.starts_with("DKIM-Signature:") {
                *done = true;
                return None;
            }
            Some(line.trim_start_matches('\t').to_owned())
        })
        .collect::<Vec<_>>()
        .join("");
    let value = field.strip_prefix("DKIM-Signature:").expect("first field");
    value
        .split(';')
        .map(|t| {
            let (k, v) = t.split_once('=').expect("tag=value");
            (
                k.trim().to_owned(),
                v.chars().filter(|c| !c.is_whitespace()).collect(),
            )
        })
        .collect()
}

fn tag(tags: &[(String, String)], name: &str) -> String {
    tags.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {name}= in {tags:?}"))
}

#[test]
fn rsa_and_ed25519_keys_in_every_accepted_form() {
    for (key, algorithm, bits) in [
        (RSA, DkimAlgorithm::RsaSha256, 2048),
        (RSA_PKCS1, DkimAlgorithm::RsaSha256, 2048),
        (ED25519, DkimAlgorithm::Ed25519Sha256, 256),
    ] {
        let s = signer(key);
        assert_eq!((s.algorithm(), s.key_bits()), (algorithm, bits));
        assert_eq!(s.dns_name(), "mail2024._domainkey.example.com");
    }
    // The same RSA key in both forms publishes the same record.
    assert_eq!(signer(RSA).dns_record(), signer(RSA_PKCS1).dns_record());
    assert!(signer(RSA)
        .dns_record()
        .starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"));
    // Ed25519: the raw 32-byte key (RFC 8463), 44 base64 characters.
    let record = signer(ED25519).dns_record();
    let p = record.strip_prefix("v=DKIM1; k=ed25519; p=").expect("record");
    assert_eq!(B64.decode(p).expect("base64").len(), 32);
}

#[test]
fn every_bad_key_is_a_dkim_key_error_that_never_quotes_it() {
    let garbage = "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n".to_owned();
    let truncated = RSA.lines().take(3).collect::<Vec<_>>().join("\n");
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), "no private key found"),
        (
            "a public key",
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n".into(),
            "no private key found",
        ),
        ("encrypted", ED25519_ENCRYPTED.into(), "encrypted"),
        ("truncated", truncated, "unreadable PEM private key"),
        ("not a key inside", garbage, "cannot be used"),
        ("rsa 1024", RSA_1024.into(), "shorter than 2048 bits"),
        ("ec", EC.into(), "neither"),
    ];
    for (what, key, text) in cases {
        let errors = fields_of(DkimConfig::new("example.com", "s1", &key));
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        let (field, message) = &errors[0];
        assert_eq!(*field, "dkim_key", "{what}");
        assert!(message.contains(text), "{what}: {message}");
        for secret in [RSA, ED25519, ED25519_ENCRYPTED, RSA_1024, EC] {
            assert!(!message.contains(key_line(secret)), "{what}: {message}");
        }
    }
    // The short key's message says what to do.
    let errors = fields_of(DkimConfig::new("example.com", "s1", RSA_1024));
    assert!(
        errors[0].1.contains("2048") && errors[0].1.contains("openssl genpkey"),
        "{errors:?}"
    );
}

#[test]
fn domains_and_selectors_are_dns_names() {
    for (domain, expect) in [
        ("example.com", Some("example.com")),
        (" Example.COM ", Some("example.com")),
        ("mail.example.co.uk", Some("mail.example.co.uk")),
        ("bücher.example", Some("xn--bcher-kva.example")),
        ("", None),
        ("localhost", None),
        ("example..com", None),
        ("-example.com", None),
        ("exa mple.com", None),
        ("exa_mple.com", None),
        ("[192.0.2.1]", None),
        ("example.com.", None),
        ("a@example.com", None),
    ] {
        let built = DkimConfig::new(domain, "s1", ED25519).validate();
        match expect {
            Some(d) => assert_eq!(built.expect(domain).domain(), d),
            None => {
                let errors = built.expect_err(domain);
                let fields: Vec<&str> = errors.iter().map(FieldError::field).collect();
                assert_eq!(fields, ["dkim_domain"], "{domain:?}");
            }
        }
    }
    for (selector, ok) in [
        ("mail2024", true),
        ("eu.mail-2024", true),
        ("S1", true),
        ("", false),
        ("mail 2024", false),
        ("mail_2024", false),
        ("-mail", false),
        ("mail..x", false),
        ("bücher", false),
        ("[x]", false),
    ] {
        let built = DkimConfig::new("example.com", selector, ED25519).validate();
        if ok {
            assert_eq!(built.expect(selector).selector(), selector.to_ascii_lowercase());
        } else {
            let errors = built.expect_err(selector);
            assert_eq!(errors[0].field(), "dkim_selector", "{selector:?}");
        }
    }
    // The record's name must fit in DNS.
    let long = "a".repeat(60);
    let selector = [long.as_str(); 3].join(".");
    let domain = format!("{long}.{long}.example");
    let errors = DkimConfig::new(domain, selector, ED25519)
        .validate()
        .expect_err("too long");
    assert_eq!(errors[0].field(), "dkim_selector");
    // Every problem at once.
    let errors = DkimConfig::new("", "", "").validate().expect_err("all bad");
    let fields: Vec<&str> = errors.iter().map(FieldError::field).collect();
    assert_eq!(fields, ["dkim_domain", "dkim_selector", "dkim_key"]);
}

#[test]
fn signed_header_lists() {
    let s = DkimConfig::new("example.com", "s1", ED25519)
        .signed_headers(["Subject", "List-Unsubscribe", "subject", " To "])
        .validate()
        .expect("valid");
    assert_eq!(s.signed_headers(), ["from", "subject", "list-unsubscribe", "to"]);
    assert!(!s.has_default_headers());
    assert!(signer(ED25519).has_default_headers());
    for bad in ["", "Sub ject", "Subject:", "Süb"] {
        let errors = fields_of(DkimConfig::new("example.com", "s1", ED25519).signed_headers([bad]));
        assert_eq!(
            errors.iter().map(|e| e.0).collect::<Vec<_>>(),
            ["dkim_headers"],
            "{bad:?}"
        );
    }
}

#[test]
fn the_signature_field_names_what_it_signs_and_oversigns_from() {
    let s = signer(RSA);
    let signed = s.sign_at(MESSAGE, 1_700_000_000).expect("signed");
    assert!(signed.starts_with(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;"));
    // The message follows unchanged.
    assert!(signed.ends_with(MESSAGE));
    let tags = signature_tags(&signed);
    let names: Vec<&str> = tags.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["v", "a", "c", "d", "s", "t", "h", "bh", "b"]);
    assert_eq!(tag(&tags, "s"), "mail2024");
    assert_eq!(tag(&tags, "t"), "1700000000");
    // Present fields of the list, in its order; From once more than present;
    // X-Not-Signed is not in the list.
    assert_eq!(tag(&tags, "h"), "from:from:subject:date:to:message-id");
    assert_eq!(B64.decode(tag(&tags, "b")).expect("b").len(), 256);
    assert_eq!(B64.decode(tag(&tags, "bh")).expect("bh").len(), 32);
    // Folded: no line over 78 characters.
    let text = String::from_utf8(signed).expect("utf-8");
    let header = text.split("\r\n\r\n").next().expect("header");
    for line in header.split("\r\n") {
        assert!(line.len() <= 78, "{line:?}");
    }
    // Two From fields: three in h=.
    let two = b"From: a@example.com\r\nFrom: b@example.com\r\n\r\nx\r\n";
    let tags = signature_tags(&s.sign_at(two, 1).expect("signed"));
    assert_eq!(tag(&tags, "h"), "from:from:from");
    // Ed25519 signatures are 64 bytes.
    let tags = signature_tags(&signer(ED25519).sign_at(MESSAGE, 1).expect("signed"));
    assert_eq!(tag(&tags, "a"), "ed25519-sha256");
    assert_eq!(B64.decode(tag(&tags, "b")).expect("b").len(), 64);
}

#[test]
fn signing_is_deterministic_and_covers_the_wire_form() {
    for key in [RSA, ED25519] {
        let s = signer(key);
        let once = s.sign_at(MESSAGE, 42).expect("signed");
        assert_eq!(once, s.sign_at(MESSAGE, 42).expect("signed"));
        // Bare LF line endings are signed as the CRLF they become on the wire.
        let lf: Vec<u8> = String::from_utf8_lossy(MESSAGE)
            .replace("\r\n", "\n")
            .into_bytes();
        assert_eq!(s.sign_at(&lf, 42).expect("signed"), once);
        // A different body, or time, another signature.
        let other = [MESSAGE, b"more\r\n"].concat();
        assert_ne!(
            signature_tags(&s.sign_at(&other, 42).expect("signed")),
            signature_tags(&once)
        );
        assert_ne!(s.sign_at(MESSAGE, 43).expect("signed"), once);
    }
    // Simple and relaxed body hashes differ for a body with trailing blanks.
    let body = b"From: a@example.com\r\n\r\nline  \r\n";
    let relaxed = DkimConfig::new("example.com", "s", ED25519)
        .validate()
        .expect("valid");
    let simple = DkimConfig::new("example.com", "s", ED25519)
        .canonicalization(Canonicalization::Simple, Canonicalization::Simple)
        .validate()
        .expect("valid");
    let bh = |s: &DkimSigner| tag(&signature_tags(&s.sign_at(body, 1).expect("signed")), "bh");
    assert_ne!(bh(&relaxed), bh(&simple));
    assert_eq!(
        tag(&signature_tags(&simple.sign_at(body, 1).expect("s")), "c"),
        "simple/simple"
    );
}

#[test]
fn messages_that_cannot_be_signed_are_config_errors() {
    let s = signer(ED25519);
    for (what, message, text) in [
        ("no From", &b"To: a@example.net\r\n\r\nbody\r\n"[..], "no From"),
        ("no header", b"\r\nbody\r\n", "no From"),
        ("empty", b"", "no From"),
        (
            "a continuation first",
            b" folded\r\nFrom: a@example.com\r\n\r\n",
            "continuation",
        ),
        (
            "a line that is no field",
            b"From: a@example.com\r\nhello there\r\n\r\nx\r\n",
            "line 2",
        ),
    ] {
        let e = s.sign(message).expect_err(what);
        assert!(e.is_config() && e.to_string().contains(text), "{what}: {e}");
    }
}

#[test]
fn alignment_with_the_from_domain() {
    let s = signer(ED25519);
    for (domain, aligned) in [
        ("example.com", true),
        ("EXAMPLE.com", true),
        ("mail.example.com", true),
        ("a.b.example.com", true),
        ("example.com.", true),
        ("badexample.com", false),
        ("example.org", false),
        ("com", false),
    ] {
        assert_eq!(s.aligns_with(domain), aligned, "{domain}");
    }
    let idn = DkimConfig::new("bücher.example", "s", ED25519)
        .validate()
        .expect("valid");
    assert!(idn.aligns_with("news.bücher.example") && idn.aligns_with("xn--bcher-kva.example"));
}

#[test]
fn the_key_is_never_in_debug_and_stays_with_its_domain_and_selector() {
    let config = DkimConfig::new("example.com", "s1", RSA);
    let s = config.validate().expect("valid");
    let settings = SmtpSettings::builder()
        .host("smtp.example.com")
        .sender("noreply@example.com")
        .dkim(config.clone())
        .build()
        .expect("settings");
    for shown in [
        format!("{config:?}"),
        format!("{s:?}"),
        format!("{:?}", s.to_config()),
        format!("{settings:?}"),
        format!("{:?}", settings.to_builder()),
        settings.url().to_string(),
        settings.url().expose_password(),
    ] {
        assert!(!shown.contains(key_line(RSA)), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
    assert!(format!("{s:?}").contains("[redacted]"));
    // Kept: the same domain and selector (any case) keep the key.
    let kept = s.to_config().domain("EXAMPLE.com").validate().expect("kept");
    assert_eq!(kept.dns_record(), s.dns_record());
    let recanon = s
        .to_config()
        .canonicalization(Canonicalization::Simple, Canonicalization::Relaxed)
        .validate()
        .expect("kept");
    assert_eq!(
        recanon.canonicalization(),
        (Canonicalization::Simple, Canonicalization::Relaxed)
    );
    // Another domain or selector: the key is asked for again.
    for (what, moved) in [
        ("domain", s.to_config().domain("example.org")),
        ("selector", s.to_config().selector("s2")),
    ] {
        let errors = fields_of(moved.clone());
        assert_eq!(errors, [("dkim_key", ENTER_DKIM_KEY_AGAIN.to_owned())], "{what}");
        moved.private_key_pem(ED25519).validate().expect("given again");
    }
}

#[test]
fn canonicalization_names() {
    use Canonicalization::{Relaxed, Simple};
    for (text, pair) in [
        ("relaxed/relaxed", Some((Relaxed, Relaxed))),
        ("simple/relaxed", Some((Simple, Relaxed))),
        ("Relaxed/Simple", Some((Relaxed, Simple))),
        ("relaxed", Some((Relaxed, Simple))),
        ("simple", Some((Simple, Simple))),
        ("nowsp/simple", None),
        ("", None),
    ] {
        assert_eq!(Canonicalization::pair_from_name(text), pair, "{text}");
    }
    for a in [DkimAlgorithm::RsaSha256, DkimAlgorithm::Ed25519Sha256] {
        assert_eq!(DkimAlgorithm::from_name(a.as_str()), Some(a));
    }
    assert_eq!(DkimAlgorithm::from_name("rsa-sha1"), None, "never sha1");
}
