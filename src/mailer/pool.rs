//! The dispatcher behind [`Mailer`](crate::Mailer): a queue of jobs and at
//! most `max_connections` workers, each owning at most one connection.
//!
//! - A job goes to the most recently idle worker (LIFO, so a warm connection
//!   is reused before a cold one is opened); otherwise a new worker is started
//!   while fewer than `max_connections` exist; otherwise it waits in the
//!   queue. One worker is one connection at most, so the cap on open
//!   connections is a hard one.
//! - A worker takes a batch of queued jobs and submits them all before
//!   reading any outcome: with PIPELINING the next transaction's commands
//!   follow the previous message in the same write (RFC 2920 §3.1).
//! - A connection is retired after `max_deliveries` transactions, after
//!   `max_age`, after `idle_timeout` without work, when the settings are
//!   reloaded, and whenever it is no longer in step (timeout, lost sync, 421).
//!   It is probed with NOOP before use only after `probe_after_idle` idle.
//! - Transient failures are retried on a later connection after a back-off
//!   with jitter; permanent ones end the job.
//!
//! Generic over the connection [`Manager`] so that the dispatcher can be
//! tested with connections that fail on command.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::health::{Gate, Health, RelayDownPolicy};
use super::limit::{Limiter, RateLimit};
use super::retry::RetryPolicy;
use super::{Receipt, Stats};
use crate::error::{Error, Kind};
use crate::proto::address::Address;
use crate::proto::session::{deferred_recipients, Envelope, RecipientReply, TxId};
use crate::settings::Relay;
use crate::transport::{ConnectionInfo, Delivery};

use super::trace;

/// Opens connections (one per [`Generation`] of settings).
pub(crate) trait Manager: Send + Sync + 'static {
    /// The connection type.
    type Conn: Conn;
    /// Opens one connection, ready for transactions, giving up at
    /// `deadline` (a message's send timeout) with a timeout error that names
    /// the stage.
    fn connect(&self, deadline: Option<Instant>) -> impl Future<Output = Result<Self::Conn, Error>> + Send;
    /// Whether an open connection should stay in use (false: close it when
    /// its work is done, e.g. a backup relay once the primary is due to be
    /// tried again).
    fn keep(&self, _conn: &Self::Conn) -> bool {
        true
    }
}

/// What the dispatcher needs from a connection.
pub(crate) trait Conn: Send + 'static {
    /// Queues a transaction (validation errors come back at once).
    fn submit(&mut self, envelope: Envelope, content: Arc<[u8]>) -> Result<TxId, Error>;
    /// Waits for the outcome of a submitted transaction.
    fn outcome(&mut self, id: TxId) -> impl Future<Output = Result<Delivery, Error>> + Send;
    /// Liveness probe.
    fn noop(&mut self) -> impl Future<Output = Result<(), Error>> + Send;
    /// QUIT and close.
    fn quit(self) -> impl Future<Output = ()> + Send;
    /// Whether another transaction may follow.
    fn is_usable(&self) -> bool;
    /// What the connection found out about the server (for tracing).
    fn info(&self) -> Option<&ConnectionInfo>;
    /// An outer deadline for everything the connection does next (`None`:
    /// only the settings' timeouts).
    fn set_deadline(&mut self, deadline: Option<Instant>);
}

/// Where a job is: waiting (queue or back-off), on a connection, or given
/// up by its sender at its send timeout.
const WAITING: u8 = 0;
const ON_THE_WIRE: u8 = 1;
const GIVEN_UP: u8 = 2;

/// A job's send timeout, shared by the job and the sender's [`Pending`].
///
/// [`Pending`]: crate::Pending
#[derive(Debug)]
pub(crate) struct Expiry {
    pub(crate) at: Instant,
    state: std::sync::atomic::AtomicU8,
}

impl Expiry {
    pub(crate) fn new(at: Instant) -> Arc<Expiry> {
        Arc::new(Expiry {
            at,
            state: std::sync::atomic::AtomicU8::new(WAITING),
        })
    }

    /// The sender's timer fired: the job is given up if it is not on a
    /// connection now (true). Otherwise the connection's own deadline ends
    /// the attempt at the same instant and the worker answers.
    pub(crate) fn give_up(&self) -> bool {
        self.state
            .compare_exchange(WAITING, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A worker takes the job for an attempt (false: given up).
    fn take(&self) -> bool {
        self.state
            .compare_exchange(WAITING, ON_THE_WIRE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The attempt ended and the job waits again.
    fn release(&self) {
        let _ = self
            .state
            .compare_exchange(ON_THE_WIRE, WAITING, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The error for a message whose send timeout ran out before it reached a
/// connection.
pub(crate) fn queue_timeout(timeout: Duration) -> Error {
    Error::new(
        Kind::Timeout,
        Some(crate::error::Stage::Queue),
        format!("the message waited for a connection longer than its send timeout ({timeout:?})"),
    )
    .transient(true)
}

/// Limits and policies of the dispatcher.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    pub(crate) max_connections: usize,
    pub(crate) max_deliveries: usize,
    pub(crate) max_age: Option<Duration>,
    pub(crate) idle_timeout: Duration,
    pub(crate) probe_after_idle: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) max_batch: usize,
    pub(crate) retry: RetryPolicy,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) send_timeout: Option<Duration>,
    pub(crate) relay_down: RelayDownPolicy,
}

/// One version of the settings: connections opened from it stay with it.
pub(crate) struct Generation<M> {
    pub(crate) id: u64,
    pub(crate) manager: M,
}

/// A message on its way, with everything needed to answer its sender.
pub(crate) struct Job {
    envelope: Envelope,
    content: Arc<[u8]>,
    /// Recipient addresses in the caller's order, for the receipt.
    order: Vec<Address>,
    /// Recipients whose fate is settled (accepted or refused for good).
    settled: Vec<RecipientReply>,
    last_reply: Option<crate::Reply>,
    /// The relay that gave the last reply.
    relay: Option<Relay>,
    attempts: u32,
    /// An earlier attempt failed after the whole body was sent: the server
    /// may have the message already.
    body_sent_before: bool,
    handed_over: Instant,
    /// The send timeout, when there is one.
    expiry: Option<Arc<Expiry>>,
    respond: oneshot::Sender<Result<Receipt, Error>>,
    /// The queue slot, given back when a worker takes the job.
    slot: Option<OwnedSemaphorePermit>,
}

impl Job {
    pub(crate) fn new(
        envelope: Envelope,
        content: Arc<[u8]>,
        expiry: Option<Arc<Expiry>>,
        respond: oneshot::Sender<Result<Receipt, Error>>,
    ) -> Job {
        Job {
            expiry,
            order: envelope.recipients().iter().map(|r| r.address.clone()).collect(),
            envelope,
            content,
            settled: Vec::new(),
            last_reply: None,
            relay: None,
            attempts: 0,
            body_sent_before: false,
            handed_over: Instant::now(),
            respond,
            slot: None,
        }
    }
}

enum Wake {
    Jobs(Vec<Job>),
    Close,
}

struct Idle {
    worker: u64,
    generation: u64,
    remaining: usize,
    wake: oneshot::Sender<Wake>,
}

struct State<M> {
    queue: VecDeque<Job>,
    idle: Vec<Idle>,
    workers: usize,
    next_worker: u64,
    generation: Arc<Generation<M>>,
    /// No new messages accepted.
    closed: bool,
    /// Workers stop; queued and deferred jobs are failed.
    stopping: bool,
    deliveries_histogram: BTreeMap<usize, u64>,
    aborts: HashMap<u64, AbortHandle>,
}

#[derive(Default)]
struct Counters {
    in_flight: AtomicUsize,
    deferred: AtomicUsize,
    delivered: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    offered: AtomicU64,
    possibly_duplicated: AtomicU64,
    outbox_errors: AtomicU64,
    released_on_reload: AtomicU64,
    open: AtomicUsize,
    opened: AtomicU64,
    failed_fast: AtomicU64,
    by_relay: Mutex<HashMap<Relay, u64>>,
}

/// The shared dispatcher.
pub(crate) struct Pool<M: Manager> {
    config: PoolConfig,
    /// Transactions per connection: `config.max_deliveries` at first, then
    /// the value of the settings of the last reload.
    max_deliveries: AtomicUsize,
    state: Mutex<State<M>>,
    space: Arc<Semaphore>,
    limiter: Option<Limiter>,
    health: Health,
    counters: Counters,
    /// Signalled whenever a job ends or a worker exits.
    changed: Notify,
    stop: watch::Sender<bool>,
}

pub(crate) fn shutdown_error() -> Error {
    Error::new(
        Kind::Shutdown,
        None,
        "the mailer was shut down before the message could be delivered",
    )
}

impl<M: Manager> Pool<M> {
    pub(crate) fn new(config: PoolConfig, manager: M) -> Arc<Pool<M>> {
        let capacity = config.queue_capacity.max(1);
        Arc::new(Pool {
            limiter: config.rate_limit.map(Limiter::new),
            health: Health::new(config.relay_down.clone()),
            space: Arc::new(Semaphore::new(capacity)),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                idle: Vec::new(),
                workers: 0,
                next_worker: 0,
                generation: Arc::new(Generation { id: 0, manager }),
                closed: false,
                stopping: false,
                deliveries_histogram: BTreeMap::new(),
                aborts: HashMap::new(),
            }),
            counters: Counters::default(),
            changed: Notify::new(),
            stop: watch::channel(false).0,
            max_deliveries: AtomicUsize::new(config.max_deliveries),
            config,
        })
    }

    /// Transactions a connection may carry, as the current settings say.
    fn max_deliveries(&self) -> usize {
        self.max_deliveries.load(Ordering::Relaxed).max(1)
    }

    fn lock(&self) -> MutexGuard<'_, State<M>> {
        // A panic elsewhere must not take every sender down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a job, waiting for room in the queue. On error the job is
    /// dropped (the caller keeps its own copy of the message).
    pub(crate) async fn push(self: &Arc<Self>, mut job: Job) -> Result<(), Error> {
        if self.lock().closed {
            return Err(shutdown_error());
        }
        match self.space.clone().acquire_owned().await {
            Ok(permit) => job.slot = Some(permit),
            Err(_) => return Err(shutdown_error()),
        }
        self.enqueue(job)
    }

    /// Queues a job if there is room now.
    pub(crate) fn try_push(self: &Arc<Self>, mut job: Job) -> Result<(), Error> {
        if self.lock().closed {
            return Err(shutdown_error());
        }
        match self.space.clone().try_acquire_owned() {
            Ok(permit) => job.slot = Some(permit),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(shutdown_error()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let e = Error::new(
                    Kind::Full,
                    None,
                    format!(
                        "the mailer's queue is full ({} messages waiting)",
                        self.config.queue_capacity
                    ),
                )
                .transient(true);
                return Err(e);
            }
        }
        self.enqueue(job)
    }

    fn enqueue(self: &Arc<Self>, job: Job) -> Result<(), Error> {
        let mut st = self.lock();
        if st.closed {
            return Err(shutdown_error());
        }
        self.counters.offered.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.health.refusal() {
            drop(st);
            self.fail_fast(job, e);
            return Ok(());
        }
        st.queue.push_back(job);
        self.dispatch(&mut st);
        Ok(())
    }

    /// Fails a job at once because the relay is down.
    fn fail_fast(&self, job: Job, e: Error) {
        self.counters.failed_fast.fetch_add(1, Ordering::Relaxed);
        self.complete(job, Err(e));
    }

    /// Fails every queued job at once: the relay is down.
    fn fail_queue(&self, st: &mut State<M>, e: &Error) {
        for job in std::mem::take(&mut st.queue) {
            self.fail_fast(job, e.clone());
        }
    }

    /// Puts a job that waited out its back-off back in line.
    fn requeue(self: &Arc<Self>, job: Job) {
        let mut st = self.lock();
        if st.stopping {
            drop(st);
            self.complete(job, Err(shutdown_error()));
            return;
        }
        if let Some(e) = self.health.refusal() {
            drop(st);
            self.fail_fast(job, e);
            return;
        }
        st.queue.push_back(job);
        self.dispatch(&mut st);
    }

    /// Hands queued jobs to idle workers or new ones.
    fn dispatch(self: &Arc<Self>, st: &mut State<M>) {
        while !st.queue.is_empty() && !st.stopping {
            let current = st.generation.id;
            // Idle workers of an older generation are closed at reload; the
            // most recently idle one has the warmest connection.
            if let Some(pos) = st.idle.iter().rposition(|i| i.generation == current) {
                let idle = st.idle.remove(pos);
                let batch = self.take_batch(st, idle.remaining);
                if let Err(Wake::Jobs(batch)) = idle.wake.send(Wake::Jobs(batch)) {
                    // That worker is gone: the jobs go back, in order.
                    self.counters.in_flight.fetch_sub(batch.len(), Ordering::Relaxed);
                    for job in batch.into_iter().rev() {
                        st.queue.push_front(job);
                    }
                }
                continue;
            }
            if st.workers < self.config.max_connections {
                let probe = match self.health.gate() {
                    Gate::Open => false,
                    Gate::Probe => true,
                    // Queued jobs wait for the probe's outcome.
                    Gate::Wait => break,
                    Gate::Closed(e) => {
                        self.fail_queue(st, &e);
                        break;
                    }
                };
                st.workers += 1;
                let id = st.next_worker;
                st.next_worker += 1;
                let batch = self.take_batch(st, self.max_deliveries());
                let generation = st.generation.clone();
                let pool = self.clone();
                let handle = tokio::spawn(async move {
                    pool.clone().work(id, generation, batch, probe).await;
                });
                st.aborts.insert(id, handle.abort_handle());
                continue;
            }
            break;
        }
    }

    /// Takes the next batch off the queue: no more than the connection may
    /// still carry, and a fair share when other connections could help.
    fn take_batch(&self, st: &mut State<M>, remaining: usize) -> Vec<Job> {
        let helpers = st.idle.len() + self.config.max_connections.saturating_sub(st.workers) + 1;
        let share = st.queue.len().div_ceil(helpers);
        let n = share
            .min(remaining)
            .min(self.config.max_batch)
            .max(1)
            .min(st.queue.len());
        let batch: Vec<Job> = st
            .queue
            .drain(..n)
            .map(|mut job| {
                job.slot = None;
                job
            })
            .collect();
        self.counters.in_flight.fetch_add(batch.len(), Ordering::Relaxed);
        batch
    }

    /// Waits for the next batch as an idle worker; `None`: close.
    async fn next_batch(
        self: &Arc<Self>,
        worker: u64,
        generation: u64,
        remaining: usize,
    ) -> Option<Vec<Job>> {
        let rx = {
            let mut st = self.lock();
            if st.stopping || st.generation.id != generation {
                return None;
            }
            if !st.queue.is_empty() {
                return Some(self.take_batch(&mut st, remaining));
            }
            let (tx, rx) = oneshot::channel();
            st.idle.push(Idle {
                worker,
                generation,
                remaining,
                wake: tx,
            });
            rx
        };
        let mut rx = rx;
        match tokio::time::timeout(self.config.idle_timeout, &mut rx).await {
            Ok(Ok(Wake::Jobs(batch))) => Some(batch),
            Ok(Ok(Wake::Close)) | Ok(Err(_)) => None,
            Err(_) => {
                let mut st = self.lock();
                if let Some(pos) = st.idle.iter().position(|i| i.worker == worker) {
                    st.idle.remove(pos);
                    return None;
                }
                drop(st);
                // Handed work just as the idle timeout fired: do it.
                match rx.try_recv() {
                    Ok(Wake::Jobs(batch)) => Some(batch),
                    _ => None,
                }
            }
        }
    }

    /// One worker: opens a connection for its first batch and keeps using it
    /// until it must be retired.
    /// `probe`: this worker's first connection is the probe of a relay
    /// that was down.
    async fn work(
        self: Arc<Self>,
        id: u64,
        generation: Arc<Generation<M>>,
        mut batch: Vec<Job>,
        mut probe: bool,
    ) {
        let span = trace::connection(id, generation.id);
        let mut conn: Option<Open<M::Conn>> = None;
        loop {
            batch = self.take_for_attempt(batch);
            // The earliest send timeout in the batch bounds every step of
            // this attempt: probe, connect, transactions.
            let cap = earliest_expiry(&batch);
            if let Some(open) = conn.as_mut() {
                open.conn.set_deadline(cap);
            }
            // A connection for this batch: reuse (probing it after a long
            // idle), or open one.
            if let Some(open) = conn.as_mut() {
                if !generation.manager.keep(&open.conn) {
                    let done = conn.take().expect("connection");
                    self.quit(done, &span, "primary relay due").await;
                } else if open.last_used.elapsed() >= self.config.probe_after_idle
                    && open.conn.noop().await.is_err()
                {
                    let dead = conn.take().expect("connection");
                    self.closed_connection(dead.deliveries, &span, "idle probe failed");
                }
            }
            if conn.is_none() && !batch.is_empty() {
                probe = false;
                match generation.manager.connect(cap).await {
                    Ok(c) => {
                        trace::connected(&span, c.info());
                        self.health.connected();
                        // After a probe, queued jobs may start other
                        // connections.
                        self.dispatch(&mut self.lock());
                        self.counters.open.fetch_add(1, Ordering::Relaxed);
                        self.counters.opened.fetch_add(1, Ordering::Relaxed);
                        conn = Some(Open {
                            conn: c,
                            opened: Instant::now(),
                            last_used: Instant::now(),
                            deliveries: 0,
                        });
                    }
                    Err(e) => {
                        trace::connect_failed(&span, &e);
                        {
                            let mut st = self.lock();
                            match self.health.connect_failed(&e) {
                                // The relay is down: every queued job fails at
                                // once, and this batch (in `settle`).
                                Some(down) => self.fail_queue(&mut st, &down),
                                // A probe that found the relay answering: the
                                // queue may go on.
                                None => self.dispatch(&mut st),
                            }
                        }
                        for mut job in batch {
                            job.attempts += 1;
                            self.settle(job, Err(e.clone()));
                        }
                        break;
                    }
                }
            }
            let Some(open) = conn.as_mut() else {
                // Every job of the batch was given up before a connection
                // was needed.
                match self.next_batch(id, generation.id, self.max_deliveries()).await {
                    Some(next) => {
                        batch = next;
                        continue;
                    }
                    None => break,
                }
            };
            // The whole batch passes the rate limit before anything of it is
            // written: a transaction buffered while a later one waits could
            // otherwise go out after its own send timeout.
            let mut admitted = Vec::with_capacity(batch.len());
            for job in batch {
                if let Some(limiter) = &self.limiter {
                    let mut stop = self.stop.subscribe();
                    let expired = sleep_until_expiry(job.expiry.as_deref(), self.config.send_timeout);
                    let waited = tokio::select! {
                        biased;
                        timeout = expired => Some(timeout),
                        _ = stop.wait_for(|s| *s) => Some(shutdown_error()),
                        _ = limiter.admit() => None,
                    };
                    if let Some(e) = waited {
                        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                        self.complete(job, Err(e));
                        continue;
                    }
                }
                admitted.push(job);
            }
            let now = Instant::now();
            let mut submitted = Vec::with_capacity(admitted.len());
            for mut job in admitted {
                if job.expiry.as_ref().is_some_and(|e| e.at <= now) {
                    // Its send timeout ran out while others waited: it was
                    // never written, and never will be.
                    self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    let timeout = self.config.send_timeout.unwrap_or_default();
                    self.complete(job, Err(queue_timeout(timeout)));
                    continue;
                }
                job.attempts += 1;
                let traced = trace::transaction(
                    &span,
                    job.attempts,
                    job.envelope.recipients().len(),
                    job.content.len(),
                );
                match open.conn.submit(job.envelope.clone(), job.content.clone()) {
                    Ok(tx) => {
                        open.deliveries += 1;
                        submitted.push((tx, job, traced));
                    }
                    Err(e) => {
                        let result = Err(e);
                        trace::transaction_done(traced, &result);
                        self.settle(job, result);
                    }
                }
            }
            open.conn
                .set_deadline(earliest_expiry(submitted.iter().map(|(_, job, _)| job)));
            let mut submitted = VecDeque::from(submitted);
            while let Some((tx, job, traced)) = submitted.pop_front() {
                let result = open.conn.outcome(tx).await;
                trace::transaction_done(traced, &result);
                self.settle(job, result);
                // The next outcome is bounded by the send timeouts still
                // running, not by those of jobs already answered.
                open.conn
                    .set_deadline(earliest_expiry(submitted.iter().map(|(_, job, _)| job)));
            }
            open.conn.set_deadline(None);
            open.last_used = Instant::now();
            // The current settings' cap (a reload may have lowered it), read
            // once for both decisions below.
            let cap = self.max_deliveries();
            let retire = if !open.conn.is_usable() {
                Some("broken")
            } else if !generation.manager.keep(&open.conn) {
                Some("primary relay due")
            } else if open.deliveries >= cap {
                Some("max deliveries")
            } else if self
                .config
                .max_age
                .is_some_and(|age| open.opened.elapsed() >= age)
            {
                Some("max age")
            } else {
                None
            };
            if let Some(reason) = retire {
                let done = conn.take().expect("connection");
                self.quit(done, &span, reason).await;
            }
            // At least 1: a kept connection carried fewer than `cap`.
            let remaining = cap.saturating_sub(conn.as_ref().map_or(0, |c| c.deliveries));
            match self.next_batch(id, generation.id, remaining).await {
                Some(next) => batch = next,
                None => break,
            }
        }
        if let Some(open) = conn.take() {
            self.quit(open, &span, "idle, reload or shutdown").await;
        }
        if probe {
            // Its jobs were given up before it connected: the probe is due
            // again, for the next worker.
            self.health.abandon_probe();
        }
        let mut st = self.lock();
        st.workers -= 1;
        st.aborts.remove(&id);
        self.dispatch(&mut st);
        drop(st);
        self.changed.notify_waiters();
    }

    async fn quit(&self, open: Open<M::Conn>, span: &trace::ConnSpan, reason: &'static str) {
        let deliveries = open.deliveries;
        if open.conn.is_usable() {
            open.conn.quit().await;
        }
        self.closed_connection(deliveries, span, reason);
    }

    fn closed_connection(&self, deliveries: usize, span: &trace::ConnSpan, reason: &'static str) {
        trace::closed(span, deliveries, reason);
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        *self.lock().deliveries_histogram.entry(deliveries).or_default() += 1;
    }

    /// Keeps the jobs of a batch that may start an attempt: those whose
    /// sender gave up at their send timeout are dropped, and those whose
    /// send timeout ran out while they waited are answered with it.
    fn take_for_attempt(self: &Arc<Self>, batch: Vec<Job>) -> Vec<Job> {
        let now = Instant::now();
        let mut kept = Vec::with_capacity(batch.len());
        for job in batch {
            match job.expiry.clone() {
                None => kept.push(job),
                Some(expiry) if !expiry.take() => {
                    // The sender already has its timeout error.
                    self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    self.changed.notify_waiters();
                }
                Some(expiry) if expiry.at <= now => {
                    self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    let timeout = self.config.send_timeout.unwrap_or_default();
                    self.complete(job, Err(queue_timeout(timeout)));
                }
                Some(_) => kept.push(job),
            }
        }
        kept
    }

    /// Decides what happens to a job after an attempt.
    fn settle(self: &Arc<Self>, mut job: Job, result: Result<Delivery, Error>) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(expiry) = &job.expiry {
            expiry.release();
        }
        let policy = &self.config.retry;
        match result {
            Ok(delivery) => {
                let reply = delivery.reply().clone();
                job.relay = delivery.relay().cloned();
                let again = if self.may_retry(&job) {
                    deferred_recipients(job.envelope.recipients(), delivery.recipients())
                } else {
                    Vec::new()
                };
                job.settled.extend(
                    delivery
                        .recipients()
                        .iter()
                        .filter(|r| !again.iter().any(|a| a.address == r.address))
                        .cloned(),
                );
                job.last_reply = Some(reply);
                // Empty: every recipient settled; the envelope keeps its list.
                if job.envelope.set_recipients(again).is_err() {
                    self.complete(job, Ok(()));
                } else {
                    self.defer(job);
                }
            }
            Err(e) => {
                // While the relay is down, a failed connection is not retried.
                let down = self.health.fail_fast(&e);
                if down.is_none() && policy.is_retryable(&e) && self.may_retry(&job) {
                    job.body_sent_before |= e.body_was_sent();
                    self.defer(job);
                } else if job.settled.iter().any(RecipientReply::accepted) {
                    // Some recipients got it on an earlier attempt: report
                    // the rest as failed with this error's reply.
                    let rest: Vec<RecipientReply> = job
                        .envelope
                        .recipients()
                        .iter()
                        .map(|r| RecipientReply {
                            address: r.address.clone(),
                            reply: e.reply().cloned(),
                        })
                        .collect();
                    job.settled.extend(rest);
                    self.complete(job, Ok(()));
                } else if job.body_sent_before && !e.body_was_sent() {
                    // The server may have the message from an earlier
                    // attempt: say so, whatever this last attempt's failure.
                    self.complete(job, Err(down.unwrap_or(e).after_body()));
                } else if let Some(down) = down {
                    // Failed by its own attempt: not counted as failed fast.
                    self.complete(job, Err(down));
                } else {
                    self.complete(job, Err(e));
                }
            }
        }
    }

    fn may_retry(&self, job: &Job) -> bool {
        let policy = &self.config.retry;
        job.attempts < policy.max_attempts
            && !*self.stop.borrow()
            && job
                .expiry
                .as_ref()
                .is_none_or(|e| Instant::now() + policy.backoff(job.attempts) < e.at)
            && policy
                .deadline
                .is_none_or(|d| job.handed_over.elapsed() + policy.backoff(job.attempts) <= d)
    }

    /// Waits out the back-off, then queues the job again (or fails it if the
    /// mailer stops meanwhile).
    fn defer(self: &Arc<Self>, job: Job) {
        self.counters.retried.fetch_add(1, Ordering::Relaxed);
        self.counters.deferred.fetch_add(1, Ordering::Relaxed);
        let wait = self.config.retry.backoff_with_jitter(job.attempts);
        let pool = self.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let stopped = tokio::select! {
                _ = tokio::time::sleep(wait) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            pool.counters.deferred.fetch_sub(1, Ordering::Relaxed);
            if stopped {
                pool.complete(job, Err(shutdown_error()));
            } else {
                pool.requeue(job);
            }
            pool.changed.notify_waiters();
        });
    }

    /// Answers the sender.
    fn complete(&self, job: Job, result: Result<(), Error>) {
        let Job {
            order,
            mut settled,
            last_reply,
            relay,
            attempts,
            body_sent_before,
            respond,
            ..
        } = job;
        let answer = match (result, last_reply) {
            (Ok(()), Some(reply)) => {
                settled.sort_by_key(|r| order.iter().position(|a| *a == r.address).unwrap_or(usize::MAX));
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(relay) = &relay {
                    let mut by_relay = self.counters.by_relay.lock().unwrap_or_else(|p| p.into_inner());
                    *by_relay.entry(relay.clone()).or_default() += 1;
                }
                if body_sent_before {
                    self.counters.possibly_duplicated.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Receipt {
                    delivery: Delivery::new(settled, reply).with_relay(relay),
                    attempts,
                    possibly_duplicated: body_sent_before,
                })
            }
            (Ok(()), None) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                Err(Error::protocol(None, "no final reply was recorded"))
            }
            (Err(e), _) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        };
        // The sender may have stopped waiting; the outcome still counts.
        let _ = respond.send(answer);
        self.changed.notify_waiters();
    }

    /// Forgets that the relay was marked down: the next transaction opens a
    /// connection at once.
    pub(crate) fn relay_up_again(&self) {
        self.health.reset();
    }

    /// New connections use `manager`; idle ones of older settings close; busy
    /// ones finish their batch on the old settings, then close. From now on
    /// a connection carries at most `max_deliveries` transactions.
    pub(crate) fn reload(self: &Arc<Self>, manager: M, max_deliveries: usize) {
        let mut st = self.lock();
        self.max_deliveries
            .store(max_deliveries.max(1), Ordering::Relaxed);
        let id = st.generation.id + 1;
        st.generation = Arc::new(Generation { id, manager });
        // New settings may name another relay, or fix what failed: whatever
        // was down is tried again.
        self.health.reset();
        let old: Vec<Idle> = st.idle.drain(..).collect();
        for idle in old {
            let _ = idle.wake.send(Wake::Close);
        }
        self.dispatch(&mut st);
    }

    /// The current manager.
    pub(crate) fn generation(&self) -> Arc<Generation<M>> {
        self.lock().generation.clone()
    }

    /// Stops accepting, waits for queued and deferred jobs until `deadline`,
    /// then fails what is left and closes every connection.
    pub(crate) async fn shutdown(self: &Arc<Self>, deadline: Instant) {
        self.lock().closed = true;
        self.space.close();
        // Drain.
        self.wait_until(deadline, || {
            !self.lock().queue.is_empty()
                || self.counters.in_flight.load(Ordering::Relaxed) > 0
                || self.counters.deferred.load(Ordering::Relaxed) > 0
        })
        .await;
        // Stop.
        // send_replace: the value must change even when nobody listens yet.
        self.stop.send_replace(true);
        let leftovers: Vec<Job> = {
            let mut st = self.lock();
            st.stopping = true;
            for idle in st.idle.drain(..) {
                let _ = idle.wake.send(Wake::Close);
            }
            st.queue.drain(..).collect()
        };
        for job in leftovers {
            self.complete(job, Err(shutdown_error()));
        }
        // Workers finish their batch and QUIT; one second past the deadline
        // (room for QUIT) those still busy are cut off, and their jobs
        // answered with a shutdown error.
        let grace = deadline.max(Instant::now()) + Duration::from_secs(1);
        let done = self
            .wait_until(grace, || {
                self.lock().workers > 0 || self.counters.deferred.load(Ordering::Relaxed) > 0
            })
            .await;
        if !done {
            let mut st = self.lock();
            for (_, handle) in st.aborts.drain() {
                handle.abort();
            }
            st.workers = 0;
            self.counters.open.store(0, Ordering::Relaxed);
            self.counters.in_flight.store(0, Ordering::Relaxed);
        }
    }

    /// Waits while `busy()` holds, re-checking whenever a job ends or a
    /// worker exits; `false` when `deadline` came first.
    async fn wait_until(&self, deadline: Instant, busy: impl Fn() -> bool) -> bool {
        loop {
            // Registered before the check, so no wake-up is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !busy() {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Counts a delivery that may have reached its recipients twice, found
    /// by the outbox (an attempt recorded in the draft failed after the
    /// body was sent).
    pub(crate) fn count_possible_duplicate(&self) {
        self.counters.possibly_duplicated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an outbox operation of the deliverer that failed.
    pub(crate) fn count_outbox_error(&self) {
        self.counters.outbox_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts drafts released by a reload.
    pub(crate) fn count_released(&self, n: usize) {
        self.counters
            .released_on_reload
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The mailer's send timeout.
    pub(crate) fn send_timeout(&self) -> Option<Duration> {
        self.config.send_timeout
    }

    /// Whether `shutdown` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub(crate) fn stats(&self) -> Stats {
        let st = self.lock();
        Stats {
            queued: st.queue.len(),
            in_flight: self.counters.in_flight.load(Ordering::Relaxed),
            deferred: self.counters.deferred.load(Ordering::Relaxed),
            offered: self.counters.offered.load(Ordering::Relaxed),
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            retried: self.counters.retried.load(Ordering::Relaxed),
            possibly_duplicated: self.counters.possibly_duplicated.load(Ordering::Relaxed),
            outbox_errors: self.counters.outbox_errors.load(Ordering::Relaxed),
            released_on_reload: self.counters.released_on_reload.load(Ordering::Relaxed),
            connections_open: self.counters.open.load(Ordering::Relaxed),
            connections_opened: self.counters.opened.load(Ordering::Relaxed),
            deliveries_per_connection: st.deliveries_histogram.iter().map(|(k, v)| (*k, *v)).collect(),
            failed_fast: self.counters.failed_fast.load(Ordering::Relaxed),
            delivered_by_relay: {
                let by_relay = self.counters.by_relay.lock().unwrap_or_else(|p| p.into_inner());
                let mut all: Vec<(Relay, u64)> = by_relay.iter().map(|(r, n)| (r.clone(), *n)).collect();
                all.sort_by_key(|(r, _)| (r.host().to_owned(), r.port()));
                all
            },
        }
    }
}

/// The earliest send timeout among `jobs`.
fn earliest_expiry<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Option<Instant> {
    jobs.into_iter()
        .filter_map(|j| j.expiry.as_ref().map(|e| e.at))
        .min()
}

/// Resolves with the queue-timeout error when `expiry` comes; never
/// without one.
async fn sleep_until_expiry(expiry: Option<&Expiry>, timeout: Option<Duration>) -> Error {
    match expiry {
        Some(e) => {
            tokio::time::sleep_until(e.at).await;
            queue_timeout(timeout.unwrap_or_default())
        }
        None => std::future::pending().await,
    }
}

struct Open<C> {
    conn: C,
    opened: Instant,
    last_used: Instant,
    deliveries: usize,
}
