//! Hostile repository content and bad command lines.
//!
//! A repository is not trusted: whatever its trees hold (symlinks aimed
//! outside, a `link` of the wrong kind, submodules, names with newlines or
//! invalid UTF-8, `..` entries, duplicate entries, a `.git` directory, huge
//! files, many files), a pass either deploys it as plain Git content or
//! refuses it with a message naming the path, keeps the previous release,
//! and never writes, mounts or exposes anything outside its own
//! directories. The trees are written as raw objects straight into the bare
//! repository the git daemon serves, since `git add` cannot produce most of
//! them.
//!
//! The command line: unknown service names, malformed revisions and
//! unknown options are usage errors (exit 2); commands that change the
//! machine refuse to run without root.

use testkit as common;

use common::output_text as text;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use git2::{ObjectType, Oid, Repository};
use serde_json::Value;

use common::host::{app_config, read, seed, Host};
use common::{GitDaemon, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_provision");

/// The commit a submodule entry points to; it never exists anywhere, as
/// with a submodule whose repository is not fetched.
const GITLINK: &str = "1234567890abcdef1234567890abcdef12345678";

/// From a `link` directory inside a release
/// (`<host>/state/app/releases/<release>/app/etc`), this many `..` reach the
/// temp directory that holds both the host's directory and the sentinel.
const UP_TO_TEMP: usize = 7;

// ---------------------------------------------------------------------------
// Trees written as raw Git objects
// ---------------------------------------------------------------------------

/// A tree as the repository stores it, written object by object so that
/// anything a crafted repository can hold is possible: any bytes in names,
/// duplicate names, symlinks, submodules.
#[derive(Clone, Debug)]
enum Node {
    File(Vec<u8>),
    Exec(Vec<u8>),
    /// A symlink and its target.
    Link(Vec<u8>),
    /// Entries in the order they should appear among equal names.
    Dir(Vec<(Vec<u8>, Node)>),
    /// A submodule (mode 160000) pointing at [`GITLINK`].
    Gitlink,
    /// A regular file whose blob is already in the repository.
    Blob {
        oid: Oid,
        size: u64,
    },
}

fn file(s: &str) -> Node {
    Node::File(s.as_bytes().to_vec())
}

fn link(target: &str) -> Node {
    Node::Link(target.as_bytes().to_vec())
}

fn dir<N: AsRef<[u8]>>(entries: Vec<(N, Node)>) -> Node {
    Node::Dir(
        entries
            .into_iter()
            .map(|(n, node)| (n.as_ref().to_vec(), node))
            .collect(),
    )
}

/// The content every case starts from: what `app/etc` holds before the
/// hostile commit.
fn baseline_etc() -> Node {
    dir(vec![
        ("app.conf", file("port = 1\n")),
        ("conf.d", dir(vec![("extra.conf", file("x\n"))])),
    ])
}

fn baseline_default() -> Node {
    file("OPTS=-v\n")
}

/// The repository root for the `app` service of `app_config`.
fn root_with(app: Node) -> Node {
    dir(vec![
        ("app", app),
        ("other", dir(vec![("secret.conf", file("not for app\n"))])),
    ])
}

fn app(etc: Node, default: Node) -> Node {
    dir(vec![("etc", etc), ("default", default)])
}

/// Writes `node` into `repo`'s object database; returns its mode and id.
fn write_node(repo: &Repository, node: &Node) -> (&'static str, Oid) {
    let odb = repo.odb().expect("opening the object database");
    let blob = |data: &[u8]| odb.write(ObjectType::Blob, data).expect("writing blob");
    match node {
        Node::File(c) => ("100644", blob(c)),
        Node::Exec(c) => ("100755", blob(c)),
        Node::Link(t) => ("120000", blob(t)),
        Node::Blob { oid, .. } => ("100644", *oid),
        Node::Gitlink => ("160000", Oid::from_str(GITLINK).expect("gitlink id")),
        Node::Dir(entries) => {
            let mut rows: Vec<(Vec<u8>, Vec<u8>)> = entries
                .iter()
                .map(|(name, child)| {
                    let (mode, oid) = write_node(repo, child);
                    // Git orders a tree's entries by name, a subtree's name
                    // compared as if it ended in '/'.
                    let mut key = name.clone();
                    if matches!(child, Node::Dir(_)) {
                        key.push(b'/');
                    }
                    let mut row = format!("{mode} ").into_bytes();
                    row.extend_from_slice(name);
                    row.push(0);
                    row.extend_from_slice(oid.as_bytes());
                    (key, row)
                })
                .collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0)); // stable: duplicates keep their order
            let raw: Vec<u8> = rows.into_iter().flat_map(|(_, row)| row).collect();
            (
                "40000",
                odb.write(ObjectType::Tree, &raw).expect("writing tree"),
            )
        }
    }
}

/// Commits `root` on `main` of `repo` (on top of its head, if any) and
/// moves the branch; returns the commit id. The new objects go into one
/// pack rather than thousands of loose files.
fn push(repo: &Repository, root: &Node, message: &str) -> String {
    static SECONDS: AtomicUsize = AtomicUsize::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as usize)
        .unwrap_or(0);
    let ts = now + SECONDS.fetch_add(1, Ordering::SeqCst);
    let parent = repo.refname_to_id("refs/heads/main").ok();
    // A handle of its own, so that its object database has exactly one
    // in-memory backend: this push's.
    let packed = Repository::open_bare(repo.path()).expect("opening the bare repository");
    let odb = packed.odb().expect("opening the object database");
    let mempack = odb
        .add_new_mempack_backend(1000)
        .expect("adding an in-memory object backend");
    let commit = write_commit(&packed, root, parent, ts, message);
    let mut pack = git2::Buf::new();
    match mempack.dump(&packed, &mut pack) {
        Ok(()) => {
            let mut writer = odb.packwriter().expect("opening a pack writer");
            writer.write_all(&pack).expect("writing the pack");
            writer.commit().expect("indexing the pack");
        }
        Err(_) => {
            // libgit2 packs only trees it can parse; one it cannot (an
            // entry with an empty name) is written as loose objects.
            let loose = write_commit(repo, root, parent, ts, message);
            assert_eq!(loose, commit);
        }
    }
    mempack.reset().expect("emptying the in-memory backend");
    repo.reference("refs/heads/main", commit, true, message)
        .expect("moving main");
    commit.to_string()
}

/// Writes the objects of `root` and a commit of it; returns the commit id.
fn write_commit(
    repo: &Repository,
    root: &Node,
    parent: Option<Oid>,
    ts: usize,
    message: &str,
) -> Oid {
    let (_, tree) = write_node(repo, root);
    let mut raw = format!("tree {tree}\n");
    if let Some(parent) = parent {
        raw.push_str(&format!("parent {parent}\n"));
    }
    raw.push_str(&format!(
        "author {} <{}> {ts} +0000\ncommitter {} <{}> {ts} +0000\n\n{message}\n",
        common::AUTHOR_NAME,
        common::AUTHOR_EMAIL,
        common::COMMITTER_NAME,
        common::COMMITTER_EMAIL
    ));
    repo.odb()
        .and_then(|odb| odb.write(ObjectType::Commit, raw.as_bytes()))
        .expect("writing commit")
}

// ---------------------------------------------------------------------------
// What must never change: the sentinel and the host's own directories
// ---------------------------------------------------------------------------

/// A directory beside the host's, standing in for the rest of the machine:
/// the escape attempts aim at it, and it must never change.
struct Sentinel {
    dir: tempfile::TempDir,
    before: BTreeMap<PathBuf, Facts>,
}

impl Sentinel {
    fn new() -> Sentinel {
        let dir = tempfile::tempdir().expect("creating sentinel dir");
        fs::write(dir.path().join("secret"), "sentinel secret\n").expect("writing sentinel");
        fs::create_dir(dir.path().join("sub")).expect("creating sentinel sub dir");
        fs::write(dir.path().join("sub/keep"), "keep\n").expect("writing sentinel");
        let before = describe_tree(dir.path());
        Sentinel { dir, before }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The sentinel's name in the temp directory, which relative escapes use.
    fn name(&self) -> String {
        self.path()
            .file_name()
            .expect("sentinel name")
            .to_string_lossy()
            .into_owned()
    }

    /// `../` as many times as it takes to leave a link directory of a
    /// release and reach the temp directory, then `rest` in the sentinel.
    fn relative_from_link(&self, rest: &str) -> String {
        format!("{}{}/{rest}", "../".repeat(UP_TO_TEMP), self.name())
    }

    fn absolute(&self, rest: &str) -> String {
        self.path().join(rest).display().to_string()
    }

    fn assert_untouched(&self, case: &str) {
        let now = describe_tree(self.path());
        assert_eq!(
            now, self.before,
            "{case}: something outside the host's directories (the sentinel {}) was created or changed",
            self.path().display()
        );
    }
}

/// What one path is: enough that any write, create, chmod or chown shows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// Blob id of a file's bytes, or a symlink's target.
    content: String,
}

/// Every path under `root` (relative; `""` is `root` itself).
fn describe_tree(root: &Path) -> BTreeMap<PathBuf, Facts> {
    let mut out = BTreeMap::new();
    describe_into(root, root, &mut out);
    out
}

fn describe_into(root: &Path, path: &Path, out: &mut BTreeMap<PathBuf, Facts>) {
    let md =
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let rel = path.strip_prefix(root).expect("under root").to_path_buf();
    let ft = md.file_type();
    let (kind, content) = if ft.is_dir() {
        ("dir", String::new())
    } else if ft.is_symlink() {
        let t = fs::read_link(path).expect("reading symlink");
        ("symlink", format!("{t:?}"))
    } else if ft.is_file() {
        let oid = Oid::hash_file(ObjectType::Blob, path)
            .unwrap_or_else(|e| panic!("hashing {}: {e}", path.display()));
        ("file", oid.to_string())
    } else {
        ("other", String::new())
    };
    out.insert(
        rel,
        Facts {
            kind,
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            content,
        },
    );
    if ft.is_dir() {
        let mut children: Vec<PathBuf> = fs::read_dir(path)
            .unwrap_or_else(|e| panic!("listing {}: {e}", path.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        children.sort();
        for p in children {
            describe_into(root, &p, out);
        }
    }
}

/// Kind, mode and content (not times) of every path of a release, to show
/// it did not change.
fn release_content(root: &Path) -> BTreeMap<PathBuf, (&'static str, u32, String)> {
    describe_tree(root)
        .into_iter()
        .map(|(p, f)| (p, (f.kind, f.mode, f.content)))
        .collect()
}

fn host_dir(h: &Host) -> PathBuf {
    h.config_path()
        .parent()
        .expect("host directory")
        .to_path_buf()
}

/// Everything provision wrote is under the state dir, the metrics dir or
/// the scratch root, and the scratch root holds only the two mount points,
/// empty underneath: nothing went through a mount point into the host.
fn assert_confined(h: &Host, case: &str) {
    let dir = host_dir(h);
    let mut top: Vec<String> = fs::read_dir(&dir)
        .expect("listing host dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    for name in &top {
        assert!(
            ["config.toml", "metrics", "root", "state"].contains(&name.as_str()),
            "{case}: unexpected {name:?} in the host directory: {top:?}"
        );
    }
    let root: Vec<(String, &str, u64)> = describe_tree(&dir.join("root"))
        .into_iter()
        .map(|(p, f)| {
            let size = if f.kind == "dir" { 0 } else { f.size };
            (p.display().to_string(), f.kind, size)
        })
        .collect();
    assert_eq!(
        root,
        vec![
            (String::new(), "dir", 0),
            ("etc".to_string(), "dir", 0),
            ("etc/app".to_string(), "dir", 0),
            ("etc/default".to_string(), "dir", 0),
            ("etc/default/app".to_string(), "file", 0),
        ],
        "{case}: the scratch root holds exactly the two empty mount points"
    );
}

/// Symlinks of `release` that, followed on this machine, lead outside the
/// `link` directory they belong to (`app/etc`).
fn escaping_symlinks(release: &Path) -> Vec<String> {
    let link_dir = release.join("app/etc");
    let Ok(base) = fs::canonicalize(&link_dir) else {
        return Vec::new();
    };
    describe_tree(&link_dir)
        .into_iter()
        .filter(|(_, f)| f.kind == "symlink")
        .filter_map(|(rel, _)| {
            let p = link_dir.join(&rel);
            let resolved = fs::canonicalize(&p).ok()?;
            (!resolved.starts_with(&base)).then(|| {
                format!(
                    "{} -> {:?} resolves to {}",
                    rel.display(),
                    fs::read_link(&p).unwrap_or_default(),
                    resolved.display()
                )
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// One case: a host deploys the baseline, then the hostile commit is pushed
// ---------------------------------------------------------------------------

struct Case {
    label: String,
    h: Host,
    _up: Upstream,
    hostile: String,
    base_deployed: Value,
    base_release: PathBuf,
    base_content: BTreeMap<PathBuf, (&'static str, u32, String)>,
    out: Output,
    /// The peak resident memory of the hostile pass, in KiB.
    peak_kib: u64,
}

/// Deploys the baseline on a fresh host, pushes `hostile_app` (the `app`
/// directory of the hostile commit) and runs a pass.
fn attempt(d: &GitDaemon, label: &str, hostile_app: Node) -> Case {
    attempt_with(d, label, Via::Daemon, |_| hostile_app).0
}

/// How the host reaches the upstream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    /// `git://` through the git daemon (git's upload-pack sends the objects).
    Daemon,
    /// The bare repository's path: libgit2 reads the objects itself, so
    /// objects git's upload-pack would not send still reach provision.
    Path,
}

/// Like [`attempt`], with the hostile `app` directory built by `build`
/// once the repository exists (to put large blobs in it first).
fn attempt_with(
    d: &GitDaemon,
    label: &str,
    via: Via,
    build: impl FnOnce(&Repository) -> Node,
) -> (Case, Node) {
    attempt_configured(d, label, via, "", build)
}

/// Like [`attempt_with`], with `extra` lines in the service's config.
fn attempt_configured(
    d: &GitDaemon,
    label: &str,
    via: Via,
    extra: &str,
    build: impl FnOnce(&Repository) -> Node,
) -> (Case, Node) {
    static REPOS: AtomicUsize = AtomicUsize::new(0);
    let up = d.repo(&format!("r{}", REPOS.fetch_add(1, Ordering::SeqCst)));
    let repo = Repository::open_bare(up.bare()).expect("opening the bare repository");
    push(
        &repo,
        &root_with(app(baseline_etc(), baseline_default())),
        "baseline",
    );
    let url = match via {
        Via::Daemon => up.url(),
        Via::Path => up.bare().display().to_string(),
    };
    let h = Host::new();
    h.write_config(&app_config(&url, extra));
    h.sync(0);
    let base_release = h.deployed("app");
    let base_deployed = h.state_json("app")["deployed"].clone();
    let base_content = release_content(&base_release);

    let hostile_app = build(&repo);
    let hostile = push(&repo, &root_with(hostile_app.clone()), label);
    let (out, peak_kib) = run_measured(&h, &["sync"]);
    let case = Case {
        label: label.to_string(),
        h,
        _up: up,
        hostile,
        base_deployed,
        base_release,
        base_content,
        out,
        peak_kib,
    };
    (case, hostile_app)
}

/// Whether `haystack` (lower-cased) contains one of the `|`-separated
/// alternatives of `needle`.
fn mentions(haystack: &str, needle: &str) -> bool {
    let hay = haystack.to_lowercase();
    needle.split('|').any(|n| hay.contains(&n.to_lowercase()))
}

/// The pass refused the commit: exit 1, a message naming the path and the
/// reason, the previous release still deployed and unchanged, nothing new
/// on disk, nothing outside touched.
fn assert_refused(c: &Case, s: &Sentinel, needles: &[&str]) {
    let case = &c.label;
    s.assert_untouched(case);
    let escapes = escaping_symlinks(&c.h.deployed("app"));
    assert!(
        escapes.is_empty(),
        "{case}: the deployed release exposes paths outside its link: {escapes:?}\n{}",
        text(&c.out)
    );
    let stderr = String::from_utf8_lossy(&c.out.stderr).into_owned();
    assert_eq!(
        c.out.status.code(),
        Some(1),
        "{case}: expected the pass to refuse commit {}\n{}",
        c.hostile,
        text(&c.out)
    );
    for n in needles {
        assert!(
            mentions(&stderr, n),
            "{case}: stderr should say {n:?}:\n{stderr}"
        );
    }
    let state = c.h.state_json("app");
    assert_eq!(
        state["deployed"], c.base_deployed,
        "{case}: the previous release stays deployed"
    );
    assert_eq!(state["last_pass"]["ok"], false, "{case}: {state}");
    let recorded = state["last_pass"]["error"].as_str().unwrap_or_default();
    assert!(
        mentions(recorded, needles[0]),
        "{case}: the state file keeps the reason: {recorded:?}"
    );
    assert_eq!(
        release_content(&c.base_release),
        c.base_content,
        "{case}: the deployed release is unchanged"
    );
    let releases: Vec<String> = fs::read_dir(c.base_release.parent().expect("releases dir"))
        .expect("listing releases")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let base_name = c
        .base_release
        .file_name()
        .expect("release name")
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        releases,
        vec![base_name],
        "{case}: no new or half-written release is left"
    );
    let st = c.h.status_json();
    assert_eq!(st["drift"]["count"], 0, "{case}: {st}");
    assert_confined(&c.h, case);
}

/// The pass deployed the commit: the release holds exactly `hostile_app`
/// under `app`, status sees no drift in it, and nothing escapes.
fn assert_deployed(c: &Case, s: &Sentinel, hostile_app: &Node) {
    let case = &c.label;
    s.assert_untouched(case);
    assert_eq!(
        c.out.status.code(),
        Some(0),
        "{case}: expected commit {} to deploy\n{}",
        c.hostile,
        text(&c.out)
    );
    let state = c.h.state_json("app");
    assert_eq!(state["deployed"]["commit"], c.hostile.as_str(), "{case}");
    let release = c.h.deployed("app");
    assert_tree(&release, &dir(vec![("app", hostile_app.clone())]), case);
    let escapes = escaping_symlinks(&release);
    assert!(
        escapes.is_empty(),
        "{case}: the deployed release exposes paths outside its link: {escapes:?}"
    );
    let st = c.h.status_json();
    assert_eq!(st["drift"]["count"], 0, "{case}: {st}");
    assert_eq!(st["drift"]["error"], Value::Null, "{case}: {st}");
    let diff = c.h.run_mounted(&["diff", "app"]);
    assert_eq!(diff.status.code(), Some(0), "{case}: diff: {}", text(&diff));
    assert_confined(&c.h, case);
}

/// `path` on disk is exactly `node`: kinds, permissions, bytes, symlink
/// targets, and no entry more or less.
fn assert_tree(path: &Path, node: &Node, case: &str) {
    let md = fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{case}: {} missing: {e}", path.display()));
    let mode = md.mode() & 0o7777;
    let shown = path.display();
    match node {
        Node::File(content) | Node::Exec(content) => {
            let want = if matches!(node, Node::Exec(_)) {
                0o755
            } else {
                0o644
            };
            assert!(md.is_file(), "{case}: {shown} should be a regular file");
            assert_eq!(mode, want, "{case}: mode of {shown}");
            let got = fs::read(path).unwrap_or_else(|e| panic!("{case}: reading {shown}: {e}"));
            assert!(
                got == *content,
                "{case}: content of {shown} differs from Git"
            );
        }
        Node::Blob { oid, size } => {
            assert!(md.is_file(), "{case}: {shown} should be a regular file");
            assert_eq!(md.len(), *size, "{case}: size of {shown}");
            let got = Oid::hash_file(ObjectType::Blob, path).expect("hashing file");
            assert_eq!(got, *oid, "{case}: blob id of {shown}");
        }
        Node::Link(target) => {
            assert!(
                md.file_type().is_symlink(),
                "{case}: {shown} should be a symlink"
            );
            let got = fs::read_link(path).expect("reading symlink");
            assert_eq!(
                got.as_os_str().as_bytes(),
                target.as_slice(),
                "{case}: target of {shown}"
            );
        }
        Node::Gitlink => {
            assert!(
                md.is_dir(),
                "{case}: submodule {shown} should be a directory"
            );
            let n = fs::read_dir(path).expect("listing submodule dir").count();
            assert_eq!(n, 0, "{case}: submodule {shown} should be empty");
        }
        Node::Dir(entries) => {
            assert!(md.is_dir(), "{case}: {shown} should be a directory");
            assert_eq!(mode, 0o755, "{case}: mode of {shown}");
            let mut on_disk: Vec<Vec<u8>> = fs::read_dir(path)
                .unwrap_or_else(|e| panic!("{case}: listing {shown}: {e}"))
                .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
                .collect();
            on_disk.sort();
            let mut in_git: Vec<Vec<u8>> = entries.iter().map(|(n, _)| n.clone()).collect();
            in_git.sort();
            assert!(
                on_disk == in_git,
                "{case}: entries of {shown} differ from Git: on disk {:?}, in Git {:?}",
                on_disk
                    .iter()
                    .map(|n| String::from_utf8_lossy(n))
                    .collect::<Vec<_>>(),
                in_git
                    .iter()
                    .map(|n| String::from_utf8_lossy(n))
                    .collect::<Vec<_>>()
            );
            for (name, child) in entries {
                assert_tree(&path.join(OsStr::from_bytes(name)), child, case);
            }
        }
    }
}

/// One named case of a group.
type NamedCase<'a> = (&'a str, Box<dyn FnOnce() + 'a>);

/// A case that pushes `hostile` as the app's tree and expects it refused
/// with every one of `needles` in the message.
fn refusal<'a>(
    d: &'a GitDaemon,
    s: &'a Sentinel,
    label: &'static str,
    hostile: Node,
    needles: &'static [&'static str],
) -> NamedCase<'a> {
    let b: Box<dyn FnOnce() + 'a> = Box::new(move || {
        let c = attempt(d, label, hostile);
        assert_refused(&c, s, needles);
    });
    (label, b)
}

/// Runs every case, reporting all failures at the end instead of stopping
/// at the first, so one run shows the whole picture.
fn run_cases(cases: Vec<NamedCase<'_>>) {
    let mut failed = Vec::new();
    for (label, case) in cases {
        if catch_unwind(AssertUnwindSafe(case)).is_err() {
            failed.push(label.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "failed cases (details above): {failed:#?}"
    );
}

// ---------------------------------------------------------------------------
// Symlinks
// ---------------------------------------------------------------------------

#[test]
fn symlinks_leaving_their_link_are_refused() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    let refuse = |label, hostile, needles| refusal(&d, &s, label, hostile, needles);
    let etc_with = |name: &str, target: String| {
        let mut entries = vec![(name.to_string(), Node::Link(target.into_bytes()))];
        entries.push(("app.conf".to_string(), file("port = 2\n")));
        app(dir(entries), baseline_default())
    };
    run_cases(vec![
        refuse(
            "the link path itself is a symlink to /etc",
            app(link("/etc"), baseline_default()),
            &["app/etc", "symlink|symbolic link"],
        ),
        refuse(
            "the link path itself is a symlink climbing out (../../..)",
            app(link("../../.."), baseline_default()),
            &["app/etc", "symlink|symbolic link"],
        ),
        refuse(
            "a file = true link path is a symlink to a file outside",
            app(
                baseline_etc(),
                Node::Link(s.absolute("secret").into_bytes()),
            ),
            &["app/default", "symlink|symbolic link"],
        ),
        refuse(
            "a symlink inside to /etc/shadow",
            etc_with("shadow", "/etc/shadow".to_string()),
            &["shadow", "/etc/shadow", "outside"],
        ),
        refuse(
            "a symlink inside to an absolute path outside (the sentinel)",
            etc_with("secret", s.absolute("secret")),
            &["secret", "outside"],
        ),
        refuse(
            "a symlink in a subdirectory climbing to ../../../../etc",
            app(
                dir(vec![
                    ("app.conf", file("port = 2\n")),
                    ("sub", dir(vec![("up", link("../../../../etc"))])),
                ]),
                baseline_default(),
            ),
            &["sub/up", "outside"],
        ),
        refuse(
            "a symlink inside climbing to the sentinel (relative)",
            etc_with("secret", s.relative_from_link("secret")),
            &["secret", "outside"],
        ),
        refuse(
            "a symlink to exactly the link's parent (..)",
            etc_with("parent", "..".to_string()),
            &["parent", "outside"],
        ),
    ]);
}

/// `d/up -> ..` stays inside on its own, and so, read lexically, does
/// `esc -> d/up/d/up/d/up/d/up/../../../../../../../SENTINEL/secret`; but
/// each `d/up` lands back on the link's root, so on disk the seven `..`
/// climb out of it and into the rest of the machine.
fn chain(s: &Sentinel) -> (Node, String) {
    let target = format!("{}{}", "d/up/".repeat(4), s.relative_from_link("secret"));
    (dir(vec![("up", link(".."))]), target)
}

#[test]
fn a_symlink_chain_cannot_escape_in_two_hops() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    let (d_dir, target) = chain(&s);
    let hostile = app(
        dir(vec![
            ("app.conf", file("port = 2\n")),
            ("d", d_dir),
            ("esc", Node::Link(target.into_bytes())),
        ]),
        baseline_default(),
    );
    let c = attempt(&d, "a two-hop symlink chain out of the link", hostile);
    assert_refused(&c, &s, &["esc", "outside"]);
}

#[test]
fn a_duplicate_entry_cannot_write_through_a_symlink() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    let (d_dir, target) = chain(&s);
    // Two entries named `esc`: the symlink first, then a regular file. A
    // writer that creates the file by following what is already there
    // would overwrite the sentinel.
    let escaping = app(
        dir(vec![
            ("app.conf", file("port = 2\n")),
            ("d", d_dir),
            ("esc", Node::Link(target.into_bytes())),
            ("esc", file("overwritten by the repository\n")),
        ]),
        baseline_default(),
    );
    // The same with a symlink that is harmless on its own: the second
    // entry still must not be written through it (over `app.conf`).
    let inside = app(
        dir(vec![
            ("app.conf", file("port = 2\n")),
            ("alias", link("app.conf")),
            ("alias", file("written through the symlink\n")),
        ]),
        baseline_default(),
    );
    let (d, s) = (&d, &s);
    run_cases(vec![
        (
            "a duplicate entry behind an escaping symlink",
            Box::new(move || {
                let c = attempt(d, "a duplicate entry behind an escaping symlink", escaping);
                assert_refused(&c, s, &["esc"]);
            }),
        ),
        (
            "a duplicate entry behind an inside symlink",
            Box::new(move || {
                // Its own sentinel: the case above may have spoilt the first.
                let s = Sentinel::new();
                let c = attempt(d, "a duplicate entry behind an inside symlink", inside);
                assert_refused(&c, &s, &["alias"]);
            }),
        ),
    ]);
}

#[test]
fn symlinks_staying_inside_their_link_deploy_as_symlinks() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    let hostile = app(
        dir(vec![
            ("app.conf", file("port = 2\n")),
            ("current", link("app.conf")),
            ("dot", link(".")),
            ("dangling", link("not-in-the-tree")),
            ("loop", link("loop")),
            (
                "a",
                dir(vec![(
                    "b",
                    dir(vec![
                        ("root", link("../..")),
                        ("conf", link("../../app.conf")),
                        ("via", link("../../a/./b/../b/conf")),
                    ]),
                )]),
            ),
        ]),
        baseline_default(),
    );
    let c = attempt(&d, "symlinks pointing inside the link", hostile.clone());
    assert_deployed(&c, &s, &hostile);
    let etc = c.h.deployed("app").join("app/etc");
    assert_eq!(read(&etc.join("current")), "port = 2\n");
    assert_eq!(read(&etc.join("a/b/via")), "port = 2\n");
}

// ---------------------------------------------------------------------------
// The link path of the wrong kind
// ---------------------------------------------------------------------------

#[test]
fn a_link_of_the_wrong_kind_is_refused() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    let refuse = |label, hostile, needles| refusal(&d, &s, label, hostile, needles);
    run_cases(vec![
        refuse(
            "a directory link that is a file",
            app(file("port = 2\n"), baseline_default()),
            &["app/etc", "not a directory"],
        ),
        refuse(
            "a file = true link that is a directory",
            app(baseline_etc(), dir(vec![("OPTS", file("-v\n"))])),
            &["app/default", "not a regular file"],
        ),
        refuse(
            "a directory link that is a submodule",
            app(Node::Gitlink, baseline_default()),
            &["app/etc", "submodule"],
        ),
        refuse(
            "a file = true link that is a submodule",
            app(baseline_etc(), Node::Gitlink),
            &["app/default", "submodule"],
        ),
    ]);

    // The link's parent of the wrong kind: the whole `app` replaced.
    let replace_app = |label: &'static str, app_node: Node| {
        let (d, s) = (&d, &s);
        let b: Box<dyn FnOnce()> = Box::new(move || {
            let c = attempt(d, label, app_node);
            assert_refused(&c, s, &["app/etc", "does not exist"]);
        });
        (label, b)
    };
    run_cases(vec![
        replace_app("the link's parent is a file", file("not a directory\n")),
        // A symlink in the repository is never followed to find a link:
        // `app -> /` must not make `app/etc` mean the host's /etc.
        replace_app("the link's parent is a symlink to /", link("/")),
    ]);
}

// ---------------------------------------------------------------------------
// Submodules, names, sizes
// ---------------------------------------------------------------------------

#[test]
fn submodules_inside_the_link_deploy_as_empty_directories() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    let hostile = app(
        dir(vec![
            ("app.conf", file("port = 2\n")),
            ("vendor", Node::Gitlink),
            ("deeper", dir(vec![("lib", Node::Gitlink)])),
        ]),
        baseline_default(),
    );
    let c = attempt(&d, "submodules inside the link", hostile.clone());
    assert_deployed(&c, &s, &hostile);
}

/// Names a tree may hold and a Linux file system accepts: all are written
/// with exactly these bytes.
fn odd_names() -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = [
        &b"new\nline.conf"[..],
        b"tab\there.conf",
        b"CR\rname",
        b"-rf",
        b"--help",
        b"-",
        b"bad-\xff\xfe.conf",
        b"\xc3\x28",
        b"caf\xc3\xa9",
        b" leading space",
        b"trailing space ",
        b"back\\slash",
        b"glob*?[x]",
        b"quote\"'`$(touch x)",
        b"\x1b[31mred",
        b"...",
        b".hidden",
        b"~",
    ]
    .iter()
    .map(|n| n.to_vec())
    .collect();
    names.push(vec![b'n'; 255]);
    names
}

#[test]
fn odd_names_deploy_byte_for_byte_and_drift_is_tracked() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    let mut entries: Vec<(Vec<u8>, Node)> = odd_names()
        .into_iter()
        .map(|n| {
            let body = format!("{}\n", String::from_utf8_lossy(&n)).into_bytes();
            (n, Node::File(body))
        })
        .collect();
    entries.push((
        b"dir\nwith \xff".to_vec(),
        dir(vec![(&b"-\n\xfe"[..], file("nested\n"))]),
    ));
    entries.push((b"x\n".to_vec(), Node::Exec(b"#!/bin/sh\n".to_vec())));
    entries.push((
        b"sym\nlink".to_vec(),
        Node::Link(b"new\nline.conf".to_vec()),
    ));
    let hostile = app(Node::Dir(entries), baseline_default());
    let c = attempt(
        &d,
        "names with newline, tab, dash, invalid UTF-8, 255 bytes",
        hostile.clone(),
    );
    assert_deployed(&c, &s, &hostile);

    // The manifest really tracks these names: an edit to two of them is
    // drift, and the next pass puts Git's bytes back.
    let etc = c.h.deployed("app").join("app/etc");
    fs::write(etc.join("new\nline.conf"), "edited\n").expect("editing");
    fs::write(
        etc.join(OsStr::from_bytes(b"bad-\xff\xfe.conf")),
        "edited\n",
    )
    .expect("editing");
    let st = c.h.status_json();
    assert_eq!(st["drift"]["count"], 2, "{st}");
    c.h.sync(0);
    assert_eq!(c.h.status_json()["drift"]["count"], 0);
    assert_tree(
        &c.h.deployed("app"),
        &dir(vec![("app", hostile)]),
        "after restoring the edits",
    );
    s.assert_untouched("after restoring the edits");
}

#[test]
fn entry_names_that_are_not_a_single_path_component_are_refused() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    // Git's own tools never write these, but a tree object is just bytes.
    // Each would name a path outside its directory (or none at all).
    let climb = |name: &[u8]| {
        let mut node = dir(vec![("pwned", file("written outside\n"))]);
        node = dir(vec![(s.name().into_bytes(), node)]);
        for _ in 0..UP_TO_TEMP {
            node = dir(vec![(name.to_vec(), node)]);
        }
        node
    };
    let refuse = |label: &'static str,
                  via: Via,
                  bad: Vec<u8>,
                  node: Node,
                  needles: &'static [&'static str]| {
        let (d, s) = (&d, &s);
        let b: Box<dyn FnOnce()> = Box::new(move || {
            let etc = Node::Dir(vec![
                (b"app.conf".to_vec(), file("port = 2\n")),
                (bad, node),
            ]);
            let hostile = app(etc, baseline_default());
            let (c, _) = attempt_with(d, label, via, |_| hostile);
            assert_refused(&c, s, needles);
        });
        (label, b)
    };
    let up = climb(b"..");
    let here = climb(b".");
    let slash = format!("{}{}", "../".repeat(UP_TO_TEMP), s.name()).into_bytes();
    run_cases(vec![
        refuse(
            "an entry named ..",
            Via::Daemon,
            b"..".to_vec(),
            up,
            &["\"..\"", "app/etc"],
        ),
        refuse(
            "an entry named .",
            Via::Daemon,
            b".".to_vec(),
            here,
            &["\".\"", "app/etc"],
        ),
        refuse(
            "an entry whose name contains /",
            Via::Daemon,
            slash,
            dir(vec![("pwned", file("written outside\n"))]),
            &["app/etc", "refusing tree entry"],
        ),
        refuse(
            "an entry with an empty name",
            // git's upload-pack refuses to send such a tree at all, from
            // a daemon or from a local path: the fetch fails, nothing
            // reaches the writer, and the message is git's.
            Via::Path,
            Vec::new(),
            file("nameless\n"),
            &["the server said", "possible repository corruption"],
        ),
        refuse(
            "a name of 256 bytes, longer than a file system allows",
            Via::Daemon,
            vec![b'n'; 256],
            file("long\n"),
            &[
                "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn",
                "too long",
            ],
        ),
    ]);
}

#[test]
fn a_dot_git_directory_is_plain_content_never_run() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    // What a Git that treated this directory as a repository would run.
    let ran = s.path().join("ran");
    let config = format!(
        "[core]\n\tfsmonitor = touch {0}\n\thooksPath = hooks\n[alias]\n\tstatus = !touch {0}\n",
        ran.display()
    );
    let hook = format!("#!/bin/sh\ntouch {}\n", ran.display());
    let dot_git = dir(vec![
        ("HEAD", file("ref: refs/heads/main\n")),
        ("config", Node::File(config.into_bytes())),
        (
            "objects",
            dir(vec![("info", dir(vec![("alternates", file("/\n"))]))]),
        ),
        (
            "refs",
            dir(vec![("heads", dir(vec![("main", file(GITLINK))]))]),
        ),
        (
            "hooks",
            dir(vec![
                ("post-checkout", Node::Exec(hook.clone().into_bytes())),
                ("post-merge", Node::Exec(hook.into_bytes())),
            ]),
        ),
    ]);
    let hostile = app(
        dir(vec![
            ("app.conf", file("port = 2\n")),
            (".git", dot_git.clone()),
            ("sub", dir(vec![(".git", file("gitdir: /\n"))])),
            (".GIT", dir(vec![("config", file("[core]\n"))])),
        ]),
        baseline_default(),
    );
    let c = attempt(&d, "a .git directory inside the link", hostile.clone());
    assert_deployed(&c, &s, &hostile);
    for args in [
        &["status"][..],
        &["history", "app"],
        &["diff", "app", "--upstream"],
    ] {
        let out = c.h.run(args);
        assert!(
            out.status.code().is_some_and(|c| c < 2),
            "{args:?}: {}",
            text(&out)
        );
    }
    c.h.sync(0);
    assert!(!ran.exists(), "nothing in the repository's .git was run");
    s.assert_untouched("after more passes over the .git directory");
}

#[test]
fn a_huge_file_deploys_intact() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    const SIZE: usize = 64 << 20;
    // A repeating pattern whose period (251) is not a power of two, so
    // a misplaced block shows in the blob id.
    let (c, hostile) = attempt_with(&d, "a 64 MiB file", Via::Daemon, |repo| {
        let data: Vec<u8> = (0..SIZE).map(|i| b'a' + (i % 251 % 26) as u8).collect();
        let oid = repo.blob(&data).expect("writing the huge blob");
        app(
            dir(vec![
                ("app.conf", file("port = 2\n")),
                (
                    "huge.bin",
                    Node::Blob {
                        oid,
                        size: SIZE as u64,
                    },
                ),
            ]),
            baseline_default(),
        )
    });
    assert_deployed(&c, &s, &hostile);
}

#[test]
fn ten_thousand_files_in_one_directory_deploy() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    let many: Vec<(String, Node)> = (0..10_000)
        .map(|i| (format!("f{i:05}.conf"), file(&format!("value = {i}\n"))))
        .collect();
    let hostile = app(
        dir(vec![("app.conf", file("port = 2\n")), ("many", dir(many))]),
        baseline_default(),
    );
    let c = attempt(&d, "10,000 files in one directory", hostile.clone());
    assert_deployed(&c, &s, &hostile);
    let n = fs::read_dir(c.h.deployed("app").join("app/etc/many"))
        .expect("listing")
        .count();
    assert_eq!(n, 10_000);
}

// ---------------------------------------------------------------------------
// Limits: what a small pack may cost the machine
// ---------------------------------------------------------------------------

/// A blob of `size` zero bytes written by `git hash-object`, which streams
/// it: neither the test nor git holds it in memory, and it compresses to a
/// few hundred kilobytes.
fn zero_blob(repo: &Repository, size: u64) -> Oid {
    let git_dir = repo.path().display().to_string();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {size} /dev/zero | git --git-dir={git_dir} hash-object -w --stdin"
        ))
        .output()
        .expect("running git hash-object");
    assert!(out.status.success(), "hash-object: {}", text(&out));
    Oid::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("blob id")
}

/// Runs `h`'s provision with `args` through a launcher that reports the
/// peak resident memory of that one process (`wait4`'s rusage); returns
/// the output and the peak in KiB.
fn run_measured(h: &Host, args: &[&str]) -> (Output, u64) {
    const LAUNCHER: &str = "import os, sys\npid = os.fork()\nif pid == 0:\n    os.execvp(sys.argv[1], sys.argv[1:])\n_, st, ru = os.wait4(pid, 0)\nsys.stderr.write('maxrss=%d\\n' % ru.ru_maxrss)\nsys.exit(os.waitstatus_to_exitcode(st))\n";
    let mut c = Command::new("/usr/bin/python3");
    c.args([
        "-c",
        LAUNCHER,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        BIN,
    ])
    .arg("--config")
    .arg(h.config_path())
    .arg("--state-dir")
    .arg(h.state())
    .arg("--metrics-dir")
    .arg(h.metrics_dir())
    .args(["--machine", "test-host"])
    .args(args);
    let mut out = c.output().expect("running the launcher");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let kib = err
        .lines()
        .find_map(|l| l.strip_prefix("maxrss="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss in: {}", text(&out)));
    // What provision itself said, as a user would see it.
    out.stderr = err
        .lines()
        .filter(|l| !l.starts_with("maxrss="))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes();
    (out, kib)
}

/// A 256 MiB blob (a few hundred KiB of pack) is refused by
/// `max_file_size` from its header, never inflated: the fetching pass and
/// the next one stay under 64 MiB of memory, from a git daemon and from a
/// local path alike (which git's upload-pack serves, so the blob is never
/// read into provision to build a pack).
#[test]
fn a_blob_beyond_max_file_size_is_refused_before_it_is_inflated() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    const SIZE: u64 = 256 << 20;
    const PEAK_KIB: u64 = 64 * 1024;
    for via in [Via::Daemon, Via::Path] {
        let (c, _) = attempt_with(&d, "a 256 MiB blob", via, |repo| {
            let oid = zero_blob(repo, SIZE);
            app(
                dir(vec![
                    ("app.conf", file("port = 2\n")),
                    ("huge.bin", Node::Blob { oid, size: SIZE }),
                ]),
                baseline_default(),
            )
        });
        assert_refused(&c, &s, &["app/etc/huge.bin", "256.0 MiB", "max_file_size"]);
        assert!(
            c.peak_kib < PEAK_KIB,
            "{via:?}: peak memory {} KiB fetching a refused 256 MiB blob",
            c.peak_kib
        );
        // The next pass refuses it again, and never holds the blob either.
        let (out, kib) = run_measured(&c.h, &["sync"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("max_file_size"), "{}", text(&out));
        assert!(
            kib < PEAK_KIB,
            "{via:?}: peak memory {kib} KiB for a refused 256 MiB blob"
        );
    }
}

#[test]
fn a_commit_with_more_files_than_max_files_is_refused() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    let many: Vec<(String, Node)> = (0..100_000)
        .map(|i| (format!("f{i:06}"), file("x\n")))
        .collect();
    let hostile = app(
        dir(vec![("app.conf", file("port = 2\n")), ("many", dir(many))]),
        baseline_default(),
    );
    let c = attempt(&d, "100,000 files", hostile);
    assert_refused(&c, &s, &["max_files", "50000"]);
}

#[test]
fn files_adding_up_beyond_max_release_size_are_refused() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    let body = "y".repeat(10 * 1024);
    let files: Vec<(String, Node)> = (0..5)
        .map(|i| (format!("part{i}.conf"), file(&format!("{i}{body}"))))
        .collect();
    let (c, _) = attempt_configured(
        &d,
        "five 10 KiB files",
        Via::Daemon,
        "max_release_size = \"32KiB\"",
        |_| app(dir(files), baseline_default()),
    );
    assert_refused(&c, &s, &["max_release_size", "32.0 KiB"]);
}

#[test]
fn a_download_beyond_max_fetch_bytes_stops_there_and_keeps_the_mirror() {
    common::need_git!();
    let d = GitDaemon::start();
    let s = Sentinel::new();
    let (c, _) = attempt_configured(
        &d,
        "an 8 MiB pack",
        Via::Daemon,
        "max_fetch_bytes = \"1MiB\"",
        |repo| {
            // Incompressible: the pack is as large as the data.
            let mut data = vec![0u8; 8 << 20];
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for b in data.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let oid = repo.blob(&data).expect("writing the blob");
            app(
                dir(vec![
                    ("app.conf", file("port = 2\n")),
                    ("noise.bin", Node::Blob { oid, size: 8 << 20 }),
                ]),
                baseline_default(),
            )
        },
    );
    assert_refused(&c, &s, &["max_fetch_bytes", "1.0 MiB"]);
    let all = text(&c.out);
    assert!(
        !all.contains("rebuil"),
        "the mirror is kept, not rebuilt: {all}"
    );
    // The next pass stops at the limit again, without a second download.
    let again = c.h.run(&["sync"]);
    let all = text(&again);
    assert_eq!(again.status.code(), Some(1), "{all}");
    assert!(
        all.contains("max_fetch_bytes") && !all.contains("rebuil"),
        "{all}"
    );
    let mirror: u64 = c.h.mirrors().iter().map(|m| common::dir_size(m)).sum();
    assert!(mirror < 3 << 20, "no partial pack is kept: {mirror} bytes");
}

// ---------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------

/// A host with `app` deployed at the second of two commits; returns the
/// host, the upstream and both commits.
fn two_commits(d: &GitDaemon) -> (Host, Upstream, String, String) {
    let up = d.repo("cli");
    let first = seed(&up);
    let second = up.commit("main", &[("app/etc/app.conf", Some("port = 2\n"))], "two");
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    h.sync(0);
    (h, up, first, second)
}

fn state_bytes(h: &Host) -> Vec<u8> {
    fs::read(h.state().join("app/state.json")).expect("reading state.json")
}

#[test]
fn unknown_service_names_are_usage_errors() {
    common::need_git!();
    let d = GitDaemon::start();
    let (h, _up, _, second) = two_commits(&d);
    let before = state_bytes(&h);
    let commands: [&[&str]; 11] = [
        &["sync", "nope"],
        &["sync", "app", "nope"],
        &["status", "nope"],
        &["diff", "nope"],
        &["rollback", "nope", "HEAD~1"],
        &["freeze", "nope"],
        &["unfreeze", "nope"],
        &["forward", "nope"],
        &["history", "nope"],
        &["mount", "nope"],
        &["status", "--json", "nope"],
    ];
    for args in commands {
        let out = h.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            err.contains("\"nope\"") && err.contains("known: app"),
            "{args:?}: the message names the unknown service and the known ones:\n{err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?}: nothing on stdout: {}",
            text(&out)
        );
    }
    assert_eq!(state_bytes(&h), before, "no command touched the service");
    assert_eq!(h.state_json("app")["deployed"]["commit"], second.as_str());
}

#[test]
fn malformed_revisions_are_usage_errors() {
    common::need_git!();
    let d = GitDaemon::start();
    let (h, _up, _, second) = two_commits(&d);
    let before = state_bytes(&h);
    for rev in [
        "HEAD~x",
        "HEAD~-1",
        "",
        "../../etc",
        "a\nb",
        "HEAD@{1}",
        "a..b",
        "HEAD~1x",
        "-rf",
        "refs/../x",
        "tag with space",
    ] {
        let out = h.run(&["rollback", "app", "--", rev]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "rollback {rev:?}: {}",
            text(&out)
        );
        assert!(
            err.contains(&format!("{rev:?}")) && err.contains("not a revision"),
            "rollback {rev:?}: the message quotes the revision and says it is malformed:\n{err}"
        );
        assert!(
            err.contains("HEAD~N"),
            "the message lists the accepted forms:\n{err}"
        );
    }
    assert_eq!(
        state_bytes(&h),
        before,
        "no malformed rollback changed anything"
    );
    assert_eq!(h.state_json("app")["deployed"]["commit"], second.as_str());
}

#[test]
fn well_formed_revisions_that_do_not_exist_fail_and_change_nothing() {
    common::need_git!();
    let d = GitDaemon::start();
    let (h, _up, first, second) = two_commits(&d);
    let release = h.deployed("app");
    // Short enough to be a tag rather than a hash, and one hex digit too
    // long for a hash (so also a tag name): well-formed, but absent.
    let cases: [(&str, &str); 6] = [
        ("abc", "tag \"abc\""),
        (
            "0123456789abcdef0123456789abcdef012345678",
            "0123456789abcdef0123456789abcdef012345678",
        ),
        ("deadbeef", "commit deadbeef"),
        (
            "0000000000000000000000000000000000000001",
            "commit 0000000000000000000000000000000000000001",
        ),
        ("HEAD~5", "HEAD~5"),
        ("v9.9.9", "tag \"v9.9.9\""),
    ];
    for (rev, named) in cases {
        let out = h.run(&["rollback", "app", rev]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "rollback {rev}: {}", text(&out));
        assert!(
            err.contains("rollback failed") && err.contains(named),
            "rollback {rev}: the message says which revision was not found:\n{err}"
        );
        let state = h.state_json("app");
        assert_eq!(state["deployed"]["commit"], second.as_str(), "{rev}");
        assert_eq!(state["hold"], Value::Null, "rollback {rev} must not pin");
        assert_eq!(h.deployed("app"), release);
    }
    // The same command with a revision that exists works.
    let out = h.run(&["rollback", "app", "HEAD~1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(h.state_json("app")["deployed"]["commit"], first.as_str());
}

#[test]
fn unknown_options_and_commands_are_usage_errors() {
    common::need_git!();
    let d = GitDaemon::start();
    let (h, _up, _, second) = two_commits(&d);
    let before = state_bytes(&h);
    let cases: [(&[&str], &str); 9] = [
        (&["sync", "--bogus"], "--bogus"),
        (&["--bogus", "status"], "--bogus"),
        (&["frobnicate"], "frobnicate"),
        (&["rollback", "app"], "<REV>"),
        (&["rollback"], "<NAME>"),
        (&["history", "app", "-n", "many"], "many"),
        (&["status", "--json=yes"], "--json"),
        (&["freeze", "app", "--reason"], "--reason"),
        (&[], "Usage"),
    ];
    for (args, named) in cases {
        let out = h.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            err.contains(named),
            "{args:?}: stderr names {named:?}:\n{err}"
        );
    }
    assert_eq!(state_bytes(&h), before);
    assert_eq!(h.state_json("app")["deployed"]["commit"], second.as_str());
}

/// A host laid out in a world-readable directory, so that an unprivileged
/// user can read its config, state and releases.
struct OpenHost {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl OpenHost {
    fn new(url: &str) -> OpenHost {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        // A copy of the binary inside, so that the unprivileged user can
        // run it wherever the build directory is.
        let bin = dir.path().join("provision");
        fs::copy(BIN, &bin).expect("copying the binary");
        let root = dir.path().join("root");
        let config =
            app_config(url, "").replace("local = \"/", &format!("local = \"{}/", root.display()));
        fs::write(dir.path().join("config.toml"), config).expect("writing config");
        OpenHost { dir, bin }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn command(&self, as_nobody: bool, args: &[&str]) -> Output {
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
            c
        } else {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--"]);
            c
        };
        cmd.arg(&self.bin)
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .arg("--state-dir")
            .arg(self.state())
            .arg("--metrics-dir")
            .arg(self.dir.path().join("metrics"))
            .args(["--machine", "test-host"])
            .args(args)
            .output()
            .expect("running provision")
    }
}

#[test]
fn commands_that_change_the_machine_need_root() {
    common::need_git!();
    if !common::require_tool("setpriv") {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("r");
    let head = seed(&up);
    let h = OpenHost::new(&up.url());
    let out = h.command(false, &["sync"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "root's first pass: {}",
        text(&out)
    );
    let state_before = describe_tree(&h.state());

    let changing: [&[&str]; 8] = [
        &["sync"],
        &["sync", "app"],
        &["mount"],
        &["freeze", "app"],
        &["unfreeze", "app"],
        &["rollback", "app", "HEAD"],
        &["forward", "app"],
        &["sync", "--discard-drift", "app"],
    ];
    for args in changing {
        let out = h.command(true, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} as nobody: {}",
            text(&out)
        );
        assert!(
            err.contains("must run as root") && err.contains(&format!("provision {}", args[0])),
            "{args:?} as nobody: the message says the command needs root:\n{err}"
        );
    }
    assert_eq!(
        describe_tree(&h.state()),
        state_before,
        "an unprivileged command changed nothing under the state dir"
    );
    assert!(!h.dir.path().join("metrics/provision.prom.tmp").exists());

    // `check` reads only the config; the state is root's alone (0700):
    // the reading commands say so instead of showing an empty machine.
    let out = h.command(true, &["check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check as nobody: {}",
        text(&out)
    );
    let mode = fs::metadata(h.state()).expect("state dir").mode() & 0o7777;
    assert_eq!(mode, 0o700, "the state dir is root's alone");
    for args in [
        &["status", "--json"][..],
        &["history", "app"][..],
        &["diff", "app"][..],
    ] {
        let out = h.command(true, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} as nobody: {}",
            text(&out)
        );
        assert!(
            err.contains("root's alone") && err.contains(&h.state().display().to_string()),
            "{args:?} as nobody names the state dir and why:\n{err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
    // As root they work.
    let out = h.command(false, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "status as root: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(v["services"][0]["deployed"]["commit"], head.as_str());
    assert_eq!(v["services"][0]["drift"]["count"], 0, "{v}");
    assert_eq!(describe_tree(&h.state()), state_before);
}

/// Escape sequences in a commit's subject and author reach the operator's
/// terminal escaped: `history`, `status` and a pass's own lines show
/// `\u{1b}` where the commit has ESC, never the byte.
#[test]
fn control_characters_in_a_commit_never_reach_the_terminal_raw() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("app");
    seed(&up);
    let repo = Repository::open(up.bare()).expect("the bare repository");
    let head = repo
        .find_reference("refs/heads/main")
        .and_then(|r| r.peel_to_commit())
        .expect("main");
    let tree = head.tree().expect("tree");
    let evil = git2::Signature::new(
        "Mallory \u{1b}]0;owned\u{7}\u{1b}[2J",
        "m@example.net",
        &git2::Time::new(1_900_000_000, 0),
    )
    .expect("signature");
    let subject = "fix \u{1b}[31mred\u{1b}[0m \u{9b}2J\r\rforged line";
    repo.commit(
        Some("refs/heads/main"),
        &evil,
        &evil,
        subject,
        &tree,
        &[&head],
    )
    .expect("the commit");
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    let mut seen = h.sync(0);
    for args in [&["history", "app"][..], &["status"], &["status", "app"]] {
        seen.push_str(&text(&h.run(args)));
    }
    assert!(seen.contains("\\u{1b}[31mred"), "{seen}");
    assert!(seen.contains("Mallory \\u{1b}]0;"), "{seen}");
    for raw in ['\u{1b}', '\u{7}', '\u{9b}', '\r'] {
        assert!(!seen.contains(raw), "{raw:?} shown raw: {seen:?}");
    }
}
