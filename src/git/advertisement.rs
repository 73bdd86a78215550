//! The ref advertisement of git's protocol v0: what an ssh server whose
//! sshd does not pass `GIT_PROTOCOL` on sends first, on the same
//! connection that asked for v2. Every ref the repository has, one per
//! line (`ID NAME`), the first carrying the server's capabilities after a
//! NUL byte, up to a flush. Read here so that such a server is still
//! fetched from over the operator's OpenSSH, by provision's own client.

use std::collections::HashMap;
use std::io::Read;

use anyhow::{bail, Context, Result};
use git2::Oid;

use crate::git::pkt_line::{Pkt, Reader};

/// Refs read at most: a forge's largest repositories have some hundred
/// thousand (every pull request's head); the byte budget of the fetch
/// bounds the rest.
const MAX_REFS: usize = 2_000_000;

/// A server's v0 advertisement.
#[derive(Debug, Default, Clone)]
pub struct Advertisement {
    /// Ref name to the object it names (peeled `^{}` lines left out).
    pub refs: HashMap<String, Oid>,
    /// The capabilities of the first line (`side-band-64k`, `shallow`…).
    pub caps: Vec<String>,
}

impl Advertisement {
    /// Reads the advertisement whose first line the caller already read
    /// (`first`: `None` when it was the flush of a repository without
    /// refs) up to its flush.
    pub fn read<R: Read>(first: Option<&[u8]>, r: &mut Reader<R>) -> Result<Advertisement> {
        let mut adv = Advertisement::default();
        let Some(first) = first else {
            return Ok(adv);
        };
        let (line, caps) = match first.iter().position(|b| *b == 0) {
            Some(i) => (&first[..i], &first[i + 1..]),
            None => (first, &b""[..]),
        };
        adv.caps = String::from_utf8_lossy(caps)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        adv.add(line)?;
        loop {
            match r.next().context("reading the server's ref list")? {
                Pkt::Flush => return Ok(adv),
                Pkt::Data(d) => {
                    if adv.refs.len() >= MAX_REFS {
                        bail!("the server advertised more than {MAX_REFS} refs");
                    }
                    adv.add(&d)?;
                }
                other => bail!("the server sent {other:?} inside its ref list"),
            }
        }
    }

    /// Whether the server named capability `cap`.
    pub fn has(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c == cap)
    }

    /// One `ID NAME` line; `shallow ID` lines (a shallow server) and the
    /// `capabilities^{}` placeholder of an empty repository name no ref.
    fn add(&mut self, line: &[u8]) -> Result<()> {
        let line = std::str::from_utf8(line)
            .context("the server sent a ref line that is not text")?
            .trim_end_matches('\n');
        if let Some(msg) = line.strip_prefix("ERR ") {
            bail!("the server said: {msg}");
        }
        let Some((id, name)) = line.split_once(' ') else {
            bail!("the server sent {line:?} as a ref");
        };
        if id == "shallow" || name == "capabilities^{}" || name.ends_with("^{}") {
            return Ok(());
        }
        let oid = Oid::from_str(id)
            .with_context(|| format!("the server sent {id:?} as the id of {name}"))?;
        self.refs.insert(name.to_string(), oid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::pkt_line;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn refs_and_capabilities_are_read_up_to_the_flush() {
        let first = format!("{A} HEAD\0multi_ack side-band-64k shallow agent=git/2.47\n");
        let mut rest = Vec::new();
        pkt_line::line(&mut rest, &format!("{A} refs/heads/main"));
        pkt_line::line(&mut rest, &format!("{B} refs/tags/v1"));
        pkt_line::line(&mut rest, &format!("{A} refs/tags/v1^{{}}"));
        pkt_line::flush(&mut rest);
        pkt_line::line(&mut rest, "after the flush");
        let mut r = Reader::new(&rest[..]);
        let adv = Advertisement::read(Some(first.as_bytes()), &mut r).expect("read");
        assert_eq!(
            adv.refs.get("refs/heads/main"),
            Oid::from_str(A).ok().as_ref()
        );
        assert_eq!(adv.refs.get("refs/tags/v1"), Oid::from_str(B).ok().as_ref());
        assert_eq!(adv.refs.len(), 3);
        assert!(adv.has("side-band-64k") && adv.has("shallow") && !adv.has("filter"));
        assert!(r.next().is_ok(), "the line after the flush is left unread");
    }

    #[test]
    fn an_empty_repository_and_a_refusal() {
        let zero = "0".repeat(40);
        let first = format!("{zero} capabilities^{{}}\0side-band-64k\n");
        let mut flush = Vec::new();
        pkt_line::flush(&mut flush);
        let adv = Advertisement::read(Some(first.as_bytes()), &mut Reader::new(&flush[..]))
            .expect("read");
        assert!(adv.refs.is_empty() && adv.has("side-band-64k"));
        let e = Advertisement::read(Some(b"ERR no such repository\n"), &mut Reader::new(&[][..]))
            .expect_err("refused");
        assert!(e.to_string().contains("no such repository"), "{e}");
        let e = Advertisement::read(Some(b"nonsense\n"), &mut Reader::new(&[][..]))
            .expect_err("garbage");
        assert!(e.to_string().contains("nonsense"), "{e}");
    }
}
