//! The sans-IO core's typed errors: what a user of `proto` can match on,
//! and what relaymail's `Error` makes of them (the same texts as ever, with
//! the hints for administrators added above the core).

use relaymail::proto::auth::{Credential, Mechanism, SaslClient};
use relaymail::proto::ehlo::Extension;
use relaymail::proto::session::{Envelope, Event, Session, SessionConfig, Transaction};
use relaymail::proto::{Misuse, SessionError, Stage};
use relaymail::Error;
use secrecy::SecretString;

const PASSWORD: &str = "hunter2-not-in-any-error";

fn session(config: SessionConfig) -> Session {
    Session::new(config).expect("valid config")
}

/// A session past greeting and EHLO with these extension lines.
fn ready(extensions: &[&str], implicit_tls: bool) -> Session {
    let mut config = SessionConfig::new("client.example.com");
    config.implicit_tls = implicit_tls;
    let mut s = session(config);
    s.receive(b"220 mx.example.com ESMTP\r\n").expect("greeting");
    let mut ehlo = String::from("250-mx.example.com\r\n");
    for (i, e) in extensions.iter().enumerate() {
        let sep = if i + 1 == extensions.len() { ' ' } else { '-' };
        ehlo.push_str(&format!("250{sep}{e}\r\n"));
    }
    if extensions.is_empty() {
        ehlo = "250 mx.example.com\r\n".into();
    }
    s.receive(ehlo.as_bytes()).expect("ehlo");
    assert!(matches!(s.poll_event(), Some(Event::Ready)));
    s.consume_output(s.output().len());
    s
}

fn tx(to: &str, body: &[u8]) -> Transaction {
    let address = |a: &str| a.parse::<relaymail::Address>().expect("address");
    let envelope = Envelope::new(Some(address("alerts@example.com")), vec![address(to)]).expect("envelope");
    Transaction::new(envelope, body)
}

#[test]
fn a_refused_ehlo_is_matched_by_stage_and_converted_with_its_hint() {
    let mut config = SessionConfig::new("client.example.com");
    config.allow_helo_fallback = false;
    let mut s = session(config);
    s.receive(b"220 mx.example.com ESMTP\r\n").expect("greeting");
    let e = s.receive(b"550 5.7.1 go away\r\n").expect_err("refused");
    let SessionError::Refused {
        stage: Stage::Ehlo,
        reply,
    } = &e
    else {
        panic!("{e:?}");
    };
    assert_eq!(reply.code().value(), 550);
    assert_eq!(e.stage(), Some(Stage::Ehlo));
    assert_eq!(e.reply(), Some(reply));
    // The core states the fact; no advice.
    assert_eq!(
        e.to_string(),
        "ehlo: EHLO was refused (server replied: 550 5.7.1 go away)"
    );
    // relaymail's Error: the same fact, kind and stage, plus the hint.
    let app = Error::from(e.clone());
    assert!(app.is_rejected() && app.is_permanent());
    assert_eq!(app.stage(), Some(Stage::Ehlo));
    assert_eq!(app.reply(), e.reply());
    assert_eq!(
        app.to_string(),
        "ehlo: EHLO was refused (server replied: 550 5.7.1 go away); hint: some relays refuse EHLO names that do not resolve: set a HELO name the server accepts"
    );
    // The session keeps failing with the same typed error.
    assert!(matches!(
        s.noop(),
        Err(SessionError::Refused {
            stage: Stage::Ehlo,
            ..
        })
    ));
}

#[test]
fn refused_recipients_say_how_many_and_whether_it_may_pass_later() {
    let mut s = ready(&["PIPELINING"], false);
    s.send(tx("x@example.net", b"Subject: t\r\n\r\nx\r\n"))
        .expect("queued");
    s.consume_output(s.output().len());
    s.receive(b"250 ok\r\n554 5.7.1 Relay access denied\r\n554 5.5.1 no valid recipients\r\n")
        .expect("in step");
    let Some(Event::Transaction(t)) = s.poll_event() else {
        panic!("no outcome");
    };
    assert!(!t.body_sent);
    let e = t.result.expect_err("refused");
    assert!(
        matches!(
            &e,
            SessionError::RecipientsRefused {
                accepted: 0,
                refused: 1,
                total: 1,
                transient: false,
                reply: Some(r),
            } if r.code().value() == 554
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "rcpt: every recipient was refused (server replied: 554 5.7.1 Relay access denied)"
    );
    let app = Error::from(e);
    assert!(app.is_rejected() && app.is_permanent());
    assert!(app.hint().is_some_and(|h| h.contains("does not relay")), "{app}");
}

#[test]
fn a_missing_extension_names_it() {
    let mut s = ready(&["PIPELINING"], false);
    let e = s.send(tx("δοκιμή@example.net", b"x")).expect_err("no SMTPUTF8");
    assert!(
        matches!(
            e,
            SessionError::NotOffered {
                extension: Extension::SmtpUtf8,
                secure: false
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.stage(), Some(Stage::Mail));
    assert_eq!(
        e.to_string(),
        "mail: an address has non-ASCII characters but the server does not offer SMTPUTF8"
    );
    let app = Error::from(e);
    assert!(app.is_unsupported() && app.is_permanent());
    assert_eq!(
        app.hint(),
        Some("use an ASCII (or IDNA A-label) address, or a relay that supports SMTPUTF8")
    );

    let e = s
        .send(tx("a@example.net", "ü".as_bytes()))
        .expect_err("no 8BITMIME");
    assert!(matches!(
        e,
        SessionError::NotOffered {
            extension: Extension::EightBitMime,
            ..
        }
    ));

    let mut s = ready(&["SIZE 10"], false);
    let e = s.send(tx("a@example.net", b"0123456789ab")).expect_err("too big");
    assert!(
        matches!(e, SessionError::TooLarge { size: 14, limit: 10 }),
        "{e:?}"
    );
    assert!(s.output().is_empty() && s.is_idle());

    let e = ready(&[], true)
        .authenticate(SaslClient::new(Mechanism::Plain, &password(), "").expect("client"))
        .expect_err("no AUTH");
    assert!(matches!(
        e,
        SessionError::NotOffered {
            extension: Extension::Auth,
            secure: true
        }
    ));
    let app = Error::from(e);
    assert!(app.is_auth());
    assert_eq!(app.hint(), None, "over TLS already: no STARTTLS advice");
}

#[test]
fn a_greeting_timeout_gets_its_hint_only_above_the_core() {
    let mut s = session(SessionConfig::new("client.example.com"));
    let e = s.timed_out();
    assert!(matches!(
        e,
        SessionError::Timeout {
            stage: Some(Stage::Greeting)
        }
    ));
    assert_eq!(
        e.to_string(),
        "greeting: no reply from the server within the timeout"
    );
    let app = Error::from(e);
    assert!(app.is_timeout() && app.is_transient());
    assert!(app.hint().is_some_and(|h| h.contains("implicit TLS")), "{app}");
}

#[test]
fn io_failures_keep_their_source() {
    let mut s = ready(&[], false);
    s.noop().expect("noop");
    let e = s.io_failed(std::io::Error::other("boom"));
    assert!(matches!(
        e,
        SessionError::Io {
            stage: Some(Stage::Noop),
            ..
        }
    ));
    assert_eq!(e.to_string(), "noop: network error: boom");
    let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
    assert_eq!(source.map(ToString::to_string).as_deref(), Some("boom"));
    assert_eq!(Error::from(e).to_string(), "noop: network error: boom");
}

#[test]
fn calls_out_of_order_are_misuse() {
    let mut s = session(SessionConfig::new("client.example.com"));
    let e = s.noop().expect_err("not ready");
    assert!(matches!(e, SessionError::Misuse(Misuse::NoopNotReady)), "{e:?}");
    assert_eq!(e.stage(), None);
    assert_eq!(e.to_string(), "NOOP is only possible on a ready session");
    assert!(Error::from(e).is_config());
    let e = s.tls_established().expect_err("no STARTTLS");
    assert!(matches!(e, SessionError::Misuse(Misuse::NoPendingStartTls)));
}

fn password() -> Credential {
    Credential::Password {
        username: "user".into(),
        password: SecretString::from(PASSWORD),
    }
}

#[test]
fn a_rejected_login_carries_the_reply_and_no_secret() {
    let mut s = ready(&["AUTH PLAIN"], true);
    let client = SaslClient::new(Mechanism::Plain, &password(), "").expect("client");
    s.authenticate(client).expect("starts");
    s.consume_output(s.output().len());
    s.receive(b"535 5.7.8 authentication failed\r\n")
        .expect("in step");
    let Some(Event::Authenticated(Err(e))) = s.poll_event() else {
        panic!("no AUTH outcome");
    };
    assert!(
        matches!(
            &e,
            SessionError::AuthRejected {
                mechanism: Mechanism::Plain,
                detail: None,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "auth: the server rejected PLAIN authentication (server replied: 535 5.7.8 authentication failed)"
    );
    let app = Error::from(e.clone());
    assert!(app.is_auth() && app.is_permanent());
    assert_eq!(app.hint(), Some("check the user name and password"));
    let auth_line = relaymail::proto::auth::encode_initial_response(b"\0user\0hunter2-not-in-any-error");
    for text in [
        e.to_string(),
        format!("{e:?}"),
        app.to_string(),
        format!("{app:?}"),
    ] {
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(
            !text.contains(&String::from_utf8_lossy(&auth_line).to_string()),
            "{text}"
        );
    }
    assert!(s.is_ready(), "the session survives a refused login");
}

#[test]
fn server_text_is_escaped_in_display_and_debug() {
    let mut s = session(SessionConfig::new("client.example.com"));
    let e = s
        .receive(b"554 5.7.1 \x1b[2Jcleared\x07 \xe2\x80\xaeevil\r\n")
        .expect_err("refused");
    assert!(matches!(
        e,
        SessionError::Refused {
            stage: Stage::Greeting,
            ..
        }
    ));
    let bad = |c: char| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c);
    let app = Error::from(e.clone());
    for text in [e.to_string(), format!("{e:?}"), app.to_string()] {
        assert!(!text.contains(bad), "{text:?}");
    }
    assert!(
        e.to_string().contains("\\u{1b}[2Jcleared\\u{7} \\u{202e}evil"),
        "{e}"
    );
    // The reply itself stays raw.
    assert!(e.reply().is_some_and(|r| r.text().contains('\x1b')));
    assert_eq!(
        app.to_string(),
        format!("{e}"),
        "a refused greeting has no hint: the same text above the core"
    );
}
