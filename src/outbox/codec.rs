//! The draft file format: a text header, an empty line, the message bytes.
//!
//! Version 2 (written since envelope parameters are kept):
//!
//! ```text
//! relaymail-draft 2
//! created <ms since the epoch>
//! attempts <n>
//! next <ms since the epoch>
//! size <message bytes>
//! from <reverse path>
//! mail-size <n>                 MAIL SIZE=, when set
//! body 7BIT|8BITMIME|BINARYMIME MAIL BODY=, when set
//! smtputf8                      MAIL SMTPUTF8, when set
//! requiretls                    MAIL REQUIRETLS, when set
//! ret FULL|HDRS                 DSN RET=, when set
//! envid <text>                  DSN ENVID=, when set
//! to <address>[ notify=NEVER|SUCCESS,FAILURE,DELAY][ orcpt=<text>]
//! error <text>                  the last error, when any
//! possibly-delivered            the last attempt failed after the whole message was sent
//! waiting-on-settings           the last attempt failed on the settings (auth, TLS, config)
//! ```
//!
//! Addresses are written as [`Address`] displays them and read back under
//! [`AddressPolicy::Lenient`] (which also reads what version 1 and older
//! versions stored); an address that does not parse makes the draft
//! corrupt, with the reason in the error.
//!
//! Every free-form value (addresses, ENVID, ORCPT, the error) is written
//! with `%XX` for `%`, spaces and control bytes, so that any value keeps its
//! line and its field and reads back exactly. Lines other than `to` appear
//! at most once; an unknown line makes the file corrupt (a newer format
//! gets a new version number). The two flag lines were added to version 2
//! before any release wrote it; a draft without them reads them as unset.
//!
//! Version 1 (written before): the same fields without the envelope
//! parameters (`created`, `attempts`, `next`, `size`, `from`, `to`,
//! `error`), values written as they are. It is still read; a draft is
//! rewritten in version 2 by its next attempt.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Area, DraftId, DraftInfo};
use crate::proto::address::{Address, AddressPolicy};
use crate::proto::command::{BodyType, DsnReturn, MailParams, Notify, RcptParams};
use crate::proto::session::{Envelope, Recipient};

/// `t` as milliseconds since the epoch, as the header stores times.
pub(super) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The time `ms` milliseconds after the epoch (`None` past what the
/// platform's clock can hold).
pub(super) fn from_millis(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

const MAGIC_V1: &str = "relaymail-draft 1";
const MAGIC_V2: &str = "relaymail-draft 2";

/// The header line of a draft that waits on the settings, as it is
/// written (the spool looks for it without decoding the whole draft).
pub(super) const WAITING_LINE: &str = "waiting-on-settings\n";

/// `%XX` for `%`, space and control bytes: the value stays one word on its
/// line. Everything else (UTF-8 included) is written as it is.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '%' || c == ' ' || c.is_ascii_control() {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The inverse of [`escape`]; `None` for a malformed escape or bytes that
/// are not UTF-8.
fn unescape(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn notify_text(notify: Notify) -> String {
    match notify {
        Notify::Never => "NEVER".to_owned(),
        Notify::On {
            success,
            failure,
            delay,
        } => [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
            .into_iter()
            .filter_map(|(on, word)| on.then_some(word))
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn parse_notify(text: &str) -> Option<Notify> {
    if text == "NEVER" {
        return Some(Notify::Never);
    }
    let (mut success, mut failure, mut delay) = (false, false, false);
    for word in text.split(',').filter(|w| !w.is_empty()) {
        let flag = match word {
            "SUCCESS" => &mut success,
            "FAILURE" => &mut failure,
            "DELAY" => &mut delay,
            _ => return None,
        };
        if std::mem::replace(flag, true) {
            return None; // twice
        }
    }
    Some(Notify::On {
        success,
        failure,
        delay,
    })
}

/// A draft file's bytes: the version 2 header, then `content`.
pub(crate) fn encode_draft(info: &DraftInfo, content: &[u8]) -> Vec<u8> {
    let env = &info.envelope;
    let mut out = format!(
        "{MAGIC_V2}\ncreated {}\nattempts {}\nnext {}\nsize {}\nfrom {}\n",
        millis(info.created),
        info.attempts,
        millis(info.next_attempt),
        content.len(),
        escape(&env.from().map(ToString::to_string).unwrap_or_default())
    );
    let p = env.params();
    if let Some(size) = p.size {
        out.push_str(&format!("mail-size {size}\n"));
    }
    if let Some(body) = p.body {
        out.push_str(match body {
            BodyType::SevenBit => "body 7BIT\n",
            BodyType::EightBitMime => "body 8BITMIME\n",
            BodyType::BinaryMime => "body BINARYMIME\n",
        });
    }
    if p.smtputf8 {
        out.push_str("smtputf8\n");
    }
    if p.requiretls {
        out.push_str("requiretls\n");
    }
    if let Some(ret) = p.ret {
        out.push_str(match ret {
            DsnReturn::Full => "ret FULL\n",
            DsnReturn::Headers => "ret HDRS\n",
        });
    }
    if let Some(envid) = &p.envid {
        out.push_str(&format!("envid {}\n", escape(envid)));
    }
    for r in env.recipients() {
        out.push_str(&format!("to {}", escape(&r.address.to_string())));
        if let Some(notify) = r.params.notify {
            out.push_str(&format!(" notify={}", notify_text(notify)));
        }
        if let Some(orcpt) = &r.params.orcpt {
            out.push_str(&format!(" orcpt={}", escape(orcpt)));
        }
        out.push('\n');
    }
    if let Some(e) = &info.last_error {
        out.push_str(&format!("error {}\n", escape(e)));
    }
    if info.possibly_delivered {
        out.push_str("possibly-delivered\n");
    }
    if info.waiting_on_settings {
        out.push_str(WAITING_LINE);
    }
    out.push('\n');
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(content);
    bytes
}

/// Sets `slot` unless it is already set (a field given twice: corrupt).
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// Sets a flag unless it is already set.
fn flag(slot: &mut bool, value: &str) -> Option<()> {
    if *slot || !value.is_empty() {
        return None;
    }
    *slot = true;
    Some(())
}

/// A version 2 `to` line's value: the address (not parsed yet) and its DSN
/// parameters.
fn parse_recipient(value: &str) -> Option<(String, RcptParams)> {
    let mut words = value.split(' ');
    let address = unescape(words.next()?)?;
    let mut params = RcptParams::default();
    let RcptParams { notify, orcpt } = &mut params;
    for word in words {
        match word.split_once('=')? {
            ("notify", text) => once(notify, parse_notify(text)?)?,
            ("orcpt", text) => once(orcpt, unescape(text)?)?,
            _ => return None,
        }
    }
    Some((address, params))
}

/// A draft header's fields, addresses not yet parsed.
struct Fields {
    created: SystemTime,
    attempts: u32,
    next_attempt: SystemTime,
    size: u64,
    last_error: Option<String>,
    possibly_delivered: bool,
    waiting_on_settings: bool,
    from: String,
    params: MailParams,
    recipients: Vec<(String, RcptParams)>,
}

/// Reads a draft file (either version): its info and, when `with_content`,
/// its bytes. An error (why, in words) when the file is not a whole, valid
/// draft: truncated, altered, or an envelope that could not be sent.
pub(crate) fn decode_draft(
    id: DraftId,
    area: Area,
    raw: &[u8],
    with_content: bool,
) -> Result<(DraftInfo, Vec<u8>), String> {
    let (fields, content) = read_fields(raw, with_content)
        .ok_or("its header is not a whole, valid draft header (truncated, altered or of a newer version)")?;
    let Fields {
        created,
        attempts,
        next_attempt,
        size,
        last_error,
        possibly_delivered,
        waiting_on_settings,
        from,
        params,
        recipients,
    } = fields;
    let parse = |text: &str| Address::parse(text, AddressPolicy::Lenient);
    let from = match from.as_str() {
        "" => None,
        text => Some(parse(text).map_err(|e| format!("the sender: {e}"))?),
    };
    let recipients = recipients
        .into_iter()
        .map(|(text, params)| {
            let address = parse(&text).map_err(|e| format!("a recipient: {e}"))?;
            Ok(Recipient { address, params })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let envelope = Envelope::with_recipients(from, recipients)
        .map_err(|e| e.to_string())?
        .with_params(params);
    envelope.validate().map_err(|e| e.to_string())?;
    let info = DraftInfo {
        id,
        area,
        envelope,
        size,
        created,
        attempts,
        next_attempt,
        last_error,
        possibly_delivered,
        waiting_on_settings,
    };
    Ok((info, content))
}

/// The header's fields and, when `with_content`, the bytes; `None` when the
/// header is malformed or the size does not match. [`decode_draft`] parses
/// the addresses.
fn read_fields(raw: &[u8], with_content: bool) -> Option<(Fields, Vec<u8>)> {
    let header_end = raw.windows(2).position(|w| w == b"\n\n")?;
    let header = std::str::from_utf8(&raw[..header_end]).ok()?;
    let content = &raw[header_end + 2..];
    let mut lines = header.split('\n');
    let v2 = match lines.next()? {
        MAGIC_V1 => false,
        MAGIC_V2 => true,
        _ => return None,
    };
    // Version 1 wrote values as they were.
    let value_of = |text: &str| if v2 { unescape(text) } else { Some(text.to_owned()) };
    let (mut created, mut attempts, mut next, mut size) = (None, None, None, None);
    let (mut from, mut last_error) = (None, None);
    let mut params = MailParams::default();
    let (mut possibly_delivered, mut waiting_on_settings) = (false, false);
    let (mut mail_size, mut body, mut ret, mut envid) = (None, None, None, None);
    let mut recipients = Vec::new();
    for line in lines {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "created" => once(&mut created, value.parse::<u64>().ok()?)?,
            "attempts" => once(&mut attempts, value.parse::<u32>().ok()?)?,
            "next" => once(&mut next, value.parse::<u64>().ok()?)?,
            "size" => once(&mut size, value.parse::<u64>().ok()?)?,
            "from" => once(&mut from, value_of(value)?)?,
            "to" if v2 => recipients.push(parse_recipient(value)?),
            "to" => recipients.push((value.to_owned(), RcptParams::default())),
            "error" => once(&mut last_error, value_of(value)?)?,
            "mail-size" if v2 => once(&mut mail_size, value.parse::<u64>().ok()?)?,
            "body" if v2 => once(
                &mut body,
                match value {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    "BINARYMIME" => BodyType::BinaryMime,
                    _ => return None,
                },
            )?,
            "smtputf8" if v2 => flag(&mut params.smtputf8, value)?,
            "requiretls" if v2 => flag(&mut params.requiretls, value)?,
            "possibly-delivered" if v2 => flag(&mut possibly_delivered, value)?,
            "waiting-on-settings" if v2 => flag(&mut waiting_on_settings, value)?,
            "ret" if v2 => once(
                &mut ret,
                match value {
                    "FULL" => DsnReturn::Full,
                    "HDRS" => DsnReturn::Headers,
                    _ => return None,
                },
            )?,
            "envid" if v2 => once(&mut envid, unescape(value)?)?,
            _ => return None,
        }
    }
    params.size = mail_size;
    params.body = body;
    params.ret = ret;
    params.envid = envid;
    let size = size?;
    if size != content.len() as u64 {
        return None; // truncated or altered
    }
    let fields = Fields {
        created: from_millis(created?)?,
        attempts: attempts?,
        next_attempt: from_millis(next?)?,
        size,
        last_error,
        possibly_delivered,
        waiting_on_settings,
        from: from?,
        params,
        recipients,
    };
    let content = if with_content {
        content.to_vec()
    } else {
        Vec::new()
    };
    Some((fields, content))
}

#[cfg(test)]
mod tests;
