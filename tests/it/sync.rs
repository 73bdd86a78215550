//! `provision sync` and `provision check` against a real git daemon: what
//! an operator sees on disk, on stdout/stderr and in exit codes.

use testkit as common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::host::{app_config, read, seed, Host};
use common::GitDaemon;

fn rev_count(repo: &Path, rev: &str) -> usize {
    let out = common::run(
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["rev-list", "--count", rev]),
    );
    out.parse().expect("rev-list count")
}

/// Requests for upload-pack the daemon logged for `repo`: one per fetch.
fn fetches_logged(d: &GitDaemon, repo: &str) -> usize {
    let log = fs::read_to_string(d.log_path()).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("upload-pack") && l.contains(&format!("{repo}.git")))
        .count()
}

#[test]
fn first_sync_materializes_only_the_services_paths() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let head = seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &head[..10])),
        "{out}"
    );
    let rel = h.deployed("app");
    assert!(rel
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(&head)));
    assert_eq!(read(&rel.join("app/etc/app.conf")), "port = 1\n");
    assert_eq!(read(&rel.join("app/etc/conf.d/extra.conf")), "x\n");
    assert_eq!(read(&rel.join("app/default")), "OPTS=-v\n");
    assert!(
        !rel.join("other").exists(),
        "paths of no service are not materialized"
    );
    assert_eq!(h.state_json("app")["upstream"]["commit"], head.as_str());
    assert_eq!(h.state_json("app")["last_pass"]["ok"], true);

    let again = h.sync(0);
    assert!(
        again.contains(&format!("app: up to date at {}", &head[..10])),
        "{again}"
    );
}

#[test]
fn a_pushed_change_becomes_a_new_release_and_old_ones_are_pruned_to_depth() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "depth = 2"));
    h.sync(0);
    let first = h.deployed("app");
    let mut last = String::new();
    for i in 2..=4 {
        last = up.commit(
            "main",
            &[("app/etc/app.conf", Some(&format!("port = {i}\n")))],
            "bump",
        );
        let out = h.sync(0);
        assert!(out.contains(&format!("deployed {}", &last[..10])), "{out}");
    }
    let rel = h.deployed("app");
    assert_eq!(read(&rel.join("app/etc/app.conf")), "port = 4\n");
    assert!(rel.to_string_lossy().contains(&last));
    let kept = fs::read_dir(h.state().join("app/releases"))
        .expect("releases")
        .count();
    assert_eq!(kept, 2, "depth = 2 keeps two releases");
    assert!(!first.exists(), "the oldest release was pruned");
}

#[test]
fn the_mirror_is_shallow_to_the_configured_depth() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    up.commit_many("main", 50);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "depth = 3"));
    h.sync(0);
    let mirrors = h.mirrors();
    assert_eq!(mirrors.len(), 1);
    assert!(
        mirrors[0].join("shallow").exists(),
        "the mirror is a shallow repository"
    );
    assert_eq!(rev_count(&mirrors[0], "main"), 3);

    up.commit_many("main", 5);
    h.sync(0);
    assert_eq!(
        rev_count(&mirrors[0], "main"),
        3,
        "a later fetch keeps the depth bound"
    );
}

#[test]
fn disk_used_does_not_grow_with_upstream_history_length() {
    common::need_git!();
    let d = GitDaemon::start();
    let mut sizes = Vec::new();
    for (name, n) in [("short", 10), ("long", 10_000)] {
        let up = d.repo(name);
        seed(&up);
        up.commit_many("main", n);
        let h = Host::new();
        h.write_config(&app_config(&up.url(), "depth = 3"));
        h.sync(0);
        sizes.push(common::dir_size(&h.state()));
        assert!(
            rev_count(up.bare(), "main") > n,
            "upstream really has the history"
        );
    }
    let (short, long) = (sizes[0], sizes[1]);
    // Same depth, same tree: equal up to object compression noise.
    assert!(
        long <= short + short / 5 + 8192,
        "10 commits: {short} bytes, 10000 commits: {long} bytes"
    );
}

#[test]
fn services_sharing_an_upstream_fetch_it_once_per_pass() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("shared");
    seed(&up);
    let h = Host::new();
    let two = format!(
        "{}\n{}",
        app_config(&up.url(), "name = \"one\""),
        app_config(&up.url(), "name = \"two\"")
            .replace("/etc/app", "/etc/app2")
            .replace("/etc/default/app", "/etc/default/app2")
    );
    h.write_config(&two);
    h.sync(0);
    assert_eq!(
        h.mirrors().len(),
        1,
        "one mirror for one (upstream, branch)"
    );
    // One connection, for both services together: the ref check and the
    // download (protocol v2 asks both on the same connection).
    assert_eq!(fetches_logged(&d, "shared"), 1, "{}", d.log_tail());
    assert!(h.deployed("one").exists() && h.deployed("two").exists());
    h.sync(0);
    // Nothing changed: a single ref check, no download.
    assert_eq!(fetches_logged(&d, "shared"), 2, "{}", d.log_tail());
}

#[test]
fn a_force_push_to_unrelated_history_converges() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    h.sync(0);
    let new = up.force_push_unrelated(
        "main",
        &[("app/etc/app.conf", "rewritten\n"), ("app/default", "D\n")],
        "rewrite",
    );
    let out = h.sync(0);
    assert!(out.contains(&format!("deployed {}", &new[..10])), "{out}");
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "rewritten\n"
    );
    let amended = up.amend("main", &[("app/etc/app.conf", Some("amended\n"))], "amend");
    h.sync(0);
    assert!(h.deployed("app").to_string_lossy().contains(&amended));
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "amended\n"
    );
}

#[test]
fn switching_branch_in_the_config_converges_and_drops_the_old_mirror() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    up.commit(
        "canary",
        &[("app/etc/app.conf", Some("canary\n"))],
        "canary",
    );
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    h.sync(0);
    let old_mirror = h.mirrors();
    h.write_config(&app_config(&up.url(), "branch = \"canary\""));
    h.sync(0);
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "canary\n"
    );
    let now = h.mirrors();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, old_mirror, "the main-branch mirror was removed");
}

#[test]
fn changing_the_dirs_list_rebuilds_the_release_for_the_same_commit() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let head = seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    h.sync(0);
    let before = h.deployed("app");
    let cfg = app_config(&up.url(), "").replace("link = \"app/etc\"", "link = \"other\"");
    h.write_config(&cfg);
    let out = h.sync(0);
    assert!(out.contains("deployed"), "{out}");
    let after = h.deployed("app");
    assert_ne!(before, after);
    assert!(
        after.to_string_lossy().contains(&head),
        "same commit, new release"
    );
    assert_eq!(read(&after.join("other/secret.conf")), "not for app\n");
    assert!(!after.join("app/etc").exists());
}

#[test]
fn an_unreachable_server_fails_the_pass_and_keeps_the_last_good_release() {
    common::need_git!();
    let mut d = GitDaemon::start();
    let up = d.repo("r");
    let head = seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "timeout = 5"));
    h.sync(0);
    let good = h.deployed("app");
    d.stop();
    let next = up.commit("main", &[("app/etc/app.conf", Some("port = 2\n"))], "bump");
    let out = h.sync(1);
    assert!(out.contains("pass failed, last good release kept"), "{out}");
    assert!(
        out.contains(&up.url()),
        "the error names the upstream: {out}"
    );
    assert_eq!(h.deployed("app"), good);
    assert_eq!(read(&good.join("app/etc/app.conf")), "port = 1\n");
    let st = h.state_json("app");
    assert_eq!(st["last_pass"]["ok"], false);
    assert!(
        st["last_pass"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("127.0.0.1")),
        "{st}"
    );
    assert_eq!(st["deployed"]["commit"], head.as_str());

    d.start_again();
    h.sync(0);
    assert!(h.deployed("app").to_string_lossy().contains(&next));
    assert_eq!(h.state_json("app")["last_pass"]["ok"], true);
}

#[test]
fn a_deleted_branch_is_named_in_the_error() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    up.commit("feature", &[("app/etc/app.conf", Some("f\n"))], "feature");
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "branch = \"feature\""));
    h.sync(0);
    up.delete_branch("feature");
    let out = h.sync(1);
    assert!(out.contains("branch \"feature\" does not exist"), "{out}");
    assert!(
        !out.contains("rebuil"),
        "a missing branch is not a broken mirror: {out}"
    );
    assert_eq!(read(&h.deployed("app").join("app/etc/app.conf")), "f\n");
}

#[test]
fn a_corrupt_mirror_is_rebuilt_automatically() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    h.sync(0);
    let mirror = h.mirrors().remove(0);
    // Truncate every object pack and drop the refs.
    for e in fs::read_dir(mirror.join("objects/pack"))
        .expect("packs")
        .flatten()
    {
        fs::write(e.path(), b"").expect("truncating pack");
    }
    fs::remove_dir_all(mirror.join("refs")).expect("removing refs");
    let next = up.commit(
        "main",
        &[("app/etc/app.conf", Some("after corruption\n"))],
        "bump",
    );
    let out = h.sync(0);
    assert!(out.contains("mirror rebuilt"), "{out}");
    assert!(h.deployed("app").to_string_lossy().contains(&next));
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "after corruption\n"
    );
}

#[test]
fn a_missing_link_path_fails_the_pass_with_its_name() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    h.sync(0);
    up.commit("main", &[("app/default", None)], "drop default");
    let out = h.sync(1);
    assert!(
        out.contains("\"app/default\" does not exist in the repository"),
        "{out}"
    );
    assert_eq!(
        read(&h.deployed("app").join("app/default")),
        "OPTS=-v\n",
        "last good release kept"
    );
}

#[test]
fn a_local_upstream_is_served_by_gits_upload_pack_shallow_like_any_server() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    up.commit_many("main", 20);
    let h = Host::new();
    h.write_config(&app_config(&up.file_url(), "depth = 2"));
    let out = h.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!text.contains("fetched in full"), "{text}");
    h.sync(0);
    let mirror = h.mirrors().remove(0);
    assert!(mirror.join("shallow").exists(), "a shallow mirror");
    assert_eq!(rev_count(&mirror, "main"), 2);
    up.commit_many("main", 3);
    h.sync(0);
    assert_eq!(rev_count(&mirror, "main"), 2, "the depth holds");
    assert_eq!(
        common::run(common::git_cmd(&mirror).args(["rev-parse", "main"])),
        up.head("main")
    );
}

#[test]
fn check_lists_this_machines_services_or_every_error() {
    let h = Host::new();
    h.write_config(&format!(
        "{}{}",
        app_config("git://127.0.0.1/r.git", ""),
        app_config("git://127.0.0.1/r.git", "name = \"elsewhere\"")
            .replace("test-host", "other-host")
    ));
    let out = h.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("2 service(s) in total, 1 for machine test-host"),
        "{text}"
    );
    assert!(text.contains("/etc/app <- app/etc"), "{text}");
    assert!(!text.contains("elsewhere"));

    h.write_config(&app_config("http://h/r.git", "depth = 0\nbogus = 1"));
    let out = h.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("3 errors in config"), "{err}");
    for key in ["`upstream`", "`depth`", "`bogus`"] {
        assert!(err.contains(key), "missing {key} in {err}");
    }
    assert!(
        err.contains("config.toml:"),
        "file and line are named: {err}"
    );
}

#[test]
fn unknown_service_names_are_usage_errors() {
    let h = Host::new();
    h.write_config(&app_config("git://127.0.0.1/r.git", ""));
    let out = h.run(&["sync", "nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no service named \"nope\"") && err.contains("known: app"),
        "{err}"
    );
}

#[test]
fn a_server_that_never_answers_times_out_with_a_clear_error() {
    // A listener that accepts connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a silent listener");
    let port = listener.local_addr().expect("listener address").port();
    let _silent = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let h = Host::new();
    h.write_config(&app_config(
        &format!("git://127.0.0.1:{port}/r.git"),
        "timeout = 2",
    ));
    let out = h.sync(1);
    assert!(out.contains("pass failed"), "{out}");
    assert!(
        out.to_lowercase().contains("timed out") || out.contains("timeout"),
        "{out}"
    );
    assert_eq!(h.state_json("app")["last_pass"]["ok"], false);
}

/// Bytes of the pack files of the mirror at `repo`.
fn pack_bytes(repo: &Path) -> u64 {
    fs::read_dir(repo.join("objects/pack"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A mirror's packs never hold more than one fetch may bring: each push
/// here adds a pack of about 55 KB, and once they add up past
/// `max_fetch_bytes` the mirror is fetched afresh (compacted), so packs
/// do not pile up to `MAX_PACKS` times the limit.
#[test]
fn a_mirrors_packs_stay_within_max_fetch_bytes() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("growing");
    seed(&up);
    let h = Host::new();
    const LIMIT: u64 = 300_000;
    h.write_config(&app_config(
        &up.url(),
        &format!("max_fetch_bytes = {LIMIT}"),
    ));
    h.sync(0);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut noise = |n: usize| -> String {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                format!("{:02x}", state as u8)
            })
            .collect()
    };
    let mut rebuilt = 0;
    for i in 0..12 {
        up.commit(
            "main",
            &[("app/etc/noise.conf", Some(&noise(50_000)))],
            &format!("noise {i}"),
        );
        let out = h.sync(0);
        if out.contains("mirror rebuilt: its packs hold") {
            rebuilt += 1;
        }
        let mirror = h.mirrors().remove(0);
        let bytes = pack_bytes(&mirror);
        assert!(
            bytes <= LIMIT,
            "push {i}: the mirror's packs hold {bytes} bytes, more than max_fetch_bytes {LIMIT}: {out}"
        );
        assert_eq!(
            read(&h.deployed("app").join("app/etc/noise.conf")).len(),
            100_000,
            "push {i} deployed"
        );
    }
    assert!(rebuilt > 0, "the mirror was compacted at least once");
}

/// `sync --json` prints one document per pass on stdout: each service's
/// outcome, its notes by kind, and a failure as data (kind, stage,
/// commit) while the failure's line still goes to stderr and the exit
/// code says it failed.
#[test]
fn sync_json_prints_the_pass_as_one_document() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let good = seed(&up);
    let h = Host::new();
    let refuse = h.path().join("refuse");
    h.write_config(&app_config(
        &up.url(),
        &format!("validate = \"test ! -e {}\"", refuse.display()),
    ));
    let doc = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}): {}",
                common::output_text(out)
            )
        })
    };

    let first = h.run(&["sync", "--json"]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        common::output_text(&first)
    );
    let j = doc(&first);
    assert_eq!(
        (j["schema"].as_u64(), j["ok"].as_bool()),
        (Some(1), Some(true)),
        "{j}"
    );
    assert_eq!(j["machine"], "test-host");
    let app = &j["services"][0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["outcome"], "deployed", "{app}");
    assert_eq!(app["to"], good.as_str());
    assert!(app["from"].is_null() && app["failure"].is_null(), "{app}");
    assert!(
        app["notes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["kind"] == "mount")),
        "the mounts are noted: {app}"
    );

    let again = doc(&h.run(&["sync", "--json"]));
    assert_eq!(again["services"][0]["outcome"], "up-to-date", "{again}");

    let bad = up.commit("main", &[("app/etc/app.conf", Some("bad\n"))], "bad");
    fs::write(&refuse, "").expect("writing the refusal");
    let refused = h.run(&["sync", "--json"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        common::output_text(&refused)
    );
    let j = doc(&refused);
    assert_eq!(j["ok"], false);
    let f = &j["services"][0]["failure"];
    assert_eq!(j["services"][0]["outcome"], "failed");
    assert_eq!(
        (&f["kind"], &f["stage"]),
        (&"rejected".into(), &"validate".into()),
        "{f}"
    );
    assert_eq!(f["commit"], bad.as_str());
    assert_eq!(
        j["services"][0]["serving"],
        good.as_str(),
        "the last good release serves"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("at validate"),
        "the failure is told on stderr: {stderr}"
    );
}

/// `upstream` as a list: with the first server down, a pass deploys from
/// the next one, says so, and status, JSON and metrics name the upstream
/// used; with every one down, the pass fails naming each and the last
/// good release stays.
#[test]
fn a_dead_first_upstream_is_passed_over_for_the_next() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let head = seed(&up);
    let dead = format!("git://127.0.0.1:{}/r.git", common::free_port());
    let h = Host::new();
    let config = |urls: &[&str]| {
        app_config(&up.url(), "").replace(
            &format!("upstream = \"{}\"", up.url()),
            &format!(
                "upstream = [{}]",
                urls.iter()
                    .map(|u| format!("\"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    h.write_config(&config(&[&dead, &up.url()]));
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &head[..10])),
        "{out}"
    );
    assert!(out.contains(&format!("fetched from {}", up.url())), "{out}");
    let status = h.status_json();
    assert_eq!(status["upstream_url"], up.url().as_str(), "{status}");
    let metrics = fs::read_to_string(h.metrics_dir().join("provision.prom")).unwrap_or_default();
    assert!(
        metrics.contains(&format!(
            "provision_fetched_from_info{{service=\"app\",upstream=\"{}\"}} 1",
            up.url()
        )),
        "{metrics}"
    );

    let dead2 = format!("git://127.0.0.1:{}/r.git", common::free_port());
    h.write_config(&config(&[&dead, &dead2]));
    up.commit("main", &[("app/etc/app.conf", Some("port = 2\n"))], "bump");
    let out = h.sync(1);
    assert!(out.contains("no upstream could be fetched"), "{out}");
    assert!(
        out.contains(&dead) && out.contains(&dead2),
        "each upstream is named: {out}"
    );
    assert!(
        h.deployed("app").to_string_lossy().contains(&head),
        "the last good release stays"
    );
}
