//! The command line: every clap type, and one function per verb.
//!
//! Exit codes: 0 success; 1 the command ran and found a problem (an invalid
//! config, a service whose pass failed); 2 a usage error (unknown flag,
//! unknown service name).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, DriftPolicy, Service, Transport};
use crate::engine::control;
use crate::engine::pass;
use crate::engine::rev::Rev;
use crate::host::generator;
use crate::host::machine::Identity;

/// How a failed pass is reported: the service keeps serving.
const PASS_FAILED: &str = "pass failed, last good release kept";

/// Exit code for a command that ran and found a problem.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for a command line that cannot be carried out as written.
pub const EXIT_USAGE: u8 = 2;

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
    /// commit, until `unfreeze` or `forward`. Survives reboots.
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
    Forward(NameOpts),
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
    pub name: String,
}

/// Options of `freeze`.
#[derive(Debug, Args)]
pub struct FreezeOpts {
    /// The service's name.
    pub name: String,
    /// Why, shown by status and history.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// Options of `rollback`.
#[derive(Debug, Args)]
pub struct RollbackOpts {
    /// The service's name.
    pub name: String,
    /// HEAD~N, a commit hash (full or at least 4 digits) or a tag.
    pub rev: String,
}

/// Options of `history`.
#[derive(Debug, Args)]
pub struct HistoryOpts {
    /// The service's name.
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

/// Options of `check`.
#[derive(Debug, Args)]
pub struct CheckOpts {}

/// Options of `sync`.
#[derive(Debug, Args)]
pub struct SyncOpts {
    /// Services to reconcile (default: all of this machine's).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Discard local changes to the deployed files in this pass, even for a
    /// service whose drift policy is warn.
    #[arg(long)]
    pub discard_drift: bool,
}

/// Options of `mount`.
#[derive(Debug, Args)]
pub struct MountOpts {
    /// Services whose mounts to restore (default: all of this machine's).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusOpts {
    /// Services to show (default: all of this machine's).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Print the documented JSON document (with a `schema` version).
    #[arg(long)]
    pub json: bool,
}

/// Options of `diff`.
#[derive(Debug, Args)]
pub struct DiffOpts {
    /// The service's name.
    pub name: String,
    /// Show what the next pass would bring from upstream instead.
    #[arg(long)]
    pub upstream: bool,
}

/// An error that is the caller's fault, reported with exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    require_root(&cli)?;
    match &cli.command {
        Command::Check(_) => check(&cli),
        Command::Sync(opts) => sync(&cli, opts),
        Command::Mount(opts) => mount(&cli, opts),
        Command::Status(opts) => status(&cli, opts),
        Command::Diff(opts) => diff(&cli, opts),
        Command::Generate(opts) => generate(&cli, opts),
        Command::Freeze(opts) => freeze(&cli, opts),
        Command::Unfreeze(opts) => unfreeze(&cli, opts),
        Command::Rollback(opts) => rollback(&cli, opts),
        Command::Forward(opts) => forward(&cli, opts),
        Command::History(opts) => history(&cli, opts),
    }
}

/// Commands that change the machine (mounts, units, state) need root; say
/// so up front instead of failing halfway with a bare EPERM. The read-only
/// commands work for anyone who can read the state directory, which is
/// root's alone unless the operator opened it.
fn require_root(cli: &Cli) -> Result<()> {
    let command = &cli.command;
    let reader = match command {
        Command::Status(_) => Some("status"),
        Command::Diff(_) => Some("diff"),
        Command::History(_) => Some("history"),
        _ => None,
    };
    if let Some(verb) = reader {
        let denied = nix::unistd::access(
            &cli.state_dir,
            nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::X_OK,
        ) == Err(nix::errno::Errno::EACCES);
        if denied {
            bail!(UsageError(format!(
                "provision {verb} reads the state in {}, which is root's alone (it names every \
                 deployed path and sits beside the mirrors, which may hold secrets); try sudo",
                cli.state_dir.display()
            )));
        }
    }
    let verb = match command {
        Command::Sync(_) => "sync",
        Command::Mount(_) => "mount",
        Command::Freeze(_) => "freeze",
        Command::Unfreeze(_) => "unfreeze",
        Command::Rollback(_) => "rollback",
        Command::Forward(_) => "forward",
        Command::Check(_)
        | Command::Status(_)
        | Command::Diff(_)
        | Command::History(_)
        | Command::Generate(_) => return Ok(()),
    };
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    bail!(UsageError(format!(
        "provision {verb} changes this machine (bind mounts, units, state) and must run as root; try sudo"
    )))
}

fn identity(cli: &Cli) -> Result<Identity> {
    match &cli.machine {
        Some(name) => Ok(Identity::named(name)),
        None => Identity::this_host(),
    }
}

/// `provision check`
fn check(cli: &Cli) -> Result<ExitCode> {
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) if e.is::<config::ConfigErrors>() => {
            eprint!("{e}");
            return Ok(ExitCode::from(EXIT_FAILED));
        }
        Err(e) => return Err(e),
    };
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    let id = identity(cli)?;
    let mine = id.services(&config);
    println!(
        "{}: valid, {} service(s) in total, {} for machine {}",
        config.path.display(),
        config.services.len(),
        mine.len(),
        id.name()
    );
    for svc in &mine {
        print_service(svc);
    }
    for w in secret_warnings(&mine) {
        eprintln!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Exposed secret files of `services`, each named once.
fn secret_warnings(services: &[&Service]) -> Vec<String> {
    let mut out: Vec<String> = services
        .iter()
        .flat_map(|s| {
            s.credentials
                .clone()
                .with_env_defaults()
                .exposure_warnings()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn print_service(svc: &Service) {
    let action = svc.action.map_or("none", |a| a.as_str());
    println!(
        "  {} ({}) <- {} branch {} depth {}, action {}",
        svc.name, svc.unit, svc.upstream.url, svc.branch, svc.depth, action
    );
    if svc.upstream.transport == Transport::Local {
        println!(
            "    note: local upstream; libgit2 cannot fetch it shallow, so it is fetched in full"
        );
    }
    for d in &svc.dirs {
        let kind = if d.file { " (file)" } else { "" };
        let ro = if d.readonly { " read-only" } else { "" };
        println!("    {} <- {}{kind}{ro}", d.local.display(), d.link);
    }
}

/// `provision sync [NAME...]`
fn sync(cli: &Cli, opts: &SyncOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let all = id.services(&config);
    let selected = select(&all, &opts.names, &id)?;
    let policy = opts.discard_drift.then_some(DriftPolicy::Restore);
    for w in secret_warnings(&selected) {
        eprintln!("warning: {w}");
    }
    let reports = pass::sync(&selected, &all, &cli.state_dir, policy);
    let code = print_reports(reports, PASS_FAILED);
    publish_metrics(cli, &config, &all);
    Ok(code)
}

/// `provision status [NAME...] [--json]`
fn status(cli: &Cli, opts: &StatusOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let all = id.services(&config);
    let selected = select(&all, &opts.names, &id)?;
    let report = crate::view::status::collect(&selected, &cli.state_dir, id.name());
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::view::status::table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// `provision diff NAME [--upstream]`: exit 0 no difference, 1 difference,
/// 2 error.
fn diff(cli: &Cli, opts: &DiffOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    let text = if opts.upstream {
        crate::view::diff::upstream(svc, &cli.state_dir)
    } else {
        crate::view::diff::local(svc, &cli.state_dir)
    };
    match text {
        Ok(t) if t.is_empty() => Ok(ExitCode::SUCCESS),
        Ok(t) => {
            print!("{t}");
            Ok(ExitCode::from(EXIT_FAILED))
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// Rewrites the metrics file after a command changed something. A failure
/// is reported but does not change the command's exit code: the deployment
/// itself is done.
fn publish_metrics(cli: &Cli, config: &Config, services: &[&Service]) {
    let (dir, create) = match &cli.metrics_dir {
        Some(d) => (d.clone(), true),
        None => config.metrics_dir(),
    };
    let target = crate::view::metrics::Target { dir, create };
    if let Err(e) = crate::view::metrics::publish(services, &cli.state_dir, &target) {
        eprintln!("warning: writing metrics: {e:#}");
    }
}

/// `provision mount [NAME...]`
fn mount(cli: &Cli, opts: &MountOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let all = id.services(&config);
    let selected = select(&all, &opts.names, &id)?;
    let reports = pass::restore(&selected, &cli.state_dir);
    Ok(print_reports(reports, "restoring mounts failed"))
}

/// `provision generate DIR`: never fails the boot; problems go to stderr
/// (the journal) and the services keep whatever units they had.
fn generate(cli: &Cli, opts: &GenerateOpts) -> Result<ExitCode> {
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("provision generator: {e:#}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let id = identity(cli)?;
    let services = id.services(&config);
    generator::generate(&services, &opts.dir)?;
    Ok(ExitCode::SUCCESS)
}

/// The config and this machine's identity, for the per-service commands.
fn machine_config(cli: &Cli) -> Result<(Config, Identity)> {
    let config = Config::load(&cli.config)?;
    let id = identity(cli)?;
    crate::git::mirror::init(id.services(&config).into_iter().map(|s| &s.upstream));
    Ok((config, id))
}

/// The service called `name` on this machine (a usage error otherwise).
fn one<'a>(config: &'a Config, id: &Identity, name: &str) -> Result<&'a Service> {
    let all = id.services(config);
    Ok(select(&all, &[name.to_string()], id)?[0])
}

/// `provision freeze NAME [--reason TEXT]`
fn freeze(cli: &Cli, opts: &FreezeOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    println!(
        "{}",
        control::freeze(svc, &cli.state_dir, opts.reason.as_deref())?
    );
    publish_metrics(cli, &config, &id.services(&config));
    Ok(ExitCode::SUCCESS)
}

/// `provision unfreeze NAME`
fn unfreeze(cli: &Cli, opts: &NameOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    println!("{}", control::unfreeze(svc, &cli.state_dir)?);
    publish_metrics(cli, &config, &id.services(&config));
    Ok(ExitCode::SUCCESS)
}

/// `provision rollback NAME REV`
fn rollback(cli: &Cli, opts: &RollbackOpts) -> Result<ExitCode> {
    let rev = Rev::parse(&opts.rev).map_err(UsageError)?;
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    let report = pass::Report {
        service: svc.name.clone(),
        outcome: control::rollback(svc, &cli.state_dir, &rev, &opts.rev),
    };
    let code = print_reports(vec![report], "rollback failed");
    publish_metrics(cli, &config, &id.services(&config));
    if code == ExitCode::SUCCESS {
        println!(
            "{}: pinned; `provision forward {}` follows upstream again",
            svc.name, svc.name
        );
    }
    Ok(code)
}

/// `provision forward NAME`
fn forward(cli: &Cli, opts: &NameOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    let all = id.services(&config);
    let report = control::forward(svc, &all, &cli.state_dir)?;
    let code = print_reports(vec![report], PASS_FAILED);
    publish_metrics(cli, &config, &all);
    Ok(code)
}

/// `provision history NAME [--json]`
fn history(cli: &Cli, opts: &HistoryOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    let entries = crate::view::history::list(svc, &cli.state_dir, opts.limit)?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!(
            "{}: no history yet; run provision sync {}",
            svc.name, svc.name
        );
    }
    for e in entries {
        let mark = if e.deployed {
            '*'
        } else if e.upstream {
            '^'
        } else {
            ' '
        };
        let when = if e.time == 0 {
            "?".to_string()
        } else {
            crate::util::format_utc(e.time)
        };
        let mut tags = Vec::new();
        e.deployed.then(|| tags.push("deployed"));
        e.upstream.then(|| tags.push("upstream"));
        e.release.then(|| tags.push("release kept"));
        let tags = if tags.is_empty() {
            String::new()
        } else {
            format!("  [{}]", tags.join(", "))
        };
        println!(
            "{mark} {}  {when}  {:<16.16}  {}{tags}",
            short(&e.commit),
            e.author,
            e.subject
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per service and its notes; exit 1 if any failed.
fn print_reports(reports: Vec<pass::Report>, failure: &str) -> ExitCode {
    let mut failed = 0;
    for report in reports {
        let name = &report.service;
        match report.outcome {
            Ok(o) => {
                if o.to.is_empty() {
                    println!("{name}: nothing deployed yet");
                } else if o.new_release {
                    let from = o.from.as_deref().map_or("nothing".to_string(), short);
                    println!("{name}: deployed {} (was {from})", short(&o.to));
                } else {
                    println!("{name}: up to date at {}", short(&o.to));
                }
                o.notes.iter().for_each(|n| println!("{name}: {n}"));
            }
            Err(e) if e.downcast_ref::<pass::ActionPending>().is_some() => {
                // The new files are in place: "last good release kept" would be false.
                failed += 1;
                let label = failure.split(',').next().unwrap_or(failure);
                eprintln!("{name}: {label}: {e:#}");
            }
            Err(e) => {
                failed += 1;
                eprintln!("{name}: {failure}: {e:#}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// The services named on the command line, or all of them.
fn select<'a>(all: &[&'a Service], names: &[String], id: &Identity) -> Result<Vec<&'a Service>> {
    if names.is_empty() {
        if all.is_empty() {
            eprintln!("no services configured for machine {}", id.name());
        }
        return Ok(all.to_vec());
    }
    let mut out = Vec::new();
    for name in names {
        match all.iter().find(|s| &s.name == name) {
            Some(s) => out.push(*s),
            None => {
                let known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
                bail!(UsageError(format!(
                    "no service named {name:?} on machine {} (known: {})",
                    id.name(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
    }
    Ok(out)
}

/// The abbreviated commit hash shown to operators.
pub fn short(commit: &str) -> String {
    commit.chars().take(10).collect()
}
