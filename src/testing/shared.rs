//! State shared by the accept task, the session tasks and the
//! [`TestServer`](super::TestServer) handle.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch};
use tokio_rustls::TlsAcceptor;

use super::{Action, CommandRecord, ReceivedMessage, ServerConfig, ServerEvent, SessionRecord, Trigger};

/// Capacity of the event channel.
const EVENT_CAPACITY: usize = 1024;

/// Counts the waiters watch.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Progress {
    /// Messages accepted.
    pub(super) messages: usize,
    /// Sessions ended.
    pub(super) closed: usize,
}

/// Records and counters, behind one lock.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) messages: Vec<ReceivedMessage>,
    pub(super) sessions: Vec<SessionRecord>,
    pub(super) open: usize,
    pub(super) peak: usize,
}

/// Everything the tasks of one server share.
pub(super) struct Shared {
    pub(super) config: ServerConfig,
    pub(super) acceptor: TlsAcceptor,
    state: Mutex<State>,
    pub(super) events: broadcast::Sender<ServerEvent>,
    pub(super) progress: watch::Sender<Progress>,
    /// Occurrences seen by each fault of `config.faults`.
    fault_hits: Vec<AtomicUsize>,
    /// Queue ids and nonces.
    counter: AtomicU64,
    /// Unpredictable per-server value for nonces.
    seed: u64,
    /// SCRAM salt, fixed for the server.
    pub(super) scram_salt: [u8; 16],
}

impl Shared {
    pub(super) fn new(config: ServerConfig, acceptor: TlsAcceptor, port: u16) -> Shared {
        let seed = seed(port);
        let digest = Sha256::new_with_prefix(seed.to_be_bytes())
            .chain_update(b"scram salt")
            .finalize();
        let mut scram_salt = [0u8; 16];
        scram_salt.copy_from_slice(&digest[..16]);
        let fault_hits = config.faults.iter().map(|_| AtomicUsize::new(0)).collect();
        Shared {
            config,
            acceptor,
            state: Mutex::new(State::default()),
            events: broadcast::channel(EVENT_CAPACITY).0,
            progress: watch::channel(Progress::default()).0,
            fault_hits,
            counter: AtomicU64::new(0),
            seed,
            scram_salt,
        }
    }

    /// The state; a panic elsewhere while holding the lock does not make the
    /// records unreadable.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, event: ServerEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// Registers a new connection and returns its session number.
    pub(super) fn open_session(&self, peer: Option<std::net::SocketAddr>) -> usize {
        let id = {
            let mut state = self.lock();
            let id = state.sessions.len();
            state.sessions.push(SessionRecord {
                id,
                peer,
                helo: None,
                tls: false,
                auth_user: None,
                auth_mechanism: None,
                commands: Vec::new(),
                messages: 0,
                quit: false,
                closed: false,
                discarded_after_starttls: 0,
                client_certificate: None,
                tls_error: None,
            });
            state.open += 1;
            state.peak = state.peak.max(state.open);
            id
        };
        self.emit(ServerEvent::Connected { session: id });
        id
    }

    /// Marks a session ended.
    pub(super) fn close_session(&self, id: usize) {
        {
            let mut state = self.lock();
            match state.sessions.get_mut(id) {
                Some(record) if !record.closed => record.closed = true,
                _ => return,
            }
            state.open = state.open.saturating_sub(1);
        }
        self.emit(ServerEvent::Closed { session: id });
        self.progress.send_modify(|p| p.closed += 1);
    }

    /// Changes a session record.
    pub(super) fn update_session(&self, id: usize, change: impl FnOnce(&mut SessionRecord)) {
        if let Some(record) = self.lock().sessions.get_mut(id) {
            change(record);
        }
    }

    /// Records a command line; announces it when `verb` is given.
    pub(super) fn record_command(&self, id: usize, record: CommandRecord, verb: Option<String>) {
        self.update_session(id, |session| session.commands.push(record));
        if let Some(verb) = verb {
            self.emit(ServerEvent::Command { session: id, verb });
        }
    }

    /// Records an accepted message.
    pub(super) fn accept_message(&self, message: ReceivedMessage) {
        let (session, queue_id) = (message.session, message.queue_id.clone());
        {
            let mut state = self.lock();
            if let Some(record) = state.sessions.get_mut(session) {
                record.messages += 1;
            }
            state.messages.push(message);
        }
        self.emit(ServerEvent::MessageAccepted { session, queue_id });
        self.progress.send_modify(|p| p.messages += 1);
    }

    fn next_count(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A new queue id, unique within the server.
    pub(super) fn queue_id(&self) -> String {
        format!("RM{:08X}", self.next_count())
    }

    /// A fresh nonce: printable ASCII without ',' (base64 of a hash of the
    /// server seed and a counter).
    pub(super) fn nonce(&self) -> String {
        let count = self.next_count();
        let digest = Sha256::new_with_prefix(self.seed.to_be_bytes())
            .chain_update(count.to_be_bytes())
            .finalize();
        let mut nonce = STANDARD.encode(&digest[..18]);
        nonce.push_str(&count.to_string());
        nonce
    }

    /// A CRAM-MD5 challenge `<random.counter@relaymail-test>`.
    pub(super) fn cram_challenge(&self) -> String {
        let count = self.next_count();
        let digest = Sha256::new_with_prefix(self.seed.to_be_bytes())
            .chain_update(count.to_be_bytes())
            .finalize();
        let mut random = [0u8; 8];
        random.copy_from_slice(&digest[..8]);
        format!("<{}.{count}@relaymail-test>", u64::from_be_bytes(random))
    }

    /// Counts an occurrence of `trigger` for every fault that listens to it
    /// and returns the delay and action of the first one that fires.
    pub(super) fn fire(&self, trigger: &Trigger) -> Option<(Option<Duration>, Action)> {
        let mut fired = None;
        for (fault, hits) in self.config.faults.iter().zip(&self.fault_hits) {
            if fault.trigger != *trigger {
                continue;
            }
            let occurrence = hits.fetch_add(1, Ordering::SeqCst) + 1;
            if fired.is_none() && fault.nth.is_none_or(|n| n == occurrence) {
                fired = Some((fault.delay, fault.action.clone()));
            }
        }
        fired
    }
}

/// A per-server value nobody can predict: std's randomly keyed hasher over
/// the time and the port.
fn seed(port: u16) -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.write_u16(port);
    hasher.write_u32(std::process::id());
    hasher.finish()
}
