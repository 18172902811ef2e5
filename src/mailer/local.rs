//! The pool's "connection" to a file or memory destination
//! ([`crate::dev`]): no network, the same `Conn` contract as an SMTP
//! connection.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::dev::{Destination, SentMessage};
use crate::error::{Error, Kind};
use crate::proto::reply::{Reply, ReplyCode};
use crate::proto::session::{Envelope, RecipientReply, TxId};
use crate::transport::Delivery;

/// A "connection" to a file or memory destination, for the Mailer's pool.
pub(crate) struct LocalConn {
    destination: Destination,
    next: u64,
    queued: VecDeque<(TxId, Envelope, Arc<[u8]>)>,
}

impl LocalConn {
    pub(crate) fn open(destination: Destination) -> Result<LocalConn, Error> {
        if let Destination::File(dir) = &destination {
            crate::fsutil::create_private_dir(dir).map_err(|e| {
                Error::new(
                    Kind::Io,
                    Some(crate::error::Stage::Connect),
                    format!("cannot create the mail directory {}", dir.display()),
                )
                .with_source(e)
            })?;
        }
        Ok(LocalConn {
            destination,
            next: 0,
            queued: VecDeque::new(),
        })
    }

    pub(crate) fn submit(&mut self, envelope: Envelope, content: Arc<[u8]>) -> Result<TxId, Error> {
        let id = TxId::nth(self.next);
        self.next += 1;
        self.queued.push_back((id, envelope, content));
        Ok(id)
    }

    pub(crate) async fn outcome(&mut self, id: TxId) -> Result<Delivery, Error> {
        let position = self
            .queued
            .iter()
            .position(|(queued, _, _)| *queued == id)
            .ok_or_else(|| Error::config("no such transaction on this connection"))?;
        let (_, envelope, content) = self.queued.remove(position).expect("found above");
        let note = match &self.destination {
            Destination::Memory(inbox) => {
                inbox.record(SentMessage::new(envelope.clone(), content));
                format!("2.0.0 recorded in memory inbox {}", inbox.name())
            }
            Destination::File(dir) => {
                let dir = dir.clone();
                let env = envelope.clone();
                let path = tokio::task::spawn_blocking(move || write_files(&dir, &env, &content))
                    .await
                    .map_err(|e| Error::new(Kind::Io, Some(crate::error::Stage::Data), e.to_string()))??;
                format!("2.0.0 written to {}", path.display())
            }
            Destination::Relay => return Err(Error::config("the relay is not a local destination")),
        };
        let ok = ReplyCode::new(250).expect("250 is a reply code");
        let recipients = envelope
            .recipients()
            .iter()
            .map(|r| RecipientReply {
                address: r.address.clone(),
                reply: Some(Reply::new(ok, vec!["2.1.5 OK".into()])),
            })
            .collect();
        Ok(Delivery::new(recipients, Reply::new(ok, vec![note])))
    }
}

/// Writes `{id}.json` then `{id}.eml` into `dir`, each atomically; returns
/// the `.eml` path.
fn write_files(dir: &Path, envelope: &Envelope, content: &[u8]) -> Result<PathBuf, Error> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let id = format!("{:013}-{:016x}", now.as_millis(), crate::rand::random_u64());
    let mut json = format!(
        "{{\"id\":{},\"from\":{},\"to\":[",
        json_string(&id),
        json_string(&envelope.reverse_path())
    );
    for (i, r) in envelope.recipients().iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&json_string(&r.address.to_smtp()));
    }
    json.push_str("]}\n");
    let eml = dir.join(format!("{id}.eml"));
    for (path, bytes) in [
        (dir.join(format!("{id}.json")), json.as_bytes()),
        (eml.clone(), content),
    ] {
        let tmp = dir.join(format!(".{id}.tmp"));
        crate::fsutil::write_atomic(&tmp, &path, bytes, None).map_err(|e| {
            Error::new(
                Kind::Io,
                Some(crate::error::Stage::Data),
                format!("{} {}", e.step, e.path.display()),
            )
            .with_source(e.error)
        })?;
    }
    Ok(eml)
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_what_json_needs() {
        assert_eq!(json_string("a\"b\\c\nd"), "\"a\\\"b\\\\c\\u000ad\"");
        assert_eq!(json_string("josé"), "\"josé\"");
    }
}
