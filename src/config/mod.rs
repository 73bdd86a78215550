//! The configuration file: which services this machine runs, where their
//! files come from in Git, and where they are mounted.
//!
//! The format accepts miekg/gitopper's `config.toml` unchanged (its `keys`
//! table is accepted and reported as unused), so its users can move over by
//! pointing `provision` at the file they already have.
//!
//! Parsing is done by walking the spanned TOML tree by hand instead of
//! deriving serde structs: serde stops at the first error, while an operator
//! fixing a config wants every problem at once, each with file, line, column,
//! service and key.

mod credentials;
pub mod keys;
mod parse;
mod validate;
mod value;
pub mod window;

pub use credentials::Credentials;
pub(crate) use validate::{check_name, classify_url, parse_span};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `provision` looks for its configuration when `-c` is not given.
pub const DEFAULT_PATH: &str = "/etc/provision/config.toml";
/// Branch followed when neither the service nor `[global]` names one.
pub const DEFAULT_BRANCH: &str = "main";
/// Releases kept per service when `depth` is not set: the current one and two
/// to roll back to without network.
pub const DEFAULT_DEPTH: u32 = 3;
/// Network timeout for one fetch when `timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the generated timer runs a pass when `interval` is not set.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// Where metrics go when `metrics_dir` is not set: Debian's directory for
/// node_exporter's textfile collector.
pub const DEFAULT_METRICS_DIR: &str = "/var/lib/prometheus/node-exporter";

/// A validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    /// Every service of every machine, in file order.
    pub services: Vec<Service>,
    /// Things that are accepted but worth telling the operator about.
    pub warnings: Vec<Diagnostic>,
    /// `[global] metrics_dir` when set; see [`Config::metrics_dir`].
    pub metrics_dir: Option<PathBuf>,
}

/// One `[[services]]` entry with `[global]` defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Short name used on the command line, in timers and directory names.
    pub name: String,
    /// The systemd unit acted upon, always with its suffix (`.service` implied).
    pub unit: String,
    /// Host name, FQDN or IP address of the machine that runs this service.
    pub machine: String,
    /// Where the files come from.
    pub upstream: Upstream,
    /// Further upstreams serving the same repository (the rest of an
    /// `upstream` list), tried in order when the ones before cannot be
    /// fetched.
    pub mirrors: Vec<Upstream>,
    /// The branch followed.
    pub branch: String,
    /// Owner of the materialized files; `None` keeps them owned by root.
    pub user: Option<String>,
    /// Package to install when missing.
    pub package: Option<String>,
    /// What to do to the unit when its files change; `None` does nothing.
    pub action: Option<Action>,
    /// Commits kept locally: the fetch depth and the number of releases kept.
    pub depth: u32,
    /// Base directory for mirrors and releases; `None` means the state dir.
    pub mount: Option<PathBuf>,
    /// The parts of the repository mounted on this machine.
    pub dirs: Vec<Dir>,
    /// Paths of the secrets used to fetch.
    pub credentials: Credentials,
    /// Timeout of network operations while fetching.
    pub timeout: Duration,
    /// How often the service's timer runs a pass.
    pub interval: Duration,
    /// What a pass does about local edits to the deployed files.
    pub drift: DriftPolicy,
    /// Bounds on what a repository may make this machine store.
    pub limits: Limits,
    /// Commands that decide whether a commit may stay deployed.
    pub checks: Checks,
    /// How a new head spreads across the fleet.
    pub rollout: Rollout,
    /// SSH keys allowed to sign the commits deployed (git's allowed
    /// signers format); `None`: signatures are not checked.
    pub allowed_signers: Option<PathBuf>,
    /// ASCII-armored OpenPGP public keys allowed to sign them; `None`:
    /// none (with no allowed_signers either, signatures are not checked).
    pub openpgp_keys: Option<PathBuf>,
    /// The age identity that decrypts the files of `decrypt` dirs.
    pub age_identity: PathBuf,
}

/// How long canaries must have served a commit when `soak` is not set.
pub const DEFAULT_SOAK: Duration = Duration::from_secs(600);
/// The longest `rollout` window: a longer one is more likely a typo.
pub const MAX_ROLLOUT: Duration = Duration::from_secs(30 * 86400);

/// A staged rollout: each machine decides from the commit and its own name
/// when to adopt a new head, so no server coordinates the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Adoption of each new head is spread over this window (zero: at once).
    pub window: Duration,
    /// Machines that adopt at once, lowercased as `machine` is.
    pub canary: Vec<String>,
    /// What the other machines wait for besides their time.
    pub gate: Option<Gate>,
    /// When a new head may be deployed at all (none: at any time).
    pub windows: window::Windows,
}

impl Service {
    /// Whether commits must be signed by a trusted key to deploy.
    pub fn checks_signatures(&self) -> bool {
        self.allowed_signers.is_some() || self.openpgp_keys.is_some()
    }
}

impl Rollout {
    /// Whether a new head may wait at all.
    pub fn staged(&self) -> bool {
        !self.window.is_zero() || self.gate.is_some()
    }

    /// Whether `machine` (a `machine` value) is a canary.
    pub fn is_canary(&self, machine: &str) -> bool {
        self.canary.iter().any(|c| c.eq_ignore_ascii_case(machine))
    }
}

/// The fleet's Prometheus as a rollout gate: a machine adopts a head only
/// once enough canaries have served it well for long enough, and never
/// while any machine reports it rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// `http://HOST[:PORT][/PREFIX]` of Prometheus.
    pub url: String,
    /// How long a canary must have served the commit.
    pub soak: Duration,
    /// How many canaries must have.
    pub min: u32,
    /// Credentials and CA for a Prometheus that asks for them.
    pub access: PrometheusAccess,
    /// Every machine of the config that runs this service (lower case):
    /// only their series count, not those of whatever else Prometheus
    /// scrapes.
    pub machines: Vec<String>,
}

/// How provision reaches a Prometheus behind authentication or TLS (its
/// `web.config.file`, or a proxy in front of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrometheusAccess {
    /// A file holding a bearer token, or with `user` the password of
    /// basic authentication; read at each query, never shown.
    pub token_file: Option<PathBuf>,
    /// The user of basic authentication.
    pub user: Option<String>,
    /// CA certificates (PEM) an `https://` Prometheus is verified against,
    /// instead of this machine's.
    pub ca_file: Option<PathBuf>,
}

/// How long `validate` may run when `validate_timeout` is not set.
pub const DEFAULT_VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `health` is retried when `health_timeout` is not set.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// The service's gates: a commit that fails one never stays deployed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checks {
    /// Run before the switch, in a private mount namespace that shows the
    /// candidate release where the service will see it.
    pub validate: Option<Check>,
    /// Run on the host after the action, retried until it passes or its
    /// timeout ends.
    pub health: Option<Check>,
    /// The user both run as (`check_user`); root when `None`, since
    /// `nginx -t` and its kind read keys only root may read.
    pub user: Option<String>,
}

/// A command run by `/bin/sh -c`, bounded in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The command line, as written in the config.
    pub command: String,
    /// How long it may run (`validate`) or be retried (`health`).
    pub timeout: Duration,
}

/// Bounds on what one commit and one fetch may cost this machine: a
/// repository is not trusted, and a few hundred kilobytes of pack can
/// expand into gigabytes or a hundred thousand inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file of a release, in bytes.
    pub max_file_size: u64,
    /// Most entries (files, directories, symlinks) in one release.
    pub max_files: u64,
    /// Largest total of file sizes in one release, in bytes.
    pub max_release_size: u64,
    /// Most bytes one fetch may receive.
    pub max_fetch_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_size: 64 << 20,
            max_files: 50_000,
            max_release_size: 1 << 30,
            max_fetch_bytes: 1 << 30,
        }
    }
}

/// What a pass does when the files of the deployed release were changed on
/// this machine (edited, added or deleted through the mounted path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    /// The repository is the truth: rewrite the release from Git and remount.
    #[default]
    Restore,
    /// Keep the local edits, report them, and do not deploy a commit that
    /// would overwrite them until they are reverted or committed upstream.
    Warn,
}

impl DriftPolicy {
    /// Parses a config value.
    pub fn parse(s: &str) -> Result<DriftPolicy, String> {
        match s {
            "restore" => Ok(DriftPolicy::Restore),
            "warn" => Ok(DriftPolicy::Warn),
            other => Err(format!(
                "unknown drift policy {other:?}; expected \"restore\" or \"warn\""
            )),
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftPolicy::Restore => "restore",
            DriftPolicy::Warn => "warn",
        }
    }
}

/// One bind mount of a repository path onto a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    /// Absolute, normalized path on this machine.
    pub local: PathBuf,
    /// Relative path inside the repository.
    pub link: String,
    /// The link is a single file rather than a directory.
    pub file: bool,
    /// Mount read-only (the default: the repository is the truth, and a
    /// service must not rewrite its own configuration); the files then
    /// belong to root even when the service has a `user`, so the user cannot
    /// change them either.
    pub readonly: bool,
    /// Permission bits of regular files (directories and executables get
    /// `x` wherever `r` is set). 0644 by default.
    pub mode: u32,
    /// Group owning the files, instead of the user's (or root's).
    pub group: Option<String>,
    /// Mount even when a directory above `local` is writable by a user
    /// other than root (never through a symlink).
    pub allow_writable_parents: bool,
    /// Files ending in `.age` are decrypted with the service's
    /// `age_identity` into the release, under the name without `.age`.
    pub decrypt: bool,
    /// Permission bits of a decrypted file: `mode` when the dir sets it,
    /// else 0600 (root's, or the owner's, alone).
    pub secret_mode: u32,
}

/// File mode of a decrypted file unless the dir's `mode` says otherwise.
pub const DEFAULT_SECRET_MODE: u32 = 0o600;

/// The identity that decrypts when `age_identity` is not set: the
/// machine's own ssh host key, so that no key has to be distributed.
pub const DEFAULT_AGE_IDENTITY: &str = "/etc/ssh/ssh_host_ed25519_key";

/// File mode of a release's regular files unless `mode` says otherwise.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

impl Dir {
    /// The permission bits of a file, or of a directory (`exec` set).
    pub fn perm(&self, exec: bool) -> u32 {
        if exec {
            self.mode | ((self.mode & 0o444) >> 2)
        } else {
            self.mode
        }
    }
}

/// What is done to a unit after its files changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `systemctl reload`.
    Reload,
    /// `systemctl restart`.
    Restart,
    /// `systemctl try-restart`: restart only if running.
    TryRestart,
    /// `systemctl reload-or-restart`.
    ReloadOrRestart,
    /// `systemctl start`: for units that run once per change.
    Start,
}

impl Action {
    /// The spellings accepted in the config, as systemctl spells them.
    pub const NAMES: [&'static str; 5] = [
        "reload",
        "restart",
        "try-restart",
        "reload-or-restart",
        "start",
    ];

    /// Parses a config value; `Ok(None)` is the empty string (no action).
    pub fn parse(s: &str) -> Result<Option<Action>, String> {
        Ok(Some(match s {
            "" => return Ok(None),
            "reload" => Action::Reload,
            "restart" => Action::Restart,
            "try-restart" => Action::TryRestart,
            "reload-or-restart" => Action::ReloadOrRestart,
            "start" => Action::Start,
            other => {
                return Err(format!(
                    "unknown action {other:?}; expected one of {} or \"\" for none",
                    Action::NAMES.join(", ")
                ))
            }
        }))
    }

    /// The systemctl verb of this action.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reload => "reload",
            Action::Restart => "restart",
            Action::TryRestart => "try-restart",
            Action::ReloadOrRestart => "reload-or-restart",
            Action::Start => "start",
        }
    }
}

/// A Git remote, classified by how it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The URL as written (a path is turned into a `file://` URL).
    pub url: String,
    /// How it is reached.
    pub transport: Transport,
}

/// Transports accepted for an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `https://`.
    Https,
    /// `ssh://` or scp-like `user@host:path`.
    Ssh,
    /// `git://`, unauthenticated.
    Git,
    /// `file://` or a plain path: libgit2 cannot fetch these shallow.
    Local,
}

impl Upstream {
    /// Whether the fetch can be bounded by depth. A local repository is
    /// served by git's upload-pack when git is installed; without it,
    /// libgit2's local transport reads it, which refuses shallow fetches,
    /// so it is fetched in full.
    pub fn supports_shallow(&self) -> bool {
        self.transport != Transport::Local || crate::util::git_installed()
    }
}

/// One problem found in the config, located as precisely as TOML allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem has no single place (a missing key).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Which table: `[global]` or `services[N] (name)`.
    pub context: String,
    /// The key concerned, dotted for nested keys (`dirs[0].local`).
    pub key: String,
    /// What is wrong, and how to fix it where that is known.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": {}", self.context)?;
        if !self.key.is_empty() {
            write!(f, ": key `{}`", printable(&self.key))?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} error{} in config:", if n == 1 { "" } else { "s" })?;
        for d in &self.0 {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Text from the file as it may be shown on a terminal: control characters
/// escaped, so a crafted name cannot split or fake lines of a report.
pub(crate) fn printable(s: &str) -> String {
    crate::util::escape_line(s)
}

impl Config {
    /// Reads and validates `path`. An unreadable file is an ordinary error;
    /// an invalid one is a [`ConfigErrors`] listing every problem.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Ok(Config::parse(path, &text)?)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let loc = parse::Locator::new(path, text);
        let mut parsed = parse::parse(&loc, text);
        let defaults = &parsed.global_service;
        for raw in &mut parsed.services {
            if raw.machine.is_none() {
                raw.machine = defaults.machine.clone();
                raw.more_machines = defaults.more_machines.clone();
            }
            raw.service = raw.service.take().or_else(|| defaults.service.clone());
            raw.dirs = raw.dirs.take().or_else(|| defaults.dirs.clone());
        }
        let mut errors = parsed.errors;
        let mut warnings = parsed.warnings;
        let services = validate::resolve(
            &loc,
            (&parsed.global, parsed.global_span.as_ref()),
            &parsed.services,
            &mut errors,
        );
        let metrics_dir = validate::metrics_dir(&loc, parsed.metrics_dir.as_ref(), &mut errors);
        validate::check_machine_conflicts(&loc, &services, &mut errors);
        validate::check_canaries(&loc, &services, &mut warnings);
        let mut services = services;
        validate::gate_machines(&mut services);
        warnings.sort_by_key(|d| d.line);
        if errors.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                services: services.into_iter().map(|(s, _)| s).collect(),
                warnings,
                metrics_dir,
            })
        } else {
            errors.sort_by_key(|d| (d.line == 0, d.line, d.column));
            // A bad `[global]` value is reported once, not once per service.
            errors.dedup();
            Err(ConfigErrors(errors))
        }
    }

    /// The textfile-collector directory metrics are written to, and whether
    /// the config named it. A directory the config did not name is only used
    /// when it exists (node_exporter is installed); a named one is created.
    pub fn metrics_dir(&self) -> (PathBuf, bool) {
        match &self.metrics_dir {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_METRICS_DIR), false),
        }
    }

    /// The services whose `machine` value `mine` accepts, in file order
    /// (see `host::machine::Identity::services`).
    pub fn services_where(&self, mine: impl Fn(&str) -> bool) -> Vec<&Service> {
        self.services.iter().filter(|s| mine(&s.machine)).collect()
    }
}

#[cfg(test)]
mod tests;

/// Exposed secret files of `services` (a key or token file others may
/// read), each named once: `check` and `sync` warn of them.
pub fn exposed_secrets(services: &[&Service]) -> Vec<String> {
    let mut out: Vec<String> = services
        .iter()
        .flat_map(|s| {
            let mut w = s
                .credentials
                .clone()
                .with_env_defaults()
                .exposure_warnings();
            if s.dirs.iter().any(|d| d.decrypt) {
                w.extend(credentials::exposed("age_identity", &s.age_identity));
            }
            w
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
