//! The command line: dispatch, one function per verb, exit codes. The clap
//! types are in `args`, and every line shown to a person in `render`.
//!
//! Exit codes: 0 success; 1 the command ran and found a problem (an invalid
//! config, a service whose pass failed); 2 a usage error (unknown flag,
//! unknown service name).

mod args;
pub mod complete;
pub(crate) mod journal;
pub(crate) mod render;

mod fleet;

pub use args::*;

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::config::{self, Config, DriftPolicy, Service};
use crate::engine::control;
use crate::engine::rev::Rev;
use crate::engine::{apply, pass};
use crate::host::generator;
use crate::host::machine::Identity;
use crate::model::place::Place;
use render::Doing;

/// Exit code for a command that ran and found a problem.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for a command line that cannot be carried out as written.
pub const EXIT_USAGE: u8 = 2;

/// An error that is the caller's fault, reported with exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shows the error a command ended with on stderr, control characters
/// escaped (it may carry a server's words or a commit's subject).
pub fn print_error(e: &anyhow::Error) {
    render::error(e);
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    journal::init();
    require_root(&cli)?;
    match &cli.command {
        Command::Check(_) => check(&cli),
        Command::Sync(opts) => sync(&cli, opts),
        Command::Mount(opts) => mount(&cli, opts),
        Command::Status(opts) => status(&cli, opts),
        Command::Diff(opts) => diff(&cli, opts),
        Command::Plan(opts) => plan(opts),
        Command::Generate(opts) => generate(&cli, opts),
        Command::Activate(_) => activate(&cli),
        Command::Fleet(args) => fleet::run(&cli, args),
        Command::Bootstrap(opts) => bootstrap(&cli, opts),
        Command::Forget(opts) => forget(&cli, opts),
        Command::Freeze(opts) => freeze(&cli, opts),
        Command::Unfreeze(opts) => unfreeze(&cli, opts),
        Command::Rollback(opts) => rollback(&cli, opts),
        Command::Forward(opts) => forward(&cli, opts),
        Command::Verify(opts) => verify(&cli, opts),
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
        Command::Verify(_) => Some("verify"),
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
        Command::Activate(_) => "activate",
        Command::Bootstrap(_) => "bootstrap",
        Command::Forget(_) => "forget",
        Command::Check(_)
        | Command::Status(_)
        | Command::Diff(_)
        | Command::History(_)
        | Command::Verify(_)
        | Command::Generate(_)
        | Command::Plan(_)
        | Command::Fleet(_) => return Ok(()),
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
            render::config_errors(&e);
            return Ok(ExitCode::from(EXIT_FAILED));
        }
        Err(e) => return Err(e),
    };
    for w in &config.warnings {
        render::warning(w);
    }
    let id = identity(cli)?;
    let mine = id.services(&config);
    render::check_summary(&config.path, config.services.len(), mine.len(), id.name());
    for svc in &mine {
        render::service(&mut render::stdout(), svc);
    }
    for w in config::exposed_secrets(&mine) {
        render::warning(w);
    }
    for w in crate::view::check::volatile(&cli.state_dir, &mine) {
        render::warning(w);
    }
    for line in crate::view::check::windows(&mine, crate::util::now_unix()) {
        render::line(&line);
    }
    let mut bad = false;
    for k in crate::view::check::key_files(&mine) {
        match &k.read {
            Ok(what) => render::key_file(&k.path, what, &k.services),
            Err(e) => {
                render::error(e);
                bad = true;
            }
        }
    }
    Ok(if bad {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// `provision sync [NAME...]`
fn sync(cli: &Cli, opts: &SyncOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let all = id.services(&config);
    let selected = select(&all, &opts.names, &id)?;
    let policy = opts.discard_drift.then_some(DriftPolicy::Restore);
    for w in config::exposed_secrets(&selected) {
        render::warning(w);
    }
    let intent = pass::Intent {
        drift: policy,
        backoff: !opts.now,
        ..pass::Intent::TIMER
    };
    let reports = pass::sync(&selected, &all, &cli.state_dir, intent);
    let code = if opts.json {
        let doc = pass::document(id.name(), &reports);
        render::json(&doc)?;
        render::failures(&mut render::stderr(), &reports, Doing::Deploy);
        exit_of(doc.ok)
    } else {
        print_reports(reports, Doing::Deploy)
    };
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
        render::json(&report)?;
    } else {
        render::status_table(&mut render::stdout(), &report);
    }
    Ok(ExitCode::SUCCESS)
}

/// `provision diff NAME [--upstream]`: exit 0 no difference, 1 difference,
/// 2 error.
fn diff(cli: &Cli, opts: &DiffOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    let text = if opts.upstream {
        crate::view::diff::upstream(svc, &Place::of(svc, &cli.state_dir))
    } else {
        crate::view::diff::local(svc, &Place::of(svc, &cli.state_dir))
    };
    match text {
        Ok(t) if t.is_empty() => Ok(ExitCode::SUCCESS),
        Ok(t) => {
            render::text(&t);
            Ok(ExitCode::from(EXIT_FAILED))
        }
        Err(e) => {
            render::error(&e);
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
        render::warning(format_args!("writing metrics: {e:#}"));
    }
}

/// `provision mount [NAME...]`
fn mount(cli: &Cli, opts: &MountOpts) -> Result<ExitCode> {
    // Boot must not depend on the config: a broken or missing one still
    // gets every mount back, from what the state files recorded.
    let (config, id) = match machine_config(cli) {
        Ok(x) => x,
        Err(e) => {
            render::warning(format_args!("{e:#}"));
            render::warning("restoring the mounts recorded in the state files instead");
            let reports = pass::restore_recorded(&cli.state_dir, &opts.names);
            return Ok(print_reports(reports, Doing::Restore));
        }
    };
    let all = id.services(&config);
    let selected = select(&all, &opts.names, &id)?;
    let reports = pass::restore(&selected, &cli.state_dir);
    Ok(print_reports(reports, Doing::Restore))
}

/// `provision generate DIR`: never fails the boot; problems go to stderr
/// and the kernel log (where a generator's words reach the journal). A
/// config that cannot be read is replaced by the last valid one, kept
/// under the state dir, so a typo never drops the mount ordering.
fn generate(cli: &Cli, opts: &GenerateOpts) -> Result<ExitCode> {
    let last_good = cli.state_dir.join(generator::LAST_GOOD_CONFIG);
    // When provision deploys its own config, the file here may be the one
    // under the mount (boot restores mounts after generators run): read
    // the deployed release's copy.
    let path = crate::store::layout::deployed_copy(&cli.state_dir, &cli.config);
    let config = match Config::load(&path) {
        Ok(c) => {
            if let Err(e) = generator::keep_last_good(&path, &last_good) {
                generator::log(&format!("keeping a copy of the valid config: {e:#}"));
            }
            c
        }
        Err(e) => {
            generator::log(&format!("{e:#}"));
            match Config::load(&last_good) {
                Ok(c) => {
                    generator::log(&format!(
                        "using the last valid config, {}, until {} is fixed",
                        last_good.display(),
                        cli.config.display()
                    ));
                    c
                }
                Err(_) => return Ok(ExitCode::SUCCESS),
            }
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
    Ok((config, id))
}

/// The service called `name` on this machine (a usage error otherwise).
fn one<'a>(config: &'a Config, id: &Identity, name: &str) -> Result<&'a Service> {
    let all = id.services(config);
    Ok(select(&all, &[name.to_string()], id)?[0])
}

/// `provision freeze NAME [--reason TEXT] [--until T] [--by WHO]`
fn freeze(cli: &Cli, opts: &FreezeOpts) -> Result<ExitCode> {
    let until = opts
        .until
        .as_deref()
        .map(|t| control::parse_until(t, crate::util::now_unix()))
        .transpose()
        .map_err(|e| UsageError(format!("{e:#}")))?;
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    let how = control::Freeze {
        reason: opts.reason.clone(),
        until,
        by: Some(who(opts.by.as_deref())),
    };
    let line = control::freeze(svc, &Place::of(svc, &cli.state_dir), &how)?;
    announce(journal::Event::Freeze, &svc.name, &line);
    publish_metrics(cli, &config, &id.services(&config));
    Ok(ExitCode::SUCCESS)
}

/// Who is acting: `by` when given, else the user sudo ran us for, else
/// the login name, else the user id.
fn who(by: Option<&str>) -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    by.map(str::to_string)
        .or_else(|| env("SUDO_USER"))
        .or_else(|| env("LOGNAME"))
        .or_else(|| env("USER"))
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()))
}

/// `provision bootstrap URL [--branch B] [--path P] [--force]`
fn bootstrap(cli: &Cli, opts: &BootstrapOpts) -> Result<ExitCode> {
    use crate::engine::bootstrap::{self, Source};
    let upstream =
        crate::config::classify_url(&opts.url).map_err(|m| UsageError(format!("URL {m}")))?;
    let source = Source {
        upstream,
        branch: opts.branch.clone(),
        path: opts.path.clone(),
        allowed_signers: opts.allowed_signers.clone(),
        openpgp_keys: opts.openpgp_keys.clone(),
    };
    let req = bootstrap::Request {
        source: &source,
        dest: &cli.config,
        force: opts.force,
        machine: cli.machine.as_deref(),
        state_dir: &cli.state_dir,
    };
    let mut told = Bootstrapping {
        cli,
        code: ExitCode::SUCCESS,
    };
    bootstrap::run(&req, &mut told)?;
    Ok(told.code)
}

/// Bootstrap's steps on the terminal or in the journal.
struct Bootstrapping<'a> {
    cli: &'a Cli,
    code: ExitCode,
}

impl crate::engine::bootstrap::Progress for Bootstrapping<'_> {
    fn done(&mut self, step: crate::engine::bootstrap::Step, line: &str) {
        use crate::engine::bootstrap::Step;
        match step {
            Step::Installed => announce(journal::Event::Bootstrap, "*", line),
            Step::Named => render::line(line),
            Step::Activated => announce(journal::Event::Activate, "*", line),
        }
    }

    fn warning(&mut self, line: &str) {
        render::note(line);
    }

    fn passed(&mut self, config: &Config, all: &[&Service], reports: Vec<apply::Report>) {
        self.code = print_reports(reports, Doing::Deploy);
        publish_metrics(self.cli, config, all);
    }
}

/// A line about `service`: a journal entry of `event` when the journal
/// takes them, else a line on stdout.
fn announce(event: journal::Event, service: &str, line: &str) {
    if journal::active() {
        journal::entry(event, service, None, line);
    } else {
        render::line(line);
    }
}

/// `provision activate`
fn activate(cli: &Cli) -> Result<ExitCode> {
    let config = Config::load(&cli.config)?;
    let id = identity(cli)?;
    for line in crate::engine::timers::activate(&id.services(&config))? {
        announce(journal::Event::Activate, "*", &line);
    }
    Ok(ExitCode::SUCCESS)
}

/// `provision forget NAME`
fn forget(cli: &Cli, opts: &NameOpts) -> Result<ExitCode> {
    crate::config::check_name(&opts.name)
        .map_err(|m| UsageError(format!("service name {:?} {m}", opts.name)))?;
    let config = Config::load(&cli.config)?;
    let id = identity(cli)?;
    if id.services(&config).iter().any(|s| s.name == opts.name) {
        bail!(UsageError(format!(
            "{} is still in {}; remove it from the config first (`provision forget` is for \
             services the config no longer has)",
            opts.name,
            cli.config.display()
        )));
    }
    for line in control::forget(&cli.state_dir, &opts.name)? {
        announce(
            journal::Event::Forget,
            &opts.name,
            &format!("{}: {line}", opts.name),
        );
    }
    publish_metrics(cli, &config, &id.services(&config));
    Ok(ExitCode::SUCCESS)
}

/// `provision unfreeze NAME`
fn unfreeze(cli: &Cli, opts: &NameOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    let line = control::unfreeze(svc, &Place::of(svc, &cli.state_dir))?;
    announce(journal::Event::Unfreeze, &svc.name, &line);
    publish_metrics(cli, &config, &id.services(&config));
    Ok(ExitCode::SUCCESS)
}

/// `provision rollback NAME REV`
fn rollback(cli: &Cli, opts: &RollbackOpts) -> Result<ExitCode> {
    let rev = Rev::parse(&opts.rev).map_err(UsageError)?;
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    let report = apply::Report::unknown(
        &svc.name,
        control::rollback(
            svc,
            &Place::of(svc, &cli.state_dir),
            &rev,
            &opts.rev,
            &who(None),
        ),
    );
    let code = print_reports(vec![report], Doing::Rollback);
    publish_metrics(cli, &config, &id.services(&config));
    if code == ExitCode::SUCCESS {
        render::pinned(&svc.name);
    }
    Ok(code)
}

/// `provision forward NAME [--allow-older]`
fn forward(cli: &Cli, opts: &ForwardOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    let all = id.services(&config);
    let report = control::forward(svc, &all, &cli.state_dir, opts.allow_older)?;
    let code = print_reports(vec![report], Doing::Deploy);
    publish_metrics(cli, &config, &all);
    Ok(code)
}

/// `provision verify NAME [REV]`
fn verify(cli: &Cli, opts: &VerifyOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    let rev = opts
        .rev
        .as_deref()
        .map(|r| crate::engine::rev::Rev::parse(r).map_err(UsageError))
        .transpose()?;
    let found = control::verify(svc, &Place::of(svc, &cli.state_dir), rev.as_ref())?;
    render::verdict(
        &svc.name,
        svc.checks_signatures(),
        &found.commit,
        &found.describe(),
    );
    Ok(if found.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// `provision history NAME [--json]`
fn history(cli: &Cli, opts: &HistoryOpts) -> Result<ExitCode> {
    let (config, id) = machine_config(cli)?;
    let svc = one(&config, &id, &opts.name)?;
    let entries = crate::view::history::list(svc, &Place::of(svc, &cli.state_dir), opts.limit)?;
    if opts.json {
        render::json(&entries)?;
        return Ok(ExitCode::SUCCESS);
    }
    render::history(&mut render::stdout(), svc, &entries);
    Ok(ExitCode::SUCCESS)
}

/// Prints the reports; exit 1 if any failed.
fn print_reports(reports: Vec<apply::Report>, doing: Doing) -> ExitCode {
    let failed = if journal::active() {
        let mut failed = 0;
        for report in &reports {
            let told = render::told(report, doing);
            failed += usize::from(told.failed);
            let commit = told.commit.map(|c| c.to_string());
            for line in &told.lines {
                journal::entry(told.event, &report.service, commit.as_deref(), line);
            }
        }
        failed
    } else {
        render::reports(&mut render::stdout(), &mut render::stderr(), reports, doing)
    };
    exit_of(failed == 0)
}

/// Exit 0 when every service succeeded, else [`EXIT_FAILED`].
fn exit_of(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// The services named on the command line, or all of them.
fn select<'a>(all: &[&'a Service], names: &[String], id: &Identity) -> Result<Vec<&'a Service>> {
    if names.is_empty() {
        if all.is_empty() {
            render::note(format_args!(
                "no services configured for machine {}",
                id.name()
            ));
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

/// `provision plan`: exit 0 when nothing would change, 1 when something
/// would, 2 when the head config does not check.
fn plan(opts: &args::PlanOpts) -> Result<ExitCode> {
    use anyhow::Context as _;
    let cloned;
    let path = if opts.repo.contains("://")
        || (opts.repo.contains(':') && !std::path::Path::new(&opts.repo).exists())
    {
        cloned = tempfile_dir()?;
        let st = std::process::Command::new("git")
            .args(["clone", "--quiet", "--bare", "--", &opts.repo])
            .arg(cloned.join("repo.git"))
            .status()
            .context("running git clone")?;
        if !st.success() {
            bail!("git clone {} failed", opts.repo);
        }
        cloned.join("repo.git")
    } else {
        std::path::PathBuf::from(&opts.repo)
    };
    let repo = git2::Repository::discover(&path)
        .map_err(|e| UsageError(format!("--repo {}: {}", path.display(), e.message())))?;
    let trusted = crate::engine::trust::load(
        opts.allowed_signers.as_deref(),
        opts.openpgp_keys.as_deref(),
    )
    .map_err(|e| UsageError(format!("{e:#}")))?;
    let request = crate::view::plan::Request {
        repo: &repo,
        base: opts.base.as_deref(),
        head: &opts.head,
        config_path: &opts.config_path,
        trusted,
    };
    let plan = crate::view::plan::plan(&request).map_err(|e| UsageError(format!("{e:#}")))?;
    match opts.format {
        args::PlanFormat::Json => {
            render::line(serde_json::to_string_pretty(&plan).context("serializing the plan")?)
        }
        args::PlanFormat::Markdown => render::line(crate::view::plan::markdown(&plan).trim_end()),
        args::PlanFormat::Text => render::line(crate::view::plan::text(&plan).trim_end()),
    }
    let unsigned = plan.signatures.iter().any(|v| !v.verified);
    Ok(if !plan.errors.is_empty() {
        ExitCode::from(EXIT_USAGE)
    } else if plan.changes || unsigned {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// A private scratch directory of this user's, removed at exit only by
/// the system's tmp cleaning (a clone for `plan --repo URL`).
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("provision-plan-{}", std::process::id()));
    crate::util::private_dir(&dir)?;
    Ok(dir)
}
