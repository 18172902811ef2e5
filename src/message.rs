//! A message ready to send: its SMTP envelope and its RFC 5322 bytes.

use std::sync::Arc;

use crate::address::{Address, AddressPolicy};
use crate::error::{Error, Kind};
use crate::proto::session::Envelope;

/// What a [`Mailer`](crate::Mailer) delivers: the SMTP envelope (who the
/// server is told the message is from and for) and the message itself
/// (headers and body, as bytes). The bytes are sent as given; line endings are
/// normalised to CRLF and lines dot-stuffed on the wire.
///
/// Cloning is cheap: the bytes are shared.
#[derive(Clone, Debug)]
pub struct Message {
    envelope: Envelope,
    content: Arc<[u8]>,
}

impl Message {
    /// A message with an explicit envelope.
    pub fn new(envelope: Envelope, content: impl Into<Arc<[u8]>>) -> Message {
        Message {
            envelope,
            content: content.into(),
        }
    }

    /// A message from raw RFC 5322 bytes, its envelope derived from the
    /// headers: the sender from `Sender:` (or else the first `From:`
    /// address), the recipients from `To:`, `Cc:` and `Bcc:` (each once). Any
    /// `Bcc:` header is removed from the bytes sent. Addresses are read under
    /// `policy`; to send from another address (the relay's authenticated
    /// one), rebuild with [`Message::new`] from [`Message::into_parts`].
    pub fn from_rfc5322(bytes: impl AsRef<[u8]>, policy: AddressPolicy) -> Result<Message, Error> {
        let bytes = bytes.as_ref();
        let parsed = mail_parser::MessageParser::new()
            .parse_headers(bytes)
            .ok_or_else(|| Error::config("the message has no parsable header section"))?;
        let addresses =
            |value: Option<&mail_parser::Address<'_>>, field: &str| -> Result<Vec<Address>, Error> {
                let mut out = Vec::new();
                for addr in value.into_iter().flat_map(|v| v.iter()) {
                    if let Some(a) = addr.address() {
                        out.push(
                            Address::parse(a, policy)
                                .map_err(|e| Error::new(Kind::Config, None, format!("{field}: {e}")))?,
                        );
                    }
                }
                Ok(out)
            };
        let sender = addresses(parsed.sender(), "Sender")?;
        let from = addresses(parsed.from(), "From")?;
        let envelope_from = sender
            .first()
            .or(from.first())
            .ok_or_else(|| Error::config("the message has no From address to send from"))?;
        let listed: Vec<Address> = addresses(parsed.to(), "To")?
            .into_iter()
            .chain(addresses(parsed.cc(), "Cc")?)
            .chain(addresses(parsed.bcc(), "Bcc")?)
            .collect();
        let recipients = crate::proto::address::unique_recipients(&listed);
        // Cut every Bcc field out of the header section.
        let mut content = Vec::with_capacity(bytes.len());
        let mut at = 0usize;
        for h in parsed.headers() {
            if matches!(h.name, mail_parser::HeaderName::Bcc) {
                let start = (h.offset_field as usize).min(bytes.len());
                let end = (h.offset_end as usize).min(bytes.len());
                content.extend_from_slice(&bytes[at..start]);
                at = end;
            }
        }
        content.extend_from_slice(&bytes[at..]);
        let envelope = Envelope::new(Some(envelope_from.clone()), recipients)?;
        envelope.validate()?;
        Ok(Message::new(envelope, content))
    }

    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The message bytes (headers and body).
    pub fn content(&self) -> &[u8] {
        &self.content
    }

    /// The envelope and the shared bytes.
    pub fn into_parts(self) -> (Envelope, Arc<[u8]>) {
        (self.envelope, self.content)
    }
}
