//! The one way provision runs external programs (package managers, and
//! the operator's `validate` and `health` commands): the error of a failed
//! command names it and carries the tail of its output, which is where the
//! reason is.
//!
//! The operator's commands are bounded: each runs in a process group of its
//! own that is killed as a whole at its timeout (a shell's children too),
//! and only the tail of what it prints is kept, so a command that hangs or
//! prints megabytes costs a pass neither its time nor its memory.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{kill_process_group, Pid, Signal};

/// Lines of stderr kept in an error.
const TAIL_LINES: usize = 8;

/// Runs `cmd` to completion; its stdout on success, an error with the
/// command line, exit status and stderr tail otherwise.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n  ");
        bail!("{shown} failed ({}):\n  {tail}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` and reports only whether it exited 0 (for queries such as
/// "is this package installed"); failing to start it at all is an error.
pub fn succeeds(cmd: &mut Command) -> Result<bool> {
    let shown = format!("{cmd:?}").replace('"', "");
    let st = cmd
        .output()
        .with_context(|| format!("running {shown}"))?
        .status;
    Ok(st.success())
}

/// Bytes of a bounded command's output kept (its end).
const OUTPUT_CAP: usize = 64 << 10;
/// Lines of that output shown in a message.
const SHOWN_LINES: usize = 10;
/// Characters of one shown line.
const SHOWN_LINE_CHARS: usize = 300;
/// How often a running bounded command is looked at.
const POLL: Duration = Duration::from_millis(20);

/// How a bounded command ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status; `None` when it was killed at the timeout.
    pub status: Option<ExitStatus>,
    /// The end of its standard output and error, interleaved as written.
    pub output: String,
    /// Bytes it printed in all, kept or not.
    pub printed: u64,
}

impl Finished {
    /// Whether it exited 0 in time.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Its last output lines, for a message: at most [`SHOWN_LINES`], each
    /// cut at [`SHOWN_LINE_CHARS`] characters, control characters escaped.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self
            .output
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let cut = self.printed > self.output.len() as u64 || lines.len() > SHOWN_LINES;
        let head = cut.then(|| {
            format!(
                "[{} of output in all; the last lines:]",
                crate::util::human_size(self.printed)
            )
        });
        head.into_iter()
            .chain(
                lines[lines.len().saturating_sub(SHOWN_LINES)..]
                    .iter()
                    .map(|l| {
                        let mut shown: String = crate::config::printable(l)
                            .chars()
                            .take(SHOWN_LINE_CHARS)
                            .collect();
                        if l.chars().count() > SHOWN_LINE_CHARS {
                            shown.push_str(" [...]");
                        }
                        shown
                    }),
            )
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// "exited with status 1", "was killed by signal 9", or "timed out
    /// after 60s (killed)".
    pub fn verdict(&self, timeout: Duration) -> String {
        match self.status {
            None => format!("timed out after {}s (killed)", timeout.as_secs()),
            Some(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                _ => format!("ended with {s}"),
            },
        }
    }
}

/// Runs `cmd` with no input, its output and error into one pipe, in a
/// process group of its own, for at most `timeout`. At the end the whole
/// group is killed, so nothing it started outlives it.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Finished> {
    let shown = format!("{:?}", cmd.get_program());
    let (reader, writer) = std::io::pipe().context("creating a pipe for a command's output")?;
    let writer2 = writer
        .try_clone()
        .context("duplicating a command's output pipe")?;
    cmd.stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0);
    let spawned = cmd.spawn();
    // The command holds the pipe's writing ends: drop them, or the reader
    // never sees the end of the output.
    drop(cmd);
    let mut child = spawned.with_context(|| format!("starting {shown}"))?;
    let group = Pid::from_child(&child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_tail(reader));
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for a command")? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(POLL);
    };
    // Whatever it left running (or all of it, on a timeout) goes now.
    let _ = kill_process_group(group, Signal::KILL);
    if status.is_none() {
        child.wait().context("reaping a killed command")?;
    }
    // A descendant that left the group may still hold the pipe: do not
    // wait for it longer than a moment.
    let (output, printed) = rx
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_else(|_| (String::new(), 0));
    Ok(Finished {
        status,
        output,
        printed,
    })
}

/// Reads `r` to its end, keeping only the last [`OUTPUT_CAP`] bytes.
fn read_tail(mut r: impl Read) -> (String, u64) {
    let mut kept: VecDeque<u8> = VecDeque::with_capacity(4096);
    let mut buf = [0u8; 8192];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                kept.extend(&buf[..n]);
                let excess = kept.len().saturating_sub(OUTPUT_CAP);
                kept.drain(..excess);
            }
        }
    }
    let bytes: Vec<u8> = kept.into();
    (String::from_utf8_lossy(&bytes).into_owned(), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn a_bounded_command_reports_status_and_output_tail() {
        let f = run_bounded(
            sh("echo one; echo two >&2; exit 3"),
            Duration::from_secs(10),
        )
        .expect("runs");
        assert!(!f.success());
        assert_eq!(f.verdict(Duration::from_secs(10)), "exited with status 3");
        assert_eq!(f.tail(), "one\ntwo");
    }

    #[test]
    fn a_hanging_command_and_its_children_are_killed_at_the_timeout() {
        let start = Instant::now();
        let f = run_bounded(
            sh("sleep 60 & sleep 60; echo never"),
            Duration::from_secs(1),
        )
        .expect("runs");
        assert!(f.status.is_none(), "{f:?}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        assert!(f
            .verdict(Duration::from_secs(1))
            .contains("timed out after 1s"));
    }

    #[test]
    fn megabytes_of_output_are_capped() {
        let f = run_bounded(
            sh("head -c 5000000 /dev/zero | tr '\\0' x; echo; echo last line"),
            Duration::from_secs(30),
        )
        .expect("runs");
        assert!(f.success());
        assert!(f.printed > 5_000_000, "{}", f.printed);
        assert!(f.output.len() <= OUTPUT_CAP, "{}", f.output.len());
        let tail = f.tail();
        assert!(tail.ends_with("last line"), "{tail}");
        assert!(tail.starts_with("[4.8 MiB of output in all"), "{tail}");
        assert!(tail.len() < 1000, "{}", tail.len());
    }

    #[test]
    fn failure_carries_the_stderr_tail_and_status() {
        let e = run(Command::new("sh").args(["-c", "echo first >&2; echo reason >&2; exit 3"]))
            .expect_err("fails");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("reason") && msg.contains("exit status: 3"),
            "{msg}"
        );
        assert_eq!(
            run(Command::new("sh").args(["-c", "echo ok"])).expect("runs"),
            "ok\n"
        );
        assert!(run(&mut Command::new("/nonexistent/tool")).is_err());
    }
}

/// A user a command is started as: its uid, primary group and
/// supplementary groups, looked up before the fork (a forked child of a
/// threaded process must not read `/etc/group`).
#[derive(Debug, Clone)]
pub struct RunAs {
    uid: rustix::process::Uid,
    gid: rustix::process::Gid,
    groups: Vec<rustix::process::Gid>,
}

impl RunAs {
    /// Looks `user` up in this machine's user database.
    pub fn lookup(user: &str) -> Result<RunAs> {
        let u = nix::unistd::User::from_name(user)
            .with_context(|| format!("looking up user {user:?}"))?
            .with_context(|| format!("user {user:?} does not exist on this machine"))?;
        let name = std::ffi::CString::new(user)
            .with_context(|| format!("user name {user:?} holds a NUL byte"))?;
        let groups = nix::unistd::getgrouplist(&name, u.gid)
            .with_context(|| format!("looking up the groups of user {user:?}"))?;
        Ok(RunAs {
            uid: rustix::process::Uid::from_raw(u.uid.as_raw()),
            gid: rustix::process::Gid::from_raw(u.gid.as_raw()),
            groups: groups
                .iter()
                .map(|g| rustix::process::Gid::from_raw(g.as_raw()))
                .collect(),
        })
    }

    /// Makes `cmd` drop to this user (groups, then group, then user)
    /// between fork and exec. std's own `uid()` would drop the
    /// supplementary groups, which a check may need (`ssl-cert` for a key).
    #[allow(unsafe_code)]
    pub fn apply(&self, cmd: &mut Command) {
        let who = self.clone();
        // SAFETY: the closure runs in the forked child before exec; it only
        // makes the setgroups, setgid and setuid system calls (no
        // allocation, no lock), which is what a pre-exec hook may do.
        unsafe {
            cmd.pre_exec(move || {
                rustix::thread::set_thread_groups(&who.groups)?;
                rustix::thread::set_thread_gid(who.gid)?;
                rustix::thread::set_thread_uid(who.uid)?;
                Ok(())
            });
        }
    }
}
