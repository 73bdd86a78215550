//! Walks the spanned TOML tree into raw, still unvalidated settings, keeping
//! the source position of every value so later checks can point at it.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub(super) use super::keys::RawSettings;
use super::keys::{self, Scope};
use super::Diagnostic;

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(super) struct Sp<T> {
    pub value: T,
    pub span: Range<usize>,
}

/// One `[[services]]` table.
#[derive(Debug, Clone, Default)]
pub(super) struct RawService {
    /// `services[N] (name)`, for messages.
    pub context: String,
    /// The table itself, for errors about missing keys.
    pub span: Range<usize>,
    pub machine: Option<Sp<String>>,
    /// Further machines when `machine` is a list (the first is `machine`):
    /// the service is the same on each.
    pub more_machines: Vec<Sp<String>>,
    pub service: Option<Sp<String>>,
    pub name: Option<Sp<String>>,
    pub dirs: Option<Sp<Vec<RawDir>>>,
    pub settings: RawSettings,
}

/// One entry of `dirs`.
#[derive(Debug, Clone, Default)]
pub(super) struct RawDir {
    /// Position in the `dirs` array as written, for messages.
    pub index: usize,
    pub span: Range<usize>,
    pub local: Option<Sp<String>>,
    pub link: Option<Sp<String>>,
    pub file: Option<Sp<bool>>,
    pub readonly: Option<Sp<bool>>,
    pub mode: Option<Sp<String>>,
    pub group: Option<Sp<String>>,
    pub allow_writable_parents: Option<Sp<bool>>,
}

/// The result of walking a file: raw values plus everything wrong so far.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub global: RawSettings,
    /// Where `[global]` is in the file: a value from there is reported
    /// under `[global]`, whichever service it was used for.
    pub global_span: Option<Range<usize>>,
    /// gitopper's service keys written in `[global]` (`machine`, `service`,
    /// `dirs`): defaults for every service that does not set them.
    pub global_service: RawService,
    /// `[global] metrics_dir`: global only, it names one file for the machine.
    pub metrics_dir: Option<Sp<String>>,
    pub services: Vec<RawService>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

/// Turns byte offsets into line/column diagnostics for one file.
pub(super) struct Locator<'a> {
    file: PathBuf,
    text: &'a str,
}

impl<'a> Locator<'a> {
    pub fn new(file: &Path, text: &'a str) -> Self {
        Locator {
            file: file.to_path_buf(),
            text,
        }
    }

    /// A diagnostic at `span` (`None`: no position, e.g. a missing key).
    pub fn diag(
        &self,
        span: Option<&Range<usize>>,
        context: &str,
        key: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = span.map_or((0, 0), |s| self.line_col(s.start));
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            context: context.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }
}

const GLOBAL: &str = "[global]";
/// Walks `text` (read from `file`) into raw settings and diagnostics.
pub(super) fn parse(loc: &Locator<'_>, text: &str) -> Parsed {
    let mut out = Parsed::default();
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let msg = e.message().trim().to_string();
            out.errors
                .push(loc.diag(e.span().as_ref(), "TOML syntax", "", msg));
            return out;
        }
    };
    let mut w = Walker { loc, out: &mut out };
    for (key, value) in root.get_ref().iter() {
        // Keys match in any letter case, as gitopper's TOML decoder does.
        match key.get_ref().to_ascii_lowercase().as_str() {
            "global" => w.global(value),
            "services" => w.services(value),
            _ => w.unknown(
                key.span(),
                "top level",
                key.get_ref().as_ref(),
                &["global", "services"],
            ),
        }
    }
    out
}

/// Reads the TOML tree of one file, collecting diagnostics.
pub(super) struct Walker<'a, 'b> {
    loc: &'a Locator<'a>,
    out: &'b mut Parsed,
}

/// A TOML value with where it was written.
pub(super) type Value<'i> = Spanned<DeValue<'i>>;

impl Walker<'_, '_> {
    fn error(&mut self, span: &Range<usize>, context: &str, key: &str, msg: impl Into<String>) {
        let d = self.loc.diag(Some(span), context, key, msg);
        self.out.errors.push(d);
    }

    /// An unknown key at top level, where only two are known.
    fn unknown(&mut self, span: Range<usize>, context: &str, key: &str, allowed: &[&str]) {
        let msg = format!("unknown key; expected one of: {}", allowed.join(", "));
        self.error(&span, context, key, msg);
    }

    /// An unknown key where the keys of `scopes` belong: names the one it
    /// most likely meant, if any.
    fn unknown_key(&mut self, span: Range<usize>, context: &str, key: &str, scopes: &[Scope]) {
        let msg = match keys::nearest(key.rsplit('.').next().unwrap_or(key), scopes) {
            Some(near) => format!("unknown key; did you mean `{near}`?"),
            None => "unknown key (the configuration reference lists every key)".to_string(),
        };
        self.error(&span, context, key, msg);
    }

    fn global(&mut self, value: &Value<'_>) {
        let Some(table) = self.table(value, GLOBAL, "global") else {
            return;
        };
        // A `[global]` header's own span may cover the header only: take
        // every value written in the table.
        let spans = table.iter().map(|(_, v)| v.span());
        self.out.global_span = spans.reduce(|a, b| a.start.min(b.start)..a.end.max(b.end));
        let mut settings = RawSettings::default();
        let mut defaults = RawService::default();
        for (key, v) in table.iter() {
            let name = &key.get_ref().to_ascii_lowercase();
            let name = name.as_str();
            match name {
                "metrics_dir" => {
                    self.out.metrics_dir = self.string(v, GLOBAL, name);
                    continue;
                }
                // gitopper's [global] is a whole service: its `machine`,
                // `service` and `dirs` are defaults too.
                "machine" => {
                    (defaults.machine, defaults.more_machines) = self.machines(v, GLOBAL);
                    continue;
                }
                "service" => {
                    defaults.service = self.string(v, GLOBAL, name);
                    continue;
                }
                "dirs" => {
                    defaults.dirs = self.dirs(v, GLOBAL);
                    continue;
                }
                _ => {}
            }
            if keys::is(name, Scope::Service) {
                let msg = format!("`{name}` names one service: it belongs in a [[services]] table, not in [global]");
                self.error(&key.span(), GLOBAL, key.get_ref().as_ref(), msg);
            } else if !self.shared_key(&mut settings, GLOBAL, name, v) {
                self.unknown_key(
                    key.span(),
                    GLOBAL,
                    key.get_ref().as_ref(),
                    &[Scope::Shared, Scope::Global, Scope::Ignored],
                );
            }
        }
        self.out.global = settings;
        self.out.global_service = defaults;
    }

    fn services(&mut self, value: &Value<'_>) {
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                &value.span(),
                "top level",
                "services",
                "must be an array of tables: write [[services]]",
            );
            return;
        };
        for (index, item) in items.iter().enumerate() {
            let context = service_context(index, item.get_ref());
            if let Some(table) = self.table(item, &context, "services") {
                let svc = self.service(context, item.span(), table);
                self.out.services.push(svc);
            }
        }
    }

    fn service(&mut self, context: String, span: Range<usize>, table: &DeTable<'_>) -> RawService {
        let mut svc = RawService {
            context,
            span,
            ..RawService::default()
        };
        let ctx = svc.context.clone();
        for (key, v) in table.iter() {
            let name = &key.get_ref().to_ascii_lowercase();
            let name = name.as_str();
            match name {
                "machine" => (svc.machine, svc.more_machines) = self.machines(v, &ctx),
                "service" => svc.service = self.string(v, &ctx, name),
                "name" => svc.name = self.string(v, &ctx, name),
                "dirs" => svc.dirs = self.dirs(v, &ctx),
                _ if keys::is(name, Scope::Global) => {
                    let msg = format!("`{name}` is a machine-wide setting: it belongs in [global]");
                    self.error(&key.span(), &ctx, name, msg);
                }
                _ => {
                    if !self.shared_key(&mut svc.settings, &ctx, name, v) {
                        self.unknown_key(
                            key.span(),
                            &ctx,
                            key.get_ref().as_ref(),
                            &[Scope::Service, Scope::Shared, Scope::Ignored],
                        );
                    }
                }
            }
        }
        svc
    }

    /// Parses a key valid in both `[global]` and a service (see
    /// [`keys`]); false if unknown.
    fn shared_key(&mut self, s: &mut RawSettings, ctx: &str, key: &str, v: &Value<'_>) -> bool {
        if keys::is(key, Scope::Ignored) {
            let msg = "accepted for gitopper compatibility and ignored: provision has no remote API to authorize";
            let d = self.loc.diag(Some(&v.span()), ctx, key, msg);
            self.out.warnings.push(d);
            return true;
        }
        s.read(self, ctx, key, v)
    }

    fn dirs(&mut self, value: &Value<'_>, ctx: &str) -> Option<Sp<Vec<RawDir>>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                &value.span(),
                ctx,
                "dirs",
                "must be an array of tables like { local = \"/etc/x\", link = \"x/etc\" }",
            );
            return None;
        };
        let mut dirs = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("dirs[{i}]");
            if let Some(table) = self.table(item, ctx, &key) {
                dirs.push(self.dir(i, item.span(), table, ctx, &key));
            }
        }
        Some(Sp {
            value: dirs,
            span: value.span(),
        })
    }

    fn dir(
        &mut self,
        index: usize,
        span: Range<usize>,
        table: &DeTable<'_>,
        ctx: &str,
        prefix: &str,
    ) -> RawDir {
        let mut dir = RawDir {
            index,
            span,
            ..RawDir::default()
        };
        for (key, v) in table.iter() {
            let name = &key.get_ref().to_ascii_lowercase();
            let name = name.as_str();
            let full = format!("{prefix}.{name}");
            match name {
                "local" => dir.local = self.string(v, ctx, &full),
                "link" => dir.link = self.string(v, ctx, &full),
                // gitopper calls a single-file mount `single`.
                "file" | "single" => dir.file = self.boolean(v, ctx, &full).or(dir.file.take()),
                "readonly" => dir.readonly = self.boolean(v, ctx, &full),
                // An octal string ("0640"): TOML integers have no octal
                // reading a reader would expect of a file mode.
                "mode" => dir.mode = self.string(v, ctx, &full),
                "group" => dir.group = self.string(v, ctx, &full),
                "allow_writable_parents" => {
                    dir.allow_writable_parents = self.boolean(v, ctx, &full)
                }
                _ => {
                    let written = format!("{prefix}.{}", key.get_ref().as_ref());
                    self.unknown_key(key.span(), ctx, &written, &[Scope::Dir])
                }
            }
        }
        dir
    }

    fn table<'v, 'i>(&mut self, v: &'v Value<'i>, ctx: &str, key: &str) -> Option<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    &v.span(),
                    ctx,
                    key,
                    format!("must be a table, found {}", kind(other)),
                );
                None
            }
        }
    }

    pub(super) fn string(&mut self, v: &Value<'_>, ctx: &str, key: &str) -> Option<Sp<String>> {
        match v.get_ref() {
            DeValue::String(s) => Some(Sp {
                value: s.to_string(),
                span: v.span(),
            }),
            other => {
                self.error(
                    &v.span(),
                    ctx,
                    key,
                    format!("must be a string, found {}", kind(other)),
                );
                None
            }
        }
    }

    /// `machine`: one name, or a list of them (the first, and the rest).
    pub(super) fn machines(
        &mut self,
        v: &Value<'_>,
        ctx: &str,
    ) -> (Option<Sp<String>>, Vec<Sp<String>>) {
        let DeValue::Array(items) = v.get_ref() else {
            return (self.string(v, ctx, "machine"), Vec::new());
        };
        if items.is_empty() {
            self.error(&v.span(), ctx, "machine", "must name at least one machine");
            return (None, Vec::new());
        }
        let mut names: Vec<Sp<String>> = items
            .iter()
            .filter_map(|item| self.string(item, ctx, "machine"))
            .collect();
        if names.len() < items.len() {
            return (None, Vec::new());
        }
        let first = names.remove(0);
        (Some(first), names)
    }

    /// One name or a list of names (possibly empty).
    pub(super) fn names(
        &mut self,
        v: &Value<'_>,
        ctx: &str,
        key: &str,
    ) -> Option<Sp<Vec<Sp<String>>>> {
        let items: Vec<Option<Sp<String>>> = match v.get_ref() {
            DeValue::Array(items) => items.iter().map(|i| self.string(i, ctx, key)).collect(),
            _ => vec![self.string(v, ctx, key)],
        };
        Some(Sp {
            value: items.into_iter().collect::<Option<Vec<_>>>()?,
            span: v.span(),
        })
    }

    /// A string, or an integer kept as its decimal text.
    pub(super) fn string_or_integer(
        &mut self,
        v: &Value<'_>,
        ctx: &str,
        key: &str,
    ) -> Option<Sp<String>> {
        match v.get_ref() {
            DeValue::Integer(_) => self.integer(v, ctx, key).map(|i| Sp {
                value: i.value.to_string(),
                span: i.span,
            }),
            _ => self.string(v, ctx, key),
        }
    }

    pub(super) fn boolean(&mut self, v: &Value<'_>, ctx: &str, key: &str) -> Option<Sp<bool>> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(Sp {
                value: *b,
                span: v.span(),
            }),
            other => {
                self.error(
                    &v.span(),
                    ctx,
                    key,
                    format!("must be true or false, found {}", kind(other)),
                );
                None
            }
        }
    }

    pub(super) fn integer(&mut self, v: &Value<'_>, ctx: &str, key: &str) -> Option<Sp<i64>> {
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                let digits = digits
                    .trim_start_matches("0x")
                    .trim_start_matches("0o")
                    .trim_start_matches("0b");
                i64::from_str_radix(digits, i.radix()).map_err(|_| "is out of range".to_string())
            }
            other => Err(format!("must be an integer, found {}", kind(other))),
        };
        match parsed {
            Ok(value) => Some(Sp {
                value,
                span: v.span(),
            }),
            Err(msg) => {
                self.error(&v.span(), ctx, key, msg);
                None
            }
        }
    }
}

/// `services[N]`, with the service's name when it can be read, so messages
/// about a long file say which service they are about.
fn service_context(index: usize, item: &DeValue<'_>) -> String {
    let label = |key: &str| match item.get(key).map(|v| v.get_ref()) {
        Some(DeValue::String(s)) if !s.is_empty() => Some(s.to_string()),
        _ => None,
    };
    match label("name").or_else(|| label("service")) {
        Some(name) => format!("services[{index}] ({})", super::printable(&name)),
        None => format!("services[{index}]"),
    }
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}
