//! `provision plan` on real repositories (a git daemon's, cloned into a
//! local checkout): a change under one service's link lists only its
//! machines, a config change adding and removing a service, a broken head
//! config (exit 2 naming the key), an unsigned head with signers given,
//! a secret changed (never its content), and base == head (exit 0).

use testkit as common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::GitDaemon;

const BIN: &str = env!("CARGO_BIN_EXE_provision");

fn config(url: &str, with_db: bool, with_cache: bool) -> String {
    let mut c = format!(
        "[global]\nupstream = \"{url}\"\n\n[[services]]\nmachine = [\"web1\", \"web2\"]\nservice = \"nginx\"\nname = \"web\"\n\
         action = \"reload\"\nrollout = \"2h\"\ncanary = [\"web1\"]\n\
         dirs = [ {{ local = \"/etc/nginx\", link = \"web\", decrypt = true }} ]\n"
    );
    if with_db {
        c.push_str("\n[[services]]\nmachine = \"db1\"\nservice = \"postgresql\"\nname = \"db\"\ndirs = [ { local = \"/etc/postgresql\", link = \"db\" } ]\n");
    }
    if with_cache {
        c.push_str("\n[[services]]\nmachine = \"cache1\"\nservice = \"redis\"\nname = \"cache\"\ndirs = [ { local = \"/etc/redis\", link = \"cache\" } ]\n");
    }
    c
}

fn git(dir: &Path, args: &[&str]) -> String {
    common::run(common::git_cmd(dir).args(args))
}

/// Writes `files` into the checkout and commits them on its current branch.
fn commit(dir: &Path, files: &[(&str, &str)], msg: &str) -> String {
    for (p, text) in files {
        let path = dir.join(p);
        fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.net",
            "commit",
            "-q",
            "-m",
            msg,
        ],
    );
    git(dir, &["rev-parse", "HEAD"])
}

fn plan(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("plan")
        .arg("--repo")
        .arg(dir)
        .args(args)
        .output()
        .expect("provision plan");
    (out.status.code().unwrap_or(-1), common::output_text(&out))
}

/// A config repository served by a git daemon, and a checkout of it.
struct Served {
    _daemon: GitDaemon,
    up: common::Upstream,
    /// The seed commit on main.
    seeded: String,
    /// Holds the checkout (and room for other files).
    work: tempfile::TempDir,
    dir: std::path::PathBuf,
}

/// Seeds main with the config (db's service or not), `web/nginx.conf`
/// and `files`, and clones it.
fn served(with_db: bool, files: &[(&str, &str)]) -> Served {
    let daemon = GitDaemon::start();
    let up = daemon.repo("config");
    let config = config(&up.url(), with_db, false);
    let mut all = vec![
        ("provision/config.toml", Some(config.as_str())),
        ("web/nginx.conf", Some("worker_processes 1;\n")),
    ];
    all.extend(files.iter().map(|(p, t)| (*p, Some(*t))));
    let seeded = up.commit("main", &all, "seed");
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("checkout");
    common::run(
        Command::new("git")
            .args(["clone", "-q", &up.url()])
            .arg(&dir),
    );
    Served {
        _daemon: daemon,
        up,
        seeded,
        work,
        dir,
    }
}

#[test]
fn plan_lists_what_a_branch_changes_for_whom() {
    common::need_git!();
    let secret = "-----BEGIN AGE ENCRYPTED FILE-----\nAAAA\n-----END AGE ENCRYPTED FILE-----\n";
    let Served {
        _daemon,
        up,
        seeded,
        work,
        dir,
    } = served(
        true,
        &[
            ("web/site.key.age", secret),
            ("db/postgresql.conf", "port = 5432\n"),
        ],
    );

    // base == head: nothing changes, exit 0.
    let (code, out) = plan(&dir, &["--base", "HEAD"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing changes"), "{out}");

    // A change under web/ on a branch: web1 and web2 only; the secret is
    // named, never shown.
    git(&dir, &["checkout", "-q", "-b", "tune"]);
    commit(
        &dir,
        &[
            ("web/nginx.conf", "worker_processes 4;\n"),
            (
                "web/site.key.age",
                "-----BEGIN AGE ENCRYPTED FILE-----\nBBBB\n-----END AGE ENCRYPTED FILE-----\n",
            ),
        ],
        "tune nginx",
    );
    let (code, out) = plan(&dir, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("plan {}", &seeded[..10])),
        "the base is the merge base with origin/main: {out}"
    );
    assert!(
        out.contains("web1: web: 2 file(s); then reload; canary: at its next pass"),
        "{out}"
    );
    assert!(
        out.contains("web2: web: 2 file(s); then reload; staged over 2h"),
        "{out}"
    );
    assert!(out.contains("modified: /etc/nginx/nginx.conf"), "{out}");
    assert!(out.contains("secret changed: /etc/nginx/site.key"), "{out}");
    assert!(!out.contains("db1"), "db's files did not change: {out}");
    let (_, md) = plan(&dir, &["--format", "markdown"]);
    assert!(
        md.contains("| web1 | web | 2 | reload |") && md.contains("<details>"),
        "{md}"
    );
    assert!(
        md.contains("+worker_processes 4;") && !md.contains("BBBB"),
        "{md}"
    );
    let (_, json) = plan(&dir, &["--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("plan JSON");
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["services"].as_array().map(Vec::len), Some(2));
    assert_eq!(doc["services"][0]["files"][1]["secret"], true, "{json}");
    assert!(doc["services"][0]["files"][1]["diff"].is_null());

    // A config change: db removed, cache added, web's action changed.
    let changed =
        config(&up.url(), false, true).replace("action = \"reload\"", "action = \"restart\"");
    commit(
        &dir,
        &[
            ("provision/config.toml", &changed),
            ("cache/redis.conf", "maxmemory 1gb\n"),
        ],
        "config",
    );
    let (code, out) = plan(&dir, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("config: added cache1: cache"), "{out}");
    assert!(out.contains("config: removed db1: db"), "{out}");
    assert!(out.contains("config: web1: web: action changed"), "{out}");
    assert!(out.contains("cache1: cache: 1 file(s)"), "{out}");

    // An unsigned head, with signers given.
    common::ssh_keygen(&work.path().join("signer"));
    let signers = work.path().join("allowed_signers");
    fs::write(
        &signers,
        format!(
            "ops@example.net {}\n",
            common::public_key(&work.path().join("signer.pub"))
        ),
    )
    .expect("allowed signers");
    let (code, out) = plan(
        &dir,
        &[
            "--allowed-signers",
            &signers.display().to_string(),
            "--base",
            "HEAD~1",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOT signed by an allowed key"), "{out}");

    // A broken head config: exit 2, naming the key.
    let broken = changed.replace("action = \"restart\"", "action = \"explode\"");
    commit(&dir, &[("provision/config.toml", &broken)], "broken");
    let (code, out) = plan(&dir, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("key `action`") && out.contains("does not check"),
        "{out}"
    );

    // The same through the daemon's URL (cloned), base == head.
    let (code, out) = Command::new(BIN)
        .args([
            "plan",
            "--repo",
            &up.url(),
            "--base",
            "main",
            "--head",
            "main",
        ])
        .output()
        .map(|o| (o.status.code().unwrap_or(-1), common::output_text(&o)))
        .expect("plan of a URL");
    assert_eq!(code, 0, "{out}");
}

/// The CI examples parse as YAML, and the provision commands they run do
/// what the examples expect on a pull request's checkout.
#[test]
fn the_ci_examples_parse_and_their_commands_run() {
    common::need_git!();
    if !common::require_tool("python3") {
        return;
    }
    let examples = common::project_root().join("examples/ci");
    let files: Vec<_> = ["github-actions.yml", "gitlab-ci.yml", "forgejo-actions.yml"]
        .iter()
        .map(|f| examples.join(f))
        .collect();
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml\nfor f in sys.argv[1:]: yaml.safe_load(open(f))",
        ])
        .args(&files)
        .output()
        .expect("python3");
    assert!(out.status.success(), "YAML: {}", common::output_text(&out));
    for f in &files {
        let text = fs::read_to_string(f).expect("example");
        assert!(
            text.contains("provision --config provision/config.toml --machine ci check")
                && text.contains("provision plan --repo . --base \"origin/")
                && text.contains("--head HEAD --format markdown > plan.md"),
            "{}",
            f.display()
        );
    }
    // Bound whole: the daemon and the checkout live as long as the test.
    let repo = served(true, &[("db/postgresql.conf", "port = 5432\n")]);
    let dir = repo.dir.clone();
    git(&dir, &["checkout", "-q", "-b", "pr"]);
    commit(&dir, &[("db/postgresql.conf", "port = 5433\n")], "db port");
    let check = Command::new(BIN)
        .current_dir(&dir)
        .args([
            "--config",
            "provision/config.toml",
            "--machine",
            "ci",
            "check",
        ])
        .output()
        .expect("check");
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        common::output_text(&check)
    );
    let planned = Command::new(BIN)
        .current_dir(&dir)
        .args([
            "plan",
            "--repo",
            ".",
            "--base",
            "origin/main",
            "--head",
            "HEAD",
            "--format",
            "markdown",
        ])
        .output()
        .expect("plan");
    let md = String::from_utf8_lossy(&planned.stdout);
    assert_eq!(
        planned.status.code(),
        Some(1),
        "{}",
        common::output_text(&planned)
    );
    assert!(
        md.starts_with("### provision plan") && md.contains("| db1 | db | 1 |"),
        "{md}"
    );
}

/// A pull request that names a file with terminal escapes, or writes them
/// into a file, gets none of them into plan's output (a CI log, a
/// reviewer's terminal).
#[test]
fn a_hostile_file_name_or_content_puts_no_escape_into_the_plan() {
    common::need_git!();
    let repo = served(false, &[]);
    let dir = repo.dir.clone();
    git(&dir, &["checkout", "-q", "-b", "evil"]);
    commit(
        &dir,
        &[
            ("web/x\u{1b}]0;owned\u{7}.conf", "a\n"),
            (
                "web/nginx.conf",
                "worker_processes 1;\n\u{1b}[2J\u{1b}[31mcleared\n",
            ),
        ],
        "evil",
    );
    for format in ["text", "markdown", "json"] {
        let (code, out) = plan(&dir, &["--format", format]);
        assert_eq!(code, 1, "{out}");
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}'),
            "{format}: {out:?}"
        );
        assert!(out.contains("owned"), "the file is still listed: {out}");
    }
}
