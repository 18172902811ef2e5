//! The outbox deliverer: a background task that claims due drafts from an
//! [`Outbox`], sends them through the mailer and records each outcome. It
//! depends on the outbox; the outbox knows nothing of the mailer.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};

use super::{trace, Inner, Mailer, Receipt};
use crate::error::Error;
use crate::outbox::{Claim, Outbox, OutboxPolicy};
use crate::proto::session::{deferred_recipients, Envelope, Recipient};

/// What happens to a draft after an attempt ended with `result`.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Delivered to every recipient that will ever take it: remove.
    Done,
    /// Try again later, for these recipients only when given.
    Defer(String, Option<Vec<Recipient>>),
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
                Verdict::Defer(why, Some(again))
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
        Verdict::Defer(e.to_string(), None)
    }
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
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
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
        let mut handed = Vec::with_capacity(claims.len());
        for claim in claims {
            let result = m.submit(claim.message()).await;
            handed.push((claim, result));
        }
        drop(m);
        let mut running = Vec::with_capacity(handed.len());
        for (mut claim, submitted) in handed {
            let (spool, policy, mailer) = (spool.clone(), policy.clone(), mailer.clone());
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
                let verdict = verdict(&result, &claim.info().envelope);
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
        Verdict::Defer(why, recipients) => {
            if policy.too_old(claim.info().created, now) {
                spool
                    .fail_claim(claim, &format!("gave up after {:?}: {why}", policy.max_age))
                    .await
            } else {
                let next = policy.next_attempt(claim.info().attempts + 1, now, crate::rand::random_unit());
                spool.defer_claim(claim, &why, next, recipients).await
            }
        }
    }
}
