//! The outbox deliverer: a background task that claims due drafts from an
//! [`Outbox`], sends them through the mailer and records each outcome. It
//! depends on the outbox; the outbox knows nothing of the mailer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};

use super::{trace, Inner, Mailer, Receipt};
use crate::error::Error;
use crate::outbox::{Claim, Deferral, Outbox, OutboxPolicy};
use crate::proto::session::{deferred_recipients, Envelope, Recipient};

/// What happens to a draft after an attempt ended with `result`.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Delivered to every recipient that will ever take it: remove.
    Done,
    /// Try again later, for these recipients only when given; `true` when
    /// the failure was a settings error ([`settings_error`]).
    Defer(String, Option<Vec<Recipient>>, bool),
    /// A settings error, but the settings were reloaded while the attempt
    /// ran (it may have used the old ones): due again at once, not waiting
    /// on the settings.
    Redo(String, Option<Vec<Recipient>>),
    /// Give up: move to the failed area.
    Fail(String),
    /// Not attempted (the mailer is stopping): leave it as it is.
    Release,
}

/// What happens to a draft for `envelope` whose attempt ended with
/// `result`: recipients that answered 4yz are owed another attempt, with
/// their DSN parameters.
pub(super) fn verdict(result: &Result<Receipt, Error>, envelope: &Envelope) -> Verdict {
    match result {
        Ok(receipt) => {
            let again = deferred_recipients(envelope.recipients(), receipt.recipients());
            if again.is_empty() {
                Verdict::Done
            } else {
                let why = receipt
                    .refused()
                    .find_map(|(_, r)| r.map(ToString::to_string))
                    .unwrap_or_else(|| "some recipients deferred".into());
                Verdict::Defer(why, Some(again), false)
            }
        }
        Err(e) => error_verdict(e),
    }
}

/// What happens to a draft whose attempt failed with `e`.
pub(super) fn error_verdict(e: &Error) -> Verdict {
    if e.is_shutdown() {
        Verdict::Release
    } else if (e.is_rejected() && e.is_permanent()) || e.is_too_large() || e.is_unsupported() {
        // Refused for good, or impossible as it is: no retry will help.
        Verdict::Fail(e.to_string())
    } else {
        // Offline relay, timeouts, 4yz, and invalid settings (TLS, AUTH,
        // configuration): the administrator may fix them; keep the draft.
        Verdict::Defer(e.to_string(), None, settings_error(e))
    }
}

/// Whether `e` is a settings error: a draft that failed with it waits for
/// the settings to be fixed ([`DraftInfo::waiting_on_settings`]) and a
/// reload releases it. Authentication (OAuth2 token rejected and needs
/// reauthorization included: both are auth errors), TLS and configuration
/// are; a 4yz reply, a timeout, an unreachable relay are not.
///
/// [`DraftInfo::waiting_on_settings`]: crate::outbox::DraftInfo::waiting_on_settings
pub(super) fn settings_error(e: &Error) -> bool {
    e.is_auth() || e.is_tls() || e.is_config()
}

/// The reloads' side of the outbox deliverer, shared by the mailer and its
/// deliverer: a release asked for, and how many reloads there were (an
/// attempt that started before a reload and failed on the settings is
/// tried again at once).
#[derive(Debug, Default)]
pub(super) struct Reloads {
    /// A release of the drafts waiting on the settings is owed.
    release: AtomicBool,
    /// Reloads so far.
    count: AtomicU64,
}

impl Reloads {
    /// Notes a reload (before its release runs).
    pub(super) fn reloaded(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// Asks the deliverer to release (it must be woken after).
    pub(super) fn ask_release(&self) {
        self.release.store(true, Ordering::Release);
    }

    fn epoch(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }
}

/// Releases the drafts waiting on the settings now (after a reload),
/// counts them in [`Stats::released_on_reload`](super::Stats::released_on_reload)
/// and wakes the deliverer. When the release fails, the deliverer is asked
/// to run it in the background instead, and the error returned.
pub(super) async fn release_now(
    inner: &Inner,
    spool: &dyn Outbox,
    reloads: &Reloads,
    wake: &Notify,
) -> Result<usize, Error> {
    let released = spool.release_waiting_on_settings().await;
    match &released {
        Ok(n) => inner.pool.count_released(*n),
        Err(_) => reloads.ask_release(),
    }
    wake.notify_one();
    released
}

/// The outbox deliverer: claims due drafts, sends them through the mailer,
/// and records each outcome in the spool. An outbox operation that fails is
/// counted ([`Stats::outbox_errors`](super::Stats::outbox_errors)) and
/// traced; the loop goes on after `poll_interval`. It ends when stopped or
/// when the mailer is gone.
pub(super) async fn deliver_drafts(
    mailer: Weak<Inner>,
    spool: Arc<dyn Outbox>,
    policy: OutboxPolicy,
    wake: Arc<Notify>,
    reloads: Arc<Reloads>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        // After a reload: the drafts that waited on the settings first.
        if reloads.release.swap(false, Ordering::AcqRel) {
            match spool.release_waiting_on_settings().await {
                Ok(n) => {
                    if let Some(inner) = mailer.upgrade() {
                        inner.pool.count_released(n);
                    }
                }
                Err(e) => {
                    // Owed still: tried again on the next round, after a
                    // claim or a pause.
                    reloads.ask_release();
                    failed(&mailer, "release_waiting_on_settings", &e);
                }
            }
        }
        let batch = policy.batch.max(1);
        let claims = match spool.claim_due(SystemTime::now(), batch).await {
            Ok(claims) => claims,
            Err(e) => {
                failed(&mailer, "claim_due", &e);
                // Not woken early: a broken store must not make this spin.
                if !pause(policy.poll_interval, None, None, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        if claims.is_empty() {
            let next = spool.next_due().await.unwrap_or_else(|e| {
                failed(&mailer, "next_due", &e);
                None
            });
            let wait = next
                .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
                .unwrap_or(policy.poll_interval)
                .min(policy.poll_interval);
            if !pause(wait, Some(&wake), Some(spool.wait_for_drafts()), &mut stop).await {
                return;
            }
            continue;
        }
        let Some(inner) = mailer.upgrade() else { return };
        let m = Mailer { inner };
        let epoch = reloads.epoch();
        let mut handed = Vec::with_capacity(claims.len());
        for claim in claims {
            let result = m.submit(claim.message()).await;
            handed.push((claim, result));
        }
        drop(m);
        let mut running = Vec::with_capacity(handed.len());
        for (mut claim, submitted) in handed {
            let (spool, policy, mailer) = (spool.clone(), policy.clone(), mailer.clone());
            let reloads = reloads.clone();
            running.push(tokio::spawn(async move {
                let result = match submitted {
                    Ok(pending) => pending.await,
                    Err(e) => Err(e),
                };
                let body_sent = match &result {
                    Ok(receipt) => receipt.possibly_duplicated(),
                    Err(e) => e.body_was_sent(),
                };
                if body_sent {
                    claim.mark_possibly_delivered();
                } else if result.is_ok() && claim.info().possibly_delivered {
                    // Delivered now after an earlier attempt (recorded in
                    // the draft) may have delivered it already.
                    if let Some(inner) = mailer.upgrade() {
                        inner.pool.count_possible_duplicate();
                    }
                }
                let mut verdict = verdict(&result, &claim.info().envelope);
                if let Verdict::Defer(why, recipients, true) = verdict {
                    verdict = if reloads.epoch() == epoch {
                        Verdict::Defer(why, recipients, true)
                    } else {
                        // Reloaded meanwhile: the attempt may have used
                        // the old settings, and the release may have run
                        // before this outcome: due again at once.
                        Verdict::Redo(why, recipients)
                    };
                }
                match record(spool.as_ref(), &policy, claim, verdict).await {
                    Ok(()) => true,
                    Err(e) => {
                        failed(&mailer, "record", &e);
                        false
                    }
                }
            }));
        }
        let mut all_recorded = true;
        for task in running {
            all_recorded &= task.await.unwrap_or(false);
        }
        // A draft whose outcome was not recorded is due again at once.
        if !all_recorded && !pause(policy.poll_interval, None, None, &mut stop).await {
            return;
        }
    }
}

/// Counts and traces an outbox operation of the deliverer that failed.
fn failed(mailer: &Weak<Inner>, operation: &'static str, error: &Error) {
    if let Some(inner) = mailer.upgrade() {
        inner.pool.count_outbox_error();
    }
    trace::outbox_failed(operation, error);
}

/// Waits `wait`, or less when `wake` is notified, the outbox announces
/// drafts (`announced`) or the mailer stops; `false` when the deliverer
/// should end (stopped, or the mailer is gone).
async fn pause(
    wait: Duration,
    wake: Option<&Notify>,
    announced: Option<crate::future::BoxFuture<'_, ()>>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let woken = async {
        match wake {
            Some(wake) => wake.notified().await,
            None => std::future::pending().await,
        }
    };
    let announced = async {
        match announced {
            Some(announced) => announced.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = woken => true,
        _ = announced => true,
        // Err: the mailer was dropped without `shutdown`.
        changed = stop.changed() => changed.is_ok() && !*stop.borrow(),
    }
}

/// `deferral`, for `recipients` only when given.
fn owed(deferral: Deferral, recipients: Option<Vec<Recipient>>) -> Deferral {
    match recipients {
        Some(r) => deferral.with_recipients(r),
        None => deferral,
    }
}

/// Writes the outcome of one attempt into the spool.
pub(super) async fn record(
    spool: &dyn Outbox,
    policy: &OutboxPolicy,
    claim: Claim,
    verdict: Verdict,
) -> Result<(), Error> {
    let now = SystemTime::now();
    match verdict {
        Verdict::Done => spool.complete(claim).await,
        Verdict::Fail(why) => spool.fail_claim(claim, &why).await,
        Verdict::Release => Ok(()),
        Verdict::Defer(why, _, _) | Verdict::Redo(why, _) if policy.too_old(claim.info().created, now) => {
            spool
                .fail_claim(claim, &format!("gave up after {:?}: {why}", policy.max_age))
                .await
        }
        Verdict::Defer(why, recipients, settings) => {
            let next = policy.next_attempt(claim.info().attempts + 1, now, crate::rand::random_unit());
            let deferral = Deferral::new(why, next).with_waiting_on_settings(settings);
            spool.defer_claim(claim, owed(deferral, recipients)).await
        }
        Verdict::Redo(why, recipients) => {
            spool
                .defer_claim(claim, owed(Deferral::new(why, now), recipients))
                .await
        }
    }
}
