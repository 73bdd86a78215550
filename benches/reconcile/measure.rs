//! Measuring one child process.

use super::*;

/// What `wait4` says about one finished child (or a sequence of them).
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Run {
    /// Spawn to reap.
    pub(crate) wall_ms: f64,
    /// User plus system time of the child and the children it reaped.
    pub(crate) cpu_ms: f64,
    /// Largest resident set of the child or any child it reaped, KiB.
    pub(crate) rss_kib: u64,
}

impl Run {
    /// The cost of running `self` and then `next`.
    pub(crate) fn then(self, next: Run) -> Run {
        Run {
            wall_ms: self.wall_ms + next.wall_ms,
            cpu_ms: self.cpu_ms + next.cpu_ms,
            rss_kib: self.rss_kib.max(next.rss_kib),
        }
    }
}

pub(crate) fn timeval_ms(t: libc::timeval) -> f64 {
    t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3
}

/// Runs `cmd` to completion, stdout and stderr into `log`; returns the
/// measurement, the exit code (None when killed by a signal) and the output.
///
/// The command runs under a launcher (this binary with `--launch`) that
/// forks it and reports what `wait4` says. Started straight from the bench,
/// the child's `ru_maxrss` would be at least the bench's own peak: Linux
/// counts the peak of the address space a process had before `execve`, and
/// a child spawned with vfork shares the parent's. The launcher is small, so
/// the peak it hands down is below that of any command measured here.
pub(crate) fn measure(cmd: &mut Command, log: &Path) -> (Run, Option<i32>, String) {
    let out = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| panic!("duplicating {}: {e}", log.display()));
    let result = log.with_extension("rusage");
    let _ = fs::remove_file(&result);
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut launcher = Command::new(exe);
    launcher
        .arg("--launch")
        .arg(&result)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => launcher.env(k, v),
            None => launcher.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        launcher.current_dir(dir);
    }
    let status = launcher
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .unwrap_or_else(|e| panic!("launching {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned();
    let report = fs::read_to_string(&result).unwrap_or_default();
    let f: Vec<i64> = report
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [wall_ns, cpu_us, rss_kib, wstatus] = f[..] else {
        panic!("launcher of {cmd:?} reported nothing ({status}):\n{text}");
    };
    let run = Run {
        wall_ms: wall_ns as f64 / 1e6,
        cpu_ms: cpu_us as f64 / 1e3,
        rss_kib: rss_kib as u64,
    };
    let wstatus = wstatus as libc::c_int;
    let code = libc::WIFEXITED(wstatus).then(|| libc::WEXITSTATUS(wstatus));
    (run, code, text)
}

/// `--launch RESULT PROGRAM ARGS...`: forks PROGRAM, waits for it and
/// writes "wall_ns cpu_us maxrss_kib wait_status" to RESULT.
pub(crate) fn launch(args: &[std::ffi::OsString]) -> ! {
    use std::os::unix::ffi::OsStrExt;
    let [result, argv @ ..] = args else {
        eprintln!("--launch RESULT PROGRAM ARGS...");
        std::process::exit(2);
    };
    if argv.is_empty() {
        eprintln!("--launch RESULT PROGRAM ARGS...");
        std::process::exit(2);
    }
    let argv: Vec<std::ffi::CString> = argv
        .iter()
        .map(|a| std::ffi::CString::new(a.as_bytes()).expect("an argument without NUL"))
        .collect();
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let start = Instant::now();
    // SAFETY: this process is single-threaded; the child only execs or exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: ptrs is a NULL-terminated array of valid C strings.
        unsafe {
            libc::execvp(ptrs[0], ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        eprintln!("fork: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own unreaped child; both pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            eprintln!("wait4: {e}");
            std::process::exit(1);
        }
    }
    let wall = start.elapsed();
    let cpu_us = (timeval_ms(ru.ru_utime) + timeval_ms(ru.ru_stime)) * 1e3;
    let line = format!(
        "{} {} {} {status}\n",
        wall.as_nanos(),
        cpu_us as i64,
        ru.ru_maxrss
    );
    if let Err(e) = fs::write(result, line) {
        eprintln!("writing {}: {e}", Path::new(result).display());
        std::process::exit(1);
    }
    std::process::exit(0)
}

/// [`measure`], failing the bench with the output when the command fails.
pub(crate) fn must(cmd: &mut Command, log: &Path) -> (Run, String) {
    let (run, code, text) = measure(cmd, log);
    if code != Some(0) {
        panic!("{cmd:?} exited with {code:?}:\n{text}");
    }
    (run, text)
}
