//! A message ready to send: its SMTP envelope and its RFC 5322 bytes.

use std::sync::Arc;

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
