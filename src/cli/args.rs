//! Every clap type: the command line as a user writes it. The `///`
//! comments are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::engine::ArgValueCandidates;

use super::complete;

use crate::config;

/// Pull-based GitOps for ordinary Linux machines.
///
/// provision keeps the files of this machine's services equal to a branch
/// of a Git repository: it fetches the branch, writes each service's files
/// as an immutable release, mounts them where the service reads them and
/// reloads the service when they changed. Each invocation does one pass;
/// systemd timers run it periodically.
#[derive(Debug, Parser)]
#[command(name = "provision", version, max_term_width = 80)]
pub struct Cli {
    /// Configuration file.
    #[arg(short = 'c', long, env = "PROVISION_CONFIG", default_value = config::DEFAULT_PATH, global = true)]
    pub config: PathBuf,

    /// Act as this machine: select the services whose `machine` is exactly
    /// NAME. Default: this host's name, FQDN and IP addresses.
    #[arg(long, env = "PROVISION_MACHINE", value_name = "NAME", global = true)]
    pub machine: Option<String>,

    /// Where per-service state lives (and, unless `mount` says otherwise,
    /// mirrors and releases).
    #[arg(
        long,
        env = "PROVISION_STATE_DIR",
        value_name = "DIR",
        default_value = "/var/lib/provision",
        global = true
    )]
    pub state_dir: PathBuf,

    /// Write provision.prom here instead of the config's `metrics_dir`.
    #[arg(long, env = "PROVISION_METRICS_DIR", value_name = "DIR", global = true)]
    pub metrics_dir: Option<PathBuf>,

    #[command(subcommand)]
    /// The verb.
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration and list this machine's services.
    ///
    /// Reports every error found, each with file, line, column, service and
    /// key. Exits 0 when the config is valid, 1 when it is not.
    Check(CheckOpts),
    /// Run one reconcile pass now.
    ///
    /// Fetches each upstream once and brings every service of this machine
    /// (or only the NAMEs given) to the head of its branch. A service that
    /// fails keeps its last good release; the others still converge. Exits
    /// 0 when every service succeeded, 1 when any failed.
    Sync(SyncOpts),
    /// Show each service: deployed and upstream commit, drift, mounts, unit.
    ///
    /// One row per service of this machine (or per NAME): its state
    /// (following, frozen or pinned), deployed commit, upstream commit as of
    /// the last fetch and its age, whether they are in sync, how many files
    /// drifted from the deployed commit, whether the mounts are right, the
    /// unit's ActiveState, and the last pass. Drift, mounts and the unit are
    /// looked at now. Needs no network and waits for no lock.
    Status(StatusOpts),
    /// Show local changes to the deployed files as a unified diff.
    ///
    /// Compares the files under the service's mounted paths with the
    /// deployed commit. With --upstream, shows instead what the next pass
    /// would bring: the deployed commit against the upstream head as of the
    /// last fetch. Exits 0 when there is no difference, 1 when there is one,
    /// 2 on error (like `git diff --exit-code`).
    Diff(DiffOpts),
    /// What a change to the config repository will do to the fleet, from
    /// Git alone (no machine is asked).
    ///
    /// For every machine and service of the head's config: the files that
    /// change under its links (where the service reads them), the action,
    /// the rollout; the config's own changes and errors; with trusted keys,
    /// whether each commit is signed. Exits 0 when nothing would change, 1
    /// when something would, 2 on config or usage errors.
    Plan(PlanOpts),
    /// Restore the mounts of the deployed releases, without network.
    ///
    /// Run at boot by provision-mount@NAME.service, before the service
    /// itself starts: bind mounts do not survive a reboot, the releases do.
    /// Never fetches, never runs an action.
    Mount(MountOpts),
    /// Stop following upstream: keep the deployed commit.
    ///
    /// Passes still fetch (to report how far behind the service is) and
    /// still verify and repair its mounts, but never move the deployed
    /// commit, until `unfreeze`, `forward`, or the time given with --until.
    /// Survives reboots.
    Freeze(FreezeOpts),
    /// Follow upstream again from the next pass.
    Unfreeze(NameOpts),
    /// Deploy an earlier (or any) revision now, and stay pinned there.
    ///
    /// REV is HEAD~N (N commits back from the deployed one), a full or
    /// short commit hash, or a tag. A revision among the kept releases or in
    /// the local mirror needs no network; an older one is fetched. When it
    /// cannot be found or fetched, nothing changes. The service stays pinned
    /// until `forward` or `unfreeze`.
    Rollback(RollbackOpts),
    /// Follow upstream again and run a pass for this service now.
    ///
    /// Ends a freeze or pin, forgets a rejected commit (so it is tried
    /// again), adopts the head now (ahead of its turn in a staged rollout),
    /// and starts the unit if it is not running.
    Forward(ForwardOpts),
    /// Show whether a commit carries a valid signature by an allowed key.
    ///
    /// REV (default: the upstream head as last fetched, else the deployed
    /// commit) is checked against the keys the service trusts: the
    /// signer, the key's fingerprint and the result. Exit 0 when verified,
    /// 1 when not. Needs no network for a commit in the local mirror.
    Verify(VerifyOpts),
    /// See and steer every machine of the config, over OpenSSH.
    ///
    /// Runs on an operator's machine (no root needed). The machines are
    /// every machine the config names (-c, or --repo for the config
    /// repository), narrowed by --machines. Each is reached with the system
    /// ssh client (your ssh_config, agent and known_hosts apply; an unknown
    /// or changed host key is refused) and runs `provision --machine NAME
    /// VERB`. Exit 0 when every machine answered and succeeded, 1 when one
    /// was unreachable or failed (the others still act and are reported),
    /// 2 on usage errors.
    Fleet(Box<FleetArgs>),
    /// Set this machine up from the config repository in one command.
    ///
    /// Fetches the config file at --path from URL (a shallow fetch of one
    /// branch), checks it, installs it as the config file (-c), runs the
    /// first pass, and leaves every service's timer enabled and running and
    /// the config watched. With --machine, the name is remembered in
    /// /etc/default/provision for the timers. Running it again changes
    /// nothing. A config file that differs from the repository's and is not
    /// provision's own mount is left alone unless --force. For the config
    /// to follow Git afterwards, it names provision as a service whose dirs
    /// mount the config file (see install.md of the guide, /usr/share/doc/provision/guide).
    Bootstrap(BootstrapOpts),
    /// Start the timer of every service of this machine, stop the others.
    ///
    /// Reloads systemd (so the generator reads the config as it is now),
    /// starts provision@NAME.timer for each service of this machine and
    /// stops every provision timer whose service the config no longer has.
    /// Run by provision-activate.service whenever the config file changes
    /// (provision-config.path), so a new service's timer runs without a
    /// reboot.
    Activate(ActivateOpts),
    /// Remove a service that is no longer in the config: its mounts,
    /// releases and state.
    ///
    /// A service removed from the config keeps its mounts (the files stay
    /// where its unit reads them) and shows as orphaned in `status` until
    /// this command unmounts them, deletes its releases and state, and
    /// stops its timer. Refused for a service still in the config.
    Forget(NameOpts),
    /// Recent commits of the service's branch, from the local mirror.
    ///
    /// Marks the deployed commit (*), the upstream head as of the last fetch
    /// (^), and the commits whose release is kept (instant rollback). Needs
    /// no network and waits for no lock.
    History(HistoryOpts),
    /// systemd generator mode: write per-service timer settings and unit
    /// ordering into DIR.
    ///
    /// Installed as a systemd generator, it runs at boot and on every
    /// `systemctl daemon-reload`, so a changed config (a new service, a new
    /// `interval`) is picked up without running anything else. For each
    /// service of this machine it enables provision@NAME.timer with the
    /// service's interval, and makes the service's unit want and start after
    /// provision-mount@NAME.service.
    Generate(GenerateOpts),
}

/// A command on one service.
#[derive(Debug, Args)]
pub struct NameOpts {
    /// The service's name.
    #[arg(add = ArgValueCandidates::new(complete::service_names))]
    pub name: String,
}

/// Options of `forward`.
#[derive(Debug, Args)]
pub struct ForwardOpts {
    /// The service's name.
    #[arg(add = ArgValueCandidates::new(complete::service_names))]
    pub name: String,
    /// Deploy the head even when it was committed before the deployed
    /// commit (refused otherwise when signatures are checked: a server
    /// replaying an old signed commit).
    #[arg(long)]
    pub allow_older: bool,
}

/// Options of `verify`.
#[derive(Debug, Args)]
pub struct VerifyOpts {
    /// The service's name.
    #[arg(add = ArgValueCandidates::new(complete::service_names))]
    pub name: String,
    /// HEAD~N (from the deployed commit), a commit hash or a tag.
    pub rev: Option<String>,
}

/// Options of `freeze`.
#[derive(Debug, Args)]
pub struct FreezeOpts {
    /// The service's name.
    #[arg(add = ArgValueCandidates::new(complete::service_names))]
    pub name: String,
    /// Why, shown by status and history.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// End the freeze by itself: after a span ("30m", "2h", "1d") or at an
    /// RFC 3339 time ("2026-12-01T08:00:00Z").
    #[arg(long, value_name = "DURATION|RFC3339")]
    pub until: Option<String>,
    /// Who froze it, shown by status (default: SUDO_USER, else the login
    /// name).
    #[arg(long, value_name = "WHO")]
    pub by: Option<String>,
}

/// Options of `rollback`.
#[derive(Debug, Args)]
pub struct RollbackOpts {
    /// The service's name.
    #[arg(add = ArgValueCandidates::new(complete::service_names))]
    pub name: String,
    /// HEAD~N, a commit hash (full or at least 4 digits) or a tag.
    pub rev: String,
}

/// Options of `history`.
#[derive(Debug, Args)]
pub struct HistoryOpts {
    /// The service's name.
    #[arg(add = ArgValueCandidates::new(complete::service_names))]
    pub name: String,
    /// Print JSON (a list of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// At most this many commits.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub limit: usize,
}

/// Options of `generate`.
#[derive(Debug, Args)]
pub struct GenerateOpts {
    /// Output directory (systemd passes the "normal" generator directory).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Ignored: systemd's early and late generator directories.
    #[arg(value_name = "EXTRA", hide = true)]
    pub extra: Vec<PathBuf>,
}

/// Options of `bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapOpts {
    /// The config repository: https://, ssh://, user@host:path, git:// or
    /// file://.
    pub url: String,
    /// The branch to read.
    #[arg(long, default_value = config::DEFAULT_BRANCH)]
    pub branch: String,
    /// The config file's path in the repository.
    #[arg(long, default_value = "provision/config.toml")]
    pub path: String,
    /// Replace a config file that differs from the repository's.
    #[arg(long)]
    pub force: bool,
    /// Install the config only from a commit signed by one of these keys
    /// (git's allowed signers format; ssh signatures).
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,
    /// Install the config only from a commit signed by one of these
    /// OpenPGP public keys (ASCII-armored).
    #[arg(long, value_name = "FILE")]
    pub openpgp_keys: Option<PathBuf>,
}

/// Options of `activate`.
#[derive(Debug, Args)]
pub struct ActivateOpts {}

/// Options of `check`.
#[derive(Debug, Args)]
pub struct CheckOpts {}

/// Options of `sync`.
#[derive(Debug, Args)]
pub struct SyncOpts {
    /// Services to reconcile (default: all of this machine's).
    #[arg(value_name = "NAME", add = ArgValueCandidates::new(complete::service_names))]
    pub names: Vec<String>,
    /// Discard local changes to the deployed files in this pass, even for a
    /// service whose drift policy is warn.
    #[arg(long)]
    pub discard_drift: bool,
    /// Fetch even while backing off from an upstream whose fetch failed
    /// (passes otherwise make no connection until the backoff ends).
    #[arg(long)]
    pub now: bool,
    /// Print the pass as one JSON document on stdout (services, outcome,
    /// notes, failure) instead of lines; failures still go to stderr.
    #[arg(long)]
    pub json: bool,
}

/// Options of `mount`.
#[derive(Debug, Args)]
pub struct MountOpts {
    /// Services whose mounts to restore (default: all of this machine's).
    #[arg(value_name = "NAME", add = ArgValueCandidates::new(complete::service_names))]
    pub names: Vec<String>,
}

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusOpts {
    /// Services to show (default: all of this machine's).
    #[arg(value_name = "NAME", add = ArgValueCandidates::new(complete::service_names))]
    pub names: Vec<String>,
    /// Print the documented JSON document (with a `schema` version).
    #[arg(long)]
    pub json: bool,
}

/// Options of `plan`.
#[derive(Debug, Args)]
pub struct PlanOpts {
    /// The config repository: a checkout or bare repository (offline), or
    /// a URL to clone.
    #[arg(long, value_name = "URL|PATH", default_value = ".")]
    pub repo: String,
    /// The commit compared from (default: the merge base of --head with
    /// the branch the services follow).
    #[arg(long, value_name = "REV")]
    pub base: Option<String>,
    /// The commit compared to.
    #[arg(long, value_name = "REV", default_value = "HEAD")]
    pub head: String,
    /// text, json (the documented document) or markdown (for a pull
    /// request's comment).
    #[arg(long, value_enum, default_value = "text")]
    pub format: PlanFormat,
    /// The config file's path in the repository.
    #[arg(long, value_name = "PATH", default_value = "provision/config.toml")]
    pub config_path: String,
    /// Check that each commit of base..head is signed by one of these keys
    /// (git's allowed signers format).
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,
    /// ... or by one of these OpenPGP public keys (ASCII-armored).
    #[arg(long, value_name = "FILE")]
    pub openpgp_keys: Option<PathBuf>,
}

/// Formats of `plan`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PlanFormat {
    /// For a terminal.
    Text,
    /// The documented JSON document.
    Json,
    /// For a pull request's comment.
    Markdown,
}

/// Options of `diff`.
#[derive(Debug, Args)]
pub struct DiffOpts {
    /// The service's name.
    #[arg(add = ArgValueCandidates::new(complete::service_names))]
    pub name: String,
    /// Show what the next pass would bring from upstream instead.
    #[arg(long)]
    pub upstream: bool,
}

/// `provision fleet`: its options (accepted before or after the verb) and
/// the verb.
#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(flatten)]
    /// How machines are chosen and reached.
    pub opts: FleetOpts,
    #[command(subcommand)]
    /// What to do on them.
    pub verb: FleetVerb,
}

/// Options of every `fleet` verb.
#[derive(Debug, Args)]
pub struct FleetOpts {
    /// Only these machines: comma-separated names or shell globs.
    #[arg(long, global = true, value_delimiter = ',', value_name = "LIST")]
    pub machines: Vec<String>,
    /// Read the config from this repository instead of -c (a shallow fetch
    /// of one file).
    #[arg(long, global = true, value_name = "URL")]
    pub repo: Option<String>,
    /// The config repository's branch (with --repo).
    #[arg(long, global = true, default_value = config::DEFAULT_BRANCH)]
    pub branch: String,
    /// The config file's path in the repository (with --repo).
    #[arg(long, global = true, default_value = "provision/config.toml")]
    pub path: String,
    /// With --repo: use the config only from a commit signed by one of
    /// these keys (git's allowed signers format).
    #[arg(long, global = true, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,
    /// With --repo: use the config only from a commit signed by one of
    /// these OpenPGP public keys (ASCII-armored).
    #[arg(long, global = true, value_name = "FILE")]
    pub openpgp_keys: Option<PathBuf>,
    /// With --prometheus: a file holding a bearer token (or, with
    /// --prometheus-user, the basic authentication password).
    #[arg(long, global = true, value_name = "FILE")]
    pub prometheus_token_file: Option<PathBuf>,
    /// With --prometheus: the basic authentication user.
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        requires = "prometheus_token_file"
    )]
    pub prometheus_user: Option<String>,
    /// With --prometheus: CA certificates (PEM) an https:// Prometheus is
    /// verified against instead of this machine's.
    #[arg(long, global = true, value_name = "FILE")]
    pub prometheus_ca_file: Option<PathBuf>,
    /// ssh configuration file (`ssh -F FILE`).
    #[arg(long, global = true, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// The ssh client to run.
    #[arg(long, global = true, value_name = "PATH", default_value = "ssh")]
    pub ssh_command: PathBuf,
    /// An ssh option (`ssh -o OPTION`, e.g. "ForwardAgent=yes"), ahead of
    /// provision's own (no agent, X11, port forwarding or local command);
    /// repeatable.
    #[arg(long, global = true, value_name = "OPTION")]
    pub ssh_option: Vec<String>,
    /// What runs provision on a machine (e.g. "sudo -n provision").
    #[arg(long, global = true, value_name = "CMD", default_value = "provision")]
    pub remote_command: String,
    /// Machines reached at once.
    #[arg(short = 'j', long, global = true, default_value_t = 32)]
    pub jobs: usize,
    /// ssh's connect timeout: seconds or a span ("10s").
    #[arg(long, global = true, value_name = "SPAN", default_value = "10s")]
    pub connect_timeout: String,
    /// The most one machine may take: seconds or a span ("2m").
    #[arg(long, global = true, value_name = "SPAN", default_value = "60s")]
    pub timeout: String,
    /// Do not ask before changing more than one machine.
    #[arg(long, global = true)]
    pub yes: bool,
    /// Only show what would be done.
    #[arg(long, global = true)]
    pub dry_run: bool,
}

/// The `fleet` verbs.
#[derive(Debug, Subcommand)]
pub enum FleetVerb {
    /// Every machine's services, problems first, and each service's rollout.
    Status {
        /// Services to show (default: all).
        #[arg(value_name = "SERVICE")]
        names: Vec<String>,
        /// Print the documented JSON document.
        #[arg(long)]
        json: bool,
        /// Read the machines' provision_* series from this Prometheus
        /// (http[s]://HOST:PORT) instead of reaching them over SSH.
        #[arg(long, value_name = "URL")]
        prometheus: Option<String>,
    },
    /// Freeze a service on the machines.
    Freeze {
        /// The service.
        name: String,
        /// Why.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// End the freeze by itself (a span or an RFC 3339 time).
        #[arg(long, value_name = "DURATION|RFC3339")]
        until: Option<String>,
    },
    /// Unfreeze a service on the machines.
    Unfreeze {
        /// The service.
        name: String,
    },
    /// Roll a service back on the machines.
    Rollback {
        /// The service.
        name: String,
        /// HEAD~N, a commit hash or a tag (counted on each machine).
        rev: String,
    },
    /// Follow upstream again and run a pass, on the machines.
    Forward {
        /// The service.
        name: String,
    },
    /// Run a pass on the machines.
    Sync {
        /// Services (default: all of each machine's).
        #[arg(value_name = "SERVICE")]
        names: Vec<String>,
    },
    /// Each machine's local changes to a service's files.
    Diff {
        /// The service.
        name: String,
    },
    /// Each machine's history of a service.
    History {
        /// The service.
        name: String,
    },
    /// A web page of the fleet: rollouts at a glance, and freeze,
    /// unfreeze, rollback and forward from the browser.
    ///
    /// Loopback only unless --auth-file names who may use it. Every page
    /// carries a token that actions must send back; TLS comes from a
    /// reverse proxy (see fleet.md of the guide, /usr/share/doc/provision/guide).
    Serve {
        /// Where to listen.
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8484")]
        listen: String,
        /// Users (USER:BCRYPT, as `htpasswd -nB` writes) and bearer tokens
        /// (bearer:NAME:BCRYPT); required beyond loopback.
        #[arg(long, value_name = "FILE")]
        auth_file: Option<PathBuf>,
        /// A name the page is reached by besides its address and
        /// `localhost:PORT` (a reverse proxy's, an SSH tunnel's); requests
        /// naming any other host are refused. Repeatable.
        #[arg(long, value_name = "NAME")]
        host_name: Vec<String>,
        /// How old the shown status may get before it is collected again.
        #[arg(long, value_name = "SPAN", default_value = "30s")]
        refresh: String,
        /// Read the status from this Prometheus (http[s]://HOST:PORT)
        /// instead of over SSH; actions still go over SSH.
        #[arg(long, value_name = "URL")]
        prometheus: Option<String>,
        /// Receive forges' push hooks at POST /api/v1/hook, signed with the
        /// secret on this file's first line (GitHub, Gitea/Forgejo,
        /// GitLab): a push runs `sync` on the machines it concerns.
        #[arg(long, value_name = "FILE")]
        webhook_secret: Option<PathBuf>,
    },
    /// Encrypt a file (age) for the ssh host keys of the machines, as
    /// known_hosts pins them, so that only they can decrypt it.
    ///
    /// Commit the output under a dir with `decrypt = true` (its name
    /// ending in .age); a machine decrypts it with its
    /// /etc/ssh/ssh_host_ed25519_key. Add your own --recipient to be able
    /// to `rekey` it later.
    Encrypt {
        /// Only the machines that run this service.
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// A further recipient: an age public key (age1...) or an ssh
        /// public key line; repeatable.
        #[arg(long, value_name = "KEY")]
        recipient: Vec<String>,
        /// Ask a machine whose key known_hosts does not pin with
        /// ssh-keyscan, and use the key once you confirmed its fingerprint.
        #[arg(long)]
        keyscan: bool,
        /// Where to write the encrypted file (default: standard output).
        #[arg(short = 'o', long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// The file to encrypt.
        file: PathBuf,
    },
    /// Re-encrypt .age files of a checkout for the machines that run their
    /// service now (after machines were added or removed), in place.
    Rekey {
        /// The identity that decrypts them now (your age key, given as a
        /// --recipient when they were encrypted).
        #[arg(short = 'i', long, value_name = "FILE")]
        identity: PathBuf,
        /// A further recipient, as for `encrypt`; repeatable.
        #[arg(long, value_name = "KEY")]
        recipient: Vec<String>,
        /// As for `encrypt`.
        #[arg(long)]
        keyscan: bool,
        /// The files, in a checkout of the repository the services deploy.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// The machines, for Ansible, pdsh, clustershell and the like.
    Inventory {
        /// ansible (a JSON inventory), json, or ssh (one name per line).
        #[arg(long, value_enum, default_value = "ssh")]
        format: InventoryFormat,
    },
}

/// Formats of `fleet inventory`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum InventoryFormat {
    /// Ansible's JSON inventory.
    Ansible,
    /// A JSON list of machines and their services.
    Json,
    /// One machine per line.
    Ssh,
}
