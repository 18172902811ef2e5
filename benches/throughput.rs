//! End-to-end throughput: N messages of about 2 KB through relaymail's
//! `Mailer` and through lettre's pooled `AsyncSmtpTransport`, against the same
//! fast SMTP sink, with K = 1, 4 and 16 connections; then both again through a
//! proxy that adds a fixed round-trip time, to show what pipelining buys.
//!
//! The sink and the proxy run in a child process (this same binary with
//! `--serve`), so the CPU time measured here (from /proc/self/stat) is the
//! client's alone.
//!
//! Run: `cargo bench --bench throughput` (add `-- --quick` for a short run,
//! `-- --no-lettre` to skip lettre, which takes minutes).
//! Prints a Markdown table.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use relaymail::{Envelope, Mailer, Message, RetryPolicy, SmtpSettings, TlsMode};

const SIZE: usize = 2048;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve") {
        let rtt_ms: f64 = args
            .iter()
            .position(|a| a == "--rtt-ms")
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(2.4);
        serve(Duration::from_secs_f64(rtt_ms / 1000.0));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    // Only relaymail (lettre takes minutes: about 40 ms per message).
    let no_lettre = args.iter().any(|a| a == "--no-lettre");
    let n = if quick { 2_000 } else { 20_000 };
    let n_latency = if quick { 500 } else { 4_000 };
    let rtt_ms = 2.4;

    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--serve", "--rtt-ms", &rtt_ms.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the sink process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ports");
    let ports: Vec<u16> = line
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().expect("port"))
        .collect();
    let (sink, proxy) = (ports[0], ports[1]);

    println!(
        "round trip through the delay proxy (set to {rtt_ms} ms): {:.3} ms measured over 200 NOOPs\n",
        measured_rtt(proxy).as_secs_f64() * 1000.0
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let messages: Vec<Arc<[u8]>> = (0..n.max(n_latency)).map(message).collect();

    let mut runs = vec![
        ("loopback", sink, 1, n),
        ("loopback", sink, 4, n),
        ("loopback", sink, 16, n),
    ];
    runs.push(("+2.4 ms RTT", proxy, 1, n_latency / 4));
    runs.push(("+2.4 ms RTT", proxy, 4, n_latency));
    println!("| path | K | messages | relaymail msgs/s | lettre msgs/s | ratio | relaymail CPU ms / 10k msgs | lettre CPU ms / 10k msgs |");
    println!("|---|---|---|---|---|---|---|---|");
    // All relaymail runs first (a few seconds), then lettre's (minutes), so
    // that the quick runs see the quietest machine.
    let ours: Vec<Run> = runs
        .iter()
        .map(|&(_, port, k, count)| rt.block_on(relaymail_run(port, k, &messages[..count])))
        .collect();
    let theirs: Vec<Run> = runs
        .iter()
        .map(|&(_, port, k, count)| {
            if no_lettre {
                Run {
                    messages: 0,
                    wall: Duration::from_secs(1),
                    cpu: Duration::ZERO,
                }
            } else {
                rt.block_on(lettre_run(port, k, &messages[..count]))
            }
        })
        .collect();
    for ((&(path, _, k, count), ours), theirs) in runs.iter().zip(&ours).zip(&theirs) {
        println!(
            "| {path} | {k} | {count} | {:.0} | {:.0} | {:.1}× | {:.0} | {:.0} |",
            ours.rate(),
            theirs.rate(),
            ours.rate() / theirs.rate(),
            ours.cpu_per_10k(),
            theirs.cpu_per_10k(),
        );
    }
    drop(child.stdin.take());
    let _ = child.wait();
}

/// The real round trip through the proxy: NOOP and its reply, one at a time.
fn measured_rtt(port: u16) -> Duration {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("proxy");
    conn.set_nodelay(true).expect("nodelay");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("greeting");
    let start = Instant::now();
    for _ in 0..200 {
        conn.write_all(b"NOOP\r\n").expect("write");
        line.clear();
        reader.read_line(&mut line).expect("reply");
    }
    let rtt = start.elapsed() / 200;
    let _ = conn.write_all(b"QUIT\r\n");
    rtt
}

struct Run {
    messages: usize,
    wall: Duration,
    cpu: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.wall.as_secs_f64()
    }

    fn cpu_per_10k(&self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 * 10_000.0 / self.messages as f64
    }
}

/// User + system CPU time of this process (Linux).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after the ")" that ends field 2.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn message(i: usize) -> Arc<[u8]> {
    let mut m = format!(
        "From: Bench <bench@example.com>\r\nTo: user{i}@example.net\r\nSubject: notification {i}\r\n\
         Message-ID: <bench-{i}@example.com>\r\n\r\n"
    )
    .into_bytes();
    let line = b"Your report is ready. Lorem ipsum dolor sit amet, consectetur elit.\r\n";
    while m.len() + line.len() <= SIZE {
        m.extend_from_slice(line);
    }
    m.into()
}

async fn relaymail_run(port: u16, k: usize, messages: &[Arc<[u8]>]) -> Run {
    let settings = SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(port))
        .tls(TlsMode::None)
        .sender("bench@example.com")
        .helo_name("bench.example.com")
        // lettre has no such limit; compare like with like.
        .max_deliveries_per_connection(100_000)
        .build()
        .expect("settings");
    let mailer = Mailer::builder(settings)
        .max_connections(k)
        .queue_capacity(4096)
        .retry(RetryPolicy::never())
        .build()
        .expect("mailer");
    let (cpu0, start) = (cpu_time(), Instant::now());
    let mut pending = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let envelope = Envelope::new(
            Some("bench@example.com".parse().expect("address")),
            vec![format!("user{i}@example.net").parse().expect("address")],
        )
        .expect("envelope");
        pending.push(
            mailer
                .submit(Message::new(envelope, m.clone()))
                .await
                .expect("queued"),
        );
    }
    for p in pending {
        p.await.expect("delivered");
    }
    let run = Run {
        messages: messages.len(),
        wall: start.elapsed(),
        cpu: cpu_time() - cpu0,
    };
    mailer.shutdown(Duration::from_secs(5)).await;
    run
}

async fn lettre_run(port: u16, k: usize, messages: &[Arc<[u8]>]) -> Run {
    let transport: AsyncSmtpTransport<Tokio1Executor> =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(port)
            .hello_name(ClientId::Domain("bench.example.com".into()))
            .pool_config(PoolConfig::new().max_size(k as u32))
            .build();
    let (cpu0, start) = (cpu_time(), Instant::now());
    let next = Arc::new(AtomicU64::new(0));
    let messages: Arc<Vec<Arc<[u8]>>> = Arc::new(messages.to_vec());
    // K senders, so that the pool never needs more than K connections.
    let mut tasks = Vec::new();
    for _ in 0..k {
        let (transport, next, messages) = (transport.clone(), next.clone(), messages.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(m) = messages.get(i) else { break };
                let envelope = lettre::address::Envelope::new(
                    Some("bench@example.com".parse().expect("from")),
                    vec![format!("user{i}@example.net").parse().expect("to")],
                )
                .expect("envelope");
                transport.send_raw(&envelope, m).await.expect("lettre delivered");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    Run {
        messages: messages.len(),
        wall: start.elapsed(),
        cpu: cpu_time() - cpu0,
    }
}

// ---------------------------------------------------------------- the server side

/// Runs the sink and the delay proxy until stdin closes; prints their ports.
fn serve(rtt: Duration) {
    let sink = TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let proxy = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let sink_port = sink.local_addr().expect("addr").port();
    println!("ports {} {}", sink_port, proxy.local_addr().expect("addr").port());
    std::io::stdout().flush().expect("flush");
    std::thread::spawn(move || {
        for conn in sink.incoming().flatten() {
            std::thread::spawn(move || sink_session(conn));
        }
    });
    std::thread::spawn(move || {
        for client in proxy.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", sink_port)) else {
                continue;
            };
            delay_pipe(&client, &server, rtt / 2);
            delay_pipe(&server, &client, rtt / 2);
        }
    });
    // Until the parent goes away.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// Forwards `from` → `to`, each chunk delivered `delay` after it was read
/// (propagation delay without a bandwidth limit). OS threads, not tokio
/// timers: those tick in whole milliseconds.
fn delay_pipe(from: &TcpStream, to: &TcpStream, delay: Duration) {
    let (mut from, mut to) = (from.try_clone().expect("clone"), to.try_clone().expect("clone"));
    let _ = from.set_nodelay(true);
    let _ = to.set_nodelay(true);
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((at, bytes)) = rx.recv() {
            // Sleep until just before the deadline, then spin: thread wake-up
            // latency would otherwise add ~0.1 ms per hop.
            let now = Instant::now();
            if at > now + Duration::from_micros(60) {
                std::thread::sleep(at - now - Duration::from_micros(60));
            }
            while Instant::now() < at {
                std::hint::spin_loop();
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// A minimal, fast SMTP sink: PIPELINING, CHUNKING, 8BITMIME, SIZE; answers
/// everything it can in one write per read.
fn sink_session(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    if conn.write_all(b"220 sink.example ESMTP\r\n").is_err() {
        return;
    }
    enum State {
        Command,
        /// In a DATA body; `fresh`: nothing of it read yet.
        Data {
            fresh: bool,
        },
        Bdat(usize, bool),
    }
    let mut state = State::Command;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0; 64 * 1024];
    let mut out = Vec::with_capacity(4096);
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        loop {
            match state {
                State::Command => {
                    let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&buf[pos..pos + eol]).to_ascii_uppercase();
                    pos += eol + 2;
                    let verb = line.split(' ').next().unwrap_or("");
                    match verb {
                        "EHLO" => out.extend_from_slice(
                            b"250-sink.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250 CHUNKING\r\n",
                        ),
                        "DATA" => {
                            out.extend_from_slice(b"354 go ahead\r\n");
                            state = State::Data { fresh: true };
                        }
                        "BDAT" => {
                            let mut words = line.split(' ').skip(1);
                            let size = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                            state = State::Bdat(size, words.next() == Some("LAST"));
                        }
                        "QUIT" => {
                            out.extend_from_slice(b"221 bye\r\n");
                            let _ = conn.write_all(&out);
                            return;
                        }
                        _ => out.extend_from_slice(b"250 2.0.0 ok\r\n"),
                    }
                }
                State::Data { fresh } => {
                    // The terminator: ".\r\n" at the very start or "\r\n.\r\n".
                    let rest = &buf[pos..];
                    if fresh && rest.len() < 3 {
                        break;
                    }
                    let end = if fresh && rest.starts_with(b".\r\n") {
                        Some(3)
                    } else {
                        rest.windows(5).position(|w| w == b"\r\n.\r\n").map(|p| p + 5)
                    };
                    let Some(end) = end else {
                        // Keep the last 4 bytes: a terminator may straddle reads.
                        pos = buf.len().saturating_sub(4).max(pos);
                        state = State::Data { fresh: false };
                        break;
                    };
                    pos += end;
                    out.extend_from_slice(b"250 2.0.0 ok: queued\r\n");
                    state = State::Command;
                }
                State::Bdat(size, last) => {
                    if buf.len() - pos < size {
                        break;
                    }
                    pos += size;
                    out.extend_from_slice(if last {
                        b"250 2.0.0 ok: queued\r\n"
                    } else {
                        b"250 2.0.0 chunk ok\r\n"
                    });
                    state = State::Command;
                }
            }
        }
        buf.drain(..pos);
        if !out.is_empty() {
            if conn.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
    }
}
