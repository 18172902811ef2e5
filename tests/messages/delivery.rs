//! International mail and attachment policies through the in-process server.

use std::sync::Arc;

use mail_parser::{MessageParser, MimeHeaders};
use relaymail::email::{Attachment, FsAttachmentStore};
use relaymail::settings::AttachmentLimit;
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Email, Mailer};

use crate::{settings_for, WAIT};

async fn server(config: ServerConfig) -> TestServer {
    TestServer::start(config).await.expect("server")
}

#[tokio::test]
async fn utf8_local_part_needs_smtputf8() {
    let srv = server(ServerConfig::new().smtputf8(true)).await;
    let mailer = Mailer::new(settings_for(Some(&srv)).build().expect("settings")).expect("mailer");
    mailer
        .send_email(
            Email::new()
                .to(("José", "josé@exämple.com"))
                .subject("Olá")
                .text("Tudo bem?"),
        )
        .await
        .expect("delivered with SMTPUTF8");
    let got = srv.wait_for_messages(1, WAIT).await.expect("message");
    assert_eq!(
        got[0].rcpt_to,
        vec!["josé@exämple.com".to_owned()],
        "kept in UTF-8"
    );
    assert!(
        got[0].mail_params.iter().any(|p| p == "SMTPUTF8"),
        "{:?}",
        got[0].mail_params
    );

    let plain = server(ServerConfig::new().smtputf8(false)).await;
    let mailer = Mailer::new(settings_for(Some(&plain)).build().expect("settings")).expect("mailer");
    let e = mailer
        .send_email(Email::new().to("josé@example.com").text("x"))
        .await
        .expect_err("no SMTPUTF8");
    assert!(e.is_unsupported() && e.to_string().contains("SMTPUTF8"), "{e}");
    assert!(plain.messages().is_empty());
}

#[tokio::test]
async fn idn_domains_go_as_a_labels() {
    let srv = server(ServerConfig::new().smtputf8(false)).await;
    let mailer = Mailer::new(settings_for(Some(&srv)).build().expect("settings")).expect("mailer");
    mailer
        .send_email(
            Email::new()
                .to(("Bücherei", "info@bücher.example"))
                .subject("Bestellung")
                .text("Danke"),
        )
        .await
        .expect("delivered without SMTPUTF8");
    let got = srv.wait_for_messages(1, WAIT).await.expect("message");
    assert_eq!(got[0].rcpt_to, vec!["info@xn--bcher-kva.example".to_owned()]);
    assert!(!got[0].mail_params.iter().any(|p| p == "SMTPUTF8"));
    let parsed = MessageParser::new().parse(&got[0].data).expect("parsed");
    let to = parsed.to().and_then(|t| t.first()).expect("To");
    assert_eq!(to.address(), Some("info@xn--bcher-kva.example"));
    assert_eq!(to.name(), Some("Bücherei"));
}

fn big(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn attachment_over_the_limit_is_refused_with_names_and_sizes() {
    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(
        settings_for(Some(&srv))
            .attachment_limit(AttachmentLimit::refuse_above(1_000_000))
            .build()
            .expect("settings"),
    )
    .build()
    .expect("mailer");
    let e = mailer
        .send_email(Email::new().to("ana@example.net").attachment(Attachment::new(
            "scan.tiff",
            "image/tiff",
            big(1_500_000),
        )))
        .await
        .expect_err("too large");
    assert!(e.is_too_large(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("\"scan.tiff\"") && text.contains("1500000") && text.contains("1000000"),
        "{text}"
    );
    assert_eq!(srv.connections_total(), 0, "nothing was sent");
    // Under the limit: attached.
    mailer
        .send_email(Email::new().to("ana@example.net").attachment(Attachment::new(
            "small.bin",
            "application/octet-stream",
            big(10_000),
        )))
        .await
        .expect("sent");
    let got = srv.wait_for_messages(1, WAIT).await.expect("message");
    let parsed = MessageParser::new().parse(&got[0].data).expect("parsed");
    assert_eq!(
        parsed.attachment(0).expect("attached").contents(),
        big(10_000).as_slice()
    );
}

#[tokio::test]
async fn attachment_links_are_unguessable_and_never_repeat() {
    use relaymail::email::AttachmentStore;
    let dir = std::env::temp_dir().join(format!("relaymail-link-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = FsAttachmentStore::new(&dir, "https://files.example.com/a/");
    let file = Attachment::new("a.pdf", "application/pdf", b"same bytes".to_vec());
    let mut urls = std::collections::HashSet::new();
    for _ in 0..200 {
        let url = store.store(&file).await.expect("stored");
        let secret = url
            .strip_prefix("https://files.example.com/a/")
            .and_then(|rest| rest.strip_suffix("-a.pdf"))
            .unwrap_or_else(|| panic!("{url}"));
        assert_eq!(secret.len(), 32, "{url}");
        assert!(urls.insert(url.clone()), "a link was given out twice: {url}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn attachments_over_the_limit_become_links() {
    let dir = std::env::temp_dir().join(format!("relaymail-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = FsAttachmentStore::new(&dir, "https://files.example.com/a/");
    let srv = server(ServerConfig::new()).await;
    let settings = settings_for(Some(&srv))
        .attachment_limit(AttachmentLimit::links_above(1_000_000))
        .build()
        .expect("settings");
    // Links need the application's store: without one the mailer is refused.
    let e = Mailer::builder(settings.clone())
        .build()
        .expect_err("links without a store");
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("no attachment store"), "{e}");
    let mailer = Mailer::builder(settings)
        .attachment_store(Arc::new(store))
        .build()
        .expect("mailer");
    let report = big(2_500_000);
    mailer
        .send_email(
            Email::new()
                .to("ana@example.net")
                .subject("Your report")
                .text("Hello Ana, your report is ready.")
                .html("<html><body><p>Hello Ana, your report is ready.</p></body></html>")
                .attachment(Attachment::new(
                    "Report <Nov>.pdf",
                    "application/pdf",
                    report.clone(),
                ))
                .attachment(Attachment::new(
                    "note.txt",
                    "text/plain",
                    b"small stays attached".to_vec(),
                )),
        )
        .await
        .expect("sent");
    let got = srv.wait_for_messages(1, WAIT).await.expect("message");
    assert!(
        got[0].data.len() < 100_000,
        "the big file is not in the message: {} bytes",
        got[0].data.len()
    );
    let parsed = MessageParser::new().parse(&got[0].data).expect("parsed");
    let text = parsed.body_text(0).expect("text").into_owned();
    let html = parsed.body_html(0).expect("html").into_owned();
    let stored: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().collect();
    assert_eq!(stored.len(), 1, "one file stored");
    let name = stored[0].file_name().into_string().expect("name");
    assert!(name.ends_with("-Report__Nov_.pdf"), "{name}");
    // The link is the only thing guarding the file: 128 random bits.
    let secret = name.split('-').next().expect("secret");
    assert!(
        secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}"
    );
    assert_eq!(std::fs::read(stored[0].path()).expect("stored bytes"), report);
    let url = format!("https://files.example.com/a/{name}");
    assert!(
        text.contains(&url) && text.contains("Report <Nov>.pdf (2.5 MB)"),
        "{text}"
    );
    assert!(
        html.contains(&format!("<a href=\"{url}\">Report &lt;Nov&gt;.pdf</a>")),
        "{html}"
    );
    assert!(html.contains("</ul></body>"), "links inside the body: {html}");
    assert_eq!(parsed.attachment_count(), 1, "the small file stays attached");
    assert_eq!(
        parsed.attachment(0).and_then(|a| a.attachment_name()),
        Some("note.txt")
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
