//! Local users against root's work.
//!
//! provision runs as root and writes, chowns and mounts on behalf of a
//! service `user`. Each test here is an attack by a real unprivileged
//! account (`daemon`, uid 1, as the service user; `nobody` as any other
//! local user), run with `setpriv` against the built binary: a racer that
//! swaps directories for symlinks while releases are written, symlinks
//! planted above a mount point and at the names of temp files, secrets read
//! from the state directory. Each checks that a sentinel outside is
//! untouched (content, owner, mode, no new files) and that the pass either
//! fails with a message naming the path or succeeds without following the
//! planted link.

use testkit as common;

use common::output_report as text;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::host::{app_config, seed, Host};
use common::GitDaemon;

/// The service user of these tests, and another local account.
const DAEMON: u32 = 1;
const NOBODY: u32 = 65534;
/// Debian's interpreter, reachable by every account (a per-user shim in
/// root's home would not be).
const PYTHON: &str = "/usr/bin/python3";

fn ready() -> bool {
    common::require_tool("git")
        && common::require_tool("git-daemon")
        && common::require_tool("setpriv")
        && (Path::new(PYTHON).exists() || common::require_tool("python3-at-/usr/bin/python3"))
}

/// A command run as `uid` (its primary group, no others).
fn as_user(uid: u32, program: &str) -> Command {
    let gid = if uid == NOBODY { 65534 } else { uid };
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "--", program]);
    c
}

/// A host whose directory every account may traverse (as /var/lib is),
/// so that only provision's own modes stand between a user and its files.
fn open_host() -> Host {
    let h = Host::new();
    fs::set_permissions(h.path(), fs::Permissions::from_mode(0o755)).expect("chmod host dir");
    h
}

/// Facts about every path below a directory, to prove it unchanged.
type Facts = BTreeMap<PathBuf, (u32, u32, u32, Vec<u8>)>;

/// A root-owned directory standing in for the rest of the machine (think
/// `/etc/apt/apt.conf.d`): the attacks aim at it, and it must never change.
struct Sentinel {
    dir: PathBuf,
    before: Facts,
}

impl Sentinel {
    fn new(h: &Host, name: &str) -> Sentinel {
        let dir = h.path().join(name);
        fs::create_dir_all(&dir).expect("sentinel dir");
        fs::write(dir.join("keep.conf"), "root's own\n").expect("sentinel file");
        fs::set_permissions(dir.join("keep.conf"), fs::Permissions::from_mode(0o640))
            .expect("chmod");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let before = facts(&dir);
        Sentinel { dir, before }
    }

    fn assert_untouched(&self, case: &str) {
        assert_eq!(
            facts(&self.dir),
            self.before,
            "{case}: the sentinel {} changed",
            self.dir.display()
        );
    }
}

fn facts(dir: &Path) -> Facts {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let md = fs::symlink_metadata(&p).expect("lstat");
        let content = if md.is_file() {
            fs::read(&p).expect("read")
        } else {
            Vec::new()
        };
        if md.is_dir() {
            for e in fs::read_dir(&p).expect("list") {
                todo.push(e.expect("entry").path());
            }
        }
        out.insert(p, (md.uid(), md.gid(), md.mode(), content));
    }
    out
}

/// The racer: as the service user, watch the releases directory with
/// inotify and, for every directory root creates below it, exchange it at
/// once with a symlink to the target (`renameat2(RENAME_EXCHANGE)`), so
/// that root's next write by path lands in the target. Prints how many
/// watches it could not place and how many swaps it made.
const RACER: &str = r#"
import ctypes, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
IN_CREATE, IN_ISDIR, RENAME_EXCHANGE, AT_FDCWD = 0x100, 0x40000000, 2, -100
root, target, seconds, stop = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
fd = libc.inotify_init1(os.O_NONBLOCK)
paths, denied, swapped = {}, 0, 0
def watch(p):
    global denied
    wd = libc.inotify_add_watch(fd, p.encode(), IN_CREATE)
    if wd < 0:
        denied += 1
    else:
        paths[wd] = p
end = time.time() + seconds
while time.time() < end and not os.path.exists(stop):
    if not paths:
        watch(root)
        if not paths:
            time.sleep(0.01)
            continue
    try:
        buf = os.read(fd, 65536)
    except BlockingIOError:
        time.sleep(0.0002)
        continue
    i = 0
    while i < len(buf):
        wd, mask, _, n = struct.unpack_from("iIII", buf, i)
        name = buf[i + 16:i + 16 + n].rstrip(b"\0").decode(errors="replace")
        i += 16 + n
        base = paths.get(wd)
        if base is None or not mask & IN_ISDIR:
            continue
        p = os.path.join(base, name)
        watch(p)
        link = p + ".racer"
        try:
            os.symlink(target, link)
        except OSError:
            continue
        if libc.renameat2(AT_FDCWD, p.encode(), AT_FDCWD, link.encode(), RENAME_EXCHANGE) == 0:
            swapped += 1
print("denied", denied, "swapped", swapped)
"#;

fn start_racer(watch: &Path, target: &Path, seconds: u32, stop: &Path) -> Child {
    as_user(DAEMON, PYTHON)
        .args(["-c", RACER])
        .arg(watch)
        .arg(target)
        .arg(seconds.to_string())
        .arg(stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the racer")
}

/// 300 files in a few directories: a release takes long enough to write
/// for the racer to act between two of root's calls.
fn many_files(round: usize) -> Vec<(String, Option<String>)> {
    (0..300)
        .map(|i| {
            (
                format!("app/etc/d{}/f{i}.conf", i % 6),
                Some(format!("round {round} file {i}\n")),
            )
        })
        .collect()
}

#[test]
fn the_service_user_cannot_race_the_release_writer() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("race");
    seed(&up);
    let h = open_host();
    h.write_config(&writable(&app_config(&up.url(), "user = \"daemon\"")));
    let sentinel = Sentinel::new(&h, "apt.conf.d");
    h.sync(0);
    let releases = h.state().join("app/releases");
    let stop = h.path().join("stop-racer");
    let racer = start_racer(&releases, &sentinel.dir, 120, &stop);
    for round in 0..8 {
        let files = many_files(round);
        let refs: Vec<(&str, Option<&str>)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_deref()))
            .collect();
        up.commit("main", &refs, &format!("round {round}"));
        h.sync(0);
        sentinel.assert_untouched(&format!("pass {round}"));
    }
    fs::write(&stop, "").expect("stopping the racer");
    let out = racer.wait_with_output().expect("racer");
    let said = String::from_utf8_lossy(&out.stdout);
    sentinel.assert_untouched("after the race");
    assert!(
        said.contains("swapped 0"),
        "the racer swapped nothing: {said}"
    );
    assert!(
        !said.contains("denied 0 "),
        "the racer could not even watch the releases: {said}"
    );
    // What the user can and cannot reach.
    let mode = fs::metadata(h.state()).expect("state").mode() & 0o777;
    assert_eq!(mode, 0o700, "the state dir is root's alone");
    let deployed = h.deployed("app");
    let conf = deployed.join("app/etc/d0/f0.conf");
    let md = fs::metadata(&conf).expect("deployed file");
    assert_eq!(
        (md.uid(), md.mode() & 0o777),
        (DAEMON, 0o644),
        "a writable dir is the user's"
    );
    let ls = as_user(DAEMON, "ls").arg(&releases).output().expect("ls");
    assert!(!ls.status.success(), "the user cannot list the releases");
}

#[test]
fn a_mount_point_under_a_user_writable_directory_is_refused() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("mnt");
    seed(&up);
    let h = open_host();
    let cfg = |extra: &str| {
        format!(
            r#"
[[services]]
machine = "test-host"
service = "app"
upstream = "{}"
dirs = [{{ local = "/srv/app/etc/nginx", link = "app/etc"{extra} }}]
"#,
            up.url()
        )
    };
    let app = h.root().join("srv/app");
    fs::create_dir_all(&app).expect("mkdir");
    chown(&app, Some(DAEMON), Some(DAEMON)).expect("chown");
    let real = Sentinel::new(&h, "root/realetc/nginx");
    let planted = common::run(
        as_user(DAEMON, "ln")
            .arg("-s")
            .arg(h.root().join("realetc"))
            .arg(app.join("etc")),
    );
    assert_eq!(planted, "");

    // Refused: a user owns a directory above the mount point.
    h.write_config(&cfg(""));
    let out = h.script("$P sync || echo exit=$?; grep -c realetc /proc/self/mountinfo || true");
    let all = text(&out);
    assert!(all.contains("exit=1"), "{all}");
    assert!(
        all.contains(&format!("{}", app.display()))
            && all.contains("can be changed by a user other than root")
            && all.contains("allow_writable_parents"),
        "the message names the directory, why, and the opt-in: {all}"
    );
    real.assert_untouched("refused parent");
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("0\n"),
        "nothing mounted: {all}"
    );

    // Opted in: still never through the symlink.
    h.write_config(&cfg(", allow_writable_parents = true"));
    let out = h.script("$P sync || echo exit=$?; grep -c realetc /proc/self/mountinfo || true");
    let all = text(&out);
    assert!(all.contains("exit=1") && all.contains("symlink"), "{all}");
    real.assert_untouched("opted in, symlink planted");

    // Later: deployed, then the parent renamed and a symlink planted in its
    // place. The next pass refuses; nothing stacks, nothing lands in realetc.
    fs::remove_file(app.join("etc")).expect("rm symlink");
    common::run(as_user(DAEMON, "mkdir").arg(app.join("etc")));
    let moved = app.join("etc.old");
    let script = format!(
        "$P sync\n\
         setpriv --reuid=1 --regid=1 --clear-groups -- mv {etc} {moved}\n\
         setpriv --reuid=1 --regid=1 --clear-groups -- ln -s {real} {etc}\n\
         $P sync || echo exit=$?\n\
         $P sync || echo exit=$?\n\
         echo realetc=$(grep -c realetc /proc/self/mountinfo || true)\n\
         echo layers=$(grep -c ' {moved}/nginx ' /proc/self/mountinfo || true)\n",
        etc = app.join("etc").display(),
        moved = moved.display(),
        real = h.root().join("realetc").display(),
    );
    let out = h.script(&script);
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.matches("exit=1").count() == 2, "{all}");
    assert!(stdout.contains("realetc=0"), "{all}");
    assert!(stdout.contains("layers=1"), "one layer, not stacked: {all}");
    real.assert_untouched("parent renamed after deployment");
}

#[test]
fn temp_files_and_state_cannot_be_redirected() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("tmp");
    seed(&up);
    let h = open_host();
    h.write_config(&app_config(&up.url(), ""));
    let secret = h.path().join("shadow");
    fs::write(&secret, "root:secret\n").expect("write");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o640)).expect("chmod");
    let before = facts(&secret);

    // The metrics directory belongs to another account (on Debian,
    // /var/lib/prometheus belongs to prometheus): it plants a symlink at
    // the file's name and at every temp name the next few thousand pids
    // would give.
    let metrics = h.metrics_dir();
    fs::create_dir_all(&metrics).expect("mkdir");
    chown(&metrics, Some(DAEMON), Some(DAEMON)).expect("chown");
    let last: u32 = fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .expect("ns_last_pid")
        .trim()
        .parse()
        .expect("pid");
    let plant = format!(
        "import os\nfor p in range({}, {}):\n    os.symlink('{s}', '{m}/.provision.prom.tmp.%d' % p)\nos.symlink('{s}', '{m}/provision.prom')\n",
        last + 1,
        last + 3000,
        s = secret.display(),
        m = metrics.display()
    );
    common::run(as_user(DAEMON, PYTHON).args(["-c", &plant]));
    let out = h.run(&["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(facts(&secret), before, "the root-owned file is untouched");
    let prom = fs::symlink_metadata(metrics.join("provision.prom")).expect("metrics file");
    assert!(
        prom.is_file(),
        "the planted symlink was replaced, not followed"
    );
    assert!(fs::read_to_string(metrics.join("provision.prom"))
        .expect("read")
        .contains("provision_"));

    // A state directory that belongs to a user is refused outright.
    let h2 = open_host();
    h2.write_config(&app_config(&up.url(), ""));
    fs::create_dir_all(h2.state()).expect("mkdir");
    chown(h2.state(), Some(DAEMON), Some(DAEMON)).expect("chown");
    let out = h2.run(&["sync"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&h2.state().display().to_string()) && all.contains("not root"),
        "{all}"
    );
    assert_eq!(
        fs::read_dir(h2.state()).expect("list").count(),
        0,
        "nothing written into the user's directory"
    );
}

#[test]
fn secrets_are_readable_only_by_the_configured_group() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("secret");
    up.commit(
        "main",
        &[
            ("app/etc/app.conf", Some("admin_password = hunter2\n")),
            ("app/default", Some("OPTS=-v\n")),
        ],
        "secret",
    );
    let h = open_host();
    let key = h.path().join("deploy_key");
    fs::write(&key, "not a real key\n").expect("write");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let cfg = format!(
        r#"
[[services]]
machine = "test-host"
service = "app"
upstream = "{}"
dirs = [
  {{ local = "/etc/app", link = "app/etc", mode = "0640", group = "daemon" }},
  {{ local = "/etc/default/app", link = "app/default", file = true }},
]
"#,
        up.url()
    );
    h.write_config(&cfg);
    fs::set_permissions(h.root(), fs::Permissions::from_mode(0o755)).ok();
    let conf = h.root().join("etc/app/app.conf");
    let script = format!(
        "$P sync\n\
         setpriv --reuid=65534 --regid=65534 --clear-groups -- cat {conf} || echo nobody-denied\n\
         setpriv --reuid=1 --regid=1 --clear-groups -- cat {conf}\n\
         setpriv --reuid=65534 --regid=65534 --clear-groups -- grep -r hunter2 {state} || echo state-denied\n\
         $P status --json\n",
        conf = conf.display(),
        state = h.state().display()
    );
    let out = h.script(&script);
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{all}");
    assert!(
        stdout.contains("nobody-denied"),
        "another user cannot read it: {all}"
    );
    assert_eq!(
        stdout.matches("admin_password = hunter2").count(),
        1,
        "the group reads it, nobody else: {all}"
    );
    assert!(
        stdout.contains("state-denied"),
        "nor from the mirror: {all}"
    );
    let json = &stdout[stdout.find('{').expect("status JSON")..];
    let v: serde_json::Value = serde_json::from_str(json).expect("status JSON");
    assert_eq!(
        v["services"][0]["drift"]["count"], 0,
        "the configured mode is not drift: {v}"
    );
    let file = h.deployed("app").join("app/etc/app.conf");
    let md = fs::metadata(&file).expect("release file");
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (0, DAEMON, 0o640));
    for dir in [h.state(), h.state().join(".mirrors")] {
        let mode = fs::metadata(&dir).expect("dir").mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is root's alone", dir.display());
    }

    // An exposed key file is named by check and by a pass.
    h.write_config(&cfg.replace(
        "upstream = ",
        &format!("ssh_key = \"{}\"\nupstream = ", key.display()),
    ));
    let out = h.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&key.display().to_string()) && err.contains("readable by group or others"),
        "{}",
        text(&out)
    );
}

#[test]
fn readonly_holds_against_the_service_user() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("ro");
    seed(&up);
    let h = open_host();
    h.write_config(&writable(
        &app_config(&up.url(), "user = \"daemon\"").replace(
            "link = \"app/etc\" }",
            "link = \"app/etc\", readonly = true }",
        ),
    ));
    fs::create_dir_all(h.root()).expect("mkdir");
    fs::set_permissions(h.root(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let conf = h.root().join("etc/app/app.conf");
    let release_conf_dir = h.state().join("app/releases");
    let script = format!(
        "$P sync\n\
         setpriv --reuid=1 --regid=1 --clear-groups -- sh -c 'echo x >> {conf}' || echo mount-denied\n\
         setpriv --reuid=1 --regid=1 --clear-groups -- ls {rel} || echo release-denied\n\
         $P status --json\n",
        conf = conf.display(),
        rel = release_conf_dir.display()
    );
    let out = h.script(&script);
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("mount-denied"), "{all}");
    assert!(stdout.contains("release-denied"), "{all}");
    let md = fs::metadata(h.deployed("app").join("app/etc/app.conf")).expect("file");
    assert_eq!(
        (md.uid(), md.gid()),
        (0, DAEMON),
        "root's, the user's group"
    );
    let md = fs::metadata(h.deployed("app").join("app/default")).expect("file");
    assert_eq!(md.uid(), DAEMON, "the writable single file is the user's");
    let json = &stdout[stdout.find('{').expect("status JSON")..];
    let v: serde_json::Value = serde_json::from_str(json).expect("status JSON");
    assert_eq!(v["services"][0]["drift"]["count"], 0, "{v}");
}

#[test]
fn scans_and_diffs_never_leave_the_release_and_fail_closed() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("scan");
    seed(&up);
    let h = open_host();
    h.write_config(&writable(&app_config(&up.url(), "user = \"daemon\"")));
    let secret = h.path().join("secretdir");
    fs::create_dir_all(&secret).expect("mkdir");
    fs::write(secret.join("extra.conf"), "TOPSECRET\n").expect("write");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::create_dir_all(h.root()).expect("mkdir");
    fs::set_permissions(h.root(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let local = h.root().join("etc/app");
    // As the service user, through the mount: a symlink to root's secret
    // directory in place of conf.d, and a directory chain deeper than
    // PATH_MAX (which a path-based scan cannot read).
    let deep = h.path().join("deep.py");
    fs::write(
        &deep,
        "import os, sys\nos.chdir(sys.argv[1])\nfor i in range(40):\n    os.mkdir('d' * 200)\n    os.chdir('d' * 200)\nopen('f', 'w').write('x')\n",
    )
    .expect("writing deep.py");
    let script = format!(
        "$P sync\n\
         U='setpriv --reuid=1 --regid=1 --clear-groups --'\n\
         $U rm -r {local}/conf.d\n\
         $U ln -s {secret} {local}/conf.d\n\
         $U {py} {deep} {local}\n\
         echo =====status\n\
         $P status --json\n\
         echo =====diff\n\
         $P diff app || echo diff-exit=$?\n\
         echo =====sync\n\
         $P sync\n\
         echo =====after\n\
         $P status --json\n\
         ls -A {local}\n",
        local = local.display(),
        secret = secret.display(),
        py = PYTHON,
        deep = deep.display(),
    );
    let out = h.script(&script);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let section = |name: &str| section(&stdout, name);
    let status: serde_json::Value = serde_json::from_str(&section("status")).expect("status");
    let count = status["services"][0]["drift"]["count"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        count >= 2,
        "the symlink and the deep tree are drift: {status}"
    );
    let diff = section("diff");
    assert!(diff.contains("diff-exit=1"), "{all}");
    assert!(
        !diff.contains("TOPSECRET"),
        "diff never reads outside: {all}"
    );
    assert!(
        !all.contains("TOPSECRET"),
        "nothing outside is read anywhere: {all}"
    );
    let after: serde_json::Value =
        serde_json::from_str(&section("after")[..section("after").rfind('}').expect("json") + 1])
            .expect("status");
    assert_eq!(after["services"][0]["drift"]["count"], 0, "restored: {all}");
    let listing = section("after");
    assert!(
        listing.contains("conf.d") && !listing.contains("dddd"),
        "the release is whole again: {all}"
    );
    assert!(secret.join("extra.conf").exists());
}

/// What a script printed after its `=====NAME` line, up to the next one.
fn section(stdout: &str, name: &str) -> String {
    let start = stdout.find(&format!("====={name}\n")).expect(name) + name.len() + 6;
    let rest = &stdout[start..];
    rest[..rest.find("=====").unwrap_or(rest.len())].to_string()
}

/// `cfg` with every `dirs` entry writable (`readonly = false`), so the
/// service's user owns the files.
fn writable(cfg: &str) -> String {
    cfg.replace("\" },", "\", readonly = false },")
        .replace("file = true },", "file = true, readonly = false },")
}

/// `fleet --repo` keeps its cache where no other user can make it first:
/// another account making root's old `/tmp` name in advance changes
/// nothing, and an operator without root gets a cache of their own.
#[test]
fn fleet_repo_caches_where_another_user_cannot_make_it_first() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    up.commit(
        "main",
        &[(
            "provision/config.toml",
            Some("[[services]]\nmachine = \"m1\"\nservice = \"web\"\nupstream = \"git://127.0.0.1/x\"\n\
                 dirs = [{ local = \"/etc/web\", link = \"web\" }]\n"),
        )],
        "config",
    );
    let inventory = |c: &mut Command| {
        let out = c
            .args(["fleet", "--repo", &up.url(), "inventory"])
            .output()
            .expect("fleet --repo");
        (out.status.code(), text(&out))
    };

    // Another account claims the name a shared /tmp offered.
    let claimed = std::env::temp_dir().join("provision-fleet-0");
    let _ = fs::remove_dir_all(&claimed);
    let out = as_user(NOBODY, "mkdir")
        .arg("-m")
        .arg("0777")
        .arg(&claimed)
        .output()
        .expect("mkdir as nobody");
    assert!(out.status.success(), "{}", text(&out));
    let h = open_host();
    let (code, said) = inventory(
        Command::new(common::provision_bin())
            .arg("--state-dir")
            .arg(h.state()),
    );
    let _ = fs::remove_dir_all(&claimed);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("m1"), "{said}");

    // An operator without root: a cache in their own home.
    let home = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    chown(home.path(), Some(NOBODY), Some(65534)).expect("chown");
    let (code, said) = inventory(
        as_user(NOBODY, &common::provision_bin().display().to_string())
            .env("HOME", home.path())
            .env_remove("XDG_CACHE_HOME"),
    );
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("m1"), "{said}");
    let cache = home.path().join(".cache/provision/fleet-repo");
    let meta = fs::metadata(&cache).expect("the operator's cache");
    assert_eq!(meta.uid(), NOBODY);
    assert_eq!(meta.mode() & 0o777, 0o700);
}

/// What the service user can make through a writable mount that a reader
/// would choke on: a FIFO (an open for reading blocks until a writer
/// comes), files a hundred gigabytes long that hold nothing (sparse), and a
/// directory chain 3000 levels deep (more than the 1024 descriptors a
/// recursive walk would hold, and far past PATH_MAX). `status` and `diff`
/// answer at once and name each, and the next pass (which restores the
/// release and removes the drifted copy) succeeds under the usual limit of
/// 1024 open files.
#[test]
fn fifos_sparse_giants_and_deep_trees_in_a_writable_mount_break_nothing() {
    if !ready() || !common::require_tool("timeout") || !common::require_tool("truncate") {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("odd");
    seed(&up);
    let h = open_host();
    h.write_config(&writable(&app_config(&up.url(), "user = \"daemon\"")));
    fs::create_dir_all(h.root()).expect("mkdir");
    fs::set_permissions(h.root(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let local = h.root().join("etc/app");
    let deep = h.path().join("deep.py");
    fs::write(
        &deep,
        "import os, sys\n\
         fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n\
         for i in range(3000):\n    \
             os.mkdir('d' * 100, dir_fd=fd)\n    \
             nfd = os.open('d' * 100, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)\n    \
             os.close(fd)\n    \
             fd = nfd\n\
         os.close(os.open('f', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))\n",
    )
    .expect("writing deep.py");
    let script = format!(
        "$P sync\n\
         U='setpriv --reuid=1 --regid=1 --clear-groups --'\n\
         $U mkfifo {local}/pipe\n\
         $U truncate -s 100G {local}/app.conf\n\
         $U truncate -s 100G {local}/giant\n\
         $U {py} {deep} {local}\n\
         echo =====status\n\
         timeout 60 $P status --json\n\
         echo =====diff\n\
         timeout 60 $P diff app || echo diff-exit=$?\n\
         echo =====sync\n\
         ulimit -n 1024\n\
         timeout 120 $P sync && echo sync-exit=0 || echo sync-exit=$?\n\
         echo =====after\n\
         $P status --json\n\
         echo =====listing\n\
         ls -A {local} {releases}\n",
        local = local.display(),
        py = PYTHON,
        deep = deep.display(),
        releases = h.state().join("app/releases").display(),
    );
    let out = h.script(&script);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let section = |name: &str| section(&stdout, name);
    let status: serde_json::Value = serde_json::from_str(&section("status")).expect("status");
    let paths: Vec<String> = status["services"][0]["drift"]["files"]
        .as_array()
        .map(|a| a.iter().map(|f| f["path"].to_string()).collect())
        .unwrap_or_default();
    for name in ["pipe", "app.conf", "giant", "ddd"] {
        assert!(
            paths.iter().any(|p| p.contains(name)),
            "{name} is drift: {status}"
        );
    }
    let diff = section("diff");
    assert!(diff.contains("diff-exit=1"), "diff answers at once: {all}");
    assert!(
        diff.contains("/etc/app/pipe: a FIFO, not a file: not shown"),
        "{all}"
    );
    for name in ["app.conf", "giant"] {
        assert!(
            diff.contains(&format!(
                "/etc/app/{name}: 100.0 GiB, larger than max_file_size (64.0 MiB): not shown"
            )),
            "{name}: {all}"
        );
    }
    assert!(section("sync").contains("sync-exit=0"), "{all}");
    let after: serde_json::Value = serde_json::from_str(&section("after")).expect("status");
    assert_eq!(after["services"][0]["drift"]["count"], 0, "restored: {all}");
    let listing = section("listing");
    for gone in ["pipe", "giant", "ddd", ".replaced-", ".tmp-"] {
        assert!(!listing.contains(gone), "{gone} is gone: {all}");
    }
}

/// A `mount` directory inside a directory any user may write to: once
/// such a user can rename it, they can put a tree of their own where
/// root's releases were, and the next `provision mount` (boot) would show
/// their files at the service's paths. Here the directory is made
/// world-writable after a good deployment, `nobody` swaps the base for a
/// copy holding their own release under the deployed name, and then
/// `provision mount` and `provision sync` both refuse the base, naming
/// it, and nobody's file is never shown.
#[test]
fn a_mount_base_that_another_user_can_change_is_refused() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("base");
    seed(&up);
    let h = open_host();
    let shared = h.path().join("shared");
    fs::create_dir_all(&shared).expect("mkdir");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).expect("chmod");
    let base = shared.join("base");
    h.write_config(&app_config(
        &up.url(),
        &format!("mount = \"{}\"", base.display()),
    ));
    let script = format!(
        "$P sync\n\
         R=$(ls {base}/app/releases)\n\
         chmod 0777 {shared}\n\
         N='setpriv --reuid=65534 --regid=65534 --clear-groups --'\n\
         $N mv {base} {shared}/gone\n\
         $N mkdir -p {base}/app/releases/$R/app/etc\n\
         $N sh -c 'echo planted > {base}/app/releases/'$R'/app/etc/app.conf'\n\
         $N sh -c 'echo OPTS=planted > {base}/app/releases/'$R'/app/default'\n\
         umount {local}/etc/app {local}/etc/default/app\n\
         echo =====mount\n\
         $P mount app 2>&1 || echo mount-exit=$?\n\
         cat {local}/etc/app/app.conf 2>&1 || true\n\
         echo =====sync\n\
         $P sync 2>&1 || echo sync-exit=$?\n\
         cat {local}/etc/app/app.conf 2>&1 || true\n",
        base = base.display(),
        shared = shared.display(),
        local = h.root().display(),
    );
    let out = h.script(&script);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        !all.contains("planted"),
        "nobody's file is never shown: {all}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let refused = format!(
        "`mount` {} of service app: {} can be changed by a user other than root",
        base.display(),
        shared.display()
    );
    let (mount, sync) = stdout.split_once("=====sync\n").expect("both sections");
    assert!(
        mount.contains("mount-exit=") && mount.contains(&refused),
        "{all}"
    );
    assert!(
        sync.contains("sync-exit=") && sync.contains(&refused),
        "{all}"
    );
}
