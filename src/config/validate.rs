//! Rules on values (paths, names, URLs) and across services of one machine.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::parse::{Locator, RawDir, RawService, RawSettings, Sp};
use super::{
    Action, Check, Checks, Diagnostic, Dir, DriftPolicy, Gate, Limits, Rollout, Service, Transport,
    Upstream,
};
use super::{Credentials, PrometheusAccess};

/// Mounting over these (or `/`) would take the machine down with the repo.
const FORBIDDEN_LOCALS: [&str; 15] = [
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/proc", "/root", "/run",
    "/sbin", "/sys", "/usr", "/var",
];

/// Longest service name: it becomes part of unit and directory names.
const MAX_NAME: usize = 64;

/// Spans of each resolved service, for cross-service messages.
#[derive(Clone)]
pub(super) struct Origin {
    pub context: String,
    pub name_span: Option<Range<usize>>,
    pub dir_spans: Vec<Option<Range<usize>>>,
}

/// Applies `[global]` defaults to every service and validates the result.
/// Services with errors are left out; their errors are added to `errors`.
pub(super) fn resolve(
    loc: &Locator<'_>,
    (global, global_span): (&RawSettings, Option<&Range<usize>>),
    services: &[RawService],
    errors: &mut Vec<Diagnostic>,
) -> Vec<(Service, Origin)> {
    let mut out = Vec::new();
    for raw in services {
        let before = errors.len();
        let mut r = Resolver {
            loc,
            ctx: &raw.context,
            global_span,
            errors,
        };
        let svc = r.service(raw, global);
        // A list of machines: the same service on each of them.
        let more: Vec<String> = raw
            .more_machines
            .iter()
            .filter_map(|m| r.machine(m))
            .collect();
        if let Some(svc) = svc.filter(|_| errors.len() == before) {
            let origin = Origin {
                context: raw.context.clone(),
                name_span: raw
                    .name
                    .as_ref()
                    .or(raw.service.as_ref())
                    .map(|s| s.span.clone()),
                dir_spans: raw
                    .dirs
                    .iter()
                    .flat_map(|d| {
                        d.value
                            .iter()
                            .map(|d| d.local.as_ref().map(|l| l.span.clone()))
                    })
                    .collect(),
            };
            let copies: Vec<(Service, Origin)> = more
                .into_iter()
                .map(|machine| {
                    let svc = Service {
                        machine,
                        ..svc.clone()
                    };
                    (svc, origin.clone())
                })
                .collect();
            out.push((svc, origin));
            out.extend(copies);
        }
    }
    out
}

struct Resolver<'a> {
    loc: &'a Locator<'a>,
    ctx: &'a str,
    global_span: Option<&'a Range<usize>>,
    errors: &'a mut Vec<Diagnostic>,
}

impl Resolver<'_> {
    /// Reports a problem at `span`: under `[global]` when the value was
    /// written there, else under the service.
    fn err(&mut self, span: Option<&Range<usize>>, key: &str, msg: impl Into<String>) {
        let in_global = match (span, self.global_span) {
            (Some(s), Some(g)) => g.start <= s.start && s.end <= g.end,
            _ => false,
        };
        let ctx = if in_global { "[global]" } else { self.ctx };
        let d = self.loc.diag(span, ctx, key, msg);
        self.errors.push(d);
    }

    fn service(&mut self, raw: &RawService, global: &RawSettings) -> Option<Service> {
        let s = merge(&raw.settings, global);
        let machine = self.required(&raw.machine, "machine", raw);
        let unit = self
            .required(&raw.service, "service", raw)
            .and_then(|u| self.unit(u));
        let name = match (&raw.name, &unit) {
            (Some(n), _) => self.name(n, "name"),
            (None, Some(unit)) => self.default_name(unit, raw),
            (None, None) => None,
        };
        let upstreams = self.upstreams(s.upstream.as_ref(), raw);
        let branch = self.branch(s.branch.as_ref());
        let action = s.action.as_ref().and_then(|a| {
            Action::parse(&a.value)
                .map_err(|m| self.err(Some(&a.span), "action", m))
                .ok()
        });
        let depth = self.positive(s.depth.as_ref(), "depth", super::DEFAULT_DEPTH.into());
        let timeout = self.positive(
            s.timeout.as_ref(),
            "timeout",
            super::DEFAULT_TIMEOUT.as_secs(),
        );
        let mount = s.mount.as_ref().and_then(|m| self.abs_path(m, "mount"));
        let user = self.word(s.user.as_ref(), "user");
        let package = self.package(s.package.as_ref());
        let credentials = self.credentials(&s);
        let interval = self.interval(s.interval.as_ref());
        let drift = self.drift(s.drift.as_ref());
        let limits = self.limits(&s);
        let checks = self.checks(&s);
        let rollout = self.rollout(&s);
        let trust = self.trust(&s);
        let age_identity = match &s.age_identity {
            None => Some(PathBuf::from(super::DEFAULT_AGE_IDENTITY)),
            Some(p) => self.abs_path(p, "age_identity"),
        };
        let dirs = self.dirs(raw);
        let machine = machine.and_then(|m| self.machine(m));
        Some(Service {
            name: name?,
            unit: unit?,
            machine: machine?,
            upstream: upstreams.as_ref()?.0.clone(),
            mirrors: upstreams?.1,
            branch: branch?,
            user: user?,
            package: package?,
            action: action.flatten(),
            depth: u32::try_from(depth?).ok()?,
            mount: match s.mount {
                Some(_) => Some(mount?),
                None => None,
            },
            dirs: dirs?,
            credentials: credentials?,
            timeout: Duration::from_secs(timeout?),
            interval: interval?,
            drift: drift?,
            limits: limits?,
            checks: checks?,
            rollout: rollout?,
            allowed_signers: trust.clone()?.0,
            openpgp_keys: trust?.1,
            age_identity: age_identity?,
        })
    }

    /// `allowed_signers` and `openpgp_keys`: absolute paths of key files.
    fn trust(&mut self, s: &RawSettings) -> Option<(Option<PathBuf>, Option<PathBuf>)> {
        let mut path = |v: &Option<Sp<String>>, key: &str| match v {
            None => Some(None),
            Some(p) => self.abs_path(p, key).map(Some),
        };
        let ssh = path(&s.allowed_signers, "allowed_signers");
        let openpgp = path(&s.openpgp_keys, "openpgp_keys");
        Some((ssh?, openpgp?))
    }

    /// `rollout`, `canary`, `gate`, `soak` and `gate_min`.
    fn rollout(&mut self, s: &RawSettings) -> Option<Rollout> {
        let window = match &s.rollout {
            None => Some(Duration::ZERO),
            Some(v) => match parse_span(&v.value) {
                Ok(d) if d <= super::MAX_ROLLOUT => Some(d),
                Ok(_) => {
                    self.err(Some(&v.span), "rollout", "must be at most 30 days");
                    None
                }
                Err(m) => {
                    self.err(Some(&v.span), "rollout", m);
                    None
                }
            },
        };
        let canary: Option<Vec<String>> = match &s.canary {
            None => Some(Vec::new()),
            Some(list) => list
                .value
                .iter()
                .map(|m| self.canary_name(m))
                .collect::<Vec<_>>()
                .into_iter()
                .collect(),
        };
        let gate = self.gate(s, canary.as_ref().map_or(0, Vec::len));
        let windows: Option<Vec<super::window::Window>> = match &s.windows {
            None => Some(Vec::new()),
            Some(list) => list
                .value
                .iter()
                .map(|w| {
                    super::window::Window::parse(&w.value)
                        .map_err(|m| self.err(Some(&w.span), "windows", m))
                        .ok()
                })
                .collect::<Vec<_>>()
                .into_iter()
                .collect(),
        };
        Some(Rollout {
            window: window?,
            canary: canary?,
            gate: gate?,
            windows: super::window::Windows(windows?),
        })
    }

    /// One `canary` entry: a machine name as `machine` takes it.
    fn canary_name(&mut self, m: &Sp<String>) -> Option<String> {
        let ok = !m.value.is_empty()
            && m.value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:_".contains(c));
        if !ok {
            self.err(
                Some(&m.span),
                "canary",
                format!("{:?} is not a host name, FQDN or IP address", m.value),
            );
            return None;
        }
        Some(m.value.to_ascii_lowercase())
    }

    /// `gate` with its `soak` and `gate_min`; `Some(None)` without a gate.
    fn gate(&mut self, s: &RawSettings, canaries: usize) -> Option<Option<Gate>> {
        let soak = match &s.soak {
            None => Some(super::DEFAULT_SOAK),
            Some(v) => parse_span(&v.value)
                .map_err(|m| self.err(Some(&v.span), "soak", m))
                .ok(),
        };
        let min = self.positive(s.gate_min.as_ref(), "gate_min", 1);
        let access = self.prometheus_access(s);
        let Some(url) = &s.gate else {
            let stray = [
                ("gate_token_file", &s.gate_token_file),
                ("gate_user", &s.gate_user),
                ("gate_ca_file", &s.gate_ca_file),
            ];
            for (key, v) in stray {
                if let Some(v) = v {
                    self.err(
                        Some(&v.span),
                        key,
                        "needs `gate`: it says how to reach the gate's Prometheus",
                    );
                    return None;
                }
            }
            return soak.and(min).map(|_| None);
        };
        let host = url
            .value
            .strip_prefix("http://")
            .or_else(|| url.value.strip_prefix("https://"))
            .map(|rest| rest.split(['/', ':']).next().unwrap_or(""));
        if host.is_none_or(str::is_empty) || url.value.contains(char::is_whitespace) {
            self.err(
                Some(&url.span),
                "gate",
                "must be the http:// or https:// URL of the fleet's Prometheus, such as \"http://prometheus:9090\"",
            );
            return None;
        }
        if canaries == 0 {
            self.err(
                Some(&url.span),
                "gate",
                "needs `canary` machines: the gate opens when enough of them have soaked the commit",
            );
            return None;
        }
        let min = min?;
        if min > canaries as u64 {
            let span = s.gate_min.as_ref().map(|g| &g.span);
            self.err(
                span,
                "gate_min",
                format!(
                    "is {min} but there are only {canaries} canaries: the gate could never open"
                ),
            );
            return None;
        }
        Some(Some(Gate {
            url: url.value.trim_end_matches('/').to_string(),
            soak: soak?,
            min: u32::try_from(min).ok()?,
            access: access?,
            machines: Vec::new(),
        }))
    }

    /// `gate_token_file`, `gate_user` and `gate_ca_file`.
    fn prometheus_access(&mut self, s: &RawSettings) -> Option<PrometheusAccess> {
        let token_file = match &s.gate_token_file {
            None => Some(None),
            Some(v) => self.abs_path(v, "gate_token_file").map(Some),
        };
        let ca_file = match &s.gate_ca_file {
            None => Some(None),
            Some(v) => self.abs_path(v, "gate_ca_file").map(Some),
        };
        let user = self.word(s.gate_user.as_ref(), "gate_user");
        if let (Some(u), None) = (&s.gate_user, &s.gate_token_file) {
            self.err(
                Some(&u.span),
                "gate_user",
                "needs `gate_token_file`, the file holding the password",
            );
            return None;
        }
        Some(PrometheusAccess {
            token_file: token_file?,
            user: user?,
            ca_file: ca_file?,
        })
    }

    /// `validate` and `health`, each with its timeout.
    fn checks(&mut self, s: &RawSettings) -> Option<Checks> {
        let validate = self.check(
            s.validate.as_ref(),
            s.validate_timeout.as_ref(),
            ("validate", "validate_timeout"),
            super::DEFAULT_VALIDATE_TIMEOUT,
        );
        let health = self.check(
            s.health.as_ref(),
            s.health_timeout.as_ref(),
            ("health", "health_timeout"),
            super::DEFAULT_HEALTH_TIMEOUT,
        );
        let user = self.word(s.check_user.as_ref(), "check_user");
        Some(Checks {
            validate: validate?,
            health: health?,
            user: user?,
        })
    }

    /// One check command and its timeout; `Some(None)` when not configured.
    fn check(
        &mut self,
        command: Option<&Sp<String>>,
        timeout: Option<&Sp<String>>,
        keys: (&str, &str),
        default: Duration,
    ) -> Option<Option<Check>> {
        let timeout = match timeout {
            None => Some(default),
            Some(t) => match parse_span(&t.value) {
                Ok(d) if d >= Duration::from_secs(1) => Some(d),
                Ok(_) => {
                    self.err(Some(&t.span), keys.1, "must be at least 1 second");
                    None
                }
                Err(m) => {
                    self.err(Some(&t.span), keys.1, m);
                    None
                }
            },
        };
        let Some(command) = command else {
            return timeout.map(|_| None);
        };
        if command.value.trim().is_empty() {
            self.err(
                Some(&command.span),
                keys.0,
                "must not be empty: give a command for /bin/sh -c, or remove the key",
            );
            return None;
        }
        if command.value.contains('\0') {
            self.err(Some(&command.span), keys.0, "must not contain a NUL byte");
            return None;
        }
        Some(Some(Check {
            command: command.value.clone(),
            timeout: timeout?,
        }))
    }

    fn required<'s>(
        &mut self,
        v: &'s Option<Sp<String>>,
        key: &str,
        raw: &RawService,
    ) -> Option<&'s Sp<String>> {
        match v {
            Some(v) if v.value.trim().is_empty() => {
                self.err(Some(&v.span), key, "must not be empty");
                None
            }
            Some(v) => Some(v),
            None => {
                let hint = if key == "upstream" {
                    " (here or in [global])"
                } else {
                    ""
                };
                self.err(Some(&raw.span), key, format!("is required{hint}"));
                None
            }
        }
    }

    fn machine(&mut self, m: &Sp<String>) -> Option<String> {
        let ok = m
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:_".contains(c));
        if !ok {
            self.err(
                Some(&m.span),
                "machine",
                "must be a host name, FQDN or IP address",
            );
            return None;
        }
        Some(m.value.to_ascii_lowercase())
    }

    /// A systemd unit name; `.service` is implied when there is no suffix.
    fn unit(&mut self, u: &Sp<String>) -> Option<String> {
        let v = &u.value;
        let ok_chars = v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c));
        if !ok_chars || v.len() > 250 {
            self.err(
                Some(&u.span),
                "service",
                "must be a systemd unit name (letters, digits, \":-_.@\\\")",
            );
            return None;
        }
        let (stem, _) = split_unit(v);
        if stem.ends_with('@') {
            let msg = "is a template without an instance; name the instance, e.g. \"getty@tty1\"";
            self.err(Some(&u.span), "service", msg);
            return None;
        }
        Some(match split_unit(v).1 {
            Some(_) => v.clone(),
            None => format!("{v}.service"),
        })
    }

    fn name(&mut self, n: &Sp<String>, key: &str) -> Option<String> {
        match check_name(&n.value) {
            Ok(()) => Some(n.value.clone()),
            Err(m) => {
                self.err(Some(&n.span), key, m);
                None
            }
        }
    }

    /// The unit's stem, with `@` turned into `-` so template instances make
    /// a usable name; if it is still unusable, ask for an explicit `name`.
    fn default_name(&mut self, unit: &str, raw: &RawService) -> Option<String> {
        let stem = split_unit(unit).0.replace('@', "-");
        match check_name(&stem) {
            Ok(()) => Some(stem),
            Err(m) => {
                let span = raw.service.as_ref().map(|s| s.span.clone());
                let msg = format!("the default name {stem:?} taken from `service` {m}; set `name`");
                self.err(span.as_ref(), "name", msg);
                None
            }
        }
    }

    /// `upstream`: the first URL, and the mirrors after it.
    fn upstreams(
        &mut self,
        v: Option<&Sp<Vec<Sp<String>>>>,
        raw: &RawService,
    ) -> Option<(Upstream, Vec<Upstream>)> {
        let Some(list) = v else {
            self.err(
                Some(&raw.span),
                "upstream",
                "is required (here or in [global])",
            );
            return None;
        };
        if list.value.is_empty() {
            self.err(Some(&list.span), "upstream", "must name at least one URL");
            return None;
        }
        let mut out = Vec::new();
        for u in &list.value {
            if u.value.trim().is_empty() {
                self.err(Some(&u.span), "upstream", "must not be empty");
                return None;
            }
            out.push(self.upstream(u));
        }
        let mut all = out.into_iter().collect::<Option<Vec<_>>>()?;
        let first = all.remove(0);
        Some((first, all))
    }

    fn upstream(&mut self, u: &Sp<String>) -> Option<Upstream> {
        match classify_url(&u.value) {
            Ok(up) => Some(up),
            Err(m) => {
                self.err(Some(&u.span), "upstream", m);
                None
            }
        }
    }

    fn branch(&mut self, b: Option<&Sp<String>>) -> Option<String> {
        let Some(b) = b else {
            return Some(super::DEFAULT_BRANCH.to_string());
        };
        let refname = format!("refs/heads/{}", b.value);
        if b.value.is_empty()
            || b.value.starts_with('-')
            || b.value.contains('\0')
            || !valid_refname(&refname)
        {
            self.err(
                Some(&b.span),
                "branch",
                format!("{:?} is not a valid branch name", b.value),
            );
            return None;
        }
        Some(b.value.clone())
    }

    fn positive(&mut self, v: Option<&Sp<i64>>, key: &str, default: u64) -> Option<u64> {
        let Some(v) = v else { return Some(default) };
        if v.value < 1 || v.value > i64::from(u32::MAX) {
            self.err(
                Some(&v.span),
                key,
                format!("must be at least 1 (found {})", v.value),
            );
            return None;
        }
        u64::try_from(v.value).ok()
    }

    /// A user or package name: non-empty when given, no spaces or slashes.
    fn word(&mut self, v: Option<&Sp<String>>, key: &str) -> Option<Option<String>> {
        let Some(v) = v else { return Some(None) };
        if v.value.is_empty() {
            return Some(None);
        }
        let bad = v
            .value
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c.is_control());
        if bad || v.value.starts_with('-') {
            self.err(
                Some(&v.span),
                key,
                format!("{:?} is not a valid {key} name", v.value),
            );
            return None;
        }
        Some(Some(v.value.clone()))
    }

    fn abs_path(&mut self, v: &Sp<String>, key: &str) -> Option<PathBuf> {
        match check_local(&v.value) {
            Ok(p) => Some(p),
            Err(m) => {
                self.err(Some(&v.span), key, m);
                None
            }
        }
    }

    fn interval(&mut self, v: Option<&Sp<String>>) -> Option<Duration> {
        let Some(v) = v else {
            return Some(super::DEFAULT_INTERVAL);
        };
        match parse_span(&v.value) {
            Ok(d) if d >= Duration::from_secs(1) => Some(d),
            Ok(_) => {
                self.err(Some(&v.span), "interval", "must be at least 1 second");
                None
            }
            Err(m) => {
                self.err(Some(&v.span), "interval", m);
                None
            }
        }
    }

    fn limits(&mut self, s: &RawSettings) -> Option<Limits> {
        let d = Limits::default();
        let max_file_size = self.size(s.max_file_size.as_ref(), "max_file_size", d.max_file_size);
        let max_release_size = self.size(
            s.max_release_size.as_ref(),
            "max_release_size",
            d.max_release_size,
        );
        let max_fetch_bytes = self.size(
            s.max_fetch_bytes.as_ref(),
            "max_fetch_bytes",
            d.max_fetch_bytes,
        );
        let max_files = self.positive(s.max_files.as_ref(), "max_files", d.max_files);
        Some(Limits {
            max_file_size: max_file_size?,
            max_files: max_files?,
            max_release_size: max_release_size?,
            max_fetch_bytes: max_fetch_bytes?,
        })
    }

    fn size(&mut self, v: Option<&Sp<String>>, key: &str, default: u64) -> Option<u64> {
        let Some(v) = v else { return Some(default) };
        match parse_size(&v.value) {
            Ok(n) if n > 0 => Some(n),
            Ok(_) => {
                self.err(Some(&v.span), key, "must be at least 1 byte");
                None
            }
            Err(m) => {
                self.err(Some(&v.span), key, m);
                None
            }
        }
    }

    /// A package name as the package managers read it: a name only, never
    /// an option, a removal (`!pkg` for zypper and apk, a trailing `-` for
    /// apt-get) or a version pin.
    fn package(&mut self, v: Option<&Sp<String>>) -> Option<Option<String>> {
        let name = self.word(v, "package")?;
        let (Some(name), Some(v)) = (name, v) else {
            return Some(None);
        };
        match check_package(&name) {
            Ok(()) => Some(Some(name)),
            Err(m) => {
                self.err(Some(&v.span), "package", m);
                None
            }
        }
    }

    fn drift(&mut self, v: Option<&Sp<String>>) -> Option<DriftPolicy> {
        let Some(v) = v else {
            return Some(DriftPolicy::Restore);
        };
        DriftPolicy::parse(&v.value)
            .map_err(|m| self.err(Some(&v.span), "drift", m))
            .ok()
    }

    fn credentials(&mut self, s: &RawSettings) -> Option<Credentials> {
        let mut path = |v: &Option<Sp<String>>, key: &str| -> Option<Option<PathBuf>> {
            match v {
                None => Some(None),
                Some(v) => self.abs_path(v, key).map(Some),
            }
        };
        let ssh_key = path(&s.ssh_key, "ssh_key");
        let ssh_known_hosts = path(&s.ssh_known_hosts, "ssh_known_hosts");
        let https_token_file = path(&s.https_token_file, "https_token_file");
        let proxy_credentials_file = path(&s.proxy_credentials_file, "proxy_credentials_file");
        let https_user = self.word(s.https_user.as_ref(), "https_user");
        let proxy = self.proxy(s.proxy.as_ref());
        let ssh_command = match &s.ssh_command {
            Some(c) if c.value.trim().is_empty() => {
                self.err(Some(&c.span), "ssh_command", "must not be empty");
                None
            }
            Some(c) => Some(Some(c.value.clone())),
            None => Some(None),
        };
        Some(Credentials {
            ssh_key: ssh_key?,
            ssh_known_hosts: ssh_known_hosts?,
            https_user: https_user?,
            https_token_file: https_token_file?,
            proxy: proxy?,
            ssh_command: ssh_command?,
            proxy_credentials_file: proxy_credentials_file?,
        })
    }

    /// `proxy`: an `http://host:port` URL, without a password (which would
    /// be stored and shown in plain text: `proxy_credentials_file` holds it).
    fn proxy(&mut self, v: Option<&Sp<String>>) -> Option<Option<String>> {
        let Some(v) = v else {
            return Some(None);
        };
        if let Ok(url) = url::Url::parse(&v.value) {
            if url.password().is_some() {
                self.err(
                    Some(&v.span),
                    "proxy",
                    "a password in the proxy URL would be stored and shown in plain text; put `user:password` in a file named by proxy_credentials_file",
                );
                return None;
            }
        }
        match crate::util::proxy::Proxy::parse(&v.value, "proxy", None) {
            Ok(_) => Some(Some(v.value.clone())),
            Err(e) => {
                let msg = format!("{e:#}");
                self.err(Some(&v.span), "proxy", msg.trim_start_matches("proxy: "));
                None
            }
        }
    }

    fn dirs(&mut self, raw: &RawService) -> Option<Vec<Dir>> {
        let Some(dirs) = &raw.dirs else {
            self.err(Some(&raw.span), "dirs", "is required: list what to mount, e.g. dirs = [{ local = \"/etc/app\", link = \"app/etc\" }]");
            return None;
        };
        if dirs.value.is_empty() {
            self.err(
                Some(&dirs.span),
                "dirs",
                "must list at least one { local, link } entry",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for d in &dirs.value {
            match self.dir(d.index, d) {
                Some(d) => out.push(d),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn dir(&mut self, i: usize, d: &RawDir) -> Option<Dir> {
        let key = |k: &str| format!("dirs[{i}].{k}");
        let local = match &d.local {
            None => {
                self.err(Some(&d.span), &key("local"), "is required");
                None
            }
            Some(l) => match check_local(&l.value).and_then(|p| check_not_system(&p).map(|_| p)) {
                Ok(p) => Some(p),
                Err(m) => {
                    self.err(Some(&l.span), &key("local"), m);
                    None
                }
            },
        };
        let link = match &d.link {
            None => {
                self.err(Some(&d.span), &key("link"), "is required");
                None
            }
            Some(l) => match check_link(&l.value) {
                Ok(()) => Some(l.value.clone()),
                Err(m) => {
                    self.err(Some(&l.span), &key("link"), m);
                    None
                }
            },
        };
        let decrypt = d.decrypt.as_ref().is_some_and(|x| x.value);
        if let (true, Some(true), Some(l)) = (decrypt, d.file.as_ref().map(|f| f.value), &d.link) {
            if !l.value.ends_with(".age") {
                self.err(
                    Some(&l.span),
                    &key("link"),
                    "a single file with decrypt = true is the encrypted file: its link ends in .age",
                );
                return None;
            }
        }
        let mode = match &d.mode {
            None => Some(super::DEFAULT_FILE_MODE),
            Some(m) => match parse_mode(&m.value) {
                Ok(v) => Some(v),
                Err(msg) => {
                    self.err(Some(&m.span), &key("mode"), msg);
                    None
                }
            },
        };
        let group = match &d.group {
            None => Some(None),
            Some(g) => self.word(Some(g), &key("group")),
        };
        Some(Dir {
            local: local?,
            link: link?,
            file: d.file.as_ref().is_some_and(|f| f.value),
            readonly: d.readonly.as_ref().is_none_or(|r| r.value),
            mode: mode?,
            group: group?,
            allow_writable_parents: d.allow_writable_parents.as_ref().is_some_and(|a| a.value),
            decrypt,
            secret_mode: match d.mode {
                Some(_) => mode?,
                None => super::DEFAULT_SECRET_MODE,
            },
        })
    }
}

/// A time span in seconds ("300") or systemd-like units ("5m", "1h 30m",
/// "90s", "2d"), as written into timer units.
pub(crate) fn parse_span(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("{s:?} is not a time span; write seconds or e.g. \"30s\", \"5m\", \"1h 30m\"");
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(scale)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(Duration::from_secs(total))
}

/// A size in bytes ("1048576") or with a unit ("64MiB", "1 GiB", "500KB";
/// K, M and G are powers of 1024 with or without `i`/`B`).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size; write bytes or e.g. \"64MiB\", \"1GiB\"");
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let shift = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// A file mode as an octal string: permission bits only (no set-id or
/// sticky bit, which a repository must not be able to hand out), and
/// readable by the owner.
pub(crate) fn parse_mode(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?} is not a file mode; write octal permission bits such as \"0640\"");
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 {
        return Err(bad());
    }
    let m = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if m & !0o777 != 0 {
        return Err(format!(
            "{s:?} sets set-id or sticky bits; only permission bits (at most 0777) are allowed"
        ));
    }
    if m & 0o400 == 0 {
        return Err(format!("{s:?} does not let the owner read the files"));
    }
    if m & 0o111 != 0 {
        return Err(format!(
            "{s:?} sets execute bits; they come from the repository (executable files and directories get x wherever r is set)"
        ));
    }
    Ok(m)
}

/// Package names in the grammar every supported manager shares (Debian's
/// policy is the strictest: lowercase letters, digits, `+ - .`, starting
/// with a letter or digit), plus `:` for an apt architecture (`libc6:i386`);
/// `-` at the end, `!` or `~` at the start, and `=`, `<` or `>` are refused,
/// since some managers read them as a removal or a version pin.
pub(crate) fn check_package(name: &str) -> Result<(), String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+-._:".contains(c));
    if !first_ok || !chars_ok || name.ends_with('-') {
        return Err(format!(
            "{name:?} is not a package name: use letters, digits and \"+-._:\", starting with a letter or digit and not ending with \"-\" \
             (a version, architecture or removal marker is not accepted)"
        ));
    }
    Ok(())
}

/// `[global] metrics_dir`, which must be an absolute path when given.
pub(super) fn metrics_dir(
    loc: &Locator<'_>,
    raw: Option<&Sp<String>>,
    errors: &mut Vec<Diagnostic>,
) -> Option<PathBuf> {
    let raw = raw?;
    match check_local(&raw.value) {
        Ok(p) => Some(p),
        Err(m) => {
            errors.push(loc.diag(Some(&raw.span), "[global]", "metrics_dir", m));
            None
        }
    }
}

/// A service's own settings over `[global]`'s.
fn merge(s: &RawSettings, g: &RawSettings) -> RawSettings {
    s.or(g)
}

/// Splits `name.suffix` when the suffix is a unit type.
fn split_unit(unit: &str) -> (&str, Option<&str>) {
    const TYPES: [&str; 11] = [
        "service",
        "socket",
        "target",
        "timer",
        "mount",
        "automount",
        "path",
        "swap",
        "slice",
        "scope",
        "device",
    ];
    match unit.rsplit_once('.') {
        Some((stem, suffix)) if TYPES.contains(&suffix) => (stem, Some(suffix)),
        _ => (unit, None),
    }
}

/// Names become unit instance names (`provision@NAME.timer`) and directory
/// names, so they are kept to characters that need no escaping in either.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("is longer than {MAX_NAME} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{name:?} must start with a letter or digit"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{name:?} may only contain letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// An absolute path written in normal form, so the same directory is
/// always spelled the same way and nesting checks are exact.
fn check_local(s: &str) -> Result<PathBuf, String> {
    let p = Path::new(s);
    if !p.is_absolute() {
        return Err(format!("{s:?} must be an absolute path"));
    }
    let mut normal = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => normal.push(n),
            _ => return Err(format!("{s:?} must not contain '.' or '..'")),
        }
    }
    if normal.as_os_str() != s {
        return Err(format!(
            "{s:?} is not normalized; write {:?}",
            normal.display().to_string()
        ));
    }
    Ok(normal)
}

fn check_not_system(p: &Path) -> Result<(), String> {
    if FORBIDDEN_LOCALS.iter().any(|f| Path::new(f) == p) {
        return Err(format!(
            "{:?} is a system directory; mount a directory below it instead",
            p.display().to_string()
        ));
    }
    Ok(())
}

/// A path inside the repository: relative, no `..`, no empty or `.` parts.
fn check_link(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.starts_with('/') {
        return Err(format!("{s:?} must be relative to the repository root"));
    }
    for seg in s.split('/') {
        match seg {
            "" => return Err(format!("{s:?} has an empty path segment")),
            "." | ".." => return Err(format!("{s:?} must not contain '.' or '..' segments")),
            ".git" => return Err(format!("{s:?} must not point into .git")),
            _ => {}
        }
    }
    Ok(())
}

/// Classifies an upstream URL; plain absolute paths become `file://` URLs.
pub(crate) fn classify_url(url: &str) -> Result<Upstream, String> {
    let up = |transport| {
        Ok(Upstream {
            url: url.to_string(),
            transport,
        })
    };
    if let Some((scheme, rest)) = url.split_once("://") {
        if rest.is_empty() {
            return Err(format!("{url:?} has no host or path"));
        }
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return Err(format!("{}: a password in the URL would be stored and shown in plain text; use ssh_key or https_token_file", redact(url)));
            }
        }
        return match scheme {
            "https" => up(Transport::Https),
            "ssh" | "git+ssh" | "ssh+git" => up(Transport::Ssh),
            "git" => up(Transport::Git),
            "file" if rest.starts_with('/') => up(Transport::Local),
            "file" => Err(format!("{url:?} must be file:///absolute/path")),
            "http" => Err(format!("{url:?}: plain http is not accepted; use https://")),
            other => Err(format!("{url:?}: unsupported scheme {other:?}; use https, ssh, git, file or an absolute path")),
        };
    }
    if url.starts_with('/') {
        return Ok(Upstream {
            url: format!("file://{url}"),
            transport: Transport::Local,
        });
    }
    // scp-like: [user@]host:path, where the host part has no slash.
    match url.split_once(':') {
        Some((host, path)) if !host.is_empty() && !host.contains('/') && !path.is_empty() => {
            up(Transport::Ssh)
        }
        _ => Err(format!(
            "{url:?} is not a URL, an scp-like user@host:path, or an absolute path"
        )),
    }
}

/// The URL with any userinfo replaced, so a secret never reaches a message.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => url.to_string(),
    }
}

/// Cross-service rules for services that land on the same machine: unique
/// names, and no two mounts on the same or nested local paths (one would
/// hide the other).
pub(super) fn check_machine_conflicts(
    loc: &Locator<'_>,
    services: &[(Service, Origin)],
    errors: &mut Vec<Diagnostic>,
) {
    let mut by_machine: BTreeMap<&str, Vec<&(Service, Origin)>> = BTreeMap::new();
    for s in services {
        by_machine.entry(s.0.machine.as_str()).or_default().push(s);
    }
    for group in by_machine.values() {
        for (i, (a, ao)) in group.iter().map(|x| (&x.0, &x.1)).enumerate() {
            for (b, bo) in group[i + 1..].iter().map(|x| (&x.0, &x.1)) {
                if a.name == b.name {
                    errors.push(loc.diag(
                        bo.name_span.as_ref(),
                        &bo.context,
                        "name",
                        format!(
                            "duplicate service name {:?} on machine {:?} (also {})",
                            b.name, b.machine, ao.context
                        ),
                    ));
                }
            }
        }
        let mounts: Vec<(&Path, &Origin, usize)> = group
            .iter()
            .flat_map(|(s, o)| {
                s.dirs
                    .iter()
                    .enumerate()
                    .map(move |(i, d)| (d.local.as_path(), o, i))
            })
            .collect();
        for (i, (a, ao, ai)) in mounts.iter().enumerate() {
            for (b, bo, bi) in &mounts[i + 1..] {
                if let Some(rel) = overlap(a, b) {
                    let span = bo.dir_spans.get(*bi).cloned().flatten();
                    let msg = format!(
                        "{:?} {rel} {:?} of {} dirs[{ai}] on machine {:?}",
                        b.display().to_string(),
                        a.display().to_string(),
                        ao.context,
                        group[0].0.machine
                    );
                    errors.push(loc.diag(
                        span.as_ref(),
                        &bo.context,
                        &format!("dirs[{bi}].local"),
                        msg,
                    ));
                }
            }
        }
    }
}

fn overlap(a: &Path, b: &Path) -> Option<&'static str> {
    if a == b {
        Some("is the same path as")
    } else if b.starts_with(a) {
        Some("is nested inside")
    } else if a.starts_with(b) {
        Some("contains")
    } else {
        None
    }
}

/// Git's rules for a reference name (`git check-ref-format`), checked here
/// rather than by libgit2: any git2 call initializes libgit2, and with it
/// OpenSSL's CA bundle, before the pass knows whether it needs TLS.
fn valid_refname(name: &str) -> bool {
    name != "@"
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name
            .chars()
            .any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c))
        && name
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.') && !part.ends_with(".lock"))
}

/// Warns about a `canary` that runs no service of that name in this config:
/// a misspelt canary never adopts first, and a gate waiting for it never
/// opens.
/// Tells each gate which machines run its service, so that only the
/// fleet's own series count in it.
pub(super) fn gate_machines(services: &mut [(Service, Origin)]) {
    let mut by_name: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (s, _) in services.iter() {
        by_name
            .entry(s.name.clone())
            .or_default()
            .insert(s.machine.to_ascii_lowercase());
    }
    for (s, _) in services.iter_mut() {
        if let Some(gate) = s.rollout.gate.as_mut() {
            gate.machines = by_name
                .get(&s.name)
                .map(|m| m.iter().cloned().collect())
                .unwrap_or_default();
        }
    }
}

pub(super) fn check_canaries(
    loc: &Locator<'_>,
    services: &[(Service, Origin)],
    warnings: &mut Vec<Diagnostic>,
) {
    let mut told: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (svc, _) in services {
        for canary in &svc.rollout.canary {
            let runs = services
                .iter()
                .any(|(s, _)| s.name == svc.name && s.machine.eq_ignore_ascii_case(canary));
            if !runs && told.insert((svc.name.as_str(), canary.as_str())) {
                let msg = format!(
                    "{canary} runs no service {} in this config: it cannot go first, and a gate waiting for it never opens",
                    svc.name
                );
                warnings.push(loc.diag(None, &format!("service {}", svc.name), "canary", msg));
            }
        }
    }
}

#[cfg(test)]
mod refname_tests {
    /// The same verdict as libgit2's on names that break each rule, and on
    /// every printable character in a few positions.
    #[test]
    fn same_verdict_as_libgit2() {
        let mut names: Vec<String> = [
            "main",
            "a/b",
            "feature/x-1",
            ".hidden",
            "a/.b",
            "a..b",
            "a.lock",
            "a/b.lock",
            "a.lock/b",
            "a/",
            "/a",
            "a//b",
            "a.",
            "a@{b",
            "@",
            "a@b",
            "a b",
            "a~b",
            "a^b",
            "a:b",
            "a?b",
            "a*b",
            "a[b",
            "a\\b",
            "a\tb",
            "a\u{7f}b",
            "é",
            "a/b/c.d",
            "-x",
            "v1.0",
            "a.b.c",
            "a/.lock",
            ".lock",
            "a..",
            "release/2024.01",
            "a@",
            "@a",
            "a{b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for c in (0x20u8..0x7f).map(char::from) {
            names.push(format!("a{c}b"));
            names.push(format!("{c}ab"));
            names.push(format!("ab{c}"));
            names.push(format!("a/{c}b"));
        }
        for n in names {
            let full = format!("refs/heads/{n}");
            assert_eq!(
                super::valid_refname(&full),
                git2::Reference::is_valid_name(&full),
                "{full:?}"
            );
        }
    }
}
