//! Message body encoders for DATA (RFC 5321 §4.5.2) and BDAT (RFC 3030).
//!
//! Both first normalise line endings: every CRLF stays, every bare CR and every
//! bare LF becomes CRLF, and a body that does not end with a line break gets
//! one. The DATA encoder then doubles a leading `.` on every line and ends with
//! `CRLF . CRLF`; the BDAT encoder frames the same normalised bytes as
//! `BDAT n` chunks, the last one `BDAT n LAST`.
//!
//! Because no bare CR or LF survives and every line that starts with a dot is
//! stuffed, no input can produce an end-of-data sequence before the one the
//! encoder adds (the "SMTP smuggling" class of bugs, RUSTSEC-2021-0069).
//!
//! ```
//! use relaymail::proto::data::DataEncoder;
//! let mut out = Vec::new();
//! let mut enc = DataEncoder::new();
//! enc.encode(b"Subject: hi\n\n.hidden\r", &mut out);
//! enc.encode(b"\n.\r\nend", &mut out);
//! enc.finish(&mut out);
//! assert_eq!(out, b"Subject: hi\r\n\r\n..hidden\r\n..\r\nend\r\n.\r\n");
//! ```

/// Streaming line-ending normaliser shared by both encoders.
#[derive(Clone, Copy, Debug)]
struct Normalizer {
    /// The last byte emitted ended a line (true before any input).
    at_line_start: bool,
    /// The last input byte was a CR (already emitted as CRLF): an LF right
    /// after it belongs to it.
    after_cr: bool,
    dot_stuff: bool,
}

impl Normalizer {
    const fn new(dot_stuff: bool) -> Normalizer {
        Normalizer {
            at_line_start: true,
            after_cr: false,
            dot_stuff,
        }
    }

    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while let Some(&first) = input.first() {
            if self.after_cr {
                self.after_cr = false;
                if first == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            if self.at_line_start && self.dot_stuff && first == b'.' {
                out.push(b'.');
            }
            match input.iter().position(|&b| b == b'\r' || b == b'\n') {
                None => {
                    out.extend_from_slice(input);
                    self.at_line_start = false;
                    return;
                }
                Some(i) => {
                    out.extend_from_slice(&input[..i]);
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                    self.after_cr = input[i] == b'\r';
                    input = &input[i + 1..];
                }
            }
        }
    }

    /// Ends the last line if the input did not.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
        }
        self.after_cr = false;
    }
}

/// The number of bytes `input` occupies once its line endings are normalised
/// (the value for `SIZE=` and the total of the BDAT chunk sizes).
pub fn normalized_len(input: &[u8]) -> u64 {
    let mut len = 0u64;
    let mut prev_cr = false;
    for &b in input {
        len += match (b, prev_cr) {
            (b'\n', true) => 0,
            (b'\n' | b'\r', _) => 2,
            _ => 1,
        };
        prev_cr = b == b'\r';
    }
    if !input.is_empty() && !matches!(input.last(), Some(b'\n' | b'\r')) {
        len += 2;
    }
    len
}

/// Streaming DATA body encoder: CRLF normalisation, dot-stuffing and the
/// terminating `CRLF . CRLF`. Input may be split anywhere.
#[derive(Clone, Debug)]
pub struct DataEncoder {
    norm: Normalizer,
}

impl Default for DataEncoder {
    fn default() -> Self {
        DataEncoder::new()
    }
}

impl DataEncoder {
    /// A new encoder, positioned at the start of the first line.
    pub fn new() -> DataEncoder {
        DataEncoder {
            norm: Normalizer::new(true),
        }
    }

    /// Encodes the next piece of the message into `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.norm.feed(input, out);
    }

    /// Ends the message: a final line break if missing, then `.` CRLF.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.norm.finish(out);
        out.extend_from_slice(b".\r\n");
    }

    /// Encodes a whole message, terminator included.
    pub fn encode_all(message: &[u8], out: &mut Vec<u8>) {
        let mut enc = DataEncoder::new();
        out.reserve(message.len() + message.len() / 64 + 8);
        enc.encode(message, out);
        enc.finish(out);
    }
}

/// Streaming BDAT encoder: normalises line endings (no dot-stuffing; BDAT
/// needs none) and frames the result in chunks of at most `chunk_size` bytes,
/// each preceded by its `BDAT n` command; the last chunk says `LAST`.
///
/// ```
/// use relaymail::proto::data::BdatEncoder;
/// let mut out = Vec::new();
/// let mut enc = BdatEncoder::new(8);
/// let mut chunks = enc.encode(b"line one\nline two", &mut out);
/// chunks += enc.finish(&mut out);
/// assert_eq!(chunks, 3);
/// assert_eq!(out, b"BDAT 8\r\nline oneBDAT 8\r\n\r\nline tBDAT 4 LAST\r\nwo\r\n".as_slice());
/// ```
#[derive(Clone, Debug)]
pub struct BdatEncoder {
    norm: Normalizer,
    chunk_size: usize,
    pending: Vec<u8>,
}

impl BdatEncoder {
    /// An encoder producing chunks of at most `chunk_size` bytes (at least 1).
    pub fn new(chunk_size: usize) -> BdatEncoder {
        BdatEncoder {
            norm: Normalizer::new(false),
            chunk_size: chunk_size.max(1),
            pending: Vec::new(),
        }
    }

    /// Normalises the next piece of the message and writes every chunk that
    /// is complete, keeping the rest. Returns the number of `BDAT` commands
    /// written. A full chunk is held back until more input or [`finish`]
    /// shows whether it is the last, so the message never ends with an empty
    /// `BDAT 0 LAST` unless it is empty.
    ///
    /// [`finish`]: BdatEncoder::finish
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        self.norm.feed(input, &mut self.pending);
        let mut chunks = 0;
        let mut start = 0;
        while self.pending.len() - start > self.chunk_size {
            frame_chunk(&self.pending[start..start + self.chunk_size], false, out);
            start += self.chunk_size;
            chunks += 1;
        }
        self.pending.drain(..start);
        chunks
    }

    /// Writes the final chunk as `BDAT n LAST`. Returns the number of `BDAT`
    /// commands written: one, or more when the final line break pushed the
    /// pending bytes over the chunk size (with chunks of 1 or 2 bytes, the
    /// added CRLF can need two more chunks).
    pub fn finish(mut self, out: &mut Vec<u8>) -> usize {
        self.norm.finish(&mut self.pending);
        let mut chunks = 0;
        let mut rest: &[u8] = &self.pending;
        while rest.len() > self.chunk_size {
            frame_chunk(&rest[..self.chunk_size], false, out);
            rest = &rest[self.chunk_size..];
            chunks += 1;
        }
        frame_chunk(rest, true, out);
        chunks + 1
    }
}

/// Appends `BDAT len [LAST]` CRLF and the chunk bytes.
pub fn frame_chunk(chunk: &[u8], last: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("BDAT {}", chunk.len()).as_bytes());
    if last {
        out.extend_from_slice(b" LAST");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(chunk);
}

/// Normalises a whole message's line endings (the bytes BDAT carries).
pub fn normalize(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 2);
    let mut norm = Normalizer::new(false);
    norm.feed(message, &mut out);
    norm.finish(&mut out);
    out
}

/// Reverses DATA encoding for tests and fuzzing: checks that `encoded` is a
/// well-formed DATA body (CRLF lines only, ends with `.` CRLF, no early
/// terminator) and returns the un-stuffed lines joined with CRLF.
#[doc(hidden)]
pub fn decode_data(encoded: &[u8]) -> Result<Vec<u8>, &'static str> {
    let body = encoded.strip_suffix(b".\r\n").ok_or("does not end with .CRLF")?;
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        return Err("terminator is not at the start of a line");
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let end = body[i..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("line without CRLF")?;
        let line = &body[i..i + end];
        if line.contains(&b'\r') || line.contains(&b'\n') {
            return Err("bare CR or LF inside a line");
        }
        if line == b"." {
            return Err("early end-of-data line");
        }
        let line = match line.first() {
            Some(b'.') => line
                .strip_prefix(b".")
                .filter(|l| l.first() == Some(&b'.'))
                .ok_or("unstuffed leading dot")?,
            _ => line,
        };
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        i += end + 2;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        DataEncoder::encode_all(input, &mut out);
        out
    }

    #[test]
    fn table() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a\n", b"a\r\n.\r\n"),
            (b"a\r", b"a\r\n.\r\n"),
            (b"a\n\nb", b"a\r\n\r\nb\r\n.\r\n"),
            (b"a\r\rb", b"a\r\n\r\nb\r\n.\r\n"),
            (b"a\n\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"..x", b"...x\r\n.\r\n"),
            (b"x.\r\n.y", b"x.\r\n..y\r\n.\r\n"),
            // Smuggling payloads: every one stays inside the message.
            (
                b"a\r\n.\r\nMAIL FROM:<x@y>\r\n",
                b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n",
            ),
            (b"a\n.\nRSET\n", b"a\r\n..\r\nRSET\r\n.\r\n"),
            (b"a\r.\rRSET", b"a\r\n..\r\nRSET\r\n.\r\n"),
            (b"a\r\n.\nQUIT", b"a\r\n..\r\nQUIT\r\n.\r\n"),
            (b"a\n.\r\nQUIT", b"a\r\n..\r\nQUIT\r\n.\r\n"),
            (b"a\r\n\x00.\r\n", b"a\r\n\x00.\r\n.\r\n"),
        ];
        for (input, want) in table {
            assert_eq!(data(input), *want, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(normalize(input).len() as u64, normalized_len(input), "{input:?}");
        }
    }

    #[test]
    fn split_points_do_not_matter() {
        let input = b"x\r\n.a\r\r\n\n.\r.\n\r..b";
        let whole = data(input);
        for cut in 0..=input.len() {
            let mut out = Vec::new();
            let mut enc = DataEncoder::new();
            enc.encode(&input[..cut], &mut out);
            enc.encode(&input[cut..], &mut out);
            enc.finish(&mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn bdat_framing() {
        let mut out = Vec::new();
        let enc = BdatEncoder::new(100);
        assert_eq!(enc.finish(&mut out), 1);
        assert_eq!(out, b"BDAT 0 LAST\r\n");

        let mut out = Vec::new();
        let mut enc = BdatEncoder::new(4);
        assert_eq!(
            enc.encode(b"abcd", &mut out),
            0,
            "a full chunk waits for more input"
        );
        assert_eq!(enc.finish(&mut out), 2);
        assert_eq!(out, b"BDAT 4\r\nabcdBDAT 2 LAST\r\n\r\n");

        let mut out = Vec::new();
        let mut enc = BdatEncoder::new(1 << 20);
        enc.encode(b".line\n", &mut out);
        assert_eq!(enc.finish(&mut out), 1);
        assert_eq!(out, b"BDAT 7 LAST\r\n.line\r\n", "no dot-stuffing in BDAT");

        // The CRLF added at the end respects the chunk size too (found by
        // the body_encoder fuzz target).
        let mut out = Vec::new();
        let mut enc = BdatEncoder::new(1);
        assert_eq!(enc.encode(b"a", &mut out), 0);
        assert_eq!(enc.finish(&mut out), 3);
        assert_eq!(out, b"BDAT 1\r\naBDAT 1\r\n\rBDAT 1 LAST\r\n\n");
    }

    /// Parses BDAT framing back into the carried bytes, checking each size.
    fn unframe(mut framed: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut chunks = 0;
        loop {
            let eol = framed
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("command line");
            let cmd = std::str::from_utf8(&framed[..eol]).expect("ascii");
            let mut words = cmd.split(' ');
            assert_eq!(words.next(), Some("BDAT"));
            let n: usize = words.next().expect("size").parse().expect("number");
            let last = words.next() == Some("LAST");
            framed = &framed[eol + 2..];
            out.extend_from_slice(&framed[..n]);
            framed = &framed[n..];
            chunks += 1;
            if last {
                assert!(framed.is_empty(), "nothing after the LAST chunk");
                return (out, chunks);
            }
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn body() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(
                prop::sample::select(vec![b'a', b'.', b'\r', b'\n', b' ', 0xff, b'M']),
                0..200,
            )
        }

        proptest! {
            #[test]
            fn data_output_is_safe_and_reversible(input in body(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5)) {
                let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
                points.sort_unstable();
                let mut out = Vec::new();
                let mut enc = DataEncoder::new();
                let mut prev = 0;
                for p in points {
                    enc.encode(&input[prev..p], &mut out);
                    prev = p;
                }
                enc.encode(&input[prev..], &mut out);
                enc.finish(&mut out);
                prop_assert_eq!(&out, &data(&input), "split-invariant");
                // No end-of-data before the real one.
                let first_end = out.windows(5).position(|w| w == b"\r\n.\r\n");
                if let Some(pos) = first_end {
                    prop_assert_eq!(pos + 5, out.len());
                } else {
                    prop_assert!(out == b".\r\n" || !out.starts_with(b".\r\n"));
                }
                prop_assert!(!out.starts_with(b".\r\n") || out.len() == 3);
                // Only CRLF line endings.
                for (i, &b) in out.iter().enumerate() {
                    if b == b'\n' { prop_assert_eq!(out.get(i.wrapping_sub(1)), Some(&b'\r')); }
                    if b == b'\r' { prop_assert_eq!(out.get(i + 1), Some(&b'\n')); }
                }
                // Un-stuffing gives the normalised input.
                prop_assert_eq!(decode_data(&out).expect("well formed"), normalize(&input));
            }

            #[test]
            fn bdat_carries_the_normalised_bytes(input in body(), chunk in 1usize..50) {
                let mut out = Vec::new();
                let mut enc = BdatEncoder::new(chunk);
                let mut n = enc.encode(&input, &mut out);
                n += enc.finish(&mut out);
                let (carried, chunks) = unframe(&out);
                prop_assert_eq!(chunks, n);
                prop_assert_eq!(&carried, &normalize(&input));
                prop_assert_eq!(carried.len() as u64, normalized_len(&input));
            }
        }
    }
}
