//! Every key of the config file, once. The keys `[global]` and a service
//! share are declared here with how their value is read: from that one
//! list come the raw settings struct, the parser's dispatch, `[global]`
//! inheritance, the "did you mean" of an unknown key, the check that the
//! guide's configuration reference (docs/src/configuration.md) documents every key, and the keys the fuzz tests generate.
//! Adding a shared key is one line here plus its validation.

use super::value::{Sp, Value, Values};

/// Where a key may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In a `[[services]]` table, or in `[global]` as a default.
    Shared,
    /// In a `[[services]]` table (and, for gitopper's files, `[global]`).
    Service,
    /// In an entry of `dirs`.
    Dir,
    /// In `[global]` only: it concerns the machine.
    Global,
    /// Accepted for gitopper compatibility, and ignored.
    Ignored,
}

/// What a key's value is, as TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Text,
    /// An integer.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A span (`"90s"`, `"5m"`) or a size (`"64MiB"`), or an integer of
    /// seconds or bytes.
    TextOrInteger,
    /// One name, or a list of names.
    Names,
    /// An array of `dirs` tables.
    Dirs,
}

/// One key of the config file.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// As written (any letter case is accepted).
    pub name: &'static str,
    /// Other spellings accepted for it (gitopper's).
    pub aliases: &'static [&'static str],
    /// Where it may be written.
    pub scope: Scope,
    /// What its value is.
    pub kind: Kind,
    /// A valid value, as TOML, for examples and generated configs.
    pub example: &'static str,
}

/// The type a shared key's raw value is kept as.
macro_rules! raw_type {
    (Text) => { String };
    (Integer) => { i64 };
    (TextOrInteger) => { String };
    (Names) => { Vec<Sp<String>> };
}

/// Reads a shared key's value with the walker method of its kind.
macro_rules! read_raw {
    ($w:ident, Text, $v:ident, $ctx:ident, $key:ident) => {
        $w.string($v, $ctx, $key)
    };
    ($w:ident, Integer, $v:ident, $ctx:ident, $key:ident) => {
        $w.integer($v, $ctx, $key)
    };
    ($w:ident, TextOrInteger, $v:ident, $ctx:ident, $key:ident) => {
        $w.string_or_integer($v, $ctx, $key)
    };
    ($w:ident, Names, $v:ident, $ctx:ident, $key:ident) => {
        $w.names($v, $ctx, $key)
    };
}

/// Declares the shared keys: the raw settings struct, their table
/// entries, inheritance from `[global]` and the parser's dispatch.
macro_rules! shared_keys {
    ($( $(#[$doc:meta])* $name:ident : $kind:ident = $example:literal ),* $(,)?) => {
        /// The keys `[global]` and a service share, as written; in
        /// `[global]` they are defaults.
        #[derive(Debug, Clone, Default)]
        pub(super) struct RawSettings {
            $( $(#[$doc])* pub $name: Option<Sp<raw_type!($kind)>>, )*
        }

        /// The shared keys, in the configuration reference's order.
        const SHARED: &[Key] = &[
            $( Key {
                name: stringify!($name),
                aliases: &[],
                scope: Scope::Shared,
                kind: Kind::$kind,
                example: $example,
            }, )*
        ];

        impl RawSettings {
            /// Each key as this table sets it, else as `global` does.
            pub(super) fn or(&self, global: &RawSettings) -> RawSettings {
                RawSettings {
                    $( $name: self.$name.clone().or_else(|| global.$name.clone()), )*
                }
            }

            /// Reads the value of the shared key `key` (lower case) into
            /// its slot; false when `key` is not a shared key.
            pub(super) fn read(
                &mut self,
                w: &mut Values<'_, '_>,
                ctx: &str,
                key: &str,
                v: &Value<'_>,
            ) -> bool {
                match key {
                    $( stringify!($name) => {
                        self.$name = read_raw!(w, $kind, v, ctx, key);
                        true
                    } )*
                    _ => false,
                }
            }
        }
    };
}

shared_keys! {
    /// `upstream`: one URL, or a list of them tried in order (mirrors).
    upstream: Names = "\"https://git.example.net/ops/config.git\"",
    branch: Text = "\"main\"",
    user: Text = "\"grafana\"",
    package: Text = "\"nginx-light\"",
    action: Text = "\"reload\"",
    depth: Integer = "3",
    mount: Text = "\"/var/lib/provision\"",
    timeout: Integer = "60",
    ssh_key: Text = "\"/etc/provision/id_ed25519\"",
    ssh_known_hosts: Text = "\"/etc/provision/known_hosts\"",
    /// Runs instead of `ssh`, through the shell, as `GIT_SSH_COMMAND`.
    ssh_command: Text = "\"ssh -F /etc/provision/ssh_config\"",
    https_user: Text = "\"deploy\"",
    https_token_file: Text = "\"/etc/provision/token\"",
    /// An HTTP proxy for http(s) upstreams: `http://host:port`.
    proxy: Text = "\"http://proxy.example.net:3128\"",
    proxy_credentials_file: Text = "\"/etc/provision/proxy-credentials\"",
    /// Seconds as an integer, or a span such as "5m" or "1h 30m".
    interval: TextOrInteger = "\"5m\"",
    drift: Text = "\"warn\"",
    /// Bytes as an integer, or a size such as "64MiB" or "1 GiB".
    max_file_size: TextOrInteger = "\"64MiB\"",
    max_files: Integer = "50000",
    max_release_size: TextOrInteger = "\"1GiB\"",
    max_fetch_bytes: TextOrInteger = "\"1GiB\"",
    validate: Text = "\"nginx -t\"",
    /// Seconds as an integer, or a span such as "90s" or "2m".
    validate_timeout: TextOrInteger = "\"90s\"",
    health: Text = "\"curl -fsS http://127.0.0.1/\"",
    health_timeout: TextOrInteger = "\"30s\"",
    check_user: Text = "\"nobody\"",
    rollout: TextOrInteger = "\"1h\"",
    /// `canary`: one name or a list of them.
    canary: Names = "[\"web1\"]",
    /// Change windows: `[DAYS] HH:MM-HH:MM [ZONE]`, one or a list.
    windows: Names = "[\"Mon..Fri 02:00-04:00\"]",
    gate: Text = "\"http://prometheus:9090\"",
    soak: TextOrInteger = "\"10m\"",
    gate_min: Integer = "1",
    gate_token_file: Text = "\"/etc/provision/prometheus-token\"",
    gate_user: Text = "\"provision\"",
    gate_ca_file: Text = "\"/etc/provision/prometheus-ca.pem\"",
    allowed_signers: Text = "\"/etc/provision/allowed_signers\"",
    openpgp_keys: Text = "\"/etc/provision/keys.asc\"",
    /// The key that decrypts the `.age` files of `decrypt` dirs.
    age_identity: Text = "\"/etc/provision/age.key\"",
}

/// The keys with a parser of their own: a service's identity and mounts,
/// the machine-wide ones, and the ignored.
const OTHERS: &[Key] = &[
    other(
        "machine",
        Scope::Service,
        Kind::Names,
        "\"web1.example.net\"",
    ),
    other("service", Scope::Service, Kind::Text, "\"nginx\""),
    other("name", Scope::Service, Kind::Text, "\"web\""),
    other(
        "dirs",
        Scope::Service,
        Kind::Dirs,
        "[{ local = \"/etc/nginx\", link = \"nginx\" }]",
    ),
    other("local", Scope::Dir, Kind::Text, "\"/etc/nginx\""),
    other("link", Scope::Dir, Kind::Text, "\"nginx\""),
    Key {
        name: "file",
        aliases: &["single"],
        scope: Scope::Dir,
        kind: Kind::Boolean,
        example: "true",
    },
    other("readonly", Scope::Dir, Kind::Boolean, "false"),
    other("mode", Scope::Dir, Kind::Text, "\"0640\""),
    other("group", Scope::Dir, Kind::Text, "\"adm\""),
    other("allow_writable_parents", Scope::Dir, Kind::Boolean, "true"),
    other("decrypt", Scope::Dir, Kind::Boolean, "true"),
    other(
        "metrics_dir",
        Scope::Global,
        Kind::Text,
        "\"/var/lib/prometheus/node-exporter\"",
    ),
    other("keys", Scope::Ignored, Kind::Text, "\"\""),
];

const fn other(name: &'static str, scope: Scope, kind: Kind, example: &'static str) -> Key {
    Key {
        name,
        aliases: &[],
        scope,
        kind,
        example,
    }
}

/// Every key of the config file.
pub fn all() -> impl Iterator<Item = &'static Key> {
    SHARED.iter().chain(OTHERS)
}

/// Whether `written` (lower case) is a key, or an alias of one, of `scope`.
pub fn is(written: &str, scope: Scope) -> bool {
    all().any(|k| k.scope == scope && (k.name == written || k.aliases.contains(&written)))
}

/// The key of `scopes` that `written` most likely meant, when it is near
/// enough to be a slip of the keyboard (`acton` for `action`), as cargo
/// and clap suggest.
pub fn nearest(written: &str, scopes: &[Scope]) -> Option<&'static str> {
    let written = written.to_ascii_lowercase();
    all()
        .filter(|k| scopes.contains(&k.scope))
        .flat_map(|k| std::iter::once(k.name).chain(k.aliases.iter().copied()))
        .map(|name| (strsim::damerau_levenshtein(&written, name), name))
        .filter(|(d, name)| *d <= 2.max(name.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}
