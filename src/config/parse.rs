//! Walks the spanned TOML tree into raw, still unvalidated settings, keeping
//! the source position of every value so later checks can point at it.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

pub(super) use super::keys::RawSettings;
use super::keys::{self, Scope};
use super::value::Values;
pub(super) use super::value::{Locator, Sp, Value};
use super::Diagnostic;

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
    pub decrypt: Option<Sp<bool>>,
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

impl Walker<'_, '_> {
    /// The reader of one value, reporting into this file's errors.
    fn values(&mut self) -> Values<'_, '_> {
        Values {
            loc: self.loc,
            errors: &mut self.out.errors,
        }
    }

    fn error(&mut self, span: &Range<usize>, context: &str, key: &str, msg: impl Into<String>) {
        self.values().error(span, context, key, msg);
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
        let Some(table) = self.values().table(value, GLOBAL, "global") else {
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
                    self.out.metrics_dir = self.values().string(v, GLOBAL, name);
                    continue;
                }
                // gitopper's [global] is a whole service: its `machine`,
                // `service` and `dirs` are defaults too.
                "machine" => {
                    (defaults.machine, defaults.more_machines) = self.values().machines(v, GLOBAL);
                    continue;
                }
                "service" => {
                    defaults.service = self.values().string(v, GLOBAL, name);
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
            if let Some(table) = self.values().table(item, &context, "services") {
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
                "machine" => (svc.machine, svc.more_machines) = self.values().machines(v, &ctx),
                "service" => svc.service = self.values().string(v, &ctx, name),
                "name" => svc.name = self.values().string(v, &ctx, name),
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
        s.read(&mut self.values(), ctx, key, v)
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
            if let Some(table) = self.values().table(item, ctx, &key) {
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
                "local" => dir.local = self.values().string(v, ctx, &full),
                "link" => dir.link = self.values().string(v, ctx, &full),
                // gitopper calls a single-file mount `single`.
                "file" | "single" => {
                    dir.file = self.values().boolean(v, ctx, &full).or(dir.file.take())
                }
                "readonly" => dir.readonly = self.values().boolean(v, ctx, &full),
                // An octal string ("0640"): TOML integers have no octal
                // reading a reader would expect of a file mode.
                "mode" => dir.mode = self.values().string(v, ctx, &full),
                "group" => dir.group = self.values().string(v, ctx, &full),
                "allow_writable_parents" => {
                    dir.allow_writable_parents = self.values().boolean(v, ctx, &full)
                }
                "decrypt" => dir.decrypt = self.values().boolean(v, ctx, &full),
                _ => {
                    let written = format!("{prefix}.{}", key.get_ref().as_ref());
                    self.unknown_key(key.span(), ctx, &written, &[Scope::Dir])
                }
            }
        }
        dir
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
