//! A real sshd on 127.0.0.1, for the tests and the bench of ssh
//! upstreams: its own host key, client keys, and sshd_config lines a test
//! adds (`AcceptEnv GIT_PROTOCOL`, a host certificate).

use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A real sshd on 127.0.0.1 serving the daemon's repositories over ssh, with
/// its own host key and one client key in `authorized_keys`. Killed on drop.
pub struct Sshd {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts one, or returns None (after saying why) when sshd or
    /// ssh-keygen is missing outside CI.
    pub fn start() -> Option<Sshd> {
        Sshd::start_with("", |_| {})
    }

    /// [`Sshd::start`] with `extra` lines in its sshd_config, after
    /// `prepare` made what they name in its directory.
    pub fn start_with(extra: &str, prepare: impl Fn(&Path)) -> Option<Sshd> {
        if !crate::require_tool("sshd") || !crate::require_tool("ssh-keygen") {
            return None;
        }
        let dir = tempfile::tempdir().expect("sshd tempdir");
        for key in ["host_key", "client_key", "other_key"] {
            crate::run(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "faults", "-f"])
                    .arg(dir.path().join(key)),
            );
        }
        fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("writing authorized_keys");
        prepare(dir.path());
        // sshd insists on its privilege separation directory.
        fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
        let sshd = crate::find_tool("sshd").expect("sshd was found above");
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .expect("probing a free port")
                .port();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM no\nPermitRootLogin yes\nPidFile none\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n{}",
                dir.path().join("host_key").display(),
                dir.path().join("authorized_keys").display(),
                extra.replace("__DIR__", &dir.path().display().to_string()),
            );
            fs::write(dir.path().join("sshd_config"), config).expect("writing sshd_config");
            let log = fs::File::create(dir.path().join("sshd.log")).expect("creating sshd log");
            let mut child = Command::new(&sshd)
                .args(["-D", "-e", "-f"])
                .arg(dir.path().join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting sshd");
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until && matches!(child.try_wait(), Ok(None)) {
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    return Some(Sshd { child, port, dir });
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "sshd did not start; its log:\n{}",
            fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default()
        );
    }

    /// A file of its directory (keys, logs, configs).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    /// `ssh://root@127.0.0.1:PORT/abs/path` of a bare repository.
    pub fn url(&self, bare: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, bare.display())
    }

    /// A known_hosts file holding this server's host key.
    pub fn known_hosts(&self) -> PathBuf {
        let key = crate::host::read(&self.path("host_key.pub"));
        let key: Vec<&str> = key.split_whitespace().take(2).collect();
        let path = self.path("known_hosts");
        fs::write(
            &path,
            format!("[127.0.0.1]:{} {}\n", self.port, key.join(" ")),
        )
        .expect("writing known_hosts");
        path
    }

    /// Makes the server accept only the key in `name.pub`.
    pub fn authorize(&self, name: &str) {
        fs::copy(
            self.path(&format!("{name}.pub")),
            self.path("authorized_keys"),
        )
        .expect("replacing authorized_keys");
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
