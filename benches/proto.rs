//! Throughput of the sans-IO protocol core, single-threaded, no network:
//! how much client CPU the protocol itself costs per message.
//!
//! Run: `cargo bench --bench proto` (prints one line per measurement);
//! `cargo bench --bench proto -- ehlo` runs only the measurements whose name
//! contains `ehlo`, `--quick` shortens each measurement.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relaymail::proto::data::{BdatEncoder, DataEncoder};
use relaymail::proto::ehlo::Capabilities;
use relaymail::proto::reply::ReplyParser;
use relaymail::proto::session::{Envelope, Event, Session, SessionConfig, Transaction};

/// Runs `f` repeatedly for about `budget`, returns iterations per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..100 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: Example <noreply@example.com>\r\nTo: user@example.net\r\nSubject: Your alert\r\n\r\n"
        .to_vec();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n";
    while m.len() < size {
        m.extend_from_slice(line);
        if m.len().is_multiple_of(7) {
            m.extend_from_slice(b".leading dot\r\n");
        }
    }
    m.truncate(size);
    m
}

fn main() {
    let budget = Duration::from_millis(if std::env::args().any(|a| a == "--quick") {
        200
    } else {
        1500
    });
    // Words that are not flags select measurements by name.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));

    // A hostile EHLO reply: 10,000 distinct AUTH mechanisms (plus repeats in
    // other case) on one line, as a server may send within the reply limits.
    if wanted("ehlo_auth_10000") {
        let mut ehlo = b"250-mx.example.com\r\n250 AUTH".to_vec();
        for i in 0..10_000 {
            ehlo.extend_from_slice(format!(" M{i}").as_bytes());
        }
        ehlo.extend_from_slice(b" m1 m2 m3\r\n");
        let mut parser =
            ReplyParser::with_limits(relaymail::proto::reply::ReplyLimits::new(1 << 20, 1 << 20));
        parser.push(&ehlo);
        let reply = parser.next_reply().expect("parses").expect("reply");
        // One reply at a time (not `rate`'s batches of 100): a quadratic
        // parse takes seconds per reply.
        black_box(Capabilities::from_ehlo(black_box(&reply)));
        let start = Instant::now();
        let mut n = 0u32;
        while n < 3 || start.elapsed() < budget {
            black_box(Capabilities::from_ehlo(black_box(&reply)));
            n += 1;
        }
        let r = f64::from(n) / start.elapsed().as_secs_f64();
        println!(
            "ehlo_auth_10000 parse:      {:>12.1} replies/s  ({:.3} ms per reply)",
            r,
            1e3 / r
        );
    }
    if !wanted("data_encoder bdat_encoder reply_parser session") {
        return;
    }

    let small = message(2048);
    let large = message(1 << 20);

    let mut out = Vec::with_capacity(4 << 20);
    let r = rate(budget, || {
        out.clear();
        DataEncoder::encode_all(black_box(&small), &mut out);
    });
    println!(
        "data_encoder 2 KiB message: {:>12.0} msgs/s  {:>8.1} MiB/s",
        r,
        r * 2048.0 / 1048576.0
    );
    let r = rate(budget, || {
        out.clear();
        DataEncoder::encode_all(black_box(&large), &mut out);
    });
    println!("data_encoder 1 MiB message: {:>12.1} msgs/s  {:>8.1} MiB/s", r, r);
    let r = rate(budget, || {
        out.clear();
        let mut enc = BdatEncoder::new(1 << 20);
        enc.encode(black_box(&large), &mut out);
        enc.finish(&mut out);
    });
    println!("bdat_encoder 1 MiB message: {:>12.1} msgs/s  {:>8.1} MiB/s", r, r);

    let replies = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 4XkLq1Z3Hz\r\n";
    let mut parser = ReplyParser::new();
    let r = rate(budget, || {
        parser.push(black_box(replies));
        while let Ok(Some(reply)) = parser.next_reply() {
            black_box(reply);
        }
    });
    println!("reply_parser (4 replies):   {:>12.0} replies/s", r * 4.0);

    // A whole pipelined transaction through the session: envelope checks,
    // command encoding, reply matching, body encoding, outcome.
    let body: Arc<[u8]> = Arc::from(small.as_slice());
    let mut session = Session::new(SessionConfig::new("client.example.com")).expect("config");
    session.receive(b"220 mx ESMTP\r\n").expect("greeting");
    session.consume_output(session.output().len());
    session
        .receive(b"250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n")
        .expect("ehlo");
    while session.poll_event().is_some() {}
    let envelope = Envelope::new(
        Some("noreply@example.com".parse().expect("address")),
        vec!["user@example.net".parse().expect("address")],
    )
    .expect("envelope");
    let r = rate(budget, || {
        session
            .send(Transaction::new(envelope.clone(), body.clone()))
            .expect("send");
        session.consume_output(session.output().len());
        session
            .receive(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
            .expect("replies");
        session.consume_output(session.output().len());
        session.receive(b"250 2.0.0 Ok: queued\r\n").expect("final");
        while let Some(ev) = session.poll_event() {
            if let Event::Transaction(t) = ev {
                black_box(t.result.expect("delivered"));
            }
        }
    });
    println!(
        "session transaction 2 KiB:  {:>12.0} msgs/s  ({:.2} µs CPU per message)",
        r,
        1e6 / r
    );
}
