//! Test machines: a real systemd booted as PID 1 in its own PID, mount, UTS,
//! IPC and cgroup namespaces, over an overlay of the host's `/`.
//!
//! ```ignore
//! mod common;
//! use common::container::{require_containers, Machine};
//!
//! if !require_containers() { return; }
//! let m = Machine::boot("web1");
//! m.put("/etc/systemd/system/x.service", "[Service]\nExecStart=/bin/true\n", 0o644);
//! m.sh("systemctl daemon-reload && systemctl start x.service");
//! ```
//!
//! How a machine is built (see [`LAUNCHER`]):
//! - its disk is an overlay: `lowerdir=/` (the host's root filesystem), with
//!   the project directory bound read-only at its own path on top, so
//!   `target/debug/provision` is visible inside wherever the checkout is,
//!   plus a per-machine `upperdir`/`workdir` under
//!   `/var/tmp/provision-machines/<hostname>-XXXXXX/`. The upperdir survives
//!   [`Machine::poweroff`], so [`Machine::boot_again`] is a reboot: files
//!   kept, mounts and `/run`, `/tmp` gone;
//! - fresh `proc` (with `/proc/sys` read-only), the host's `/sys` bound
//!   read-only, a private `/dev` (tmpfs with null/zero/full/random/urandom/tty,
//!   its own devpts instance, `/dev/console` -> `/dev/null`), fresh tmpfs on
//!   `/run` and `/tmp`;
//! - its own cgroup2 subtree (`<host cgroup2>/provision-machines/<id>`) seen as
//!   `/sys/fs/cgroup` through a cgroup namespace, so several machines never
//!   touch each other's units (without this, every container's systemd would
//!   manage the host's root cgroup and units with the same name would collide);
//! - the network namespace is the host's: a server on host `127.0.0.1` is
//!   reachable from inside, and a daemon inside listening on a port takes that
//!   port on the host. That is why units that start network daemons, or touch
//!   host-global state (clock, kernel modules, udev, ttys), are masked before
//!   the first boot (see [`MASKED_UNITS`] and [`host_enabled_units`]);
//!   `systemctl unmask` inside brings one back if a test needs it.
//!
//! Host `/tmp` is NOT visible inside (it is a fresh tmpfs there); use
//! [`Machine::put`] or paths under `/var/tmp`/the project dir to share files.
//!
//! Set `PROVISION_KEEP_MACHINES=1` to keep the machine directories after the
//! test (for post-mortem inspection of the upperdir).
#![allow(dead_code)]

use std::collections::{BTreeSet, VecDeque};
use std::ffi::{CString, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    symlink, DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};

use super::{is_executable, under_ci};
use nix::unistd::Pid;

/// Where machine directories (upperdir, workdir, root mountpoint, logs) live.
/// Not under `/tmp`: the machines get a fresh tmpfs there.
pub const MACHINES_DIR: &str = "/var/tmp/provision-machines";

/// How long `boot`/`boot_again` wait for `systemctl is-system-running`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `poweroff` waits for PID 1 to exit before SIGKILL.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);
/// Same, when powering off from `Drop` (keep teardown of a failed test short).
const DROP_POWEROFF_TIMEOUT: Duration = Duration::from_secs(10);
/// How many journal lines are shown when a boot times out or a test panics.
const JOURNAL_TAIL: usize = 80;

/// `PATH` for commands run inside a machine (a root login shell's).
const INSIDE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const SYSTEMD: &str = "/lib/systemd/systemd";

/// Run as `/bin/sh -c LAUNCHER launcher UPPER WORK ROOT HOSTNAME CGROUP
/// MACHINES_DIR PROJECT_DIR` by
/// `unshare --pid --fork --mount --uts --ipc --propagation private`, i.e. as
/// PID 1 of the new PID namespace, in a private mount namespace. Builds the
/// machine's root under ROOT and `exec`s systemd there (so systemd stays PID 1
/// and its host PID is the child of `unshare`).
///
/// `CGROUP` is a fresh, empty cgroup2 directory on the host: the shell moves
/// itself there, then `unshare --cgroup` makes it the root of the machine's
/// cgroup namespace, and it is bound on `/sys/fs/cgroup` inside, so systemd
/// sees a whole (controller-less) unified hierarchy of its own.
const LAUNCHER: &str = r#"
set -eu
upper=$1 work=$2 root=$3 name=$4 cg=$5 machines=$6 project=$7

echo 0 > "$cg/cgroup.procs"

mount -t overlay overlay -o "lowerdir=/,upperdir=$upper,workdir=$work" "$root"

mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
for p in sys sysrq-trigger; do
    [ -e "$root/proc/$p" ] || continue
    mount --bind "$root/proc/$p" "$root/proc/$p"
    mount -o remount,bind,ro "$root/proc/$p"
done

mount --bind /sys "$root/sys"
mount -o remount,bind,ro,nosuid,nodev,noexec "$root/sys"
mount --bind "$cg" "$root/sys/fs/cgroup"

mount -t tmpfs -o mode=755,nosuid,size=16m tmpfs "$root/dev"
for n in null zero full random urandom tty; do
    touch "$root/dev/$n"
    mount --bind "/dev/$n" "$root/dev/$n"
done
touch "$root/dev/console"
mount --bind /dev/null "$root/dev/console"
mkdir -p "$root/dev/pts" "$root/dev/shm" "$root/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"

# Other machines' disks are visible through lowerdir=/; hide them.
mount -t tmpfs -o ro,mode=755,size=4k tmpfs "$root$machines"

mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"

# The project (and so the binary under test) at its own path, read-only,
# wherever it is checked out (even under /tmp, which is fresh inside) and
# never a stale copy cached by the overlay after a rebuild.
mkdir -p "$root$project"
mount --bind "$project" "$root$project"
mount -o remount,bind,ro "$root$project"

hostname "$name"
echo "launcher: starting systemd in $root as $name"
export container=other
exec unshare --cgroup chroot "$root" /lib/systemd/systemd --system
"#;

/// Units masked (symlinked to /dev/null in the machine's
/// `/etc/systemd/system`) before the first boot. Masking a unit that does not
/// exist is harmless, so the list also covers packages that may be installed
/// on the host later.
pub const MASKED_UNITS: &[&str] = &[
    // Consoles and ttys: /dev/console is /dev/null, there are no VTs, and
    // agetty on the host's console would be harmful.
    "getty.target",
    "getty@.service",
    "getty-static.service",
    "autovt@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    // Network configuration and time: the network namespace (and the clock)
    // are the host's.
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-networkd-wait-online.service",
    "systemd-resolved.service",
    "networking.service",
    "ifupdown-pre.service",
    "NetworkManager.service",
    "NetworkManager-wait-online.service",
    "systemd-timesyncd.service",
    "chrony.service",
    "ntp.service",
    "ntpsec.service",
    // Host kernel state: modules, binfmt, udev (it would trigger uevents on
    // the host's devices), pstore (would consume the host's crash dumps),
    // the kernel audit stream, debug/tracing/config/fuse/hugepages mounts.
    "systemd-modules-load.service",
    "kmod-static-nodes.service",
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-pstore.service",
    "systemd-journald-audit.socket",
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-hwdb-update.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    // Periodic jobs: slow, pointless in a test machine, nondeterministic.
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    // Daemons listening on the network (the host's ports, shared by every
    // machine) or sending mail.
    "ssh.service",
    "ssh.socket",
    "sshd.service",
    "rescue-ssh.target",
    "postgresql.service",
    "postgresql@.service",
    "nginx.service",
    "apache2.service",
    "fcgiwrap.service",
    "fcgiwrap.socket",
    "prometheus.service",
    "prometheus-node-exporter.service",
    "prometheus-node-exporter-apt.timer",
    "prometheus-node-exporter-ipmitool-sensor.timer",
    "prometheus-node-exporter-mellanox-hca-temp.timer",
    "prometheus-node-exporter-nvme.timer",
    "prometheus-node-exporter-smartmon.timer",
    "prometheus-alertmanager.service",
    "prometheus-pushgateway.service",
    "git-daemon.service",
    "git-daemon.socket",
    "exim4.service",
    "postfix.service",
    "avahi-daemon.service",
    "avahi-daemon.socket",
    "rpcbind.service",
    "rpcbind.socket",
    "docker.service",
    "containerd.service",
];

// ---------------------------------------------------------------------------
// Preconditions
// ---------------------------------------------------------------------------

/// Why this host cannot run machines, or `None` if it can.
fn container_blocker() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("machines need root (mounts, namespaces, cgroups)".into());
    }
    for tool in ["unshare", "nsenter", "chroot", "mount", "hostname"] {
        if find_exe(tool).is_none() {
            return Some(format!("`{tool}` not found on PATH"));
        }
    }
    if !is_executable(Path::new(SYSTEMD)) {
        return Some(format!("{SYSTEMD} is missing (systemd is not installed)"));
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return Some("the kernel has no overlay filesystem".into());
    }
    match cgroup2_mount() {
        None => return Some("no cgroup2 hierarchy mounted at /sys/fs/cgroup{,/unified}".into()),
        Some(cg) => {
            if !cg.join("cgroup.procs").exists() {
                return Some(format!("{} is not a usable cgroup2 mount", cg.display()));
            }
        }
    }
    if let Err(e) = fs::create_dir_all(MACHINES_DIR) {
        return Some(format!("cannot create {MACHINES_DIR}: {e}"));
    }
    None
}

/// True when this host can run [`Machine`]s (root, `unshare`, `nsenter`,
/// `/lib/systemd/systemd`, overlayfs, cgroup2). Otherwise prints why and
/// returns false — except under `CI=true`, where it panics: a test that
/// cannot run must fail in CI.
pub fn require_containers() -> bool {
    let Some(why) = container_blocker() else {
        return true;
    };
    if under_ci() {
        panic!(
            "cannot run test machines: {why} (CI=true, so this is a failure rather than a skip)"
        );
    }
    eprintln!("SKIPPING test: cannot run test machines: {why}");
    false
}

fn find_exe(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// The host's cgroup2 mount: `/sys/fs/cgroup` (unified host) or
/// `/sys/fs/cgroup/unified` (hybrid host).
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = BTreeSet::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(sep + 1) == Some(&"cgroup2") {
            if let Some(mp) = fields.get(4) {
                found.insert(mp.to_string());
            }
        }
    }
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|p| found.contains(*p))
        .map(PathBuf::from)
}

fn validate_hostname(name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    assert!(
        ok,
        "machine hostname {name:?} must be 1-63 chars of [a-z0-9-], not starting or ending with '-'"
    );
}

// ---------------------------------------------------------------------------
// Machine
// ---------------------------------------------------------------------------

/// A Debian machine: systemd booted as PID 1 in its own PID/mount/UTS/IPC
/// (and cgroup) namespaces over an overlay of the host's `/`. Powered off (and
/// everything it mounted or created on the host side cleaned up) on Drop.
pub struct Machine {
    hostname: String,
    /// `/var/tmp/provision-machines/<hostname>-XXXXXX`
    dir: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    root: PathBuf,
    /// The running `unshare` process (parent of the machine's PID 1).
    unshare: Option<Child>,
    /// Host PID of the machine's PID 1; 0 when powered off.
    pid: i32,
    /// Host path of the machine's cgroup while it runs (removed on poweroff).
    cgroup: Option<PathBuf>,
    boots: u32,
}

/// Where a path inside the machine lives on the host.
enum Disk {
    /// Running: everything goes through `/proc/PID/root`.
    Running(PathBuf),
    /// Powered off: the upperdir over the host's `/`.
    Layers { upper: PathBuf },
}

impl Machine {
    /// How many times unit `name`'s test service logged a reload.
    pub fn reloads(&self, name: &str) -> usize {
        self.read(&format!("/var/log/{name}.reloads"))
            .map_or(0, |t| t.lines().count())
    }

    /// Boots a machine named `hostname` and waits (≤ 30 s) until
    /// `systemctl is-system-running` says `running` (or `degraded`, in which
    /// case the failed units are printed). Panics with the last journal lines
    /// on timeout.
    ///
    /// Before the boot, its disk gets `/etc/hostname`, an `/etc/hosts` entry,
    /// a fresh `/etc/machine-id` and the unit masks described in the module
    /// docs.
    pub fn boot(hostname: &str) -> Machine {
        let mut machine = Machine::create(hostname);
        machine.start();
        machine
    }

    /// Prepares a machine like [`Machine::boot`] but leaves it powered off,
    /// so files can be [`put`](Machine::put) on its disk before its first
    /// boot; then call [`Machine::boot_again`] to boot it.
    pub fn create(hostname: &str) -> Machine {
        validate_hostname(hostname);
        if let Some(why) = container_blocker() {
            panic!(
                "cannot boot machine {hostname:?}: {why}; guard the test with \
                 common::container::require_containers()"
            );
        }
        fs::create_dir_all(MACHINES_DIR).unwrap_or_else(|e| panic!("creating {MACHINES_DIR}: {e}"));
        static JANITOR: std::sync::Once = std::sync::Once::new();
        JANITOR.call_once(remove_stale_machines);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{hostname}-"))
            .tempdir_in(MACHINES_DIR)
            .unwrap_or_else(|e| panic!("creating a machine dir in {MACHINES_DIR}: {e}"))
            .keep();
        let machine = Machine {
            hostname: hostname.to_string(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            root: dir.join("root"),
            dir,
            unshare: None,
            pid: 0,
            cgroup: None,
            boots: 0,
        };
        let owner = machine.dir.join(OWNER_FILE);
        fs::write(&owner, owner_stamp(std::process::id()))
            .unwrap_or_else(|e| panic!("writing {}: {e}", owner.display()));
        for d in [&machine.upper, &machine.work, &machine.root] {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(d)
                .unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        }
        machine.prepare_disk();
        machine
    }

    /// Host PID of the machine's PID 1 (systemd). Panics if powered off.
    pub fn pid(&self) -> i32 {
        assert!(
            self.pid > 0,
            "machine {} is powered off: it has no PID",
            self.hostname
        );
        self.pid
    }

    /// The machine's hostname, as provision names it.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// D-Bus address of the machine's system bus as reachable from the host
    /// (`unix:path=/proc/PID/root/run/dbus/system_bus_socket`), for talking
    /// to its systemd from test code (e.g. with zbus). Inside the machine the
    /// usual `/run/dbus/system_bus_socket` works.
    pub fn system_bus_address(&self) -> String {
        format!(
            "unix:path=/proc/{}/root/run/dbus/system_bus_socket",
            self.pid()
        )
    }

    /// Is PID 1 of the machine alive?
    pub fn is_running(&self) -> bool {
        self.pid > 0
    }

    /// Places a file into the machine's disk, creating missing parent
    /// directories (with the mode and owner of the same directory on the host
    /// when it exists there, else root 0755). Symlinks in the parent path are
    /// followed inside the machine (`/lib` -> `usr/lib`); the final component
    /// is replaced, not followed, so `put` over a masked unit unmasks it.
    ///
    /// Meant for before the boot or between boots (it writes into the
    /// upperdir); on a running machine it writes through `/proc/PID/root`.
    pub fn put(&self, path: &str, content: &str, mode: u32) {
        let rel = inside_rel(path);
        let file_name = rel
            .file_name()
            .unwrap_or_else(|| panic!("put({path:?}): not a file path"))
            .to_os_string();
        let disk = self.disk();
        let parent = disk
            .resolve(rel.parent().unwrap_or(Path::new("")), true)
            .unwrap_or_else(|e| panic!("put({path:?}) on {}: {e}", self.hostname));
        let parent_host = disk
            .ensure_dir(&parent)
            .unwrap_or_else(|e| panic!("put({path:?}) on {}: {e}", self.hostname));
        let target = parent_host.join(&file_name);
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => panic!(
                "put({path:?}) on {}: {} is a directory",
                self.hostname,
                target.display()
            ),
            Ok(_) => fs::remove_file(&target).unwrap_or_else(|e| {
                panic!("put({path:?}): removing old {}: {e}", target.display())
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("put({path:?}): stat {}: {e}", target.display()),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&target)
            .unwrap_or_else(|e| panic!("put({path:?}): creating {}: {e}", target.display()));
        file.write_all(content.as_bytes())
            .unwrap_or_else(|e| panic!("put({path:?}): writing {}: {e}", target.display()));
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .unwrap_or_else(|e| panic!("put({path:?}): chmod {}: {e}", target.display()));
    }

    /// Reads a file inside the machine (through `/proc/PID/root` while it
    /// runs, from its disk when powered off), following symlinks inside the
    /// machine. `None` if it does not exist.
    pub fn read(&self, path: &str) -> Option<String> {
        let rel = inside_rel(path);
        let disk = self.disk();
        let resolved = match disk.resolve(&rel, true) {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => panic!("read({path:?}) on {}: {e}", self.hostname),
        };
        let host = disk.locate(&resolved)?;
        match fs::read(&host) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => panic!(
                "read({path:?}) on {}: reading {}: {e}",
                self.hostname,
                host.display()
            ),
        }
    }

    /// Runs `argv` inside the machine (`nsenter -t PID -m -p -u -i -r -w`),
    /// as root in `/`, with a clean environment (`PATH`, `HOME=/root`,
    /// `LANG=C.UTF-8`; `RUST_BACKTRACE` passed through) and stdin from
    /// /dev/null. Output is captured through files, so `cmd &` in a script
    /// does not make the call wait for `cmd`. Panics only if `nsenter`
    /// cannot be spawned.
    pub fn exec(&self, argv: &[&str]) -> Output {
        assert!(!argv.is_empty(), "Machine::exec: empty argv");
        // Files, not pipes: a background process started by the command
        // (`daemon &`) inherits them, and must not make us wait for it.
        let mut out = tempfile::tempfile().expect("creating a capture file for stdout");
        let mut err = tempfile::tempfile().expect("creating a capture file for stderr");
        let status = self
            .nsenter(argv)
            .stdout(
                out.try_clone()
                    .expect("duplicating the stdout capture file"),
            )
            .stderr(
                err.try_clone()
                    .expect("duplicating the stderr capture file"),
            )
            .status()
            .unwrap_or_else(|e| panic!("spawning nsenter for {argv:?} on {}: {e}", self.hostname));
        Output {
            status,
            stdout: read_back(&mut out),
            stderr: read_back(&mut err),
        }
    }

    /// Runs `/bin/sh -c script` inside; panics with its stdout and stderr if
    /// it exits unsuccessfully. Returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(&["/bin/sh", "-c", script]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            panic!(
                "script failed on machine {} ({}):\n--- script ---\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.hostname,
                out.status,
                script.trim_end(),
                stdout.trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        stdout
    }

    /// Runs `/bin/sh -c script` inside and returns its exit code (128+N when
    /// killed by signal N) and its stdout and stderr interleaved as written.
    pub fn sh_status(&self, script: &str) -> (i32, String) {
        let mut capture = tempfile::tempfile().expect("creating a capture file for sh_status");
        let out_fd = capture
            .try_clone()
            .expect("duplicating the sh_status capture file for stdout");
        let err_fd = capture
            .try_clone()
            .expect("duplicating the sh_status capture file for stderr");
        let status = self
            .nsenter(&["/bin/sh", "-c", script])
            .stdout(out_fd)
            .stderr(err_fd)
            .status()
            .unwrap_or_else(|e| panic!("spawning nsenter for a script on {}: {e}", self.hostname));
        let bytes = read_back(&mut capture);
        (
            exit_code(status),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// `journalctl -u UNIT --no-pager -o cat` inside (stdout).
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `pred()` is true, polling every 100 ms, up to `timeout`;
    /// panics with `what` on timeout.
    pub fn wait_until(&self, timeout: Duration, what: &str, mut pred: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if pred() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "machine {}: timed out after {timeout:?} waiting for {what}",
                    self.hostname
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `systemctl poweroff` and wait for PID 1 to exit (≤ 30 s, then
    /// SIGKILL). The upperdir stays. No-op when already powered off.
    pub fn poweroff(&mut self) {
        self.shutdown(POWEROFF_TIMEOUT);
    }

    /// Boots again over the same upperdir: a reboot (files kept, mounts,
    /// `/run` and `/tmp` gone). Powers off first if still running; boots a
    /// machine from [`Machine::create`] for the first time. Waits for
    /// `running` like [`Machine::boot`].
    pub fn boot_again(&mut self) {
        if self.is_running() {
            self.poweroff();
        }
        self.start();
    }

    // -- internals ----------------------------------------------------------

    fn disk(&self) -> Disk {
        if self.is_running() {
            Disk::Running(PathBuf::from(format!("/proc/{}/root", self.pid)))
        } else {
            Disk::Layers {
                upper: self.upper.clone(),
            }
        }
    }

    fn nsenter(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.env_clear()
            .env("PATH", INSIDE_PATH)
            .env("HOME", "/root")
            .env("USER", "root")
            .env("LOGNAME", "root")
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0");
        if let Some(v) = std::env::var_os("RUST_BACKTRACE") {
            cmd.env("RUST_BACKTRACE", v);
        }
        cmd.args([
            "-t",
            &self.pid().to_string(),
            "-m",
            "-p",
            "-u",
            "-i",
            "-r",
            "-w",
            "--",
        ])
        .args(argv)
        .stdin(Stdio::null());
        cmd
    }

    /// Writes what the machine needs into the upperdir before its first boot.
    fn prepare_disk(&self) {
        self.put("/etc/hostname", &format!("{}\n", self.hostname), 0o644);

        let mut hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !hosts.is_empty() && !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        hosts.push_str(&format!("127.0.1.1 {}\n", self.hostname));
        self.put("/etc/hosts", &hosts, 0o644);

        self.put(
            "/etc/machine-id",
            &format!("{}\n", random_machine_id()),
            0o444,
        );

        let disk = self.disk();
        let unit_dir_rel = disk
            .resolve(Path::new("etc/systemd/system"), true)
            .expect("resolving /etc/systemd/system in the machine's disk");
        let unit_dir = disk
            .ensure_dir(&unit_dir_rel)
            .expect("creating /etc/systemd/system in the machine's upperdir");
        let mut masks: BTreeSet<String> = MASKED_UNITS.iter().map(|s| s.to_string()).collect();
        masks.extend(host_enabled_units());
        for unit in masks {
            let link = unit_dir.join(&unit);
            if let Ok(meta) = fs::symlink_metadata(&link) {
                if meta.is_dir() {
                    continue;
                }
                fs::remove_file(&link)
                    .unwrap_or_else(|e| panic!("replacing {} with a mask: {e}", link.display()));
            }
            symlink("/dev/null", &link)
                .unwrap_or_else(|e| panic!("masking {unit} ({}): {e}", link.display()));
        }
    }

    fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Mounts and boots; waits for `running`/`degraded`.
    fn start(&mut self) {
        assert!(
            !self.is_running(),
            "machine {} is already running",
            self.hostname
        );
        self.boots += 1;
        let started = Instant::now();

        let cg_root = cgroup2_mount().unwrap_or_else(|| {
            panic!(
                "booting {}: no cgroup2 hierarchy on the host",
                self.hostname
            )
        });
        let dir_name = self
            .dir
            .file_name()
            .expect("machine dir has a name")
            .to_string_lossy()
            .into_owned();
        let cgroup = cg_root
            .join("provision-machines")
            .join(format!("{dir_name}-boot{}", self.boots));
        fs::create_dir_all(&cgroup)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", cgroup.display()));
        self.cgroup = Some(cgroup.clone());

        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.console_log())
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.console_log().display()));
        writeln!(&log, "=== boot #{} of {} ===", self.boots, self.hostname)
            .expect("writing the machine's console log");
        let log_err = log.try_clone().expect("duplicating the console log handle");

        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--uts",
            "--ipc",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            LAUNCHER,
            "provision-machine-launcher",
        ])
        .arg(&self.upper)
        .arg(&self.work)
        .arg(&self.root)
        .arg(&self.hostname)
        .arg(&cgroup)
        .arg(MACHINES_DIR)
        .arg(super::project_root())
        .env_clear()
        .env("PATH", INSIDE_PATH)
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Own process group, so a stuck launcher can be killed as a whole.
        .process_group(0);
        let child = spawn_tied_to_process(cmd)
            .unwrap_or_else(|e| panic!("spawning unshare for machine {}: {e}", self.hostname));
        let unshare_pid = child.id();
        self.unshare = Some(child);

        // The machine's PID 1 is unshare's only child.
        let pid = loop {
            if let Some(pid) = children_of(unshare_pid).first() {
                break *pid;
            }
            if let Some(status) = self.unshare_exited() {
                self.boot_failed(&format!("unshare exited early ({status})"));
            }
            if started.elapsed() > BOOT_TIMEOUT {
                self.boot_failed("unshare never forked the machine's PID 1");
            }
            thread::sleep(Duration::from_millis(5));
        };
        self.pid = pid;

        // Wait for the launcher to exec systemd (before that, nsenter -r
        // would give us the host's root).
        loop {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "systemd" {
                break;
            }
            if let Some(status) = self.unshare_exited() {
                self.boot_failed(&format!(
                    "the launcher exited ({status}) before starting systemd"
                ));
            }
            if started.elapsed() > BOOT_TIMEOUT {
                self.boot_failed("the launcher did not exec systemd");
            }
            thread::sleep(Duration::from_millis(5));
        }

        let state = loop {
            if let Some(status) = self.unshare_exited() {
                self.boot_failed(&format!("systemd exited during boot ({status})"));
            }
            let out = self.exec(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match state.as_str() {
                "running" => break state,
                "degraded" => {
                    let failed = self.exec(&["systemctl", "--failed", "--no-pager", "--plain"]);
                    eprintln!(
                        "[machine {}] booted DEGRADED; failed units:\n{}",
                        self.hostname,
                        String::from_utf8_lossy(&failed.stdout).trim_end()
                    );
                    break state;
                }
                _ => {}
            }
            if started.elapsed() > BOOT_TIMEOUT {
                self.boot_failed(&format!(
                    "`systemctl is-system-running` still says {state:?} after {BOOT_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        };
        eprintln!(
            "[machine {}] boot #{}: {state} after {} ms (host pid {pid}, dir {})",
            self.hostname,
            self.boots,
            started.elapsed().as_millis(),
            self.dir.display()
        );
    }

    /// Exit status of the launcher (`unshare`) if it has exited. Never
    /// panics: an error while polling counts as "still running".
    fn unshare_exited(&mut self) -> Option<ExitStatus> {
        self.unshare
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Collects diagnostics, tears the machine down and panics.
    fn boot_failed(&mut self, why: &str) -> ! {
        let mut report = format!(
            "machine {} failed to boot (boot #{}): {why}\n",
            self.hostname, self.boots
        );
        if self.is_running() && self.unshare_exited().is_none() {
            let jobs = self.exec(&["systemctl", "list-jobs", "--no-pager"]);
            report.push_str(&format!(
                "--- systemctl list-jobs ---\n{}\n",
                String::from_utf8_lossy(&jobs.stdout).trim_end()
            ));
            report.push_str(&format!("--- journal tail ---\n{}\n", self.journal_tail()));
        }
        let console = fs::read_to_string(self.console_log()).unwrap_or_default();
        report.push_str(&format!(
            "--- launcher output ({}) ---\n{}",
            self.console_log().display(),
            console.trim_end()
        ));
        self.shutdown(Duration::from_secs(5));
        panic!("{report}");
    }

    /// Last journal lines of the whole machine. Never panics.
    fn journal_tail(&self) -> String {
        let out = match self
            .nsenter(&["journalctl", "--no-pager", "-n", &JOURNAL_TAIL.to_string()])
            .output()
        {
            Ok(out) => out,
            Err(e) => return format!("(could not run journalctl: {e})"),
        };
        let mut text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.trim().is_empty() {
            text.push_str(&format!("\n(journalctl stderr: {})", err.trim_end()));
        }
        text
    }

    /// Power off (gracefully, then by force after `grace`), reap the
    /// launcher and remove the machine's cgroup. Never panics (used by Drop).
    fn shutdown(&mut self, grace: Duration) {
        if self.unshare.is_some() {
            // The call usually "fails" with a reset connection because
            // systemd is gone before it answers; only PID 1's exit counts.
            // Not waited for here: it must not hang a stuck shutdown.
            let mut poweroff = None;
            if self.pid > 0 && self.unshare_exited().is_none() {
                poweroff = self
                    .nsenter(&["systemctl", "poweroff"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok();
            }
            let deadline = Instant::now() + grace;
            let mut exited = false;
            while Instant::now() < deadline {
                match self.unshare.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(Some(_))) | Some(Err(_)) | None => {
                        exited = true;
                        break;
                    }
                    Some(Ok(None)) => thread::sleep(Duration::from_millis(20)),
                }
            }
            if !exited {
                eprintln!(
                    "[machine {}] still running {grace:?} after `systemctl poweroff`; killing it",
                    self.hostname
                );
                self.kill_all();
            }
            if let Some(mut child) = self.unshare.take() {
                let _ = child.wait();
            }
            if let Some(mut child) = poweroff {
                // PID 1 is gone, so is its PID namespace: this returns at once.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.pid = 0;
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = remove_cgroup(&cg) {
                eprintln!("[machine {}] {e}", self.hostname);
            }
        }
    }

    /// SIGKILL everything: the machine's PID 1 (which takes down its whole
    /// PID namespace), its cgroup, and the launcher's process group.
    fn kill_all(&mut self) {
        if let Some(cg) = &self.cgroup {
            let _ = fs::write(cg.join("cgroup.kill"), "1");
        }
        if self.pid > 0 {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        if let Some(child) = &self.unshare {
            if let Ok(pgid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if thread::panicking() && self.is_running() && self.unshare_exited().is_none() {
            eprintln!(
                "[machine {}] test panicked; last journal lines:\n{}",
                self.hostname,
                self.journal_tail()
            );
        }
        self.shutdown(DROP_POWEROFF_TIMEOUT);
        if std::env::var_os("PROVISION_KEEP_MACHINES").is_some_and(|v| !v.is_empty() && v != "0") {
            eprintln!(
                "[machine {}] kept {} (PROVISION_KEEP_MACHINES)",
                self.hostname,
                self.dir.display()
            );
            return;
        }
        // overlayfs leaves `work/work` with mode 000; make everything
        // removable before deleting.
        make_removable(&self.dir);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!(
                "[machine {}] could not remove {}: {e}",
                self.hostname,
                self.dir.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The machine's disk: path resolution inside the machine
// ---------------------------------------------------------------------------

/// `"/etc/x"` -> `"etc/x"`; panics on relative paths.
fn inside_rel(path: &str) -> PathBuf {
    assert!(
        path.starts_with('/'),
        "paths inside a machine must be absolute, got {path:?}"
    );
    PathBuf::from(path.trim_start_matches('/'))
}

const OVL_OPAQUE: &str = "trusted.overlay.opaque";

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

#[allow(unsafe_code)] // lgetxattr: reading overlayfs's opaque mark
fn is_opaque(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let name = CString::new(OVL_OPAQUE).expect("xattr name has no NUL");
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and live across the call; the
    // buffer pointer and length describe `buf`.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

#[allow(unsafe_code)] // lsetxattr: writing overlayfs's opaque mark
fn set_opaque(dir: &Path) -> std::io::Result<()> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
    let name = CString::new(OVL_OPAQUE).expect("xattr name has no NUL");
    // SAFETY: NUL-terminated strings and a 1-byte value that outlive the call.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn not_found(what: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::NotFound, what)
}

impl Disk {
    /// Host path and metadata of `rel` (already resolved except maybe its
    /// last component) as the machine sees it, or `None` if it does not
    /// exist. Does not follow a final symlink.
    fn lookup(&self, rel: &Path) -> Option<(PathBuf, fs::Metadata)> {
        match self {
            Disk::Running(root) => {
                let host = root.join(rel);
                fs::symlink_metadata(&host).ok().map(|m| (host, m))
            }
            Disk::Layers { upper } => {
                // Walk the upperdir: a whiteout hides the lower entry, an
                // opaque directory hides everything below it in the lower.
                let mut lower_visible = true;
                let mut up = upper.clone();
                let comps: Vec<_> = rel.components().collect();
                for (i, c) in comps.iter().enumerate() {
                    up.push(c);
                    match fs::symlink_metadata(&up) {
                        Ok(m) if is_whiteout(&m) => return None,
                        Ok(m) => {
                            if i + 1 == comps.len() {
                                return Some((up, m));
                            }
                            if m.is_dir() && is_opaque(&up) {
                                lower_visible = false;
                            }
                        }
                        Err(_) => {
                            // Nothing further down exists in the upper.
                            break;
                        }
                    }
                }
                if !lower_visible {
                    return None;
                }
                let host = Path::new("/").join(rel);
                fs::symlink_metadata(&host).ok().map(|m| (host, m))
            }
        }
    }

    /// Host path to read `rel` (fully resolved) from, if it exists.
    fn locate(&self, rel: &Path) -> Option<PathBuf> {
        self.lookup(rel).map(|(p, _)| p)
    }

    /// Resolves symlinks in `rel` as the machine would (absolute links are
    /// relative to the machine's root), returning a path relative to that
    /// root. With `follow_final == false` the last component is kept as is.
    /// Missing components are fine (the rest is appended unresolved).
    fn resolve(&self, rel: &Path, follow_final: bool) -> std::io::Result<PathBuf> {
        let mut todo: VecDeque<OsString> = VecDeque::new();
        push_components(&mut todo, rel, false)?;
        let mut done: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                done.pop();
                continue;
            }
            let is_final = todo.is_empty();
            let candidate: PathBuf = done.iter().chain(std::iter::once(&name)).collect();
            if is_final && !follow_final {
                done.push(name);
                break;
            }
            match self.lookup(&candidate) {
                Some((host, meta)) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        return Err(std::io::Error::new(
                            ErrorKind::InvalidInput,
                            format!("too many levels of symlinks resolving /{}", rel.display()),
                        ));
                    }
                    let target = fs::read_link(&host)?;
                    if target.is_absolute() {
                        done.clear();
                    }
                    push_components(&mut todo, &target, true)?;
                }
                _ => done.push(name),
            }
        }
        Ok(done.iter().collect())
    }

    /// Makes sure the (resolved) directory `rel` exists; returns its host
    /// path for writing. In the upperdir, missing directories get the mode
    /// and owner of the lower directory when there is one.
    fn ensure_dir(&self, rel: &Path) -> std::io::Result<PathBuf> {
        match self {
            Disk::Running(root) => {
                let host = root.join(rel);
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&host)?;
                Ok(host)
            }
            Disk::Layers { upper } => {
                let mut so_far = PathBuf::new();
                for c in rel.components() {
                    so_far.push(c);
                    let up = upper.join(&so_far);
                    let visible = self.lookup(&so_far);
                    match fs::symlink_metadata(&up) {
                        Ok(m) if m.is_dir() => continue,
                        Ok(m) if is_whiteout(&m) => {
                            // Deleted inside the machine: recreate, opaque.
                            fs::remove_file(&up)?;
                            fs::DirBuilder::new().mode(0o755).create(&up)?;
                            set_opaque(&up)?;
                            continue;
                        }
                        Ok(_) => {
                            return Err(std::io::Error::new(
                                ErrorKind::AlreadyExists,
                                format!("/{} exists and is not a directory", so_far.display()),
                            ))
                        }
                        Err(_) => {}
                    }
                    match visible {
                        Some((_, m)) if !m.is_dir() => {
                            return Err(std::io::Error::new(
                                ErrorKind::AlreadyExists,
                                format!("/{} exists and is not a directory", so_far.display()),
                            ))
                        }
                        Some((_, lower_meta)) => {
                            fs::DirBuilder::new().mode(0o755).create(&up)?;
                            fs::set_permissions(
                                &up,
                                fs::Permissions::from_mode(lower_meta.mode() & 0o7777),
                            )?;
                            std::os::unix::fs::lchown(
                                &up,
                                Some(lower_meta.uid()),
                                Some(lower_meta.gid()),
                            )?;
                        }
                        None => {
                            fs::DirBuilder::new().mode(0o755).create(&up)?;
                            fs::set_permissions(&up, fs::Permissions::from_mode(0o755))?;
                        }
                    }
                }
                Ok(upper.join(rel))
            }
        }
    }
}

/// Pushes the components of `path` to the front (`front == true`) or the
/// back of `todo`, dropping `.` and the root.
fn push_components(todo: &mut VecDeque<OsString>, path: &Path, front: bool) -> std::io::Result<()> {
    let mut names = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => names.push(OsString::from("..")),
            Component::Normal(n) => names.push(n.to_os_string()),
            Component::Prefix(_) => {
                return Err(std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "path prefixes are not supported",
                ))
            }
        }
    }
    if front {
        for n in names.into_iter().rev() {
            todo.push_front(n);
        }
    } else {
        todo.extend(names);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Host-side helpers
// ---------------------------------------------------------------------------

/// Units the host enables in `/etc/systemd/system/*.wants|*.requires` (not
/// targets): packages installed on the host (sshd, postgresql, nginx,
/// prometheus, ...) whose daemons would take host ports or touch host state
/// if every machine started them.
pub fn host_enabled_units() -> BTreeSet<String> {
    let mut units = BTreeSet::new();
    let Ok(entries) = fs::read_dir("/etc/systemd/system") else {
        return units;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.ends_with(".wants") || name.ends_with(".requires")) {
            continue;
        }
        let Ok(deps) = fs::read_dir(entry.path()) else {
            continue;
        };
        for dep in deps.flatten() {
            let unit = dep.file_name().to_string_lossy().into_owned();
            if !unit.ends_with(".target") {
                units.insert(unit);
            }
        }
    }
    units
}

/// In each machine dir: `"<pid> <starttime>"` of the test process that owns it.
const OWNER_FILE: &str = "owner";

/// Identifies a process across PID reuse: its PID and start time.
fn owner_stamp(pid: u32) -> String {
    format!("{pid} {}", process_start_time(pid).unwrap_or_default())
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot).
fn process_start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// Removes machines whose owning test process is gone (killed before its
/// `Drop` ran): their PID 1 died with it (see [`spawn_tied_to_process`]),
/// but their directory and cgroup stay behind. Machines of live test
/// processes, and directories without an owner stamp, are left alone.
fn remove_stale_machines() {
    let Ok(entries) = fs::read_dir(MACHINES_DIR) else {
        return;
    };
    let cg_parent = cgroup2_mount().map(|cg| cg.join("provision-machines"));
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(stamp) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let Some(pid) = stamp
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if owner_stamp(pid) == stamp.trim() {
            continue; // owner alive
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(parent) = &cg_parent {
            for cg in fs::read_dir(parent).into_iter().flatten().flatten() {
                let cg_name = cg.file_name().to_string_lossy().into_owned();
                if cg_name.starts_with(&format!("{name}-boot")) {
                    let _ = fs::write(cg.path().join("cgroup.kill"), "1");
                    if let Err(e) = remove_cgroup(&cg.path()) {
                        eprintln!("[machines] stale machine {name}: {e}");
                    }
                }
            }
        }
        make_removable(&dir);
        match fs::remove_dir_all(&dir) {
            Ok(()) => eprintln!("[machines] removed stale machine dir {}", dir.display()),
            Err(e) => eprintln!("[machines] could not remove stale {}: {e}", dir.display()),
        }
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` with `PR_SET_PDEATHSIG=SIGKILL`, from a thread that lives as
/// long as the test process, so the launcher (and, through
/// `unshare --kill-child`, the whole machine) dies with the test process even
/// if it is killed before any `Drop` runs. (The death signal is tied to the
/// *thread* that forked, so spawning from the test's own thread would kill
/// machines booted in a helper thread when that thread ends.)
fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("machine-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the machine spawner thread");
        Mutex::new(tx)
    });
    // SAFETY: the closure only makes async-signal-safe system calls.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((cmd, reply_tx))
        .expect("the machine spawner thread is gone");
    reply_rx
        .recv()
        .expect("the machine spawner thread did not answer")
}

/// 32 lowercase hex digits from /dev/urandom (never all zeros).
fn random_machine_id() -> String {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom for a machine id");
    bytes[0] |= 1;
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// PIDs of the children of `pid` (all its threads).
fn children_of(pid: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids
}

/// Everything written to a capture file so far.
fn read_back(file: &mut File) -> Vec<u8> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .expect("reading back a command's captured output");
    bytes
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Removes a machine's cgroup (depth-first), waiting up to 5 s for its
/// processes to be gone (killing leftovers after 2 s).
fn remove_cgroup(cg: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut killed = false;
    loop {
        match rmdir_tree(cg) {
            Ok(()) => return Ok(()),
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(format!("could not remove cgroup {}: {e}", cg.display()));
                }
                if !killed && deadline - Instant::now() < Duration::from_secs(3) {
                    let _ = fs::write(cg.join("cgroup.kill"), "1");
                    killed = true;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn rmdir_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            rmdir_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Gives every directory under `dir` (not following symlinks) owner rwx so
/// that `remove_dir_all` cannot trip over overlayfs's mode-000 `work` dir.
fn make_removable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    if meta.mode() & 0o700 != 0o700 {
        let _ = fs::set_permissions(
            dir,
            fs::Permissions::from_mode((meta.mode() | 0o700) & 0o7777),
        );
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                make_removable(&entry.path());
            }
        }
    }
}

impl Machine {
    /// Runs an sshd inside on 127.0.0.1:`port` (a transient unit), with the
    /// private host key in `host_key` and root's `authorized_keys` from
    /// `authorized` (a `.pub` file), and waits until it accepts connections.
    pub fn serve_ssh(&self, host_key: &Path, authorized: &Path, port: u16) {
        let read = |p: &Path| {
            fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        };
        self.put("/etc/ssh/test_host_key", &read(host_key), 0o600);
        self.put("/root/.ssh/authorized_keys", &read(authorized), 0o600);
        self.put(
            "/etc/ssh/test_sshd_config",
            &format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey /etc/ssh/test_host_key\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
            ),
            0o644,
        );
        self.sh("mkdir -p /run/sshd && \
             systemd-run --unit test-sshd /usr/sbin/sshd -D -e -f /etc/ssh/test_sshd_config");
        let until = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "sshd on {} does not listen on port {port}",
                self.hostname
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Installs provision's units and generator (from the repository's
/// `units/`) into `m`, with `bin` as the binary they run.
pub fn install_provision(m: &Machine, bin: &str) {
    let unit = |file: &str| {
        let path = format!("{}/units/{file}", super::project_root().display());
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {path}: {e}"))
            .replace("/usr/local/bin/provision", bin)
    };
    for u in [
        "provision@.service",
        "provision@.timer",
        "provision-mount@.service",
        "provision-config.path",
        "provision-activate.service",
    ] {
        m.put(&format!("/etc/systemd/system/{u}"), &unit(u), 0o644);
    }
    m.put(
        "/etc/systemd/system-generators/provision-generator",
        &unit("provision-generator"),
        0o755,
    );
}
