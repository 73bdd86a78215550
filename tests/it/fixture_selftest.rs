//! Self-test of the shared integration-test fixture in `tests/common/mod.rs`.

use testkit as common;

use std::fs;
use std::path::Path;
use std::time::Instant;

use common::{dir_size, git_cmd, run, try_run, GitDaemon};

fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("provision-selftest-")
        .tempdir()
        .expect("creating scratch temp dir")
}

/// `git ls-remote URL [REF]` through the hermetic git environment; panics on failure.
fn ls_remote(url: &str, refname: Option<&str>) -> String {
    let scratch = scratch_dir();
    let mut cmd = git_cmd(scratch.path());
    cmd.args(["ls-remote", url]);
    if let Some(r) = refname {
        cmd.arg(r);
    }
    run(&mut cmd)
}

fn show(bare: &Path, spec: &str) -> String {
    run(git_cmd(bare).args(["show", spec]))
}

#[test]
fn commit_writes_nested_files_and_daemon_serves_them() {
    if !common::require_tool("git") {
        return;
    }
    if !common::require_tool("git-daemon") {
        return;
    }
    let daemon = GitDaemon::start();
    let up = daemon.repo("demo");
    assert_eq!(up.bare(), daemon.base().join("demo.git"));
    assert_eq!(
        up.url(),
        format!("git://127.0.0.1:{}/demo.git", daemon.port())
    );
    assert_eq!(up.url(), daemon.url("demo"));
    assert_eq!(up.file_url(), format!("file://{}", up.bare().display()));

    let c1 = up.commit(
        "main",
        &[
            ("README", Some("hello\n")),
            ("etc/app/deep/config.toml", Some("x = 1\n")),
        ],
        "first",
    );
    assert_eq!(c1.len(), 40, "full hash expected, got {c1:?}");
    assert_eq!(up.head("main"), c1);
    assert_eq!(show(up.bare(), "main:etc/app/deep/config.toml"), "x = 1");

    let c2 = up.commit(
        "main",
        &[
            ("README", None),
            ("etc/app/deep/config.toml", Some("x = 2\n")),
        ],
        "second",
    );
    assert_ne!(c1, c2);
    assert_eq!(
        run(git_cmd(up.bare()).args(["rev-parse", "main^"])),
        c1,
        "second commit must have the first as parent"
    );
    let files = run(git_cmd(up.bare()).args(["ls-tree", "-r", "--name-only", "main"]));
    assert_eq!(files, "etc/app/deep/config.toml");

    // ls-remote through the daemon sees the head.
    let listing = ls_remote(&up.url(), None);
    assert!(
        listing.contains(&format!("{c2}\trefs/heads/main")),
        "ls-remote output lacks main={c2}:\n{listing}\n--- daemon log ---\n{}",
        daemon.log_tail()
    );

    // A shallow clone through the daemon works and has the content.
    let scratch = scratch_dir();
    let clone = scratch.path().join("clone");
    run(git_cmd(scratch.path())
        .args(["clone", "-q", "--depth", "1", "--branch", "main", &up.url()])
        .arg(&clone));
    assert_eq!(
        fs::read_to_string(clone.join("etc/app/deep/config.toml"))
            .expect("reading file from shallow clone"),
        "x = 2\n"
    );
    assert_eq!(
        run(git_cmd(&clone).args(["rev-list", "--count", "HEAD"])),
        "1"
    );
    assert_eq!(
        run(git_cmd(&clone).args(["rev-parse", "--is-shallow-repository"])),
        "true"
    );

    // An empty commit is allowed and yields a new hash.
    let c3 = up.commit("main", &[], "empty");
    assert_ne!(c3, c2);
}

#[test]
fn new_branch_starts_from_bare_head_and_tags_work() {
    if !common::require_tool("git") {
        return;
    }
    if !common::require_tool("git-daemon") {
        return;
    }
    let daemon = GitDaemon::start();
    let up = daemon.repo("nested/branches");
    assert!(up.bare().ends_with("nested/branches.git"));
    let m = up.commit("main", &[("a", Some("A"))], "on main");
    let f = up.commit("feature/x", &[("b", Some("B"))], "on feature");
    assert_eq!(run(git_cmd(up.bare()).args(["rev-parse", "feature/x^"])), m);
    assert_eq!(
        run(git_cmd(up.bare()).args(["ls-tree", "-r", "--name-only", "feature/x"])),
        "a\nb"
    );
    // main is untouched, and going back to it does not carry feature's files.
    let m2 = up.commit("main", &[("c", Some("C"))], "main again");
    assert_eq!(
        run(git_cmd(up.bare()).args(["ls-tree", "-r", "--name-only", "main"])),
        "a\nc"
    );
    assert_eq!(up.head("feature/x"), f);

    up.tag("v1", "main");
    up.tag("v0", &m);
    let tags = ls_remote(&up.file_url(), None);
    assert!(tags.contains(&format!("{m2}\trefs/tags/v1")), "{tags}");
    assert!(tags.contains(&format!("{m}\trefs/tags/v0")), "{tags}");
    let via_daemon = ls_remote(&up.url(), Some("refs/tags/v1"));
    assert_eq!(via_daemon, format!("{m2}\trefs/tags/v1"));
}

#[test]
fn commit_many_grows_history_fast() {
    if !common::require_tool("git") {
        return;
    }
    if !common::require_tool("git-daemon") {
        return;
    }
    let daemon = GitDaemon::start();
    let up = daemon.repo("history");
    let base = up.commit("main", &[("keep/me.txt", Some("kept\n"))], "base");

    let t = Instant::now();
    let head = up.commit_many("main", 10_000);
    let elapsed = t.elapsed();
    eprintln!("commit_many(10_000) took {elapsed:?}");
    assert!(
        elapsed.as_secs() < 30,
        "commit_many(10_000) too slow: {elapsed:?}"
    );

    assert_eq!(up.head("main"), head);
    assert_ne!(head, base);
    assert_eq!(
        run(git_cmd(up.bare()).args(["rev-list", "--count", "main"])),
        "10001"
    );
    // Existing tree kept, counter present; every commit changes the counter.
    assert_eq!(show(up.bare(), "main:keep/me.txt"), "kept");
    assert_eq!(show(up.bare(), "main:history/counter"), "10000");
    assert_eq!(show(up.bare(), "main~1:history/counter"), "9999");
    assert_eq!(
        run(git_cmd(up.bare()).args(["merge-base", "--is-ancestor", &base, "main"])),
        ""
    );

    // Continues counting, and ordinary commits build on top of it.
    up.commit_many("main", 5);
    assert_eq!(show(up.bare(), "main:history/counter"), "10005");
    let after = up.commit("main", &[("keep/me.txt", Some("changed\n"))], "after");
    assert_eq!(
        run(git_cmd(up.bare()).args(["rev-list", "--count", &after])),
        "10007"
    );
    assert_eq!(show(up.bare(), "main:history/counter"), "10005");

    // commit_many on a missing branch starts from HEAD (main).
    let side = up.commit_many("side", 3);
    assert_eq!(
        run(git_cmd(up.bare()).args(["rev-list", "--count", &side])),
        "10010"
    );

    // And the daemon serves a depth-1 fetch of the long history.
    let scratch = scratch_dir();
    let clone = scratch.path().join("clone");
    run(git_cmd(scratch.path())
        .args(["clone", "-q", "--depth", "1", &up.url()])
        .arg(&clone));
    assert_eq!(
        run(git_cmd(&clone).args(["rev-list", "--count", "HEAD"])),
        "1"
    );
}

#[test]
fn force_push_unrelated_has_no_common_ancestor() {
    if !common::require_tool("git") {
        return;
    }
    if !common::require_tool("git-daemon") {
        return;
    }
    let daemon = GitDaemon::start();
    let up = daemon.repo("rewrite");
    up.commit("main", &[("old.txt", Some("old\n"))], "one");
    let old = up.commit("main", &[("old2.txt", Some("old2\n"))], "two");

    let new = up.force_push_unrelated("main", &[("fresh/new.txt", "new\n")], "unrelated root");
    assert_ne!(new, old);
    assert_eq!(up.head("main"), new);
    assert_eq!(
        run(git_cmd(up.bare()).args(["ls-tree", "-r", "--name-only", "main"])),
        "fresh/new.txt"
    );
    assert_eq!(
        run(git_cmd(up.bare()).args(["rev-list", "--count", "main"])),
        "1"
    );
    assert_eq!(
        try_run(git_cmd(up.bare()).args(["merge-base", &old, &new])),
        None,
        "merge-base must find no common ancestor"
    );
    let listing = ls_remote(&up.url(), Some("refs/heads/main"));
    assert_eq!(listing, format!("{new}\trefs/heads/main"));

    // Regular commits continue on top of the new root.
    let next = up.commit("main", &[("fresh/more.txt", Some("more\n"))], "more");
    assert_eq!(run(git_cmd(up.bare()).args(["rev-parse", "main^"])), new);
    assert_eq!(
        run(git_cmd(up.bare()).args(["ls-tree", "-r", "--name-only", &next])),
        "fresh/more.txt\nfresh/new.txt"
    );
}

#[test]
fn amend_rewrites_last_commit() {
    if !common::require_tool("git") {
        return;
    }
    if !common::require_tool("git-daemon") {
        return;
    }
    let daemon = GitDaemon::start();
    let up = daemon.repo("amend");
    let first = up.commit("main", &[("a", Some("1"))], "first");
    let second = up.commit("main", &[("b", Some("2"))], "second");
    let amended = up.amend(
        "main",
        &[("b", Some("3")), ("c", Some("4"))],
        "second, amended",
    );
    assert_ne!(amended, second);
    assert_eq!(up.head("main"), amended);
    assert_eq!(run(git_cmd(up.bare()).args(["rev-parse", "main^"])), first);
    assert_eq!(show(up.bare(), "main:b"), "3");
    assert_eq!(
        run(git_cmd(up.bare()).args(["log", "-1", "--format=%s", "main"])),
        "second, amended"
    );
    // Amending without any change still gives a new commit.
    let again = up.amend("main", &[], "second, amended");
    assert_ne!(again, amended);
    assert_eq!(run(git_cmd(up.bare()).args(["rev-parse", "main^"])), first);
}

#[test]
fn stop_and_start_again_on_same_port() {
    if !common::require_tool("git") {
        return;
    }
    if !common::require_tool("git-daemon") {
        return;
    }
    let mut daemon = GitDaemon::start();
    let up = daemon.repo("updown");
    let head = up.commit("main", &[("f", Some("x"))], "c");
    let port = daemon.port();
    assert!(ls_remote(&up.url(), None).contains(&head));

    daemon.stop();
    assert!(!daemon.is_running());
    let scratch = scratch_dir();
    let down = try_run(git_cmd(scratch.path()).args(["ls-remote", &up.url()]));
    assert_eq!(
        down, None,
        "ls-remote must fail while the daemon is stopped"
    );

    // Repos can still be changed while the server is down.
    let head2 = up.commit("main", &[("f", Some("y"))], "while down");

    daemon.start_again();
    assert!(daemon.is_running());
    assert_eq!(daemon.port(), port, "start_again must reuse the port");
    assert_eq!(up.url(), daemon.url("updown"));
    let listing = ls_remote(&up.url(), Some("refs/heads/main"));
    assert_eq!(listing, format!("{head2}\trefs/heads/main"));

    // A second cycle works as well.
    daemon.stop();
    daemon.start_again();
    assert!(ls_remote(&up.url(), None).contains(&head2));
}

#[test]
fn delete_branch_removes_it_from_ls_remote() {
    if !common::require_tool("git") {
        return;
    }
    if !common::require_tool("git-daemon") {
        return;
    }
    let daemon = GitDaemon::start();
    let up = daemon.repo("branches");
    let main = up.commit("main", &[("m", Some("m"))], "m");
    let feat = up.commit("feature", &[("f", Some("f"))], "f");
    assert_eq!(
        ls_remote(&up.url(), Some("refs/heads/feature")),
        format!("{feat}\trefs/heads/feature")
    );

    up.delete_branch("feature");
    assert_eq!(up.head_opt("feature"), None);
    assert_eq!(ls_remote(&up.url(), Some("refs/heads/feature")), "");
    assert_eq!(
        ls_remote(&up.url(), Some("refs/heads/main")),
        format!("{main}\trefs/heads/main")
    );

    // Re-creating the deleted branch starts from main again.
    let again = up.commit("feature", &[("g", Some("g"))], "g");
    assert_eq!(
        run(git_cmd(up.bare()).args(["rev-parse", "feature^"])),
        main
    );
    assert_ne!(again, feat);
}

#[test]
fn two_daemons_run_side_by_side() {
    if !common::require_tool("git") {
        return;
    }
    if !common::require_tool("git-daemon") {
        return;
    }
    let d1 = GitDaemon::start();
    let d2 = GitDaemon::start();
    assert_ne!(d1.port(), d2.port());
    let u1 = d1.repo("same");
    let u2 = d2.repo("same");
    let h1 = u1.commit("main", &[("x", Some("1"))], "one");
    let h2 = u2.commit("main", &[("x", Some("2"))], "two");
    assert!(ls_remote(&u1.url(), None).contains(&h1));
    assert!(ls_remote(&u2.url(), None).contains(&h2));
}

#[test]
fn dir_size_counts_regular_files_only() {
    if !common::require_tool("git") {
        return;
    }
    let dir = scratch_dir();
    let root = dir.path();
    fs::create_dir_all(root.join("a/b")).expect("creating nested dirs");
    fs::write(root.join("top"), vec![0u8; 100]).expect("writing top");
    fs::write(root.join("a/b/deep"), vec![0u8; 23]).expect("writing deep");
    let outside = scratch_dir();
    fs::write(outside.path().join("big"), vec![0u8; 10_000]).expect("writing big");
    std::os::unix::fs::symlink(outside.path(), root.join("a/link-to-dir"))
        .expect("creating dir symlink");
    std::os::unix::fs::symlink(outside.path().join("big"), root.join("link-to-file"))
        .expect("creating file symlink");
    assert_eq!(dir_size(root), 123);
    assert_eq!(dir_size(&root.join("a")), 23);
    assert_eq!(dir_size(&root.join("missing")), 0);
}
