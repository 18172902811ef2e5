//! The mail policies an administrator sets (redirect, deliveries per
//! connection, address policy, attachment limit) and the "test on save"
//! flag live in the profile store: saved, authenticated, and applied by a
//! Mailer that follows the store.

use std::sync::Arc;

use relaymail::email::FsAttachmentStore;
use relaymail::profiles::ProfileStore;
use relaymail::settings::{AttachmentLimit, SecretKey};
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{
    AddressPolicy, Email, Mailer, Redirect, ReportAddress, SettingsUpdate, SmtpSettings, TlsMode,
};
use serde_json::{json, Value};

use crate::{settings, temp_store, WAIT};

const PASSWORD: &str = "Policy-S3cret-Pw";

fn addr(text: &str) -> relaymail::Address {
    text.parse().expect("address")
}

fn with_policies() -> SmtpSettings {
    SmtpSettings::builder()
        .host("mail.example.com")
        .tls(TlsMode::StartTls)
        .sender("noreply@example.com")
        .credentials("app", PASSWORD)
        .max_deliveries_per_connection(7)
        .redirect(Redirect::new(
            true,
            vec![
                ReportAddress::new(addr("qa@example.com")),
                ReportAddress::new(addr("off@example.com")).with_enabled(false),
            ],
        ))
        .address_policy(AddressPolicy::Lenient)
        .attachment_limit(AttachmentLimit::links_above(5_000_000))
        .build()
        .expect("settings")
}

fn key_pair() -> (SecretKey, impl Fn() -> SecretKey) {
    let key = SecretKey::generate().expect("key");
    let text = key.to_base64();
    (key, move || {
        SecretKey::from_base64(secrecy::ExposeSecret::expose_secret(&text)).expect("key")
    })
}

#[test]
fn saved_policies_and_the_test_on_save_flag_load_back() {
    let path = temp_store("policies-load");
    let (key, again) = key_pair();
    let store = ProfileStore::new(&path, key);
    let mut profiles = store.load().expect("load");
    profiles.add("primary", with_policies(), true).expect("add");
    profiles
        .add("plain", settings_without_policies(), false)
        .expect("add");
    assert!(
        !profiles.get("primary").expect("primary").test_on_save(),
        "off when added"
    );
    profiles.set_test_on_save("primary", true).expect("set");
    assert!(
        profiles.set_test_on_save("nobody", true).is_err(),
        "no such profile"
    );
    store.save(&mut profiles).expect("save");

    let text = std::fs::read_to_string(&path).expect("read");
    let file: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(file["profiles"][0]["test_on_save"], true);
    assert!(
        file["profiles"][1].get("test_on_save").is_none(),
        "written only when on"
    );
    assert!(!text.contains(PASSWORD));

    let loaded = ProfileStore::new(&path, again())
        .refuse_legacy_seals()
        .load()
        .expect("reopens");
    let p = loaded.get("primary").expect("primary");
    assert!(p.test_on_save());
    let s = p.settings();
    assert_eq!(s.max_deliveries_per_connection(), 7);
    assert_eq!(s.redirect(), with_policies().redirect());
    assert_eq!(s.address_policy(), AddressPolicy::Lenient);
    assert_eq!(s.attachment_limit(), AttachmentLimit::links_above(5_000_000));
    let plain = loaded.get("plain").expect("plain");
    assert!(!plain.test_on_save());
    assert_eq!(plain.settings().max_deliveries_per_connection(), 20);

    // Switched off again: saved and loaded as off.
    let mut profiles = loaded;
    profiles.set_test_on_save("primary", false).expect("off");
    ProfileStore::new(&path, again())
        .save(&mut profiles)
        .expect("save");
    let loaded = ProfileStore::new(&path, again()).load().expect("reopens");
    assert!(!loaded.get("primary").expect("primary").test_on_save());
}

fn settings_without_policies() -> SmtpSettings {
    SmtpSettings::builder()
        .host("backup.example.com")
        .sender("noreply@example.com")
        .build()
        .expect("settings")
}

#[test]
fn editing_a_policy_or_the_flag_in_the_file_is_tampering() {
    let path = temp_store("policies-tamper");
    let (key, again) = key_pair();
    let store = ProfileStore::new(&path, key);
    let mut profiles = store.load().expect("load");
    profiles.add("primary", with_policies(), true).expect("add");
    profiles.set_test_on_save("primary", true).expect("flag");
    store.save(&mut profiles).expect("save");
    let original: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let reopen = || ProfileStore::new(&path, again()).load();
    reopen().expect("the untouched store opens");

    // (what, the edit, whether the seal catches it too when the tag is gone)
    type Edit = fn(&mut Value);
    let edits: Vec<(&str, Edit, bool)> = vec![
        (
            "a report address replaced (mail to someone else)",
            |p| {
                p["settings"]["settings"]["redirect"]["addresses"][0]["address"] =
                    json!("attacker@evil.example")
            },
            true,
        ),
        (
            "a disabled report address enabled",
            |p| p["settings"]["settings"]["redirect"]["addresses"][1]["enabled"] = json!(true),
            true,
        ),
        (
            "redirect switched off (mail to the real recipients)",
            |p| p["settings"]["settings"]["redirect"]["enabled"] = json!(false),
            true,
        ),
        (
            "redirect removed",
            |p| {
                p["settings"]["settings"]
                    .as_object_mut()
                    .expect("object")
                    .remove("redirect");
            },
            true,
        ),
        (
            "max deliveries changed",
            |p| p["settings"]["settings"]["max_deliveries_per_connection"] = json!(100_000),
            true,
        ),
        (
            "max deliveries removed (back to the default)",
            |p| {
                p["settings"]["settings"]
                    .as_object_mut()
                    .expect("object")
                    .remove("max_deliveries_per_connection");
            },
            true,
        ),
        (
            "address policy strict",
            |p| p["settings"]["settings"]["address_policy"] = json!("strict"),
            true,
        ),
        (
            "attachment limit raised",
            |p| p["settings"]["settings"]["attachment_limit"]["max_size"] = json!(9_000_000_000u64),
            true,
        ),
        (
            "attachment links off",
            |p| p["settings"]["settings"]["attachment_limit"]["links"] = json!(false),
            true,
        ),
        (
            "test on save switched off",
            |p| {
                p.as_object_mut().expect("object").remove("test_on_save");
            },
            false,
        ),
    ];
    for (what, edit, sealed) in edits {
        let mut file = original.clone();
        edit(&mut file["profiles"][0]);
        assert_ne!(file, original, "{what}: the change is real");
        std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("json")).expect("write");
        let e = reopen().expect_err(what);
        let shown = format!("{e}\n{e:?}");
        assert!(!shown.contains(PASSWORD), "{what}: {shown}");
        assert!(e.is_tampered(), "{what}: {e}");
        if sealed {
            // Without the store's tag, the sealed password refuses the
            // record: these settings are bound to it.
            file.as_object_mut().expect("object").remove("mac");
            std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("json")).expect("write");
            let e = reopen().expect_err(what);
            assert!(e.is_tampered(), "{what} (no tag): {e}");
        }
    }
    // Adding the flag to a profile without it is caught too.
    std::fs::write(&path, serde_json::to_vec_pretty(&original).expect("json")).expect("write");
    let mut profiles = reopen().expect("restored");
    profiles.set_test_on_save("primary", false).expect("off");
    ProfileStore::new(&path, again())
        .save(&mut profiles)
        .expect("save");
    let mut file: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    file["profiles"][0]["test_on_save"] = json!(true);
    std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("json")).expect("write");
    assert!(reopen().expect_err("flag added").is_tampered());
}

fn rcpt_to(srv: &TestServer) -> Vec<Vec<String>> {
    srv.messages().iter().map(|m| m.rcpt_to.clone()).collect()
}

#[tokio::test]
async fn a_following_mailer_applies_saved_policies() {
    let srv = TestServer::start(ServerConfig::new()).await.expect("server");
    let path = temp_store("policies-follow");
    let (key, _) = key_pair();
    let store = ProfileStore::new(&path, key);
    let mut profiles = store.load().expect("load");
    profiles.add("primary", settings(&srv), true).expect("add");
    store.save(&mut profiles).expect("save");
    let mailer = store.mailer(|s| Mailer::builder(s).build()).expect("mailer");
    let email = |to: &str, subject: &str| Email::new().to(to).subject(subject).text("x");

    // Redirect: before, the real recipient; after saving, only the report
    // address.
    mailer
        .send_email(email("customer@example.net", "before"))
        .await
        .expect("sent");
    let mut update = SettingsUpdate::new();
    update.redirect = Some(Redirect::to([addr("qa@example.com")]));
    profiles.update("primary", update).expect("update");
    store.save(&mut profiles).expect("save");
    assert_eq!(mailer.redirect(), Redirect::to([addr("qa@example.com")]));
    mailer
        .send_email(email("customer@example.net", "redirected"))
        .await
        .expect("sent");
    let got = srv.wait_for_messages(2, WAIT).await.expect("two");
    assert_eq!(
        rcpt_to(&srv),
        [
            vec!["customer@example.net".to_owned()],
            vec!["qa@example.com".to_owned()]
        ]
    );
    assert!(String::from_utf8_lossy(&got[1].data)
        .starts_with("X-Relaymail-Original-Recipients: customer@example.net\r\n"));
    let mut update = SettingsUpdate::new();
    update.redirect = Some(Redirect::default());
    profiles.update("primary", update).expect("update");
    store.save(&mut profiles).expect("save");

    // Deliveries per connection: one message on the default (20), then
    // the cap saved as 1: two sequential sends take two connections.
    mailer
        .send_email(email("ops@example.net", "on the default cap"))
        .await
        .expect("sent");
    let before = srv.connections_total();
    let mut update = SettingsUpdate::new();
    update.max_deliveries_per_connection = Some(1);
    profiles.update("primary", update).expect("update");
    store.save(&mut profiles).expect("save");
    assert_eq!(mailer.settings().max_deliveries_per_connection(), 1);
    for subject in ["one", "two"] {
        mailer
            .send_email(email("ops@example.net", subject))
            .await
            .expect("sent");
    }
    assert_eq!(srv.connections_total(), before + 2, "one connection per message");
    let messages = srv.messages();
    let last_two: Vec<usize> = messages.iter().rev().take(2).map(|m| m.session).collect();
    assert_ne!(last_two[0], last_two[1], "on two sessions");

    // Address policy: strict refuses john..doe@, lenient (saved) takes it.
    let e = mailer
        .send_email(email("john..doe@example.com", "strict"))
        .await
        .expect_err("strict refuses");
    assert!(e.to_string().contains("john..doe"), "{e}");
    let count = srv.messages().len();
    let mut update = SettingsUpdate::new();
    update.address_policy = Some(AddressPolicy::Lenient);
    profiles.update("primary", update).expect("update");
    store.save(&mut profiles).expect("save");
    mailer
        .send_email(email("john..doe@example.com", "lenient"))
        .await
        .expect("lenient sends");
    let got = srv.wait_for_messages(count + 1, WAIT).await.expect("sent");
    let rcpt = &got[count].rcpt_to;
    assert_eq!(rcpt.len(), 1);
    assert!(
        rcpt[0].contains("john..doe") && rcpt[0].ends_with("@example.com"),
        "{rcpt:?}"
    );

    // Attachment links: this mailer has no store, so a profile asking for
    // links is not applied (the old settings stay), and reload says why.
    let mut update = SettingsUpdate::new();
    update.attachment_limit = Some(AttachmentLimit::links_above(1_000));
    profiles.update("primary", update).expect("update");
    store.save(&mut profiles).expect("save");
    assert_eq!(
        mailer.settings().attachment_limit(),
        AttachmentLimit::none(),
        "old settings kept"
    );
    assert_eq!(mailer.settings().address_policy(), AddressPolicy::Lenient);
    let active = profiles.active().expect("active").settings().clone();
    let e = mailer.reload(active.clone()).expect_err("no store");
    assert!(
        e.is_config() && e.to_string().contains("no attachment store"),
        "{e}"
    );
    assert_eq!(mailer.settings().attachment_limit(), AttachmentLimit::none());
    mailer.shutdown(WAIT).await;

    // With a store, the same settings are applied.
    let dir = path.with_file_name("attachments");
    std::fs::create_dir_all(&dir).expect("dir");
    let with_store = Mailer::builder(settings(&srv))
        .attachment_store(Arc::new(FsAttachmentStore::new(
            &dir,
            "https://files.example.com/a",
        )))
        .build()
        .expect("mailer");
    with_store.reload(active).expect("reloaded");
    assert_eq!(
        with_store.settings().attachment_limit(),
        AttachmentLimit::links_above(1_000)
    );
    with_store.shutdown(WAIT).await;
}
