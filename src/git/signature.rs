//! Commit signatures: who signed a commit, checked in-process against the
//! keys a service trusts. SSH signatures (`gpg.format = ssh`: an `sshsig`
//! in the `git` namespace over the commit without its `gpgsig` header) are
//! verified with the `ssh-key` crate; no gpg or ssh-keygen runs.

use git2::{Oid, Repository};
use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, PublicKey, SshSig};

use crate::git::allowed_signers::Signer;

/// The namespace git signs commits in.
const NAMESPACE: &str = "git";

/// What a check of one commit found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The commit checked.
    pub commit: String,
    /// Whether it carries a valid signature by an allowed key.
    pub verified: bool,
    /// The principals of the allowed key, or `unsigned`, or the key's
    /// fingerprint when it is not allowed.
    pub signer: String,
    /// The signing key's fingerprint (`SHA256:...`), when signed.
    pub fingerprint: Option<String>,
    /// `ssh` or `openpgp`, when signed.
    pub format: Option<String>,
    /// Why it is not verified (`unsigned`, `unknown key`, ...).
    pub reason: Option<String>,
}

impl Verdict {
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

    /// One line: `signed by alice@example.net (ssh, SHA256:...)` or why not.
    pub fn describe(&self) -> String {
        let key = self
            .fingerprint
            .as_deref()
            .map(|f| format!(", {}", f))
            .unwrap_or_default();
        let format = self.format.as_deref().unwrap_or("");
        match (&self.reason, self.verified) {
            (None, true) => format!("signed by {} ({format}{key})", self.signer),
            (Some(r), _) if *r == self.signer => r.clone(),
            (reason, _) => format!(
                "{}: {}{}",
                self.signer,
                reason.as_deref().unwrap_or("not verified"),
                if format.is_empty() {
                    String::new()
                } else {
                    format!(" ({format}{key})")
                }
            ),
        }
    }
}

/// Checks `commit` of `repo` against `signers`.
pub fn verify(repo: &Repository, commit: Oid, signers: &[Signer]) -> Verdict {
    let (signature, payload) = match repo.extract_signature(&commit, None) {
        Ok((s, p)) => (s, p),
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Verdict::refused(commit, "unsigned", None, None, "unsigned".to_string())
        }
        Err(e) => {
            return Verdict::refused(
                commit,
                "unknown",
                None,
                None,
                format!("cannot read the signature: {}", e.message()),
            )
        }
    };
    let text = String::from_utf8_lossy(&signature).into_owned();
    if text.contains("-----BEGIN SSH SIGNATURE-----") {
        let when = repo
            .find_commit(commit)
            .map(|c| c.committer().when().seconds())
            .unwrap_or(0);
        return ssh(commit, &text, &payload, when, signers);
    }
    let format = if text.contains("-----BEGIN PGP SIGNATURE-----") {
        "openpgp"
    } else {
        "x509"
    };
    Verdict::refused(
        commit,
        "unknown",
        None,
        Some(format),
        format!("signed with {format}, and no {format} keys are trusted (allowed_signers holds SSH keys)"),
    )
}

fn ssh(commit: Oid, armored: &str, payload: &[u8], when: i64, signers: &[Signer]) -> Verdict {
    let sig = match SshSig::from_pem(armored.trim()) {
        Ok(s) => s,
        Err(e) => {
            return Verdict::refused(
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
        Verdict::refused(
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
