//! Hot reload: a Mailer that follows a profile store switches servers when
//! the store is saved (or reloaded after another process saved it), without
//! losing a message.
#![cfg(feature = "serde")]

mod compat;
mod policies;
mod proxy;
mod tamper;

use std::collections::HashSet;
use std::time::Duration;

use relaymail::profiles::ProfileStore;
use relaymail::settings::SecretKey;
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Email, Mailer, SmtpSettings, TlsMode};

const WAIT: Duration = Duration::from_secs(10);

fn settings(srv: &TestServer) -> SmtpSettings {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(srv.port()))
        .tls(TlsMode::None)
        .sender("noreply@example.com")
        .timeout(Duration::from_secs(5))
        .build()
        .expect("settings")
}

fn temp_store(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relaymail-hot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("smtp.json")
}

fn subjects(srv: &TestServer) -> Vec<String> {
    srv.messages()
        .iter()
        .map(|m| {
            String::from_utf8_lossy(&m.data)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn saving_the_store_switches_new_deliveries_without_loss() {
    let a = TestServer::start(ServerConfig::new()).await.expect("a");
    let b = TestServer::start(ServerConfig::new()).await.expect("b");
    let path = temp_store("save");
    let key = SecretKey::generate().expect("key");
    let key_text = key.to_base64();
    let store = ProfileStore::new(&path, key);
    let mut profiles = store.load().expect("load");
    profiles.add("primary", settings(&a), true).expect("add");
    profiles.add("backup", settings(&b), false).expect("add");
    store.save(&mut profiles).expect("save");
    let mailer = store
        .mailer(|s| Mailer::builder(s).max_connections(2).build())
        .expect("mailer");

    let mut pending = Vec::new();
    for i in 0..40 {
        if i == 20 {
            a.wait_for_messages(5, WAIT).await.expect("primary in use");
            // The administrator disables the primary relay and saves.
            profiles.set_enabled("primary", false).expect("disable");
            profiles.set_enabled("backup", true).expect("enable");
            store.save(&mut profiles).expect("save");
        }
        let m = mailer
            .composer()
            .compose(
                Email::new()
                    .to("ops@example.net")
                    .subject(format!("n{i}"))
                    .text("x"),
            )
            .await
            .expect("composed");
        pending.push(mailer.submit(m).await.expect("queued"));
    }
    for p in pending {
        p.await.expect("delivered");
    }
    let mut all = HashSet::new();
    for s in subjects(&a).into_iter().chain(subjects(&b)) {
        assert!(all.insert(s.clone()), "duplicate {s}");
    }
    assert_eq!(all.len(), 40, "nothing lost");
    let late: HashSet<String> = (20..40).map(|i| format!("n{i}")).collect();
    assert!(
        subjects(&a).iter().all(|s| !late.contains(s)),
        "after the save, only the backup"
    );
    assert_eq!(mailer.settings().port(), b.port());

    // Another process saves the store; reload() picks it up.
    let other = ProfileStore::new(
        &path,
        SecretKey::from_base64(secrecy::ExposeSecret::expose_secret(&key_text)).expect("key"),
    );
    let mut theirs = other.load().expect("load");
    theirs.move_to("primary", 0).expect("move");
    theirs.set_enabled("primary", true).expect("enable");
    other.save(&mut theirs).expect("save");
    store.reload().expect("reload");
    assert_eq!(mailer.settings().port(), a.port());
    mailer
        .send_email(
            Email::new()
                .to("ops@example.net")
                .subject("after reload")
                .text("x"),
        )
        .await
        .expect("sent");
    assert!(subjects(&a).contains(&"after reload".to_owned()));
    mailer.shutdown(WAIT).await;
}

#[cfg(unix)]
#[path = "../support/umask.rs"]
mod umask;

#[cfg(unix)]
use umask::mode;

#[cfg(unix)]
#[test]
fn the_store_and_its_lock_are_private_and_saving_keeps_the_mode_set_by_the_admin() {
    use std::os::unix::fs::PermissionsExt;
    if !umask::in_child_with_umask_022(
        "the_store_and_its_lock_are_private_and_saving_keeps_the_mode_set_by_the_admin",
    ) {
        return;
    }
    let path = temp_store("modes");
    let store = ProfileStore::new(&path, SecretKey::generate().expect("key"));
    let mut profiles = store.load().expect("load");
    let smtp = SmtpSettings::builder()
        .host("relay.example.com")
        .sender("noreply@example.com")
        .build()
        .expect("settings");
    profiles.add("primary", smtp, true).expect("add");
    store.save(&mut profiles).expect("save");
    assert_eq!(mode(&path), 0o600, "a new store");
    assert_eq!(mode(&path.with_extension("lock")), 0o600, "its lock file");
    // An administrator narrows (or, for a group of operators, widens) the
    // store's mode: saving keeps it.
    for admin in [0o400, 0o640] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(admin)).expect("chmod");
        profiles.set_enabled("primary", admin == 0o400).expect("toggle");
        store.save(&mut profiles).expect("save");
        assert_eq!(mode(&path), admin, "saved over a {admin:o} store");
    }
}

#[cfg(unix)]
#[test]
fn a_key_file_readable_by_others_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let path = temp_store("key").with_file_name("seal.key");
    let key = SecretKey::generate().expect("key");
    std::fs::write(&path, secrecy::ExposeSecret::expose_secret(&key.to_base64())).expect("write");
    for loose in [0o644, 0o640, 0o604, 0o620, 0o602] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).expect("chmod");
        let e = SecretKey::from_file(&path).expect_err("refused");
        let text = e.to_string();
        assert!(e.is_config(), "{text}");
        assert!(
            text.contains(&path.display().to_string()),
            "names the file: {text}"
        );
        assert!(text.contains(&format!("{loose:04o}")), "names the mode: {text}");
        assert!(text.contains("chmod 600"), "says how to fix it: {text}");
    }
    for private in [0o600, 0o400] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(private)).expect("chmod");
        let read = SecretKey::from_file(&path).expect("a private key file reads");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&read.to_base64()),
            secrecy::ExposeSecret::expose_secret(&key.to_base64())
        );
    }
}
