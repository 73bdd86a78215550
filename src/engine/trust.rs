//! Only signed commits deploy: with `allowed_signers` or `openpgp_keys`,
//! every commit a
//! pass, a rollback or `forward` would deploy must carry a valid signature
//! by an allowed key, and a new head must not be older than what is
//! deployed (a server replaying an old signed commit) unless the operator
//! says so.

use anyhow::{bail, Result};
use git2::{Oid, Repository};

use crate::config::Service;
use crate::git::{allowed_signers, openpgp_keys, signature};
use crate::store::commit::CommitId;
use crate::store::state::{Rejected, Stage, State};
use crate::util::now_unix;

/// Refuses `target` unless it is signed by an allowed key, recording the
/// check (and a refusal as a rejection at stage `signature`).
pub fn require_signed(
    svc: &Service,
    repo: Option<&Repository>,
    state: &mut State,
    target: Oid,
) -> Result<()> {
    let Some(trusted) = trusted(svc)? else {
        state.signature = None;
        return Ok(());
    };
    let short = CommitId::from(target).short();
    let Some(repo) = repo else {
        bail!(
            "cannot check the signature of {short}: the mirror is unavailable; run provision sync"
        );
    };
    let verdict = signature::verify(repo, target, &trusted);
    let verified = verdict.verified;
    let said = verdict.describe();
    state.signature = Some(verdict);
    if verified {
        return Ok(());
    }
    state.rejected = Some(Rejected {
        commit: target.into(),
        stage: Stage::Signature,
        reason: said.clone(),
        time: now_unix(),
    });
    bail!("rejected {short} at signature: {said}; nothing switched")
}

/// Refuses a head committed before the deployed commit, unless
/// `allow_older` (`forward --allow-older`).
pub fn require_fresh(
    svc: &Service,
    repo: &Repository,
    deployed: Option<CommitId>,
    head: CommitId,
    allow_older: bool,
) -> Result<()> {
    let Some(deployed) = deployed.filter(|d| *d != head) else {
        return Ok(());
    };
    if !svc.checks_signatures() || allow_older {
        return Ok(());
    }
    let time = |c: CommitId| {
        repo.find_commit(c.oid())
            .ok()
            .map(|c| c.committer().when().seconds())
    };
    if let (Some(h), Some(d)) = (time(head), time(deployed)) {
        if h < d {
            bail!(
                "upstream head {} (committed {} UTC) is older than the deployed {} (committed {} UTC): \
                 the server may be replaying an old commit; not deploying it. \
                 `provision forward --allow-older {}` deploys it anyway",
                head.short(),
                crate::util::format_utc(h),
                deployed.short(),
                crate::util::format_utc(d),
                svc.name
            );
        }
    }
    Ok(())
}

/// The keys `svc` trusts, read now (a bad file fails the caller naming its
/// line); `None` when it checks no signatures.
pub fn trusted(svc: &Service) -> Result<Option<signature::Trusted>> {
    if !svc.checks_signatures() {
        return Ok(None);
    }
    let mut t = signature::Trusted::default();
    if let Some(p) = &svc.allowed_signers {
        t.ssh = allowed_signers::load(p)?;
    }
    if let Some(p) = &svc.openpgp_keys {
        t.openpgp = openpgp_keys::load(p)?;
    }
    Ok(Some(t))
}
