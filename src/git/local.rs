//! A repository on this machine (`/srv/git/config.git`, `file://…`),
//! served by git's own `upload-pack` over a pipe and spoken to in protocol
//! v2 as a git daemon is: the mirror is shallow and partial as for any
//! server, every byte counts against `max_fetch_bytes`, and a huge blob is
//! git's to pack, never read into this process (libgit2's local transport
//! builds the whole pack in memory, blob by blob).
//!
//! git's upload-pack is made to serve repositories it does not trust (it
//! runs no hook and honours none of the repository's dangerous settings),
//! and like libgit2 it refuses a repository that another user owns.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::util::http::Budget;

/// Most of git's stderr kept for a message.
const MAX_STDERR: u64 = 4096;
/// How long the end of stderr is waited for once the program exited.
const STDERR_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// `git upload-pack` on a local repository, read and written like a
/// connection: every read and write waits at most until the deadline.
pub struct Pipe {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    deadline: Instant,
    budget: Budget,
    /// What the program said on stderr so far, collected by a thread (so
    /// that it never blocks on a full stderr pipe while we wait for its
    /// stdout), and whether the pipe ended.
    stderr: Arc<Said>,
    /// Turns what the program said on stderr, when its output ended, into
    /// the error's words.
    explain: fn(&str) -> String,
}

impl Pipe {
    /// Starts `git upload-pack` on the repository at `path`, asking for
    /// protocol v2; `None` when git is not installed. It may filter blobs
    /// and send any object asked for by id (what a partial mirror asks
    /// for), as servers configured for this tool do; nothing from the
    /// caller's environment steers it to another repository.
    pub fn spawn(path: &str, deadline: Instant, budget: Budget) -> Result<Option<Pipe>> {
        let mut cmd = Command::new("git");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GIT_") {
                cmd.env_remove(key);
            }
        }
        cmd.args([
            "-c",
            "uploadpack.allowFilter=true",
            "-c",
            "uploadpack.allowAnySHA1InWant=true",
            "upload-pack",
            "--",
            path,
        ])
        .env("GIT_PROTOCOL", "version=2");
        Pipe::start(
            cmd,
            |said| format!("git upload-pack: {said}"),
            deadline,
            budget,
        )
    }

    /// Starts `cmd` with its stdin and stdout as the connection; `None`
    /// when its program is not installed. `explain` words what it said on
    /// stderr when its output ends.
    pub fn start(
        mut cmd: Command,
        explain: fn(&str) -> String,
        deadline: Instant,
        budget: Budget,
    ) -> Result<Option<Pipe>> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("starting {program}")),
        };
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{program} started without its pipes");
        };
        let said: Arc<Said> = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
        let collected = Arc::clone(&said);
        std::thread::spawn(move || collect(stderr, &collected));
        Ok(Some(Pipe {
            child,
            stdin,
            stdout,
            deadline,
            budget,
            stderr: said,
            explain,
        }))
    }

    /// Waits until `fd` is ready for `flags`, at most until the deadline.
    fn wait(&self, fd: impl AsFd, flags: PollFlags) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        let timeout = Timespec::try_from(left).ok();
        let mut fds = [PollFd::new(&fd, flags)];
        match poll(&mut fds, timeout.as_ref()) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the program (its answer is complete or no longer wanted) and
    /// returns what it said on stderr, as one line. A process it left
    /// behind may hold stderr open (a helper it started in the
    /// background): what was said is taken after a short wait for the
    /// pipe's end, not only at it.
    fn finish(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (lock, ended) = &*self.stderr;
        let said = match lock.lock() {
            Ok(g) => match ended.wait_timeout_while(g, STDERR_GRACE, |(_, done)| !*done) {
                Ok((g, _)) => g.0.clone(),
                Err(_) => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        crate::util::escape_text(String::from_utf8_lossy(&said).trim()).into_owned()
    }
}

/// What a program said on stderr, whether the pipe ended, and the signal
/// that it did.
type Said = (Mutex<(Vec<u8>, bool)>, Condvar);

/// Reads `stderr` into `said` (at most [`MAX_STDERR`] bytes kept) until it
/// ends, then says so.
fn collect(mut stderr: ChildStderr, said: &Said) {
    let mut buf = [0u8; 1024];
    loop {
        match stderr.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Ok(mut g) = said.0.lock() {
                    let room = (MAX_STDERR as usize).saturating_sub(g.0.len());
                    g.0.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
    }
    if let Ok(mut g) = said.0.lock() {
        g.1 = true;
    }
    said.1.notify_all();
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.wait(self.stdout.as_fd(), PollFlags::IN)?;
        let n = self.stdout.read(buf)?;
        if n == 0 {
            // git ended its output: say why, when it said why.
            let said = self.finish();
            if !said.is_empty() {
                return Err(io::Error::other((self.explain)(&said)));
            }
        }
        self.budget.spend(n)?;
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wait(self.stdin.as_fd(), PollFlags::OUT)?;
        self.stdin.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stdin.flush()
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
