//! The pool-wide rate limit: at most `n` messages in any window of length
//! `per`, from the first message on (no initial burst beyond `n`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most `messages` messages per `per`, across all connections.
///
/// The window slides: in any interval of length `per` at most `messages`
/// transactions start, including the very first interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Messages allowed per window (at least 1).
    pub messages: u32,
    /// The window.
    pub per: Duration,
}

impl RateLimit {
    /// `messages` per `per`.
    pub fn new(messages: u32, per: Duration) -> RateLimit {
        RateLimit { messages, per }
    }
}

/// Sliding-window log: the start times of the last `messages` admissions.
#[derive(Debug)]
pub(crate) struct Limiter {
    limit: RateLimit,
    starts: Mutex<VecDeque<Instant>>,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Limiter {
        Limiter {
            limit,
            // Grows as admissions come; a large limit allocates nothing up front.
            starts: Mutex::new(VecDeque::with_capacity((limit.messages as usize).clamp(1, 1024))),
        }
    }

    /// Admits one message at `now`, or says when to ask again.
    pub(crate) fn try_admit(&self, now: Instant) -> Result<(), Instant> {
        let cap = self.limit.messages.max(1) as usize;
        let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(&first) = starts.front() {
            if now.saturating_duration_since(first) >= self.limit.per {
                starts.pop_front();
            } else {
                break;
            }
        }
        if starts.len() < cap {
            starts.push_back(now);
            Ok(())
        } else {
            // Full: the oldest admission leaves the window at `first + per`.
            Err(starts[0] + self.limit.per)
        }
    }

    /// Waits until one message may start.
    pub(crate) async fn admit(&self) {
        loop {
            match self.try_admit(Instant::now()) {
                Ok(()) => return,
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_n_in_any_window() {
        let limiter = Limiter::new(RateLimit::new(3, Duration::from_secs(1)));
        let t0 = Instant::now();
        let mut admitted = Vec::new();
        for _ in 0..10 {
            limiter.admit().await;
            admitted.push(Instant::now() - t0);
        }
        // The first three at once, then one more each time one leaves the window.
        assert_eq!(&admitted[..3], &[Duration::ZERO; 3]);
        for w in admitted.windows(4) {
            assert!(w[3] - w[0] >= Duration::from_secs(1), "{admitted:?}");
        }
        assert_eq!(admitted[9], Duration::from_secs(3));
    }

    #[test]
    fn first_window_has_no_burst() {
        let limiter = Limiter::new(RateLimit::new(2, Duration::from_secs(10)));
        let now = Instant::now();
        assert!(limiter.try_admit(now).is_ok());
        assert!(limiter.try_admit(now).is_ok());
        assert_eq!(limiter.try_admit(now), Err(now + Duration::from_secs(10)));
        assert_eq!(
            limiter.try_admit(now + Duration::from_secs(9)),
            Err(now + Duration::from_secs(10))
        );
        assert!(limiter.try_admit(now + Duration::from_secs(10)).is_ok());
    }
}
