//! Property tests of the config parser and validator (`Config::parse`) over
//! many generated files: it never panics, it is deterministic, every
//! rejection carries at least one located diagnostic with a message, and
//! every accepted config holds only values a pass can use.
//!
//! Two generators feed it:
//! - structure-aware: TOML built from the real keys with good, wrong-type,
//!   invalid or random values, missing and unknown keys, duplicates and
//!   syntax damage. The generator knows which keys it broke, so it also
//!   checks that a clean file is accepted with the values written, and that
//!   a broken one names each broken key in the right table;
//! - mutation: valid seed files (examples/config.toml, a gitopper config,
//!   one using every key) damaged at the byte level.
//!
//! `PROVISION_FUZZ_ITERS` sets the cases per generator and
//! `PROVISION_FUZZ_SEED` the seed; both are printed so a failure can be
//! replayed. `make fuzz` runs this with many iterations and a fresh seed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic;
use std::path::{Component, Path};
use std::sync::Once;
use std::time::Duration;

use std::sync::LazyLock;

use provision::config::keys::{self, Scope};
use provision::config::{Config, ConfigErrors, Diagnostic, DEFAULT_DEPTH};

/// Cases per generator when `PROVISION_FUZZ_ITERS` is not set: a few seconds
/// in a debug build.
const DEFAULT_ITERS: u64 = 6000;
const DEFAULT_SEED: u64 = 0x5eed_c0f1_6f00_d001;

/// The shared keys this test has value pools for; every other key of the
/// table is written with its example value, whose validity may depend on
/// other keys (so a case holding one is checked for located messages, not
/// for an exact outcome).
const POOLED: [&str; 15] = [
    "upstream",
    "branch",
    "user",
    "package",
    "action",
    "depth",
    "mount",
    "timeout",
    "ssh_key",
    "ssh_known_hosts",
    "https_user",
    "https_token_file",
    "interval",
    "drift",
    "check_user",
];

/// The names (and aliases) of the config's keys of `scope`, from its table.
fn table_keys(scope: Scope) -> Vec<&'static str> {
    keys::all()
        .filter(|k| k.scope == scope)
        .flat_map(|k| std::iter::once(k.name).chain(k.aliases.iter().copied()))
        .collect()
}

static SHARED_KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| table_keys(Scope::Shared));
static SERVICE_KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| table_keys(Scope::Service));
static DIR_KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| table_keys(Scope::Dir));

/// The table's entry for `key`.
fn table_entry(key: &str) -> &'static keys::Key {
    keys::all()
        .find(|k| k.name == key)
        .unwrap_or_else(|| panic!("{key} is not in the key table"))
}

// ---------------------------------------------------------------------------
// Random numbers: xorshift64*, seeded per case so one case can be replayed.

struct Rng(u64);

impl Rng {
    fn for_case(seed: u64, case: u64) -> Rng {
        // splitmix64 of the pair, so neighbouring cases are unrelated.
        let mut z = seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(z | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`; `n` must be positive.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        }
        Err(_) => default,
    }
}

/// The cases to run: all of them, or the one `PROVISION_FUZZ_CASE` names
/// (its input is then printed whole).
fn cases(iters: u64) -> std::ops::Range<u64> {
    match std::env::var("PROVISION_FUZZ_CASE") {
        Ok(_) => {
            let c = env_u64("PROVISION_FUZZ_CASE", 0);
            c..c + 1
        }
        Err(_) => 0..iters,
    }
}

fn replaying() -> bool {
    std::env::var_os("PROVISION_FUZZ_CASE").is_some()
}

// ---------------------------------------------------------------------------
// Running the parser: panics are caught and turned into a report.

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics inside `Config::parse` are expected findings, not test noise: the
/// hook records them for the report instead of printing each one (the
/// minimizer may provoke thousands). Other panics print as usual.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
            } else {
                previous(info);
            }
        }));
    });
}

fn guarded<T>(f: impl FnOnce() -> T + panic::UnwindSafe) -> Result<T, String> {
    install_hook();
    QUIET.with(|q| q.set(true));
    let r = panic::catch_unwind(f);
    QUIET.with(|q| q.set(false));
    r.map_err(|_| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "panic without message".to_string())
    })
}

enum Outcome {
    Accepted(Config),
    Rejected(Vec<Diagnostic>),
}

/// The properties every input must satisfy, whatever produced it.
fn check_general(path: &Path, text: &str) -> Result<Outcome, String> {
    let first = guarded(|| Config::parse(path, text))
        .map_err(|p| format!("Config::parse panicked: {p}"))?;
    let second = guarded(|| Config::parse(path, text))
        .map_err(|p| format!("Config::parse panicked on the second run: {p}"))?;
    let (a, b) = (format!("{first:?}"), format!("{second:?}"));
    if a != b {
        return Err(format!(
            "two parses of the same text differ:\n{a}\n---\n{b}"
        ));
    }
    match first {
        Err(ConfigErrors(diags)) => {
            if diags.is_empty() {
                return Err("rejected with no diagnostic at all".into());
            }
            for d in &diags {
                check_diagnostic(d, path, text)?;
            }
            let order: Vec<_> = diags
                .iter()
                .map(|d| (d.line == 0, d.line, d.column))
                .collect();
            if order.windows(2).any(|w| w[0] > w[1]) {
                return Err(format!(
                    "diagnostics are not in file order (positionless last): {order:?}"
                ));
            }
            let errors = ConfigErrors(diags);
            let shown = guarded(|| errors.to_string())
                .map_err(|p| format!("displaying the errors panicked: {p}"))?;
            for d in &errors.0 {
                if !shown.contains(d.message.as_str()) {
                    return Err(format!(
                        "the report does not show {:?}:\n{shown}",
                        d.message
                    ));
                }
            }
            Ok(Outcome::Rejected(errors.0))
        }
        Ok(config) => {
            check_config(&config, path, text)?;
            Ok(Outcome::Accepted(config))
        }
    }
}

fn check_diagnostic(d: &Diagnostic, path: &Path, text: &str) -> Result<(), String> {
    let fail = |what: String| Err(format!("{what} in diagnostic {d:?}"));
    if d.message.trim().is_empty() {
        return fail("empty message".into());
    }
    if d.context.trim().is_empty() {
        return fail("empty context".into());
    }
    if d.file != path {
        return fail(format!("file is not the path given ({})", path.display()));
    }
    // A position one past the end (an error at end of file) is on the last
    // line, which `split('\n')` also yields when the text ends with '\n'.
    let lines: Vec<&str> = text.split('\n').collect();
    if d.line > lines.len() {
        return fail(format!("line beyond the text's {} lines", lines.len()));
    }
    if d.line > 0 {
        let width = lines[d.line - 1].chars().count();
        if d.column < 1 || d.column > width + 1 {
            return fail(format!(
                "column outside 1..={} of line {}",
                width + 1,
                d.line
            ));
        }
    }
    Ok(())
}

/// What an accepted config promises the rest of the program.
fn check_config(c: &Config, path: &Path, text: &str) -> Result<(), String> {
    let fail = |what: String| Err(format!("accepted config: {what}"));
    if c.path != path {
        return fail(format!("path {:?} is not the one given", c.path));
    }
    for w in &c.warnings {
        check_diagnostic(w, path, text)?;
    }
    if let Some(m) = &c.metrics_dir {
        if !is_normal_absolute(m) {
            return fail(format!("metrics_dir {m:?} is not a normal absolute path"));
        }
    }
    for s in &c.services {
        if s.name.is_empty() || s.unit.is_empty() || s.machine.is_empty() || s.branch.is_empty() {
            return fail(format!("service with an empty field: {s:?}"));
        }
        let name_ok = s.name.len() <= 64
            && s.name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return fail(format!(
                "name {:?} unusable in unit and directory names",
                s.name
            ));
        }
        if s.dirs.is_empty() {
            return fail(format!("service {:?} has no dirs", s.name));
        }
        if s.depth < 1 || s.timeout < Duration::from_secs(1) || s.interval < Duration::from_secs(1)
        {
            return fail(format!(
                "service {:?} has a zero depth, timeout or interval",
                s.name
            ));
        }
        for d in &s.dirs {
            if !is_normal_absolute(&d.local) || d.local == Path::new("/") {
                return fail(format!("local {:?} is not a normal absolute path", d.local));
            }
            let link_ok = !d.link.is_empty()
                && !d.link.starts_with('/')
                && d.link
                    .split('/')
                    .all(|seg| !matches!(seg, "" | "." | ".." | ".git"));
            if !link_ok {
                return fail(format!("link {:?} leaves the repository", d.link));
            }
        }
        let c = &s.credentials;
        for p in [
            &s.mount,
            &c.ssh_key,
            &c.ssh_known_hosts,
            &c.https_token_file,
        ]
        .into_iter()
        .flatten()
        {
            if !is_normal_absolute(p) {
                return fail(format!("path {p:?} of {:?} is not absolute", s.name));
            }
        }
    }
    // Services of one machine: unique names, mounts that do not hide each other.
    let mut by_machine: BTreeMap<&str, Vec<&provision::config::Service>> = BTreeMap::new();
    for s in &c.services {
        by_machine.entry(s.machine.as_str()).or_default().push(s);
    }
    for group in by_machine.values() {
        for (i, a) in group.iter().enumerate() {
            for b in &group[i + 1..] {
                if a.name == b.name {
                    return fail(format!(
                        "two services named {:?} on {:?}",
                        a.name, a.machine
                    ));
                }
            }
        }
        let locals: Vec<&Path> = group
            .iter()
            .flat_map(|s| s.dirs.iter().map(|d| d.local.as_path()))
            .collect();
        for (i, a) in locals.iter().enumerate() {
            for b in &locals[i + 1..] {
                if a.starts_with(b) || b.starts_with(a) {
                    return fail(format!("mounts {a:?} and {b:?} overlap on one machine"));
                }
            }
        }
    }
    Ok(())
}

fn is_normal_absolute(p: &Path) -> bool {
    let mut comps = p.components();
    comps.next() == Some(Component::RootDir)
        && comps.all(|c| matches!(c, Component::Normal(_)))
        && p.to_str().is_some_and(|s| s == "/" || !s.ends_with('/'))
        && p.to_str().is_some_and(|s| !s.contains("//"))
}

/// A failure's kind, so one bug found many times is reported once: the
/// panic's location, or the reason with numbers and quoted text left out.
fn signature(why: &str) -> String {
    if let Some(rest) = why.split_once("panicked at ") {
        return rest.1.lines().next().unwrap_or("").to_string();
    }
    let head = why.lines().next().unwrap_or("");
    let head = head.split(';').next().unwrap_or("");
    let mut out = String::new();
    let mut quoted = false;
    for c in head.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            c if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            c => out.push(c),
        }
    }
    out.chars().take(120).collect()
}

/// Candidate cuts: whole lines, comma-separated items, bracketed groups,
/// then single characters; TOML breaks when cut anywhere, so larger
/// structural cuts are what make progress.
fn cuts(text: &[char]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut stack = Vec::new();
    let mut last_sep = 0;
    for (i, c) in text.iter().enumerate() {
        match c {
            '{' | '[' => stack.push(i),
            '}' | ']' => {
                if let Some(open) = stack.pop() {
                    out.push((open, i + 1));
                    // With the comma that follows or precedes it, so the
                    // list around it stays well-formed.
                    let next = text[i + 1..].iter().position(|c| !c.is_whitespace());
                    if let Some(n) = next.filter(|n| text[i + 1 + n] == ',') {
                        out.push((open, i + 2 + n));
                    }
                    let before = text[..open].iter().rposition(|c| !c.is_whitespace());
                    if let Some(p) = before.filter(|p| text[*p] == ',') {
                        out.push((p, i + 1));
                    }
                }
            }
            _ => {}
        }
        if matches!(c, '\n' | ',') {
            out.push((last_sep, i + 1));
            last_sep = i + 1;
        }
    }
    out.push((last_sep, text.len()));
    out.retain(|(a, b)| a < b);
    out.sort_by_key(|(a, b)| std::cmp::Reverse(b - a));
    out
}

/// A smaller text failing the general properties in the same way, so a
/// report shows the cause rather than the noise.
fn minimize(path: &Path, text: &str, why: &str) -> String {
    let kind = signature(why);
    let fails = |t: &str| {
        check_general(path, t)
            .err()
            .is_some_and(|w| signature(&w) == kind)
    };
    let mut cur: Vec<char> = text.chars().collect();
    let mut budget = 8_000usize;
    loop {
        let before = cur.len();
        // Largest cuts first; after a successful one the list is computed
        // again and the walk goes on from the same rank.
        let mut rank = 0;
        while budget > 0 {
            let all = cuts(&cur);
            let Some(&(a, b)) = all.get(rank) else {
                break;
            };
            budget -= 1;
            let candidate: String = cur[..a].iter().chain(&cur[b..]).collect();
            if fails(&candidate) {
                cur = candidate.chars().collect();
            } else {
                rank += 1;
            }
        }
        // Runs of characters: an escape such as \u0000 only goes whole.
        for run in [6, 2, 1] {
            let mut i = 0;
            while i + run <= cur.len() && budget > 0 {
                budget -= 1;
                let candidate: String = cur[..i].iter().chain(&cur[i + run..]).collect();
                if fails(&candidate) {
                    cur.drain(i..i + run);
                } else {
                    i += 1;
                }
            }
        }
        if cur.len() == before || budget == 0 {
            return cur.into_iter().collect();
        }
    }
}

/// Distinct failures of one run, the first case of each kind.
#[derive(Default)]
struct Failures {
    seen: BTreeMap<String, (u64, usize)>,
    report: String,
}

impl Failures {
    /// Records a failure; `general` ones (panics, malformed diagnostics)
    /// are minimized, generator-specific ones depend on the model and are
    /// shown whole.
    fn add(
        &mut self,
        generator: &str,
        case: u64,
        path: &Path,
        text: &str,
        why: &str,
        general: bool,
    ) {
        let sig = format!("{generator}: {}", signature(why));
        let entry = self.seen.entry(sig).or_insert((case, 0));
        entry.1 += 1;
        if entry.1 > 1 || self.seen.len() > 12 {
            return;
        }
        let shown: String = text.chars().take(3000).collect();
        let cut = if shown.len() < text.len() {
            " (cut short; PROVISION_FUZZ_CASE replays it whole)"
        } else {
            ""
        };
        let _ = writeln!(
            self.report,
            "\n=== {generator} case {case}, path {path:?}: {why}\ninput ({} bytes){cut}: {shown:?}",
            text.len()
        );
        if general {
            let small = minimize(path, text, why);
            let _ = writeln!(self.report, "minimized: {small:?}");
        }
    }

    fn finish(self, seed: u64) {
        if self.seen.is_empty() {
            return;
        }
        let mut counts = String::new();
        for (sig, (case, n)) in &self.seen {
            let _ = writeln!(counts, "  {n} x {sig} (first: case {case})");
        }
        panic!(
            "{} kinds of failure with PROVISION_FUZZ_SEED={seed:#x}:\n{counts}{}",
            self.seen.len(),
            self.report
        );
    }
}

struct Tally {
    accepted: u64,
    rejected: u64,
}

// ---------------------------------------------------------------------------
// TOML text for values and keys, in every spelling TOML allows.

fn basic_string(rng: &mut Rng, s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' if rng.chance(50) => out.push_str("\\t"),
            '\t' => out.push('\t'),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c if !c.is_ascii() && rng.chance(20) => {
                if (c as u32) > 0xffff {
                    let _ = write!(out, "\\U{:08X}", c as u32);
                } else {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A string value in a random TOML spelling that decodes to exactly `s`.
fn toml_string(rng: &mut Rng, s: &str) -> String {
    let literal_ok = !s.contains('\'') && !s.chars().any(|c| c.is_control() && c != '\t');
    match rng.below(10) {
        0 | 1 if literal_ok => format!("'{s}'"),
        2 if literal_ok && !s.is_empty() => format!("'''{s}'''"),
        3 if !s.ends_with('"') => format!("\"\"\"{}\"\"\"", basic_string(rng, s)),
        _ => format!("\"{}\"", basic_string(rng, s)),
    }
}

fn toml_key(rng: &mut Rng, k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare && rng.chance(85) {
        k.to_string()
    } else if !k.contains('\'') && !k.chars().any(char::is_control) && rng.chance(30) {
        format!("'{k}'")
    } else {
        format!("\"{}\"", basic_string(rng, k))
    }
}

// ---------------------------------------------------------------------------
// The structure-aware generator: a model of the file, and what it implies.

/// What the generator knows about a value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// Valid for its key.
    Good,
    /// Not of the key's type (or an integer out of range): rejected where it
    /// is written, and treated as absent otherwise.
    ParseBad,
    /// Of the right type but invalid: rejected where it takes effect.
    SemBad,
    /// Random: may or may not be valid.
    Unknown,
}

#[derive(Clone, Debug)]
struct Val {
    text: String,
    /// For a table value: its entries, so it can be written as a section.
    sub: Option<Vec<(String, String)>>,
    class: Class,
    /// The decoded value of a scalar (strings, integers in decimal, booleans).
    plain: String,
}

impl Val {
    fn string(rng: &mut Rng, s: &str, class: Class) -> Val {
        Val {
            text: toml_string(rng, s),
            sub: None,
            class,
            plain: s.to_string(),
        }
    }

    fn raw(text: &str, plain: &str, class: Class) -> Val {
        Val {
            text: text.to_string(),
            sub: None,
            class,
            plain: plain.to_string(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    /// A string, or a list of strings (`upstream` and its mirrors).
    StrList,
    Int,
    Interval,
    Bool,
    DirsArray,
    DirItem,
}

fn kind_of(key: &str) -> Kind {
    match key {
        "depth" | "timeout" => Kind::Int,
        "interval" => Kind::Interval,
        "file" | "single" | "readonly" => Kind::Bool,
        "dirs" => Kind::DirsArray,
        "upstream" => Kind::StrList,
        _ => Kind::Str,
    }
}

#[derive(Clone, Default, Debug)]
struct Table {
    entries: Vec<(String, Val)>,
    /// Index of an entry written twice: a TOML syntax error.
    dup: Option<usize>,
}

impl Table {
    fn get(&self, key: &str) -> Option<&Val> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

#[derive(Clone, Debug)]
enum DirItem {
    NotTable(Val),
    Table(Table),
}

#[derive(Clone, Debug)]
enum Dirs {
    Missing,
    NotArray(Val),
    Items(Vec<DirItem>),
}

#[derive(Clone, Debug)]
struct Svc {
    table: Table,
    dirs: Dirs,
    /// For a good `service`: the unit it resolves to and its default name
    /// (`None` when the default is not a usable name).
    unit: Option<(String, Option<String>)>,
}

#[derive(Clone, Debug)]
enum Global {
    Absent,
    NotTable(Val),
    Table(Table),
}

#[derive(Clone, Debug)]
enum Services {
    Items(Vec<Svc>),
    NotArray(Val),
}

#[derive(Clone, Debug)]
struct Model {
    top: Table,
    global: Global,
    services: Services,
    /// A line of broken TOML written somewhere.
    garbage: Option<&'static str>,
    /// An error the cross-service checks must report: (context, key).
    conflict: Option<(String, String)>,
}

fn good_pool(key: &str, i: usize, j: usize) -> Vec<String> {
    let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match key {
        "upstream" => v(&[
            "https://git.example.net/ops/config.git",
            "ssh://git@h.example/r.git",
            "git@github.com:o/r.git",
            "git://127.0.0.1/r.git",
            "file:///srv/git/r.git",
            "/srv/git/r.git",
            "git+ssh://h/r",
            "https://h/ü/r",
        ]),
        "branch" => v(&["main", "release/1.x", "feature-ü", "v2"]),
        "user" | "https_user" | "check_user" => {
            v(&["", "grafana", "www-data", "_svc", "user.name", "ü"])
        }
        "package" => v(&["", "nginx-light", "libc6:amd64", "g++"]),
        "action" => v(&[
            "",
            "reload",
            "restart",
            "try-restart",
            "reload-or-restart",
            "start",
        ]),
        "mount" | "ssh_key" | "ssh_known_hosts" | "https_token_file" | "metrics_dir" => v(&[
            "/var/lib/provision",
            "/etc/provision/token",
            "/ü/ñ",
            "/a b/c",
        ]),
        "interval" => v(&["5m", "1h 30m", "90s", "2d", " 10 min ", "1", "1h30m"]),
        "drift" => v(&["restore", "warn"]),
        "machine" => v(&[
            "web1.example.net",
            "localhost",
            "10.0.0.7",
            "fe80::1",
            "DB_2",
            "Web1.Example.NET",
        ]),
        "name" => vec![
            format!("n{i}"),
            format!("N_{i}.v2"),
            format!("{i}-{}", "z".repeat(63 - i.to_string().len())),
        ],
        "local" => vec![
            format!("/srv/fuzz/s{i}d{j}"),
            format!("/opt/ü{i}/ñ{j}"),
            format!("/etc/app {i}-{j}"),
            format!("/etc/default/s{i}-{j}"),
        ],
        "link" => vec![
            format!("app{i}/etc{j}"),
            "ü/ñ".into(),
            "a b/c".into(),
            "x".into(),
        ],
        _ => unreachable!("no good values for {key}"),
    }
}

fn bad_pool(key: &str) -> &'static [&'static str] {
    match key {
        "upstream" => &[
            "http://h/r",
            "ftp://h/r",
            "relative/path",
            "https://u:pw@h/r",
            "file://rel",
            "",
            "   ",
            "https://",
            ":path",
            "host:",
        ],
        "branch" => &[
            "",
            "-dash",
            "a..b",
            "has space",
            "x.lock",
            "tilde~1",
            "col:on",
            "q?",
            "star*",
            "br[",
            "end/",
            "a@{b",
        ],
        "user" | "package" | "https_user" | "check_user" => {
            &["has space", "a/b", "-lead", "tab\tx", "nl\nx", "nul\0x"]
        }
        "action" => &["reboot", "Reload", " reload", "reload "],
        "mount" | "ssh_key" | "ssh_known_hosts" | "https_token_file" | "metrics_dir" => &[
            "relative", "/a/../b", "/a/./b", "/a//b", "/a/", "", "./x", "//a",
        ],
        "interval" => &[
            "0",
            "0s",
            "abc",
            "5 parsecs",
            "",
            "-5",
            "99999999999999999999",
            "1y",
            "m5",
        ],
        "drift" => &["Restore", "ignore", "", " warn"],
        "machine" => &["", "  ", "bad host", "ü.example", "a/b", "x\ny"],
        "service" => &["", " ", "has space", "a/b", "getty@", "getty@.service", "ü"],
        "name" => &["", "-x", "has space", "ü", ".hidden", "a/b"],
        "local" => &[
            "", "rel", "/", "/etc", "/usr", "/var", "/a/../b", "/a/", "//a", "/srv/./x",
        ],
        "link" => &[
            "",
            "/abs",
            "a//b",
            "a/./b",
            "../x",
            ".git/config",
            "a/.git",
            "x/",
            "a/..",
        ],
        _ => &[],
    }
}

const GOOD_INTS: [(&str, &str); 8] = [
    ("1", "1"),
    ("3", "3"),
    ("0x10", "16"),
    ("1_000", "1000"),
    ("+7", "7"),
    ("4294967295", "4294967295"),
    ("0o17", "15"),
    ("0b11", "3"),
];
const BAD_INTS: [&str; 4] = ["0", "-1", "4294967296", "-9223372036854775808"];
const HUGE_INTS: [&str; 4] = [
    "9223372036854775808",
    "-9223372036854775809",
    "0x8000000000000000",
    "99999999999999999999999",
];

const CHAOS_CHARS: &[char] = &[
    'a',
    'Z',
    '0',
    '9',
    '-',
    '_',
    '.',
    '/',
    ':',
    '@',
    '\\',
    '"',
    '\'',
    ' ',
    '#',
    '=',
    '[',
    ']',
    '{',
    '}',
    ',',
    '~',
    '\0',
    '\u{1}',
    '\u{1b}',
    '\u{7f}',
    '\u{85}',
    '\n',
    '\r',
    '\t',
    'ü',
    'ñ',
    '中',
    '😀',
    '\u{200b}',
    '\u{feff}',
    '\u{202e}',
    '\u{10ffff}',
];

fn chaos_string(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => String::new(),
        1 => {
            let unit = *rng.pick(&["a", "ü", "/..", "😀", " ", "\\"]);
            unit.repeat(1000 + rng.below(5000))
        }
        2 => {
            let segs = ["", ".", "..", "etc", "ü", "a b", ".git", "…"];
            let n = 1 + rng.below(6);
            let mut s = if rng.chance(70) {
                "/".to_string()
            } else {
                String::new()
            };
            for k in 0..n {
                if k > 0 {
                    s.push('/');
                }
                s.push_str(rng.pick::<&str>(&segs));
            }
            s
        }
        _ => {
            let n = rng.below(40);
            (0..n).map(|_| *rng.pick(CHAOS_CHARS)).collect()
        }
    }
}

/// A value of another type than `kind` expects.
fn wrong_type(rng: &mut Rng, kind: Kind) -> Val {
    loop {
        let (text, is) = match rng.below(7) {
            0 => ("42".to_string(), "int"),
            1 => (
                rng.pick(&["1.5", "-0.0", "inf", "nan", "6.626e-34", "+inf"])
                    .to_string(),
                "float",
            ),
            2 => (rng.pick(&["true", "false"]).to_string(), "bool"),
            3 => (
                rng.pick(&[
                    "1979-05-27T07:32:00Z",
                    "1979-05-27",
                    "07:32:00",
                    "1979-05-27T00:32:00.999999-07:00",
                ])
                .to_string(),
                "datetime",
            ),
            4 => {
                let s = chaos_string(rng);
                (toml_string(rng, &s), "string")
            }
            5 => (
                rng.pick(&["[]", "[1, \"a\"]", "[[1], [2]]", "[ { a = 1 } ]"])
                    .to_string(),
                "array",
            ),
            _ => (
                rng.pick(&["{}", "{ a = 1 }", "{ local = \"/srv/x\", link = \"x\" }"])
                    .to_string(),
                "table",
            ),
        };
        if kind == Kind::StrList && is == "array" {
            // A list is the right type: an empty one is refused where it is
            // written; one with other items than strings does not read.
            let class = if text == "[]" {
                Class::SemBad
            } else {
                Class::ParseBad
            };
            return Val::raw(&text, "", class);
        }
        let wrong = match kind {
            Kind::Str => is != "string",
            Kind::StrList => is != "string" && is != "array",
            Kind::Int => is != "int",
            Kind::Interval => is != "int" && is != "string",
            Kind::Bool => is != "bool",
            Kind::DirsArray => is != "array",
            Kind::DirItem => is != "table",
        };
        if wrong {
            return Val::raw(&text, "", Class::ParseBad);
        }
    }
}

/// A value for a known key: good, or broken in one of the ways `chaos`
/// (percent) allows.
fn gen_value(rng: &mut Rng, key: &str, i: usize, j: usize, chaos: usize) -> Val {
    if unpooled(key) {
        return table_value(rng, key, chaos);
    }
    let kind = kind_of(key);
    if rng.chance(chaos) {
        match rng.below(3) {
            0 => return wrong_type(rng, kind),
            1 => {
                // Invalid for this key, or random when there is no such value.
                match kind {
                    Kind::Int => {
                        if rng.chance(30) {
                            return Val::raw(rng.pick::<&str>(&HUGE_INTS), "", Class::ParseBad);
                        }
                        let t = *rng.pick(&BAD_INTS);
                        return Val::raw(t, t, Class::SemBad);
                    }
                    Kind::Interval if rng.chance(30) => {
                        let t = *rng.pick(&["0", "-5"]);
                        return Val::raw(t, t, Class::SemBad);
                    }
                    Kind::Bool => {}
                    _ => {
                        let pool = bad_pool(key);
                        if !pool.is_empty() {
                            let s = *rng.pick(pool);
                            return Val::string(rng, s, Class::SemBad);
                        }
                    }
                }
            }
            _ => {}
        }
        // Random value of the right type: its validity is unknown.
        match kind {
            Kind::Int => {
                let n = rng.next() as i64 >> rng.below(64);
                let t = n.to_string();
                return Val::raw(&t, &t, Class::Unknown);
            }
            Kind::Bool => {}
            _ => {
                let s = chaos_string(rng);
                return Val::string(rng, &s, Class::Unknown);
            }
        }
    }
    match kind {
        Kind::Int => {
            let (t, p) = *rng.pick(&GOOD_INTS);
            Val::raw(t, p, Class::Good)
        }
        Kind::Bool => {
            let t = *rng.pick(&["true", "false"]);
            Val::raw(t, t, Class::Good)
        }
        Kind::Interval if rng.chance(30) => {
            let t = *rng.pick(&["300", "1", "0x3c"]);
            let p = if t == "0x3c" { "60" } else { t };
            Val::raw(t, p, Class::Good)
        }
        _ => {
            let pool = good_pool(key, i, j);
            let s = rng.pick(&pool).clone();
            Val::string(rng, &s, Class::Good)
        }
    }
}

thread_local! {
    /// Whether the case being generated may write keys without a pool (a
    /// third of the cases: the others keep an exact expected outcome).
    static UNPOOLED: Cell<bool> = const { Cell::new(false) };
}

/// How likely (percent) a key without a pool is written, in this case.
fn unpooled_chance() -> usize {
    if UNPOOLED.with(Cell::get) {
        5
    } else {
        0
    }
}

/// Whether `key` is one this test has no value pool for.
fn unpooled(key: &str) -> bool {
    !POOLED.contains(&key) && SHARED_KEYS.contains(&key)
        || ["mode", "group", "allow_writable_parents"].contains(&key)
}

/// Whether the model writes a key without a pool anywhere.
fn writes_unpooled(m: &Model) -> bool {
    let in_table = |t: &Table| t.entries.iter().any(|(k, _)| unpooled(k));
    let in_dirs = |d: &Dirs| match d {
        Dirs::Items(items) => items
            .iter()
            .any(|i| matches!(i, DirItem::Table(t) if in_table(t))),
        _ => false,
    };
    let global = matches!(&m.global, Global::Table(t) if in_table(t));
    let services = match &m.services {
        Services::Items(items) => items.iter().any(|s| in_table(&s.table) || in_dirs(&s.dirs)),
        Services::NotArray(_) => false,
    };
    global || services
}

/// A value for a key without a pool: the wrong type (an error at that key,
/// whatever else the file holds), or the table's example, whose validity
/// depends on other keys.
fn table_value(rng: &mut Rng, key: &str, chaos: usize) -> Val {
    let entry = table_entry(key);
    let kind = match entry.kind {
        keys::Kind::Text => Some(Kind::Str),
        keys::Kind::Integer => Some(Kind::Int),
        keys::Kind::Boolean => Some(Kind::Bool),
        _ => None,
    };
    if let Some(kind) = kind.filter(|_| rng.chance(chaos)) {
        return wrong_type(rng, kind);
    }
    let plain = entry.example.trim_matches('"');
    Val::raw(entry.example, plain, Class::Unknown)
}

/// A random value of any type, for keys that do not exist.
fn any_value(rng: &mut Rng) -> Val {
    if rng.chance(15) {
        let n = rng.below(3);
        let sub: Vec<(String, String)> = (0..n)
            .map(|k| {
                (
                    format!("k{k}"),
                    rng.pick(&["1", "\"x\"", "true", "[]"]).to_string(),
                )
            })
            .collect();
        let inner: Vec<String> = sub.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        let text = if inner.is_empty() {
            "{}".to_string()
        } else {
            format!("{{ {} }}", inner.join(", "))
        };
        return Val {
            text,
            sub: Some(sub),
            class: Class::ParseBad,
            plain: String::new(),
        };
    }
    let mut v = if rng.chance(30) {
        let s = chaos_string(rng);
        Val::string(rng, &s, Class::ParseBad)
    } else {
        wrong_type(rng, Kind::Bool)
    };
    v.class = Class::ParseBad;
    v
}

/// A key name that `table` does not know (`global`, `service`, `dir`, `top`).
fn unknown_key(rng: &mut Rng, table: &str) -> String {
    let pool: &[&str] = match table {
        // Keys match in any letter case, and gitopper's service keys
        // (`machine`, `service`, `dirs`) are defaults in [global]: neither
        // is unknown.
        "global" => &[
            "foo",
            "upstreams",
            "machines",
            "name",
            "dir",
            "services",
            "ключ",
            "",
            "a b",
            "branch ",
        ],
        "service" => &[
            "foo",
            "Machines",
            "dir",
            "local",
            "metrics_dir",
            "service_name",
            "ключ",
            "",
            "x.y",
        ],
        "dir" => &["path", "ro", "keys", "machine", "Locale", "", "ü"],
        _ => &[
            "globals",
            "service",
            "Globals",
            "keys",
            "metrics_dir",
            "",
            "ключ",
        ],
    };
    rng.pick(pool).to_string()
}

fn gitopper_keys(rng: &mut Rng) -> Val {
    let text = *rng.pick(&[
        "[ { path = \"keys/ops.pub\", ro = true } ]",
        "[]",
        "\"anything\"",
        "[\n\t{ path = \"keys/a.pub\", ro = true },\n\t{ path = \"/local/b.pub\"},\n]",
    ]);
    Val::raw(text, "", Class::Good)
}

const UNITS: [(&str, &str, bool); 7] = [
    // (unit as written, unit as resolved, default name usable)
    ("u{i}", "u{i}.service", true),
    ("u{i}.socket", "u{i}.socket", true),
    ("u{i}.service", "u{i}.service", true),
    ("getty@tty{i}", "getty@tty{i}.service", true),
    ("x{i}.v2", "x{i}.v2.service", true),
    ("a\\x2db{i}", "a\\x2db{i}.service", false),
    ("-u{i}", "-u{i}.service", false),
];

fn gen_service(rng: &mut Rng, i: usize, chaos: usize, global_has_upstream: bool) -> Svc {
    let mut t = Table::default();
    let mut unit = None;
    // machine and service are required: left out now and then.
    if !rng.chance(chaos / 2) {
        let v = gen_value(rng, "machine", i, 0, chaos);
        t.entries.push(("machine".into(), v));
    }
    let mut needs_name = false;
    if !rng.chance(chaos / 2) {
        let v = if rng.chance(chaos) {
            match rng.below(3) {
                0 => wrong_type(rng, Kind::Str),
                1 => {
                    let long = "a".repeat(251);
                    let s = if rng.chance(20) {
                        long.as_str()
                    } else {
                        *rng.pick(bad_pool("service"))
                    };
                    Val::string(rng, s, Class::SemBad)
                }
                _ => {
                    let s = chaos_string(rng);
                    Val::string(rng, &s, Class::Unknown)
                }
            }
        } else {
            let (w, r, ok) = *rng.pick(&UNITS);
            let written = w.replace("{i}", &i.to_string());
            let resolved = r.replace("{i}", &i.to_string());
            let stem = written
                .strip_suffix(".service")
                .or_else(|| written.strip_suffix(".socket"))
                .unwrap_or(&written)
                .replace('@', "-");
            needs_name = !ok;
            unit = Some((resolved, ok.then_some(stem)));
            Val::string(rng, &written, Class::Good)
        };
        t.entries.push(("service".into(), v));
    }
    // An explicit name: always when the default one is unusable (unless
    // that is the damage chosen), otherwise sometimes.
    if (needs_name && !rng.chance(chaos)) || rng.chance(40) {
        let v = if rng.chance(chaos) && rng.chance(50) {
            let long = "z".repeat(65);
            let s = if rng.chance(20) {
                long.as_str()
            } else {
                *rng.pick(bad_pool("name"))
            };
            Val::string(rng, s, Class::SemBad)
        } else {
            gen_value(rng, "name", i, 0, chaos)
        };
        t.entries.push(("name".into(), v));
    }
    for &key in SHARED_KEYS.iter() {
        let required_here = key == "upstream" && !global_has_upstream;
        let often = if POOLED.contains(&key) {
            25
        } else {
            unpooled_chance()
        };
        if (required_here && !rng.chance(chaos / 2)) || rng.chance(often) {
            let v = gen_value(rng, key, i, 0, chaos);
            t.entries.push((key.into(), v));
        }
    }
    if rng.chance(10) {
        t.entries.push(("keys".into(), gitopper_keys(rng)));
    }
    if rng.chance(chaos) {
        let k = unknown_key(rng, "service");
        let v = any_value(rng);
        t.entries.push((k, v));
    }
    let dirs = if rng.chance(chaos / 3) {
        Dirs::Missing
    } else if rng.chance(chaos / 3) {
        Dirs::NotArray(wrong_type(rng, Kind::DirsArray))
    } else {
        let n = if rng.chance(chaos / 3) {
            0
        } else {
            1 + rng.below(3)
        };
        Dirs::Items((0..n).map(|j| gen_dir(rng, i, j, chaos)).collect())
    };
    shuffle(rng, &mut t.entries);
    Svc {
        table: t,
        dirs,
        unit,
    }
}

fn gen_dir(rng: &mut Rng, i: usize, j: usize, chaos: usize) -> DirItem {
    if rng.chance(chaos / 3) {
        return DirItem::NotTable(wrong_type(rng, Kind::DirItem));
    }
    let mut t = Table::default();
    for key in ["local", "link"] {
        if !rng.chance(chaos / 3) {
            let v = gen_value(rng, key, i, j, chaos);
            t.entries.push((key.into(), v));
        }
    }
    for key in ["file", "single", "readonly"] {
        if rng.chance(30) {
            let v = gen_value(rng, key, i, j, chaos);
            t.entries.push((key.into(), v));
        }
    }
    for key in ["mode", "group", "allow_writable_parents"] {
        if rng.chance(unpooled_chance()) {
            let v = gen_value(rng, key, i, j, chaos);
            t.entries.push((key.into(), v));
        }
    }
    if rng.chance(chaos / 2) {
        let k = unknown_key(rng, "dir");
        let v = any_value(rng);
        t.entries.push((k, v));
    }
    shuffle(rng, &mut t.entries);
    DirItem::Table(t)
}

fn shuffle<T>(rng: &mut Rng, xs: &mut [T]) {
    for k in (1..xs.len()).rev() {
        let other = rng.below(k + 1);
        xs.swap(k, other);
    }
}

fn gen_model(rng: &mut Rng) -> Model {
    let chaos = *rng.pick(&[0, 0, 3, 10, 30]);
    UNPOOLED.with(|u| u.set(rng.chance(30)));
    let mut top = Table::default();
    if rng.chance(chaos / 2) {
        let k = unknown_key(rng, "top");
        let v = any_value(rng);
        top.entries.push((k, v));
    }
    let global = if rng.chance(15) {
        Global::Absent
    } else if rng.chance(chaos / 5) {
        Global::NotTable(wrong_type(rng, Kind::DirItem))
    } else {
        let mut t = Table::default();
        for key in SHARED_KEYS.iter().chain(&["metrics_dir"]) {
            let p = match *key {
                "upstream" => 70,
                k if POOLED.contains(&k) || k == "metrics_dir" => 25,
                _ => unpooled_chance(),
            };
            if rng.chance(p) {
                let v = gen_value(rng, key, 0, 0, chaos);
                t.entries.push((key.to_string(), v));
            }
        }
        if rng.chance(20) {
            t.entries.push(("keys".into(), gitopper_keys(rng)));
        }
        if rng.chance(chaos / 2) {
            let k = unknown_key(rng, "global");
            let v = any_value(rng);
            t.entries.push((k, v));
        }
        shuffle(rng, &mut t.entries);
        Global::Table(t)
    };
    let global_has_upstream = match &global {
        Global::Table(t) => t.get("upstream").is_some(),
        _ => false,
    };
    let services = if rng.chance(chaos / 5) {
        Services::NotArray(wrong_type(rng, Kind::DirsArray))
    } else {
        let n = rng.below(5);
        Services::Items(
            (0..n)
                .map(|i| gen_service(rng, i, chaos, global_has_upstream))
                .collect(),
        )
    };
    let mut model = Model {
        top,
        global,
        services,
        garbage: None,
        conflict: None,
    };
    if rng.chance(chaos / 3) {
        // A key written twice in one table.
        let mut tables: Vec<&mut Table> = Vec::new();
        if let Global::Table(t) = &mut model.global {
            tables.push(t);
        }
        if let Services::Items(svcs) = &mut model.services {
            for s in svcs {
                tables.push(&mut s.table);
                if let Dirs::Items(items) = &mut s.dirs {
                    for d in items {
                        if let DirItem::Table(t) = d {
                            tables.push(t);
                        }
                    }
                }
            }
        }
        tables.retain(|t| !t.entries.is_empty());
        if !tables.is_empty() {
            let k = rng.below(tables.len());
            let t = &mut tables[k];
            t.dup = Some(rng.below(t.entries.len()));
        }
    }
    if rng.chance(chaos / 3) {
        model.garbage = Some(*rng.pick(&[
            "key =",
            "[unclosed",
            "\"unterminated",
            "x = 1 2",
            "x = \"a\" \"b\"",
            "= 1",
            "[[services]",
            "x = [1,",
            "x = \"\u{1}\"",
            "x = 'a\nb'",
            "[global]]",
        ]));
    }
    if chaos == 0 && rng.chance(40) {
        inject_conflict(rng, &mut model);
    }
    model
}

/// Makes a later service clash with an earlier one on the same machine:
/// same name, or a mount on the same or a nested path.
fn inject_conflict(rng: &mut Rng, model: &mut Model) {
    let Services::Items(svcs) = &mut model.services else {
        return;
    };
    if svcs.len() < 2 {
        return;
    }
    let b = 1 + rng.below(svcs.len() - 1);
    let a = rng.below(b);
    let Some(machine) = svcs[a].table.get("machine").map(|v| v.plain.clone()) else {
        return;
    };
    // Machines are compared without case.
    let machine = if rng.chance(50) {
        machine.to_uppercase()
    } else {
        machine
    };
    let set = |t: &mut Table, key: &str, v: Val| {
        t.entries.retain(|(k, _)| k != key);
        t.entries.push((key.to_string(), v));
    };
    let ctx = format!("services[{b}]");
    if rng.chance(50) {
        let name = match svcs[a].table.get("name") {
            Some(n) => n.plain.clone(),
            None => match &svcs[a].unit {
                Some((_, Some(stem))) => stem.clone(),
                _ => return,
            },
        };
        let v = Val::string(rng, &machine, Class::Good);
        set(&mut svcs[b].table, "machine", v);
        let v = Val::string(rng, &name, Class::Good);
        set(&mut svcs[b].table, "name", v);
        model.conflict = Some((ctx, "name".into()));
    } else {
        let Dirs::Items(items) = &svcs[a].dirs else {
            return;
        };
        let Some(DirItem::Table(first)) = items.first() else {
            return;
        };
        let Some(local) = first.get("local").map(|v| v.plain.clone()) else {
            return;
        };
        let local = match rng.below(3) {
            0 => local,
            1 => format!("{local}/sub"),
            _ => format!("{local}/ü/deeper"),
        };
        let Dirs::Items(items) = &mut svcs[b].dirs else {
            return;
        };
        let k = rng.below(items.len());
        let DirItem::Table(t) = &mut items[k] else {
            return;
        };
        let v = Val::string(rng, &local, Class::Good);
        set(t, "local", v);
        let v = Val::string(rng, &machine, Class::Good);
        set(&mut svcs[b].table, "machine", v);
        model.conflict = Some((ctx, format!("dirs[{k}].local")));
    }
}

// ---------------------------------------------------------------------------
// Writing the model as TOML, in one of several equivalent layouts.

struct Writer<'r> {
    rng: &'r mut Rng,
    out: String,
    nl: &'static str,
}

impl Writer<'_> {
    fn line(&mut self, s: &str) {
        self.out.push_str(s);
        if self.rng.chance(5) {
            self.out.push_str(" # trailing ü comment");
        }
        self.out.push_str(self.nl);
        if self.rng.chance(5) {
            self.out.push_str(self.nl);
        }
        if self.rng.chance(3) {
            self.out.push_str("# a comment [[services]] = \"x\"");
            self.out.push_str(self.nl);
        }
    }

    fn pair(&mut self, k: &str, v: &str) -> String {
        let key = toml_key(self.rng, k);
        let eq = *self.rng.pick(&[" = ", "=", "  =\t"]);
        format!("{key}{eq}{v}")
    }

    /// `{ k = v, ... }` on one line.
    fn inline(&mut self, t: &Table, extra: Option<String>) -> String {
        let mut parts = Vec::new();
        for (n, (k, v)) in t.entries.iter().enumerate() {
            parts.push(self.pair(k, &v.text));
            if t.dup == Some(n) {
                parts.push(self.pair(k, &v.text));
            }
        }
        parts.extend(extra);
        if parts.is_empty() {
            "{}".into()
        } else {
            format!("{{ {} }}", parts.join(", "))
        }
    }

    /// Key lines of a `[section]`; table values whose key is bare become
    /// `[prefix.key]` sub-sections, written after the keys.
    fn section_body(&mut self, t: &Table, prefix: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut subs = Vec::new();
        for (n, (k, v)) in t.entries.iter().enumerate() {
            let bare = !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if let (Some(sub), true, false) = (&v.sub, bare, t.dup == Some(n)) {
                if self.rng.chance(50) {
                    let header = if prefix.is_empty() {
                        format!("[{k}]")
                    } else {
                        format!("[{prefix}.{k}]")
                    };
                    subs.push((header, sub.clone()));
                    continue;
                }
            }
            let l = self.pair(k, &v.text);
            self.line(&l);
            if t.dup == Some(n) {
                let l = self.pair(k, &v.text);
                self.line(&l);
            }
        }
        subs
    }

    fn subsections(&mut self, subs: Vec<(String, Vec<(String, String)>)>) {
        for (header, body) in subs {
            self.line(&header);
            for (k, v) in body {
                let l = format!("{k} = {v}");
                self.line(&l);
            }
        }
    }

    fn dirs_inline(&mut self, items: &[DirItem]) -> String {
        let parts: Vec<String> = items
            .iter()
            .map(|d| match d {
                DirItem::NotTable(v) => v.text.clone(),
                DirItem::Table(t) => self.inline(t, None),
            })
            .collect();
        if parts.is_empty() {
            return "[]".into();
        }
        let sep = if self.rng.chance(50) {
            format!(",{}  ", self.nl)
        } else {
            ", ".to_string()
        };
        let open = if sep.contains('\n') {
            format!("[{}  ", self.nl)
        } else {
            "[ ".into()
        };
        let trailing = if self.rng.chance(30) { "," } else { "" };
        let close = if sep.contains('\n') {
            format!("{trailing}{}]", self.nl)
        } else {
            format!("{trailing} ]")
        };
        format!("{open}{}{close}", parts.join(&sep))
    }
}

fn render(rng: &mut Rng, m: &Model) -> String {
    let nl = if rng.chance(10) { "\r\n" } else { "\n" };
    let mut w = Writer {
        rng,
        out: String::new(),
        nl,
    };
    if w.rng.chance(30) {
        w.line("# provision config, generated");
    }
    let garbage_at = w.rng.below(3);
    // Top-level keys first: after a [section] header they would belong to it.
    let top = w.section_body(&m.top, "");
    let global_style = w.rng.below(3); // 0: [global], 1: dotted keys, 2: inline table
    match &m.global {
        Global::Absent => {}
        Global::NotTable(v) => {
            let l = w.pair("global", &v.text);
            w.line(&l);
        }
        Global::Table(t) if global_style == 1 && !t.entries.is_empty() => {
            for (n, (k, v)) in t.entries.iter().enumerate() {
                for _ in 0..if t.dup == Some(n) { 2 } else { 1 } {
                    let key = format!("global.{}", toml_key(w.rng, k));
                    let l = format!("{key} = {}", v.text);
                    w.line(&l);
                }
            }
        }
        Global::Table(t) if global_style == 2 => {
            let v = w.inline(t, None);
            let l = format!("global = {v}");
            w.line(&l);
        }
        Global::Table(_) => {}
    }
    let services_inline = w.rng.chance(25);
    match &m.services {
        Services::NotArray(v) => {
            let l = w.pair("services", &v.text);
            w.line(&l);
        }
        Services::Items(svcs) if services_inline => {
            let mut parts = Vec::new();
            for s in svcs {
                let extra = match &s.dirs {
                    Dirs::Missing => None,
                    Dirs::NotArray(v) => Some(format!("dirs = {}", v.text)),
                    Dirs::Items(items) => {
                        let d = w.dirs_inline(items).replace(['\r', '\n'], " ");
                        Some(format!("dirs = {d}"))
                    }
                };
                parts.push(w.inline(&s.table, extra));
            }
            let l = format!("services = [{nl}  {}{nl}]", parts.join(&format!(",{nl}  ")));
            w.line(&l);
        }
        Services::Items(_) => {}
    }
    let mut garbage = m.garbage;
    if garbage_at == 0 {
        if let Some(g) = garbage.take() {
            w.line(g);
        }
    }
    w.subsections(top);
    if let Global::Table(t) = &m.global {
        if global_style == 0 || (global_style == 1 && t.entries.is_empty()) {
            w.line("[global]");
            let subs = w.section_body(t, "global");
            if garbage_at == 1 {
                if let Some(g) = garbage.take() {
                    w.line(g);
                }
            }
            w.subsections(subs);
        }
    }
    if let Services::Items(svcs) = &m.services {
        if !services_inline {
            for s in svcs {
                w.line("[[services]]");
                let subs = w.section_body(&s.table, "services");
                let mut dir_tables = None;
                match &s.dirs {
                    Dirs::Missing => {}
                    Dirs::NotArray(v) => {
                        let l = w.pair("dirs", &v.text);
                        w.line(&l);
                    }
                    Dirs::Items(items) => {
                        let all_tables = items.iter().all(|d| matches!(d, DirItem::Table(_)));
                        if all_tables && !items.is_empty() && w.rng.chance(30) {
                            dir_tables = Some(items);
                        } else {
                            let d = w.dirs_inline(items);
                            let l = w.pair("dirs", &d);
                            w.line(&l);
                        }
                    }
                }
                w.subsections(subs);
                for d in dir_tables.into_iter().flatten() {
                    if let DirItem::Table(t) = d {
                        w.line("[[services.dirs]]");
                        let subs = w.section_body(t, "services.dirs");
                        w.subsections(subs);
                    }
                }
            }
        }
    }
    // Last, or here when the place chosen above was not written.
    if let Some(g) = garbage {
        w.line(g);
    }
    w.out
}

// ---------------------------------------------------------------------------
// What the model implies for the parse result.

#[derive(Debug, Default)]
struct ExpectedService {
    name: Option<String>,
    unit: Option<String>,
    machine: Option<String>,
    branch: Option<String>,
    action: Option<Option<String>>,
    depth: Option<u32>,
    dirs: Vec<ExpectedDir>,
}

/// One dir as written; `None` fields are unknown.
#[derive(Debug)]
struct ExpectedDir {
    local: Option<String>,
    link: Option<String>,
    file: Option<bool>,
    readonly: bool,
}

#[derive(Debug, Default)]
struct Expected {
    syntax: bool,
    /// (context, key) pairs each rejection must name.
    errors: Vec<(String, String)>,
    /// Random values were written: the outcome is not known in advance.
    maybe: bool,
    /// A key without a pool was written (its validity depends on other
    /// keys): only the general checks hold, no exact outcome.
    loose: bool,
    services: Vec<ExpectedService>,
    warnings: usize,
    metrics_dir: Option<Option<String>>,
}

fn expect(m: &Model) -> Expected {
    let mut e = Expected {
        syntax: m.garbage.is_some(),
        loose: writes_unpooled(m),
        ..Expected::default()
    };
    let has_dup = |t: &Table| t.dup.is_some();
    for (k, _) in &m.top.entries {
        e.errors.push(("top level".into(), k.clone()));
    }
    let empty = Table::default();
    let global = match &m.global {
        Global::Absent => &empty,
        Global::NotTable(_) => {
            e.errors.push(("[global]".into(), "global".into()));
            &empty
        }
        Global::Table(t) => {
            e.syntax |= has_dup(t);
            for (k, v) in &t.entries {
                if k == "keys" {
                    e.warnings += 1;
                } else if SHARED_KEYS.contains(&k.as_str()) {
                    // Checked where used; only type errors are found here.
                    if v.class == Class::ParseBad {
                        e.errors.push(("[global]".into(), k.clone()));
                    }
                } else if k == "metrics_dir" {
                    note(&mut e, v, "[global]", k);
                } else {
                    e.errors.push(("[global]".into(), k.clone()));
                }
            }
            e.metrics_dir = Some(
                t.get("metrics_dir")
                    .filter(|v| v.class == Class::Good)
                    .map(|v| v.plain.clone()),
            );
            t
        }
    };
    let svcs = match &m.services {
        Services::NotArray(_) => {
            e.errors.push(("top level".into(), "services".into()));
            &[][..]
        }
        Services::Items(s) => &s[..],
    };
    // A [global] value every service overrides is never looked at; whether
    // that should be an error is a policy question this test leaves open.
    let mut global_inherited = vec![false; SHARED_KEYS.len()];
    for (i, s) in svcs.iter().enumerate() {
        let ctx = format!("services[{i}]");
        let t = &s.table;
        e.syntax |= has_dup(t);
        let mut x = ExpectedService::default();
        for (k, v) in &t.entries {
            if k == "keys" {
                e.warnings += 1;
            } else if SERVICE_KEYS.contains(&k.as_str()) || SHARED_KEYS.contains(&k.as_str()) {
                if SERVICE_KEYS.contains(&k.as_str()) || v.class == Class::ParseBad {
                    note(&mut e, v, &ctx, k);
                }
            } else {
                e.errors.push((ctx.clone(), k.clone()));
            }
        }
        for key in ["machine", "service"] {
            if t.get(key).is_none() {
                e.errors.push((ctx.clone(), key.into()));
            }
        }
        x.machine = t
            .get("machine")
            .filter(|v| v.class == Class::Good)
            .map(|v| v.plain.to_ascii_lowercase());
        x.unit = s.unit.as_ref().map(|(u, _)| u.clone());
        let name = t.get("name").filter(|v| v.class != Class::ParseBad);
        x.name = match (name, &s.unit, t.get("service").map(|v| v.class)) {
            (Some(n), _, _) => (n.class == Class::Good).then(|| n.plain.clone()),
            (None, Some((_, Some(stem))), _) => Some(stem.clone()),
            (None, Some((_, None)), _) => {
                e.errors.push((ctx.clone(), "name".into()));
                None
            }
            (None, None, Some(Class::Unknown)) => {
                e.maybe = true;
                None
            }
            (None, None, _) => None,
        };
        for (n, key) in SHARED_KEYS.iter().enumerate() {
            let own = t.get(key).filter(|v| v.class != Class::ParseBad);
            let inherited = global.get(key).filter(|v| v.class != Class::ParseBad);
            if own.is_none() && inherited.is_some() {
                global_inherited[n] = true;
            }
            match (own, inherited) {
                (Some(v), _) => note(&mut e, v, &ctx, key),
                // A value written in [global] is reported there.
                (None, Some(v)) => note(&mut e, v, "[global]", key),
                (None, None) if *key == "upstream" => {
                    e.errors.push((ctx.clone(), "upstream".into()))
                }
                (None, None) => {}
            }
            let good = own.or(inherited).filter(|v| v.class == Class::Good);
            match *key {
                "branch" => {
                    x.branch = match own.or(inherited) {
                        None => Some("main".into()),
                        Some(_) => good.map(|v| v.plain.clone()),
                    }
                }
                "action" => {
                    x.action = match own.or(inherited) {
                        None => Some(None),
                        Some(_) => good.map(|v| Some(v.plain.clone()).filter(|a| !a.is_empty())),
                    }
                }
                "depth" => {
                    x.depth = match own.or(inherited) {
                        None => Some(DEFAULT_DEPTH),
                        Some(_) => good.map(|v| v.plain.parse().expect("good depth")),
                    }
                }
                _ => {}
            }
        }
        match &s.dirs {
            Dirs::Missing | Dirs::NotArray(_) => e.errors.push((ctx.clone(), "dirs".into())),
            Dirs::Items(items) if items.is_empty() => e.errors.push((ctx.clone(), "dirs".into())),
            Dirs::Items(items) => {
                for (j, d) in items.iter().enumerate() {
                    let t = match d {
                        DirItem::NotTable(_) => {
                            e.errors.push((ctx.clone(), format!("dirs[{j}]")));
                            continue;
                        }
                        DirItem::Table(t) => t,
                    };
                    e.syntax |= has_dup(t);
                    // `file` and `single` are one setting; when both are
                    // written and disagree, which wins is not a promise.
                    let mut file = Some(false);
                    let mut seen_file = None;
                    for (k, v) in &t.entries {
                        let full = format!("dirs[{j}].{k}");
                        if DIR_KEYS.contains(&k.as_str()) {
                            note(&mut e, v, &ctx, &full);
                            if (k == "file" || k == "single") && v.class == Class::Good {
                                let this = v.plain == "true";
                                file = match seen_file {
                                    Some(prev) if prev != this => None,
                                    _ => Some(this),
                                };
                                seen_file = Some(this);
                            }
                        } else {
                            e.errors.push((ctx.clone(), full));
                        }
                    }
                    for key in ["local", "link"] {
                        if t.get(key).is_none() {
                            e.errors.push((ctx.clone(), format!("dirs[{j}].{key}")));
                        }
                    }
                    let good = |k: &str| {
                        t.get(k)
                            .filter(|v| v.class == Class::Good)
                            .map(|v| v.plain.clone())
                    };
                    let readonly = good("readonly").is_none_or(|r| r == "true");
                    x.dirs.push(ExpectedDir {
                        local: good("local"),
                        link: good("link"),
                        file,
                        readonly,
                    });
                }
            }
        }
        e.services.push(x);
    }
    if let Global::Table(t) = &m.global {
        for (n, key) in SHARED_KEYS.iter().enumerate() {
            if let Some(v) = t.get(key) {
                if v.class == Class::SemBad && !global_inherited[n] {
                    e.maybe = true;
                }
            }
        }
    }
    if let Some(c) = &m.conflict {
        e.errors.push(c.clone());
    }
    e
}

/// Records what a value written for `key` in `ctx` implies.
fn note(e: &mut Expected, v: &Val, ctx: &str, key: &str) {
    match v.class {
        Class::Good => {}
        Class::ParseBad | Class::SemBad => e.errors.push((ctx.to_string(), key.to_string())),
        Class::Unknown => e.maybe = true,
    }
}

/// Diagnostics as `provision check` shows them, one line each, cut short.
fn show(diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diags {
        let line: String = d.to_string().chars().take(300).collect();
        let _ = write!(out, "\n    {line:?}");
    }
    out
}

fn context_is(d: &Diagnostic, ctx: &str) -> bool {
    d.context == ctx || d.context.starts_with(&format!("{ctx} ("))
}

/// Compares a result with what the model implies; `Err` says how it differs.
fn check_expected(e: &Expected, outcome: &Outcome) -> Result<(), String> {
    if e.loose && !e.syntax {
        return Ok(());
    }
    match outcome {
        Outcome::Rejected(diags) if e.syntax => {
            if diags.len() == 1 && diags[0].context == "TOML syntax" {
                Ok(())
            } else {
                Err(format!(
                    "broken TOML should give one syntax error, got {diags:#?}"
                ))
            }
        }
        Outcome::Accepted(_) if e.syntax => Err("broken TOML was accepted".into()),
        Outcome::Rejected(diags) => {
            for (ctx, key) in &e.errors {
                if !diags.iter().any(|d| context_is(d, ctx) && d.key == *key) {
                    return Err(format!(
                        "no diagnostic names key `{key}` in {ctx}; expected all of {:?}; got:{}",
                        e.errors,
                        show(diags)
                    ));
                }
            }
            if e.errors.is_empty() && !e.maybe {
                return Err(format!("a valid config was rejected:{}", show(diags)));
            }
            Ok(())
        }
        Outcome::Accepted(c) => {
            if !e.errors.is_empty() {
                return Err(format!("accepted although {:?} are invalid", e.errors));
            }
            if c.services.len() != e.services.len() {
                return Err(format!(
                    "accepted {} services of {}",
                    c.services.len(),
                    e.services.len()
                ));
            }
            if c.warnings.len() != e.warnings {
                return Err(format!(
                    "{} warnings for {} `keys` tables: {:?}",
                    c.warnings.len(),
                    e.warnings,
                    c.warnings
                ));
            }
            if let Some(Some(m)) = &e.metrics_dir {
                if c.metrics_dir.as_deref() != Some(Path::new(m)) {
                    return Err(format!("metrics_dir {:?}, written {m:?}", c.metrics_dir));
                }
            }
            for (got, want) in c.services.iter().zip(&e.services) {
                let differs = |what: &str, g: &dyn std::fmt::Debug, w: &dyn std::fmt::Debug| {
                    Err(format!(
                        "service {:?}: {what} is {g:?}, written {w:?}",
                        got.name
                    ))
                };
                if let Some(n) = &want.name {
                    if &got.name != n {
                        return differs("name", &got.name, n);
                    }
                }
                if let Some(u) = &want.unit {
                    if &got.unit != u {
                        return differs("unit", &got.unit, u);
                    }
                }
                if let Some(m) = &want.machine {
                    if &got.machine != m {
                        return differs("machine", &got.machine, m);
                    }
                }
                if let Some(b) = &want.branch {
                    if &got.branch != b {
                        return differs("branch", &got.branch, b);
                    }
                }
                if let Some(a) = &want.action {
                    let g = got.action.map(|a| a.as_str().to_string());
                    if &g != a {
                        return differs("action", &g, a);
                    }
                }
                if let Some(d) = want.depth {
                    if got.depth != d {
                        return differs("depth", &got.depth, &d);
                    }
                }
                if got.dirs.len() != want.dirs.len() {
                    return differs("dirs count", &got.dirs.len(), &want.dirs.len());
                }
                for (g, w) in got.dirs.iter().zip(&want.dirs) {
                    if w.local.as_ref().is_some_and(|l| g.local != Path::new(l))
                        || w.link.as_ref().is_some_and(|l| &g.link != l)
                        || w.file.is_some_and(|f| g.file != f)
                        || g.readonly != w.readonly
                    {
                        return differs("a dir", g, w);
                    }
                }
            }
            Ok(())
        }
    }
}

const PATHS: [&str; 5] = [
    "/etc/provision/config.toml",
    "config.toml",
    "/tmp/ü/conf ig.toml",
    "relative/../x.toml",
    "",
];

#[test]
fn generated_configs_never_panic_and_name_each_broken_key() {
    let iters = env_u64("PROVISION_FUZZ_ITERS", DEFAULT_ITERS);
    let seed = env_u64("PROVISION_FUZZ_SEED", DEFAULT_SEED);
    println!("structure-aware: {iters} cases, PROVISION_FUZZ_SEED={seed:#x}");
    let mut tally = Tally {
        accepted: 0,
        rejected: 0,
    };
    let mut failures = Failures::default();
    let mut syntax = 0u64;
    let mut clean = 0u64;
    for case in cases(iters) {
        let mut rng = Rng::for_case(seed, case);
        let model = gen_model(&mut rng);
        let text = render(&mut rng, &model);
        let path = Path::new(rng.pick(&PATHS));
        if replaying() {
            println!("case {case}, path {path:?}:\n{text}\n{model:#?}");
        }
        let outcome = match check_general(path, &text) {
            Ok(o) => o,
            Err(why) => {
                failures.add("structure-aware", case, path, &text, &why, true);
                continue;
            }
        };
        let e = expect(&model);
        if let Err(why) = check_expected(&e, &outcome) {
            failures.add("structure-aware", case, path, &text, &why, false);
        }
        syntax += u64::from(e.syntax);
        clean += u64::from(e.errors.is_empty() && !e.maybe && !e.syntax);
        match outcome {
            Outcome::Accepted(_) => tally.accepted += 1,
            Outcome::Rejected(_) => tally.rejected += 1,
        }
    }
    println!(
        "structure-aware: {} accepted, {} rejected ({syntax} with broken TOML, {clean} clean by construction)",
        tally.accepted, tally.rejected
    );
    failures.finish(seed);
    assert!(
        tally.accepted > 0 && tally.rejected > 0,
        "the generator must produce both valid and invalid configs"
    );
}

// ---------------------------------------------------------------------------
// The mutation generator.

const TOKENS: &[&str] = &[
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ",",
    ".",
    "#",
    "\n",
    "\r\n",
    "\0",
    "\\",
    "\\u",
    "\\U0010FFFF",
    "[[services]]\n",
    "[global]\n",
    "[[services.dirs]]\n",
    "..",
    "/",
    "-1",
    "0",
    "99999999999999999999",
    "true",
    "[]",
    "{}",
    "inf",
    "nan",
    "1979-05-27",
    "\u{feff}",
    "ü",
    "😀",
    "machine = \"x\"\n",
    "dirs = []\n",
    "name = \"app\"\n",
    "local = \"/srv/app\"\n",
    "upstream = ",
    "= \"",
    "\t",
    " ",
    "@",
    ":",
    "0x",
    "_",
];

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let line_bounds = |d: &[u8]| -> Vec<usize> {
        let mut b = vec![0];
        b.extend(
            d.iter()
                .enumerate()
                .filter(|(_, c)| **c == b'\n')
                .map(|(i, _)| i + 1),
        );
        if *b.last().unwrap_or(&0) != d.len() {
            b.push(d.len());
        }
        b
    };
    let len = data.len();
    match rng.below(11) {
        0 if len > 0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            data[at] = *rng.pick(b"\"'[]{}=\n\0#.,\\ \r\t\xff\xc3/-_@");
        }
        2 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.chance(50) {
                        *rng.pick(b"\"'[]{}=\n\0#.,\\")
                    } else {
                        rng.next() as u8
                    }
                })
                .collect();
            data.splice(at..at, bytes);
        }
        3 | 4 => {
            let at = rng.below(len + 1);
            let t = rng.pick(TOKENS).as_bytes().to_vec();
            data.splice(at..at, t);
        }
        5 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        6 | 7 => {
            // Duplicate, delete or swap whole lines.
            let b = line_bounds(data);
            if b.len() < 2 {
                return;
            }
            let l = rng.below(b.len() - 1);
            let line = data[b[l]..b[l + 1]].to_vec();
            match rng.below(3) {
                0 => {
                    data.splice(b[l]..b[l], line);
                }
                1 => {
                    data.drain(b[l]..b[l + 1]);
                }
                _ => {
                    let k = rng.below(b.len() - 1);
                    let other = data[b[k]..b[k + 1]].to_vec();
                    let (lo, hi) = if l < k { (l, k) } else { (k, l) };
                    if lo == hi {
                        return;
                    }
                    let (first, second) = if l < k { (line, other) } else { (other, line) };
                    let mut out = data[..b[lo]].to_vec();
                    out.extend_from_slice(&second);
                    out.extend_from_slice(&data[b[lo + 1]..b[hi]]);
                    out.extend_from_slice(&first);
                    out.extend_from_slice(&data[b[hi + 1]..]);
                    *data = out;
                }
            }
        }
        8 => {
            // Splice: the start of this file and the end of another.
            let other = rng.pick(seeds);
            let (cut_a, cut_b) = if rng.chance(50) {
                let a = line_bounds(data);
                let b = line_bounds(other);
                (*rng.pick(&a), *rng.pick(&b))
            } else {
                (rng.below(len + 1), rng.below(other.len() + 1))
            };
            data.truncate(cut_a);
            data.extend_from_slice(&other[cut_b..]);
        }
        9 => {
            // Replace the contents of a quoted value.
            let quotes: Vec<usize> = data
                .iter()
                .enumerate()
                .filter(|(_, c)| **c == b'"')
                .map(|(i, _)| i)
                .collect();
            if quotes.len() < 2 {
                return;
            }
            let q = rng.below(quotes.len() - 1);
            let (start, end) = (quotes[q] + 1, quotes[q + 1]);
            let s = chaos_string(rng);
            let mut text = basic_string(rng, &s);
            if rng.chance(20) {
                text = s;
            }
            data.splice(start..end, text.into_bytes());
        }
        _ => {
            // Replace a number or bare word after `=` with another type.
            let b = line_bounds(data);
            if b.len() < 2 {
                return;
            }
            let l = rng.below(b.len() - 1);
            if let Some(eq) = data[b[l]..b[l + 1].min(data.len())]
                .iter()
                .position(|c| *c == b'=')
            {
                let start = b[l] + eq + 1;
                let end = b[l + 1].min(data.len());
                let v = *rng.pick(&[
                    " 0",
                    " -1",
                    " 4294967296",
                    " 9223372036854775808",
                    " true",
                    " 1.5",
                    " []",
                    " {}",
                    " [{}]",
                    " \"\"",
                    " \"..\"",
                    " \"/\"",
                    " 1979-05-27T07:32:00Z",
                ]);
                data.splice(
                    start..end.max(start),
                    v.bytes().chain(std::iter::once(b'\n')),
                );
            }
        }
    }
}

/// The valid files mutants start from: the documented example, and those
/// in fuzz/seeds (a gitopper config, one using every key), which libFuzzer
/// in `make fuzz` starts from too.
fn seed_files() -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("examples/config.toml")];
    let dir = root.join("fuzz/seeds");
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut more: Vec<_> = entries
        .map(|e| e.expect("listing fuzz/seeds").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    more.sort();
    assert!(!more.is_empty(), "no seeds in {}", dir.display());
    files.extend(more);
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

#[test]
fn mutated_seed_configs_never_panic_and_every_rejection_is_located() {
    let iters = env_u64("PROVISION_FUZZ_ITERS", DEFAULT_ITERS);
    let seed = env_u64("PROVISION_FUZZ_SEED", DEFAULT_SEED);
    println!("mutation: {iters} cases, PROVISION_FUZZ_SEED={seed:#x}");
    let seeds = seed_files();
    // Mutants of valid files: a seed that is itself rejected would make
    // every rejection below meaningless.
    for (file, s) in &seeds {
        match Config::parse(file, &String::from_utf8_lossy(s)) {
            Ok(c) => assert!(!c.services.is_empty(), "{} has no services", file.display()),
            Err(e) => panic!("seed {} is not a valid config:\n{e}", file.display()),
        }
    }
    let seeds: Vec<Vec<u8>> = seeds.into_iter().map(|(_, s)| s).collect();
    let mut tally = Tally {
        accepted: 0,
        rejected: 0,
    };
    let mut failures = Failures::default();
    for case in cases(iters) {
        let mut rng = Rng::for_case(seed, case);
        let mut data = rng.pick(&seeds).clone();
        let rounds = 1 + (rng.next().trailing_zeros() as usize).min(5);
        for _ in 0..rounds {
            mutate(&mut rng, &mut data, &seeds);
        }
        let text = String::from_utf8_lossy(&data).into_owned();
        let path = Path::new(rng.pick(&PATHS));
        if replaying() {
            println!("case {case}, path {path:?}:\n{text}");
        }
        match check_general(path, &text) {
            Ok(Outcome::Accepted(_)) => tally.accepted += 1,
            Ok(Outcome::Rejected(_)) => tally.rejected += 1,
            Err(why) => failures.add("mutation", case, path, &text, &why, true),
        }
    }
    println!(
        "mutation: {} accepted, {} rejected",
        tally.accepted, tally.rejected
    );
    failures.finish(seed);
    assert!(
        tally.accepted > 0 && tally.rejected > 0,
        "mutants must include both valid and invalid configs"
    );
}

// ---------------------------------------------------------------------------
// Cases the generators found, kept as plain examples.

const ONE_SERVICE: &str =
    "[[services]]\nmachine = \"m1\"\nservice = \"app\"\nupstream = \"git://127.0.0.1/r.git\"\n";

#[test]
fn a_nul_character_in_branch_is_reported_not_a_panic() {
    let text = format!(
        "{ONE_SERVICE}branch = \"a\\u0000b\"\ndirs = [{{ local = \"/srv/app\", link = \"app\" }}]\n"
    );
    let path = Path::new("/etc/provision/config.toml");
    let result = guarded(|| Config::parse(path, &text))
        .unwrap_or_else(|p| panic!("Config::parse panicked: {p}"));
    let errors = result.expect_err("a NUL character cannot be part of a branch name");
    assert!(
        errors.0.iter().any(|d| d.key == "branch" && d.line == 5),
        "no diagnostic for `branch` on line 5:\n{errors}"
    );
}

#[test]
fn dir_entries_keep_their_index_in_messages_after_an_entry_that_is_not_a_table() {
    let text =
        format!("{ONE_SERVICE}dirs = [\"oops\", {{ local = \"relative\", link = \"app\" }}]\n");
    let errors = Config::parse(Path::new("config.toml"), &text).expect_err("two bad entries");
    let keys: Vec<&str> = errors.0.iter().map(|d| d.key.as_str()).collect();
    assert!(
        keys.contains(&"dirs[0]") && keys.contains(&"dirs[1].local"),
        "the second entry's `local` must be named dirs[1].local:\n{errors}"
    );
}
