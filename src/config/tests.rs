//! Config parsing and validation, on inline fixtures.

use super::*;

const GOOD: &str = r#"
[global]
upstream = "https://git.example.net/ops/config"
branch = "main"
mount = "/var/lib/provision"
keys = [ { path = "keys/ops.pub", ro = true } ]

[[services]]
machine = "grafana.example.net"
service = "grafana-server"
name = "grafana"
user = "grafana"
package = "grafana"
action = "reload"
depth = 3
dirs = [
  { local = "/etc/grafana", link = "grafana/etc" },
  { local = "/etc/default/grafana-server", link = "grafana/default", file = true },
]
"#;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("/etc/provision/config.toml"), text)
}

/// One service on machine m1 with `extra` lines added to its table.
fn service_with(extra: &str) -> String {
    format!(
        "[[services]]\nmachine = \"m1\"\nservice = \"app\"\nupstream = \"git://127.0.0.1/r.git\"\n{extra}\ndirs = [{{ local = \"/etc/app\", link = \"app\" }}]\n"
    )
}

#[test]
fn accepts_the_documented_example() {
    let c = parse(GOOD).expect("valid");
    assert_eq!(c.services.len(), 1);
    let s = &c.services[0];
    assert_eq!(s.name, "grafana");
    assert_eq!(s.unit, "grafana-server.service");
    assert_eq!(s.upstream.transport, Transport::Https);
    assert_eq!(s.action, Some(Action::Reload));
    assert_eq!(s.depth, 3);
    assert_eq!(s.mount.as_deref(), Some(Path::new("/var/lib/provision")));
    assert!(s.dirs[1].file);
    assert_eq!(c.warnings.len(), 1, "keys is reported as unused");
    assert!(c.warnings[0].message.contains("gitopper"));
}

#[test]
fn accepts_gitoppers_own_config_unchanged() {
    let text = r#"
[global]
upstream = "https://github.com/miekg/gitopper-config"
mount = "/tmp"
keys = [
	{ path = "keys/miek_id_ed25519_gitopper.pub", ro = true },
	{ path = "/local/home/miek/.ssh/id_ed25519_gitopper.pub"},
]

[[services]]
machine = "localhost"
branch = "main"
service = "prometheus"
user = "prometheus"
package = "prometheus"
action = "reload"
dirs = [
	{ local = "/etc/prometheus", link = "prometheus/etc" },
]
"#;
    let c = parse(text).expect("gitopper config is accepted");
    assert_eq!(c.services[0].name, "prometheus");
    assert_eq!(c.services[0].branch, "main");
    assert_eq!(c.services[0].depth, DEFAULT_DEPTH);
}

#[test]
fn defaults_and_derived_names() {
    let c = parse(&service_with("service = \"getty@tty1\"").replace("service = \"app\"\n", ""))
        .expect("valid");
    let s = &c.services[0];
    assert_eq!(s.unit, "getty@tty1.service");
    assert_eq!(s.name, "getty-tty1");
    assert_eq!(s.branch, "main");
    assert_eq!(s.action, None);
    assert_eq!(s.mount, None);
    assert_eq!(s.timeout, DEFAULT_TIMEOUT);
    assert_eq!(s.interval, DEFAULT_INTERVAL);
}

#[test]
fn intervals_accept_seconds_and_units() {
    use std::time::Duration;
    for (text, secs) in [
        ("90", 90),
        ("5m", 300),
        ("1h 30m", 5400),
        ("2d", 172800),
        ("45s", 45),
    ] {
        assert_eq!(
            validate::parse_span(text),
            Ok(Duration::from_secs(secs)),
            "{text}"
        );
    }
    let c = parse(&service_with("interval = 120")).expect("integer seconds");
    assert_eq!(c.services[0].interval, Duration::from_secs(120));
}

#[test]
fn upstream_forms() {
    for (url, t) in [
        ("https://h/r.git", Transport::Https),
        ("ssh://git@h:2222/r.git", Transport::Ssh),
        ("git@github.com:ops/config.git", Transport::Ssh),
        ("git://127.0.0.1:9418/r.git", Transport::Git),
        ("file:///srv/git/r.git", Transport::Local),
        ("/srv/git/r.git", Transport::Local),
    ] {
        let up = validate::classify_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(up.transport, t, "{url}");
    }
    assert_eq!(
        validate::classify_url("/srv/r").map(|u| u.url),
        Ok("file:///srv/r".to_string())
    );
}

#[test]
fn every_error_is_reported_at_once_with_position() {
    let text = service_with("depth = 0\naction = \"bounce\"\ncolour = \"red\"");
    let errs = parse(&text).expect_err("invalid").0;
    assert_eq!(errs.len(), 3, "{errs:#?}");
    let shown = ConfigErrors(errs.clone()).to_string();
    assert!(shown.contains("3 errors"), "{shown}");
    for d in &errs {
        assert!(d.line > 0, "{d}");
        assert_eq!(d.context, "services[0] (app)");
    }
    assert_eq!(errs[0].to_string(), "/etc/provision/config.toml:5:9: services[0] (app): key `depth`: must be at least 1 (found 0)");
}

/// (config text, key expected in the message, words expected in the message)
fn bad_configs() -> Vec<(String, &'static str, &'static str)> {
    let s = service_with;
    vec![
        ("[[services]\n".into(), "", "unclosed array table"),
        ("colour = 1\n".into(), "colour", "unknown key"),
        (
            "[global]\nname = \"m1\"\n".into(),
            "name",
            "belongs in a [[services]] table",
        ),
        (
            "[global]\nupstrem = \"x\"\n".into(),
            "upstrem",
            "unknown key",
        ),
        ("services = 3\n".into(), "services", "array of tables"),
        (s("colour = \"red\""), "colour", "unknown key"),
        (
            s("").replace("machine = \"m1\"\n", ""),
            "machine",
            "is required",
        ),
        (
            s("").replace("service = \"app\"\n", ""),
            "service",
            "is required",
        ),
        (
            s("").replace("upstream = \"git://127.0.0.1/r.git\"\n", ""),
            "upstream",
            "is required (here or in [global])",
        ),
        (
            s("").replace("dirs = [{ local = \"/etc/app\", link = \"app\" }]\n", ""),
            "dirs",
            "is required",
        ),
        (
            s("").replace("[{ local = \"/etc/app\", link = \"app\" }]", "[]"),
            "dirs",
            "at least one",
        ),
        (
            s("").replace("local = \"/etc/app\", ", ""),
            "dirs[0].local",
            "is required",
        ),
        (
            s("").replace(", link = \"app\"", ""),
            "dirs[0].link",
            "is required",
        ),
        (
            s("").replace("/etc/app", "etc/app"),
            "dirs[0].local",
            "absolute",
        ),
        (
            s("").replace("/etc/app", "/etc/app/"),
            "dirs[0].local",
            "not normalized",
        ),
        (
            s("").replace("/etc/app", "/etc//app"),
            "dirs[0].local",
            "not normalized",
        ),
        (
            s("").replace("/etc/app", "/etc/../app"),
            "dirs[0].local",
            "'..'",
        ),
        (
            s("").replace("/etc/app", "/etc"),
            "dirs[0].local",
            "system directory",
        ),
        (
            s("").replace("/etc/app", "/"),
            "dirs[0].local",
            "system directory",
        ),
        (
            s("").replace("/etc/app", "/usr"),
            "dirs[0].local",
            "system directory",
        ),
        (
            s("").replace("link = \"app\"", "link = \"/app\""),
            "dirs[0].link",
            "relative",
        ),
        (
            s("").replace("link = \"app\"", "link = \"app/../../x\""),
            "dirs[0].link",
            "'..'",
        ),
        (
            s("").replace("link = \"app\"", "link = \"app//etc\""),
            "dirs[0].link",
            "empty path segment",
        ),
        (
            s("").replace("link = \"app\"", "link = \"\""),
            "dirs[0].link",
            "must not be empty",
        ),
        (
            s("").replace("link = \"app\"", "link = \"app\", owner = 1"),
            "dirs[0].owner",
            "unknown key",
        ),
        (
            s("").replace("link = \"app\"", "link = \"app\", mode = \"4755\""),
            "dirs[0].mode",
            "set-id",
        ),
        (
            s("").replace("link = \"app\"", "link = \"app\", mode = \"0750\""),
            "dirs[0].mode",
            "execute bits",
        ),
        (
            s("").replace("link = \"app\"", "link = \"app\", mode = \"rw\""),
            "dirs[0].mode",
            "not a file mode",
        ),
        (
            s("package = \"openssh-client-\""),
            "package",
            "not a package name",
        ),
        (s("package = \"!nginx\""), "package", "not a package name"),
        (
            s("package = \"nginx=1.2\""),
            "package",
            "not a package name",
        ),
        (s("max_file_size = \"lots\""), "max_file_size", "not a size"),
        (
            s("max_fetch_bytes = 0"),
            "max_fetch_bytes",
            "at least 1 byte",
        ),
        (s("max_files = 0"), "max_files", "at least 1"),
        (
            s("").replace("link = \"app\"", "link = \"app\", file = \"yes\""),
            "dirs[0].file",
            "true or false",
        ),
        (
            s("action = \"bounce\""),
            "action",
            "unknown action \"bounce\"",
        ),
        (s("depth = 0"), "depth", "at least 1"),
        (s("depth = \"3\""), "depth", "must be an integer"),
        (s("timeout = -5"), "timeout", "at least 1"),
        (
            s("interval = \"5 fortnights\""),
            "interval",
            "not a time span",
        ),
        (s("interval = 0"), "interval", "at least 1 second"),
        (s("name = \"my app\""), "name", "may only contain"),
        (
            s("name = \"-x\""),
            "name",
            "must start with a letter or digit",
        ),
        (
            s("name = \"x\"").replace("service = \"app\"", "service = \"app@\""),
            "service",
            "template without an instance",
        ),
        (
            s("").replace("service = \"app\"", "service = \"a b\""),
            "service",
            "systemd unit name",
        ),
        (
            s("").replace("git://127.0.0.1/r.git", "http://h/r.git"),
            "upstream",
            "plain http",
        ),
        (
            s("").replace("git://127.0.0.1/r.git", "ftp://h/r.git"),
            "upstream",
            "unsupported scheme",
        ),
        (
            s("").replace("git://127.0.0.1/r.git", "relative/path"),
            "upstream",
            "not a URL",
        ),
        (
            s("").replace("git://127.0.0.1/r.git", "file://relative"),
            "upstream",
            "file:///absolute/path",
        ),
        (s("branch = \"a..b\""), "branch", "not a valid branch name"),
        (
            s("").replace("git://127.0.0.1/r.git", "https://u:hunter2@h/r.git"),
            "upstream",
            "password in the URL",
        ),
        (
            s("").replace("git://127.0.0.1/r.git", "ssh://u:hunter2@h/r.git"),
            "upstream",
            "use ssh_key",
        ),
        (s("mount = \"var/lib\""), "mount", "absolute"),
        (s("ssh_key = \"id_ed25519\""), "ssh_key", "absolute"),
        (s("user = \"a b\""), "user", "not a valid user name"),
        (
            format!("{}{}", s(""), s("")),
            "name",
            "duplicate service name \"app\"",
        ),
        (
            format!(
                "{}{}",
                s(""),
                s("name = \"app2\"").replace("/etc/app", "/etc/app/conf.d")
            ),
            "dirs[0].local",
            "is nested inside",
        ),
        (
            format!("{}{}", s(""), s("name = \"app2\"")),
            "dirs[0].local",
            "is the same path as",
        ),
        (
            s("").replace(
                "[{ local = \"/etc/app\", link = \"app\" }]",
                "[{ local = \"/etc/app\", link = \"a\" }, { local = \"/etc\", link = \"b\" }]",
            ),
            "dirs[1].local",
            "system directory",
        ),
    ]
}

#[test]
fn bad_configs_are_rejected_with_a_precise_message() {
    let cases = bad_configs();
    assert!(cases.len() >= 25);
    for (text, key, words) in cases {
        let errs = match parse(&text) {
            Ok(_) => panic!("accepted bad config:\n{text}"),
            Err(e) => e.0,
        };
        let hit = errs
            .iter()
            .find(|d| d.key == key && d.message.contains(words));
        assert!(
            hit.is_some(),
            "expected key {key:?} with {words:?}, got:\n{}\nfor:\n{text}",
            ConfigErrors(errs.clone())
        );
        let d = hit.map(|d| d.to_string()).unwrap_or_default();
        assert!(d.starts_with("/etc/provision/config.toml"), "{d}");
        assert!(!d.contains("hunter2"), "secrets never reach messages: {d}");
    }
}

#[test]
fn nested_local_in_the_same_machine_only() {
    let a = service_with("");
    let b = service_with("name = \"b\"").replace("m1", "m2");
    parse(&format!("{a}{b}")).expect("the same path on two machines is fine");
}

#[test]
fn service_selection_by_machine() {
    let a = service_with("");
    let b = service_with("name = \"b\"").replace("m1", "M2");
    let c = parse(&format!("{a}{b}")).expect("valid");
    let picked = c.services_where(|m| m == "m2");
    assert_eq!(picked.len(), 1);
    assert_eq!(picked[0].name, "b");
}

#[test]
fn limits_modes_and_groups_are_read() {
    let text = "[global]\nmax_file_size = \"1MiB\"\nmax_fetch_bytes = 5000\n\n\
        [[services]]\nmachine = \"m1\"\nservice = \"app\"\nupstream = \"git://127.0.0.1/r.git\"\n\
        max_files = 10\npackage = \"libc6:i386\"\n\
        dirs = [{ local = \"/etc/app\", link = \"app\", mode = \"0640\", group = \"adm\", allow_writable_parents = true }]\n";
    let c = parse(text).expect("valid");
    let s = &c.services[0];
    assert_eq!(s.limits.max_file_size, 1 << 20);
    assert_eq!(s.limits.max_fetch_bytes, 5000);
    assert_eq!(s.limits.max_files, 10);
    assert_eq!(s.limits.max_release_size, 1 << 30, "default");
    let d = &s.dirs[0];
    assert_eq!((d.mode, d.perm(true)), (0o640, 0o750));
    assert_eq!(d.group.as_deref(), Some("adm"));
    assert!(d.allow_writable_parents);
    let plain = parse(&service_with("")).expect("valid");
    assert_eq!(plain.services[0].dirs[0].mode, 0o644);
    assert_eq!(plain.services[0].limits.max_file_size, 64 << 20);
}

#[test]
fn a_bad_global_value_is_reported_under_global_once() {
    let text = "[global]\ndepth = 0\n\n[[services]]\nmachine = \"m1\"\nservice = \"a\"\nupstream = \"git://h/r.git\"\ndirs = [{ local = \"/etc/a\", link = \"a\" }]\n\n[[services]]\nmachine = \"m1\"\nservice = \"b\"\nupstream = \"git://h/r.git\"\ndirs = [{ local = \"/etc/b\", link = \"b\" }]\n";
    let errs = parse(text).expect_err("depth 0").0;
    assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
    assert_eq!(
        errs[0].to_string(),
        "/etc/provision/config.toml:2:9: [global]: key `depth`: must be at least 1 (found 0)"
    );
}

#[test]
fn checks_are_read_with_their_timeouts_and_global_defaults() {
    let c = parse(&service_with(
        "validate = \"nginx -t\"\nhealth = \"curl -fsS http://127.0.0.1/\"\nhealth_timeout = \"2m\"",
    ))
    .expect("valid");
    let checks = &c.services[0].checks;
    let validate = checks.validate.as_ref().expect("validate");
    assert_eq!(validate.command, "nginx -t");
    assert_eq!(validate.timeout, DEFAULT_VALIDATE_TIMEOUT);
    let health = checks.health.as_ref().expect("health");
    assert_eq!(health.timeout, Duration::from_secs(120));

    let text = format!(
        "[global]\nvalidate = \"true\"\nvalidate_timeout = 5\n{}",
        service_with("")
    );
    let c = parse(&text).expect("valid");
    let validate = c.services[0]
        .checks
        .validate
        .as_ref()
        .expect("from [global]");
    assert_eq!(validate.timeout, Duration::from_secs(5));
    assert!(c.services[0].checks.health.is_none());
    assert!(c.services[0].dirs[0].readonly, "read-only by default");
}

#[test]
fn empty_check_commands_and_bad_timeouts_are_errors() {
    for (extra, key, wanted) in [
        ("validate = \"\"", "validate", "must not be empty"),
        ("health = \"  \"", "health", "must not be empty"),
        (
            "validate = \"x\"\nvalidate_timeout = \"0s\"",
            "validate_timeout",
            "at least 1 second",
        ),
        (
            "health = \"x\"\nhealth_timeout = \"soon\"",
            "health_timeout",
            "not a time span",
        ),
    ] {
        let e = parse(&service_with(extra)).expect_err(extra).to_string();
        assert!(e.contains(&format!("key `{key}`: ")), "{extra}: {e}");
        assert!(e.contains(wanted), "{extra}: {e}");
    }
}

/// Configs in the shapes gitopper's README, man page and repository
/// example use, which gitopper's TOML decoder accepts: comments after
/// values, `keys` with `ro`, a template-instance service with a single
/// file, keys in any letter case, and service keys in `[global]`.
#[test]
fn accepts_every_config_shape_gitopper_accepts() {
    let documented = r#"
# global options are applied if a service doesn't list them
[global]
upstream = "https://git.example.net/ops/gitopper-config"  # where to download from
mount = "/var/lib/gitopper"                               # mount+service is the checkout
keys = [
	{ path = "keys/ops_id_ed25519.pub" },
	{ path = "keys/audit_id_ed25519.pub", ro = true },
]

[[services]]
machine = "prometheus"        # host name of the machine
service = "prometheus"        # the systemd service name
action = "reload"             # systemctl <action> <service>, may be empty
branch = "main"
package = "prometheus"
user = "prometheus"
dirs = [
    { local = "/etc/prometheus", link = "prometheus/etc" },
    { local = "/etc/caddy/Caddyfile", link = "caddy/etc/Caddyfile", file = true },
]

[[services]]
machine = "docker-test"
service = "docker-compose@caddy"
user = "docker"
#package = "docker-compose"
action = "reload"
dirs = [
	{ local = "/srv/compose/docker-compose.yml", link = "docker-compose/caddy/docker-compose.yml", file = true },
]
"#;
    let c = parse(documented).expect("gitopper's documented shape");
    assert_eq!(c.services.len(), 2);
    assert_eq!(c.services[1].name, "docker-compose-caddy");
    assert!(c.services[0].dirs[1].file);

    let any_case = r#"
[Global]
Upstream = "https://git.example.net/ops/config"
Keys = [ { Path = "keys/a.pub", RO = true } ]

[[Services]]
Machine = "web1"
Service = "nginx"
Action = "reload"
Dirs = [ { Local = "/etc/nginx", Link = "nginx", Single = false } ]
"#;
    let c = parse(any_case).expect("keys in any letter case");
    assert_eq!(c.services[0].unit, "nginx.service");
    assert_eq!(c.services[0].dirs[0].local, Path::new("/etc/nginx"));

    let global_service = r#"
[global]
upstream = "https://git.example.net/ops/config"
machine = "web1"
service = "nginx"
user = "www-data"
package = "nginx"
action = "reload"

[[services]]
dirs = [ { local = "/etc/nginx", link = "nginx" } ]

[[services]]
machine = "web2"
dirs = [ { local = "/etc/nginx", link = "nginx" } ]
"#;
    let c = parse(global_service).expect("service keys in [global]");
    assert_eq!(c.services.len(), 2);
    assert_eq!(c.services[0].machine, "web1");
    assert_eq!(c.services[1].machine, "web2");
    assert_eq!(c.services[1].unit, "nginx.service");
    assert_eq!(c.services[1].package.as_deref(), Some("nginx"));
}

#[test]
fn machine_may_be_a_list_and_checks_stay_per_machine() {
    let c = parse(&service_with("").replace(
        "machine = \"m1\"",
        "machine = [\"web1.example.net\", \"WEB2.example.net\"]",
    ))
    .expect("a list of machines");
    let machines: Vec<&str> = c.services.iter().map(|s| s.machine.as_str()).collect();
    assert_eq!(machines, ["web1.example.net", "web2.example.net"]);
    assert_eq!(c.services_where(|m| m == "web1.example.net").len(), 1);

    // Two entries on different machines may share a name; on one shared
    // machine they may not.
    let two = format!(
        "{}{}",
        service_with("").replace("machine = \"m1\"", "machine = [\"a\", \"b\"]"),
        service_with("").replace("machine = \"m1\"", "machine = [\"c\", \"b\"]")
    );
    let e = parse(&two).expect_err("b has app twice").to_string();
    assert!(
        e.contains("duplicate service name \"app\" on machine \"b\""),
        "{e}"
    );

    let e = parse(&service_with("").replace("machine = \"m1\"", "machine = []"))
        .expect_err("empty list")
        .to_string();
    assert!(e.contains("must name at least one machine"), "{e}");
    let e = parse(&service_with("").replace("machine = \"m1\"", "machine = [\"ok\", 3]"))
        .expect_err("not a string")
        .to_string();
    assert!(e.contains("key `machine`: must be a string"), "{e}");
}

#[test]
fn rollout_keys_are_read_with_their_defaults() {
    let c = parse(&service_with("")).expect("valid");
    assert!(!c.services[0].rollout.staged(), "no rollout by default");

    let text = format!(
        "[global]\nrollout = \"2h\"\ncanary = [\"Web1.example.net\", \"web2\"]\ngate = \"http://prometheus:9090/\"\n{}",
        service_with("gate_min = 2")
    );
    let c = parse(&text).expect("valid");
    let r = &c.services[0].rollout;
    assert_eq!(r.window, Duration::from_secs(7200));
    assert_eq!(r.canary, ["web1.example.net", "web2"]);
    assert!(r.is_canary("WEB2"));
    assert!(!r.is_canary("m1"));
    let gate = r.gate.as_ref().expect("gate");
    assert_eq!(gate.url, "http://prometheus:9090");
    assert_eq!((gate.soak, gate.min), (DEFAULT_SOAK, 2));

    assert!(
        c.warnings.iter().any(|w| w.key == "canary"
            && w.message
                .starts_with("web1.example.net runs no service app")),
        "{:?}",
        c.warnings
    );
    let c = parse(&service_with("rollout = 90\ncanary = \"m1\"")).expect("valid");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let r = &c.services[0].rollout;
    assert_eq!(r.window, Duration::from_secs(90));
    assert!(r.is_canary("m1") && r.gate.is_none());
}

#[test]
fn bad_rollout_keys_are_errors_naming_the_key() {
    for (extra, key, wanted) in [
        ("rollout = \"soon\"", "rollout", "not a time span"),
        ("rollout = \"40d\"", "rollout", "at most 30 days"),
        ("canary = [\"web 1\"]", "canary", "not a host name"),
        ("canary = [1]", "canary", "must be a string"),
        ("gate = \"ftp://p:9090\"", "gate", "http:// or https:// URL"),
        (
            "gate = \"http://p:9090\"",
            "gate",
            "needs `canary` machines",
        ),
        (
            "gate = \"http://p:9090\"\ncanary = [\"a\"]\ngate_min = 2",
            "gate_min",
            "only 1 canaries",
        ),
        ("gate_min = 0", "gate_min", "at least 1"),
        ("soak = \"a while\"", "soak", "not a time span"),
    ] {
        let e = parse(&service_with(extra)).expect_err(extra).to_string();
        assert!(e.contains(&format!("key `{key}`: ")), "{extra}: {e}");
        assert!(e.contains(wanted), "{extra}: {e}");
    }
}

#[test]
fn an_unknown_key_names_the_key_it_most_likely_meant() {
    for (extra, key, wanted) in [
        ("acton = \"reload\"", "acton", "did you mean `action`?"),
        ("brnch = \"main\"", "brnch", "did you mean `branch`?"),
        (
            "max_file_sise = 1",
            "max_file_sise",
            "did you mean `max_file_size`?",
        ),
        (
            "Allowed_Signer = \"/x\"",
            "Allowed_Signer",
            "did you mean `allowed_signers`?",
        ),
        (
            "colour = 1",
            "colour",
            "the configuration reference lists every key",
        ),
    ] {
        let e = parse(&service_with(extra)).expect_err(extra).to_string();
        assert!(e.contains(&format!("key `{key}`: ")), "{extra}: {e}");
        assert!(e.contains(wanted), "{extra}: {e}");
    }
    let e = parse(
        "[[services]]\nmachine = \"m1\"\nservice = \"app\"\nupstream = \"git://h/r\"\n\
         dirs = [{ local = \"/etc/app\", link = \"app\", redonly = true }]\n",
    )
    .expect_err("a typo in dirs")
    .to_string();
    assert!(e.contains("did you mean `readonly`?"), "{e}");
    let e = parse("[global]\nmetrics_dri = \"/x\"\n")
        .expect_err("a typo in [global]")
        .to_string();
    assert!(e.contains("did you mean `metrics_dir`?"), "{e}");
}

/// Each key of the table is one the parser reads where the table says:
/// written with its example value, it is never an unknown key.
#[test]
fn every_key_of_the_table_is_read_where_it_belongs() {
    use super::keys::{all, Scope};
    for k in all() {
        for name in std::iter::once(k.name).chain(k.aliases.iter().copied()) {
            let text = match k.scope {
                Scope::Shared | Scope::Service | Scope::Ignored => match name {
                    "machine" | "service" | "dirs" => continue,
                    _ => service_with(&format!("{name} = {}", k.example)),
                },
                Scope::Global => format!("[global]\n{name} = {}\n{}", k.example, service_with("")),
                Scope::Dir => format!(
                    "[[services]]\nmachine = \"m1\"\nservice = \"app\"\nupstream = \"git://h/r\"\n\
                     dirs = [{{ local = \"/etc/app\", link = \"app\", {name} = {} }}]\n",
                    k.example
                ),
            };
            if let Err(e) = parse(&text) {
                let e = e.to_string();
                assert!(!e.contains("unknown key"), "{name}: {e}");
            }
        }
    }
}

/// The guide's configuration reference lists every key of the table (a key
/// added without its documentation fails here).
#[test]
fn the_guide_documents_every_key() {
    let readme = include_str!("../../docs/src/configuration.md");
    for k in super::keys::all() {
        let row = format!("| `{}` |", k.name);
        assert!(
            readme.contains(&row),
            "docs/src/configuration.md has no row {row}"
        );
        for alias in k.aliases {
            assert!(
                readme.contains(&format!("`{alias}`")),
                "docs/src/configuration.md does not mention `{alias}`, which {} accepts too",
                k.name
            );
        }
    }
}
