//! The command-line example (`examples/relaymail.rs`) run as a program:
//! help, usage errors and their exit status, `send`/`bulk`/`verify` against
//! the in-process test server, `RELAYMAIL_URL`, and `outbox` on a spool in
//! a temporary directory. No password ever shows in its output.
//!
//! The example is built once (by `cargo build --example relaymail`, with
//! this test's features and profile, which finds it up to date after
//! `cargo test`) and its path taken from cargo's JSON messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use relaymail::outbox::{Area, DirSpool, DraftId};
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Envelope, Message};

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "hunter2-Secret";

/// The example's executable, built on first use.
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut features = vec!["test-server"];
        if cfg!(feature = "serde") {
            features.push("serde");
        }
        if cfg!(feature = "tracing") {
            features.push("tracing");
        }
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args([
                "build",
                "--example",
                "relaymail",
                "--message-format=json-render-diagnostics",
            ])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--features")
            .arg(features.join(","));
        if !cfg!(debug_assertions) {
            cargo.arg("--release");
        }
        // Not the variables cargo sets for this test: build scripts that
        // track them (ring's: CARGO_MANIFEST_DIR) would rebuild half the tree.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_MANIFEST_")
                || key.starts_with("CARGO_BIN_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&&*key)
            {
                cargo.env_remove(&*key);
            }
        }
        let out = cargo.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build --example relaymail failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"kind\":[\"example\"]")
            })
            .filter(|l| l.contains("\"name\":\"relaymail\""))
            .find_map(|l| {
                let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
                let end = start + l[start..].find('"')?;
                Some(PathBuf::from(l[start..end].replace("\\\\", "\\")))
            })
            .expect("cargo named no executable for the example")
    })
}

/// Runs the example to completion with `args` and `env` (and none of the
/// caller's RELAYMAIL_* variables), stdin closed.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_remove("RELAYMAIL_PASSWORD")
        .env_remove("RELAYMAIL_URL")
        .env_remove("RELAYMAIL_SPOOL")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the example")
}

/// `run` off the async threads (the test server runs on them meanwhile).
async fn run_async(args: Vec<String>, env: Vec<(String, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&args, &env)
    })
    .await
    .expect("join")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "the password was printed:\n{stdout}\n{stderr}"
    );
}

/// The only envelope these tests build.
fn message(from: &str, to: &str) -> Message {
    let address = |a: &str| a.parse::<relaymail::Address>().expect("address");
    let envelope = Envelope::new(Some(address(from)), vec![address(to)]).expect("envelope");
    Message::new(envelope, b"Subject: queued\r\n\r\nbody\r\n".to_vec())
}

#[test]
fn help_of_each_subcommand_lists_its_flags() {
    let env = [
        ("RELAYMAIL_PASSWORD", SECRET),
        ("RELAYMAIL_URL", "smtps://me:hunter2-Secret@smtp.example.com"),
    ];
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "verify",
                "send",
                "bulk",
                "outbox",
                "RELAYMAIL_PASSWORD",
                "RELAYMAIL_URL",
            ],
        ),
        (
            &["verify", "--help"],
            &[
                "--url",
                "--host",
                "--port",
                "--tls",
                "--user",
                "--helo",
                "--ca-file",
                "--timeout",
                "--allow-plaintext-auth",
                "--json",
                "RELAYMAIL_URL",
            ],
        ),
        (
            &["send", "--help"],
            &[
                "--host",
                "--from",
                "--to",
                "--subject",
                "--body",
                "--eml",
                "--json",
                "--count",
                "--connections",
                "--max-per-connection",
                "--size",
            ],
        ),
        (
            &["bulk", "--help"],
            &[
                "--host",
                "--from",
                "--to",
                "--count",
                "--connections",
                "--max-per-connection",
                "--size",
                "--json",
            ],
        ),
        (&["outbox", "--help"], &["list", "inspect", "retry", "delete"]),
        (
            &["outbox", "list", "--help"],
            &["--spool", "--area", "--json", "RELAYMAIL_SPOOL"],
        ),
        (
            &["outbox", "inspect", "--help"],
            &["--spool", "<ID>", "--area", "--json"],
        ),
        (
            &["outbox", "retry", "--help"],
            &["--spool", "[ID]", "--all", "--area", "--json"],
        ),
        (
            &["outbox", "delete", "--help"],
            &["--spool", "<ID>", "--area", "--json"],
        ),
    ];
    for (args, flags) in cases {
        let out = run(args, &env);
        assert_exit(&out, 0);
        let (help, _) = text(&out);
        for flag in *flags {
            assert!(help.contains(flag), "{args:?}: no {flag} in\n{help}");
        }
        assert!(!help.contains("--password"), "{args:?}: --password in\n{help}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (&["frobnicate"], "frobnicate"),
        (&["verify"], "--host"),
        (&["verify", "--host", "h", "--bogus"], "--bogus"),
        (&["verify", "--host", "h", "--port", "x"], "--port"),
        (&["verify", "--host", "h", "--tls", "tlsv9"], "use none, starttls"),
        (&["verify", "--host", "h", "--count", "3"], "--count"),
        (&["send", "--host", "h", "--from", "a@example.com"], "--to"),
        (&["send", "--host", "h", "--to", "b@example.com"], "--from"),
        (
            &[
                "send", "--host", "h", "--from", "a@x.y", "--to", "b@x.y", "--body", "b", "--eml", "f",
            ],
            "--eml",
        ),
        (
            &[
                "send", "--host", "h", "--from", "a@x.y", "--to", "b@x.y", "--count", "3", "--eml", "f",
            ],
            "--eml",
        ),
        (
            &[
                "send", "--host", "h", "--from", "a@x.y", "--to", "b@x.y", "--size", "100",
            ],
            "--count",
        ),
        (
            &[
                "send", "--host", "h", "--from", "a@x.y", "--to", "b@x.y", "--count", "0",
            ],
            "positive",
        ),
        (
            &["bulk", "--host", "h", "--from", "a@x.y", "--to", "b@x.y"],
            "--count",
        ),
        (&["verify", "--host", "h", "--user", "me"], "RELAYMAIL_PASSWORD"),
        (
            &["verify", "--host", "h", "--ca-file", "/nonexistent/ca.pem"],
            "--ca-file",
        ),
        (
            &["verify", "--host", "h", "--password", SECRET],
            "RELAYMAIL_PASSWORD",
        ),
        (
            &["verify", "--host", "h", "--password=hunter2-Secret"],
            "RELAYMAIL_PASSWORD",
        ),
        (
            &["send", "--password", SECRET, "--host", "h"],
            "RELAYMAIL_PASSWORD",
        ),
        (
            &["verify", "--url", "smtp://me:hunter2-Secret@h"],
            "RELAYMAIL_URL",
        ),
        (&["verify", "--url", "ftp://h"], "smtp"),
        (&["outbox", "list"], "--spool"),
        (
            &["outbox", "list", "--spool", "/nonexistent/spool"],
            "not an outbox spool",
        ),
        (&["outbox", "retry", "--spool", "/nonexistent/spool"], "--all"),
    ];
    for (args, needle) in cases {
        let out = run(args, &[]);
        assert_exit(&out, 2);
        let (_, stderr) = text(&out);
        assert!(stderr.contains(needle), "{args:?}: no {needle:?} in\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_verify_and_bulk_against_the_test_server() {
    let server = TestServer::start(
        ServerConfig::new()
            .auth_mechanisms(&["PLAIN"])
            .user("me", SECRET)
            .reject_recipient("nobody@example.net", "550 5.1.1 no such user"),
    )
    .await
    .expect("server");
    let port = server.port().to_string();
    let conn = [
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--tls",
        "none",
        "--timeout",
        "5",
    ];

    // send --json, one recipient refused: still exit 0, both listed.
    let mut args = strings(&["send"]);
    args.extend(strings(&conn));
    args.extend(strings(&[
        "--from",
        "alerts@example.com",
        "--to",
        "ops@example.net",
        "--to",
        "nobody@example.net",
        "--subject",
        "CLI test",
        "--body",
        "hello from the CLI",
        "--json",
    ]));
    let out = run_async(args, vec![]).await;
    assert_exit(&out, 0);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
    assert!(stdout.contains("\"accepted\":[\"ops@example.net\"]"), "{stdout}");
    assert!(
        stdout.contains("\"refused\":[\"nobody@example.net: 550"),
        "{stdout}"
    );
    let got = server.wait_for_messages(1, WAIT).await.expect("message");
    assert_eq!(got[0].mail_from, "alerts@example.com");
    assert_eq!(got[0].rcpt_to, ["ops@example.net"]);
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(
        data.contains("Subject: CLI test") && data.contains("hello from the CLI"),
        "{data}"
    );

    // RELAYMAIL_URL gives host, port, TLS mode, sender and user; the
    // password comes from RELAYMAIL_PASSWORD.
    let url = format!("smtp://me@127.0.0.1:{port}?tls=none&from=url%40example.com");
    let env = vec![
        ("RELAYMAIL_URL".to_owned(), url.clone()),
        ("RELAYMAIL_PASSWORD".to_owned(), SECRET.to_owned()),
    ];
    let args = strings(&[
        "send",
        "--allow-plaintext-auth",
        "--to",
        "url@example.net",
        "--json",
    ]);
    let out = run_async(args, env).await;
    assert_exit(&out, 0);
    assert!(text(&out).0.contains("\"auth\":\"PLAIN\""), "{:?}", text(&out));
    let got = server.wait_for_messages(2, WAIT).await.expect("message");
    assert_eq!(got[1].mail_from, "url@example.com");
    assert_eq!(got[1].rcpt_to, ["url@example.net"]);
    assert_eq!(got[1].auth_user.as_deref(), Some("me"));

    // The whole URL in RELAYMAIL_URL, password included; --from overrides from=.
    let full = format!("smtp://me:{SECRET}@127.0.0.1:{port}?tls=none&from=url%40example.com");
    let args = strings(&[
        "send",
        "--allow-plaintext-auth",
        "--from",
        "flag@example.com",
        "--to",
        "x@example.net",
    ]);
    let out = run_async(args, vec![("RELAYMAIL_URL".to_owned(), full)]).await;
    assert_exit(&out, 0);
    let got = server.wait_for_messages(3, WAIT).await.expect("message");
    assert_eq!(got[2].mail_from, "flag@example.com");
    assert_eq!(got[2].auth_user.as_deref(), Some("me"));

    // --url on the command line (no password there); --port overrides it.
    let url = "smtp://127.0.0.1:1?tls=none&from=cmd%40example.com".to_owned();
    let args = strings(&[
        "send",
        "--url",
        &url,
        "--port",
        &port,
        "--to",
        "y@example.net",
        "--json",
    ]);
    let out = run_async(args, vec![]).await;
    assert_exit(&out, 0);
    let got = server.wait_for_messages(4, WAIT).await.expect("message");
    assert_eq!(got[3].mail_from, "cmd@example.com");
    assert_eq!(got[3].auth_user, None);

    // The URL's credentials are for its host only: --host naming another
    // drops them.
    let other = format!("smtp://me:{SECRET}@localhost:{port}?tls=none&from=url%40example.com");
    let args = strings(&[
        "send",
        "--host",
        "127.0.0.1",
        "--allow-plaintext-auth",
        "--to",
        "z@example.net",
    ]);
    let out = run_async(args, vec![("RELAYMAIL_URL".to_owned(), other)]).await;
    assert_exit(&out, 0);
    let got = server.wait_for_messages(5, WAIT).await.expect("message");
    assert_eq!(got[4].rcpt_to, ["z@example.net"]);
    assert_eq!(got[4].auth_user, None);

    // verify with a wrong password: exit 1, the stage in JSON, no password.
    let mut args = strings(&["verify", "--user", "me", "--allow-plaintext-auth", "--json"]);
    args.extend(strings(&conn));
    let wrong = vec![("RELAYMAIL_PASSWORD".to_owned(), format!("{SECRET}-wrong"))];
    let out = run_async(args, wrong).await;
    assert_exit(&out, 1);
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("\"stage\":\"auth\""), "{stdout}");
    assert!(stderr.starts_with("relaymail: auth: "), "{stderr}");

    // verify --json, right password.
    let mut args = strings(&["verify", "--user", "me", "--allow-plaintext-auth", "--json"]);
    args.extend(strings(&conn));
    let out = run_async(args, vec![("RELAYMAIL_PASSWORD".to_owned(), SECRET.to_owned())]).await;
    assert_exit(&out, 0);
    assert!(
        text(&out).0.contains("\"capabilities\":[\"PIPELINING\""),
        "{:?}",
        text(&out)
    );

    // Flags as the hand-written parser took them: the last of a repeated
    // flag counts, a value may start with '-', and verify accepts (and
    // ignores) the message flags of send.
    let args = strings(&[
        "verify",
        "--host",
        "192.0.2.1",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--tls",
        "none",
        "--from",
        "a@example.com",
        "--to",
        "b@example.net",
        "--subject",
        "-s",
        "--body",
        "--json",
        "--eml",
        "/nonexistent.eml",
        "--json",
        "--json",
    ]);
    let out = run_async(args, vec![]).await;
    assert_exit(&out, 0);
    assert!(text(&out).0.contains("\"ok\":true"), "{:?}", text(&out));

    // bulk, and the same through `send --count`; stderr is not a terminal:
    // no progress bar.
    for sub in ["bulk", "send"] {
        let mut args = strings(&[
            sub,
            "--from",
            "bulk@example.com",
            "--to",
            "many@example.net",
            "--count",
            "5",
            "--connections",
            "2",
            "--max-per-connection",
            "2",
            "--size",
            "600",
            "--json",
        ]);
        args.extend(strings(&conn));
        let out = run_async(args, vec![]).await;
        assert_exit(&out, 0);
        let (stdout, stderr) = text(&out);
        assert!(stdout.contains("\"sent\":5,\"failed\":0"), "{sub}: {stdout}");
        assert!(stdout.contains("\"connections_opened\":3"), "{sub}: {stdout}");
        assert!(stderr.is_empty(), "{sub}: {stderr}");
    }
    let got = server.wait_for_messages(15, WAIT).await.expect("bulk messages");
    assert_eq!(
        got.iter().filter(|m| m.mail_from == "bulk@example.com").count(),
        10
    );

    // --eml: the file's bytes, line endings normalised, a lone dot
    // dot-stuffed on the wire; over STARTTLS with --ca-file.
    let tls_server = TestServer::start(ServerConfig::new().starttls(true))
        .await
        .expect("server");
    let dir = spool_dir("eml");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let eml = dir.join("msg.eml");
    std::fs::write(
        &eml,
        "From: a@example.com\nTo: e@example.net\nSubject: eml\n\nfirst\n.\nlast\n",
    )
    .expect("eml");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, tls_server.ca_pem()).expect("ca");
    let tls_port = tls_server.port().to_string();
    let args = vec![
        "send".to_owned(),
        "--host".to_owned(),
        "localhost".to_owned(),
        "--port".to_owned(),
        tls_port,
        "--tls".to_owned(),
        "starttls".to_owned(),
        "--ca-file".to_owned(),
        ca.display().to_string(),
        "--from".to_owned(),
        "a@example.com".to_owned(),
        "--to".to_owned(),
        "e@example.net".to_owned(),
        "--eml".to_owned(),
        eml.display().to_string(),
        "--json".to_owned(),
    ];
    let out = run_async(args, vec![]).await;
    assert_exit(&out, 0);
    assert!(text(&out).0.contains("\"tls\":\"TLSv1"), "{:?}", text(&out));
    let got = tls_server.wait_for_messages(1, WAIT).await.expect("eml message");
    assert_eq!(
        got[0].data,
        b"From: a@example.com\r\nTo: e@example.net\r\nSubject: eml\r\n\r\nfirst\r\n.\r\nlast\r\n"
    );
    assert!(got[0].tls && !got[0].bare_line_endings);
    let _ = std::fs::remove_dir_all(&dir);

    // An address nobody can deliver to is a failed send (exit 1), not a
    // usage error.
    let mut args = strings(&[
        "send",
        "--from",
        "a@example.com",
        "--to",
        "not an address",
        "--json",
    ]);
    args.extend(strings(&conn));
    let out = run_async(args, vec![]).await;
    assert_exit(&out, 1);
    assert!(text(&out).0.contains("\"ok\":false"), "{:?}", text(&out));

    // implicit TLS against a plain SMTP port: exit 1 with a hint.
    let args = strings(&[
        "verify",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--tls",
        "implicit",
        "--timeout",
        "5",
    ]);
    let out = run_async(args, vec![]).await;
    assert_exit(&out, 1);
    assert!(text(&out).1.contains("speaks plain SMTP"), "{:?}", text(&out));

    // a server that is not there: exit 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port().to_string();
    drop(closed);
    let args = strings(&[
        "verify",
        "--host",
        "127.0.0.1",
        "--port",
        &closed_port,
        "--tls",
        "none",
        "--json",
    ]);
    let out = run_async(args, vec![]).await;
    assert_exit(&out, 1);
    assert!(text(&out).0.contains("\"ok\":false"), "{:?}", text(&out));
}

fn spool_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relaymail-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn outbox_list_inspect_retry_delete() {
    let dir = spool_dir("outbox");
    let spool = DirSpool::open(&dir).expect("spool");
    let first = spool
        .enqueue(&message("a@example.com", "one@example.net"))
        .expect("enqueue");
    let second = spool
        .enqueue(&message("a@example.com", "two@example.net"))
        .expect("enqueue");
    spool.fail(&second, "550 5.1.1 no such user").expect("fail");
    let d = dir.to_str().expect("utf-8 path");
    let outbox = |args: &[&str]| {
        let mut all = vec!["outbox"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--spool", d]);
        run(&all, &[])
    };

    let out = outbox(&["list", "--json"]);
    assert_exit(&out, 0);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(&format!("\"id\":\"{first}\",\"area\":\"drafts\"")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("\"id\":\"{second}\",\"area\":\"failed\"")),
        "{stdout}"
    );
    assert!(stdout.contains("\"to\":[\"one@example.net\"]"), "{stdout}");

    let out = outbox(&["list", "--area", "failed"]);
    assert_exit(&out, 0);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(second.as_str()) && !stdout.contains(first.as_str()),
        "{stdout}"
    );
    assert!(stdout.contains("550 5.1.1 no such user"), "{stdout}");

    // The spool also comes from RELAYMAIL_SPOOL.
    let out = run(&["outbox", "list"], &[("RELAYMAIL_SPOOL", d)]);
    assert_exit(&out, 0);
    assert!(text(&out).0.contains(first.as_str()));

    let out = outbox(&["inspect", second.as_str(), "--json"]);
    assert_exit(&out, 0);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("\"area\":\"failed\""), "{stdout}");
    assert!(
        stdout.contains("\"last_error\":\"550 5.1.1 no such user\""),
        "{stdout}"
    );

    // retry one: the failed draft goes back to the drafts.
    let out = outbox(&["retry", second.as_str(), "--json"]);
    assert_exit(&out, 0);
    assert!(
        text(&out).0.contains(&format!("\"retried\":[\"{second}\"]")),
        "{:?}",
        text(&out)
    );
    assert_eq!(
        spool.inspect(Area::Drafts, &second).expect("back in drafts").area,
        Area::Drafts
    );
    assert!(spool.inspect(Area::Failed, &second).is_err());

    // retry --all.
    spool.fail(&first, "554 rejected").expect("fail");
    let out = outbox(&["retry", "--all", "--json"]);
    assert_exit(&out, 0);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(first.as_str()) && stdout.contains(second.as_str()),
        "{stdout}"
    );
    assert!(spool.inspect(Area::Drafts, &first).is_ok());

    // delete.
    let out = outbox(&["delete", first.as_str(), "--json"]);
    assert_exit(&out, 0);
    assert!(text(&out).0.contains(&format!("\"deleted\":\"{first}\"")));
    assert!(spool.inspect(Area::Drafts, &first).is_err());

    // a draft that is not there: exit 1; not an id at all: exit 2.
    let out = outbox(&["inspect", first.as_str(), "--json"]);
    assert_exit(&out, 1);
    assert!(text(&out).0.contains("\"ok\":false"));
    let out = outbox(&["delete", "not-an-id"]);
    assert_exit(&out, 2);
    assert!(text(&out).1.contains("not a draft id"));

    let remaining: Vec<DraftId> = spool
        .list(Area::Drafts, None, 10)
        .expect("list")
        .drafts
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(remaining, [second]);
    let _ = std::fs::remove_dir_all(&dir);
}
