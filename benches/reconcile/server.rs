//! The git servers' side: an https smart HTTP server in a process of its
//! own, and what 1,000 polls with nothing new cost the server.

use super::*;

use common::smart_http::{self, Protocol};

/// The bench's https server: `git http-backend` behind TLS, in a process
/// of its own (this binary with `--serve-https`), so that its CPU time and
/// that of the backends it runs and reaps can be read from /proc.
pub(crate) struct HttpsServer {
    child: std::process::Child,
    pub(crate) port: u16,
}

/// The certificate the bench's https server presents, for 127.0.0.1.
pub(crate) struct Tls {
    /// `cert.pem` and `key.pem`.
    pub(crate) dir: PathBuf,
    /// A hashed CA directory holding the certificate (as /etc/ssl/certs).
    pub(crate) ca_dir: PathBuf,
}

impl Tls {
    /// Makes the certificate under `dir` and tells git (the peers) to
    /// trust it.
    pub(crate) fn new(dir: &Path) -> Tls {
        fs::create_dir_all(dir).expect("creating the TLS dir");
        smart_http::certificate(dir);
        let ca_dir = dir.join("ca");
        fs::create_dir_all(&ca_dir).expect("creating the CA dir");
        fs::copy(dir.join("cert.pem"), ca_dir.join("bench.pem")).expect("copying the certificate");
        common::run(Command::new("openssl").arg("rehash").arg(&ca_dir));
        std::env::set_var("GIT_SSL_CAINFO", dir.join("cert.pem"));
        Tls {
            dir: dir.to_path_buf(),
            ca_dir,
        }
    }
}

impl HttpsServer {
    /// Serves the repositories under `base` on a free port of 127.0.0.1.
    pub(crate) fn start(base: &Path, tls: &Tls) -> HttpsServer {
        let port = common::free_port();
        let exe = std::env::current_exe().expect("the bench's own path");
        let child = Command::new(exe)
            .arg("--serve-https")
            .arg(base)
            .arg(&tls.dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the https server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the https server did not come up"
            );
            thread::sleep(Duration::from_millis(20));
        }
        HttpsServer { child, port }
    }

    /// The URL of repository `name` through `port` (the server's, or a
    /// forwarder's in front of it).
    pub(crate) fn url(port: u16, name: &str) -> String {
        format!("https://127.0.0.1:{port}/{name}.git")
    }

    /// CPU time the server and everything it reaped used so far, ms.
    pub(crate) fn cpu_ms(&self) -> f64 {
        process_cpu_ms(self.child.id())
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--serve-https BASE TLS_DIR PORT`: the server process.
pub(crate) fn serve_https(args: &[std::ffi::OsString]) -> ! {
    let [base, dir, port] = args else {
        eprintln!("usage: --serve-https BASE TLS_DIR PORT");
        std::process::exit(2);
    };
    let port: u16 = port.to_string_lossy().parse().expect("a port");
    let dir = Path::new(dir);
    let tls = tiny_http::SslConfig {
        certificate: fs::read(dir.join("cert.pem")).expect("reading the certificate"),
        private_key: fs::read(dir.join("key.pem")).expect("reading the key"),
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("binding the https port");
    smart_http::serve(
        listener,
        Some(tls),
        Path::new(base),
        Protocol::AsAsked,
        &smart_http::Shared::default(),
    );
    std::process::exit(0)
}

/// User + system time of process `pid` and of the children it reaped,
/// from /proc (clock ticks of 10 ms: read over many polls).
pub(crate) fn process_cpu_ms(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    // Fields after the command name, which is in parentheses.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14-17 of the line, 12-15
    // counted after the state field.
    let ticks: u64 = fields[11..15]
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1000.0 / hz
}

/// Ref counts of the server figure: (tags, branches besides main).
const SERVER_REFS: [(usize, usize); 2] = [(1, 0), (10_000, 1_000)];

/// One transport and repository of the server figure.
pub(crate) struct ServerRow {
    pub(crate) transport: &'static str,
    pub(crate) tags: usize,
    pub(crate) branches: usize,
    pub(crate) polls: usize,
    /// Server CPU for all polls of provision, ms.
    pub(crate) provision_ms: f64,
    /// Server CPU for all polls of gitopper's sequence (its `git fetch`), ms.
    pub(crate) git_ms: f64,
    /// Server CPU for as many `git ls-remote --heads URL main`: one
    /// `ls-refs` of the branches, the least a client can ask, ms.
    pub(crate) floor_ms: f64,
}

/// The server's CPU for `polls` no-op polls by provision and by gitopper's
/// git sequence, against the bench's git daemon and its https server.
pub(crate) fn server_cpu(
    b: &Bench,
    d: &GitDaemon,
    https: &HttpsServer,
    tls: &Tls,
    polls: usize,
) -> Vec<ServerRow> {
    let daemon_pid = d.pid().expect("the git daemon runs");
    let mut rows = Vec::new();
    for (tags, branches) in SERVER_REFS {
        let name = format!("server-{tags}-{branches}");
        let up = d.repo(&name);
        seed(&up, 1, &[]);
        add_tags(&up, tags);
        add_branches(&up, branches);
        for transport in ["git://", "https://"] {
            progress(&format!(
                "server CPU: {polls} polls over {transport}, {tags} tags, {branches} branches"
            ));
            let (url, cpu): (String, Box<dyn Fn() -> f64>) = if transport == "git://" {
                (up.url(), Box::new(move || process_cpu_ms(daemon_pid)))
            } else {
                (
                    HttpsServer::url(https.port, &name),
                    Box::new(|| https.cpu_ms()),
                )
            };
            let slug = format!("{name}-{}", transport.trim_end_matches("://"));
            let mut p = Prov::new(
                b.path(&format!("server/{slug}/provision")),
                &[(svc_name(0), url.clone())],
            );
            if transport == "https://" {
                p.ca_dir = Some(tls.ca_dir.clone());
            }
            b.prov_deploy(&p, 1);
            let co = b.path(&format!("server/{slug}/git/checkout"));
            b.git_clone(&url, &co, &svc_name(0));
            let settle = || thread::sleep(Duration::from_millis(300));
            settle();
            let before = cpu();
            for _ in 0..polls {
                b.prov_noop(&p, 1);
            }
            settle();
            let provision_ms = cpu() - before;
            let before = cpu();
            for _ in 0..polls {
                must(b.git(&co).arg("fetch"), &b.log);
            }
            settle();
            let git_ms = cpu() - before;
            let before = cpu();
            for _ in 0..polls {
                must(
                    b.git(b.scratch.path())
                        .args(["ls-remote", "--heads", &url, "main"]),
                    &b.log,
                );
            }
            settle();
            let floor_ms = cpu() - before;
            rows.push(ServerRow {
                transport,
                tags,
                branches,
                polls,
                provision_ms,
                git_ms,
                floor_ms,
            });
        }
    }
    rows
}

/// User-space instructions of a no-op pass and of process start alone,
/// counted by valgrind's callgrind: exact where CPU times wobble with the
/// machine's load.
pub(crate) struct Profile {
    /// `provision --version`: loading the binary and its libraries.
    pub(crate) start: u64,
    /// A one-service no-op `sync` over git://.
    pub(crate) noop: u64,
}

/// [`Profile`], or why it was not taken.
pub(crate) fn profile(b: &Bench, d: &GitDaemon) -> Result<Profile, String> {
    if common::find_tool("valgrind").is_none() {
        return Err("valgrind is not installed".into());
    }
    progress("user-space instructions of a no-op pass (callgrind)");
    let up = d.repo("profile");
    seed(&up, 1, &[]);
    let p = Prov::new(b.path("profile/provision"), &[(svc_name(0), up.url())]);
    b.prov_deploy(&p, 1);
    b.prov_noop(&p, 1);
    let count = |cmd: &mut Command| -> Result<u64, String> {
        let out = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
            .env_remove("RUST_BACKTRACE")
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .output()
            .map_err(|e| format!("running valgrind: {e}"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        err.lines()
            .find_map(|l| l.split("refs:").nth(1))
            .map(|n| n.trim().replace(',', ""))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no instruction count in valgrind's output: {err}"))
    };
    let start = count(Command::new(&b.bin).arg("--version"))?;
    let noop = count(&mut b.sync(&p))?;
    Ok(Profile { start, noop })
}
