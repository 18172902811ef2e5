//! Non-cryptographic randomness for jitter, Message-IDs and file names:
//! std's per-process random hash keys over a counter. Never used for
//! anything a stranger must not guess (attachment link names use
//! `getrandom`, sealing uses ring's `SystemRandom`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// A number that differs between calls and between processes.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A number in [0, 1).
pub(crate) fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}
