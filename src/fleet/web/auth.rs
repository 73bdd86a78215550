//! Who may use the fleet's web page when it listens beyond loopback: the
//! users and bearer tokens of `--auth-file`, each with a bcrypt hash as
//! Apache's `htpasswd -B` writes it, so no secret is stored in the clear.
//!
//! ```text
//! # USER:HASH, from `htpasswd -nB alice`
//! alice:$2y$05$...
//! # bearer:NAME:HASH, the hash of a token scripts send as
//! # `Authorization: Bearer TOKEN`
//! bearer:ci:$2y$05$...
//! ```

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// One entry of the file.
#[derive(Debug)]
struct Entry {
    /// The user, or the token's name.
    name: String,
    /// A bearer token rather than a password.
    bearer: bool,
    /// Its bcrypt hash.
    hash: String,
}

/// The users and tokens of an auth file, and the credentials already
/// checked (bcrypt is slow on purpose; a browser sends them with every
/// request).
#[derive(Debug)]
pub struct Users {
    entries: Vec<Entry>,
    /// SHA-1 of (name, secret) of credentials that verified.
    verified: Mutex<HashSet<[u8; 20]>>,
}

impl Users {
    /// Reads `path`; an error names the file and line.
    pub fn load(path: &Path) -> Result<Users> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the auth file {}", path.display()))?;
        Users::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Users> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{}:{}", path.display(), i + 1);
            let (bearer, rest) = match line.strip_prefix("bearer:") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let Some((name, hash)) = rest.split_once(':') else {
                bail!("{}: expected USER:HASH or bearer:NAME:HASH", at());
            };
            if name.is_empty() {
                bail!("{}: the name is empty", at());
            }
            if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
                bail!(
                    "{}: {name}'s hash is not bcrypt; make it with `htpasswd -nB {name}`",
                    at()
                );
            }
            entries.push(Entry {
                name: name.to_string(),
                bearer,
                hash: hash.to_string(),
            });
        }
        if entries.is_empty() {
            bail!("the auth file {} has no user or token", path.display());
        }
        Ok(Users {
            entries,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Who an `Authorization` header value names, if its secret is right.
    pub fn check(&self, authorization: Option<&str>) -> Option<String> {
        let value = authorization?.trim();
        if let Some(token) = value.strip_prefix("Bearer ") {
            return self
                .entries
                .iter()
                .filter(|e| e.bearer)
                .find(|e| self.verify(e, token.trim()))
                .map(|e| format!("{} (token)", e.name));
        }
        let encoded = value.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        self.entries
            .iter()
            .filter(|e| !e.bearer && e.name == user)
            .find(|e| self.verify(e, password))
            .map(|e| e.name.clone())
    }

    fn verify(&self, e: &Entry, secret: &str) -> bool {
        let mut h = Sha1::new();
        h.update(e.name.as_bytes());
        h.update([0]);
        h.update(e.hash.as_bytes());
        h.update([0]);
        h.update(secret.as_bytes());
        let key: [u8; 20] = h.finalize().into();
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.contains(&key) {
            return true;
        }
        let ok = bcrypt::verify(secret, &e.hash).unwrap_or(false);
        if ok {
            verified.insert(key);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_tokens_are_checked_against_their_hashes() {
        let alice = bcrypt::hash("s3cret", 4).expect("hash");
        let ci = bcrypt::hash("tok", 4).expect("hash");
        let text = format!("# users\nalice:{alice}\n\nbearer:ci:{ci}\n");
        let u = Users::parse(Path::new("auth"), &text).expect("valid");
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(
            u.check(Some(&basic("alice:s3cret"))).as_deref(),
            Some("alice")
        );
        assert_eq!(
            u.check(Some(&basic("alice:s3cret"))).as_deref(),
            Some("alice")
        );
        assert_eq!(u.check(Some(&basic("alice:wrong"))), None);
        assert_eq!(
            u.check(Some(&basic("ci:tok"))),
            None,
            "a token is no password"
        );
        assert_eq!(u.check(Some("Bearer tok")).as_deref(), Some("ci (token)"));
        assert_eq!(u.check(Some("Bearer nope")), None);
        assert_eq!(u.check(None), None);
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        for (text, wanted) in [
            ("alice", "auth:1: expected USER:HASH"),
            ("\nalice:plain", "auth:2: alice's hash is not bcrypt"),
            (":$2y$05$abc", "auth:1: the name is empty"),
            ("# nothing\n", "has no user or token"),
        ] {
            let e = Users::parse(Path::new("auth"), text).expect_err(text);
            assert!(e.to_string().contains(wanted), "{text}: {e}");
        }
    }
}
