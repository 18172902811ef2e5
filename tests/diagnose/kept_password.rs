//! "Send test email" with edited, unsaved settings: a password kept from the
//! stored settings (the form never shows it) is never sent to a server the
//! form just changed — the edit is refused before anything connects.

use relaymail::diagnose;
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{PasswordChange, SettingsErrors, SettingsUpdate, SmtpSettings, SmtpSettingsBuilder, TlsMode};

use super::{server, TIMEOUT};

const PASSWORD: &str = "Stored-S3cret";

/// What the person changing the form wants: the password in clear text at
/// their own listener.
fn attack(listener: &TestServer) -> SmtpSettingsBuilder {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(listener.port()))
        .tls(TlsMode::None)
        .dangerous(|d| d.allow_plaintext_auth(true))
        .sender("app@example.com")
        .credentials("app", PASSWORD)
        .timeout(TIMEOUT)
}

fn no_auth_seen(listener: &TestServer) -> bool {
    listener
        .sessions()
        .iter()
        .all(|s| s.auth_user.is_none() && s.commands.iter().all(|c| !c.line.starts_with("AUTH")))
}

/// The form's update: only the fields the closure sets change.
fn form(
    stored: &SmtpSettings,
    fields: impl FnOnce(&mut SettingsUpdate),
) -> Result<SmtpSettings, SettingsErrors> {
    let mut update = SettingsUpdate::new();
    fields(&mut update);
    stored.apply(update)
}

type Edit = fn(&SmtpSettings, &TestServer) -> Result<SmtpSettings, SettingsErrors>;

#[tokio::test]
async fn a_kept_password_is_not_sent_to_a_changed_server() {
    let listener = server(ServerConfig::new().auth_mechanisms(&["PLAIN", "LOGIN"])).await;
    // (the field, the stored settings: the attack with that field as it was,
    //  the form's edit back to the attack with the password left "unchanged")
    let mut cases: Vec<(&str, SmtpSettingsBuilder, Edit)> = vec![
        ("host", attack(&listener).host("localhost"), |s, _| {
            form(s, |u| {
                u.host = Some("127.0.0.1".into());
            })
        }),
        ("port", attack(&listener).port(2525), |s, l| {
            form(s, |u| {
                u.port = Some(u32::from(l.port()));
            })
        }),
        ("tls", attack(&listener).tls(TlsMode::StartTls), |s, l| {
            form(s, |u| {
                u.tls = Some(TlsMode::None);
                u.port = Some(u32::from(l.port()));
            })
        }),
        (
            "allow_plaintext_auth",
            attack(&listener).dangerous(|d| d.allow_plaintext_auth(false)),
            |s, _| {
                form(s, |u| {
                    u.allow_plaintext_auth = Some(true);
                    u.password = PasswordChange::Keep;
                })
            },
        ),
        (
            "username",
            attack(&listener).credentials("admin", PASSWORD),
            |s, _| {
                form(s, |u| {
                    u.username = Some("app".into());
                })
            },
        ),
        ("dangerous_accept_invalid_certs", attack(&listener), |s, _| {
            s.to_builder().dangerous(|d| d.accept_invalid_certs(true)).build()
        }),
        ("dangerous_accept_invalid_hostnames", attack(&listener), |s, _| {
            s.to_builder()
                .dangerous(|d| d.accept_invalid_hostnames(true))
                .build()
        }),
        ("extra roots", attack(&listener), |s, l| {
            s.to_builder().add_root_certificates_pem(l.ca_pem()).build()
        }),
        ("webpki_roots", attack(&listener), |s, l| {
            s.to_builder()
                .webpki_roots(false)
                .add_root_certificates_pem(l.ca_pem())
                .build()
        }),
    ];
    if cfg!(feature = "proxy") {
        // Stored behind a proxy; the edit removes it, so the password would
        // go straight to the listener.
        cases.push((
            "proxy (removed)",
            attack(&listener).proxy(relaymail::Proxy::http_connect("127.0.0.1", 3128)),
            |s, _| {
                form(s, |u| {
                    u.proxy_kind = Some(None);
                })
            },
        ));
    }
    for (what, stored, edit) in cases {
        let stored = stored.build().expect(what);
        let edited = edit(&stored, &listener);
        // The settings page's "Send test email" button, as an application
        // would wire it: test the edited settings when they are valid.
        if let Ok(unsaved) = &edited {
            let report = diagnose::send_test(unsaved, "admin@example.com", None).await;
            let report = format!("{report}");
            assert!(!report.contains(PASSWORD), "{what}: {report}");
        }
        let e = edited.expect_err(what);
        assert_eq!(
            e.field("password").map(|f| f.message()),
            Some("enter the password again: the server settings changed"),
            "{what}: {e}"
        );
        assert!(!format!("{e}{e:?}").contains(PASSWORD), "{what}");
        assert!(no_auth_seen(&listener), "{what}: the listener saw AUTH");
        assert_eq!(listener.connections_total(), 0, "{what}: nothing connected");
    }
}

#[tokio::test]
async fn a_kept_password_works_while_the_server_stays_the_same() {
    let relay = server(
        ServerConfig::new()
            .auth_mechanisms(&["PLAIN"])
            .user("app", PASSWORD)
            .require_auth(true),
    )
    .await;
    let stored = attack(&relay).build().expect("settings");
    let edited = form(&stored, |u| {
        u.sender_name = Some(Some("Example App".into()));
        u.helo_name = Some(Some("app.example.com".into()));
        // Unchanged server fields sent back as they were.
        u.host = Some("127.0.0.1".into());
        u.tls = Some(TlsMode::None);
        u.username = Some("app".into());
        u.password = PasswordChange::Keep;
    })
    .expect("the server did not change");
    let report = diagnose::verify(&edited).await;
    assert!(report.is_ok(), "{report}");
    assert_eq!(
        relay
            .sessions()
            .iter()
            .filter_map(|s| s.auth_user.clone())
            .collect::<Vec<_>>(),
        ["app"]
    );
}
