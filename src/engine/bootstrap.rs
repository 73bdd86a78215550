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

use crate::config::{self, Config, Credentials, Service, Transport, Upstream};
use crate::engine::apply::Report;
use crate::engine::{pass, timers};
use crate::git::mirror::Mirror;
use crate::host::machine::Identity;
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

/// What `provision bootstrap` was asked.
pub struct Request<'a> {
    /// Where the config comes from.
    pub source: &'a Source,
    /// Where it is installed (`--config`).
    pub dest: &'a Path,
    /// Replace a hand-written config there.
    pub force: bool,
    /// `--machine`: this machine's name in the config, remembered.
    pub machine: Option<&'a str>,
    /// The state directory.
    pub state_dir: &'a Path,
}

/// What the bootstrap sequence tells as it goes: the caller prints it (or
/// writes it to the journal) and publishes the first pass's metrics.
pub trait Progress {
    /// A step is done (the config installed, the machine named, a timer
    /// started).
    fn done(&mut self, step: Step, line: &str);
    /// Something the operator should look at; bootstrap goes on.
    fn warning(&mut self, line: &str);
    /// The first pass ran over `all`, this machine's services.
    fn passed(&mut self, config: &Config, all: &[&Service], reports: Vec<Report>);
}

/// The steps [`Progress::done`] is told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The config is in place.
    Installed,
    /// `--machine` is remembered.
    Named,
    /// Timers and the config watch are running.
    Activated,
}

/// From a fresh machine to a converged one: fetch and install the config,
/// remember the machine's name, run the first pass over its services, and
/// start every service's timer and the config watch. Stops at the first
/// step that fails; the first pass failing does not stop the timers (the
/// next pass tries again).
pub fn run(req: &Request<'_>, progress: &mut impl Progress) -> Result<()> {
    let source = req.source;
    if let Some(w) = source.unauthenticated() {
        progress.warning(&w);
    }
    let fetched = fetch(source, req.state_dir)?;
    let line = match install(&fetched, source, req.dest, req.force)? {
        Installed::Written => format!(
            "installed {} from {} {} ({})",
            req.dest.display(),
            source.upstream.url,
            source.path,
            fetched.commit.short()
        ),
        Installed::Unchanged => format!(
            "{} is already {} ({})",
            req.dest.display(),
            source.path,
            fetched.commit.short()
        ),
    };
    progress.done(Step::Installed, &line);
    let id = match req.machine {
        Some(name) => {
            remember_machine(name)?;
            progress.done(
                Step::Named,
                &format!("this machine is {name} (in {MACHINE_FILE})"),
            );
            Identity::named(name)
        }
        None => Identity::this_host()?,
    };
    let config = Config::load(req.dest)?;
    let all = id.services(&config);
    for w in config_warnings(&all, req, id.name()) {
        progress.warning(&w);
    }
    let reports = pass::sync(&all, &all, req.state_dir, pass::Intent::TIMER);
    progress.passed(&config, &all, reports);
    for line in timers::activate(&all)? {
        progress.done(Step::Activated, &line);
    }
    if let Some(line) = timers::watch_config()? {
        progress.done(Step::Activated, &line);
    }
    Ok(())
}

/// What the installed config lacks for this machine: any service at all,
/// or one that mounts the config itself (without it the config does not
/// follow Git; the warning shows such a service).
fn config_warnings(all: &[&Service], req: &Request<'_>, machine: &str) -> Vec<String> {
    let dest = req.dest.display();
    let mut out = Vec::new();
    if all.is_empty() {
        out.push(format!(
            "warning: {dest} has no service for machine {machine}"
        ));
    }
    if !self_managed(all, req.dest) {
        out.push(format!(
            "warning: no service of machine {machine} mounts {dest}: the config will not follow Git; \
             add one such as\n  [[services]]\n  machine = \"{machine}\"\n  service = \"provision-activate\"\n  \
             name = \"provision\"\n  upstream = \"{}\"\n  action = \"start\"\n  \
             dirs = [ {{ local = \"{dest}\", link = \"{}\", file = true }} ]",
            req.source.upstream.url,
            req.source.path
        ));
    }
    out
}
