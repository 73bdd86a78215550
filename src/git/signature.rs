//! Commit signatures: who signed a commit, checked in-process against the
//! keys a service trusts, over the commit without its `gpgsig` header. SSH
//! signatures (`gpg.format = ssh`: an `sshsig` in the `git` namespace) are
//! verified with the `ssh-key` crate, OpenPGP ones (GnuPG's default) with
//! rPGP; no gpg or ssh-keygen runs.

use git2::{Oid, Repository};
use ssh_key::{HashAlg, PublicKey, SshSig};

use crate::git::allowed_signers::Signer;
use crate::git::openpgp_keys;
pub use crate::model::signature::Verdict;

/// The keys a service trusts.
#[derive(Default)]
pub struct Trusted {
    /// From `allowed_signers`.
    pub ssh: Vec<Signer>,
    /// From `openpgp_keys`.
    pub openpgp: Vec<pgp::composed::SignedPublicKey>,
}

/// The namespace git signs commits in.
const NAMESPACE: &str = "git";

/// A signed commit's signature and the bytes it signs (its payload).
type Signed = (Vec<u8>, Vec<u8>);

/// The header that carries a commit's signature (in a SHA-1 repository).
const SIGNATURE_HEADER: &[u8] = b"gpgsig";

/// Splits a raw commit object into its signature and the bytes it signs,
/// as git does: the one `gpgsig` header of the header block (its value and
/// continuation lines, each without its leading space) is the signature,
/// and the object without that header is the payload. A `gpgsig` line in
/// the message is message, not a signature (libgit2's extraction takes
/// one from anywhere in the object, so one signature could vouch for many
/// commits). `Ok(None)`: unsigned.
fn split_signed(raw: &[u8]) -> Result<Option<Signed>, String> {
    let mut payload = Vec::with_capacity(raw.len());
    let mut signature: Option<Vec<u8>> = None;
    let mut in_signature = false;
    let mut rest = raw;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, after) = rest.split_at(end);
        if line == b"\n" {
            // The end of the headers: the message follows, as it is.
            payload.extend_from_slice(rest);
            break;
        }
        if in_signature && line.first() == Some(&b' ') {
            if let Some(sig) = signature.as_mut() {
                sig.extend_from_slice(&line[1..]);
            }
        } else if line
            .strip_prefix(SIGNATURE_HEADER)
            .is_some_and(|v| v.first() == Some(&b' '))
        {
            if signature.is_some() {
                return Err("more than one gpgsig header".to_string());
            }
            signature = Some(line[SIGNATURE_HEADER.len() + 1..].to_vec());
            in_signature = true;
        } else {
            in_signature = false;
            payload.extend_from_slice(line);
        }
        rest = after;
    }
    Ok(signature.map(|s| (s, payload)))
}

/// Checks `commit` of `repo` against the `trusted` keys.
pub fn verify(repo: &Repository, commit: Oid, trusted: &Trusted) -> Verdict {
    let cannot = |why: String| {
        refused(
            commit,
            "unknown",
            None,
            None,
            format!("cannot read the signature: {why}"),
        )
    };
    let odb = match repo.odb() {
        Ok(odb) => odb,
        Err(e) => return cannot(e.message().to_string()),
    };
    let raw = match odb.read(commit) {
        Ok(o) if o.kind() == git2::ObjectType::Commit => o.data().to_vec(),
        Ok(_) => return cannot("not a commit".to_string()),
        Err(e) => return cannot(e.message().to_string()),
    };
    let (signature, payload) = match split_signed(&raw) {
        Ok(Some(split)) => split,
        Ok(None) => return refused(commit, "unsigned", None, None, "unsigned".to_string()),
        Err(why) => return cannot(why),
    };
    let text = String::from_utf8_lossy(&signature).into_owned();
    if text.contains("-----BEGIN SSH SIGNATURE-----") {
        let when = repo
            .find_commit(commit)
            .map(|c| c.committer().when().seconds())
            .unwrap_or(0);
        return ssh(commit, &text, &payload, when, &trusted.ssh);
    }
    if text.contains("-----BEGIN PGP SIGNATURE-----") {
        return openpgp(commit, &text, &payload, &trusted.openpgp);
    }
    refused(
        commit,
        "unknown",
        None,
        Some("x509"),
        "signed with an X.509 certificate, which provision does not verify".to_string(),
    )
}

fn openpgp(
    commit: Oid,
    armored: &str,
    payload: &[u8],
    keys: &[pgp::composed::SignedPublicKey],
) -> Verdict {
    use pgp::composed::{Deserializable as _, DetachedSignature};
    use pgp::types::KeyDetails as _;
    let sig = match DetachedSignature::from_string(armored) {
        Ok((s, _)) => s,
        Err(e) => {
            return refused(
                commit,
                "unknown",
                None,
                Some("openpgp"),
                format!("bad signature (unreadable: {e})"),
            )
        }
    };
    let issuers: Vec<String> = sig
        .signature
        .issuer_fingerprint()
        .iter()
        .map(|f| format!("{f:X}"))
        .chain(
            sig.signature
                .issuer_key_id()
                .iter()
                .map(|k| hex(k.as_ref())),
        )
        .collect();
    let now = u32::try_from(crate::util::now_unix()).unwrap_or(u32::MAX);
    for key in keys {
        // The key that made the signature: the primary key or a subkey.
        let made_by = if sig.verify(&key.primary_key, payload).is_ok() {
            Some(None)
        } else {
            key.public_subkeys
                .iter()
                .find(|s| sig.verify(&s.key, payload).is_ok())
                .map(Some)
        };
        let Some(sub) = made_by else {
            continue;
        };
        let refusal = signature_expired(&sig.signature, now).or_else(|| {
            openpgp_keys::unusable(key, sub, now)
                .map(|why| format!("a key that may not sign: {why}"))
        });
        if let Some(why) = refusal {
            return refused(
                commit,
                &openpgp_keys::name(key),
                Some(openpgp_keys::fingerprint(key)),
                Some("openpgp"),
                why,
            );
        }
        return Verdict {
            commit: commit.to_string(),
            verified: true,
            signer: openpgp_keys::name(key),
            fingerprint: Some(openpgp_keys::fingerprint(key)),
            format: Some("openpgp".to_string()),
            reason: None,
        };
    }
    let issuer = issuers
        .first()
        .cloned()
        .unwrap_or_else(|| "unknown".to_string());
    // A trusted key named as the issuer that does not verify: the content
    // changed after signing.
    let known = keys.iter().find(|k| {
        std::iter::once(format!("{:X}", k.primary_key.fingerprint()))
            .chain(std::iter::once(hex(k.primary_key.legacy_key_id().as_ref())))
            .chain(k.public_subkeys.iter().flat_map(|s| {
                [
                    format!("{:X}", s.key.fingerprint()),
                    hex(s.key.legacy_key_id().as_ref()),
                ]
            }))
            .any(|id| issuers.iter().any(|i| i.eq_ignore_ascii_case(&id)))
    });
    match known {
        Some(k) => refused(
            commit,
            &openpgp_keys::name(k),
            Some(openpgp_keys::fingerprint(k)),
            Some("openpgp"),
            "bad signature".to_string(),
        ),
        None => refused(
            commit,
            &issuer,
            Some(issuer.clone()),
            Some("openpgp"),
            "unknown key".to_string(),
        ),
    }
}

/// A verdict that `commit` does not count, and why.
fn refused(
    commit: Oid,
    signer: &str,
    fingerprint: Option<String>,
    format: Option<&str>,
    reason: String,
) -> Verdict {
    Verdict {
        commit: commit.to_string(),
        verified: false,
        signer: signer.to_string(),
        fingerprint,
        format: format.map(str::to_string),
        reason: Some(reason),
    }
}

/// Why an OpenPGP signature no longer counts by its own terms: it
/// carries an expiry that has passed.
fn signature_expired(sig: &pgp::packet::Signature, now: u32) -> Option<String> {
    let lasts = sig.signature_expiration_time()?.as_secs();
    openpgp_keys::ended(sig.created()?.as_secs(), lasts, now)
        .map(|on| format!("the signature expired {on}"))
}

fn ssh(commit: Oid, armored: &str, payload: &[u8], when: i64, signers: &[Signer]) -> Verdict {
    let sig = match SshSig::from_pem(armored.trim()) {
        Ok(s) => s,
        Err(e) => {
            return refused(
                commit,
                "unknown",
                None,
                Some("ssh"),
                format!("bad signature (unreadable: {e})"),
            )
        }
    };
    let key = PublicKey::from(sig.public_key().clone());
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let refused = |signer: &str, reason: String| {
        refused(
            commit,
            signer,
            Some(fingerprint.clone()),
            Some("ssh"),
            reason,
        )
    };
    let allowed: Vec<&Signer> = signers
        .iter()
        .filter(|s| s.key.key_data() == sig.public_key())
        .collect();
    let Some(first) = allowed.first() else {
        return refused(&fingerprint, "unknown key".to_string());
    };
    let who = first.principals.join(",");
    if sig.namespace() != NAMESPACE {
        return refused(
            &who,
            format!(
                "wrong namespace {:?} (commits are signed in \"git\")",
                sig.namespace()
            ),
        );
    }
    let usable: Vec<&&Signer> = allowed
        .iter()
        .filter(|s| {
            s.namespaces
                .as_ref()
                .is_none_or(|n| n.iter().any(|n| n == NAMESPACE))
        })
        .collect();
    if usable.is_empty() {
        return refused(
            &who,
            "wrong namespace: the key may not sign in \"git\" (namespaces=)".to_string(),
        );
    }
    let in_time: Vec<&&&Signer> = usable
        .iter()
        .filter(|s| {
            s.valid_after.is_none_or(|t| when >= t) && s.valid_before.is_none_or(|t| when < t)
        })
        .collect();
    let Some(signer) = in_time.first() else {
        let s = usable[0];
        let reason = match (s.valid_after, s.valid_before) {
            (Some(t), _) if when < t => format!(
                "not valid yet: the key is valid from {} UTC (line {})",
                crate::util::format_utc(t),
                s.line
            ),
            (_, Some(t)) => format!(
                "expired: the key was valid until {} UTC (line {})",
                crate::util::format_utc(t),
                s.line
            ),
            _ => "outside the key's validity".to_string(),
        };
        return refused(&who, reason);
    };
    if let Err(e) = key.verify(NAMESPACE, payload, &sig) {
        return refused(&who, format!("bad signature: {e}"));
    }
    Verdict {
        commit: commit.to_string(),
        verified: true,
        signer: signer.principals.join(","),
        fingerprint: Some(fingerprint),
        format: Some("ssh".to_string()),
        reason: None,
    }
}

/// Upper-case hex, as gpg shows key ids.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::split_signed;

    const HEAD: &str = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@x> 1 +0000\ncommitter A <a@x> 1 +0000\n";

    #[test]
    fn the_signature_is_the_gpgsig_header_with_its_continuation_lines() {
        let raw = format!("{HEAD}gpgsig -----BEGIN X-----\n abc\n \n -----END X-----\n\nsubject\n");
        let (sig, payload) = split_signed(raw.as_bytes())
            .expect("parses")
            .expect("signed");
        assert_eq!(sig, b"-----BEGIN X-----\nabc\n\n-----END X-----\n");
        assert_eq!(payload, format!("{HEAD}\nsubject\n").as_bytes());
    }

    #[test]
    fn a_gpgsig_line_in_the_message_is_message() {
        let raw = format!("{HEAD}\nsubject\ngpgsig -----BEGIN X-----\n abc\n");
        assert_eq!(split_signed(raw.as_bytes()), Ok(None));
    }

    #[test]
    fn two_signature_headers_are_refused() {
        let raw = format!("{HEAD}gpgsig a\ngpgsig b\n\nsubject\n");
        assert!(split_signed(raw.as_bytes()).is_err());
    }
}
