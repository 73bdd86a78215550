//! What an operator sees of a service without changing it: `status`,
//! `diff`, drift handling by policy, and the metrics file, checked by a
//! real promtool and served by a real node_exporter. Real git daemon; the
//! host side runs in private mount namespaces (see `common::host`).

use testkit as common;

use common::{output_text as text, sample};

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::host::{app_config, read, seed, Host};
use common::GitDaemon;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn app_sample(metrics: &str, name: &str) -> Option<f64> {
    sample(metrics, &format!("{name}{{service=\"app\"}}"))
}

/// The deployed file that `/etc/app/<rel>` shows.
fn release_file(h: &Host, rel: &str) -> PathBuf {
    h.deployed("app").join("app/etc").join(rel)
}

/// The host path status and diff report for `/etc/app/<rel>`.
fn local(h: &Host, rel: &str) -> String {
    let root = h.config_path().parent().expect("host dir").join("root");
    root.join("etc/app").join(rel).display().to_string()
}

#[test]
fn metrics_follow_passes_and_promtool_accepts_them() {
    common::need_git!();
    if !common::require_tool("promtool") {
        return;
    }
    let mut d = GitDaemon::start();
    let up = d.repo("r");
    let head = seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "action = \"\""));
    h.sync(0);
    let m = h.metrics_text();
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(fs::File::open(h.metrics_dir().join("provision.prom")).expect("open"))
        .output()
        .expect("promtool");
    assert!(check.status.success(), "promtool: {}\n{m}", text(&check));
    let deployed = format!("provision_deployed_commit_info{{service=\"app\",commit=\"{head}\"}}");
    assert_eq!(sample(&m, &deployed), Some(1.0), "{m}");
    assert_eq!(app_sample(&m, "provision_in_sync"), Some(1.0), "{m}");
    assert_eq!(app_sample(&m, "provision_last_pass_success"), Some(1.0));
    assert_eq!(app_sample(&m, "provision_drift_files"), Some(0.0));
    assert_eq!(app_sample(&m, "provision_pass_failures_total"), Some(0.0));
    assert!(app_sample(&m, "provision_pass_duration_seconds").is_some());

    d.stop();
    let out = h.sync(1);
    assert!(out.contains("last good release kept"), "{out}");
    let m = h.metrics_text();
    assert_eq!(sample(&m, &deployed), Some(1.0), "still serving: {m}");
    assert_eq!(app_sample(&m, "provision_last_pass_success"), Some(0.0));
    assert_eq!(app_sample(&m, "provision_pass_failures_total"), Some(1.0));
    let s = h.status_json();
    assert_eq!(s["last_pass"]["ok"], false);
    assert!(
        s["last_pass"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{s}"
    );
    assert_eq!(s["deployed"]["commit"], head.as_str());

    d.start_again();
    h.sync(0);
    let m = h.metrics_text();
    assert_eq!(app_sample(&m, "provision_last_pass_success"), Some(1.0));
    assert_eq!(
        app_sample(&m, "provision_pass_failures_total"),
        Some(1.0),
        "the counter survives runs"
    );
}

/// A node_exporter with only the textfile collector, on a loopback port.
struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    fn start(dir: &Path) -> NodeExporter {
        let bin = common::find_tool("prometheus-node-exporter")
            .or_else(|| common::find_tool("node_exporter"))
            .expect("node exporter");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(bin)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg(format!("--collector.textfile.directory={}", dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting node exporter");
        NodeExporter { child, port }
    }

    /// The body of `/metrics`, once it answers (up to 10 s).
    fn scrape(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(body) = self.try_scrape() {
                return body;
            }
            assert!(Instant::now() < deadline, "node exporter never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_scrape(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let req = format!(
            "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.contains("200 OK").then_some(body)
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn node_exporter_serves_the_series() {
    common::need_git!();
    if !common::require_tool("prometheus-node-exporter") {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("r");
    let head = seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "action = \"\""));
    h.sync(0);
    let ne = NodeExporter::start(&h.metrics_dir());
    let body = ne.scrape();
    for series in [
        format!("provision_deployed_commit_info{{commit=\"{head}\",service=\"app\"}} 1"),
        format!("provision_upstream_commit_info{{commit=\"{head}\",service=\"app\"}} 1"),
        "provision_in_sync{service=\"app\"} 1".to_string(),
        "provision_frozen{service=\"app\"} 0".to_string(),
        "provision_pass_failures_total{service=\"app\"} 0".to_string(),
    ] {
        assert!(
            body.lines().any(|l| l == series),
            "{series} not served:\n{body}"
        );
    }
    assert!(
        body.contains("node_textfile_scrape_error 0"),
        "textfile collector reported an error:\n{body}"
    );
}

#[test]
fn restore_policy_puts_local_edits_back_from_git() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "action = \"\""));
    h.sync(0);
    let release = h.deployed("app");
    fs::write(release_file(&h, "app.conf"), "port = 99\n").expect("edit");
    fs::write(release_file(&h, "new.conf"), "mine\n").expect("add");
    fs::remove_file(release_file(&h, "conf.d/extra.conf")).expect("delete");

    let s = h.status_json();
    assert_eq!(s["drift"]["count"], 3, "{s}");
    let files: Vec<(String, String)> = s["drift"]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or_default().to_string(),
                f["change"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        files,
        vec![
            (local(&h, "app.conf"), "modified".to_string()),
            (local(&h, "conf.d/extra.conf"), "deleted".to_string()),
            (local(&h, "new.conf"), "added".to_string()),
        ]
    );
    let table = stdout(&h.run(&["status"]));
    assert!(table.contains("drift: modified"), "{table}");

    let diff = h.run_mounted(&["diff", "app"]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    let patch = stdout(&diff);
    for line in ["-port = 1", "+port = 99", "+mine", "-x"] {
        assert!(patch.lines().any(|l| l == line), "{line:?} in\n{patch}");
    }
    assert!(patch.contains("etc/app/app.conf"), "{patch}");

    let out = h.sync(0);
    assert!(out.contains("restored 3 locally changed path(s)"), "{out}");
    assert_eq!(h.deployed("app"), release, "same release name");
    assert_eq!(read(&release_file(&h, "app.conf")), "port = 1\n");
    assert!(!release_file(&h, "new.conf").exists());
    assert_eq!(read(&release_file(&h, "conf.d/extra.conf")), "x\n");
    let leftovers: Vec<_> = fs::read_dir(release.parent().expect("releases"))
        .expect("releases")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(h.status_json()["drift"]["count"], 0);
    assert_eq!(h.run_mounted(&["diff", "app"]).status.code(), Some(0));
    assert_eq!(
        app_sample(&h.metrics_text(), "provision_drift_files"),
        Some(0.0)
    );
}

#[test]
fn warn_policy_keeps_edits_and_refuses_to_deploy_over_them() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let first = seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "action = \"\"\ndrift = \"warn\""));
    h.sync(0);
    fs::write(release_file(&h, "app.conf"), "port = 99\n").expect("edit");

    let out = h.sync(0);
    assert!(out.contains("1 local change(s) kept"), "{out}");
    assert_eq!(read(&release_file(&h, "app.conf")), "port = 99\n");
    assert_eq!(
        app_sample(&h.metrics_text(), "provision_drift_files"),
        Some(1.0)
    );

    let second = up.commit(
        "main",
        &[("app/etc/app.conf", Some("port = 2\n"))],
        "port 2",
    );
    let out = h.sync(1);
    assert!(out.contains("not deploying"), "{out}");
    assert!(out.contains("would overwrite 1 local change(s)"), "{out}");
    assert_eq!(h.state_json("app")["deployed"]["commit"], first.as_str());
    assert_eq!(read(&release_file(&h, "app.conf")), "port = 99\n");
    let s = h.status_json();
    assert_eq!(s["in_sync"], false);
    assert_eq!(s["upstream"]["commit"], second.as_str());

    let diff = h.run(&["diff", "app", "--upstream"]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    assert!(
        stdout(&diff).lines().any(|l| l == "+port = 2"),
        "{}",
        stdout(&diff)
    );

    // The edit committed upstream resolves the conflict: nothing is lost.
    let third = up.commit(
        "main",
        &[("app/etc/app.conf", Some("port = 99\n"))],
        "adopt",
    );
    let out = h.sync(0);
    assert!(out.contains(&format!("deployed {}", &third[..10])), "{out}");
    assert_eq!(read(&release_file(&h, "app.conf")), "port = 99\n");
    assert_eq!(h.run(&["diff", "app", "--upstream"]).status.code(), Some(0));

    // An explicit discard restores the repository's files once.
    fs::write(release_file(&h, "app.conf"), "port = 7\n").expect("edit");
    h.sync(0);
    assert_eq!(read(&release_file(&h, "app.conf")), "port = 7\n");
    let out = h.run(&["sync", "--discard-drift", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(read(&release_file(&h, "app.conf")), "port = 99\n");
}

#[test]
fn a_frozen_service_shows_how_far_behind_it_is() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let first = seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "action = \"\""));
    h.sync(0);
    let out = h.run(&["freeze", "app", "--reason", "change freeze"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        app_sample(&h.metrics_text(), "provision_frozen"),
        Some(1.0),
        "freeze rewrites the metrics"
    );
    let second = up.commit(
        "main",
        &[("app/etc/app.conf", Some("port = 2\n"))],
        "port 2",
    );
    h.sync(0);

    let s = h.status_json();
    assert_eq!(s["state"], "frozen");
    assert_eq!(s["hold"]["reason"], "change freeze");
    assert_eq!(s["in_sync"], false);
    assert_eq!(s["deployed"]["commit"], first.as_str());
    assert_eq!(s["upstream"]["commit"], second.as_str());
    let table = stdout(&h.run(&["status"]));
    let row = table
        .lines()
        .find(|l| l.starts_with("app "))
        .unwrap_or_else(|| panic!("no row for app:\n{table}"));
    for cell in ["frozen", &first[..10], &second[..10], " no "] {
        assert!(row.contains(cell), "{cell:?} in {row:?}");
    }
    assert!(table.contains("change freeze"), "{table}");

    let m = h.metrics_text();
    assert_eq!(app_sample(&m, "provision_in_sync"), Some(0.0), "{m}");
    let upstream = format!("provision_upstream_commit_info{{service=\"app\",commit=\"{second}\"}}");
    assert_eq!(sample(&m, &upstream), Some(1.0), "{m}");
    assert!(app_sample(&m, "provision_frozen_since_timestamp_seconds").is_some());

    let diff = h.run(&["diff", "app", "--upstream"]);
    assert_eq!(diff.status.code(), Some(1));
    assert!(stdout(&diff).lines().any(|l| l == "+port = 2"));
}

#[test]
fn status_does_not_wait_for_a_busy_service() {
    common::need_git!();
    if !common::require_tool("flock") {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "action = \"\""));
    h.sync(0);
    let mut holder = Command::new("flock")
        .arg(h.state().join("app/lock"))
        .args(["sleep", "60"])
        .spawn()
        .expect("flock");
    std::thread::sleep(Duration::from_millis(200));
    let out = h.run(&["status"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("waiting"), "{}", text(&out));
}

#[test]
fn an_unreadable_state_file_is_shown_everywhere() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "action = \"\""));
    h.sync(0);
    fs::write(h.state().join("app/state.json"), "{ not json").expect("corrupt");
    let s = h.status_json();
    assert_eq!(s["state"], "unknown");
    assert!(s["state_error"]
        .as_str()
        .is_some_and(|e| e.contains("is corrupt")));
    let out = h.sync(1);
    assert!(out.contains("is corrupt"), "{out}");
    assert_eq!(
        app_sample(&h.metrics_text(), "provision_state_readable"),
        Some(0.0)
    );
    assert_eq!(h.run(&["diff", "app"]).status.code(), Some(2));
}

/// The document `status --json` prints is the typed document the fleet
/// reads: it deserializes into `model::status::Document` with every value
/// the JSON shows.
#[test]
fn status_json_reads_back_as_the_typed_document() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("typed");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    h.sync(0);
    let out = h.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let doc: provision::model::status::Document =
        serde_json::from_slice(&out.stdout).expect("the typed document");
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc.schema, 1);
    let s = &doc.services[0];
    assert_eq!(s.name, "app");
    assert_eq!(
        s.deployed.as_ref().map(|d| d.commit.to_string()),
        raw["services"][0]["deployed"]["commit"]
            .as_str()
            .map(str::to_string)
    );
    assert_eq!(
        s.mounts.len(),
        raw["services"][0]["mounts"].as_array().map_or(0, Vec::len)
    );
    assert_eq!(s.in_sync, Some(true));
    assert_eq!(
        serde_json::to_value(&doc).expect("serializes"),
        raw,
        "the typed document writes what it read"
    );
}
