//! Only signed commits deploy: with `allowed_signers` or `openpgp_keys`,
//! every commit a pass, a rollback or `forward` would deploy must carry a
//! valid signature by an allowed key, and a new head must descend from the
//! newest head deployed (not a server replaying an old signed commit, or
//! one from another branch) unless the operator says so.

use anyhow::{bail, Result};
use git2::{Oid, Repository};

use crate::git::mirror::{Descent, Mirror};

use crate::config::Service;
use crate::git::{allowed_signers, openpgp_keys, signature};
use crate::model::commit::CommitId;
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

/// Refuses a head that does not descend from the newest head this machine
/// deployed from upstream (or, in a state written before that was kept,
/// the deployed commit), unless `allow_older` (`forward --allow-older`).
/// Descent is proven from the commits' own parent ids, fetching deeper
/// history when the mirror's ends first; what cannot be proven is refused
/// and recorded as rejected at stage `ancestry`, so a hostile server does
/// not make every pass fetch again. A failure to reach the server fails
/// the pass and is tried again.
pub fn require_descent(
    svc: &Service,
    mirror: &Mirror,
    state: &mut State,
    head: CommitId,
    allow_older: bool,
) -> Result<()> {
    let newest = state
        .followed
        .or_else(|| state.deployed.as_ref().map(|d| d.commit));
    let Some(newest) = newest.filter(|n| *n != head) else {
        return Ok(());
    };
    if !svc.checks_signatures() || allow_older {
        return Ok(());
    }
    let why = match mirror.descends(head.oid(), newest.oid(), &svc.credentials, svc.timeout)? {
        Descent::Proven => return Ok(()),
        Descent::Not => format!(
            "upstream head {} does not descend from {}, the newest head deployed here: \
             the server may be replaying an old commit or one from another branch",
            head.short(),
            newest.short()
        ),
        Descent::Unproven(why) => format!(
            "cannot prove that upstream head {} descends from {}, the newest head deployed here ({why})",
            head.short(),
            newest.short()
        ),
    };
    state.rejected = Some(Rejected {
        commit: head,
        stage: Stage::Ancestry,
        reason: why.clone(),
        time: now_unix(),
    });
    bail!(
        "{why}; not deploying it. `provision forward --allow-older {}` deploys it anyway",
        svc.name
    )
}

/// The keys `svc` trusts, read now (a bad file fails the caller naming its
/// line); `None` when it checks no signatures.
pub fn trusted(svc: &Service) -> Result<Option<signature::Trusted>> {
    load(svc.allowed_signers.as_deref(), svc.openpgp_keys.as_deref())
}

/// The keys of an allowed signers file and an OpenPGP key file; `None`
/// when neither is given (signatures are not checked).
pub fn load(
    allowed: Option<&std::path::Path>,
    openpgp: Option<&std::path::Path>,
) -> Result<Option<signature::Trusted>> {
    if allowed.is_none() && openpgp.is_none() {
        return Ok(None);
    }
    let mut t = signature::Trusted::default();
    if let Some(p) = allowed {
        t.ssh = allowed_signers::load(p)?;
    }
    if let Some(p) = openpgp {
        t.openpgp = openpgp_keys::load(p)?;
    }
    Ok(Some(t))
}
