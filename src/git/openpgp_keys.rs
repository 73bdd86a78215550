//! `openpgp_keys`: ASCII-armored OpenPGP public keys (one or many blocks in
//! one file, as `gpg --armor --export` writes them) whose signatures a
//! service trusts, read with rPGP (the `pgp` crate).

use std::path::Path;

use anyhow::{Context, Result};
use pgp::composed::{Deserializable, SignedPublicKey};

const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const END: &str = "-----END PGP PUBLIC KEY BLOCK-----";

/// Reads `path`; an error names the file and the line its block starts at.
pub fn load(path: &Path) -> Result<Vec<SignedPublicKey>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading openpgp_keys {}", path.display()))?;
    parse(&text).map_err(|(line, msg)| anyhow::anyhow!("{}:{line}: {msg}", path.display()))
}

/// Every key of every armored block of `text`; an error is (line, message).
pub fn parse(text: &str) -> Result<Vec<SignedPublicKey>, (usize, String)> {
    let mut keys = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        match (&mut block, line.trim()) {
            (None, BEGIN) => block = Some((n, format!("{BEGIN}\n"))),
            (None, l) if l.is_empty() || l.starts_with('#') => {}
            (None, _) => return Err((n, format!("text outside a key block; expected {BEGIN}"))),
            (Some((start, b)), END) => {
                b.push_str(END);
                b.push('\n');
                keys.extend(block_keys(b).map_err(|e| (*start, e))?);
                block = None;
            }
            (Some((_, b)), l) => {
                b.push_str(l);
                b.push('\n');
            }
        }
    }
    if let Some((start, _)) = block {
        return Err((start, format!("the key block has no {END} line")));
    }
    if keys.is_empty() {
        return Err((1, "no OpenPGP public key in the file".to_string()));
    }
    Ok(keys)
}

fn block_keys(armored: &str) -> Result<Vec<SignedPublicKey>, String> {
    let (keys, _) = SignedPublicKey::from_string_many(armored)
        .map_err(|e| format!("not an OpenPGP public key block: {e}"))?;
    let keys: Vec<SignedPublicKey> = keys
        .collect::<pgp::errors::Result<_>>()
        .map_err(|e| format!("a key of this block cannot be read: {e}"))?;
    if keys.is_empty() {
        return Err("the block holds no public key".to_string());
    }
    Ok(keys)
}

/// A key as messages name it: its first user id, or its fingerprint.
pub fn name(key: &SignedPublicKey) -> String {
    key.details
        .users
        .first()
        .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
        .unwrap_or_else(|| fingerprint(key))
}

/// The primary key's fingerprint, in upper-case hex as gpg shows it.
pub fn fingerprint(key: &SignedPublicKey) -> String {
    use pgp::types::KeyDetails as _;
    format!("{:X}", key.fingerprint())
}
