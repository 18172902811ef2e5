//! Emails: composition, envelopes, header safety, international mail and
//! attachment policies — parsed back with mail-parser, and end to end
//! through the in-process server.

mod compose;
mod delivery;

use std::time::Duration;

use relaymail::testing::TestServer;
use relaymail::{SmtpSettings, SmtpSettingsBuilder, TlsMode};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) fn settings_for(server: Option<&TestServer>) -> SmtpSettingsBuilder {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(server.map_or(25, |s| u32::from(s.port())))
        .tls(TlsMode::None)
        .sender("noreply@example.com")
        .sender_name("Example App")
        .timeout(Duration::from_secs(5))
}

/// Every header (name, decoded value) of a message, as mail-parser reads it.
pub(crate) fn headers(bytes: &[u8]) -> Vec<(String, String)> {
    let m = mail_parser::MessageParser::new()
        .parse(bytes)
        .expect("parsable message");
    m.headers()
        .iter()
        .map(|h| {
            let raw = String::from_utf8_lossy(&bytes[h.offset_start as usize..h.offset_end as usize]);
            (h.name.as_str().to_owned(), raw.trim().to_owned())
        })
        .collect()
}
