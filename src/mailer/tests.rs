//! The dispatcher with scripted connections (no network): connect failures,
//! connections that break on their Nth transaction, refusals by address.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::pool::{Conn, Job, Manager, Pool, PoolConfig};
use super::{Receipt, RetryPolicy};
use crate::error::{Error, Kind, Stage};
use crate::proto::address::Address;
use crate::proto::reply::{Reply, ReplyCode};
use crate::proto::session::{Envelope, Recipient, RecipientReply, TxId};

fn addr(text: &str) -> Address {
    text.parse().expect("a valid address")
}
use crate::transport::Delivery;

fn reply(code: u16, text: &str) -> Reply {
    Reply::new(ReplyCode::new(code).expect("code"), vec![text.to_owned()])
}

/// What the scripted server does.
#[derive(Default)]
struct Script {
    /// Connect attempts so far (1-based numbering in `fail_connects`).
    connects: AtomicUsize,
    /// These connect attempts fail (transiently).
    fail_connects: Mutex<Vec<usize>>,
    /// Transactions so far, over all connections.
    transactions: AtomicUsize,
    /// These transactions lose the connection: (number, after the body?).
    break_transactions: Mutex<Vec<(usize, bool)>>,
    open: AtomicUsize,
    peak: AtomicUsize,
    /// Addresses that got a message, with the connection number.
    delivered: Mutex<Vec<(usize, String)>>,
    /// Addresses refused with 450 once, then accepted.
    greylisted: Mutex<Vec<String>>,
    /// When set, every outcome waits for `gate` to be notified.
    held: std::sync::atomic::AtomicBool,
    gate: tokio::sync::Notify,
}

#[derive(Clone)]
struct Scripted(Arc<Script>);

struct ScriptedConn {
    script: Arc<Script>,
    number: usize,
    queued: VecDeque<(TxId, Envelope)>,
    next: u64,
    broken: bool,
    open: bool,
}

impl Manager for Scripted {
    type Conn = ScriptedConn;

    async fn connect(&self, _deadline: Option<tokio::time::Instant>) -> Result<ScriptedConn, Error> {
        let s = &self.0;
        let number = s.connects.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::task::yield_now().await;
        if s.fail_connects.lock().unwrap().contains(&number) {
            return Err(Error::new(Kind::Io, Some(Stage::Connect), "connection refused"));
        }
        let now = s.open.fetch_add(1, Ordering::SeqCst) + 1;
        s.peak.fetch_max(now, Ordering::SeqCst);
        Ok(ScriptedConn {
            script: s.clone(),
            number,
            queued: VecDeque::new(),
            next: 0,
            broken: false,
            open: true,
        })
    }
}

impl Drop for ScriptedConn {
    fn drop(&mut self) {
        if self.open {
            self.script.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Conn for ScriptedConn {
    fn submit(&mut self, envelope: Envelope, _content: Arc<[u8]>) -> Result<TxId, Error> {
        if self.broken {
            return Err(Error::new(Kind::Closed, Some(Stage::Mail), "closed"));
        }
        let id = TxId::for_tests(self.next);
        self.next += 1;
        self.queued.push_back((id, envelope));
        Ok(id)
    }

    async fn outcome(&mut self, id: TxId) -> Result<Delivery, Error> {
        tokio::task::yield_now().await;
        if self.script.held.load(Ordering::SeqCst) {
            self.script.gate.notified().await;
        }
        let (queued_id, envelope) = self.queued.pop_front().expect("submitted");
        assert_eq!(queued_id, id, "outcomes are read in order");
        if self.broken {
            return Err(Error::new(Kind::Closed, Some(Stage::Mail), "closed"));
        }
        let n = self.script.transactions.fetch_add(1, Ordering::SeqCst) + 1;
        let brk = self
            .script
            .break_transactions
            .lock()
            .unwrap()
            .iter()
            .find(|(t, _)| *t == n)
            .copied();
        if let Some((_, after_body)) = brk {
            self.broken = true;
            let e = Error::new(Kind::Closed, Some(Stage::EndOfData), "connection lost");
            return Err(if after_body { e.after_body() } else { e });
        }
        let mut recipients = Vec::new();
        for r in envelope.recipients() {
            let answer = if r.address.local_part().starts_with("perm") {
                reply(550, "5.1.1 no such user")
            } else {
                let mut grey = self.script.greylisted.lock().unwrap();
                if let Some(pos) = grey.iter().position(|g| *g == r.address.to_string()) {
                    grey.remove(pos);
                    reply(450, "4.2.0 greylisted")
                } else {
                    reply(250, "2.1.5 ok")
                }
            };
            recipients.push(RecipientReply {
                address: r.address.clone(),
                reply: Some(answer),
            });
        }
        if !recipients.iter().any(RecipientReply::accepted) {
            let last = recipients.last().and_then(|r| r.reply.clone()).expect("reply");
            return Err(Error::rejected(Stage::Rcpt, "every recipient was refused", last));
        }
        let mut delivered = self.script.delivered.lock().unwrap();
        for r in recipients.iter().filter(|r| r.accepted()) {
            delivered.push((self.number, r.address.to_string()));
        }
        Ok(Delivery::new(recipients, reply(250, "2.0.0 queued")))
    }

    async fn noop(&mut self) -> Result<(), Error> {
        Ok(())
    }

    async fn quit(mut self) {
        self.open = false;
        self.script.open.fetch_sub(1, Ordering::SeqCst);
    }

    fn is_usable(&self) -> bool {
        !self.broken
    }

    fn info(&self) -> Option<&crate::transport::ConnectionInfo> {
        None
    }

    fn set_deadline(&mut self, _deadline: Option<tokio::time::Instant>) {}
}

fn config() -> PoolConfig {
    PoolConfig {
        max_connections: 2,
        max_deliveries: 5,
        max_age: None,
        idle_timeout: Duration::from_secs(60),
        probe_after_idle: Duration::from_secs(60),
        queue_capacity: 1000,
        max_batch: 32,
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..RetryPolicy::default()
        },
        rate_limit: None,
        send_timeout: None,
        relay_down: super::RelayDownPolicy::never(),
    }
}

fn job(to: &[&str]) -> (Job, oneshot::Receiver<Result<Receipt, Error>>) {
    let (tx, rx) = oneshot::channel();
    let envelope = Envelope::new(
        Some("app@example.com".parse().expect("address")),
        to.iter().map(|a| a.parse().expect("address")).collect(),
    )
    .expect("envelope");
    (
        Job::new(envelope, Arc::from(&b"Subject: x\r\n\r\nx\r\n"[..]), None, tx),
        rx,
    )
}

async fn send(pool: &Arc<Pool<Scripted>>, to: &[&str]) -> Result<Receipt, Error> {
    let (j, rx) = job(to);
    pool.push(j).await?;
    rx.await.expect("answered")
}

#[tokio::test]
async fn cap_and_deliveries_per_connection() {
    let script = Arc::new(Script::default());
    let pool = Pool::new(config(), Scripted(script.clone()));
    let mut waiting = Vec::new();
    for i in 0..200 {
        let (j, rx) = job(&[&format!("u{i}@example.net")]);
        pool.push(j).await.expect("queued");
        waiting.push(rx);
    }
    for rx in waiting {
        rx.await.expect("answered").expect("delivered");
    }
    assert!(
        script.peak.load(Ordering::SeqCst) <= 2,
        "hard cap of 2 connections"
    );
    let delivered = script.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 200);
    // No connection carried more than 5 transactions.
    let mut per_conn = std::collections::HashMap::new();
    for (conn, _) in &delivered {
        *per_conn.entry(*conn).or_insert(0) += 1;
    }
    assert!(per_conn.values().all(|&n| n <= 5), "{per_conn:?}");
    let stats = pool.stats();
    assert_eq!(stats.delivered, 200);
    assert_eq!(stats.offered, 200);
    assert_eq!(stats.failed, 0);
    assert_eq!(stats.connections_opened, 40);
}

#[tokio::test]
async fn sequential_messages_reuse_the_warm_connection() {
    let script = Arc::new(Script::default());
    let mut c = config();
    c.max_connections = 4;
    c.max_deliveries = 3;
    let pool = Pool::new(c, Scripted(script.clone()));
    for i in 0..10 {
        send(&pool, &[&format!("s{i}@example.net")])
            .await
            .expect("delivered");
    }
    // ceil(10 / 3) connections, although four were allowed.
    assert_eq!(script.connects.load(Ordering::SeqCst), 4);
    let stats = pool.stats();
    assert_eq!(stats.connections_opened, 4);
    assert_eq!(stats.deliveries_per_connection, vec![(3, 3)]);
    assert_eq!(stats.connections_open, 1);
}

#[tokio::test]
async fn failed_connect_is_retried_on_a_new_connection() {
    let script = Arc::new(Script::default());
    script.fail_connects.lock().unwrap().push(1);
    let pool = Pool::new(config(), Scripted(script.clone()));
    let receipt = send(&pool, &["a@example.net"]).await.expect("delivered on retry");
    assert_eq!(receipt.attempts(), 2);
    assert_eq!(pool.stats().retried, 1);
    assert_eq!(script.connects.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connect_failures_give_up_after_max_attempts() {
    let script = Arc::new(Script::default());
    script.fail_connects.lock().unwrap().extend([1, 2, 3, 4]);
    let pool = Pool::new(config(), Scripted(script.clone()));
    let e = send(&pool, &["a@example.net"]).await.expect_err("gives up");
    assert_eq!(e.stage(), Some(Stage::Connect));
    assert_eq!(script.connects.load(Ordering::SeqCst), 3, "max_attempts = 3");
    let stats = pool.stats();
    assert_eq!((stats.failed, stats.retried, stats.delivered), (1, 2, 0));
}

#[tokio::test]
async fn broken_connection_is_dropped_and_the_message_retried() {
    let script = Arc::new(Script::default());
    script.break_transactions.lock().unwrap().push((2, false));
    let pool = Pool::new(config(), Scripted(script.clone()));
    send(&pool, &["one@example.net"]).await.expect("first");
    let r = send(&pool, &["two@example.net"]).await.expect("second, retried");
    assert_eq!(r.attempts(), 2);
    // The broken connection was not reused: the retry went to connection 2.
    let delivered = script.delivered.lock().unwrap().clone();
    assert_eq!(
        delivered,
        vec![(1, "one@example.net".into()), (2, "two@example.net".into())]
    );
}

#[tokio::test]
async fn lost_after_the_body_follows_the_policy() {
    let script = Arc::new(Script::default());
    script.break_transactions.lock().unwrap().push((1, true));
    let mut c = config();
    c.retry.retry_after_body_sent = false;
    let pool = Pool::new(c, Scripted(script.clone()));
    let e = send(&pool, &["x@example.net"]).await.expect_err("at most once");
    assert!(e.body_was_sent() && e.is_transient(), "{e}");

    let script = Arc::new(Script::default());
    script.break_transactions.lock().unwrap().push((1, true));
    let pool = Pool::new(config(), Scripted(script.clone()));
    let r = send(&pool, &["x@example.net"]).await.expect("at least once");
    assert_eq!(r.attempts(), 2);
}

#[tokio::test]
async fn permanent_refusal_is_not_retried() {
    let script = Arc::new(Script::default());
    let pool = Pool::new(config(), Scripted(script.clone()));
    let e = send(&pool, &["perm@example.net"]).await.expect_err("550");
    assert_eq!(e.reply().map(|r| r.code().value()), Some(550));
    assert_eq!(script.transactions.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().retried, 0);
}

#[tokio::test]
async fn greylisted_recipient_is_retried_alone() {
    let script = Arc::new(Script::default());
    script.greylisted.lock().unwrap().push("grey@example.net".into());
    let pool = Pool::new(config(), Scripted(script.clone()));
    let r = send(&pool, &["grey@example.net", "ok@example.net", "perm@example.net"])
        .await
        .expect("delivered");
    assert_eq!(r.attempts(), 2);
    // In envelope order, each with its last answer.
    let summary: Vec<(String, u16)> = r
        .recipients()
        .iter()
        .map(|x| {
            (
                x.address.to_string(),
                x.reply.as_ref().map_or(0, |r| r.code().value()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("grey@example.net".into(), 250),
            ("ok@example.net".into(), 250),
            ("perm@example.net".into(), 550)
        ]
    );
    // ok@ got exactly one copy; grey@ got its copy on the second attempt.
    let delivered: Vec<String> = script
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.1.clone())
        .collect();
    assert_eq!(
        delivered,
        vec!["ok@example.net".to_owned(), "grey@example.net".to_owned()]
    );
}

#[tokio::test]
async fn full_queue_hands_the_message_back() {
    let script = Arc::new(Script::default());
    // Every connect fails and each retry waits an hour: nothing drains.
    let mut c = config();
    c.queue_capacity = 3;
    c.max_connections = 1;
    script.fail_connects.lock().unwrap().extend(1..1000);
    c.retry = RetryPolicy {
        max_attempts: 1000,
        initial_backoff: Duration::from_secs(3600),
        max_backoff: Duration::from_secs(3600),
        deadline: None,
        ..RetryPolicy::default()
    };
    let pool = Pool::new(c, Scripted(script.clone()));
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..1000 {
        let (j, _rx) = job(&["a@example.net"]);
        match pool.try_push(j) {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert!(e.is_full() && e.is_transient(), "{e}");
                refused += 1;
            }
        }
    }
    // The queue holds 3; the one worker took one batch out of it (then
    // deferred it for an hour), which freed its slots.
    let stats = pool.stats();
    assert!(accepted <= 3 + 3, "bounded: {accepted}");
    assert_eq!(accepted + refused, 1000);
    assert_eq!(stats.queued + stats.in_flight + stats.deferred, accepted);
    pool.shutdown(tokio::time::Instant::now()).await;
    let stats = pool.stats();
    assert_eq!(
        stats.failed as usize, accepted,
        "shutdown answers every message: {stats:?}"
    );
}

mod outbox_records {
    use std::time::{Duration, SystemTime};

    use super::super::deliver::{record, Verdict};
    use super::addr;
    use crate::message::Message;
    use crate::outbox::{Area, DirSpool, OutboxPolicy};
    use crate::proto::session::{Envelope, Recipient};

    fn spool(name: &str) -> (DirSpool, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("relaymail-record-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (DirSpool::open(&dir).expect("spool"), dir)
    }

    fn message() -> Message {
        Message::new(
            Envelope::new(
                Some("app@example.com".parse().expect("address")),
                vec![
                    "a@example.net".parse().expect("address"),
                    "b@example.net".parse().expect("address"),
                ],
            )
            .expect("envelope"),
            b"Subject: x\r\n\r\nx\r\n".to_vec(),
        )
    }

    fn claim(s: &DirSpool) -> crate::outbox::Claim {
        s.claim_due(SystemTime::now() + Duration::from_secs(1), 1)
            .expect("claim")
            .pop()
            .expect("one")
    }

    #[tokio::test]
    async fn transient_failure_defers_with_attempts_error_and_next_time() {
        let (s, dir) = spool("defer");
        let id = s.enqueue(&message()).expect("queued");
        let policy = OutboxPolicy::default();
        let before = SystemTime::now();
        record(
            &s,
            &policy,
            claim(&s),
            Verdict::Defer("connect: refused".into(), None, false),
        )
        .await
        .expect("recorded");
        let info = s.inspect(Area::Drafts, &id).expect("still a draft");
        assert_eq!(info.attempts, 1);
        assert_eq!(info.last_error.as_deref(), Some("connect: refused"));
        assert!(info.next_attempt >= before + policy.initial_backoff / 2);
        assert!(
            s.claim_due(SystemTime::now(), 10).expect("claim").is_empty(),
            "not due yet"
        );
        // Only the recipients still owed stay in the envelope.
        s.retry_now(Area::Drafts, &id).expect("retry");
        let partial = Verdict::Defer(
            "451".into(),
            Some(vec![Recipient::new(addr("b@example.net"))]),
            false,
        );
        record(&s, &policy, claim(&s), partial).await.expect("recorded");
        let info = s.inspect(Area::Drafts, &id).expect("draft");
        assert_eq!(
            info.envelope.recipients(),
            vec![Recipient::new(addr("b@example.net"))]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn settings_errors_are_told_from_relay_errors() {
        use super::super::deliver::error_verdict;
        use crate::error::{Error, Kind};
        let settings = |e: Error| match error_verdict(&e) {
            Verdict::Defer(_, None, settings) => settings,
            other => panic!("{e}: {other:?}"),
        };
        assert!(settings(Error::new(
            Kind::Auth,
            None,
            "535 5.7.8 authentication failed"
        )));
        assert!(settings(Error::new(Kind::Tls, None, "certificate not trusted")));
        assert!(settings(Error::new(Kind::Config, None, "no credentials")));
        assert!(settings(
            Error::new(Kind::Auth, None, "token refused").reauthorization()
        ));
        assert!(!settings(Error::new(Kind::Io, None, "connection refused")));
        assert!(!settings(Error::new(Kind::Timeout, None, "greeting timed out")));
        assert!(!settings(Error::new(Kind::Closed, None, "closed")));
        let busy = Error::new(Kind::Rejected, None, "451 4.3.0 try later").transient(true);
        assert!(!settings(busy));
    }

    #[tokio::test]
    async fn an_attempt_that_failed_on_settings_reloaded_meanwhile_is_due_again_at_once() {
        let (s, dir) = spool("redo");
        let id = s.enqueue(&message()).expect("queued");
        record(
            &s,
            &OutboxPolicy::default(),
            claim(&s),
            Verdict::Redo("535".into(), None),
        )
        .await
        .expect("recorded");
        let info = s.inspect(Area::Drafts, &id).expect("still a draft");
        assert_eq!(info.attempts, 1);
        assert!(!info.waiting_on_settings && info.next_attempt <= SystemTime::now());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn permanent_failure_and_old_drafts_go_to_the_failed_area() {
        let (s, dir) = spool("fail");
        let id = s.enqueue(&message()).expect("queued");
        record(
            &s,
            &OutboxPolicy::default(),
            claim(&s),
            Verdict::Fail("550 5.1.1 no such user".into()),
        )
        .await
        .expect("recorded");
        assert!(s.inspect(Area::Drafts, &id).is_err());
        let failed = s.inspect(Area::Failed, &id).expect("failed");
        assert_eq!(failed.last_error.as_deref(), Some("550 5.1.1 no such user"));

        let id = s.enqueue(&message()).expect("queued");
        let old = OutboxPolicy {
            max_age: Duration::ZERO,
            ..OutboxPolicy::default()
        };
        std::thread::yield_now();
        record(&s, &old, claim(&s), Verdict::Defer("timeout".into(), None, false))
            .await
            .expect("recorded");
        let failed = s.inspect(Area::Failed, &id).expect("too old: failed");
        assert!(
            failed
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("gave up after")),
            "{failed:?}"
        );
        // Delivered: gone.
        let id = s.enqueue(&message()).expect("queued");
        record(&s, &old, claim(&s), Verdict::Done)
            .await
            .expect("recorded");
        assert!(s.inspect(Area::Drafts, &id).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(start_paused = true)]
async fn a_message_given_up_at_its_send_timeout_in_the_queue_is_never_sent() {
    let script = Arc::new(Script::default());
    script.held.store(true, Ordering::SeqCst);
    let mut c = config();
    c.max_connections = 1;
    c.send_timeout = Some(Duration::from_secs(1));
    let pool = Pool::new(c, Scripted(script.clone()));
    // The first message holds the only connection.
    let (first, first_rx) = job(&["first@example.net"]);
    pool.push(first).await.expect("queued");
    tokio::task::yield_now().await;
    // The second waits in the queue with a 1 s send timeout.
    let expiry = super::pool::Expiry::new(tokio::time::Instant::now() + Duration::from_secs(1));
    let (tx, rx) = oneshot::channel();
    let envelope = Envelope::new(
        Some("app@example.com".parse().expect("address")),
        vec!["second@example.net".parse().expect("address")],
    )
    .expect("envelope");
    let second = Job::new(envelope, Arc::from(&b"x"[..]), Some(expiry.clone()), tx);
    pool.push(second).await.expect("queued");
    let e = super::Pending::new(rx, Some((expiry, Duration::from_secs(1))))
        .await
        .expect_err("timed out");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.stage(), Some(Stage::Queue));
    // The connection frees up: the first is delivered, the second dropped.
    script.held.store(false, Ordering::SeqCst);
    script.gate.notify_one();
    first_rx.await.expect("answered").expect("delivered");
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    let delivered: Vec<String> = script
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|(_, a)| a.clone())
        .collect();
    assert_eq!(
        delivered,
        ["first@example.net"],
        "the given-up message was not sent"
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.delivered, stats.failed, stats.in_flight, stats.queued),
        (1, 1, 0, 0)
    );
}

#[test]
fn a_deferred_recipient_keeps_its_dsn_parameters_in_the_draft() {
    use super::deliver::{verdict, Verdict};
    use crate::proto::command::Notify;
    use crate::transport::Delivery;
    let mut a = Recipient::new(addr("a@example.net"));
    a.params.notify = Some(Notify::On {
        success: false,
        failure: true,
        delay: true,
    });
    a.params.orcpt = Some("rfc822;a@example.net".into());
    let envelope = Envelope::with_recipients(
        Some(addr("app@example.com")),
        vec![a.clone(), Recipient::new(addr("b@example.net"))],
    )
    .expect("envelope");
    let receipt = Receipt {
        delivery: Delivery::new(
            vec![
                RecipientReply {
                    address: addr("a@example.net"),
                    reply: Some(reply(450, "4.2.1 mailbox busy")),
                },
                RecipientReply {
                    address: addr("b@example.net"),
                    reply: Some(reply(250, "2.1.5 ok")),
                },
            ],
            reply(250, "2.0.0 queued"),
        ),
        attempts: 1,
        possibly_duplicated: false,
    };
    match verdict(&Ok(receipt), &envelope) {
        Verdict::Defer(_, Some(again), false) => assert_eq!(again, [a], "NOTIFY and ORCPT kept"),
        other => panic!("{other:?}"),
    }
}
