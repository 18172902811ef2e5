//! The message side of DKIM (RFC 6376 §3.4, §3.7, §5.4): the header
//! section read into fields, header and body canonicalisation, and the
//! header fields a signature covers. No cryptography here: the hashes and
//! signatures are ring's (see `key.rs`).
//!
//! Every function takes the message as it goes on the wire: its line
//! endings already normalised to CRLF by [`crate::proto::data::normalize`],
//! so that what is signed is what the server receives.

use ring::digest;

use super::Canonicalization;

/// One header field of a message: its name as written (without the colon
/// or any white space before it), and the whole field as written, from its
/// first byte to its final CRLF, continuation lines included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Field<'a> {
    pub(super) name: &'a [u8],
    pub(super) raw: &'a [u8],
}

/// Why a message's header section cannot be signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeaderError {
    /// The first line of the header section starts with white space: a
    /// continuation of no field.
    LeadingContinuation,
    /// Line `n` (from 1) of the header section is neither a field
    /// (`name:`) nor a continuation line.
    NotAField(usize),
}

/// The header fields of `wire` (CRLF lines) and the offset of its body:
/// the fields end at the first empty line, the body starts after it. A
/// message without an empty line is all header section, with an empty
/// body.
pub(super) fn split(wire: &[u8]) -> Result<(Vec<Field<'_>>, usize), HeaderError> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut start: Option<(usize, usize)> = None; // (field start, name end)
    let mut at = 0usize;
    let mut line_no = 0usize;
    fn close<'a>(wire: &'a [u8], fields: &mut Vec<Field<'a>>, start: Option<(usize, usize)>, end: usize) {
        if let Some((s, name_end)) = start {
            fields.push(Field {
                name: &wire[s..name_end],
                raw: &wire[s..end],
            });
        }
    }
    while at < wire.len() {
        line_no += 1;
        let end = line_end(wire, at);
        let line = &wire[at..end];
        if line == b"\r\n" || line.is_empty() {
            close(wire, &mut fields, start.take(), at);
            return Ok((fields, end));
        }
        if is_wsp(line[0]) {
            if start.is_none() {
                return Err(HeaderError::LeadingContinuation);
            }
        } else {
            close(wire, &mut fields, start.take(), at);
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or(HeaderError::NotAField(line_no))?;
            let name = trim_wsp_end(&line[..colon]);
            if name.is_empty() || !name.iter().all(|&b| is_ftext(b)) {
                return Err(HeaderError::NotAField(line_no));
            }
            start = Some((at, at + name.len()));
        }
        at = end;
    }
    close(wire, &mut fields, start.take(), wire.len());
    Ok((fields, wire.len()))
}

/// The end of the line starting at `at`: just past its CRLF (or the end).
fn line_end(wire: &[u8], at: usize) -> usize {
    match wire[at..].windows(2).position(|w| w == b"\r\n") {
        Some(i) => at + i + 2,
        None => wire.len(),
    }
}

/// RFC 5322 `ftext`: printable US-ASCII except the colon.
fn is_ftext(b: u8) -> bool {
    (33..=126).contains(&b) && b != b':'
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_wsp_end(mut s: &[u8]) -> &[u8] {
    while let Some((&last, rest)) = s.split_last() {
        if !is_wsp(last) {
            break;
        }
        s = rest;
    }
    s
}

/// Appends one header field canonicalised (RFC 6376 §3.4.1, §3.4.2),
/// ending with CRLF as it is hashed.
pub(super) fn header(canon: Canonicalization, field: &Field<'_>, out: &mut Vec<u8>) {
    match canon {
        Canonicalization::Simple => out.extend_from_slice(field.raw),
        Canonicalization::Relaxed => {
            let colon = field
                .raw
                .iter()
                .position(|&b| b == b':')
                .unwrap_or(field.raw.len());
            relaxed_header(field.name, &field.raw[(colon + 1).min(field.raw.len())..], out);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// `name:value` in the relaxed form, without a line ending: the name in
/// lower case, the value unfolded, every run of white space one space, none
/// at either end.
pub(super) fn relaxed_header(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let mut pending_space = false;
    let mut any = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = any,
            _ => {
                if pending_space {
                    out.push(b' ');
                    pending_space = false;
                }
                out.push(b);
                any = true;
            }
        }
    }
}

/// The SHA-256 of the body canonicalised (RFC 6376 §3.4.3, §3.4.4),
/// computed line by line without a canonical copy of the body. `body` is
/// CRLF lines (the last one ends with CRLF), or empty.
pub(super) fn body_hash(canon: Canonicalization, body: &[u8]) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    // Empty lines seen but not yet hashed: dropped if nothing follows them.
    let mut empty_lines = 0usize;
    let mut wrote = false;
    let mut line = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let end = line_end(body, at);
        let text = body[at..end].strip_suffix(b"\r\n").unwrap_or(&body[at..end]);
        let text = match canon {
            Canonicalization::Simple => text,
            Canonicalization::Relaxed => {
                line.clear();
                relaxed_body_line(text, &mut line);
                &line
            }
        };
        if text.is_empty() {
            empty_lines += 1;
        } else {
            for _ in 0..empty_lines {
                ctx.update(b"\r\n");
            }
            empty_lines = 0;
            ctx.update(text);
            ctx.update(b"\r\n");
            wrote = true;
        }
        at = end;
    }
    // An empty body is one CRLF in the simple form, nothing in the relaxed.
    if !wrote && canon == Canonicalization::Simple {
        ctx.update(b"\r\n");
    }
    ctx.finish()
}

/// A body line in the relaxed form: runs of white space become one space,
/// and white space at its end goes.
fn relaxed_body_line(text: &[u8], out: &mut Vec<u8>) {
    let mut pending_space = false;
    for &b in text {
        if is_wsp(b) {
            pending_space = true;
        } else {
            if pending_space {
                out.push(b' ');
                pending_space = false;
            }
            out.push(b);
        }
    }
}

/// The names for the `h=` tag and the fields they select, bottom up as RFC
/// 6376 §5.4.2 says: each name of `wanted` (lower case, each once) as many
/// times as the message has that field, and `from` once more than that
/// (oversigning: a `From` field added later breaks the signature). The
/// fields are returned in `h=` order; the extra `from` selects none.
pub(super) fn select<'f, 'a>(
    wanted: &[String],
    fields: &'f [Field<'a>],
) -> (Vec<String>, Vec<&'f Field<'a>>) {
    let mut names = Vec::new();
    let mut chosen = Vec::new();
    for name in wanted {
        let mut present: Vec<&Field<'a>> = fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
            .collect();
        // The last instance is signed first.
        present.reverse();
        let extra = usize::from(name == "from");
        for _ in 0..present.len() + extra {
            names.push(name.clone());
        }
        chosen.extend(present);
    }
    (names, chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: digest::Digest) -> String {
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sha256(data: &[u8]) -> String {
        hex(digest::digest(&digest::SHA256, data))
    }

    #[test]
    fn the_header_section_ends_at_the_first_empty_line() {
        let wire =
            b"From: a@example.com\r\nSubject: one\r\n two\r\nTo : b@example.net\r\n\r\nbody\r\n\r\nmore\r\n";
        let (fields, body) = split(wire).expect("fields");
        let names: Vec<&[u8]> = fields.iter().map(|f| f.name).collect();
        assert_eq!(names, [&b"From"[..], b"Subject", b"To"]);
        assert_eq!(fields[1].raw, b"Subject: one\r\n two\r\n");
        assert_eq!(&wire[body..], b"body\r\n\r\nmore\r\n");
        // No empty line: all header section, no body.
        let (fields, body) = split(b"From: a@example.com\r\n").expect("fields");
        assert_eq!((fields.len(), body), (1, 21));
        // Nothing but a body.
        let (fields, body) = split(b"\r\nbody\r\n").expect("fields");
        assert_eq!((fields.len(), body), (0, 2));
    }

    #[test]
    fn lines_that_are_no_field_are_refused() {
        assert_eq!(
            split(b" x\r\nFrom: a\r\n\r\n"),
            Err(HeaderError::LeadingContinuation)
        );
        assert_eq!(
            split(b"From: a\r\nnot a field\r\n\r\n"),
            Err(HeaderError::NotAField(2))
        );
        assert_eq!(
            split(b"From: a\r\n: empty name\r\n"),
            Err(HeaderError::NotAField(2))
        );
        assert_eq!(split(b"Fr om: a\r\n"), Err(HeaderError::NotAField(1)));
    }

    #[test]
    fn relaxed_header_canonicalisation() {
        // RFC 6376 §3.4.5's example.
        let wire = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n";
        let (fields, _) = split(wire).expect("fields");
        let mut out = Vec::new();
        for f in &fields {
            header(Canonicalization::Relaxed, f, &mut out);
        }
        assert_eq!(out, b"a:X\r\nb:Y Z\r\n");
        let mut out = Vec::new();
        for f in &fields {
            header(Canonicalization::Simple, f, &mut out);
        }
        assert_eq!(out, b"A: X\r\nB : Y\t\r\n\tZ  \r\n");
        let mut out = Vec::new();
        relaxed_header(b"Subject", b"   ", &mut out);
        assert_eq!(out, b"subject:");
    }

    #[test]
    fn body_canonicalisation() {
        // RFC 6376 §3.4.5's example body.
        let body = b" C \r\nD \t E\r\n\r\n\r\n";
        assert_eq!(
            hex(body_hash(Canonicalization::Relaxed, body)),
            sha256(b" C\r\nD E\r\n")
        );
        assert_eq!(
            hex(body_hash(Canonicalization::Simple, body)),
            sha256(b" C \r\nD \t E\r\n")
        );
        // Empty bodies (RFC 6376 §3.4.3, §3.4.4 and errata 3192).
        for empty in [&b""[..], b"\r\n", b"\r\n\r\n"] {
            assert_eq!(hex(body_hash(Canonicalization::Simple, empty)), sha256(b"\r\n"));
            assert_eq!(hex(body_hash(Canonicalization::Relaxed, empty)), sha256(b""));
        }
        // Lines of white space only are empty lines in the relaxed form.
        assert_eq!(
            hex(body_hash(
                Canonicalization::Relaxed,
                b"a\r\n \t\r\n\r\nb\r\n  \r\n"
            )),
            sha256(b"a\r\n\r\n\r\nb\r\n")
        );
        // The well-known hash of the empty simple body.
        assert_eq!(
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                body_hash(Canonicalization::Simple, b"")
            ),
            "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY="
        );
    }

    #[test]
    fn from_is_oversigned_and_fields_are_chosen_bottom_up() {
        let wire = b"Received: x\r\nTo: a@example.net\r\nFrom: b@example.com\r\nTo: c@example.net\r\n\r\n";
        let (fields, _) = split(wire).expect("fields");
        let wanted: Vec<String> = ["from", "to", "subject"].iter().map(|s| s.to_string()).collect();
        let (names, chosen) = select(&wanted, &fields);
        assert_eq!(names, ["from", "from", "to", "to"]);
        let raws: Vec<&[u8]> = chosen.iter().map(|f| f.raw).collect();
        assert_eq!(
            raws,
            [
                &b"From: b@example.com\r\n"[..],
                b"To: c@example.net\r\n",
                b"To: a@example.net\r\n"
            ]
        );
    }
}
