//! What an administrator decides about the mail itself, beside the relay:
//! redirect to report addresses ([`Redirect`]) and the attachment size
//! limit ([`AttachmentLimit`]). Part of [`SmtpSettings`](super::SmtpSettings),
//! so a saved profile keeps them and a following [`Mailer`](crate::Mailer)
//! applies them on reload.

use std::sync::Arc;

use crate::error::Error;
use crate::mailer::ORIGINAL_RECIPIENTS_HEADER;
use crate::proto::address::Address;
use crate::proto::session::{Envelope, Recipient};

/// The default of [`SmtpSettingsBuilder::max_deliveries_per_connection`](super::SmtpSettingsBuilder::max_deliveries_per_connection).
pub const DEFAULT_MAX_DELIVERIES_PER_CONNECTION: usize = 20;

/// The largest value [`SmtpSettingsBuilder::max_deliveries_per_connection`](super::SmtpSettingsBuilder::max_deliveries_per_connection)
/// accepts.
pub const MAX_DELIVERIES_PER_CONNECTION: usize = 100_000;

/// A report address for [`Redirect`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[non_exhaustive]
pub struct ReportAddress {
    /// The mailbox.
    pub address: Address,
    /// Whether redirected mail goes to it (absent in stored data: true).
    #[cfg_attr(feature = "serde", serde(default = "enabled_by_default"))]
    pub enabled: bool,
}

#[cfg(feature = "serde")]
fn enabled_by_default() -> bool {
    true
}

/// Redirect mode: send every message only to report addresses (testing and
/// staging setups), keeping the original recipients in an
/// `X-Relaymail-Original-Recipients` header. Set with
/// [`SmtpSettingsBuilder::redirect`](super::SmtpSettingsBuilder::redirect).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[non_exhaustive]
pub struct Redirect {
    /// Whether redirect is on.
    #[cfg_attr(feature = "serde", serde(default))]
    pub enabled: bool,
    /// The report addresses, each enabled or not.
    #[cfg_attr(feature = "serde", serde(default))]
    pub addresses: Vec<ReportAddress>,
}

impl ReportAddress {
    /// An enabled report address.
    pub fn new(address: Address) -> ReportAddress {
        ReportAddress {
            address,
            enabled: true,
        }
    }

    /// The same address, enabled or not.
    pub fn with_enabled(mut self, enabled: bool) -> ReportAddress {
        self.enabled = enabled;
        self
    }
}

impl Redirect {
    /// Redirect switched on or off, with these report addresses (each
    /// enabled or not).
    pub fn new(enabled: bool, addresses: Vec<ReportAddress>) -> Redirect {
        Redirect { enabled, addresses }
    }

    /// Redirect switched on, to these addresses (all enabled).
    pub fn to(addresses: impl IntoIterator<Item = Address>) -> Redirect {
        Redirect {
            enabled: true,
            addresses: addresses.into_iter().map(ReportAddress::new).collect(),
        }
    }

    /// Whether this is the default: off, without report addresses.
    pub fn is_default(&self) -> bool {
        *self == Redirect::default()
    }

    fn targets(&self) -> impl Iterator<Item = &Address> {
        self.addresses.iter().filter(|a| a.enabled).map(|a| &a.address)
    }

    /// Report addresses are valid by type; what is left to check is that
    /// redirect on has somewhere to send.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        (self.enabled && self.targets().next().is_none()).then_some(
            "redirect is on but no report address is enabled; refusing to send to the real recipients: enable a report address, or switch redirect off",
        )
    }

    /// Rewrites the envelope to the report addresses and records the
    /// original recipients in a header.
    pub(crate) fn apply(&self, envelope: &mut Envelope, content: &mut Arc<[u8]>) -> Result<(), Error> {
        if let Some(problem) = self.problem() {
            return Err(Error::config(problem).with_hint("enable a report address, or switch redirect off"));
        }
        let originals: Vec<String> = envelope
            .recipients()
            .iter()
            .map(|r| r.address.to_smtp())
            .collect();
        let mut header = format!("{ORIGINAL_RECIPIENTS_HEADER}:");
        let mut line_len = header.len();
        for (i, addr) in originals.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            // Fold long lists (RFC 5322 §2.2.3); addresses were validated:
            // no CR, LF or other control bytes can reach the header.
            if line_len + sep.len() + 1 + addr.len() > 76 && i > 0 {
                header.push_str(sep);
                header.push_str("\r\n ");
                line_len = 1;
            } else {
                header.push_str(sep);
                header.push(' ');
                line_len += sep.len() + 1;
            }
            header.push_str(addr);
            line_len += addr.len();
        }
        header.push_str("\r\n");
        let mut bytes = Vec::with_capacity(header.len() + content.len());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(content);
        *content = bytes.into();
        envelope.set_recipients(self.targets().cloned().map(Recipient::new).collect())?;
        Ok(())
    }
}

/// The attachment size limit of [`Email`](crate::Email)s sent through a
/// [`Mailer`](crate::Mailer): attachments larger than `max_size` bytes are
/// refused, or (with `links`) stored and replaced by download links. The
/// store that keeps them is the application's, not a setting:
/// [`MailerBuilder::attachment_store`](crate::MailerBuilder::attachment_store);
/// settings asking for links on a mailer without a store are refused by
/// [`MailerBuilder::build`](crate::MailerBuilder::build) and
/// [`Mailer::reload`](crate::Mailer::reload).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[non_exhaustive]
pub struct AttachmentLimit {
    /// Attachments larger than this many bytes are refused or linked;
    /// `None`: no limit (the server's SIZE still applies).
    #[cfg_attr(feature = "serde", serde(default))]
    pub max_size: Option<u64>,
    /// Whether attachments over the limit are sent as links (true) or the
    /// email is refused (false).
    #[cfg_attr(feature = "serde", serde(default))]
    pub links: bool,
}

impl AttachmentLimit {
    /// No limit (the default).
    pub fn none() -> AttachmentLimit {
        AttachmentLimit::default()
    }

    /// Refuse emails with an attachment over `max_size` bytes.
    pub fn refuse_above(max_size: u64) -> AttachmentLimit {
        AttachmentLimit {
            max_size: Some(max_size),
            links: false,
        }
    }

    /// Send attachments over `max_size` bytes as links (the mailer needs an
    /// attachment store).
    pub fn links_above(max_size: u64) -> AttachmentLimit {
        AttachmentLimit {
            max_size: Some(max_size),
            links: true,
        }
    }

    /// Whether this is the default: no limit.
    pub fn is_default(&self) -> bool {
        *self == AttachmentLimit::default()
    }

    /// Whether attachments may be sent as links (a limit with `links`).
    pub fn needs_store(&self) -> bool {
        self.links && self.max_size.is_some()
    }

    pub(crate) fn problem(&self) -> Option<&'static str> {
        (self.links && self.max_size.is_none())
            .then_some("attachments as links need a size limit: set max_size, or switch links off")
    }
}
