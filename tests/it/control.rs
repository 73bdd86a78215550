//! freeze, unfreeze, rollback, forward and history against a real git
//! daemon, each run of provision in a private mount namespace.

use testkit as common;

use std::fs;

use common::host::{app_config, read, seed, Host};
use common::GitDaemon;

fn out_of(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a command, asserting its exit code; returns stdout+stderr.
fn expect(h: &Host, args: &[&str], code: i32) -> String {
    let o = h.run(args);
    let text = out_of(&o);
    assert_eq!(o.status.code(), Some(code), "provision {args:?}:\n{text}");
    text
}

fn conf(h: &Host) -> String {
    read(&h.deployed("app").join("app/etc/app.conf"))
}

/// A repo whose app.conf says `port = 1` .. `port = n`, one commit each.
fn history_of(up: &common::Upstream, n: usize) -> Vec<String> {
    let mut commits = vec![seed(up)];
    for i in 2..=n {
        commits.push(up.commit(
            "main",
            &[("app/etc/app.conf", Some(&format!("port = {i}\n")))],
            &format!("port {i}"),
        ));
    }
    commits
}

/// A host following `up` (with `extra` config lines) after its first pass.
fn synced(up: &common::Upstream, extra: &str) -> Host {
    let h = Host::new();
    h.write_config(&app_config(&up.url(), extra));
    h.sync(0);
    h
}

#[test]
fn rollback_pins_until_forward() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let commits = history_of(&up, 3);
    let h = synced(&up, "");
    assert_eq!(conf(&h), "port = 3\n");

    let out = expect(&h, &["rollback", "app", "HEAD~1"], 0);
    assert!(
        out.contains(&format!("app: deployed {}", &commits[1][..10])),
        "{out}"
    );
    assert!(out.contains("pinned"), "{out}");
    assert_eq!(conf(&h), "port = 2\n");
    let st = h.state_json("app");
    assert_eq!(st["hold"]["kind"], "pinned");
    assert!(
        st["hold"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("HEAD~1")),
        "{st}"
    );

    // Upstream moves on; passes keep the pin and say so.
    up.commit(
        "main",
        &[("app/etc/app.conf", Some("port = 4\n"))],
        "port 4",
    );
    let out = h.sync(0);
    assert!(out.contains("pinned (rollback to"), "{out}");
    assert!(out.contains("upstream is at"), "{out}");
    assert_eq!(conf(&h), "port = 2\n");

    // HEAD~1 counts from the deployed commit, not from upstream.
    expect(&h, &["rollback", "app", "HEAD~1"], 0);
    assert_eq!(conf(&h), "port = 1\n");

    let out = expect(&h, &["forward", "app"], 0);
    assert!(out.contains("deployed"), "{out}");
    assert_eq!(conf(&h), "port = 4\n");
    assert!(h.state_json("app").get("hold").is_none());
}

#[test]
fn freeze_keeps_the_deployed_commit_and_unfreeze_follows_again() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    history_of(&up, 2);
    let h = synced(&up, "");
    let out = expect(&h, &["freeze", "app", "--reason", "incident 42"], 0);
    assert!(out.contains("app: frozen at"), "{out}");
    up.commit(
        "main",
        &[("app/etc/app.conf", Some("port = 3\n"))],
        "port 3",
    );
    let out = h.sync(0);
    assert!(out.contains("frozen (incident 42)"), "{out}");
    assert_eq!(conf(&h), "port = 2\n");
    assert_eq!(h.state_json("app")["hold"]["reason"], "incident 42");

    expect(&h, &["unfreeze", "app"], 0);
    h.sync(0);
    assert_eq!(conf(&h), "port = 3\n");
}

#[test]
fn rollback_by_hash_and_tag_and_offline_within_kept_releases() {
    common::need_git!();
    let mut d = GitDaemon::start();
    let up = d.repo("r");
    let commits = history_of(&up, 3);
    up.tag("v1", &commits[0]);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "depth = 3"));
    // Deploy each commit so all three releases are kept.
    for c in &commits {
        expect(&h, &["rollback", "app", c], 0);
    }
    assert_eq!(conf(&h), "port = 3\n");
    expect(&h, &["rollback", "app", "v1"], 0);
    assert_eq!(conf(&h), "port = 1\n");

    d.stop();
    // A short hash of a kept release: no network needed.
    expect(&h, &["rollback", "app", &commits[1][..8]], 0);
    assert_eq!(conf(&h), "port = 2\n");
    // Even with the mirror gone.
    for m in h.mirrors() {
        fs::remove_dir_all(&m).expect("removing mirror");
    }
    expect(&h, &["rollback", "app", &commits[2][..8]], 0);
    assert_eq!(conf(&h), "port = 3\n");
}

/// A tag is the server's name: `rollback TAG` deploys what the server
/// names now, refuses a tag it deleted, and without the server says what
/// the tag named last instead of deploying a cached answer.
#[test]
fn rollback_to_a_tag_follows_the_server_and_never_a_stale_copy() {
    common::need_git!();
    let mut d = GitDaemon::start();
    let up = d.repo("r");
    let commits = history_of(&up, 3);
    up.tag("v1", &commits[0]);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "depth = 3"));
    h.sync(0);
    expect(&h, &["rollback", "app", "v1"], 0);
    assert_eq!(conf(&h), "port = 1\n");

    // The server moves the tag: the rollback goes where it points now.
    up.tag("v1", &commits[1]);
    expect(&h, &["rollback", "app", "v1"], 0);
    assert_eq!(conf(&h), "port = 2\n");

    // The server deletes it: refused, nothing changes.
    common::run(common::git_cmd(up.bare()).args(["update-ref", "-d", "refs/tags/v1"]));
    let out = expect(&h, &["rollback", "app", "v1"], 1);
    assert!(out.contains("tag \"v1\" does not exist"), "{out}");
    assert_eq!(conf(&h), "port = 2\n");

    // Without the server, the last answer is named, not deployed.
    up.tag("v1", &commits[0]);
    expect(&h, &["rollback", "app", "HEAD"], 0);
    expect(&h, &["rollback", "app", "v1"], 0);
    expect(&h, &["rollback", "app", &commits[2]], 0);
    d.stop();
    let out = expect(&h, &["rollback", "app", "v1"], 1);
    assert!(
        out.contains(&format!("it named {} when last fetched", &commits[0][..10])),
        "{out}"
    );
    assert_eq!(conf(&h), "port = 3\n");
}

#[test]
fn rollback_beyond_the_local_depth_fetches_while_the_server_is_up_and_fails_cleanly_when_down() {
    common::need_git!();
    let mut d = GitDaemon::start();
    let up = d.repo("r");
    let commits = history_of(&up, 8);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), "depth = 2"));
    h.sync(0);
    assert_eq!(
        common::run(
            std::process::Command::new("git")
                .arg("-C")
                .arg(&h.mirrors()[0])
                .args(["rev-list", "--count", "main"])
        ),
        "2"
    );

    d.stop();
    let before = h.state_json("app");
    let out = expect(&h, &["rollback", "app", "HEAD~5"], 1);
    assert!(out.contains("HEAD~5 is not available offline"), "{out}");
    assert!(out.contains("nothing changed"), "{out}");
    assert!(out.contains("127.0.0.1"), "the server is named: {out}");
    assert_eq!(h.state_json("app"), before, "state untouched");
    assert_eq!(conf(&h), "port = 8\n", "deployment untouched");

    d.start_again();
    let out = expect(&h, &["rollback", "app", "HEAD~5"], 0);
    assert!(out.contains(&commits[2][..10]), "{out}");
    assert_eq!(conf(&h), "port = 3\n");
    expect(&h, &["rollback", "app", &commits[0]], 0);
    assert_eq!(conf(&h), "port = 1\n");
}

#[test]
fn bad_revisions_and_unknown_commits_are_clear_errors() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    history_of(&up, 2);
    let h = synced(&up, "");
    let out = expect(&h, &["rollback", "app", "HEAD~x"], 2);
    assert!(out.contains("not a revision"), "{out}");
    let out = expect(&h, &["rollback", "nope", "HEAD~1"], 2);
    assert!(out.contains("no service named \"nope\""), "{out}");
    let out = expect(&h, &["rollback", "app", "deadbeef"], 1);
    assert!(
        out.contains("commit deadbeef is not in the history"),
        "{out}"
    );
    let out = expect(&h, &["rollback", "app", "no-such-tag"], 1);
    assert!(out.contains("tag \"no-such-tag\" does not exist"), "{out}");
    let out = expect(&h, &["rollback", "app", "HEAD~50"], 1);
    assert!(out.contains("HEAD~50 is not in the history"), "{out}");
}

#[test]
fn history_marks_deployed_upstream_and_kept_releases() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let commits = history_of(&up, 3);
    let h = synced(&up, "");
    expect(&h, &["rollback", "app", "HEAD~1"], 0);

    let out = expect(&h, &["history", "app"], 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with(&format!("^ {}", &commits[2][..10])),
        "{out}"
    );
    assert!(lines[0].contains("[upstream, release kept]"), "{out}");
    assert!(
        lines[1].starts_with(&format!("* {}", &commits[1][..10])) && lines[1].contains("port 2"),
        "{out}"
    );
    assert!(
        lines[2].contains("seed") && !lines[2].contains("release kept"),
        "{out}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&expect(&h, &["history", "app", "--json"], 0))
            .expect("history --json parses");
    assert_eq!(json[1]["commit"], commits[1].as_str());
    assert_eq!(json[1]["deployed"], true);
    assert_eq!(json[0]["upstream"], true);
    assert_eq!(json[2]["offline"], true, "in the mirror");
    assert_eq!(json[2]["release"], false);
}

#[test]
fn state_survives_a_deleted_mirror_and_corrupt_state_is_reported_not_reset() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    history_of(&up, 2);
    let h = synced(&up, "");
    expect(&h, &["freeze", "app"], 0);
    for m in h.mirrors() {
        fs::remove_dir_all(&m).expect("removing mirror");
    }
    up.commit(
        "main",
        &[("app/etc/app.conf", Some("port = 3\n"))],
        "port 3",
    );
    let out = h.sync(0);
    assert!(out.contains("frozen"), "{out}");
    assert_eq!(conf(&h), "port = 2\n");

    let state = h.state().join("app/state.json");
    fs::write(&state, "{ truncated").expect("corrupting state");
    let out = h.sync(1);
    assert!(
        out.contains("is corrupt") && out.contains("state.json"),
        "{out}"
    );
    assert_eq!(read(&state), "{ truncated", "not silently reset");
}

#[test]
fn concurrent_rollback_and_sync_leave_a_consistent_state() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let commits = history_of(&up, 3);
    let h = synced(&up, "");
    std::thread::scope(|s| {
        let syncs = s.spawn(|| {
            (0..10)
                .map(|_| h.run(&["sync"]).status.code())
                .collect::<Vec<_>>()
        });
        for i in 0..10 {
            let rev = if i % 2 == 0 {
                "HEAD~1"
            } else {
                commits[2].as_str()
            };
            let o = h.run(&["rollback", "app", rev]);
            assert_eq!(o.status.code(), Some(0), "{}", out_of(&o));
        }
        let codes = syncs.join().expect("sync thread");
        assert!(codes.iter().all(|c| *c == Some(0)), "{codes:?}");
    });
    // Whatever the interleaving: the state parses, names an existing
    // release, and that release holds the commit it is named after.
    let st = h.state_json("app");
    let commit = st["deployed"]["commit"]
        .as_str()
        .expect("deployed commit")
        .to_string();
    assert!(commits.contains(&commit));
    assert_eq!(st["hold"]["kind"], "pinned");
    let expected = format!(
        "port = {}\n",
        commits
            .iter()
            .position(|c| *c == commit)
            .map_or(0, |i| i + 1)
    );
    assert_eq!(conf(&h), expected);
    assert!(
        fs::read_dir(h.state().join("app/releases"))
            .expect("releases")
            .all(|e| !e
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .starts_with('.')),
        "no half-written release left"
    );
}

#[test]
fn a_command_waits_for_a_running_pass_and_says_so() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    history_of(&up, 2);
    let h = synced(&up, "");
    // Another process (here flock(1), standing in for a timer run) holds
    // the service lock for a second.
    let lock = h.state().join("app/lock");
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "1"])
        .spawn()
        .expect("starting flock");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = expect(&h, &["rollback", "app", "HEAD~1"], 0);
    assert!(
        out.contains("waiting for service app: another provision process holds"),
        "{out}"
    );
    assert_eq!(conf(&h), "port = 1\n");
    holder.wait().expect("flock exits");
}
