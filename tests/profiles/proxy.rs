//! Profile stores and proxies: a store written before proxies existed opens
//! unchanged; a proxy's password is sealed in the store, and bound to the
//! proxy like the relay's password is to the relay.

use relaymail::profiles::ProfileStore;
use relaymail::settings::SecretKey;
use relaymail::Auth;
use secrecy::ExposeSecret;

/// Written by relaymail before proxies existed (the profile "primary",
/// password "Pre-Proxy-Pw"), with this key.
const STORE_BEFORE_PROXIES: &str = include_str!("fixtures/store-before-proxies.json");
const KEY_BEFORE_PROXIES: &str = "cmVsYXltYWlsIHByb3h5IGNvbXBhdCBmaXh0dXJlIGs=";

#[test]
fn a_store_written_before_proxies_existed_opens_and_is_left_as_it_is() {
    let path = super::temp_store("before-proxies");
    std::fs::write(&path, STORE_BEFORE_PROXIES).expect("write");
    // Refusing legacy seals: its tag and seals must verify as they are.
    let store = ProfileStore::new(&path, SecretKey::from_base64(KEY_BEFORE_PROXIES).expect("key"))
        .refuse_legacy_seals();
    let profiles = store.load().expect("opens");
    let settings = profiles.active().expect("active").settings().clone();
    assert!(settings.proxy().is_none());
    match settings.auth() {
        Auth::Credential(relaymail::Credential::Password { username, password }) => {
            assert_eq!(
                (username.as_str(), password.expose_secret()),
                ("app", "Pre-Proxy-Pw")
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        STORE_BEFORE_PROXIES,
        "not rewritten: nothing in it is legacy"
    );
}

#[cfg(feature = "proxy")]
#[test]
fn a_proxy_password_is_sealed_in_the_store_and_bound_to_the_proxy() {
    use relaymail::{Proxy, SmtpSettings};
    use serde_json::{json, Value};

    let key = SecretKey::generate().expect("key");
    let key_text = key.to_base64();
    let path = super::temp_store("proxy-password");
    let store = ProfileStore::new(&path, key);
    let mut profiles = store.load().expect("load");
    let settings = SmtpSettings::builder()
        .host("mail.example.com")
        .sender("noreply@example.com")
        .credentials("app", "Relay-S3cret")
        .proxy(Proxy::http_connect("proxy.example", 3128).with_credentials("px", "Pr0xy-S3cret"))
        .build()
        .expect("settings");
    profiles.add("primary", settings.clone(), true).expect("add");
    store.save(&mut profiles).expect("save");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        !text.contains("Pr0xy-S3cret") && !text.contains("Relay-S3cret"),
        "{text}"
    );
    let original: Value = serde_json::from_str(&text).expect("json");
    assert!(
        original["profiles"][0]["settings"]["proxy_password"].is_object(),
        "{text}"
    );
    let reopen = || {
        ProfileStore::new(
            &path,
            SecretKey::from_base64(key_text.expose_secret()).expect("key"),
        )
        .load()
    };
    let loaded = reopen().expect("opens");
    let got = loaded.active().expect("active").settings();
    assert_eq!(format!("{got:?}"), format!("{settings:?}"));
    assert_eq!(
        got.proxy()
            .and_then(Proxy::password)
            .map(|p| p.expose_secret().to_owned()),
        Some("Pr0xy-S3cret".to_owned())
    );
    let cases: Vec<(&str, &str, Value)> = vec![
        ("proxy host", "/proxy/host", json!("proxy.attacker.example")),
        ("proxy port", "/proxy/port", json!(8080)),
        ("proxy kind", "/proxy/kind", json!("socks5")),
        ("proxy user", "/proxy/username", json!("root")),
        ("proxy removed", "/proxy", Value::Null),
    ];
    for (what, pointer, value) in cases {
        let mut file = original.clone();
        let data = &mut file["profiles"][0]["settings"]["settings"];
        let (parent, field) = pointer.rsplit_once('/').expect("pointer");
        let object = data
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("{parent}"));
        if value.is_null() {
            object.remove(field);
        } else {
            object.insert(field.to_owned(), value);
        }
        for with_tag in [true, false] {
            if !with_tag {
                file.as_object_mut().expect("object").remove("mac");
            }
            std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("json")).expect("write");
            let e = reopen().expect_err(what);
            assert!(e.is_tampered(), "{what} (tag: {with_tag}): {e}");
            let shown = format!("{e}\n{e:?}");
            assert!(
                !shown.contains("Pr0xy-S3cret") && !shown.contains("Relay-S3cret"),
                "{shown}"
            );
        }
    }
}
