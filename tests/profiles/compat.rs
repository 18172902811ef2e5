//! Stores written by earlier releases open unchanged: the fixture
//! `fixtures/store-0.1-password.json` was saved by relaymail 0.1 before
//! client certificates and the system trust store existed (a sealed
//! password, the store's tag), under the key below. Fields added since are
//! bound to the seal and the tag only when set, so such a record keeps
//! opening.

use relaymail::profiles::ProfileStore;
use relaymail::settings::SecretKey;
use relaymail::{Auth, Credential, TlsMode};
use secrecy::ExposeSecret;

/// The key the fixture was sealed with (32 bytes, base64): test data only.
const FIXTURE_KEY: &str = "cmVsYXltYWlsIGNvbXBhdGliaWxpdHkgZml4dHVyZSE=";

#[test]
fn a_store_sealed_before_client_certificates_still_opens() {
    let path = super::temp_store("compat-0.1");
    std::fs::write(&path, include_str!("fixtures/store-0.1-password.json")).expect("write");
    let store =
        ProfileStore::new(&path, SecretKey::from_base64(FIXTURE_KEY).expect("key")).refuse_legacy_seals();
    let profiles = store.load().expect("a 0.1 store opens");
    let active = profiles.active().expect("active");
    // Written before the mail policies and the flag were stored: defaults.
    assert!(!active.test_on_save());
    let settings = active.settings();
    assert_eq!(settings.max_deliveries_per_connection(), 20);
    assert_eq!(settings.redirect(), &relaymail::Redirect::default());
    assert_eq!(settings.address_policy(), relaymail::AddressPolicy::Strict);
    assert_eq!(
        settings.attachment_limit(),
        relaymail::settings::AttachmentLimit::none()
    );
    assert_eq!(
        (settings.host(), settings.port(), settings.tls()),
        ("mail.example.com", 465, TlsMode::Implicit)
    );
    match settings.auth() {
        Auth::Credential(Credential::Password { username, password }) => {
            assert_eq!(username, "app");
            assert_eq!(password.expose_secret(), "Fixture-Pa55word");
        }
        other => panic!("{other:?}"),
    }
}
