//! Every line shown to a person: pass reports, the status table, history,
//! the services `check` found. Each renderer writes into an `impl Write`,
//! so it is tested on fixtures without running the binary.
//!
//! Output goes through [`Quiet`]: when the reader of a pipe has gone
//! (`provision sync | head -1`), the rest of the output is dropped and the
//! command finishes its work, as git and coreutils end quietly there instead
//! of failing with "Broken pipe".

use std::io::{self, Write};

use crate::config::{Service, Transport};
use crate::engine::apply::{Outcome, Report, Serving};
use crate::model::commit::CommitId;
use crate::model::pass::{Failure, FailureKind};

use super::journal::Event;
use crate::view::history::HistoryEntry;
use crate::view::status::{CommitAt, Document, ServiceStatus, Shows};

/// A writer that stops writing, without an error, once its reader closed
/// the pipe, and shows control characters escaped: what it writes comes
/// from commits, servers and remote machines too, and an escape sequence
/// in a subject or an `ERR` line must not drive the operator's terminal.
/// provision itself writes none (JSON escapes them too).
pub struct Quiet<W: Write> {
    inner: W,
    closed: bool,
}

impl<W: Write> Write for Quiet<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        // fmt writes whole `str` pieces, so a character is never split
        // between two calls.
        match self.inner.write_all(&crate::util::escape_bytes(buf)) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(buf.len())
            }
            Err(e) => Err(e),
            Ok(()) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.inner.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            r => r,
        }
    }
}

/// Standard output, ending quietly on a closed pipe.
pub fn stdout() -> Quiet<io::StdoutLock<'static>> {
    Quiet {
        inner: io::stdout().lock(),
        closed: false,
    }
}

/// Standard error, ending quietly on a closed pipe.
pub fn stderr() -> Quiet<io::StderrLock<'static>> {
    Quiet {
        inner: io::stderr().lock(),
        closed: false,
    }
}

/// What the reports are about, for the words of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    /// A pass or an operator command that deploys.
    Deploy,
    /// The boot-time restore of mounts (`provision mount`).
    Restore,
    /// `provision rollback`.
    Rollback,
}

/// A line on standard output, dropped quietly once its reader is gone.
pub fn line(text: impl std::fmt::Display) {
    let _ = writeln!(stdout(), "{text}");
}

/// Text on standard output as it is (a diff).
pub fn text(text: &str) {
    let _ = write!(stdout(), "{text}");
}

/// A line on standard error as it is (a note, a progress summary, a
/// warning that names itself).
pub fn note(text: impl std::fmt::Display) {
    let _ = writeln!(stderr(), "{text}");
}

/// `warning: TEXT` on standard error.
pub fn warning(text: impl std::fmt::Display) {
    let _ = writeln!(stderr(), "warning: {text}");
}

/// `error: ERROR` with its causes, on standard error.
pub fn error(e: &anyhow::Error) {
    let _ = writeln!(stderr(), "error: {e:#}");
}

/// The config's errors, each with its file, line and key, as they are.
pub fn config_errors(e: &anyhow::Error) {
    let _ = write!(stderr(), "{e}");
}

/// A document as pretty JSON on standard output.
pub fn json(doc: &impl serde::Serialize) -> anyhow::Result<()> {
    line(serde_json::to_string_pretty(doc)?);
    Ok(())
}

/// `check`'s first line: the config is valid, and how many services it
/// has for this machine.
pub fn check_summary(path: &std::path::Path, total: usize, mine: usize, machine: &str) {
    line(format_args!(
        "{}: valid, {total} service(s) in total, {mine} for machine {machine}",
        path.display()
    ));
}

/// A key file `check` read: how many keys, for which services.
pub fn key_file(path: &std::path::Path, what: &str, services: &str) {
    line(format_args!("{}: {what}, for {services}", path.display()));
}

/// After a rollback: how the pin ends.
pub fn pinned(service: &str) {
    line(format_args!(
        "{service}: pinned; `provision forward {service}` follows upstream again"
    ));
}

/// `verify`'s answer, and a note when the service trusts no key at all.
pub fn verdict(service: &str, trusts_keys: bool, commit: &str, describe: &str) {
    if !trusts_keys {
        note(format_args!(
            "note: {service} has neither allowed_signers nor openpgp_keys: no key is trusted, and passes do not check signatures"
        ));
    }
    line(format_args!(
        "{}: {describe}",
        crate::model::commit::short(commit)
    ));
}

/// One line per service and its notes, successes to `out` and failures to
/// `err`; returns how many failed.
pub fn reports(
    out: &mut impl Write,
    err: &mut impl Write,
    reports: Vec<Report>,
    doing: Doing,
) -> usize {
    let mut failed = 0;
    for report in reports {
        let told = told(&report, doing);
        let sink: &mut dyn Write = if told.failed {
            failed += 1;
            err
        } else {
            out
        };
        for line in &told.lines {
            let _ = writeln!(sink, "{line}");
        }
    }
    failed
}

/// The lines of the failed reports only (beside `sync --json`, whose
/// stdout is the document).
pub fn failures(err: &mut impl Write, reports: &[Report], doing: Doing) {
    for told in reports.iter().map(|r| told(r, doing)).filter(|t| t.failed) {
        for line in &told.lines {
            let _ = writeln!(err, "{line}");
        }
    }
}

/// What a report tells, ready for a terminal or the journal.
pub struct Told {
    /// The event it is.
    pub event: Event,
    /// The commit it is about, when there is one.
    pub commit: Option<CommitId>,
    /// Its lines, each starting with the service's name.
    pub lines: Vec<String>,
    /// Whether it failed.
    pub failed: bool,
}

/// The lines of one report and the event they are.
pub fn told(report: &Report, doing: Doing) -> Told {
    let name = &report.service;
    let serving = match &report.serving {
        Serving::Commit(c) => Some(*c),
        _ => None,
    };
    let data = report.data(doing == Doing::Restore);
    match (&report.outcome, &data.failure) {
        (Ok(o), _) => {
            let mut lines = vec![format!("{name}: {}", headline(o, doing))];
            lines.extend(o.notes.iter().map(|n| format!("{name}: {}", n.text)));
            let event = match doing {
                Doing::Restore => Event::Restore,
                Doing::Rollback => Event::Rollback,
                Doing::Deploy if o.new_release => Event::Deploy,
                Doing::Deploy => Event::Sync,
            };
            Told {
                event,
                commit: o.to,
                lines,
                failed: false,
            }
        }
        (Err(_), failure) => {
            let failure = failure.clone().unwrap_or(Failure {
                kind: FailureKind::Error,
                stage: None,
                commit: serving,
                message: String::new(),
            });
            let (event, commit) = match failure.kind {
                FailureKind::Reverted => (Event::Revert, failure.commit),
                FailureKind::Rejected | FailureKind::RevertFailed => {
                    (Event::Reject, failure.commit)
                }
                _ => (Event::Fail, serving),
            };
            Told {
                event,
                commit,
                lines: vec![format!(
                    "{name}: {}: {}",
                    failure_label(doing, &report.serving, failure.kind),
                    failure.message
                )],
                failed: true,
            }
        }
    }
}

/// The first words about a successful pass.
fn headline(o: &Outcome, doing: Doing) -> String {
    let Some(to) = o.to else {
        return match doing {
            Doing::Restore => "nothing restored".to_string(),
            _ => "nothing deployed yet".to_string(),
        };
    };
    if doing == Doing::Restore {
        return format!("restored {} from disk (upstream not checked)", to.short());
    }
    if o.new_release {
        let from = o.from.map_or("nothing".to_string(), |c| c.short());
        return format!("deployed {} (was {from})", to.short());
    }
    match &o.held {
        Some(h) if h.upstream != to => format!(
            "{} at {} (upstream at {})",
            h.by.as_str(),
            to.short(),
            h.upstream.short()
        ),
        _ => format!("up to date at {}", to.short()),
    }
}

/// What a failure means for what the service sees now.
fn failure_label(doing: Doing, serving: &Serving, kind: FailureKind) -> &'static str {
    let what = match doing {
        Doing::Restore => return "restoring mounts failed",
        Doing::Deploy => "pass failed",
        Doing::Rollback => "rollback failed",
    };
    match (kind, doing, serving) {
        // The new files are in place: "last good release kept" would be false.
        (FailureKind::ActionPending | FailureKind::FirstDeploymentFailed, ..) => what,
        (FailureKind::Rejected | FailureKind::Reverted | FailureKind::RevertFailed, ..) => what,
        (_, Doing::Deploy, Serving::Nothing) => "pass failed, nothing is deployed",
        (_, Doing::Deploy, _) => "pass failed, last good release kept",
        _ => what,
    }
}

/// A service as `check` lists it.
pub fn service(out: &mut impl Write, svc: &Service) {
    let action = svc.action.map_or("none", |a| a.as_str());
    let _ = writeln!(
        out,
        "  {} ({}) <- {} branch {} depth {}, action {}",
        svc.name, svc.unit, svc.upstream.url, svc.branch, svc.depth, action
    );
    if svc.upstream.transport == Transport::Local && !svc.upstream.supports_shallow() {
        let _ = writeln!(
            out,
            "    note: local upstream and git is not installed: libgit2 reads it, which cannot fetch it shallow, so it is fetched in full (and each object is read whole into memory)"
        );
    }
    let checks = [
        ("validate", &svc.checks.validate),
        ("health", &svc.checks.health),
    ];
    for (key, check) in checks {
        if let Some(c) = check {
            let _ = writeln!(
                out,
                "    {key}: {} (within {}s)",
                crate::config::printable(&c.command),
                c.timeout.as_secs()
            );
        }
    }
    if let Some(line) = rollout_line(svc) {
        let _ = writeln!(out, "    {line}");
    }
    for d in &svc.dirs {
        let kind = if d.file { " (file)" } else { "" };
        let ro = if d.readonly { " read-only" } else { "" };
        let _ = writeln!(out, "    {} <- {}{kind}{ro}", d.local.display(), d.link);
    }
}

/// How the service's new heads spread, as `check` says it.
fn rollout_line(svc: &Service) -> Option<String> {
    let r = &svc.rollout;
    if !r.staged() {
        return None;
    }
    let mut line = format!("rollout: over {}", crate::util::human_span(r.window));
    let role = if r.is_canary(&svc.machine) {
        "this machine is a canary"
    } else {
        "this machine waits its turn"
    };
    if !r.canary.is_empty() {
        line.push_str(&format!(", canaries {} ({role})", r.canary.join(", ")));
    }
    if let Some(g) = &r.gate {
        line.push_str(&format!(
            ", gate {}: {} canar{} for {}",
            g.url,
            g.min,
            if g.min == 1 { "y" } else { "ies" },
            crate::util::human_span(g.soak)
        ));
    }
    Some(line)
}

/// `provision history` as lines, newest first.
pub fn history(out: &mut impl Write, svc: &Service, entries: &[HistoryEntry]) {
    if entries.is_empty() {
        let _ = writeln!(
            out,
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
        let _ = writeln!(
            out,
            "{mark} {}  {when}  {:<16.16}  {}{tags}",
            e.commit.short(),
            e.author,
            e.subject
        );
    }
}

/// The human form of `status`: an aligned table, then one line per thing
/// worth a look (holds, failures, drifted files, broken mounts).
pub fn status_table(out: &mut impl Write, report: &Document) {
    let now = report.time;
    let header = [
        "SERVICE",
        "UNIT",
        "STATE",
        "DEPLOYED",
        "UPSTREAM",
        "SYNC",
        "DRIFT",
        "MOUNTS",
        "ACTIVE",
        "LAST PASS",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut details = Vec::new();
    for s in &report.services {
        rows.push(row(s, now));
        details.extend(detail_lines(s, now));
    }
    aligned(out, &rows);
    for d in details {
        let _ = writeln!(out, "{d}");
    }
}

/// Rows of cells as columns two spaces apart, each as wide as its widest
/// cell.
pub fn aligned(out: &mut impl Write, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
}

fn row(s: &ServiceStatus, now: u64) -> Vec<String> {
    let deployed = |c: &Option<CommitAt>| c.as_ref().map_or("-".into(), |c| c.commit.short());
    let upstream = match &s.upstream {
        Some(u) => format!("{} ({} ago)", u.commit.short(), ago(now, u.time)),
        None => "-".into(),
    };
    let yes_no = |b: Option<bool>, yes: &str, no: &str| match b {
        Some(true) => yes.to_string(),
        Some(false) => no.to_string(),
        None => "-".to_string(),
    };
    let drift = s.drift.count.map_or("?".into(), |n| n.to_string());
    let mounts = match s.mounts_ok {
        None => "-".to_string(),
        Some(true) => "ok".to_string(),
        Some(false) => {
            let ok = s.mounts.iter().filter(|m| m.state == Shows::Ok).count();
            format!("{ok}/{}", s.mounts.len())
        }
    };
    let last = match &s.last_pass {
        Some(p) => format!(
            "{} ago {}",
            ago(now, p.time),
            if p.ok { "ok" } else { "FAILED" }
        ),
        None => "never".into(),
    };
    let sync = match (&s.rejected, s.in_sync, s.behind_seconds) {
        (Some(_), _, _) => "REJECTED".to_string(),
        (None, Some(false), _) if s.window.is_some() => "no (window)".to_string(),
        (None, Some(false), _) if s.rollout.is_some() => "no (waiting)".to_string(),
        (None, Some(false), Some(b)) => format!("no ({} behind)", ago(b, 0)),
        (None, in_sync, _) => yes_no(in_sync, "yes", "no"),
    };
    vec![
        s.name.clone(),
        s.unit.clone(),
        s.state.as_str().to_string(),
        deployed(&s.deployed),
        upstream,
        sync,
        drift,
        mounts,
        s.unit_state.clone().unwrap_or_else(|| "?".into()),
        last,
    ]
}

fn detail_lines(s: &ServiceStatus, now: u64) -> Vec<String> {
    let n = &s.name;
    let mut out = Vec::new();
    if let Some(e) = &s.state_error {
        out.push(format!("{n}: state unreadable: {e}"));
    }
    let utc = |t: u64| crate::util::format_utc(i64::try_from(t).unwrap_or(0));
    if let Some(h) = &s.hold {
        let by =
            h.by.as_deref()
                .map_or(String::new(), |b| format!(" by {b}"));
        let until = h
            .until
            .map_or(String::new(), |u| format!(", until {} UTC", utc(u)));
        out.push(format!(
            "{n}: {} since {} ({} ago){by}{until}: {}",
            h.kind.as_str(),
            utc(h.since),
            ago(now, h.since),
            h.reason
        ));
    }
    if let Some(r) = &s.rejected {
        let first = r.reason.lines().next().unwrap_or("");
        out.push(format!(
            "{n}: rejected {} at {} on {} UTC: {first}; `provision forward {n}` tries it again",
            r.commit.short(),
            r.stage.as_str(),
            utc(r.time),
        ));
    }
    if let Some(v) = s.signature.as_ref().filter(|v| !v.verified) {
        out.push(format!(
            "{n}: signature of {}: {}",
            v.commit.chars().take(10).collect::<String>(),
            v.describe()
        ));
    }
    if let Some(w) = &s.rollout {
        let gate = w
            .gate
            .as_deref()
            .map_or(String::new(), |g| format!("; gate closed: {g}"));
        out.push(format!(
            "{n}: waiting for rollout: {} at {} UTC (position {:.3}){gate}; `provision forward {n}` adopts it now",
            w.commit.short(),
            utc(w.at),
            w.position
        ));
    }
    if let Some(b) = &s.backoff {
        out.push(format!(
            "{n}: backing off until {} UTC after {} failed fetch(es) ({}); `provision sync --now {n}` fetches anyway",
            utc(b.until),
            b.failures,
            b.reason
        ));
    }
    // A pass that failed by rejecting a commit is told by the line above.
    let rejection = |p: &&crate::view::status::PassStatus| {
        s.rejected.as_ref().is_some_and(|r| {
            p.error
                .as_deref()
                .is_some_and(|e| e.starts_with(&format!("rejected {}", r.commit.short())))
        })
    };
    if let Some(p) = s
        .last_pass
        .as_ref()
        .filter(|p| !p.ok)
        .filter(|p| !rejection(p))
    {
        let e = p.error.as_deref().unwrap_or("unknown error");
        out.push(format!("{n}: last pass failed: {e}"));
    }
    if let Some(e) = &s.drift.error {
        out.push(format!("{n}: drift unknown: {e}"));
    }
    for f in &s.drift.files {
        out.push(format!("{n}: drift: {} {}", f.change.as_str(), f.path));
    }
    for m in s.mounts.iter().filter(|m| m.state != Shows::Ok) {
        let why = m
            .error
            .as_deref()
            .map_or(String::new(), |e| format!(": {e}"));
        out.push(format!("{n}: mount {}: {}{why}", m.local, m.state.as_str()));
    }
    out
}

/// A compact age: `42s`, `5m`, `3h`, `2d`.
pub use crate::util::age as ago;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::apply::{Held, Keeper};
    use crate::model::commit::CommitId;
    use crate::store::state::HoldKind;

    #[test]
    fn ages_are_compact() {
        assert_eq!(ago(100, 58), "42s");
        assert_eq!(ago(1000, 700), "5m");
        assert_eq!(ago(20_000, 0), "5h");
        assert_eq!(ago(200_000, 0), "2d");
        assert_eq!(ago(0, 10), "0s");
    }

    fn commit(c: char) -> CommitId {
        c.to_string().repeat(40).parse().expect("commit id")
    }

    fn outcome(held: Option<Held>) -> Outcome {
        Outcome {
            from: Some(commit('a')),
            to: Some(commit('a')),
            new_release: false,
            notes: vec![crate::model::pass::Note::new(
                crate::model::pass::NoteKind::Mount,
                "a note",
            )],
            held,
        }
    }

    fn render(r: Vec<Report>, doing: Doing) -> (String, String, usize) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let n = reports(&mut out, &mut err, r, doing);
        (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
            n,
        )
    }

    #[test]
    fn a_held_service_behind_upstream_says_so() {
        let pinned = Held {
            by: Keeper::Hold(HoldKind::Pinned),
            upstream: commit('b'),
        };
        let r = Report {
            service: "web".into(),
            serving: Serving::Commit(commit('a')),
            outcome: Ok(outcome(Some(pinned))),
        };
        let (out, _, failed) = render(vec![r], Doing::Deploy);
        assert_eq!(failed, 0);
        assert!(
            out.starts_with("web: pinned at aaaaaaaaaa (upstream at bbbbbbbbbb)\n"),
            "{out}"
        );
        let r = Report {
            service: "web".into(),
            serving: Serving::Commit(commit('a')),
            outcome: Ok(outcome(None)),
        };
        assert!(render(vec![r], Doing::Deploy)
            .0
            .starts_with("web: up to date at aaaaaaaaaa\n"));
    }

    #[test]
    fn a_restore_says_restored_and_a_first_failure_says_nothing_is_deployed() {
        let r = Report {
            service: "web".into(),
            serving: Serving::Commit(commit('a')),
            outcome: Ok(outcome(None)),
        };
        let (out, _, _) = render(vec![r], Doing::Restore);
        assert!(
            out.starts_with("web: restored aaaaaaaaaa from disk"),
            "{out}"
        );
        let r = Report {
            service: "web".into(),
            serving: Serving::Nothing,
            outcome: Err(anyhow::anyhow!("server down")),
        };
        let (_, err, failed) = render(vec![r], Doing::Deploy);
        assert_eq!(failed, 1);
        assert_eq!(err, "web: pass failed, nothing is deployed: server down\n");
    }

    /// The status table is rendered from the document as the JSON says
    /// it: a frozen service behind upstream with a drifted file and a
    /// broken mount shows each, and its detail lines name them.
    #[test]
    fn the_status_table_renders_a_json_fixture() {
        let text = r#"{"schema": 1, "machine": "web1", "time": 1795534231,
            "services": [{"name": "nginx", "unit": "nginx.service", "state": "frozen",
              "hold": {"kind": "frozen", "reason": "audit", "since": 1795530000, "until": null, "by": "alice"},
              "deployed": {"commit": "0123456789abcdef0123456789abcdef01234567", "time": 1795500000},
              "upstream": {"commit": "89abcdef0123456789abcdef0123456789abcdef", "time": 1795534200},
              "in_sync": false, "behind_seconds": 600,
              "drift": {"policy": "warn", "count": 1,
                        "files": [{"path": "/etc/nginx/nginx.conf", "change": "modified"}]},
              "mounts": [{"local": "/etc/nginx", "state": "missing"}], "mounts_ok": false,
              "unit_state": "active",
              "last_pass": {"time": 1795534200, "ok": true}}]}"#;
        let doc: Document = serde_json::from_str(text).expect("the fixture");
        let mut out = Vec::new();
        status_table(&mut out, &doc);
        let out = String::from_utf8_lossy(&out);
        let row = out.lines().nth(1).expect("a row");
        for cell in ["nginx", "frozen", "0123456789", "89abcdef01", "active"] {
            assert!(row.contains(cell), "{cell} in {row:?}\n{out}");
        }
        assert!(out.contains("/etc/nginx/nginx.conf"), "{out}");
        assert!(out.contains("alice") && out.contains("audit"), "{out}");
        assert!(out.contains("/etc/nginx"), "{out}");
    }

    #[test]
    fn a_closed_pipe_ends_the_output_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
        }
        let mut q = Quiet {
            inner: Closed,
            closed: false,
        };
        assert!(writeln!(q, "one").is_ok());
        assert!(q.closed);
        assert!(writeln!(q, "two").is_ok());
        assert!(q.flush().is_ok());
    }
}
