//! A scripted server drives the session state machine through every path.

use base64::Engine as _;
use relaymail::proto::auth::{Credential, Mechanism, SaslClient};
use relaymail::proto::command::{DsnReturn, MailParams, Notify, RcptParams};
use relaymail::proto::session::{
    Envelope, Event, Phase, Session, SessionConfig, StartTlsPolicy, Transaction, TransactionOutcome,
};
use relaymail::{Address, AddressPolicy, Error, Stage};
use secrecy::SecretString;

const PASSWORD: &str = "correct horse battery staple";

/// The client side under test plus helpers to play the server.
struct Script {
    s: Session,
}

impl Script {
    fn new(config: SessionConfig) -> Script {
        Script {
            s: Session::new(config).expect("valid config"),
        }
    }

    fn plain() -> Script {
        Script::new(SessionConfig::new("client.example.com"))
    }

    /// Asserts the client wrote exactly `want` since the last call, and consumes it.
    #[track_caller]
    fn client_wrote(&mut self, want: &[u8]) {
        let got = self.s.output().to_vec();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
        self.s.consume_output(got.len());
    }

    fn take_output(&mut self) -> Vec<u8> {
        let got = self.s.output().to_vec();
        self.s.consume_output(got.len());
        got
    }

    #[track_caller]
    fn server(&mut self, bytes: &[u8]) {
        self.s.receive(bytes).expect("session accepts the reply");
    }

    #[track_caller]
    fn server_err(&mut self, bytes: &[u8]) -> Error {
        self.s
            .receive(bytes)
            .map_err(Error::from)
            .expect_err("session fails")
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }

    /// Starts AUTH with `mechanism` and drops the AUTH line written.
    #[track_caller]
    fn start_auth(&mut self, mechanism: Mechanism, credential: &Credential, nonce: &str) {
        let client = SaslClient::new(mechanism, credential, nonce).expect("client");
        self.s.authenticate(client).expect("starts");
        self.take_output();
    }

    /// The error of the one event pending: a failed AUTH exchange.
    #[track_caller]
    fn auth_error(&mut self) -> Error {
        let ev = self.events();
        let [Event::Authenticated(Err(e))] = ev.as_slice() else {
            panic!("{ev:?}");
        };
        e.clone().into()
    }

    #[track_caller]
    fn expect_ready(&mut self) {
        let ev = self.events();
        assert!(matches!(ev.as_slice(), [Event::Ready]), "{ev:?}");
    }

    #[track_caller]
    fn outcome(&mut self) -> TransactionOutcome {
        let mut ev = self.events();
        assert_eq!(ev.len(), 1, "{ev:?}");
        match ev.remove(0) {
            Event::Transaction(t) => t,
            other => panic!("{other:?}"),
        }
    }

    /// Greeting and EHLO with the given extension lines.
    fn handshake(&mut self, extensions: &[&str]) {
        self.server(b"220 mx.example.com ESMTP\r\n");
        self.client_wrote(b"EHLO client.example.com\r\n");
        self.server(&ehlo_reply(extensions));
        self.expect_ready();
    }
}

fn ehlo_reply(extensions: &[&str]) -> Vec<u8> {
    let mut lines = vec!["mx.example.com".to_owned()];
    lines.extend(extensions.iter().map(|s| (*s).to_owned()));
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
    }
    out
}

fn addr(text: &str) -> Address {
    text.parse().expect("a valid address")
}

fn envelope(rcpts: &[&str]) -> Envelope {
    Envelope::new(
        Some(addr("alerts@example.com")),
        rcpts.iter().map(|r| addr(r)).collect(),
    )
    .expect("envelope")
}

fn tx(rcpts: &[&str]) -> Transaction {
    Transaction::new(envelope(rcpts), &b"Subject: test\r\n\r\nbody\r\n"[..])
}

fn password() -> Credential {
    Credential::Password {
        username: "user".into(),
        password: SecretString::from(PASSWORD),
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

mod handshake {
    use super::*;

    #[test]
    fn greeting_ehlo_ready() {
        let mut t = Script::plain();
        assert_eq!(t.s.phase(), Phase::Greeting);
        t.server(b"220 mx.example.com ESMTP\r\n");
        assert_eq!(t.s.phase(), Phase::Ehlo);
        t.client_wrote(b"EHLO client.example.com\r\n");
        t.server(&ehlo_reply(&["PIPELINING", "SIZE 1000"]));
        t.expect_ready();
        assert_eq!(t.s.phase(), Phase::Idle);
        assert!(t.s.is_idle());
        assert_eq!(t.s.capabilities().and_then(|c| c.size_limit()), Some(1000));
    }

    #[test]
    fn greeting_split_into_single_bytes() {
        let mut t = Script::plain();
        for b in b"220-mx.example.com ESMTP\r\n220 welcome\r\n" {
            t.server(std::slice::from_ref(b));
        }
        t.client_wrote(b"EHLO client.example.com\r\n");
    }

    #[test]
    fn negative_greeting() {
        let mut t = Script::plain();
        let e = t.server_err(b"554 5.7.1 no SMTP service for you\r\n");
        assert_eq!(e.stage(), Some(Stage::Greeting));
        assert!(e.is_permanent() && e.is_rejected());
        assert_eq!(e.reply().map(|r| r.code().value()), Some(554));
        // Once failed, it stays failed with the same error.
        let again = t.s.receive(b"220 hello\r\n").expect_err("stays failed");
        assert_eq!(again.to_string(), e.to_string());
        assert!(t.s.send(tx(&["a@example.net"])).is_err());

        let mut t = Script::plain();
        let e = t.server_err(b"421 4.3.2 try later\r\n");
        assert!(e.is_transient());
        assert_eq!(e.stage(), Some(Stage::Greeting));
    }

    #[test]
    fn helo_fallback_when_allowed() {
        let mut t = Script::plain();
        t.server(b"220 old.example.com SMTP\r\n");
        t.client_wrote(b"EHLO client.example.com\r\n");
        t.server(b"502 5.5.2 command not recognized\r\n");
        t.client_wrote(b"HELO client.example.com\r\n");
        t.server(b"250 old.example.com\r\n");
        t.expect_ready();
        assert_eq!(t.s.capabilities().map(|c| c.extensions().count()), Some(0));
        // No PIPELINING after HELO: one command at a time.
        t.s.send(tx(&["a@example.net"])).expect("queued");
        t.client_wrote(b"MAIL FROM:<alerts@example.com>\r\n");
    }

    #[test]
    fn no_helo_fallback_when_disabled_or_tls_required() {
        let mut config = SessionConfig::new("client.example.com");
        config.allow_helo_fallback = false;
        let mut t = Script::new(config);
        t.server(b"220 x\r\n");
        t.take_output();
        let e = t.server_err(b"502 5.5.2 what\r\n");
        assert_eq!(e.stage(), Some(Stage::Ehlo));
        assert!(e.hint().is_some());

        let mut config = SessionConfig::new("client.example.com");
        config.starttls = StartTlsPolicy::Required;
        let mut t = Script::new(config);
        t.server(b"220 x\r\n");
        t.take_output();
        assert!(t.s.receive(b"502 5.5.2 what\r\n").is_err());
        assert!(t.s.output().is_empty(), "no HELO sent");
    }

    #[test]
    fn invalid_helo_name_is_a_config_error() {
        for name in ["", "bad name", "x\r\nRSET", "-x"] {
            let e = Session::new(SessionConfig::new(name))
                .map_err(Error::from)
                .expect_err("refused");
            assert!(e.is_config(), "{name:?}");
        }
    }

    #[test]
    fn malformed_reply_is_a_protocol_error() {
        let mut t = Script::plain();
        let e = t.server_err(b"hello there\r\n");
        assert!(e.is_protocol() && e.is_transient());
        assert_eq!(e.stage(), Some(Stage::Greeting));
    }

    #[test]
    fn unsolicited_reply_is_a_protocol_error() {
        let mut t = Script::plain();
        t.handshake(&[]);
        let e = t.server_err(b"250 surprise\r\n");
        assert!(e.is_protocol());
    }

    #[test]
    fn eof_before_greeting_names_the_stage_and_hints() {
        let mut t = Script::plain();
        let e = t.s.receive_eof().map_err(Error::from).expect_err("fails");
        assert!(e.is_closed() && e.is_transient());
        assert_eq!(e.stage(), Some(Stage::Greeting));
        assert!(e.hint().is_some_and(|h| h.contains("implicit TLS")));
    }
}

mod starttls {
    use super::*;

    fn config(policy: StartTlsPolicy) -> SessionConfig {
        let mut c = SessionConfig::new("client.example.com");
        c.starttls = policy;
        c
    }

    #[test]
    fn upgrade_forgets_capabilities_and_says_ehlo_again() {
        let mut t = Script::new(config(StartTlsPolicy::Required));
        t.server(b"220 mx ESMTP\r\n");
        t.client_wrote(b"EHLO client.example.com\r\n");
        t.server(&ehlo_reply(&["STARTTLS", "SIZE 100", "PIPELINING"]));
        assert!(t.events().is_empty(), "not ready before TLS");
        t.client_wrote(b"STARTTLS\r\n");
        assert_eq!(t.s.phase(), Phase::StartTls);
        t.server(b"220 2.0.0 Ready to start TLS\r\n");
        assert!(matches!(t.events().as_slice(), [Event::StartTls]));
        assert_eq!(t.s.phase(), Phase::TlsHandshake);
        assert!(!t.s.wants_read());
        t.s.tls_established().expect("upgrade");
        assert!(t.s.is_secure());
        assert!(t.s.capabilities().is_none(), "pre-TLS capabilities forgotten");
        t.client_wrote(b"EHLO client.example.com\r\n");
        t.server(&ehlo_reply(&["AUTH PLAIN"]));
        t.expect_ready();
        let caps = t.s.capabilities().expect("caps");
        assert_eq!(caps.size_limit(), None);
        assert_eq!(caps.auth_mechanisms(), ["PLAIN"]);
    }

    #[test]
    fn bytes_after_220_in_the_same_read_abort() {
        let mut t = Script::new(config(StartTlsPolicy::Required));
        t.server(b"220 mx\r\n");
        t.take_output();
        t.server(&ehlo_reply(&["STARTTLS"]));
        t.client_wrote(b"STARTTLS\r\n");
        let e = t.server_err(b"220 go ahead\r\n250-injected\r\n");
        assert!(e.is_tls() && e.is_permanent());
        assert_eq!(e.stage(), Some(Stage::StartTls));
        assert!(t.events().iter().all(|e| !matches!(e, Event::StartTls)) || t.s.is_closed());
        assert!(t.s.tls_established().is_err());
    }

    #[test]
    fn bytes_after_220_in_a_later_read_abort() {
        let mut t = Script::new(config(StartTlsPolicy::Opportunistic));
        t.server(b"220 mx\r\n");
        t.take_output();
        t.server(&ehlo_reply(&["STARTTLS"]));
        t.take_output();
        t.server(b"220 go ahead\r\n");
        let e = t.server_err(b"250 injected\r\n");
        assert!(e.is_tls());
    }

    #[test]
    fn required_but_not_offered_fails_closed() {
        let mut t = Script::new(config(StartTlsPolicy::Required));
        t.server(b"220 mx\r\n");
        t.take_output();
        let e = t.server_err(&ehlo_reply(&["AUTH PLAIN"]));
        assert!(e.is_tls());
        assert_eq!(e.stage(), Some(Stage::StartTls));
        assert!(t.s.output().is_empty());
    }

    #[test]
    fn required_but_refused_fails_closed() {
        for refusal in [
            &b"454 4.7.0 TLS not available\r\n"[..],
            b"502 5.5.1 unrecognized\r\n",
        ] {
            let mut t = Script::new(config(StartTlsPolicy::Required));
            t.server(b"220 mx\r\n");
            t.take_output();
            t.server(&ehlo_reply(&["STARTTLS"]));
            t.take_output();
            let e = t.server_err(refusal);
            assert!(e.is_tls(), "{e}");
            assert!(e.reply().is_some());
        }
    }

    #[test]
    fn opportunistic_continues_in_clear_text() {
        let mut t = Script::new(config(StartTlsPolicy::Opportunistic));
        t.handshake(&["PIPELINING"]);
        assert!(!t.s.is_secure());
        assert_eq!(
            t.s.tls_skipped_reason(),
            Some("the server does not offer STARTTLS")
        );

        let mut t = Script::new(config(StartTlsPolicy::Opportunistic));
        t.server(b"220 mx\r\n");
        t.take_output();
        t.server(&ehlo_reply(&["STARTTLS"]));
        t.client_wrote(b"STARTTLS\r\n");
        t.server(b"454 4.7.0 TLS not available due to temporary reason\r\n");
        t.expect_ready();
        assert!(t.s.tls_skipped_reason().is_some_and(|r| r.contains("454")));
    }

    #[test]
    fn implicit_tls_never_sends_starttls() {
        let mut c = config(StartTlsPolicy::Required);
        c.implicit_tls = true;
        let mut t = Script::new(c);
        t.handshake(&["STARTTLS", "AUTH PLAIN"]);
        assert!(t.s.is_secure());
    }
}

mod auth {
    use super::*;

    fn secure_session(extensions: &[&str]) -> Script {
        let mut c = SessionConfig::new("client.example.com");
        c.implicit_tls = true;
        let mut t = Script::new(c);
        t.handshake(extensions);
        t
    }

    #[test]
    fn plain_success() {
        let mut t = secure_session(&["AUTH LOGIN PLAIN"]);
        let client = SaslClient::new(Mechanism::Plain, &password(), "").expect("client");
        t.s.authenticate(client).expect("starts");
        assert_eq!(t.s.phase(), Phase::Auth);
        let line = format!("AUTH PLAIN {}\r\n", b64(&format!("\0user\0{PASSWORD}")));
        t.client_wrote(line.as_bytes());
        t.server(b"235 2.7.0 Authentication successful\r\n");
        assert!(matches!(
            t.events().as_slice(),
            [Event::Authenticated(Ok(Mechanism::Plain))]
        ));
        assert_eq!(t.s.authenticated(), Some(Mechanism::Plain));
        assert!(t
            .s
            .authenticate(SaslClient::new(Mechanism::Plain, &password(), "").expect("c"))
            .is_err());
    }

    #[test]
    fn rejected_credentials_are_reported_without_the_secret() {
        let mut t = secure_session(&["AUTH PLAIN"]);
        t.s.authenticate(SaslClient::new(Mechanism::Plain, &password(), "").expect("c"))
            .expect("starts");
        t.take_output();
        t.server(b"535 5.7.8 Error: authentication failed: authentication failure\r\n");
        let e = &t.auth_error();
        assert!(e.is_auth() && e.is_permanent());
        assert_eq!(e.stage(), Some(Stage::Auth));
        let text = format!("{e} {e:?}");
        assert!(text.contains("PLAIN"), "names the mechanism: {text}");
        assert!(!text.contains(PASSWORD) && !text.contains(&b64(PASSWORD)));
        assert!(t.s.is_ready(), "the session survives a refused login");
    }

    #[test]
    fn server_control_bytes_never_reach_error_text_raw() {
        let raw_controls = |text: &str| text.chars().any(|c| c.is_control() && c != '\n');
        // A refusal whose text carries ESC[2J, BEL, NUL, DEL and a bare CR.
        let mut t = secure_session(&["AUTH PLAIN"]);
        t.start_auth(Mechanism::Plain, &password(), "");
        t.server(b"535 5.7.8 \x1b[2Jbad\x07 \x00login\x7f\rforged\r\n");
        let e = &t.auth_error();
        let shown = e.to_string();
        assert!(!raw_controls(&shown), "{shown:?}");
        assert!(
            shown.contains("\\u{1b}[2Jbad\\u{7} \\u{0}login\\u{7f}\\u{d}forged"),
            "{shown}"
        );
        assert!(!raw_controls(&format!("{e:?} {e:#?}")));
        // The raw text is still there for programs.
        let reply = e.reply().expect("reply");
        assert_eq!(reply.text(), "\x1b[2Jbad\x07 \x00login\x7f\rforged");

        // XOAUTH2: the server's JSON error goes into the hint, escaped.
        let mut t = secure_session(&["AUTH XOAUTH2"]);
        let token = Credential::OAuth2 {
            username: "user".into(),
            token: SecretString::from("tok"),
        };
        t.start_auth(Mechanism::XOAuth2, &token, "");
        t.server(format!("334 {}\r\n", b64("{\"status\":\"401\x1b]0;pwned\x07\"}")).as_bytes());
        t.client_wrote(b"\r\n");
        t.server(b"535 5.7.8 no\r\n");
        let e = &t.auth_error();
        let hint = e.hint().expect("hint");
        assert!(
            !raw_controls(hint) && hint.contains("401\\u{1b}]0;pwned\\u{7}"),
            "{hint:?}"
        );
        assert!(!raw_controls(&e.to_string()), "{e}");
    }

    #[test]
    fn temporary_auth_failure_is_transient() {
        let mut t = secure_session(&["AUTH PLAIN"]);
        t.s.authenticate(SaslClient::new(Mechanism::Plain, &password(), "").expect("c"))
            .expect("starts");
        t.take_output();
        t.server(b"454 4.7.0 Temporary authentication failure\r\n");
        let e = &t.auth_error();
        assert!(e.is_transient());
    }

    #[test]
    fn login_two_prompts() {
        let mut t = secure_session(&["AUTH LOGIN"]);
        t.s.authenticate(SaslClient::new(Mechanism::Login, &password(), "").expect("c"))
            .expect("starts");
        t.client_wrote(b"AUTH LOGIN\r\n");
        t.server(b"334 VXNlcm5hbWU6\r\n");
        t.client_wrote(format!("{}\r\n", b64("user")).as_bytes());
        t.server(b"334 UGFzc3dvcmQ6\r\n");
        t.client_wrote(format!("{}\r\n", b64(PASSWORD)).as_bytes());
        t.server(b"235 ok\r\n");
        assert!(matches!(
            t.events().as_slice(),
            [Event::Authenticated(Ok(Mechanism::Login))]
        ));
    }

    #[test]
    fn scram_rfc7677_exchange_over_smtp() {
        let mut t = secure_session(&["AUTH SCRAM-SHA-256 PLAIN"]);
        let cred = Credential::Password {
            username: "user".into(),
            password: SecretString::from("pencil"),
        };
        let client = SaslClient::new(Mechanism::ScramSha256, &cred, "rOprNGfwEbeRWgbNEkqO").expect("c");
        t.s.authenticate(client).expect("starts");
        t.client_wrote(
            format!(
                "AUTH SCRAM-SHA-256 {}\r\n",
                b64("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            )
            .as_bytes(),
        );
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        t.server(format!("334 {}\r\n", b64(server_first)).as_bytes());
        rfc7677_client_final_to_success(&mut t);
    }

    /// The RFC 7677 exchange from the client-final on: the proof, the
    /// server's signature, success.
    fn rfc7677_client_final_to_success(t: &mut Script) {
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        t.client_wrote(format!("{}\r\n", b64(client_final)).as_bytes());
        t.server(
            format!(
                "334 {}\r\n",
                b64("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            )
            .as_bytes(),
        );
        t.client_wrote(b"\r\n");
        t.server(b"235 2.7.0 ok\r\n");
        assert!(matches!(
            t.events().as_slice(),
            [Event::Authenticated(Ok(Mechanism::ScramSha256))]
        ));
    }

    /// A session past AUTH SCRAM-SHA-256 and its client-first, with the
    /// key derivation handed to the test when `offload`.
    fn scram_started(offload: bool) -> Script {
        let mut c = SessionConfig::new("client.example.com");
        c.implicit_tls = true;
        c.offload_key_derivation = offload;
        let mut t = Script::new(c);
        t.handshake(&["AUTH SCRAM-SHA-256"]);
        let cred = Credential::Password {
            username: "user".into(),
            password: SecretString::from("pencil"),
        };
        t.start_auth(Mechanism::ScramSha256, &cred, "rOprNGfwEbeRWgbNEkqO");
        t
    }

    fn server_first(iterations: u32) -> String {
        let first = format!(
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i={iterations}"
        );
        format!("334 {}\r\n", b64(&first))
    }

    #[test]
    fn scram_iteration_count_over_the_cap_is_refused_with_nothing_but_a_cancel() {
        use relaymail::proto::auth::{SaslError, SCRAM_MAX_ITERATIONS};
        assert_eq!(SCRAM_MAX_ITERATIONS, 100_000);
        for offload in [false, true] {
            let mut t = scram_started(offload);
            t.server(server_first(100_001).as_bytes());
            // No key derivation asked for, no client-final (not even part of
            // one): only the cancel.
            assert!(t.events().is_empty());
            t.client_wrote(b"*\r\n");
            t.server(b"501 5.7.0 Authentication aborted\r\n");
            let e = &t.auth_error();
            assert!(e.is_protocol() && e.is_permanent() && !e.is_auth(), "{e}");
            let source = std::error::Error::source(e).and_then(|s| s.downcast_ref::<SaslError>());
            assert_eq!(source, Some(&SaslError::IterationCount { count: 100_001 }), "{e}");
            assert!(e.to_string().contains("100001"), "{e}");
            assert!(t.s.is_ready() && !t.s.is_closed());
        }
    }

    #[test]
    fn scram_key_derivation_is_handed_to_the_shell_at_the_cap() {
        // The inline session's answer is the reference.
        let mut inline = scram_started(false);
        inline.server(server_first(100_000).as_bytes());
        assert!(inline.events().is_empty());
        let want = inline.take_output();
        assert!(want.ends_with(b"\r\n") && want.len() > 100, "{want:?}");

        let mut t = scram_started(true);
        t.server(server_first(100_000).as_bytes());
        let mut ev = t.events();
        assert_eq!(ev.len(), 1, "{ev:?}");
        let Event::DeriveKey(derivation) = ev.remove(0) else {
            panic!("{ev:?}");
        };
        assert_eq!(derivation.iterations(), 100_000);
        assert!(!format!("{derivation:?}").contains("pencil"));
        // Nothing is written and nothing read until the key is there.
        assert!(!t.s.wants_write() && !t.s.wants_read());
        assert_eq!(t.s.phase(), Phase::Auth);
        t.s.key_derived(derivation.run()).expect("resumes");
        t.client_wrote(&want);
        assert!(t.s.wants_read());
    }

    #[test]
    fn scram_offloaded_rfc7677_exchange_verifies() {
        let mut t = scram_started(true);
        t.server(server_first(4096).as_bytes());
        let Some(Event::DeriveKey(derivation)) = t.s.poll_event() else {
            panic!("no DeriveKey");
        };
        assert!(t.s.key_derived(derivation.clone().run()).is_ok());
        rfc7677_client_final_to_success(&mut t);
        // The key is asked for once: a second result is refused.
        let e =
            t.s.key_derived(derivation.run())
                .map_err(Error::from)
                .expect_err("not pending");
        assert!(e.is_config(), "{e}");
    }

    #[test]
    fn a_reply_while_the_key_is_derived_is_fatal() {
        let mut t = scram_started(true);
        t.server(server_first(4096).as_bytes());
        assert!(matches!(t.events().as_slice(), [Event::DeriveKey(_)]));
        let e = t.server_err(b"235 2.7.0 trust me\r\n");
        assert!(e.is_protocol(), "{e}");
        assert!(t.s.is_closed() && !t.s.wants_write());
    }

    #[test]
    fn scram_success_without_server_proof_is_fatal() {
        let mut t = scram_started(false);
        let e = t.server_err(b"235 2.7.0 trust me\r\n");
        assert!(e.is_auth());
        assert!(t.s.is_closed());
    }

    #[test]
    fn client_side_sasl_error_cancels_with_star() {
        let mut t = scram_started(false);
        // A nonce that does not extend ours: a man in the middle or a broken server.
        t.server(format!("334 {}\r\n", b64("r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")).as_bytes());
        t.client_wrote(b"*\r\n");
        t.server(b"501 5.7.0 Authentication aborted\r\n");
        let ev = t.events();
        assert!(
            matches!(ev.as_slice(), [Event::Authenticated(Err(e))] if Error::from(e.clone()).is_auth()),
            "{ev:?}"
        );
    }

    #[test]
    fn no_credentials_without_tls() {
        let mut t = Script::plain();
        t.handshake(&["AUTH PLAIN LOGIN"]);
        let e =
            t.s.authenticate(SaslClient::new(Mechanism::Plain, &password(), "").expect("c"))
                .map_err(Error::from)
                .expect_err("refused");
        assert!(e.is_auth() && e.hint().is_some());
        assert!(t.s.output().is_empty(), "nothing sent");

        let mut c = SessionConfig::new("client.example.com");
        c.allow_plaintext_auth = true;
        let mut t = Script::new(c);
        t.handshake(&["AUTH PLAIN"]);
        t.s.authenticate(SaslClient::new(Mechanism::Plain, &password(), "").expect("c"))
            .expect("explicitly allowed");
    }

    #[test]
    fn auth_not_offered_or_mechanism_missing() {
        let mut t = secure_session(&["PIPELINING"]);
        let e =
            t.s.authenticate(SaslClient::new(Mechanism::Plain, &password(), "").expect("c"))
                .map_err(Error::from)
                .expect_err("no AUTH");
        assert!(e.is_auth());
        let mut t = secure_session(&["AUTH LOGIN"]);
        let e =
            t.s.authenticate(SaslClient::new(Mechanism::Plain, &password(), "").expect("c"))
                .expect_err("no PLAIN");
        assert!(e.to_string().contains("LOGIN"));
    }
}

mod transactions {
    use super::*;

    #[test]
    fn pipelined_data_transaction() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING", "8BITMIME"]);
        let id =
            t.s.send(Transaction::new(
                envelope(&["a@example.net", "b@example.net"]),
                &b"Subject: x\n\n.hidden\nline"[..],
            ))
            .expect("queued");
        t.client_wrote(b"MAIL FROM:<alerts@example.com>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
        assert_eq!(t.s.phase(), Phase::Command);
        t.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
        assert!(t.s.output().is_empty());
        t.server(b"250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
        t.client_wrote(b"Subject: x\r\n\r\n..hidden\r\nline\r\n.\r\n");
        assert_eq!(t.s.phase(), Phase::FinalReply);
        t.server(b"250 2.0.0 Ok: queued as ABC123\r\n");
        let o = t.outcome();
        assert_eq!(o.id, id);
        assert_eq!(o.result.expect("delivered").text(), "Ok: queued as ABC123");
        assert!(o.recipients.iter().all(|r| r.accepted()));
        assert!(t.s.is_idle());
    }

    #[test]
    fn without_pipelining_one_command_per_reply() {
        let mut t = Script::plain();
        t.handshake(&["SIZE"]);
        t.s.send(tx(&["a@example.net", "b@example.net"])).expect("queued");
        t.client_wrote(b"MAIL FROM:<alerts@example.com> SIZE=23\r\n");
        t.server(b"250 ok\r\n");
        t.client_wrote(b"RCPT TO:<a@example.net>\r\n");
        t.server(b"250 ok\r\n");
        t.client_wrote(b"RCPT TO:<b@example.net>\r\n");
        t.server(b"250 ok\r\n");
        t.client_wrote(b"DATA\r\n");
        t.server(b"354 go\r\n");
        t.client_wrote(b"Subject: test\r\n\r\nbody\r\n.\r\n");
        t.server(b"250 queued\r\n");
        assert!(t.outcome().result.is_ok());
    }

    #[test]
    fn partial_acceptance_delivers_to_the_accepted() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        t.s.send(tx(&["good@example.net", "bad@example.net"]))
            .expect("queued");
        t.take_output();
        t.server(b"250 ok\r\n250 ok\r\n550 5.1.1 <bad@example.net>: Recipient address rejected: User unknown\r\n354 go\r\n");
        t.take_output();
        t.server(b"250 2.0.0 queued\r\n");
        let o = t.outcome();
        assert!(o.result.is_ok());
        assert!(o.recipients[0].accepted());
        assert!(!o.recipients[1].accepted());
        assert_eq!(
            o.recipients[1].reply.as_ref().map(|r| r.code().value()),
            Some(550)
        );
    }

    #[test]
    fn all_recipients_required_resets_on_a_refusal() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        let mut x = tx(&["good@example.net", "bad@example.net"]);
        x.require_all_recipients = true;
        t.s.send(x).expect("queued");
        // DATA is held back until every RCPT is answered.
        t.client_wrote(
            b"MAIL FROM:<alerts@example.com>\r\nRCPT TO:<good@example.net>\r\nRCPT TO:<bad@example.net>\r\n",
        );
        t.server(b"250 ok\r\n250 ok\r\n450 4.2.0 mailbox busy\r\n");
        t.client_wrote(b"RSET\r\n");
        let o = t.outcome();
        let e = o.result.map_err(Error::from).expect_err("refused");
        assert_eq!(e.stage(), Some(Stage::Rcpt));
        assert!(e.is_transient(), "every refusal was 4xx");
        t.server(b"250 2.0.0 reset\r\n");
        assert!(t.s.is_idle());
        // The session is still usable.
        t.s.send(tx(&["good@example.net"])).expect("queued");
        t.client_wrote(b"MAIL FROM:<alerts@example.com>\r\nRCPT TO:<good@example.net>\r\nDATA\r\n");
    }

    #[test]
    fn every_recipient_refused() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        t.s.send(tx(&["x@example.net"])).expect("queued");
        t.take_output();
        t.server(b"250 ok\r\n550 5.7.1 relay denied\r\n554 5.5.1 Error: no valid recipients\r\n");
        t.client_wrote(b"RSET\r\n");
        let e = t.outcome().result.map_err(Error::from).expect_err("refused");
        assert!(e.is_permanent());
        assert_eq!(e.stage(), Some(Stage::Rcpt));
        assert_eq!(
            e.reply().map(|r| r.code().value()),
            Some(550),
            "reports the RCPT reply, not DATA's"
        );
        assert!(e.to_string().contains("relay denied"));
    }

    #[test]
    fn server_accepting_data_without_recipients_gets_an_empty_message() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        t.s.send(tx(&["x@example.net"])).expect("queued");
        t.take_output();
        t.server(b"250 ok\r\n550 no\r\n354 go\r\n");
        t.client_wrote(b".\r\n");
        t.server(b"554 no recipients\r\n");
        assert!(t.outcome().result.is_err());
    }

    #[test]
    fn sender_refused() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        t.s.send(tx(&["x@example.net"])).expect("queued");
        t.take_output();
        t.server(b"553 5.7.1 <alerts@example.com>: Sender address rejected: not owned by user\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n");
        let e = t.outcome().result.expect_err("refused");
        assert_eq!(e.stage(), Some(Stage::Mail));
        assert!(t.s.output().is_empty(), "no RSET after a refused MAIL");
        assert!(t.s.is_idle());

        let mut t = Script::plain();
        t.handshake(&[]);
        t.s.send(tx(&["x@example.net"])).expect("queued");
        t.take_output();
        t.server(b"550 no\r\n");
        assert_eq!(
            t.outcome().result.expect_err("refused").stage(),
            Some(Stage::Mail)
        );
        assert!(t.s.output().is_empty(), "no RCPT after the refused MAIL");
    }

    #[test]
    fn final_reply_refusals() {
        for (reply, transient) in [
            (&b"554 5.7.1 spam\r\n"[..], false),
            (b"451 4.3.0 try later\r\n", true),
        ] {
            let mut t = Script::plain();
            t.handshake(&["PIPELINING"]);
            t.s.send(tx(&["x@example.net"])).expect("queued");
            t.take_output();
            t.server(b"250 ok\r\n250 ok\r\n354 go\r\n");
            t.take_output();
            t.server(reply);
            let e = t.outcome().result.map_err(Error::from).expect_err("refused");
            assert_eq!(e.stage(), Some(Stage::EndOfData));
            assert_eq!(e.is_transient(), transient);
            assert!(t.s.output().is_empty(), "no RSET after the end of data");
        }
    }

    #[test]
    fn next_transaction_follows_the_end_of_data() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        t.s.send(tx(&["a@example.net"])).expect("queued");
        t.s.send(tx(&["b@example.net"])).expect("queued");
        t.client_wrote(b"MAIL FROM:<alerts@example.com>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n");
        t.server(b"250 ok\r\n250 ok\r\n354 go\r\n");
        // Body of the first and commands of the second in one write (RFC 2920 §3.1).
        t.client_wrote(b"Subject: test\r\n\r\nbody\r\n.\r\nMAIL FROM:<alerts@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
        t.server(b"250 first queued\r\n250 ok\r\n250 ok\r\n354 go\r\n");
        assert_eq!(t.outcome().result.expect("first").text(), "first queued");
        t.take_output();
        t.server(b"250 second queued\r\n");
        assert_eq!(t.outcome().result.expect("second").text(), "second queued");
    }

    #[test]
    fn bdat_when_chunking_is_offered() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING", "CHUNKING"]);
        t.s.send(Transaction::new(
            envelope(&["a@example.net"]),
            &b"Subject: x\n\n.dot\n"[..],
        ))
        .expect("queued");
        t.s.send(tx(&["b@example.net"])).expect("queued");
        t.client_wrote(b"MAIL FROM:<alerts@example.com>\r\nRCPT TO:<a@example.net>\r\nBDAT 20 LAST\r\nSubject: x\r\n\r\n.dot\r\n");
        assert_eq!(t.s.phase(), Phase::Command);
        t.server(b"250 ok\r\n250 ok\r\n");
        assert_eq!(t.s.phase(), Phase::FinalReply);
        assert!(
            t.s.output().is_empty(),
            "the next MAIL waits for the BDAT verdict"
        );
        t.server(b"250 2.0.0 queued\r\n");
        assert!(t.outcome().result.is_ok());
        t.client_wrote(b"MAIL FROM:<alerts@example.com>\r\nRCPT TO:<b@example.net>\r\nBDAT 23 LAST\r\nSubject: test\r\n\r\nbody\r\n");
    }

    #[test]
    fn bdat_refused_is_followed_by_rset() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING", "CHUNKING"]);
        t.s.send(tx(&["a@example.net"])).expect("queued");
        t.take_output();
        t.server(b"250 ok\r\n250 ok\r\n552 5.3.4 too big\r\n");
        assert_eq!(
            t.outcome().result.expect_err("refused").stage(),
            Some(Stage::EndOfData)
        );
        t.client_wrote(b"RSET\r\n");
    }

    #[test]
    fn size_is_declared_and_enforced() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING", "SIZE 10"]);
        let e =
            t.s.send(tx(&["a@example.net"]))
                .map_err(Error::from)
                .expect_err("too big");
        assert!(e.is_unsupported() && e.is_permanent());
        assert!(e.to_string().contains("at most 10"));
        assert!(t.s.output().is_empty());
        assert!(t.s.is_idle());
    }

    #[test]
    fn smtputf8_and_8bitmime_are_added_when_needed() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING", "SMTPUTF8", "8BITMIME"]);
        t.s.send(Transaction::new(
            envelope(&["δοκιμή@example.net"]),
            "Subject: ü\r\n\r\nü\r\n".as_bytes(),
        ))
        .expect("ok");
        t.client_wrote("MAIL FROM:<alerts@example.com> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<δοκιμή@example.net>\r\nDATA\r\n".as_bytes());

        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        let e =
            t.s.send(Transaction::new(envelope(&["δοκιμή@example.net"]), &b"x"[..]))
                .map_err(Error::from)
                .expect_err("no SMTPUTF8");
        assert!(e.is_unsupported() && e.to_string().contains("SMTPUTF8"));
        let e =
            t.s.send(Transaction::new(envelope(&["a@example.net"]), "ü".as_bytes()))
                .map_err(Error::from)
                .expect_err("no 8BITMIME");
        assert!(e.is_unsupported() && e.to_string().contains("8BITMIME"));
        assert!(t.s.output().is_empty());
    }

    #[test]
    fn dsn_parameters_only_when_offered() {
        let mut env = envelope(&["a@example.net"]);
        *env.params_mut() = MailParams::default()
            .with_ret(DsnReturn::Headers)
            .with_envid("id1");
        env.recipients_mut()[0].params = RcptParams::default()
            .with_notify(Notify::Never)
            .with_orcpt("a@example.net");
        let mut t = Script::plain();
        t.handshake(&["PIPELINING", "DSN"]);
        t.s.send(Transaction::new(env.clone(), &b"x"[..])).expect("ok");
        t.client_wrote(b"MAIL FROM:<alerts@example.com> RET=HDRS ENVID=id1\r\nRCPT TO:<a@example.net> NOTIFY=NEVER ORCPT=rfc822;a@example.net\r\nDATA\r\n");
        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        t.s.send(Transaction::new(env, &b"x"[..])).expect("ok");
        t.client_wrote(b"MAIL FROM:<alerts@example.com>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n");
    }

    #[test]
    fn injection_in_the_envelope_writes_nothing() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        // Addresses that would inject cannot even be made, nor can an
        // envelope without recipients.
        for text in [
            "a@example.net\r\nRSET",
            "\"x> NOTIFY=NEVER\"@example.net",
            "a@b.example>SIZE=1",
        ] {
            for policy in [AddressPolicy::Strict, AddressPolicy::Lenient] {
                assert!(Address::parse(text, policy).is_err(), "{text:?}");
            }
        }
        assert!(Envelope::new(Some(addr("a@example.net")), vec![]).is_err());
        assert!(Envelope::new(None, vec![]).is_err());
        // What the types leave open (free-form DSN values) is still refused
        // before anything is written.
        let mut envid = envelope(&["ok@example.net"]);
        envid.params_mut().envid = Some("x\r\nRSET".into());
        let mut orcpt = envelope(&["ok@example.net"]);
        orcpt.recipients_mut()[0].params.orcpt = Some("x\0y".into());
        for env in [envid, orcpt] {
            let e =
                t.s.send(Transaction::new(env, &b"x"[..]))
                    .map_err(Error::from)
                    .expect_err("refused");
            assert!(e.is_config() && e.is_permanent(), "{e}");
            assert!(t.s.output().is_empty());
        }
        assert!(t.s.is_idle());
    }
}

mod failures {
    use super::*;

    #[test]
    fn service_closing_mid_transaction_fails_everything_in_flight() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        t.s.send(tx(&["a@example.net"])).expect("queued");
        t.take_output();
        let e = t.server_err(b"250 ok\r\n421 4.4.2 timeout exceeded\r\n");
        assert!(e.is_transient());
        assert_eq!(e.stage(), Some(Stage::Rcpt));
        let o = t.outcome();
        assert!(!o.body_sent);
        let e = o.result.map_err(Error::from).expect_err("failed");
        assert!(e.is_transient() && !e.body_was_sent());
        assert!(t.s.is_closed());
    }

    #[test]
    fn lost_after_the_body_is_marked_uncertain() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        t.s.send(tx(&["a@example.net"])).expect("queued");
        t.take_output();
        t.server(b"250 ok\r\n250 ok\r\n354 go\r\n");
        t.take_output();
        let e = t.s.receive_eof().map_err(Error::from).expect_err("closed");
        assert!(e.is_closed());
        assert_eq!(e.stage(), Some(Stage::EndOfData));
        let o = t.outcome();
        assert!(o.body_sent, "the server may have accepted it");
        let e = o.result.map_err(Error::from).expect_err("failed");
        assert!(e.is_closed() && e.stage() == Some(Stage::EndOfData));
    }

    #[test]
    fn shell_timeout_fails_with_the_stage() {
        let mut t = Script::plain();
        t.handshake(&["PIPELINING"]);
        t.s.send(tx(&["a@example.net"])).expect("queued");
        t.take_output();
        assert_eq!(t.s.current_stage(), Some(Stage::Mail));
        let e = Error::from(t.s.timed_out());
        assert!(e.is_timeout() && e.is_transient());
        assert_eq!(e.stage(), Some(Stage::Mail));
        assert!(t
            .outcome()
            .result
            .map_err(Error::from)
            .expect_err("failed")
            .is_timeout());
        assert!(t.s.is_closed());
        assert!(t.s.noop().is_err());
    }

    #[test]
    fn greeting_timeout_hints_at_implicit_tls() {
        let mut t = Script::plain();
        let e = Error::from(t.s.timed_out());
        assert_eq!(e.stage(), Some(Stage::Greeting));
        assert!(e.hint().is_some_and(|h| h.contains("465")));
    }

    #[test]
    fn io_errors() {
        let mut t = Script::plain();
        t.handshake(&[]);
        let e = Error::from(t.s.io_failed(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert!(e.is_closed() && e.is_transient());
        let mut t = Script::plain();
        let e = Error::from(t.s.io_failed(std::io::Error::other("boom")));
        assert!(e.is_io() && e.to_string().contains("boom"));
        // The first failure is kept.
        assert!(Error::from(t.s.timed_out()).is_io());
    }
}

mod lifecycle {
    use super::*;

    #[test]
    fn noop_and_quit() {
        let mut t = Script::plain();
        t.handshake(&[]);
        t.s.noop().expect("noop");
        t.client_wrote(b"NOOP\r\n");
        assert_eq!(t.s.phase(), Phase::Command);
        t.server(b"250 2.0.0 Ok\r\n");
        assert!(matches!(t.events().as_slice(), [Event::Noop]));
        t.s.quit().expect("quit");
        t.client_wrote(b"QUIT\r\n");
        assert_eq!(t.s.phase(), Phase::Quit);
        t.server(b"221 2.0.0 Bye\r\n");
        assert!(matches!(t.events().as_slice(), [Event::Closed]));
        assert!(t.s.is_closed());
        assert!(t.s.send(tx(&["a@example.net"])).is_err());
    }

    #[test]
    fn eof_after_quit_is_a_clean_close() {
        let mut t = Script::plain();
        t.handshake(&[]);
        t.s.quit().expect("quit");
        t.take_output();
        t.s.receive_eof().expect("clean");
        assert!(matches!(t.events().as_slice(), [Event::Closed]));
    }

    #[test]
    fn failed_noop_breaks_the_session() {
        let mut t = Script::plain();
        t.handshake(&[]);
        t.s.noop().expect("noop");
        t.take_output();
        assert!(t.s.receive(b"421 4.4.2 idle too long\r\n").is_err());
        assert!(t.s.is_closed());
    }
}
