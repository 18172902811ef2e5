//! Exponential back-off with jitter, shared by the mailer's
//! [`RetryPolicy`](crate::RetryPolicy) and the outbox's
//! [`OutboxPolicy`](crate::outbox::OutboxPolicy).

use std::time::Duration;

/// The wait after `attempt` failed attempts (≥ 1; 0 counts as 1):
/// `initial × multiplier^(attempt-1)` (a multiplier below 1 counts as 1),
/// capped at `max`.
pub(crate) fn exponential(initial: Duration, multiplier: f64, attempt: u32, max: Duration) -> Duration {
    let exp = multiplier.max(1.0).powi(attempt.saturating_sub(1).min(64) as i32);
    let secs = initial.as_secs_f64() * exp;
    if !secs.is_finite() || secs >= max.as_secs_f64() {
        max
    } else {
        Duration::from_secs_f64(secs)
    }
}

/// `base` scaled by a factor in [0.5, 1.5) chosen by `unit` in [0, 1).
pub(crate) fn jitter(base: Duration, unit: f64) -> Duration {
    base.mul_f64(0.5 + unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_the_multiplier_and_is_capped() {
        let waits: Vec<_> = (0..=6)
            .map(|a| exponential(Duration::from_millis(100), 3.0, a, Duration::from_secs(5)))
            .collect();
        assert_eq!(
            waits,
            [100, 100, 300, 900, 2700, 5000, 5000]
                .map(Duration::from_millis)
                .to_vec()
        );
        let huge = Duration::from_secs(u64::MAX);
        assert_eq!(exponential(Duration::from_secs(1), 2.0, u32::MAX, huge), huge);
        // A multiplier below 1 never shrinks the wait.
        let d = Duration::from_secs(7);
        assert_eq!(exponential(d, 0.5, 4, Duration::from_secs(60)), d);
    }

    #[test]
    fn jitter_stays_within_half_either_side() {
        let base = Duration::from_secs(10);
        assert_eq!(jitter(base, 0.0), Duration::from_secs(5));
        assert_eq!(jitter(base, 0.5), base);
        assert!(jitter(base, 0.999_999) < Duration::from_secs(15));
        assert_eq!(jitter(base, 7.0), Duration::from_secs(15), "clamped");
    }
}
