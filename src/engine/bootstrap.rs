//! `provision bootstrap`: from a fresh machine to a converged one in one
//! command. The config file is fetched from the config repository and
//! installed where provision reads it; from then on provision manages it
//! like any other file (the config names provision itself as a service
//! whose `dirs` mount `/etc/provision/config.toml`), so a config change
//! pushed to Git is deployed by the next pass and brings new services'
//! timers up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::{self, Config, Credentials, Transport, Upstream};
use crate::git::mirror::Mirror;
use crate::model::commit::CommitId;
use crate::util::{write_atomic, Visibility};

/// How long the fetch of the config may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The most a config fetch may download.
const MAX_FETCH_BYTES: u64 = 256 << 20;

/// Where the config comes from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The config repository.
    pub upstream: Upstream,
    /// Its branch.
    pub branch: String,
    /// The config file's path in the repository.
    pub path: String,
    /// With either key file the config is used only from a commit signed
    /// by one of their keys.
    pub allowed_signers: Option<PathBuf>,
    pub openpgp_keys: Option<PathBuf>,
}

impl Source {
    /// A warning when nothing vouches for the config: over `git://`
    /// anyone on the path can change it in flight, and it installs what
    /// every service of the machine does.
    pub fn unauthenticated(&self) -> Option<String> {
        let verified = self.allowed_signers.is_some() || self.openpgp_keys.is_some();
        (self.upstream.transport == Transport::Git && !verified).then(|| {
            format!(
                "warning: {} is git://, unauthenticated and unencrypted: anyone on the path can \
                 change the config; sign its commits and pass --allowed-signers or --openpgp-keys",
                self.upstream.url
            )
        })
    }
}

/// The config as fetched.
#[derive(Debug)]
pub struct Fetched {
    /// The commit it was read from.
    pub commit: CommitId,
    /// The file's bytes.
    pub text: String,
}

/// Fetches `source` (a shallow fetch of the branch into a mirror under
/// `state_dir`) and reads the config file from its head, once its
/// signature is checked when `source` names keys.
pub fn fetch(source: &Source, state_dir: &Path) -> Result<Fetched> {
    let trusted = super::trust::load(
        source.allowed_signers.as_deref(),
        source.openpgp_keys.as_deref(),
    )?;
    crate::util::private_dir(state_dir)?;
    let mut mirror = Mirror::new(state_dir, &source.upstream, &source.branch);
    mirror.max_fetch_bytes = MAX_FETCH_BYTES;
    mirror.files = crate::git::partial::Files::paths([source.path.as_str()]);
    let creds = Credentials::default().with_env_defaults();
    let fetched = mirror.fetch(1, &creds, FETCH_TIMEOUT)?;
    let repo = mirror.open()?;
    if let Some(trusted) = &trusted {
        let verdict = crate::git::signature::verify(&repo, fetched.head, trusted);
        if !verdict.verified {
            bail!(
                "the config's commit {} on branch {} of {} is refused: {}; nothing used",
                CommitId::from(fetched.head).short(),
                source.branch,
                source.upstream.url,
                verdict.describe()
            );
        }
    }
    let tree = repo
        .find_commit(fetched.head)
        .and_then(|c| c.tree())
        .context("reading the fetched commit")?;
    let entry = tree.get_path(Path::new(&source.path)).with_context(|| {
        format!(
            "{} has no file {} on branch {}",
            source.upstream.url, source.path, source.branch
        )
    })?;
    let blob = repo
        .find_blob(entry.id())
        .with_context(|| format!("{} is not a file", source.path))?;
    let text = String::from_utf8(blob.content().to_vec())
        .with_context(|| format!("{} is not UTF-8 text", source.path))?;
    Ok(Fetched {
        commit: fetched.head.into(),
        text,
    })
}

/// What installing the config did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// Written.
    Written,
    /// The same bytes were there already.
    Unchanged,
}

/// Validates `fetched` and installs it at `dest`. A file there with other
/// contents is replaced only with `force` (or when provision itself put it
/// there: a release's bind mount).
pub fn install(fetched: &Fetched, source: &Source, dest: &Path, force: bool) -> Result<Installed> {
    let label = PathBuf::from(format!(
        "{}:{} ({})",
        source.upstream.url,
        source.path,
        fetched.commit.short()
    ));
    Config::parse(&label, &fetched.text).map_err(|e| anyhow::anyhow!("{e}"))?;
    match std::fs::read(dest) {
        Ok(old) if old == fetched.text.as_bytes() => return Ok(Installed::Unchanged),
        Ok(_) if force || managed(dest) => {}
        Ok(_) => bail!(
            "{} exists and differs from {}; it looks hand-written: keep it, or pass --force to \
             replace it",
            dest.display(),
            label.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dest.display())),
    }
    let dir = dest.parent().context("the config path has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if managed(dest) {
        // A read-only bind mount of a release: its next pass replaces it.
        return Ok(Installed::Unchanged);
    }
    write_atomic(dest, fetched.text.as_bytes(), Visibility::Public)?;
    Ok(Installed::Written)
}

/// Whether `path` is a mount point (provision's bind mount of a release).
fn managed(path: &Path) -> bool {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .is_ok_and(|st| {
        st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
            && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
    })
}

/// Whether one of `mine` mounts `dest`: provision then manages its own
/// config from Git.
pub fn self_managed(mine: &[&config::Service], dest: &Path) -> bool {
    mine.iter().any(|s| s.dirs.iter().any(|d| d.local == dest))
}

/// Where `--machine` is remembered for the units and the generator.
pub const MACHINE_FILE: &str = "/etc/default/provision";

/// Records `name` as this machine's name in [`MACHINE_FILE`].
pub fn remember_machine(name: &str) -> Result<()> {
    let text = format!(
        "# Written by provision bootstrap --machine: the name this machine has in the config.\n\
         PROVISION_MACHINE={name}\n"
    );
    write_atomic(Path::new(MACHINE_FILE), text.as_bytes(), Visibility::Public)
}
