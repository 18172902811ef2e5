//! Composition without a server.

use mail_parser::{MessageParser, MimeHeaders};
use proptest::prelude::*;
use relaymail::{AddressPolicy, Composer, Email, Message};

use crate::{headers, settings_for};

fn composer() -> Composer {
    Composer::new(&settings_for(None).build().expect("settings"))
}

async fn compose(email: Email) -> Message {
    composer().compose(email).await.expect("composed")
}

fn sender(m: &Message) -> String {
    m.envelope().reverse_path()
}

fn rcpts(m: &Message) -> Vec<String> {
    m.envelope()
        .recipients()
        .iter()
        .map(|r| r.address.to_string())
        .collect()
}

#[tokio::test]
async fn defaults_from_settings_and_headers_written() {
    let m = compose(Email::new().to("ana@example.net").subject("Reset").text("link")).await;
    assert_eq!(sender(&m), "noreply@example.com");
    let parsed = MessageParser::new().parse(m.content()).expect("parsed");
    let from = parsed.from().and_then(|f| f.first()).expect("From");
    assert_eq!(from.name(), Some("Example App"));
    assert_eq!(from.address(), Some("noreply@example.com"));
    assert!(parsed.date().is_some(), "Date added");
    let id = parsed.message_id().expect("Message-ID added");
    assert!(id.ends_with("@example.com"), "{id}");
    assert_eq!(parsed.subject(), Some("Reset"));
    assert_eq!(parsed.body_text(0).as_deref().map(str::trim), Some("link"));
    // Two emails never share a Message-ID.
    let other = compose(Email::new().to("ana@example.net")).await;
    let other_id = MessageParser::new()
        .parse(other.content())
        .expect("parsed")
        .message_id()
        .map(str::to_owned);
    assert_ne!(other_id.as_deref(), Some(id));
}

#[tokio::test]
async fn non_ascii_bodies_are_encoded_to_seven_bits() {
    let m = compose(
        Email::new()
            .to("ana@example.net")
            .subject("Grüße")
            .text("Schöne Grüße aus Köln — 10 €")
            .html("<p>Schöne Grüße</p>"),
    )
    .await;
    assert!(
        m.content().is_ascii(),
        "quoted-printable or base64, no BODY=8BITMIME needed"
    );
    let parsed = MessageParser::new().parse(m.content()).expect("parsed");
    assert_eq!(
        parsed.body_text(0).as_deref().map(str::trim),
        Some("Schöne Grüße aus Köln — 10 €")
    );
}

#[tokio::test]
async fn template_from_overrides_the_header_not_the_envelope() {
    let m = compose(
        Email::new()
            .from(("Billing", "billing@example.com"))
            .to("ana@example.net"),
    )
    .await;
    assert_eq!(
        sender(&m),
        "noreply@example.com",
        "relays want the authenticated sender"
    );
    let parsed = MessageParser::new().parse(m.content()).expect("parsed");
    assert_eq!(
        parsed.from().and_then(|f| f.first()).and_then(|a| a.address()),
        Some("billing@example.com")
    );
    let m = compose(
        Email::new()
            .from("billing@example.com")
            .envelope_from("bounces@example.com")
            .to("ana@example.net"),
    )
    .await;
    assert_eq!(sender(&m), "bounces@example.com");
}

#[tokio::test]
async fn bcc_only_in_the_envelope_and_duplicates_removed() {
    let m = compose(
        Email::new()
            .to("ana@example.net")
            .to("li@example.net")
            .cc("ana@EXAMPLE.NET")
            .bcc("audit@example.com")
            .bcc("li@example.net"),
    )
    .await;
    assert_eq!(
        rcpts(&m),
        vec!["ana@example.net", "li@example.net", "audit@example.com"]
    );
    let text = String::from_utf8_lossy(m.content());
    // No Bcc header line (the random Message-ID may contain the hex "bcc").
    assert!(
        !text.lines().any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
        "{text}"
    );
    assert!(!text.contains("audit@"), "{text}");
    // Explicit envelope.
    let m = compose(
        Email::new()
            .to("ana@example.net")
            .envelope_to(["ops@example.net"]),
    )
    .await;
    assert_eq!(rcpts(&m), vec!["ops@example.net"]);
}

#[tokio::test]
async fn no_recipient_and_bad_addresses_are_field_errors() {
    let e = composer()
        .compose(Email::new().subject("x"))
        .await
        .expect_err("no rcpt");
    assert!(e.is_config() && e.to_string().contains("no recipient"), "{e}");
    let e = composer()
        .compose(Email::new().to("ana@example.net").cc("not an address"))
        .await
        .expect_err("bad cc");
    assert!(e.is_config() && e.to_string().starts_with("cc: "), "{e}");
    let e = composer()
        .compose(Email::new().to("john..doe@example.net"))
        .await
        .expect_err("strict");
    assert!(e.to_string().contains("two dots"), "{e}");
    let lenient = composer().address_policy(AddressPolicy::Lenient);
    let m = lenient
        .compose(Email::new().to("john..doe@example.net"))
        .await
        .expect("lenient");
    assert_eq!(rcpts(&m), vec!["\"john..doe\"@example.net"]);
}

#[tokio::test]
async fn injection_through_every_field_adds_no_header() {
    let evil = "x\r\nBcc: victim@example.org\r\nX-Injected: yes";
    let m = compose(
        Email::new()
            .from((evil, "billing@example.com"))
            .to((evil, "ana@example.net"))
            .subject(evil)
            .header("X-Campaign", evil)
            .text("body")
            .attachment(relaymail::Attachment::new(
                format!("{evil}.pdf"),
                "application/pdf",
                b"%PDF-1.4".to_vec(),
            )),
    )
    .await;
    let hs = headers(m.content());
    let names: Vec<String> = hs.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
    assert!(
        !names.iter().any(|n| n == "bcc" || n == "x-injected"),
        "{names:?}"
    );
    for expected in [
        "from",
        "to",
        "subject",
        "x-campaign",
        "date",
        "message-id",
        "mime-version",
        "content-type",
    ] {
        assert_eq!(
            names.iter().filter(|n| *n == expected).count(),
            1,
            "{expected} once: {names:?}"
        );
    }
    let parsed = MessageParser::new().parse(m.content()).expect("parsed");
    assert_eq!(
        parsed.subject(),
        Some("x  Bcc: victim@example.org  X-Injected: yes")
    );
    let attachment = parsed.attachment(0).expect("attachment");
    assert_eq!(
        attachment.attachment_name(),
        Some("x  Bcc: victim@example.org  X-Injected: yes.pdf")
    );
    assert_eq!(rcpts(&m), vec!["ana@example.net"], "nobody added to the envelope");
}

#[tokio::test]
async fn custom_header_names_are_checked() {
    for name in [
        "Subject",
        "bcc",
        "Content-Type",
        "Content-Disposition",
        "X Bad",
        "X:Bad",
        "",
        "Ünicode",
    ] {
        let e = composer()
            .compose(Email::new().to("ana@example.net").header(name, "v"))
            .await
            .expect_err(name);
        assert!(e.is_config(), "{name}: {e}");
    }
}

#[tokio::test]
async fn raw_messages_derive_their_envelope_and_lose_bcc() {
    let raw = b"From: Ana <ana@example.net>\r\nTo: li@example.net, \"Kim\" <kim@example.net>\r\nCc: li@example.net\r\nBcc: audit@example.com,\r\n  boss@example.com\r\nSubject: hi\r\n\r\nbody\r\n";
    let m = Message::from_rfc5322(raw, AddressPolicy::Strict).expect("derived");
    assert_eq!(sender(&m), "ana@example.net");
    assert_eq!(
        rcpts(&m),
        vec![
            "li@example.net",
            "kim@example.net",
            "audit@example.com",
            "boss@example.com"
        ]
    );
    let text = String::from_utf8_lossy(m.content());
    assert_eq!(
        text,
        "From: Ana <ana@example.net>\r\nTo: li@example.net, \"Kim\" <kim@example.net>\r\nCc: li@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
    );
    let e = Message::from_rfc5322(b"Subject: x\r\n\r\nbody\r\n", AddressPolicy::Strict).expect_err("no from");
    assert!(e.is_config(), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any display name and subject (printable Unicode) survives the trip
    /// through mail-builder and mail-parser unchanged.
    #[test]
    fn names_and_subjects_round_trip(name in "[^\\p{C}]{1,60}", subject in "[^\\p{C}]{0,120}") {
        // Surrounding spaces are not significant in headers.
        let name = name.trim().to_owned();
        prop_assume!(!name.is_empty());
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let m = rt.block_on(composer().compose(
            Email::new().from((name.as_str(), "billing@example.com")).to("ana@example.net").subject(subject.clone()),
        )).expect("composed");
        let parsed = MessageParser::new().parse(m.content()).expect("parsed");
        let from = parsed.from().and_then(|f| f.first()).expect("From");
        prop_assert_eq!(from.name(), Some(name.as_str()));
        prop_assert_eq!(parsed.subject().unwrap_or("").trim(), subject.trim());
    }
}

/// The header names of every part below the top level, in order.
fn part_header_names(m: &Message) -> Vec<Vec<String>> {
    let parsed = MessageParser::new().parse(m.content()).expect("parsed");
    parsed
        .parts
        .iter()
        .skip(1)
        .map(|p| {
            p.headers
                .iter()
                .map(|h| h.name.as_str().to_ascii_lowercase())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn attachment_content_types_and_ids_that_would_add_header_lines_are_refused() {
    let evil_types = [
        "text/plain\r\nX-Injected: yes",
        "text/plain; charset=utf-8\r\n\r\nforged body",
        "text/plain\nX-Injected: yes",
        "text/plain\rX-Injected: yes",
        "text/plain\0",
        "text/plain\t; charset=utf-8",
        "text/plain; name=\"a\r\nX-Injected: yes\"",
        "text/plain; name=\"unclosed",
        "text/plain; name=\"a\\\"",
        "text",
        "/plain",
        "text/",
        "text/pl ain",
        "text/plain; charset",
        "text/plain; charset=",
        "text/plain; char set=utf-8",
        "text/plain; charset=utf-8 junk",
        "text/plain;",
        "text/plain; name=a\"b",
        "text/plän",
        "",
    ];
    for evil in evil_types {
        let e = composer()
            .compose(
                Email::new()
                    .to("ana@example.net")
                    .attachment(relaymail::Attachment::new("report.txt", evil, b"x".to_vec())),
            )
            .await
            .expect_err(evil);
        assert!(e.is_config(), "{evil:?}: {e}");
        let text = e.to_string();
        assert!(
            text.contains("\"report.txt\"") && text.contains("content type"),
            "{evil:?}: {text}"
        );
    }
    for evil in [
        "logo>\r\nX-Injected: yes",
        "a>b",
        "<logo>",
        "lo go",
        "logo\t",
        "logo\r\n",
        "",
    ] {
        let e = composer()
            .compose(
                Email::new()
                    .to("ana@example.net")
                    .html("<img src=\"cid:logo\">")
                    .attachment(relaymail::Attachment::inline(evil, "image/png", b"png".to_vec())),
            )
            .await
            .expect_err(evil);
        assert!(e.is_config(), "{evil:?}: {e}");
        assert!(e.to_string().contains("content id"), "{evil:?}: {e}");
    }
}

#[tokio::test]
async fn valid_content_types_and_ids_are_written_as_given_without_extra_headers() {
    let types = [
        "application/pdf",
        "text/plain; charset=utf-8",
        "text/plain;charset=\"utf-8\" ; format=flowed",
        "application/x-thing; name=\"a;b \\\"c\\\" d=e\"",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ];
    for ct in types {
        let m = compose(
            Email::new()
                .to("ana@example.net")
                .html("<img src=\"cid:logo.1@example.com\">")
                .attachment(relaymail::Attachment::new("report.bin", ct, b"x".to_vec()))
                .attachment(relaymail::Attachment::inline(
                    "logo.1@example.com",
                    "image/png",
                    b"png".to_vec(),
                )),
        )
        .await;
        let parts = part_header_names(&m);
        let expected = |id: bool| -> Vec<String> {
            let mut names = vec!["content-type", "content-disposition"];
            if id {
                names.push("content-id");
            }
            names.push("content-transfer-encoding");
            names.into_iter().map(str::to_owned).collect()
        };
        assert_eq!(parts.last(), Some(&expected(true)), "{ct}: {parts:?}");
        assert_eq!(
            parts.get(parts.len() - 2),
            Some(&expected(false)),
            "{ct}: {parts:?}"
        );
        let text = String::from_utf8_lossy(m.content()).into_owned();
        assert!(text.contains(&format!("Content-Type: {ct}\r\n")), "{ct}: {text}");
        assert!(text.contains("Content-ID: <logo.1@example.com>\r\n"), "{text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the content type, an attachment's part has its four usual
    /// headers and nothing else, or the email is refused.
    #[test]
    fn no_content_type_adds_a_header_line(ct in "[a-z/;= \"\\\\\r\n:X-]{0,24}") {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let result = rt.block_on(
            composer().compose(
                Email::new()
                    .to("ana@example.net")
                    .attachment(relaymail::Attachment::new("r.bin", ct.clone(), b"x".to_vec())),
            ),
        );
        if let Ok(m) = result {
            let parts = part_header_names(&m);
            prop_assert_eq!(
                parts.last().cloned().unwrap_or_default(),
                vec!["content-type", "content-disposition", "content-transfer-encoding"],
                "{:?}", ct
            );
            prop_assert!(!ct.contains(['\r', '\n']));
        }
    }
}

#[tokio::test]
async fn parsed_addresses_and_mailboxes_are_taken_as_they_are() {
    let ana: relaymail::Address = "ana@example.net".parse().expect("address");
    let kim = relaymail::Mailbox::with_name("Kim", "kim@example.net".parse().expect("address"));
    let m = compose(
        Email::new()
            .to(ana)
            .cc(kim)
            .bcc(("Li".to_owned(), "li@example.net".to_owned())),
    )
    .await;
    assert_eq!(
        rcpts(&m),
        vec!["ana@example.net", "kim@example.net", "li@example.net"]
    );
    // An address parsed leniently before is not read again under the
    // composer's strict policy: it is valid, and quoted on the wire.
    let odd = relaymail::Address::parse("john..doe@example.net", AddressPolicy::Lenient).expect("lenient");
    let m = compose(Email::new().to(odd)).await;
    assert_eq!(rcpts(&m), vec!["\"john..doe\"@example.net"]);
}
