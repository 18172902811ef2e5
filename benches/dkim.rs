//! What DKIM signing costs per message (feature `dkim`): rsa-sha256 with a
//! 2048-bit key and ed25519-sha256, relaxed/relaxed, on a 2 KB notification
//! email and on a 100 KB one (the body hash grows with the size, the
//! signature does not). Only `DkimSigner::sign` is timed: wall time with
//! `Instant`, and CPU time of this thread (`/proc/thread-self/schedstat`,
//! nanoseconds; falls back to wall time where it cannot be read). The mailer
//! signs once per message, in the task that hands it over.
//!
//! Run: `cargo bench --bench dkim --features dkim` (add `-- --quick` for a
//! short run). Prints a Markdown table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use relaymail::dkim::{DkimConfig, DkimSigner};
use relaymail::SmtpSettings;

fn signer(key: &str) -> DkimSigner {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .sender("noreply@example.com")
        .dkim(DkimConfig::new("example.com", "mail2024", key))
        .build()
        .expect("settings")
        .dkim()
        .expect("dkim")
        .clone()
}

/// A notification email of about `size` bytes, with the usual fields.
fn message(size: usize) -> Vec<u8> {
    let mut m = String::from(
        "From: Example App <noreply@example.com>\r\nTo: user@example.net\r\nSubject: Reset your password\r\nDate: Tue, 1 Apr 2025 10:00:00 +0000\r\nMessage-ID: <bench.1@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    );
    while m.len() < size {
        m.push_str("Follow the link to choose a new password; it works for one hour.  \r\n");
    }
    m.into_bytes()
}

/// This thread's CPU time, if the kernel tells.
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 300 } else { 3000 });
    let rsa = signer(include_str!("../tests/dkim/keys/rsa2048.pem"));
    let ed25519 = signer(include_str!("../tests/dkim/keys/ed25519.pem"));
    println!("| algorithm | message | messages/s | wall µs/message | CPU µs/message |");
    println!("|---|---|---:|---:|---:|");
    for (name, s) in [("rsa-sha256 (2048)", &rsa), ("ed25519-sha256", &ed25519)] {
        for size in [2 * 1024, 100 * 1024] {
            let m = message(size);
            black_box(s.sign(black_box(&m)).expect("signed"));
            let cpu0 = thread_cpu();
            let start = Instant::now();
            let mut n = 0u32;
            while n < 20 || start.elapsed() < budget {
                black_box(s.sign(black_box(&m)).expect("signed"));
                n += 1;
            }
            let wall = start.elapsed();
            let cpu = match (cpu0, thread_cpu()) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => wall,
            };
            let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
            println!(
                "| {name} | {} KB | {:.0} | {:.1} | {:.1} |",
                size / 1024,
                f64::from(n) / wall.as_secs_f64(),
                per(wall),
                per(cpu)
            );
        }
    }
}
