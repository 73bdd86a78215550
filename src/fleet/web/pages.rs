//! The fleet's pages, rendered on the server from the `fleet status`
//! document (and, for details, each machine's own history and diff):
//! the overview, one machine, one service, and an action's results.

use std::fmt::Write as _;

use crate::fleet::action;
use crate::fleet::status::{service_in, Document, MachineStatus, Rollout};
use crate::fleet::web::html::{age, esc, path_segment};
use crate::model::commit::CommitId;
use crate::model::history::HistoryEntry;
use crate::model::status::{CommitAt, ServiceStatus, Tracking};

/// How one (machine, service) stands, for a badge and the ordering.
struct Standing {
    class: &'static str,
    label: String,
    problem: bool,
}

fn standing(m: &MachineStatus, s: Option<&ServiceStatus>, head: Option<&str>) -> Standing {
    let st = |class, label: &str, problem| Standing {
        class,
        label: label.to_string(),
        problem,
    };
    let Some(s) = s else {
        return st("b-off", "unreachable", true);
    };
    if !m.reachable {
        return st("b-off", "unreachable", true);
    }
    let hurt = s.mounts_ok == Some(false)
        || s.drift.count.is_some_and(|n| n > 0)
        || s.unit_state
            .as_deref()
            .is_some_and(|u| u != "active" && u != "reloading");
    let mut out = if s.rejected.is_some() {
        st("b-rej", "rejected", true)
    } else if s.last_pass.as_ref().is_some_and(|p| !p.ok) {
        st("b-bad", "failing", true)
    } else if matches!(s.state, Tracking::Frozen | Tracking::Pinned) {
        st("b-held", s.state.as_str(), false)
    } else if s.rollout.is_some() {
        st("b-wait", "waiting", false)
    } else if head.is_some() && commit_of(s.deployed.as_ref()).as_deref() == head {
        st("b-ok", "at head", false)
    } else {
        st("b-behind", "behind", false)
    };
    out.problem |= hurt;
    out
}

/// The commit's short form, `-` when there is none.
fn short(c: Option<CommitId>) -> String {
    c.map_or("-".to_string(), |c| c.short())
}

/// The commit of a deployed or upstream entry, as 40 hex digits.
fn commit_of(at: Option<&CommitAt>) -> Option<String> {
    at.map(|a| a.commit.to_string())
}

/// The subject and commit time of `head`, from any machine that has it.
fn head_described(doc: &Document, service: &str, head: &str) -> Option<(String, Option<i64>)> {
    doc.machines.iter().find_map(|m| {
        let s = service_in(m, service)?;
        [&s.upstream, &s.deployed]
            .into_iter()
            .flatten()
            .find(|at| at.commit.to_string() == head)
            .map(|at| (at.subject.clone().unwrap_or_default(), at.committed))
    })
}

/// A service's rollout: the head and a bar of where its machines stand.
fn rollout_block(doc: &Document, r: &Rollout, link: bool) -> String {
    let mut out = String::new();
    let name = if link {
        format!(
            "<a href=\"/service/{}\">{}</a>",
            path_segment(&r.name),
            esc(&r.name)
        )
    } else {
        format!("<strong>{}</strong>", esc(&r.name))
    };
    let head = match &r.head {
        Some(h) => {
            let (subject, committed) = head_described(doc, &r.name, h).unwrap_or_default();
            let when = committed
                .map(|t| format!(", {} ago", age(doc.time, t.max(0) as u64)))
                .unwrap_or_default();
            format!(
                "head <code data-head=\"{}\">{}</code> {}<span class=\"mute\">{when}</span>",
                esc(h),
                esc(&h.chars().take(10).collect::<String>()),
                esc(&subject)
            )
        }
        None => "head unknown".to_string(),
    };
    let _ = write!(
        out,
        "<section class=\"svc\" data-service=\"{}\"><div class=\"head\">{name}<span>{head}</span>\
         <span class=\"mute\">{} machines</span></div><div class=\"bar\" role=\"img\" aria-label=\"rollout of {}\">",
        esc(&r.name),
        r.machines,
        esc(&r.name)
    );
    let parts = [
        ("at_head", "at head", r.at_head),
        ("waiting", "waiting", r.waiting),
        ("behind", "behind", r.behind),
        ("frozen", "frozen", r.frozen),
        ("rejected", "rejected", r.rejected),
        ("unreachable", "unreachable", r.unreachable),
    ];
    let total = r.machines.max(1) as f64;
    for (class, label, n) in parts.iter().filter(|p| p.2 > 0) {
        let _ = write!(
            out,
            "<span class=\"{class}\" style=\"width:{:.2}%\" title=\"{n} {label}\"></span>",
            *n as f64 * 100.0 / total
        );
    }
    out.push_str("</div><div class=\"legend\">");
    for (class, label, n) in parts {
        let _ = write!(
            out,
            "<span data-count=\"{class}\"><i class=\"{class}\"></i>{n} {label}</span>"
        );
    }
    let _ = write!(
        out,
        "<span data-count=\"failing\"><i class=\"failing\"></i>{} failing</span>",
        r.failing
    );
    if let (Some(a), Some(b)) = (r.waiting_from, r.waiting_until) {
        let _ = write!(
            out,
            "<span>adopting from {} to {} UTC</span>",
            crate::util::format_utc(a as i64),
            crate::util::format_utc(b as i64)
        );
    }
    out.push_str("</div></section>");
    out
}

/// The machines × services grid cell of one service.
fn cell(m: &MachineStatus, service: &str, head: Option<&str>, now: u64) -> (bool, String) {
    let s = service_in(m, service);
    let st = standing(m, s, head);
    let Some(s) = s else {
        return (
            st.problem,
            format!(
                "<td class=\"cell\" data-service=\"{}\"><span class=\"badge {}\">{}</span></td>",
                esc(service),
                st.class,
                esc(&st.label)
            ),
        );
    };
    let last = match &s.last_pass {
        Some(p) => format!(
            "pass {} ago {}",
            age(now, p.time),
            if p.ok { "ok" } else { "FAILED" }
        ),
        None => "no pass yet".to_string(),
    };
    let mounts = match s.mounts_ok {
        Some(true) => "mounts ok",
        Some(false) => "mounts BROKEN",
        None => "no mounts",
    };
    let text = format!(
        "<td class=\"cell\" data-service=\"{svc}\" data-commit=\"{commit}\" data-state=\"{label}\">\
         <code>{short}</code> <span class=\"badge {class}\">{label}</span>\
         <small>drift {drift} · {mounts} · {unit}</small><small>{last}</small></td>",
        svc = esc(service),
        commit = esc(&commit_of(s.deployed.as_ref()).unwrap_or_default()),
        short = esc(&short(s.deployed.as_ref().map(|d| d.commit))),
        class = st.class,
        label = esc(&st.label),
        drift = drift_count(s),
        unit = esc(s.unit_state.as_deref().unwrap_or("?")),
        last = esc(&last),
    );
    (st.problem, text)
}

/// `/`: every service's rollout, then the grid, problems first.
/// Machines one overview page lists: a fleet of 10,000 is read page by
/// page, problems first, and narrowed by the filter.
pub const PAGE: usize = 200;

/// What the overview's machine grid shows (its query string).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only machines running this service (`service=`), and only its column.
    pub service: Option<String>,
    /// Only machines with a problem (`state=problems`).
    pub problems: bool,
    /// Only machines whose name contains this (`name=`).
    pub name: Option<String>,
    /// The page, from 0 (`page=`).
    pub page: usize,
}

impl Filter {
    /// The query string of this filter at `page`.
    fn query(&self, page: usize) -> String {
        let mut q = vec![format!("page={page}")];
        if let Some(s) = &self.service {
            q.push(format!("service={}", path_segment(s)));
        }
        if self.problems {
            q.push("state=problems".into());
        }
        if let Some(n) = &self.name {
            q.push(format!("name={}", path_segment(n)));
        }
        q.join("&amp;")
    }

    /// The filter form, with the current values.
    fn form(&self, doc: &Document) -> String {
        let mut services = String::from("<option value=\"\">every service</option>");
        for r in &doc.services {
            let selected = if self.service.as_deref() == Some(r.name.as_str()) {
                " selected"
            } else {
                ""
            };
            let _ = write!(services, "<option{selected}>{}</option>", esc(&r.name));
        }
        format!(
            "<form method=\"get\" action=\"/\" id=\"filter\"><select name=\"service\">{services}</select> \
             <select name=\"state\"><option value=\"\">every state</option><option value=\"problems\"{}>problems only</option></select> \
             <input name=\"name\" placeholder=\"name contains\" value=\"{}\"> <button>Show</button></form>",
            if self.problems { " selected" } else { "" },
            esc(self.name.as_deref().unwrap_or_default())
        )
    }
}

pub fn overview(doc: &Document, filter: &Filter) -> String {
    let mut out = String::from("<h2>Services</h2>");
    for r in doc
        .services
        .iter()
        .filter(|r| filter.service.as_ref().is_none_or(|s| *s == r.name))
    {
        out.push_str(&rollout_block(doc, r, true));
    }
    let shown: Vec<&crate::fleet::status::Rollout> = doc
        .services
        .iter()
        .filter(|r| filter.service.as_ref().is_none_or(|s| *s == r.name))
        .collect();
    out.push_str("<h2>Machines</h2>");
    out.push_str(&filter.form(doc));
    out.push_str("<div class=\"scroll\"><table id=\"grid\"><thead><tr><th>Machine</th>");
    for r in &shown {
        let _ = write!(out, "<th>{}</th>", esc(&r.name));
    }
    out.push_str("</tr></thead><tbody>");
    let needle = filter.name.as_deref().map(str::to_ascii_lowercase);
    let mut rows: Vec<(bool, String)> = doc
        .machines
        .iter()
        .filter(|m| {
            needle
                .as_deref()
                .is_none_or(|n| m.machine.to_ascii_lowercase().contains(n))
        })
        .filter(|m| {
            filter
                .service
                .as_deref()
                .is_none_or(|s| service_in(m, s).is_some() || !m.reachable)
        })
        .map(|m| {
            let mut problem = !m.reachable;
            let mut cells = String::new();
            for r in &shown {
                if service_in(m, &r.name).is_none() && m.reachable {
                    cells.push_str("<td class=\"mute\">·</td>");
                    continue;
                }
                let (p, c) = cell(m, &r.name, r.head.as_deref(), doc.time);
                problem |= p;
                cells.push_str(&c);
            }
            let error = m
                .error
                .as_deref()
                .map(|e| format!("<small class=\"mute\">{}</small>", esc(e)))
                .unwrap_or_default();
            let row = format!(
                "<tr data-machine=\"{name}\"{class}><td><a href=\"/machine/{link}\">{name}</a>{error}</td>{cells}</tr>",
                name = esc(&m.machine),
                link = path_segment(&m.machine),
                class = if problem { " class=\"problem\"" } else { "" },
            );
            (problem, row)
        })
        .collect();
    if filter.problems {
        rows.retain(|(problem, _)| *problem);
    }
    rows.sort_by_key(|(problem, _)| !problem);
    let total = rows.len();
    let pages = total.div_ceil(PAGE).max(1);
    let page = filter.page.min(pages - 1);
    for (_, row) in rows.into_iter().skip(page * PAGE).take(PAGE) {
        out.push_str(&row);
    }
    out.push_str("</tbody></table></div>");
    let first = (page * PAGE + 1).min(total);
    let last = ((page + 1) * PAGE).min(total);
    let _ = write!(out, "<p id=\"pager\">machines {first}–{last} of {total}");
    if page > 0 {
        let _ = write!(
            out,
            " · <a href=\"/?{}\">previous</a>",
            filter.query(page - 1)
        );
    }
    if page + 1 < pages {
        let _ = write!(out, " · <a href=\"/?{}\">next</a>", filter.query(page + 1));
    }
    out.push_str("</p>");
    out
}

/// What a page needs besides the status document: each machine's history
/// and drift of the service, asked when the page is made.
pub struct Details {
    /// `history --json` entries (newest first), from one machine.
    pub history: Vec<HistoryEntry>,
    /// Where the history came from, or why there is none.
    pub history_from: Result<String, String>,
    /// `diff NAME` output per machine with drift.
    pub diffs: Vec<(String, String)>,
}

/// The number of changed paths, `?` when it could not be determined.
fn drift_count(s: &ServiceStatus) -> String {
    s.drift.count.map_or("?".to_string(), |n| n.to_string())
}

/// A Unix time as the page writes it.
fn utc(t: u64) -> String {
    format!("{} UTC", crate::util::format_utc(t as i64))
}

/// A hold, rejection or rollout wait, in words.
fn conditions(s: &ServiceStatus) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(h) = &s.hold {
        let mut line = format!("{} since {}: {}", h.kind.as_str(), utc(h.since), h.reason);
        if let Some(by) = &h.by {
            let _ = write!(line, " (by {by})");
        }
        if let Some(until) = h.until {
            let _ = write!(line, ", until {}", utc(until));
        }
        out.push(line);
    }
    if let Some(r) = &s.rejected {
        out.push(format!(
            "rejected {} at {}: {}",
            r.commit.short(),
            r.stage.as_str(),
            r.reason.lines().next().unwrap_or("")
        ));
    }
    if let Some(w) = &s.rollout {
        let mut line = format!("waiting for rollout: {} at {}", w.commit.short(), utc(w.at));
        if let Some(g) = &w.gate {
            let _ = write!(line, "; gate closed: {g}");
        }
        out.push(line);
    }
    if let Some(e) = s.last_pass.as_ref().and_then(|p| p.error.as_deref()) {
        out.push(format!("last pass failed: {e}"));
    }
    out
}

/// The history as a table, with where each commit is deployed.
fn history_table(details: &Details, deployed_on: &dyn Fn(&str) -> Vec<String>, now: u64) -> String {
    let mut out = String::new();
    match &details.history_from {
        Ok(from) => {
            let _ = write!(out, "<p class=\"mute\">as {} knows it</p>", esc(from));
        }
        Err(why) => {
            let _ = write!(out, "<p class=\"mute\">no history: {}</p>", esc(why));
            return out;
        }
    }
    out.push_str(
        "<div class=\"scroll\"><table class=\"history\"><thead><tr><th>Commit</th><th>Subject</th>\
         <th>Author</th><th>Age</th><th>Marks</th></tr></thead><tbody>",
    );
    for e in &details.history {
        let commit = e.commit.to_string();
        let mut marks = Vec::new();
        if e.upstream {
            marks.push("<span class=\"badge b-wait\">upstream</span>".to_string());
        }
        let on = deployed_on(&commit);
        if !on.is_empty() {
            marks.push(format!(
                "<span class=\"badge b-ok\">deployed</span> {}",
                esc(&on.join(", "))
            ));
        }
        if e.offline {
            marks.push("<span class=\"mute\">offline rollback</span>".to_string());
        }
        let _ = write!(
            out,
            "<tr data-commit=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&commit),
            esc(&e.commit.short()),
            esc(&e.subject),
            esc(&e.author),
            if e.time > 0 {
                age(now, e.time as u64)
            } else {
                "-".to_string()
            },
            marks.join(" ")
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// The action form: `machines` as hidden fields (one machine) or as the
/// checkboxes the caller put in the table (`form` attribute).
fn actions_form(
    id: &str,
    service: &str,
    token: &str,
    machines: Option<&str>,
    details: &Details,
) -> String {
    let mut out = format!(
        "<form class=\"act\" id=\"{id}\" method=\"post\" action=\"/api/v1/freeze\" data-verb=\"freeze\" data-service=\"{svc}\">\
         <input type=\"hidden\" name=\"service\" value=\"{svc}\"><input type=\"hidden\" name=\"token\" value=\"{token}\">",
        id = esc(id),
        svc = esc(service),
        token = esc(token)
    );
    if let Some(m) = machines {
        let _ = write!(
            out,
            "<input type=\"hidden\" name=\"machines\" value=\"{}\">",
            esc(m)
        );
    }
    out.push_str(
        "<input type=\"text\" name=\"reason\" placeholder=\"reason (freeze)\" aria-label=\"reason\">\
         <button name=\"do\" value=\"freeze\" formaction=\"/api/v1/freeze\">Freeze</button>\
         <button name=\"do\" value=\"unfreeze\" formaction=\"/api/v1/unfreeze\">Unfreeze</button>\
         <button name=\"do\" value=\"forward\" formaction=\"/api/v1/forward\">Forward</button>",
    );
    if details.history.is_empty() {
        out.push_str("<input type=\"text\" name=\"rev\" placeholder=\"HEAD~1, hash or tag\" aria-label=\"revision\">");
    } else {
        out.push_str("<select name=\"rev\" aria-label=\"revision\">");
        for e in &details.history {
            let _ = write!(
                out,
                "<option value=\"{}\">{} {}</option>",
                e.commit,
                esc(&e.commit.short()),
                esc(&e.subject)
            );
        }
        out.push_str("</select>");
    }
    out.push_str(
        "<button class=\"danger\" name=\"do\" value=\"rollback\" formaction=\"/api/v1/rollback\">Roll back</button></form>",
    );
    out
}

/// A deployed or upstream commit as a table cell.
fn commit_cell(at: Option<&CommitAt>, now: u64) -> String {
    let Some(at) = at else {
        return "-".to_string();
    };
    let when = if at.time > 0 {
        format!("{} ago", age(now, at.time))
    } else {
        String::new()
    };
    format!(
        "<code>{}</code> {} <span class=\"mute\">{when}</span>",
        esc(&at.commit.short()),
        esc(at.subject.as_deref().unwrap_or(""))
    )
}

fn rows_of_fields(s: &ServiceStatus, now: u64) -> String {
    let mounts: Vec<String> = s
        .mounts
        .iter()
        .map(|m| format!("{} {}", esc(&m.local), m.state.as_str()))
        .collect();
    let drift: Vec<String> = s
        .drift
        .files
        .iter()
        .map(|f| format!("{} {}", f.change.as_str(), esc(&f.path)))
        .collect();
    let unit = if s.unit.is_empty() { "?" } else { &s.unit };
    let fields = [
        ("Unit", esc(unit)),
        ("State", s.state.as_str().to_string()),
        ("Deployed", commit_cell(s.deployed.as_ref(), now)),
        ("Upstream", commit_cell(s.upstream.as_ref(), now)),
        (
            "Drift",
            if drift.is_empty() {
                drift_count(s)
            } else {
                drift.join("<br>")
            },
        ),
        ("Mounts", mounts.join("<br>")),
        ("Unit state", esc(s.unit_state.as_deref().unwrap_or("?"))),
    ];
    fields
        .iter()
        .map(|(k, v)| format!("<tr><th>{k}</th><td>{v}</td></tr>"))
        .collect()
}

/// `/machine/NAME`: each of its services in detail, with its actions.
pub fn machine(
    doc: &Document,
    m: &MachineStatus,
    details: &[(String, Details)],
    token: &str,
) -> String {
    let mut out = format!("<h2 data-machine=\"{0}\">{0}</h2>", esc(&m.machine));
    if let Some(e) = &m.error {
        let _ = write!(
            out,
            "<p class=\"badge b-off\">unreachable</p><pre>{}</pre>",
            esc(e)
        );
    }
    let services: &[ServiceStatus] = m.doc.as_ref().map_or(&[], |d| &d.services);
    for s in services {
        let name = s.name.as_str();
        let head = doc
            .services
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.head.clone());
        let st = standing(m, Some(s), head.as_deref());
        let _ = write!(
            out,
            "<section class=\"svc\" data-service=\"{n}\"><div class=\"head\"><a href=\"/service/{link}\">{n}</a>\
             <span class=\"badge {}\">{}</span></div>",
            st.class,
            esc(&st.label),
            n = esc(name),
            link = path_segment(name)
        );
        for c in conditions(s) {
            let _ = write!(out, "<p>{}</p>", esc(&c));
        }
        let _ = write!(
            out,
            "<div class=\"scroll\"><table>{}</table></div>",
            rows_of_fields(s, doc.time)
        );
        let empty = Details {
            history: Vec::new(),
            history_from: Err("not asked".to_string()),
            diffs: Vec::new(),
        };
        let d = details
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&empty, |(_, d)| d);
        for (_, diff) in &d.diffs {
            let _ = write!(out, "<h3>Drift</h3><pre>{}</pre>", esc(diff));
        }
        out.push_str("<h3>History</h3>");
        let here = m.machine.clone();
        let deployed = commit_of(s.deployed.as_ref()).unwrap_or_default();
        out.push_str(&history_table(
            d,
            &|c: &str| {
                if c == deployed {
                    vec![here.clone()]
                } else {
                    Vec::new()
                }
            },
            doc.time,
        ));
        out.push_str("<h3>Act</h3>");
        out.push_str(&actions_form(
            &format!("act-{name}"),
            name,
            token,
            Some(&m.machine),
            d,
        ));
        out.push_str("</section>");
    }
    out
}

/// `/service/NAME`: its rollout, every machine that runs it (to choose
/// from), the history with where each commit is deployed, and drift.
pub fn service(
    doc: &Document,
    name: &str,
    machines: &[String],
    details: &Details,
    token: &str,
) -> String {
    let mut out = String::new();
    if let Some(r) = doc.services.iter().find(|r| r.name == name) {
        out.push_str(&rollout_block(doc, r, false));
    }
    let head = doc
        .services
        .iter()
        .find(|r| r.name == name)
        .and_then(|r| r.head.clone());
    let form = "act-service";
    out.push_str(
        "<h2>Machines</h2><div class=\"scroll\"><table id=\"machines\"><thead><tr><th></th><th>Machine</th>\
         <th>State</th><th>Deployed</th><th>Upstream</th><th>Drift</th><th>Mounts</th><th>Unit</th><th>Notes</th></tr></thead><tbody>",
    );
    for m in doc
        .machines
        .iter()
        .filter(|m| machines.contains(&m.machine))
    {
        let s = service_in(m, name);
        let st = standing(m, s, head.as_deref());
        let _ = write!(
            out,
            "<tr data-machine=\"{n}\"{class}><td><input type=\"checkbox\" name=\"machines\" value=\"{n}\" form=\"{form}\" aria-label=\"{n}\"></td>\
             <td><a href=\"/machine/{link}\">{n}</a></td><td><span class=\"badge {}\">{}</span></td>\
             <td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"notes\">{}</td></tr>",
            st.class,
            esc(&st.label),
            short(s.and_then(|s| s.deployed.as_ref()).map(|d| d.commit)),
            short(s.and_then(|s| s.upstream.as_ref()).map(|u| u.commit)),
            s.map_or("?".to_string(), drift_count),
            match s.and_then(|s| s.mounts_ok) {
                Some(true) => "ok",
                Some(false) => "BROKEN",
                None => "-",
            },
            esc(s.and_then(|s| s.unit_state.as_deref()).unwrap_or("?")),
            esc(&s.map(conditions).unwrap_or_default().join("; ")),
            n = esc(&m.machine),
            link = path_segment(&m.machine),
            class = if st.problem { " class=\"problem\"" } else { "" },
        );
    }
    out.push_str("</tbody></table></div><h3>Act on the machines ticked above</h3>");
    out.push_str(&actions_form(form, name, token, None, details));
    out.push_str("<h2>History</h2>");
    let deployed_on = |c: &str| -> Vec<String> {
        doc.machines
            .iter()
            .filter(|m| {
                service_in(m, name)
                    .and_then(|s| commit_of(s.deployed.as_ref()))
                    .is_some_and(|d| d == c)
            })
            .map(|m| m.machine.clone())
            .collect()
    };
    out.push_str(&history_table(details, &deployed_on, doc.time));
    for (m, diff) in &details.diffs {
        let _ = write!(out, "<h3>Drift on {}</h3><pre>{}</pre>", esc(m), esc(diff));
    }
    out
}

/// An action's results, one line per machine.
pub fn results(verb: &str, service: &str, results: &[action::Result]) -> String {
    let ok = results.iter().filter(|r| r.ok).count();
    let mut out = format!(
        "<h2>{} {}: {ok} of {} ok</h2><ul class=\"results\">",
        esc(verb),
        esc(service),
        results.len()
    );
    for r in results {
        let _ = write!(
            out,
            "<li class=\"{}\" data-machine=\"{}\"><strong>{}</strong>: {}</li>",
            if r.ok { "ok" } else { "fail" },
            esc(&r.machine),
            esc(&r.machine),
            esc(&r.message)
        );
    }
    let _ = write!(
        out,
        "</ul><p><a href=\"/service/{}\">back to {}</a> · <a href=\"/\">overview</a></p>",
        path_segment(service),
        esc(service)
    );
    out
}

/// The last pushes the hook received and what each triggered.
pub fn pushes(events: &[super::hook::Event]) -> String {
    let mut out = String::from("<h2>Pushes</h2>");
    if events.is_empty() {
        out.push_str("<p class=\"mute\">No push received since the server started.</p>");
        return out;
    }
    out.push_str("<table id=\"pushes\"><thead><tr><th>When</th><th>Forge</th><th>Repository</th><th>Branch</th><th>Passes asked for</th><th>Outcome</th></tr></thead><tbody>");
    for e in events {
        let list = |v: &[String]| {
            if v.is_empty() {
                "<span class=\"mute\">none</span>".to_string()
            } else {
                v.iter().map(|t| esc(t)).collect::<Vec<_>>().join("<br>")
            }
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&crate::util::format_utc(e.time as i64)),
            esc(e.forge),
            esc(&e.repository),
            esc(&e.branch),
            list(&e.triggered),
            list(&e.results)
        );
    }
    out.push_str("</tbody></table>");
    out
}
