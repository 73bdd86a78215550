//! `provision fleet`: choose the machines, reach them, and tell what each
//! answered, one line (or row) per machine and a summary.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::args::{FleetArgs, FleetOpts, FleetVerb, InventoryFormat};
use super::render::{self, ago};
use super::{Cli, UsageError, EXIT_FAILED};
use crate::config::{self, Config};
use crate::fleet::action::{self, Change};
use crate::fleet::inventory::{self, Format};
use crate::fleet::machines;
use crate::fleet::secrets;
use crate::fleet::ssh::{Answer, Transport};
use crate::fleet::status::{self, Document, MachineStatus};
use crate::model::status::CommitAt;
use crate::util::now_unix;

/// Runs a `fleet` verb.
pub fn run(cli: &Cli, args: &FleetArgs) -> Result<ExitCode> {
    let opts = &args.opts;
    let config = load(cli, opts)?;
    let all = machines(&config, &opts.machines);
    if all.is_empty() {
        bail!(UsageError(format!(
            "no machine of the config matches {}",
            if opts.machines.is_empty() {
                "(the config names none)".to_string()
            } else {
                opts.machines.join(",")
            }
        )));
    }
    let transport = transport(opts)?;
    match &args.verb {
        FleetVerb::Encrypt {
            service,
            recipient,
            keyscan,
            output,
            file,
        } => encrypt(
            &config,
            &all,
            &transport,
            service.as_deref(),
            (recipient, *keyscan),
            file,
            output.as_deref(),
        ),
        FleetVerb::Rekey {
            identity,
            recipient,
            keyscan,
            paths,
        } => rekey(
            &config,
            &all,
            &transport,
            identity,
            (recipient, *keyscan),
            paths,
        ),
        FleetVerb::Inventory { format } => {
            let format = match format {
                InventoryFormat::Ansible => Format::Ansible,
                InventoryFormat::Json => Format::Json,
                InventoryFormat::Ssh => Format::Ssh,
            };
            render::line(inventory::render(&config, &all, format).trim_end());
            Ok(ExitCode::SUCCESS)
        }
        FleetVerb::Status {
            names,
            json,
            prometheus,
        } => {
            let answers = match prometheus {
                Some(url) => {
                    let api = crate::host::prometheus::Api::parse(
                        url,
                        &prometheus_access(opts),
                        transport.timeout,
                    )
                    .map_err(|e| UsageError(format!("{e:#}")))?;
                    crate::fleet::prometheus::answers(&api, &all)?
                }
                None => {
                    let started = std::time::Instant::now();
                    let answers =
                        status::ask(&all, &transport, opts.jobs, names, progress(all.len()));
                    // How long a sweep takes tells what interval the fleet
                    // can be watched at (and what a ControlMaster saves).
                    render::note(format!(
                        "asked {} machine(s) over ssh in {:.1} s (-j {})",
                        all.len(),
                        started.elapsed().as_secs_f64(),
                        opts.jobs
                    ));
                    answers
                }
            };
            status(&config, answers, *json)
        }
        FleetVerb::Serve {
            listen,
            auth_file,
            host_name,
            refresh,
            prometheus,
            webhook_secret,
        } => {
            let mut options = serve_options(
                listen,
                auth_file.as_deref(),
                refresh,
                prometheus,
                &prometheus_access(opts),
                &transport,
            )?;
            options.host_names = host_name.clone();
            options.webhook_secret = webhook_secret.as_deref().map(read_secret).transpose()?;
            let fleet = crate::fleet::web::Fleet {
                config,
                machines: all,
                transport,
                jobs: opts.jobs,
            };
            crate::fleet::web::serve(fleet, options)?;
            Ok(ExitCode::SUCCESS)
        }
        verb => act(&config, &all, &transport, opts, verb),
    }
}

/// `fleet serve`'s options, checked: beyond loopback only with users.
fn serve_options(
    listen: &str,
    auth_file: Option<&std::path::Path>,
    refresh: &str,
    prometheus: &Option<String>,
    access: &config::PrometheusAccess,
    transport: &Transport,
) -> Result<crate::fleet::web::Options> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        UsageError(format!(
            "--listen {listen:?}: give an address and port, such as 127.0.0.1:8484 or [::1]:8484"
        ))
    })?;
    let users = match auth_file {
        Some(p) => Some(
            crate::fleet::web::auth::Users::load(p).map_err(|e| UsageError(format!("--auth-file: {e:#}")))?,
        ),
        None if !addr.ip().is_loopback() => bail!(UsageError(format!(
            "--listen {addr} is reachable from other machines: anyone there could freeze and roll back \
             the fleet. Give --auth-file FILE (users made with `htpasswd -nB USER`), or listen on loopback \
             and reach it through an SSH tunnel or a reverse proxy"
        ))),
        None => None,
    };
    let refresh = config::parse_span(refresh)
        .map_err(|m| UsageError(format!("--refresh: {m}")))?
        .max(std::time::Duration::from_secs(1));
    let prometheus = prometheus
        .as_deref()
        .map(|url| crate::host::prometheus::Api::parse(url, access, transport.timeout))
        .transpose()
        .map_err(|e| UsageError(format!("--prometheus: {e:#}")))?;
    Ok(crate::fleet::web::Options {
        listen: addr,
        users,
        host_names: Vec::new(),
        refresh,
        prometheus,
        webhook_secret: None,
    })
}

/// The first line of a secret file (`--webhook-secret`), kept out of
/// every message.
fn read_secret(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("--webhook-secret {}: {e}", path.display())))?,
    );
    let line = text.lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        bail!(UsageError(format!(
            "--webhook-secret {} is empty",
            path.display()
        )));
    }
    Ok(zeroize::Zeroizing::new(line.as_bytes().to_vec()))
}

/// How `--prometheus` is reached: its token file, user and CA file.
fn prometheus_access(opts: &FleetOpts) -> config::PrometheusAccess {
    config::PrometheusAccess {
        token_file: opts.prometheus_token_file.clone(),
        user: opts.prometheus_user.clone(),
        ca_file: opts.prometheus_ca_file.clone(),
    }
}

/// Where `fleet --repo` keeps its mirror: in a directory no other user can
/// make first (a shared `/tmp` name can be): root's under the state
/// directory, anyone else's under `$XDG_CACHE_HOME` (or `~/.cache`).
fn repo_cache(cli: &Cli) -> Result<std::path::PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Ok(cli.state_dir.join(".fleet-repo"));
    }
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let base = var("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| var("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .ok_or_else(|| {
            anyhow::anyhow!("--repo needs a cache directory: set XDG_CACHE_HOME or HOME")
        })?;
    let dir = base.join("provision");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join("fleet-repo"))
}

/// The config from -c, or from the config repository (--repo).
fn load(cli: &Cli, opts: &FleetOpts) -> Result<Config> {
    let Some(url) = &opts.repo else {
        return Config::load(&cli.config);
    };
    let upstream = config::classify_url(url).map_err(|m| UsageError(format!("--repo {m}")))?;
    let source = crate::engine::bootstrap::Source {
        upstream,
        branch: opts.branch.clone(),
        path: opts.path.clone(),
        allowed_signers: opts.allowed_signers.clone(),
        openpgp_keys: opts.openpgp_keys.clone(),
    };
    if let Some(w) = source.unauthenticated() {
        render::note(w);
    }
    let cache = repo_cache(cli)?;
    let fetched = crate::engine::bootstrap::fetch(&source, &cache)
        .with_context(|| format!("reading {} from {url}", opts.path))?;
    let label = std::path::PathBuf::from(format!("{url}:{}", opts.path));
    Ok(Config::parse(&label, &fetched.text)?)
}

fn transport(opts: &FleetOpts) -> Result<Transport> {
    let span =
        |what: &str, v: &str| config::parse_span(v).map_err(|m| UsageError(format!("{what}: {m}")));
    Ok(Transport {
        ssh: opts.ssh_command.clone(),
        config: opts.ssh_config.clone(),
        remote_command: opts.remote_command.clone(),
        connect_timeout: span("--connect-timeout", &opts.connect_timeout)?,
        timeout: span("--timeout", &opts.timeout)?,
        options: opts.ssh_option.clone(),
    })
}

/// A progress line on stderr while machines answer, when stderr is a
/// terminal (cleared at the end); nothing otherwise.
fn progress(total: usize) -> impl Fn(usize) + Sync {
    let shown = std::io::stderr().is_terminal();
    move |done| {
        if !shown {
            return;
        }
        let width = 30;
        let filled = done * width / total.max(1);
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r[{}{}] {done}/{total} machines",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        if done == total {
            let _ = write!(err, "\r{}\r", " ".repeat(width + 24));
        }
        let _ = err.flush();
    }
}

/// `fleet status`, from the machines' answers.
fn status(config: &Config, answers: Vec<(String, Answer)>, json: bool) -> Result<ExitCode> {
    let doc = status::collect(config, answers, now_unix());
    if json {
        // Written as it is serialized: the text of 10,000 machines' documents
        // is never held whole.
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut out, &doc).context("writing the fleet status")?;
        writeln!(out)
            .and_then(|()| out.flush())
            .context("writing the fleet status")?;
    } else {
        table(&doc);
    }
    let bad = doc.machines.iter().any(|m| !m.reachable);
    Ok(if bad {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// One row per (machine, service), problems first, then a rollout line
/// per service.
fn table(doc: &Document) {
    let header = [
        "MACHINE",
        "SERVICE",
        "STATE",
        "DEPLOYED",
        "UPSTREAM",
        "SYNC",
        "DRIFT",
        "MOUNTS",
        "ACTIVE",
        "LAST PASS",
        "ERROR",
    ];
    let mut rows: Vec<(bool, Vec<String>)> = Vec::new();
    for m in &doc.machines {
        rows.extend(machine_rows(m, doc.time));
    }
    rows.sort_by_key(|(problem, _)| !problem);
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    lines.extend(rows.into_iter().map(|(_, r)| r));
    render::aligned(&mut render::stdout(), &lines);
    for r in &doc.services {
        let head = r
            .head
            .as_deref()
            .map_or("?".to_string(), |h| h.chars().take(10).collect());
        let waiting = match (r.waiting_from, r.waiting_until) {
            (Some(a), Some(b)) => format!(
                " (adopting from {} to {} UTC)",
                crate::util::format_utc(a as i64),
                crate::util::format_utc(b as i64)
            ),
            _ => String::new(),
        };
        render::line(format_args!(
            "{}: {}/{} at {head}, {} waiting{waiting}, {} rejected, {} behind, {} frozen behind, {} unreachable, {} failing",
            r.name,
            r.at_head,
            r.machines,
            r.waiting,
            r.rejected,
            r.behind,
            r.frozen,
            r.unreachable,
            r.failing
        ));
    }
}

fn machine_rows(m: &MachineStatus, now: u64) -> Vec<(bool, Vec<String>)> {
    let dash = || "-".to_string();
    let Some(doc) = &m.doc else {
        let mut row = vec![m.machine.clone(), "*".into(), "unreachable".into()];
        row.extend(std::iter::repeat_with(dash).take(7));
        row.push(m.error.clone().unwrap_or_default());
        return vec![(true, row)];
    };
    let short = |c: Option<&CommitAt>| c.map_or_else(dash, |c| c.commit.short());
    doc.services
        .iter()
        .map(|s| {
            let ok = s.last_pass.as_ref().map(|p| p.ok);
            let waiting = s.rollout.as_ref().map(|w| w.at);
            let problem = (s.in_sync == Some(false) && waiting.is_none())
                || ok == Some(false)
                || s.mounts_ok == Some(false)
                || s.drift.count.is_some_and(|n| n > 0)
                || s.rejected.is_some();
            let last = match (s.last_pass.as_ref().map(|p| p.time), ok) {
                (Some(t), Some(ok)) => {
                    format!("{} ago {}", ago(now, t), if ok { "ok" } else { "FAILED" })
                }
                _ => "never".into(),
            };
            let error = s
                .rejected
                .as_ref()
                .map(|r| format!("rejected: {}", r.reason.lines().next().unwrap_or("")))
                .or_else(|| {
                    s.last_pass
                        .as_ref()
                        .and_then(|p| p.error.as_deref())
                        .map(|e| e.lines().next().unwrap_or("").to_string())
                })
                .unwrap_or_default();
            let row = vec![
                m.machine.clone(),
                s.name.clone(),
                s.state.as_str().to_string(),
                short(s.deployed.as_ref()),
                short(s.upstream.as_ref()),
                match (s.in_sync, waiting) {
                    (Some(true), _) => "yes".into(),
                    (Some(false), Some(at)) => {
                        format!("waiting ({} UTC)", crate::util::format_utc(at as i64))
                    }
                    (Some(false), None) => "no".into(),
                    (None, _) => dash(),
                },
                s.drift.count.map_or("?".into(), |n| n.to_string()),
                match s.mounts_ok {
                    Some(true) => "ok".into(),
                    Some(false) => "BROKEN".into(),
                    None => dash(),
                },
                s.unit_state.clone().unwrap_or_else(|| "?".to_string()),
                last,
                error,
            ];
            (problem, row)
        })
        .collect()
}

/// The action verbs: one line per machine, then a summary.
fn act(
    config: &Config,
    machines: &[String],
    transport: &Transport,
    opts: &FleetOpts,
    verb: &FleetVerb,
) -> Result<ExitCode> {
    let (args, service, changes) = remote_args(verb);
    // Only the machines that run the service.
    let targets: Vec<String> = match &service {
        Some(name) => action::running(config, machines, name),
        None => machines.to_vec(),
    };
    if targets.is_empty() {
        bail!(UsageError(format!(
            "no selected machine runs {}",
            service.as_deref().unwrap_or("anything")
        )));
    }
    let what = format!("provision {}", args.join(" "));
    if opts.dry_run {
        for m in &targets {
            render::line(format_args!("{m}: would run `{what}`"));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if changes && targets.len() > 1 && !opts.yes && !confirm(&what, &targets)? {
        render::note("nothing done");
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    let answers = action::run_on(
        &targets,
        transport,
        opts.jobs,
        &args,
        progress(targets.len()),
    );
    let (mut ok, mut failed, mut unreachable) = (0, 0, 0);
    for (m, a) in &answers {
        match a {
            Answer::Ran {
                code: 0, stdout, ..
            } => {
                ok += 1;
                if changes {
                    let first = stdout.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                    render::line(format_args!("{m}: ok: {first}"));
                } else {
                    render::line(format_args!("== {m}"));
                    render::line(stdout.trim_end());
                }
            }
            Answer::Known(_) => ok += 1,
            Answer::Unreachable(_) => {
                unreachable += 1;
                render::note(format_args!("{m}: {}", a.problem().unwrap_or_default()));
            }
            Answer::Ran { stdout, .. } => {
                failed += 1;
                if !changes && !stdout.trim().is_empty() {
                    render::line(format_args!("== {m}"));
                    render::line(stdout.trim_end());
                }
                render::note(format_args!(
                    "{m}: FAILED: {}",
                    a.problem().unwrap_or_default()
                ));
            }
        }
    }
    render::note(format_args!(
        "{what}: {ok} ok, {failed} failed, {unreachable} unreachable"
    ));
    Ok(if failed + unreachable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// The remote words of a verb, the service it concerns, and whether it
/// changes machines.
fn remote_args(verb: &FleetVerb) -> (Vec<String>, Option<String>, bool) {
    let s = |v: &str| v.to_string();
    let change = |name: &String, c: Change| {
        (
            c.remote_args(name, &format!("{} (fleet)", action::operator())),
            Some(name.clone()),
            true,
        )
    };
    match verb {
        FleetVerb::Freeze {
            name,
            reason,
            until,
        } => change(
            name,
            Change::Freeze {
                reason: reason.clone(),
                until: until.clone(),
            },
        ),
        FleetVerb::Unfreeze { name } => change(name, Change::Unfreeze),
        FleetVerb::Rollback { name, rev } => change(name, Change::Rollback { rev: rev.clone() }),
        FleetVerb::Forward { name } => change(name, Change::Forward),
        FleetVerb::Sync { names } => {
            let mut a = vec![s("sync")];
            a.extend(names.iter().cloned());
            (a, None, true)
        }
        FleetVerb::Diff { name } => (vec![s("diff"), name.clone()], Some(name.clone()), false),
        FleetVerb::History { name } => {
            (vec![s("history"), name.clone()], Some(name.clone()), false)
        }
        FleetVerb::Status { .. }
        | FleetVerb::Inventory { .. }
        | FleetVerb::Serve { .. }
        | FleetVerb::Encrypt { .. }
        | FleetVerb::Rekey { .. } => (Vec::new(), None, false),
    }
}

/// `fleet encrypt`: `file` encrypted for the host keys of the selected
/// machines (those running `service`) and the further recipients.
fn encrypt(
    config: &Config,
    all: &[String],
    transport: &Transport,
    service: Option<&str>,
    (extra, keyscan): (&[String], bool),
    file: &Path,
    output: Option<&Path>,
) -> Result<ExitCode> {
    let machines = secrets::machines_running(config, all, service);
    if machines.is_empty() {
        bail!(UsageError(format!(
            "no selected machine runs service {}",
            service.unwrap_or_default()
        )));
    }
    let to = secrets::recipients(&machines, transport, extra, keyscan, &confirm_key)?;
    let plain = zeroize::Zeroizing::new(
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
    );
    let sealed = secrets::encrypt(&plain, &to)?;
    match output {
        Some(out) => {
            crate::util::write_atomic(out, &sealed, crate::util::Visibility::Public)?;
            render::note(format!(
                "{} encrypted for {} into {}",
                file.display(),
                to.describe(),
                out.display()
            ));
        }
        None => {
            std::io::stdout()
                .write_all(&sealed)
                .context("writing to standard output")?;
            render::note(format!(
                "{} encrypted for {}",
                file.display(),
                to.describe()
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleet rekey`: each file re-encrypted, in place, for the machines that
/// run the services whose `decrypt` dirs hold it.
fn rekey(
    config: &Config,
    all: &[String],
    transport: &Transport,
    identity: &Path,
    (extra, keyscan): (&[String], bool),
    paths: &[std::path::PathBuf],
) -> Result<ExitCode> {
    let identity = crate::util::secret::Identity::load(identity)?;
    for path in paths {
        let rel = secrets::in_checkout(path)?;
        let (services, machines) = secrets::machines_for_file(config, all, &rel);
        if machines.is_empty() {
            bail!(UsageError(format!(
                "{} is under no `decrypt = true` dir of a selected machine's service",
                rel.display()
            )));
        }
        let to = secrets::recipients(&machines, transport, extra, keyscan, &confirm_key)?;
        secrets::rekey(path, &identity, &to)?;
        render::note(format!(
            "{} ({}) re-encrypted for {}",
            path.display(),
            services.join(", "),
            to.describe()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the operator to confirm a host key that `ssh-keyscan` brought
/// (nothing else vouches for it); no terminal, no key.
fn confirm_key(machine: &str, fingerprint: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(UsageError(format!(
            "{machine}'s host key ({fingerprint}) is not in known_hosts, and there is no terminal to confirm it on; pin it with ssh first"
        )));
    }
    ask(&format!(
        "{machine} presents host key {fingerprint}. Is that its key? [y/N] "
    ))
}

/// Asks on the terminal before changing several machines; refuses when
/// there is no terminal to ask on.
fn confirm(what: &str, targets: &[String]) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(UsageError(format!(
            "`{what}` would change {} machines; pass --yes to do it without asking, or --dry-run",
            targets.len()
        )));
    }
    ask(&format!(
        "`{what}` on {} machines ({}). Go on? [y/N] ",
        targets.len(),
        targets.join(", ")
    ))
}

/// Puts `question` on the terminal and reads a yes (`y`, `yes`).
fn ask(question: &str) -> Result<bool> {
    let mut err = std::io::stderr();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
