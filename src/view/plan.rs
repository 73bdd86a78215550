//! `provision plan`: what a change to the config repository will do to
//! the fleet, before it is merged, from Git alone (no machine is asked):
//! per machine and service of the head config, the files that change
//! under its links (where the service reads them), the action and the
//! rollout; the config's own changes; its errors; and, with trusted keys,
//! whether each commit is signed. Decrypted files show as changed, never
//! their content.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use git2::{DiffOptions, Oid, Repository, Tree};

use crate::config::{Config, Service};
use crate::git::signature::{self, Trusted};
use crate::model::plan::{ConfigPlan, FilePlan, KeysChanged, Plan, ServicePlan, SCHEMA};
use crate::model::record::Change;
use crate::util::{escape_line, human_span, repo_key};

/// Bytes of one file's diff kept in a plan.
const DIFF_CAP: usize = 8 * 1024;
/// Commits of base..head whose signatures are checked at most.
const MAX_SIGNED: usize = 200;

/// What to plan.
pub struct Request<'a> {
    /// The config repository (a checkout or a bare one).
    pub repo: &'a Repository,
    /// The commit compared from; `None`: the merge base of head with the
    /// branch the config's services follow.
    pub base: Option<&'a str>,
    /// The commit compared to.
    pub head: &'a str,
    /// The config file's path in the repository.
    pub config_path: &'a str,
    /// The keys commits must be signed by, when checked.
    pub trusted: Option<Trusted>,
}

/// Computes the plan.
pub fn plan(req: &Request<'_>) -> Result<Plan> {
    let repo = req.repo;
    let head = commit(repo, req.head)?;
    let mut notes = Vec::new();
    let mut out = Plan {
        schema: SCHEMA,
        base: String::new(),
        head: head.to_string(),
        changes: false,
        services: Vec::new(),
        config: ConfigPlan::default(),
        errors: Vec::new(),
        warnings: Vec::new(),
        signatures: Vec::new(),
        notes: Vec::new(),
    };
    let head_config = match read_config(repo, head, req.config_path)? {
        Ok(c) => c,
        Err(errors) => {
            out.errors = errors;
            return Ok(out);
        }
    };
    out.warnings = head_config
        .warnings
        .iter()
        .map(|w| escape_line(&w.to_string()))
        .collect();
    let base = match req.base {
        Some(b) => Some(commit(repo, b)?),
        None => default_base(repo, head, &head_config, &mut notes),
    };
    out.base = base.map(|b| b.to_string()).unwrap_or_default();
    let base_config = match base.map(|b| read_config(repo, b, req.config_path)) {
        Some(Ok(Ok(c))) => Some(c),
        Some(_) => {
            notes.push(format!(
                "the base has no readable {}: every service counts as added",
                req.config_path
            ));
            None
        }
        None => None,
    };
    out.config = config_changes(base_config.as_ref(), &head_config);
    let trees = (
        base.map(|b| tree_of(repo, b)).transpose()?,
        tree_of(repo, head)?,
    );
    let follows = followers(repo, &head_config, &mut notes);
    for svc in head_config.services.iter().filter(|s| follows(s)) {
        let files = files(repo, svc, trees.0.as_ref(), &trees.1)?;
        if files.is_empty() {
            continue;
        }
        out.services.push(ServicePlan {
            machine: escape_line(&svc.machine),
            service: escape_line(&svc.name),
            files,
            action: svc.action.map(|a| a.as_str().to_string()),
            rollout: rollout(svc),
        });
    }
    if let Some(t) = &req.trusted {
        out.signatures = signatures(repo, base, head, t)?;
    }
    out.changes = !out.services.is_empty()
        || !out.config.added.is_empty()
        || !out.config.removed.is_empty()
        || !out.config.changed.is_empty();
    out.notes = notes;
    Ok(out)
}

fn commit(repo: &Repository, rev: &str) -> Result<Oid> {
    Ok(repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .with_context(|| format!("{rev:?} names no commit of the repository"))?
        .id())
}

fn tree_of(repo: &Repository, commit: Oid) -> Result<Tree<'_>> {
    repo.find_commit(commit)
        .and_then(|c| c.tree())
        .with_context(|| format!("reading the tree of {commit}"))
}

/// The config at `commit`: parsed, or its errors as `check` words them.
fn read_config(
    repo: &Repository,
    commit: Oid,
    path: &str,
) -> Result<std::result::Result<Config, Vec<String>>> {
    let tree = tree_of(repo, commit)?;
    let short: String = commit.to_string().chars().take(10).collect();
    let Ok(entry) = tree.get_path(Path::new(path)) else {
        return Ok(Err(vec![format!("{short} has no config file {path}")]));
    };
    let blob = repo
        .find_blob(entry.id())
        .with_context(|| format!("{path} at {short} is not a file"))?;
    let Ok(text) = std::str::from_utf8(blob.content()) else {
        return Ok(Err(vec![format!("{path} at {short} is not UTF-8 text")]));
    };
    let label = PathBuf::from(format!("{short}:{path}"));
    // The config is the change's to write: its words reach the output
    // without a control character.
    Ok(Config::parse(&label, text)
        .map_err(|e| e.0.iter().map(|d| escape_line(&d.to_string())).collect()))
}

/// The merge base of head with the branch most services follow (as a
/// remote-tracking or a local branch); else head's parent.
fn default_base(
    repo: &Repository,
    head: Oid,
    config: &Config,
    notes: &mut Vec<String>,
) -> Option<Oid> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &config.services {
        *counts.entry(s.branch.as_str()).or_default() += 1;
    }
    let branch = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or(crate::config::DEFAULT_BRANCH, |(b, _)| b);
    for name in [
        format!("refs/remotes/origin/{branch}"),
        format!("refs/heads/{branch}"),
    ] {
        if let Ok(tip) = repo.refname_to_id(&name) {
            if let Ok(base) = repo.merge_base(head, tip) {
                return Some(base);
            }
        }
    }
    let parent = repo
        .find_commit(head)
        .ok()
        .and_then(|c| c.parent_id(0).ok());
    notes.push(format!(
        "no branch {branch} to take the merge base with: comparing with head's parent{}",
        if parent.is_none() {
            " (none: everything is new)"
        } else {
            ""
        }
    ));
    parent
}

/// Which services follow this repository: those whose upstream is one of
/// its remotes; every one when none is (a checkout without remotes).
fn followers<'c>(
    repo: &Repository,
    config: &'c Config,
    notes: &mut Vec<String>,
) -> impl Fn(&Service) -> bool + 'c {
    let remotes: Vec<String> = repo
        .remotes()
        .map(|names| {
            names
                .iter()
                .flatten()
                .filter_map(|n| repo.find_remote(n).ok()?.url().map(repo_key))
                .collect()
        })
        .unwrap_or_default();
    let matches = move |s: &Service| {
        std::iter::once(&s.upstream)
            .chain(&s.mirrors)
            .any(|u| remotes.contains(&repo_key(&u.url)))
    };
    let any = config.services.iter().any(&matches);
    if !any {
        notes.push(
            "no service's upstream is a remote of this repository: every service is taken to follow it"
                .into(),
        );
    }
    move |s: &Service| !any || matches(s)
}

/// The files of `svc`'s links that differ from `base` to `head`.
fn files(
    repo: &Repository,
    svc: &Service,
    base: Option<&Tree<'_>>,
    head: &Tree<'_>,
) -> Result<Vec<FilePlan>> {
    let mut out = Vec::new();
    for d in &svc.dirs {
        let at = |t: Option<&Tree<'_>>| t.and_then(|t| t.get_path(Path::new(&d.link)).ok());
        let (old, new) = (at(base), at(Some(head)));
        if d.file {
            let (o, n) = (old.as_ref().map(|e| e.id()), new.as_ref().map(|e| e.id()));
            if o != n {
                out.push(file_plan(repo, d.local.clone(), o, n, d.decrypt));
            }
            continue;
        }
        let subtree = |e: Option<git2::TreeEntry<'_>>| e.and_then(|e| repo.find_tree(e.id()).ok());
        let (a, b) = (subtree(old), subtree(new));
        if a.is_none() && b.is_none() {
            continue;
        }
        let diff = repo
            .diff_tree_to_tree(a.as_ref(), b.as_ref(), Some(&mut DiffOptions::new()))
            .context("comparing trees")?;
        for delta in diff.deltas() {
            let Some(rel) = delta.new_file().path().or(delta.old_file().path()) else {
                continue;
            };
            let secret = d.decrypt && rel.extension().is_some_and(|x| x == "age");
            let shown = if secret {
                rel.with_extension("")
            } else {
                rel.to_path_buf()
            };
            let id = |f: git2::DiffFile<'_>| f.exists().then(|| f.id());
            out.push(file_plan(
                repo,
                d.local.join(shown),
                id(delta.old_file()),
                id(delta.new_file()),
                secret,
            ));
        }
    }
    Ok(out)
}

fn file_plan(
    repo: &Repository,
    path: PathBuf,
    old: Option<Oid>,
    new: Option<Oid>,
    secret: bool,
) -> FilePlan {
    let change = match (old, new) {
        (None, _) => Change::Added,
        (_, None) => Change::Deleted,
        _ => Change::Modified,
    };
    let diff = (!secret).then(|| unified(repo, &path, old, new)).flatten();
    FilePlan {
        // A path is the repository's to choose: no control character of
        // it reaches a terminal or a CI log.
        path: escape_line(&path.display().to_string()),
        change,
        secret,
        diff,
    }
}

/// The unified diff of two blobs, capped; `None` for binary content.
fn unified(repo: &Repository, path: &Path, old: Option<Oid>, new: Option<Oid>) -> Option<String> {
    let blob = |id: Option<Oid>| id.and_then(|i| repo.find_blob(i).ok());
    let (a, b) = (blob(old), blob(new));
    if a.as_ref().is_some_and(|x| x.is_binary()) || b.as_ref().is_some_and(|x| x.is_binary()) {
        return None;
    }
    let name = path.to_string_lossy();
    let name = name.trim_start_matches('/');
    let mut patch = git2::Patch::from_buffers(
        a.as_ref().map_or(&[][..], |x| x.content()),
        Some(Path::new(name)),
        b.as_ref().map_or(&[][..], |x| x.content()),
        Some(Path::new(name)),
        None,
    )
    .ok()?;
    let text: String = String::from_utf8_lossy(&patch.to_buf().ok()?)
        .chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect();
    Some(if text.len() > DIFF_CAP {
        let mut cut = DIFF_CAP;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}\n[... {} more bytes]\n", &text[..cut], text.len() - cut)
    } else {
        text
    })
}

/// How the head reaches `svc`'s machine.
fn rollout(svc: &Service) -> String {
    let r = &svc.rollout;
    let mut s = if r.is_canary(&svc.machine) {
        "canary: at its next pass".to_string()
    } else if r.window.is_zero() {
        "at its next pass".to_string()
    } else {
        format!("staged over {}", human_span(r.window))
    };
    if let Some(g) = r.gate.as_ref().filter(|_| !r.is_canary(&svc.machine)) {
        let _ = write!(s, ", once the gate at {} opens", g.url);
    }
    if !r.windows.always() {
        let list: Vec<&str> = r.windows.0.iter().map(|w| w.text.as_str()).collect();
        let _ = write!(s, ", inside the change windows {}", list.join("; "));
    }
    s
}

/// The config's own changes: entries added, removed, and keys changed.
fn config_changes(base: Option<&Config>, head: &Config) -> ConfigPlan {
    let entries = |c: &Config| -> BTreeMap<String, Service> {
        c.services
            .iter()
            .map(|s| {
                (
                    escape_line(&format!("{}: {}", s.machine, s.name)),
                    s.clone(),
                )
            })
            .collect()
    };
    let old = base.map(entries).unwrap_or_default();
    let new = entries(head);
    let mut out = ConfigPlan::default();
    for (k, s) in &new {
        match old.get(k) {
            None => out.added.push(k.clone()),
            Some(o) if o != s => out.changed.push(KeysChanged {
                entry: k.clone(),
                keys: changed_keys(o, s),
            }),
            Some(_) => {}
        }
    }
    out.removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    out
}

/// The keys (as the config names them) whose values differ.
fn changed_keys(a: &Service, b: &Service) -> Vec<String> {
    let fields = |s: &Service| -> Vec<(&'static str, String)> {
        vec![
            ("service", s.unit.clone()),
            ("upstream", format!("{:?}{:?}", s.upstream, s.mirrors)),
            ("branch", s.branch.clone()),
            ("user", format!("{:?}", s.user)),
            ("package", format!("{:?}", s.package)),
            ("action", format!("{:?}", s.action)),
            ("depth", s.depth.to_string()),
            ("mount", format!("{:?}", s.mount)),
            ("dirs", format!("{:?}", s.dirs)),
            ("credentials", format!("{:?}", s.credentials)),
            ("timeout", format!("{:?}", s.timeout)),
            ("interval", format!("{:?}", s.interval)),
            ("drift", format!("{:?}", s.drift)),
            ("limits", format!("{:?}", s.limits)),
            ("checks", format!("{:?}", s.checks)),
            ("rollout", format!("{:?}", s.rollout)),
            ("allowed_signers", format!("{:?}", s.allowed_signers)),
            ("openpgp_keys", format!("{:?}", s.openpgp_keys)),
            ("age_identity", format!("{:?}", s.age_identity)),
        ]
    };
    fields(a)
        .into_iter()
        .zip(fields(b))
        .filter(|((_, x), (_, y))| x != y)
        .map(|((k, _), _)| k.to_string())
        .collect()
}

/// The verdict on each commit of base..head (newest first).
fn signatures(
    repo: &Repository,
    base: Option<Oid>,
    head: Oid,
    trusted: &Trusted,
) -> Result<Vec<crate::model::signature::Verdict>> {
    let mut walk = repo.revwalk().context("walking base..head")?;
    walk.push(head).context("walking base..head")?;
    if let Some(b) = base {
        walk.hide(b).context("walking base..head")?;
    }
    Ok(walk
        .flatten()
        .take(MAX_SIGNED)
        .map(|c| signature::verify(repo, c, trusted))
        .collect())
}

/// The plan as text for a terminal.
pub fn text(p: &Plan) -> String {
    let mut out = String::new();
    if !p.errors.is_empty() {
        let _ = writeln!(out, "the head config does not check:");
        for e in &p.errors {
            let _ = writeln!(out, "  {e}");
        }
        return out;
    }
    let _ = writeln!(
        out,
        "plan {} -> {}: {}",
        short(&p.base),
        short(&p.head),
        summary(p)
    );
    for s in &p.services {
        let _ = writeln!(
            out,
            "{}: {}: {} file(s); then {}; {}",
            s.machine,
            s.service,
            s.files.len(),
            s.action.as_deref().unwrap_or("no action"),
            s.rollout
        );
        for f in &s.files {
            let what = if f.secret {
                "secret changed".to_string()
            } else {
                f.change.as_str().to_string()
            };
            let _ = writeln!(out, "  {what}: {}", f.path);
        }
    }
    config_text(&mut out, &p.config);
    for v in &p.signatures {
        let _ = writeln!(out, "{}", verdict_line(v));
    }
    for w in p
        .warnings
        .iter()
        .map(|w| format!("warning: {w}"))
        .chain(p.notes.iter().map(|n| format!("note: {n}")))
    {
        let _ = writeln!(out, "{w}");
    }
    out
}

fn config_text(out: &mut String, c: &ConfigPlan) {
    for a in &c.added {
        let _ = writeln!(out, "config: added {a}");
    }
    for r in &c.removed {
        let _ = writeln!(out, "config: removed {r}");
    }
    for k in &c.changed {
        let _ = writeln!(out, "config: {}: {} changed", k.entry, k.keys.join(", "));
    }
}

fn verdict_line(v: &crate::model::signature::Verdict) -> String {
    format!(
        "commit {}: {}",
        short(&v.commit),
        if v.verified {
            format!("signed by {}", v.signer)
        } else {
            format!(
                "NOT signed by an allowed key ({})",
                v.reason.as_deref().unwrap_or(&v.signer)
            )
        }
    )
}

fn short(id: &str) -> String {
    if id.is_empty() {
        "(nothing)".to_string()
    } else {
        id.chars().take(10).collect()
    }
}

/// `2 machine(s), 3 file(s); config: 1 added, 0 removed, 1 changed`.
fn summary(p: &Plan) -> String {
    if !p.changes {
        return "nothing changes".to_string();
    }
    let machines: std::collections::BTreeSet<&str> =
        p.services.iter().map(|s| s.machine.as_str()).collect();
    let files: usize = p.services.iter().map(|s| s.files.len()).sum();
    format!(
        "{} machine(s), {} service(s), {files} file change(s); config: {} added, {} removed, {} changed",
        machines.len(),
        p.services.len(),
        p.config.added.len(),
        p.config.removed.len(),
        p.config.changed.len()
    )
}

/// The plan as Markdown for a pull-request comment: a summary line, a
/// table of machines × services, each file's diff collapsed.
pub fn markdown(p: &Plan) -> String {
    let mut out = String::from("### provision plan\n\n");
    if !p.errors.is_empty() {
        out.push_str("**The head config does not check:**\n\n```\n");
        for e in &p.errors {
            let _ = writeln!(out, "{e}");
        }
        out.push_str("```\n");
        return out;
    }
    let _ = writeln!(
        out,
        "`{}` → `{}`: **{}**\n",
        short(&p.base),
        short(&p.head),
        summary(p)
    );
    if !p.services.is_empty() {
        out.push_str(
            "| machine | service | files | then | rollout |\n| --- | --- | ---: | --- | --- |\n",
        );
        for s in &p.services {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                cell(&s.machine),
                cell(&s.service),
                s.files.len(),
                cell(s.action.as_deref().unwrap_or("no action")),
                cell(&s.rollout)
            );
        }
        out.push('\n');
        let mut seen = std::collections::BTreeSet::new();
        for f in p.services.iter().flat_map(|s| &s.files) {
            if !seen.insert(f.path.clone()) {
                continue;
            }
            match (&f.diff, f.secret) {
                (_, true) => {
                    let _ = writeln!(out, "- `{}`: secret changed", cell(&f.path));
                }
                (Some(d), _) => {
                    let _ = writeln!(
                        out,
                        "<details><summary><code>{}</code> ({})</summary>\n\n```diff\n{}```\n</details>\n",
                        html(&f.path),
                        f.change.as_str(),
                        d.replace("```", "`\u{200b}``")
                    );
                }
                (None, _) => {
                    let _ = writeln!(out, "- `{}`: {} (binary)", cell(&f.path), f.change.as_str());
                }
            }
        }
    }
    let mut config = String::new();
    config_text(&mut config, &p.config);
    if !config.is_empty() {
        let _ = writeln!(out, "\n**Config:**\n\n```\n{config}```");
    }
    if !p.signatures.is_empty() {
        out.push_str("\n**Signatures:**\n\n");
        for v in &p.signatures {
            let _ = writeln!(out, "- {}", verdict_line(v));
        }
    }
    for w in &p.warnings {
        let _ = writeln!(out, "\n> warning: {}", cell(w));
    }
    for n in &p.notes {
        let _ = writeln!(out, "\n> note: {}", cell(n));
    }
    out
}

/// Text for a Markdown table cell: no pipes or newlines.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
