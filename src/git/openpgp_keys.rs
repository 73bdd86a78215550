//! `openpgp_keys`: ASCII-armored OpenPGP public keys (one or many blocks in
//! one file, as `gpg --armor --export` writes them) whose signatures a
//! service trusts, read with rPGP (the `pgp` crate).

use std::path::Path;

use anyhow::{Context, Result};
use pgp::composed::{Deserializable, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{Signature, SignatureType, SubpacketData};
use pgp::types::{KeyDetails as _, Tag, Timestamp};

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
            // Two exports concatenated without a line break between them:
            // the rest would be read as part of this block, and the keys
            // after it silently lost.
            (Some(_), l) if l.contains("-----END PGP") || l.contains("-----BEGIN PGP") => {
                return Err((
                    n,
                    "an armor line with more on it: each -----BEGIN and -----END line must be a line of its own".to_string(),
                ));
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

/// A key as messages name it: its first user id that the key itself
/// certifies (a keyserver copy can carry ids anyone appended), or its
/// fingerprint.
pub fn name(key: &SignedPublicKey) -> String {
    key.details
        .users
        .iter()
        .find(|u| {
            u.signatures.iter().any(|s| {
                s.verify_certification(&key.primary_key, Tag::UserId, &u.id)
                    .is_ok()
            })
        })
        .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
        .unwrap_or_else(|| fingerprint(key))
}

/// The primary key's fingerprint, in upper-case hex as gpg shows it.
pub fn fingerprint(key: &SignedPublicKey) -> String {
    use pgp::types::KeyDetails as _;
    format!("{:X}", key.fingerprint())
}

/// Why the key `key` (its primary key, or the subkey `sub` of it) may not
/// make signatures as of `now`, as gpg judges it; `None` when it may.
///
/// A key file is not a keyring that checked what it imported: a block
/// fetched from a keyserver can carry a subkey anyone appended, and an
/// old export still holds a key its owner has since revoked, let expire,
/// or limited to certifying. So a signature counts only when its key is
/// bound by a valid self-signature (for a subkey, a binding signature
/// from the primary key and the subkey's own back-signature), is not
/// revoked, has not expired, and is flagged for signing.
pub fn unusable(
    key: &SignedPublicKey,
    sub: Option<&SignedPublicSubKey>,
    now: u32,
) -> Option<String> {
    if let Some(why) = primary_unusable(key, now, sub.is_none()) {
        return Some(why);
    }
    let sub = sub?;
    let primary = &key.primary_key;
    let valid = |s: &&Signature, typ: SignatureType| {
        s.typ() == Some(typ) && s.verify_subkey_binding(primary, &sub.key).is_ok()
    };
    if let Some(r) = sub
        .signatures
        .iter()
        .find(|s| valid(s, SignatureType::SubkeyRevocation))
    {
        return Some(format!("subkey {} is revoked{}", sub_name(sub), reason(r)));
    }
    let Some(binding) = newest(
        sub.signatures
            .iter()
            .filter(|s| valid(s, SignatureType::SubkeyBinding)),
    ) else {
        return Some(format!(
            "subkey {} is not bound to the key by a valid binding signature",
            sub_name(sub)
        ));
    };
    if !binding.key_flags().sign() {
        return Some(format!(
            "subkey {} is not flagged for signing",
            sub_name(sub)
        ));
    }
    let backsig = binding
        .embedded_signature()
        .is_some_and(|b| b.verify_primary_key_binding(&sub.key, primary).is_ok());
    if !backsig {
        return Some(format!(
            "signing subkey {} has no valid back-signature (it is not cross-certified)",
            sub_name(sub)
        ));
    }
    expired(sub.key.created_at(), binding, now)
        .map(|on| format!("subkey {} expired {on}", sub_name(sub)))
}

/// [`unusable`] for the primary key; `signs` when the primary key itself
/// made the signature (so it must be flagged for signing, not only for
/// certifying its subkeys).
fn primary_unusable(key: &SignedPublicKey, now: u32, signs: bool) -> Option<String> {
    let primary = &key.primary_key;
    if let Some(r) =
        key.details.revocation_signatures.iter().find(|s| {
            s.typ() == Some(SignatureType::KeyRevocation) && s.verify_key(primary).is_ok()
        })
    {
        return Some(format!("the key is revoked{}", reason(r)));
    }
    let certifications = key.details.users.iter().flat_map(|u| {
        u.signatures.iter().filter(move |s| {
            matches!(
                s.typ(),
                Some(
                    SignatureType::CertGeneric
                        | SignatureType::CertPersona
                        | SignatureType::CertCasual
                        | SignatureType::CertPositive
                )
            ) && s.verify_certification(primary, Tag::UserId, &u.id).is_ok()
        })
    });
    let direct = key
        .details
        .direct_signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::Key) && s.verify_key(primary).is_ok());
    let Some(selfsig) = newest(certifications.chain(direct)) else {
        return Some("the key has no valid self-signature".to_string());
    };
    if let Some(on) = expired(primary.created_at(), selfsig, now) {
        return Some(format!("the key expired {on}"));
    }
    if signs && has_key_flags(selfsig) && !selfsig.key_flags().sign() {
        return Some("the key is not flagged for signing (only its subkeys may sign)".to_string());
    }
    None
}

/// The most recent of `sigs` (the one in force, as for gpg).
fn newest<'a>(sigs: impl Iterator<Item = &'a Signature>) -> Option<&'a Signature> {
    sigs.max_by_key(|s| s.created().map_or(0, |t| t.as_secs()))
}

/// When the key created at `created` expired by `sig`, if it has by `now`.
fn expired(created: Timestamp, sig: &Signature, now: u32) -> Option<String> {
    ended(created.as_secs(), sig.key_expiration_time()?.as_secs(), now)
}

/// "on DATE" when something that began at `start` and lasts `lasts`
/// seconds (0: for ever) has ended by `now`: a key's or a signature's
/// expiry, as OpenPGP counts it.
pub fn ended(start: u32, lasts: u32, now: u32) -> Option<String> {
    let end = u64::from(start) + u64::from(lasts);
    (lasts != 0 && end <= u64::from(now)).then(|| {
        format!(
            "on {}",
            crate::util::format_utc(i64::try_from(end).unwrap_or(i64::MAX))
        )
    })
}

/// Whether `sig` says what its key may do at all (no flags: anything the
/// algorithm can).
fn has_key_flags(sig: &Signature) -> bool {
    sig.config().is_some_and(|c| {
        c.hashed_subpackets()
            .any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
    })
}

/// ": REASON" of a revocation that gives one.
fn reason(sig: &Signature) -> String {
    sig.revocation_reason_string()
        .map(|r| {
            format!(
                ": {}",
                crate::util::escape_text(&String::from_utf8_lossy(r))
            )
        })
        .unwrap_or_default()
}

/// A subkey as messages name it: its fingerprint.
fn sub_name(sub: &SignedPublicSubKey) -> String {
    use pgp::types::KeyDetails as _;
    format!("{:X}", sub.key.fingerprint())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cat a.asc b.asc` where a.asc lacks its final newline: the second
    /// key must not vanish silently.
    #[test]
    fn two_blocks_run_together_on_one_line_are_an_error_naming_the_line() {
        let text = format!("{BEGIN}\n\nAAAA\n{END}{BEGIN}\n\nBBBB\n{END}\n");
        let (line, msg) = parse(&text).expect_err("glued blocks");
        assert_eq!(line, 4, "{msg}");
        assert!(msg.contains("a line of its own"), "{msg}");
    }
}
