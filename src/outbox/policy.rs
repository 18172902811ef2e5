//! [`OutboxPolicy`]: when drafts are tried again, and when they give up.

use std::time::{Duration, SystemTime};

use crate::backoff;

/// When drafts are tried again, and when they give up.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OutboxPolicy {
    /// The wait after the first failed attempt. Default 30 s.
    pub initial_backoff: Duration,
    /// The longest wait between attempts. Default 1 hour.
    pub max_backoff: Duration,
    /// A draft older than this goes to the failed area after its next
    /// failure. Default 3 days.
    pub max_age: Duration,
    /// How often the spool is looked at when nothing wakes the deliverer.
    /// Default 5 s.
    pub poll_interval: Duration,
    /// Drafts claimed at a time. Default 64.
    pub batch: usize,
}

impl Default for OutboxPolicy {
    fn default() -> Self {
        OutboxPolicy {
            initial_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
            max_age: Duration::from_secs(3 * 24 * 3600),
            poll_interval: Duration::from_secs(5),
            batch: 64,
        }
    }
}

impl OutboxPolicy {
    /// Sets [`initial_backoff`](Self::initial_backoff).
    pub fn with_initial_backoff(mut self, initial_backoff: Duration) -> OutboxPolicy {
        self.initial_backoff = initial_backoff;
        self
    }

    /// Sets [`max_backoff`](Self::max_backoff).
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> OutboxPolicy {
        self.max_backoff = max_backoff;
        self
    }

    /// Sets [`max_age`](Self::max_age).
    pub fn with_max_age(mut self, max_age: Duration) -> OutboxPolicy {
        self.max_age = max_age;
        self
    }

    /// Sets [`poll_interval`](Self::poll_interval).
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> OutboxPolicy {
        self.poll_interval = poll_interval;
        self
    }

    /// Sets [`batch`](Self::batch).
    pub fn with_batch(mut self, batch: usize) -> OutboxPolicy {
        self.batch = batch;
        self
    }

    /// When a draft that has failed `attempts` times (≥ 1) is due again, for
    /// a failure at `now`: `initial_backoff × 2^(attempts-1)`, capped at
    /// `max_backoff`, scaled by `0.5 + unit` (jitter; `unit` in [0, 1)).
    pub(crate) fn next_attempt(&self, attempts: u32, now: SystemTime, unit: f64) -> SystemTime {
        let base = backoff::exponential(self.initial_backoff, 2.0, attempts, self.max_backoff);
        now + backoff::jitter(base, unit)
    }

    /// Whether a draft created at `created` is too old at `now`.
    pub fn too_old(&self, created: SystemTime, now: SystemTime) -> bool {
        now.duration_since(created).unwrap_or_default() > self.max_age
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn back_off_schedule_with_a_controlled_clock() {
        let p = OutboxPolicy {
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(100),
            ..OutboxPolicy::default()
        };
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let waits: Vec<u64> = (1..=6)
            .map(|a| {
                p.next_attempt(a, t0, 0.5)
                    .duration_since(t0)
                    .expect("later")
                    .as_secs()
            })
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 100, 100]);
        assert_eq!(
            p.next_attempt(1, t0, 0.0).duration_since(t0).expect("later"),
            Duration::from_secs(5)
        );
        assert!(p.next_attempt(1, t0, 0.999).duration_since(t0).expect("later") < Duration::from_secs(15));
        assert!(!p.too_old(t0, t0 + p.max_age));
        assert!(p.too_old(t0, t0 + p.max_age + Duration::from_secs(1)));
    }
}
