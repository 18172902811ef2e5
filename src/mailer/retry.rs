//! Which failures are tried again, and when.

use std::time::Duration;

use crate::backoff;
use crate::Error;

/// How transient failures are retried.
///
/// Retried: 4yz replies, connection failures, timeouts, a connection lost
/// before the server's verdict. Never retried: 5yz replies, invalid settings
/// or input, refused logins, certificate failures. Each retry waits
/// `initial_backoff × multiplier^(n-1)` (capped at `max_backoff`) with ±50 %
/// random jitter, on a new connection.
///
/// **At-least-once or at-most-once**: when the final reply times out, or the
/// connection is lost after the whole message was sent but before that
/// reply, the server may already have accepted the message.
///
/// - With `retry_after_body_sent` on (the default, at-least-once) the
///   message is sent again: nothing is lost, but a recipient may get it
///   twice. A message delivered that way says so:
///   [`Receipt::possibly_duplicated`](crate::Receipt::possibly_duplicated)
///   is true, and [`Stats::possibly_duplicated`](crate::Stats::possibly_duplicated)
///   counts it.
/// - With it off (at-most-once) such a message is not sent again: the
///   error says [`body_was_sent`](Error::body_was_sent), and the message
///   may or may not have arrived.
///
/// A failure after the body when a retry then fails too also ends with
/// [`body_was_sent`](Error::body_was_sent): the earlier copy may be there.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (1 = never retry). Default 5.
    pub max_attempts: u32,
    /// The wait before the first retry. Default 1 s.
    pub initial_backoff: Duration,
    /// The longest wait between attempts. Default 60 s.
    pub max_backoff: Duration,
    /// Growth of the wait per attempt. Default 2.
    pub multiplier: f64,
    /// No retry starts later than this after the message was handed over
    /// (`None`: no deadline). Default 10 minutes.
    pub deadline: Option<Duration>,
    /// Retry when the final reply timed out or the connection was lost after
    /// the body was sent: at-least-once (true, the default) or at-most-once
    /// (false) for such messages. See the type docs.
    pub retry_after_body_sent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            deadline: Some(Duration::from_secs(600)),
            retry_after_body_sent: true,
        }
    }
}

impl RetryPolicy {
    /// Sets [`max_attempts`](Self::max_attempts).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> RetryPolicy {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets [`initial_backoff`](Self::initial_backoff).
    pub fn with_initial_backoff(mut self, initial_backoff: Duration) -> RetryPolicy {
        self.initial_backoff = initial_backoff;
        self
    }

    /// Sets [`max_backoff`](Self::max_backoff).
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> RetryPolicy {
        self.max_backoff = max_backoff;
        self
    }

    /// Sets [`multiplier`](Self::multiplier).
    pub fn with_multiplier(mut self, multiplier: f64) -> RetryPolicy {
        self.multiplier = multiplier;
        self
    }

    /// Sets [`deadline`](Self::deadline).
    pub fn with_deadline(mut self, deadline: Option<Duration>) -> RetryPolicy {
        self.deadline = deadline;
        self
    }

    /// Sets [`retry_after_body_sent`](Self::retry_after_body_sent).
    pub fn with_retry_after_body_sent(mut self, retry: bool) -> RetryPolicy {
        self.retry_after_body_sent = retry;
        self
    }

    /// Never retry.
    pub fn never() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Whether this failure may succeed on another attempt.
    pub fn is_retryable(&self, error: &Error) -> bool {
        error.is_transient() && (self.retry_after_body_sent || !error.body_was_sent())
    }

    /// The wait before attempt `attempt + 1`, after `attempt` attempts (≥ 1),
    /// without jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff::exponential(self.initial_backoff, self.multiplier, attempt, self.max_backoff)
    }

    /// [`backoff`](RetryPolicy::backoff) with ±50 % jitter, so that messages
    /// that failed together do not all come back together.
    pub(crate) fn backoff_with_jitter(&self, attempt: u32) -> Duration {
        backoff::jitter(self.backoff(attempt), crate::rand::random_unit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let waits: Vec<_> = (1..=6).map(|a| p.backoff(a)).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1000, 1000]
                .map(Duration::from_millis)
                .to_vec()
        );
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_half_either_side() {
        let p = RetryPolicy::default();
        let samples: Vec<_> = (0..200).map(|_| p.backoff_with_jitter(3)).collect();
        assert!(samples
            .iter()
            .all(|d| *d >= Duration::from_secs(2) && *d < Duration::from_secs(6)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 100, "jitter varies");
    }

    #[test]
    fn what_is_retried() {
        use crate::error::{Kind, Stage};
        let p = RetryPolicy::default();
        let timeout = Error::new(Kind::Timeout, Some(Stage::EndOfData), "t");
        assert!(p.is_retryable(&timeout));
        assert!(p.is_retryable(&timeout.clone().after_body()));
        let at_most_once = RetryPolicy {
            retry_after_body_sent: false,
            ..RetryPolicy::default()
        };
        assert!(!at_most_once.is_retryable(&timeout.after_body()));
        assert!(!p.is_retryable(&Error::config("bad")));
    }
}
