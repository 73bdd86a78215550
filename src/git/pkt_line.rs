//! Git's pkt-line framing: every message of the wire protocol is a
//! 4-hex-digit length followed by that many bytes (length included), with
//! three special lengths marking the ends of sections.

use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};

/// Largest pkt-line git sends or accepts (length prefix included).
const MAX_PKT: usize = 65520;

/// One unit read from the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Pkt {
    /// `0000`: the end of a message.
    Flush,
    /// `0001`: the end of a message's arguments (protocol v2).
    Delim,
    /// `0002`: the end of a response in a stateless exchange (protocol v2).
    ResponseEnd,
    /// A payload, as sent.
    Data(Vec<u8>),
}

impl Pkt {
    /// The payload as text without its line feed; `None` for the markers.
    pub fn line(&self) -> Option<&str> {
        match self {
            Pkt::Data(d) => std::str::from_utf8(d)
                .ok()
                .map(|s| s.trim_end_matches('\n')),
            _ => None,
        }
    }
}

/// Appends `text` as one pkt-line to `out`.
pub fn data(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(format!("{:04x}", text.len() + 4).as_bytes());
    out.extend_from_slice(text);
}

/// Appends a text line (a line feed is added) as one pkt-line to `out`.
pub fn line(out: &mut Vec<u8>, text: &str) {
    data(out, format!("{text}\n").as_bytes());
}

/// Appends a flush marker.
pub fn flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

/// Appends a delimiter marker.
pub fn delim(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0001");
}

/// Reads pkt-lines from `inner`, counting the bytes read so that callers
/// can bound what a server sends.
pub struct Reader<R> {
    inner: R,
    /// Bytes read so far, framing included.
    pub read: u64,
}

impl<R: Read> Reader<R> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        Reader { inner, read: 0 }
    }

    /// The next pkt-line. An end of stream where a pkt-line should start is
    /// an error naming what the server did.
    pub fn next(&mut self) -> Result<Pkt> {
        let mut len = [0u8; 4];
        self.fill(&mut len).context("reading a pkt-line length")?;
        let text = std::str::from_utf8(&len).unwrap_or("????");
        let n = usize::from_str_radix(text, 16)
            .with_context(|| format!("the server sent {text:?} where a pkt-line length belongs"))?;
        match n {
            0 => Ok(Pkt::Flush),
            1 => Ok(Pkt::Delim),
            2 => Ok(Pkt::ResponseEnd),
            3 => bail!("the server sent an invalid pkt-line length 3"),
            n if n > MAX_PKT => {
                bail!("the server sent a pkt-line of {n} bytes (at most {MAX_PKT})")
            }
            n => {
                let mut buf = vec![0u8; n - 4];
                self.fill(&mut buf).context("reading a pkt-line")?;
                Ok(Pkt::Data(buf))
            }
        }
    }

    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.read += buf.len() as u64;
        Ok(())
    }
}

/// Writes `bytes` and flushes them out.
pub fn send(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_with_their_markers() {
        let mut out = Vec::new();
        line(&mut out, "command=ls-refs");
        delim(&mut out);
        data(&mut out, b"x");
        flush(&mut out);
        assert_eq!(out, b"0014command=ls-refs\n00010005x0000");
        let mut r = Reader::new(&out[..]);
        assert_eq!(
            r.next().ok().as_ref().and_then(Pkt::line),
            Some("command=ls-refs")
        );
        assert_eq!(r.next().ok(), Some(Pkt::Delim));
        assert_eq!(r.next().ok(), Some(Pkt::Data(b"x".to_vec())));
        assert_eq!(r.next().ok(), Some(Pkt::Flush));
        assert_eq!(r.read, out.len() as u64);
        assert!(r.next().is_err(), "end of stream");
    }

    #[test]
    fn bad_lengths_are_refused() {
        for bad in [&b"zzzz"[..], b"0003", b"fff0"] {
            assert!(Reader::new(bad).next().is_err(), "{bad:?}");
        }
    }
}
