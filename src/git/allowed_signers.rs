//! git's `gpg.ssh.allowedSignersFile` format (ssh-keygen(1), "ALLOWED
//! SIGNERS"): which SSH keys may sign commits, for whom, in which
//! namespaces and when.
//!
//! ```text
//! # principals [options] keytype base64-key [comment]
//! alice@example.net ssh-ed25519 AAAAC3Nza... alice's laptop
//! ci@example.net namespaces="git",valid-before="20270101" ssh-ed25519 AAAA...
//! ```
//!
//! Times (`valid-after`, `valid-before`: `YYYYMMDD[HHMM[SS]]`, an optional
//! `Z`) are read as UTC, and compared with the commit's committer time, as
//! git does. `cert-authority` lines are refused: provision does not verify
//! certificates.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ssh_key::PublicKey;

/// One line of the file.
#[derive(Debug, Clone)]
pub struct Signer {
    /// Who the key speaks for (patterns as written).
    pub principals: Vec<String>,
    /// The namespaces it may sign in; `None`: any.
    pub namespaces: Option<Vec<String>>,
    /// Unix time before which its signatures are not valid.
    pub valid_after: Option<i64>,
    /// Unix time from which its signatures are not valid.
    pub valid_before: Option<i64>,
    /// The key.
    pub key: PublicKey,
    /// The line, for messages.
    pub line: usize,
}

/// Reads `path`; an error names the file and line.
pub fn load(path: &Path) -> Result<Vec<Signer>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading allowed_signers {}", path.display()))?;
    parse(&text).map_err(|(line, msg)| anyhow::anyhow!("{}:{line}: {msg}", path.display()))
}

/// Parses the file's text; an error is (line, message).
pub fn parse(text: &str) -> Result<Vec<Signer>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line, i + 1).map_err(|e| (i + 1, format!("{e:#}")))?);
    }
    Ok(out)
}

fn parse_line(line: &str, number: usize) -> Result<Signer> {
    let (principals, rest) = split_field(line);
    if principals.is_empty() {
        bail!("no principals");
    }
    let principals: Vec<String> = principals.split(',').map(str::to_string).collect();
    if principals.iter().any(String::is_empty) {
        bail!("an empty principal in {:?}", principals.join(","));
    }
    let rest = rest.trim_start();
    if rest.is_empty() {
        bail!("no key after the principals");
    }
    let mut signer = Signer {
        principals,
        namespaces: None,
        valid_after: None,
        valid_before: None,
        key: placeholder_key(),
        line: number,
    };
    let (first, after) = split_field(rest);
    let key_text = if is_key_type(first) {
        rest
    } else {
        options(first, &mut signer)?;
        after.trim_start()
    };
    if key_text.is_empty() {
        bail!("no key after the options");
    }
    signer.key = PublicKey::from_openssh(key_text).map_err(|e| {
        let kind = key_text.split_whitespace().next().unwrap_or("");
        anyhow::anyhow!("the key ({kind}) cannot be read: {e}")
    })?;
    Ok(signer)
}

/// A key type as OpenSSH writes them (`ssh-ed25519`, `ecdsa-sha2-nistp256`,
/// `sk-ssh-ed25519@openssh.com`...), which no option starts like.
fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-") || word.starts_with("sk-")
}

/// The first field, quotes respected, and the rest.
fn split_field(s: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&s[..i], &s[i..]),
            _ => {}
        }
    }
    (s, "")
}

/// Reads the comma-separated options into `signer`.
fn options(text: &str, signer: &mut Signer) -> Result<()> {
    let mut quoted = false;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        bail!("an unterminated quote in the options {text:?}");
    }
    parts.push(&text[start..]);
    for opt in parts {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v.trim_matches('"'))),
            None => (opt, None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("namespaces", Some(v)) => {
                signer.namespaces = Some(v.split(',').map(str::to_string).collect());
            }
            ("valid-after", Some(v)) => signer.valid_after = Some(time(v)?),
            ("valid-before", Some(v)) => signer.valid_before = Some(time(v)?),
            ("cert-authority", None) => {
                bail!("cert-authority is not supported: list the signing keys themselves")
            }
            (other, _) => bail!(
                "unknown option {other:?}: expected namespaces=, valid-after= or valid-before="
            ),
        }
    }
    Ok(())
}

/// `YYYYMMDD[HHMM[SS]][Z]` as Unix seconds (UTC).
fn time(v: &str) -> Result<i64> {
    let digits = v.strip_suffix(['Z', 'z']).unwrap_or(v);
    let bad =
        || anyhow::anyhow!("{v:?} is not a time: write YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| digits.get(r).map_or(Ok(0), |s| s.parse::<i64>());
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, s) = (n(8..10)?, n(10..12)?, n(12..14)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    Ok(crate::util::days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// A key filled in before the real one is read.
fn placeholder_key() -> PublicKey {
    PublicKey::from(ssh_key::public::Ed25519PublicKey([0; 32]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPz431lChvrgaK8U0tURDc6yGkWBw7GPZoeF1JmDiXrb";

    #[test]
    fn lines_with_and_without_options_are_read() {
        let text = format!(
            "# team\nalice@example.net,bob@example.net {KEY} laptop\n\n\
             ci@example.net namespaces=\"git,file\",valid-after=\"20260101\",valid-before=\"202701011230Z\" {KEY}\n"
        );
        let s = parse(&text).expect("valid");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].principals, ["alice@example.net", "bob@example.net"]);
        assert_eq!(s[0].namespaces, None);
        assert_eq!(s[0].line, 2);
        assert_eq!(
            s[1].namespaces.as_deref(),
            Some(&["git".to_string(), "file".to_string()][..])
        );
        assert_eq!(s[1].valid_after, Some(1_767_225_600));
        assert_eq!(s[1].valid_before, Some(1_798_806_600));
        assert_eq!(s[0].key.key_data(), s[1].key.key_data());
    }

    #[test]
    fn malformed_lines_are_refused_with_their_line_and_reason() {
        for (line, wanted) in [
            ("alice@example.net", "no key after the principals"),
            (&format!(",alice {KEY}"), "an empty principal"),
            ("alice namespaces=\"git", "unterminated quote"),
            ("alice valid-before=\"2027\" ssh-ed25519 AAAA", "not a time"),
            (
                "alice valid-after=\"20261301\" ssh-ed25519 AAAA",
                "not a time",
            ),
            (
                &format!("alice cert-authority {KEY}"),
                "cert-authority is not supported",
            ),
            (&format!("alice no-touch-required {KEY}"), "unknown option"),
            (
                "alice ssh-ed25519 AAAA!!",
                "the key (ssh-ed25519) cannot be read",
            ),
            ("alice namespaces=\"git\"", "no key after the options"),
        ] {
            let text = format!("# first\n{line}\n");
            let (n, msg) = parse(&text).expect_err(line);
            assert_eq!(n, 2, "{line}");
            assert!(msg.contains(wanted), "{line}: {msg}");
        }
    }
}
