//! A scratch host for integration tests that run the provision binary
//! directly (no systemd): its own config, state dir and mount root, and each
//! run in a private mount namespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::Upstream;

/// A scratch machine: config file, state dir, and the binary to run.
pub struct Host {
    dir: tempfile::TempDir,
}

impl Default for Host {
    fn default() -> Host {
        Host::new()
    }
}

impl Host {
    /// A new scratch host in a fresh temporary directory.
    pub fn new() -> Host {
        Host {
            dir: tempfile::tempdir().expect("creating host tempdir"),
        }
    }

    /// The host's own directory: config, state, metrics and `root/`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where every `local` of the config is moved to (see `write_config`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Runs `script` with `sh -e` in one private mount namespace, so that
    /// mounts made by one command are seen by the next; `$P` is this host's
    /// provision command line.
    pub fn script(&self, script: &str) -> Output {
        let bin = super::provision_bin();
        let bin = bin.display();
        let p = format!(
            "{bin} --config {} --state-dir {} --metrics-dir {} --machine test-host",
            self.config_path().display(),
            self.state().display(),
            self.metrics_dir().display()
        );
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-ec",
                script,
            ])
            .env("P", p)
            .output()
            .expect("running a script")
    }

    /// Runs provision with `args` after `provision mount` in the same
    /// namespace, so the deployed releases are mounted as on a host that
    /// kept them (each [`Host::run`] starts with none).
    pub fn run_mounted(&self, args: &[&str]) -> Output {
        self.script(&format!("$P mount >/dev/null\nexec $P {}", args.join(" ")))
    }

    /// The state directory provision runs with.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where this host's provision.prom is written.
    pub fn metrics_dir(&self) -> PathBuf {
        self.dir.path().join("metrics")
    }

    /// The config file provision runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Writes the config with every `local` moved under this host's scratch
    /// root, so mount points are created there and not on the real `/etc`.
    pub fn write_config(&self, text: &str) {
        let root = self.dir.path().join("root");
        let text = text.replace("local = \"/", &format!("local = \"{}/", root.display()));
        fs::write(self.config_path(), text).expect("writing config");
    }

    /// Runs provision in a private mount namespace: its bind mounts vanish
    /// when it exits (as after a reboot) and never touch the test host.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running provision")
    }

    /// The command [`Host::run`] runs, for a test that sets its
    /// environment or wraps it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--"])
            .arg(super::provision_bin())
            .arg("--config")
            .arg(self.config_path())
            .arg("--state-dir")
            .arg(self.state())
            .arg("--metrics-dir")
            .arg(self.metrics_dir())
            .args(["--machine", "test-host"])
            .args(args);
        c
    }

    /// Runs `provision sync`, asserting its exit code; returns stdout+stderr.
    pub fn sync(&self, expect_code: i32) -> String {
        let out = self.run(&["sync"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(expect_code), "sync output:\n{text}");
        text
    }

    /// The release directory currently recorded as deployed for `name`.
    pub fn deployed(&self, name: &str) -> PathBuf {
        let state = self.state_json(name);
        let release = state["deployed"]["release"]
            .as_str()
            .expect("a deployed release")
            .to_string();
        self.state().join(name).join("releases").join(release)
    }

    /// The first service's entry of `provision status --json` (which must
    /// exit 0 and carry schema 1).
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "status: {}",
            super::output_text(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        assert_eq!(v["schema"], 1);
        v["services"][0].clone()
    }

    /// This host's metrics file.
    pub fn metrics_text(&self) -> String {
        read(&self.metrics_dir().join("provision.prom"))
    }

    /// Service `name`'s state file, parsed.
    pub fn state_json(&self, name: &str) -> serde_json::Value {
        let text = fs::read_to_string(self.state().join(name).join("state.json"))
            .expect("reading state.json");
        serde_json::from_str(&text).expect("state.json parses")
    }

    /// The mirrors under the state directory, sorted.
    pub fn mirrors(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.state().join(".mirrors"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "git"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// One service `app` following `url`, mounting `app/etc` and the single file `app/default`.
pub fn app_config(url: &str, extra: &str) -> String {
    format!(
        r#"
[[services]]
machine = "test-host"
service = "app"
upstream = "{url}"
{extra}
dirs = [
  {{ local = "/etc/app", link = "app/etc" }},
  {{ local = "/etc/default/app", link = "app/default", file = true }},
]
"#
    )
}

/// Pushes the first commit of the `app` fixture to `main`; returns its hash.
pub fn seed(up: &Upstream) -> String {
    up.commit(
        "main",
        &[
            ("app/etc/app.conf", Some("port = 1\n")),
            ("app/etc/conf.d/extra.conf", Some("x\n")),
            ("app/default", Some("OPTS=-v\n")),
            ("other/secret.conf", Some("not for app\n")),
        ],
        "seed",
    )
}

/// Reads a file the test expects to exist.
pub fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}
