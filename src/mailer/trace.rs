//! Spans for the `tracing` feature: one per connection, one per transaction
//! attempt, with the stage and reply code of failures and the timing; an
//! event for each outbox operation of the deliverer that failed.
//!
//! Only what is listed here is ever recorded: addresses are not, commands are
//! not, AUTH exchanges and secrets are not. Without the feature every
//! function is empty and compiles away.

use crate::error::Error;
use crate::transport::{ConnectionInfo, Delivery};

#[cfg(feature = "tracing")]
mod imp {
    use std::time::Instant;

    use tracing::field::Empty;

    use super::*;

    #[derive(Clone, Debug)]
    pub(crate) struct ConnSpan(tracing::Span);

    pub(crate) struct TxSpan {
        span: tracing::Span,
        started: Instant,
    }

    pub(crate) fn connection(worker: u64, generation: u64) -> ConnSpan {
        ConnSpan(tracing::debug_span!(
            "relaymail.connection",
            worker,
            generation,
            peer = Empty,
            relay = Empty,
            tls = Empty,
            auth = Empty,
            deliveries = Empty,
        ))
    }

    pub(crate) fn connected(span: &ConnSpan, info: Option<&ConnectionInfo>) {
        if let Some(info) = info {
            span.0.record("peer", tracing::field::display(info.peer));
            span.0.record("relay", tracing::field::display(&info.relay));
            let tls = info.tls.as_ref().map_or("none", |t| t.version.as_str());
            span.0.record("tls", tls);
            span.0
                .record("auth", info.auth_mechanism.map_or("none", |m| m.name()));
        }
        tracing::debug!(parent: &span.0, "connected");
    }

    pub(crate) fn connect_failed(span: &ConnSpan, error: &Error) {
        tracing::warn!(
            parent: &span.0,
            stage = error.stage().map_or("", |s| s.as_str()),
            code = error.reply().map_or(0, |r| r.code().value()),
            transient = error.is_transient(),
            error = %error,
            "connection failed"
        );
    }

    pub(crate) fn closed(span: &ConnSpan, deliveries: usize, reason: &'static str) {
        span.0.record("deliveries", deliveries);
        tracing::debug!(parent: &span.0, deliveries, reason, "connection closed");
    }

    pub(crate) fn transaction(span: &ConnSpan, attempt: u32, recipients: usize, bytes: usize) -> TxSpan {
        TxSpan {
            span: tracing::debug_span!(
                parent: &span.0,
                "relaymail.transaction",
                attempt,
                recipients,
                bytes,
                code = Empty,
                elapsed_ms = Empty,
            ),
            started: Instant::now(),
        }
    }

    pub(crate) fn outbox_failed(operation: &'static str, error: &Error) {
        tracing::warn!(operation, error = %error, "outbox operation failed");
    }

    pub(crate) fn transaction_done(tx: TxSpan, result: &Result<Delivery, Error>) {
        let elapsed_ms = tx.started.elapsed().as_secs_f64() * 1000.0;
        tx.span.record("elapsed_ms", elapsed_ms);
        match result {
            Ok(d) => {
                tx.span.record("code", d.reply().code().value());
                let refused = d.refused().count();
                tracing::debug!(parent: &tx.span, code = d.reply().code().value(), refused, elapsed_ms, "delivered");
            }
            Err(e) => {
                let code = e.reply().map_or(0, |r| r.code().value());
                tx.span.record("code", code);
                tracing::warn!(
                    parent: &tx.span,
                    stage = e.stage().map_or("", |s| s.as_str()),
                    code,
                    transient = e.is_transient(),
                    body_sent = e.body_was_sent(),
                    elapsed_ms,
                    error = %e,
                    "transaction failed"
                );
            }
        }
    }
}

#[cfg(not(feature = "tracing"))]
mod imp {
    use super::*;

    #[derive(Clone, Debug)]
    pub(crate) struct ConnSpan;

    pub(crate) struct TxSpan;

    pub(crate) fn connection(_worker: u64, _generation: u64) -> ConnSpan {
        ConnSpan
    }

    pub(crate) fn connected(_span: &ConnSpan, _info: Option<&ConnectionInfo>) {}

    pub(crate) fn connect_failed(_span: &ConnSpan, _error: &Error) {}

    pub(crate) fn closed(_span: &ConnSpan, _deliveries: usize, _reason: &'static str) {}

    pub(crate) fn transaction(_span: &ConnSpan, _attempt: u32, _recipients: usize, _bytes: usize) -> TxSpan {
        TxSpan
    }

    pub(crate) fn outbox_failed(_operation: &'static str, _error: &Error) {}

    pub(crate) fn transaction_done(_tx: TxSpan, _result: &Result<Delivery, Error>) {}
}

pub(crate) use imp::*;
