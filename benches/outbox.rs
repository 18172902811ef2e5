//! Outbox spool: enqueue throughput with fsync, memory while listing a
//! 100,000-draft spool page by page, and what one deliverer poll costs
//! while all of those drafts wait for a relay that is down.
//!
//! Run: `cargo bench --bench outbox` (`-- --quick` for 10,000 drafts).
//! Uses a directory under the system temp dir and removes it afterwards.

use std::time::{Duration, Instant, SystemTime};

use relaymail::outbox::{Area, Deferral, DirSpool};
use relaymail::{Envelope, Message};

/// Peak resident set size of this process so far, in KiB (Linux).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn message(i: usize) -> Message {
    let mut body = format!("Message-ID: <bench-{i}@example.com>\r\nSubject: report {i}\r\n\r\n");
    while body.len() < 2048 {
        body.push_str("The quick brown fox jumps over the lazy dog.\r\n");
    }
    Message::new(
        Envelope::new(
            Some("noreply@example.com".parse().expect("address")),
            vec![format!("user{i}@example.net").parse().expect("address")],
        )
        .expect("envelope"),
        body.into_bytes(),
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let drafts_total = if quick { 10_000 } else { 100_000 };
    let dir = std::env::temp_dir().join(format!("relaymail-outbox-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spool = DirSpool::open(&dir).expect("spool");

    // Enqueue: every call fsyncs the draft and the directory.
    let n = 2_000;
    let start = Instant::now();
    let mut queued = Vec::with_capacity(n);
    for i in 0..n {
        queued.push(spool.enqueue(&message(i)).expect("enqueue"));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "enqueue with fsync: {n} messages of 2 KB in {secs:.2} s = {:.0} msgs/s",
        n as f64 / secs
    );

    // Fill the spool to `drafts_total` by copying a draft file under new ids
    // (no fsync: only reading is measured). Every draft has failed once and
    // waits an hour, as they do while the relay is down.
    let later = SystemTime::now() + Duration::from_secs(3600);
    for id in &queued {
        spool
            .defer(id, Deferral::new("relay offline", later))
            .expect("defer");
    }
    let template = dir.join("drafts").join(format!("{}.draft", queued[0]));
    for i in n..drafts_total {
        let name = format!("{:013x}-{:016x}.draft", 0x1_0000_0000u64 + i as u64, i as u64);
        std::fs::copy(&template, dir.join("drafts").join(name)).expect("copy");
    }
    let before = peak_rss_kib();
    let start = Instant::now();
    let mut after = None;
    let mut listed = 0;
    loop {
        let page = spool.list(Area::Drafts, after.as_ref(), 100).expect("page");
        listed += page.drafts.len();
        match page.next {
            Some(id) => after = Some(id),
            None => break,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let peak = peak_rss_kib();
    println!(
        "list {listed} drafts in pages of 100: {secs:.1} s; peak RSS {:.1} MiB before, {:.1} MiB after (+{:.1} MiB)",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        (peak.saturating_sub(before)) as f64 / 1024.0
    );
    assert_eq!(listed, drafts_total);

    // The relay is down: every draft waits for its next attempt (the
    // copies were made from a deferred draft). A poll of the deliverer is
    // `claim_due` (finds nothing) then `next_due`.
    for poll in 1..=3 {
        let start = Instant::now();
        let claimed = spool.claim_due(SystemTime::now(), 64).expect("claim");
        let next = spool.next_due().expect("next");
        assert!(claimed.is_empty());
        assert!(next.is_some_and(|t| t > SystemTime::now()));
        println!(
            "poll {poll} with {listed} drafts waiting (claim_due + next_due): {:.0} ms",
            start.elapsed().as_secs_f64() * 1000.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
