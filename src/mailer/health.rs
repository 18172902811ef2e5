//! Failing fast while the relay is down (Postfix's dead-destination rule).
//!
//! Each connection that cannot reach any relay counts as a failure; after
//! [`RelayDownPolicy::after_failures`] in a row the relay is marked down
//! for a back-off period. While it is down, queued and new messages fail at
//! once with the last connection error (a [`Mailer`](crate::Mailer) with an
//! outbox saves them as drafts at once instead). When the period is over,
//! one connection at a time (a probe, carrying real messages) tests
//! whether the relay is back: success ends the down state, failure starts
//! a longer period.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::transport::relay_unreachable as is_unreachable;

/// When the [`Mailer`](crate::Mailer) stops trying a relay that is down.
/// See [`MailerBuilder::relay_down`](crate::MailerBuilder::relay_down).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayDownPolicy {
    /// Connections in a row that could reach no relay (refused, timed out,
    /// unresolvable, 421/4yz at the greeting or EHLO) before the relay is
    /// marked down. 0: never marked down. Default 3.
    pub after_failures: u32,
    /// How long the relay stays down before a probe connection is tried.
    /// Doubles after each failed probe. Default 10 s.
    pub initial_backoff: Duration,
    /// The longest down period. Default 5 minutes.
    pub max_backoff: Duration,
}

impl Default for RelayDownPolicy {
    fn default() -> Self {
        RelayDownPolicy {
            after_failures: 3,
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl RelayDownPolicy {
    /// Never mark the relay down: every message runs its own retries.
    pub fn never() -> RelayDownPolicy {
        RelayDownPolicy {
            after_failures: 0,
            ..RelayDownPolicy::default()
        }
    }

    /// Sets [`after_failures`](RelayDownPolicy::after_failures).
    pub fn with_after_failures(mut self, n: u32) -> RelayDownPolicy {
        self.after_failures = n;
        self
    }

    /// Sets [`initial_backoff`](RelayDownPolicy::initial_backoff).
    pub fn with_initial_backoff(mut self, d: Duration) -> RelayDownPolicy {
        self.initial_backoff = d;
        self
    }

    /// Sets [`max_backoff`](RelayDownPolicy::max_backoff).
    pub fn with_max_backoff(mut self, d: Duration) -> RelayDownPolicy {
        self.max_backoff = d;
        self
    }
}

enum State {
    Up {
        failures: u32,
    },
    Down {
        until: Instant,
        period: Duration,
        error: Error,
    },
    Probing {
        period: Duration,
        error: Error,
    },
}

/// What the dispatcher may do about connecting now.
#[derive(Debug)]
pub(crate) enum Gate {
    /// Connect as usual.
    Open,
    /// Open one probe connection (the caller is now the probe).
    Probe,
    /// A probe is under way: wait for its outcome.
    Wait,
    /// Down: fail with this error at once.
    Closed(Error),
}

/// The relay's state, shared by the workers of one mailer.
pub(crate) struct Health {
    policy: RelayDownPolicy,
    state: Mutex<State>,
}

impl Health {
    pub(crate) fn new(policy: RelayDownPolicy) -> Health {
        Health {
            policy,
            state: Mutex::new(State::Up { failures: 0 }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn down_error(&self, error: &Error, left: Duration) -> Error {
        let why = format!(
            "the relay is marked down after {} failed connections in a row: messages fail at once until a probe connection, in {} s, finds it back",
            self.policy.after_failures,
            left.as_secs_f64().ceil()
        );
        let hint = match error.hint() {
            Some(h) => format!("{h}; {why}"),
            None => why,
        };
        error.clone().with_hint(hint)
    }

    /// Before opening a connection. `Probe` makes the caller the probe.
    pub(crate) fn gate(&self) -> Gate {
        let mut st = self.lock();
        match &*st {
            State::Up { .. } => Gate::Open,
            State::Probing { .. } => Gate::Wait,
            State::Down { until, period, error } => {
                let now = Instant::now();
                if now < *until {
                    return Gate::Closed(self.down_error(error, *until - now));
                }
                let (period, error) = (*period, error.clone());
                *st = State::Probing { period, error };
                Gate::Probe
            }
        }
    }

    /// Whether a message handed over now fails at once (the relay is down
    /// and no probe is due yet).
    pub(crate) fn refusal(&self) -> Option<Error> {
        match &*self.lock() {
            State::Down { until, error, .. } => {
                let now = Instant::now();
                (now < *until).then(|| self.down_error(error, *until - now))
            }
            _ => None,
        }
    }

    /// The probe ended without a connection attempt (its messages were
    /// given up first): the next connection may probe.
    pub(crate) fn abandon_probe(&self) {
        let mut st = self.lock();
        if let State::Probing { period, error } = &*st {
            let (period, error) = (*period, error.clone());
            *st = State::Down {
                until: Instant::now(),
                period,
                error,
            };
        }
    }

    /// A connection was opened: the relay is up.
    pub(crate) fn connected(&self) {
        self.reset();
    }

    /// Up, with no failure counted (new settings: the relay may be another
    /// one, or reachable now).
    pub(crate) fn reset(&self) {
        *self.lock() = State::Up { failures: 0 };
    }

    /// A connection failed with `error`. Returns the error to fail messages
    /// with at once when the relay is (now) down, else `None` (retry as
    /// usual).
    pub(crate) fn connect_failed(&self, error: &Error) -> Option<Error> {
        if self.policy.after_failures == 0 {
            return None;
        }
        let mut st = self.lock();
        if !is_unreachable(error) {
            // The relay answered: it is up, whatever else went wrong.
            *st = State::Up { failures: 0 };
            return None;
        }
        let now = Instant::now();
        let period = match &*st {
            State::Up { failures } if failures + 1 < self.policy.after_failures => {
                *st = State::Up {
                    failures: failures + 1,
                };
                return None;
            }
            State::Up { .. } => self.policy.initial_backoff,
            State::Probing { period, .. } => (*period * 2).min(self.policy.max_backoff),
            // Another connection, started before the relay was marked down,
            // failed too: the period stands.
            State::Down { until, period, .. } => {
                let (until, period) = (*until, *period);
                *st = State::Down {
                    until,
                    period,
                    error: error.clone(),
                };
                return Some(self.down_error(error, until.saturating_duration_since(now)));
            }
        };
        let period = period.min(self.policy.max_backoff).max(Duration::from_millis(1));
        *st = State::Down {
            until: now + period,
            period,
            error: error.clone(),
        };
        Some(self.down_error(error, period))
    }

    /// When `error` (a connection failure) should fail messages at once
    /// because the relay is down: the error to fail them with.
    pub(crate) fn fail_fast(&self, error: &Error) -> Option<Error> {
        if !is_unreachable(error) {
            return None;
        }
        match &*self.lock() {
            State::Down { until, .. } => {
                Some(self.down_error(error, until.saturating_duration_since(Instant::now())))
            }
            State::Probing { .. } => Some(self.down_error(error, Duration::ZERO)),
            State::Up { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Kind, Stage};

    fn refused() -> Error {
        Error::new(Kind::Io, Some(Stage::Connect), "cannot connect to 127.0.0.1:25")
            .with_hint("nothing is listening on port 25")
    }

    #[tokio::test(start_paused = true)]
    async fn down_after_failures_then_one_probe_at_a_time() {
        let h = Health::new(RelayDownPolicy::default());
        assert!(matches!(h.gate(), Gate::Open));
        assert!(h.connect_failed(&refused()).is_none());
        assert!(h.connect_failed(&refused()).is_none());
        let e = h.connect_failed(&refused()).expect("down after the third");
        let hint = e.hint().expect("hint");
        assert!(
            hint.starts_with("nothing is listening on port 25; the relay is marked down"),
            "{hint}"
        );
        assert!(h.refusal().is_some());
        assert!(matches!(h.gate(), Gate::Closed(_)));
        assert!(h.fail_fast(&refused()).is_some());

        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(h.refusal().is_none(), "a probe is due: messages wait for it");
        assert!(matches!(h.gate(), Gate::Probe));
        assert!(matches!(h.gate(), Gate::Wait), "one probe at a time");
        // A probe that never connected hands the probe on.
        h.abandon_probe();
        assert!(matches!(h.gate(), Gate::Probe));
        // The probe fails: down again, for twice as long.
        assert!(h.connect_failed(&refused()).is_some());
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(matches!(h.gate(), Gate::Closed(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(h.gate(), Gate::Probe));
        h.connected();
        assert!(matches!(h.gate(), Gate::Open));
        assert!(h.refusal().is_none() && h.fail_fast(&refused()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn only_unreachable_relays_count() {
        let h = Health::new(RelayDownPolicy::default().with_after_failures(2));
        assert!(h.connect_failed(&refused()).is_none());
        // An AUTH failure means the relay answered: the count starts over.
        let auth = Error::new(Kind::Auth, Some(Stage::Auth), "535");
        assert!(h.connect_failed(&auth).is_none());
        assert!(h.connect_failed(&refused()).is_none());
        let greeting_421 = Error::new(Kind::Io, Some(Stage::Greeting), "421 busy").transient(true);
        assert!(h.connect_failed(&greeting_421).is_some());

        let never = Health::new(RelayDownPolicy::never());
        for _ in 0..10 {
            assert!(never.connect_failed(&refused()).is_none());
        }
        assert!(matches!(never.gate(), Gate::Open));
    }
}
