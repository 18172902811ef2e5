//! Sealed passwords are bound to every stored setting: someone who can edit
//! the profile file but has no key cannot send the password elsewhere.

use relaymail::profiles::ProfileStore;
use relaymail::settings::SecretKey;
use relaymail::{SmtpSettings, TlsMode};
use serde_json::{json, Value};

const PASSWORD: &str = "Stored-S3cret-Pw";

fn stored_settings(ca_pem: &str) -> SmtpSettings {
    SmtpSettings::builder()
        .host("mail.example.com")
        .port(587)
        .tls(TlsMode::StartTls)
        .sender("noreply@example.com")
        .sender_name("Example App")
        .helo_name("app.example.com")
        .credentials("app", PASSWORD)
        .auth_mechanisms(&[relaymail::Mechanism::ScramSha256])
        .add_root_certificates_pem(ca_pem)
        .build()
        .expect("settings")
}

/// A CA certificate of a throwaway test server, as a root someone might add.
async fn some_ca_pem() -> String {
    let srv = relaymail::testing::TestServer::start(relaymail::testing::ServerConfig::new())
        .await
        .expect("server");
    srv.ca_pem().to_owned()
}

#[tokio::test]
async fn every_stored_setting_is_bound_to_the_sealed_password() {
    let our_ca = some_ca_pem().await;
    let their_ca = some_ca_pem().await;
    // (what is changed, where in the profile's JSON, the new value)
    let cases: Vec<(&str, &str, Value)> = vec![
        ("host", "/settings/host", json!("attacker.example.net")),
        ("port", "/settings/port", json!(2525)),
        ("tls", "/settings/tls", json!("none")),
        (
            "allow_plaintext_auth",
            "/settings/allow_plaintext_auth",
            json!(true),
        ),
        (
            "dangerous_accept_invalid_certs",
            "/settings/dangerous_accept_invalid_certs",
            json!(true),
        ),
        (
            "dangerous_accept_invalid_hostnames",
            "/settings/dangerous_accept_invalid_hostnames",
            json!(true),
        ),
        (
            "extra_roots_pem (replaced)",
            "/settings/extra_roots_pem",
            json!([their_ca]),
        ),
        (
            "extra_roots_pem (added)",
            "/settings/extra_roots_pem",
            json!([our_ca, their_ca]),
        ),
        ("webpki_roots", "/settings/webpki_roots", json!(false)),
        ("username", "/settings/username", json!("admin")),
        ("oauth2", "/settings/oauth2", json!(true)),
        ("auth_mechanisms", "/settings/auth_mechanisms", json!(["PLAIN"])),
        (
            "auth_mechanisms (removed)",
            "/settings/auth_mechanisms",
            Value::Null,
        ),
        ("sender", "/settings/sender", json!("ceo@example.com")),
        ("sender_name", "/settings/sender_name", json!("IT Support")),
        ("helo_name", "/settings/helo_name", json!("other.example.com")),
        ("timeouts.connect", "/settings/timeouts/connect", json!(11.0)),
        ("timeouts.greeting", "/settings/timeouts/greeting", json!(31.0)),
        (
            "timeouts.tls_handshake",
            "/settings/timeouts/tls_handshake",
            json!(31.0),
        ),
        ("timeouts.command", "/settings/timeouts/command", json!(31.0)),
        ("timeouts.data", "/settings/timeouts/data", json!(61.0)),
        (
            "timeouts.final_reply",
            "/settings/timeouts/final_reply",
            json!(121.5),
        ),
        ("pipelining", "/settings/pipelining", json!(false)),
        ("chunking", "/settings/chunking", json!(false)),
        (
            "require_all_recipients",
            "/settings/require_all_recipients",
            json!(true),
        ),
        (
            "the destination (mail captured to files)",
            "/settings/destination",
            json!("file:///tmp/captured"),
        ),
        ("system_roots (turned on)", "/settings/system_roots", json!(true)),
        (
            "client_certificate_pem (added)",
            "/settings/client_certificate_pem",
            json!(our_ca),
        ),
        (
            "a proxy (added: the connection would go through it)",
            "/settings/proxy",
            json!({"kind": "socks5", "host": "proxy.attacker.example", "port": 1080}),
        ),
        ("the seal version (downgrade)", "/password/version", json!(1)),
        ("the nonce", "/password/nonce", json!("AAAAAAAAAAAAAAAA")),
    ];
    let key = SecretKey::generate().expect("key");
    let key_text = key.to_base64();
    let path = super::temp_store("tamper-fields");
    let store = ProfileStore::new(&path, key);
    let mut profiles = store.load().expect("load");
    profiles
        .add("primary", stored_settings(&our_ca), true)
        .expect("add");
    store.save(&mut profiles).expect("save");
    let original: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let reopen = || {
        ProfileStore::new(
            &path,
            SecretKey::from_base64(secrecy::ExposeSecret::expose_secret(&key_text)).expect("key"),
        )
        .load()
    };
    reopen().expect("the untouched store opens");
    for (what, pointer, value) in cases {
        let mut file = original.clone();
        let profile = &mut file["profiles"][0]["settings"];
        let (parent, field) = pointer.rsplit_once('/').expect("pointer");
        let object = profile
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("{parent}"));
        if value.is_null() {
            object.remove(field);
        } else {
            object.insert(field.to_owned(), value);
        }
        assert_ne!(file, original, "{what}: the change is real");
        // The store's tag catches the edit first.
        std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("json")).expect("write");
        let e = reopen().expect_err(what);
        let shown = format!("{e}\n{e:?}");
        assert!(!shown.contains(PASSWORD), "{what}: {shown}");
        assert!(e.is_tampered(), "{what}: {e}");
        // Without the tag (as an older release wrote stores), the seal itself
        // still refuses the edited record.
        file.as_object_mut().expect("object").remove("mac");
        std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("json")).expect("write");
        let e = reopen().expect_err(what);
        let shown = format!("{e}\n{e:?}");
        assert!(!shown.contains(PASSWORD), "{what}: {shown}");
        if what.starts_with("the seal version") {
            // Under the old rule the record does not open either.
            assert!(
                shown.contains("cannot be opened") || e.is_tampered(),
                "{what}: {e}"
            );
        } else {
            assert!(e.is_tampered(), "{what}: {e}");
            assert!(
                e.to_string()
                    .contains("profile \"primary\": the stored settings were changed outside relaymail"),
                "{what}: {e}"
            );
        }
    }

    // Renaming the profile in the file, or moving its record to another
    // profile, is a change too.
    let mut file = original.clone();
    file["profiles"][0]["name"] = json!("backup");
    std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("json")).expect("write");
    assert!(reopen().expect_err("renamed").is_tampered());

    // Field order and spacing are not changes.
    let mut file = original.clone();
    let settings = file["profiles"][0]["settings"]["settings"]
        .as_object()
        .expect("object")
        .clone();
    let reversed: serde_json::Map<String, Value> = settings.into_iter().rev().collect();
    file["profiles"][0]["settings"]["settings"] = Value::Object(reversed);
    std::fs::write(&path, serde_json::to_vec(&file).expect("json")).expect("write");
    let reopened = reopen().expect("same settings, other layout");
    assert_eq!(
        format!("{:?}", reopened.active().expect("active").settings()),
        format!("{:?}", stored_settings(&our_ca))
    );
}

#[tokio::test]
async fn a_client_key_in_the_store_is_sealed_and_bound_to_the_record() {
    let srv = relaymail::testing::TestServer::start(relaymail::testing::ServerConfig::new())
        .await
        .expect("server");
    let (chain, client_key) = srv.client_identity_pem().expect("identity");
    let key_line = client_key.lines().nth(1).expect("a key line").to_owned();
    let settings = stored_settings(srv.ca_pem())
        .to_builder()
        .client_certificate_pem(&chain, &client_key)
        .build()
        .expect("settings");
    let key = SecretKey::generate().expect("key");
    let key_text = key.to_base64();
    let path = super::temp_store("tamper-client-key");
    let store = ProfileStore::new(&path, key);
    let mut profiles = store.load().expect("load");
    profiles.add("primary", settings.clone(), true).expect("add");
    store.save(&mut profiles).expect("save");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(!text.contains(&key_line) && !text.contains(PASSWORD), "{text}");
    let original: Value = serde_json::from_str(&text).expect("json");
    assert!(
        original["profiles"][0]["settings"]["client_key"].is_object(),
        "{original}"
    );
    let reopen = || {
        ProfileStore::new(
            &path,
            SecretKey::from_base64(secrecy::ExposeSecret::expose_secret(&key_text)).expect("key"),
        )
        .load()
    };
    let reopened = reopen().expect("opens");
    assert_eq!(
        format!("{:?}", reopened.active().expect("active").settings()),
        format!("{settings:?}")
    );
    // (what, the edit) — each caught by the store's tag, and without the
    // tag by the seal.
    type Edit = fn(&mut Value);
    let edits: Vec<(&str, Edit)> = vec![
        ("the client key's nonce", |p| {
            p["client_key"]["nonce"] = json!("AAAAAAAAAAAAAAAA")
        }),
        ("the client key removed", |p| {
            p.as_object_mut().expect("object").remove("client_key");
        }),
        ("the certificate replaced", |p| {
            p["settings"]["client_certificate_pem"] =
                json!(include_str!("../../src/settings/testdata/ec.crt"))
        }),
        ("the sealed secrets swapped", |p| {
            let password = p["password"].clone();
            p["password"] = p["client_key"].clone();
            p["client_key"] = password;
        }),
        ("the host", |p| {
            p["settings"]["host"] = json!("attacker.example.net")
        }),
    ];
    for (what, edit) in edits {
        let mut file = original.clone();
        edit(&mut file["profiles"][0]["settings"]);
        std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("json")).expect("write");
        let e = reopen().expect_err(what);
        assert!(e.is_tampered(), "{what}: {e}");
        file.as_object_mut().expect("object").remove("mac");
        std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("json")).expect("write");
        let e = reopen().expect_err(what);
        let shown = format!("{e}\n{e:?}");
        assert!(
            !shown.contains(&key_line) && !shown.contains(PASSWORD),
            "{what}: {shown}"
        );
        if what != "the client key removed" {
            assert!(e.is_tampered(), "{what}: {e}");
        }
    }
}
