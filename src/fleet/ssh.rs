//! The transport: the system's OpenSSH client, so the operator's
//! ssh_config, agent, known_hosts (host keys are checked: an unknown or
//! changed key is refused with ssh's own message), ProxyJump and
//! ControlMaster all apply. Each call runs `REMOTE-COMMAND --machine NAME
//! VERB ARGS` on the machine, its words quoted for the remote shell.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};

/// Bytes of a machine's answer kept (a status document of many services).
const ANSWER_CAP: u64 = 16 << 20;
/// The exit status ssh itself uses for its own failures (connection, host
/// key, authentication).
const SSH_FAILED: i32 = 255;

/// How machines are reached.
#[derive(Debug, Clone)]
pub struct Transport {
    /// The ssh client (`ssh`, or a stand-in).
    pub ssh: PathBuf,
    /// `ssh -F FILE`.
    pub config: Option<PathBuf>,
    /// What runs provision on the machine (`provision`, `sudo -n provision`).
    pub remote_command: String,
    /// ssh's `ConnectTimeout`.
    pub connect_timeout: Duration,
    /// The most one machine may take, connection included.
    pub timeout: Duration,
    /// The operator's own `-o` options (`--ssh-option`): given first, so
    /// they win over [`CONFINED`] and the ssh config.
    pub options: Vec<String>,
}

/// What every fleet connection runs with unless the operator says
/// otherwise with `--ssh-option`: a machine of the fleet gets no way back
/// to the operator's agent, display, ports or local shell, whatever the
/// ssh config says for that host (ssh keeps the first value it is given,
/// and the command line comes before the config).
pub const CONFINED: [&str; 4] = [
    "ForwardAgent=no",
    "ForwardX11=no",
    "ClearAllForwardings=yes",
    "PermitLocalCommand=no",
];

/// What a machine answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// ssh could not reach it, or refused it (ssh's message).
    Unreachable(String),
    /// Its status document as another source (Prometheus) knows it,
    /// already typed: no text to write and read back.
    Known(Box<crate::model::status::Document>),
    /// provision ran there.
    Ran {
        /// Its exit code.
        code: i32,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
}

impl Answer {
    /// The reason a call did not succeed, for a one-line report; `None`
    /// when it did.
    pub fn problem(&self) -> Option<String> {
        match self {
            Answer::Unreachable(why) => Some(format!("unreachable: {why}")),
            Answer::Ran { code: 0, .. } | Answer::Known(_) => None,
            Answer::Ran { code, stderr, .. } => Some(format!(
                "exit {code}: {}",
                last_lines(stderr, 3).replace('\n', " | ")
            )),
        }
    }
}

impl Transport {
    /// Runs provision on `machine` with `args`.
    pub fn call(&self, machine: &str, args: &[String]) -> Answer {
        let mut remote = format!("{} --machine {}", self.remote_command, quote(machine));
        for a in args {
            remote.push(' ');
            remote.push_str(&quote(a));
        }
        let mut cmd = Command::new(&self.ssh);
        if let Some(f) = &self.config {
            cmd.arg("-F").arg(f);
        }
        for o in self.options.iter().map(String::as_str).chain(CONFINED) {
            cmd.arg("-o").arg(o);
        }
        cmd.args(["-o", "BatchMode=yes", "-T"])
            .arg("-o")
            .arg(format!(
                "ConnectTimeout={}",
                self.connect_timeout.as_secs().max(1)
            ))
            .arg("--")
            .arg(machine)
            .arg(&remote)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        match run(cmd, self.timeout) {
            Err(why) => Answer::Unreachable(why),
            Ok((code, _, stderr)) if code == SSH_FAILED => {
                Answer::Unreachable(last_lines(&stderr, 3).replace('\n', " | "))
            }
            Ok((code, stdout, stderr)) => Answer::Ran {
                code,
                stdout,
                stderr,
            },
        }
    }
}

/// Runs `cmd` for at most `timeout`: (exit code, stdout, stderr).
fn run(mut cmd: Command, timeout: Duration) -> Result<(i32, String, String), String> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
    let group = Pid::from_child(&child);
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(ANSWER_CAP).read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    // A watchdog kills the whole group at the deadline; the wait itself
    // blocks, so a thousand calls in flight cost no polling.
    let finished = Arc::new((Mutex::new(false), Condvar::new()));
    let watchdog = {
        let finished = Arc::clone(&finished);
        std::thread::spawn(move || {
            let (lock, cv) = &*finished;
            let Ok(guard) = lock.lock() else { return false };
            let Ok((guard, _)) = cv.wait_timeout_while(guard, timeout, |done| !*done) else {
                return false;
            };
            if *guard {
                return false;
            }
            let _ = kill_process_group(group, Signal::KILL);
            true
        })
    };
    let status = child.wait();
    {
        let (lock, cv) = &*finished;
        if let Ok(mut done) = lock.lock() {
            *done = true;
        }
        cv.notify_all();
    }
    let killed = watchdog.join().unwrap_or(false);
    let status = status.map_err(|e| format!("waiting for ssh: {e}"))?;
    if killed {
        return Err(format!("no answer within {}s", timeout.as_secs()));
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let code = status.code().unwrap_or(SSH_FAILED);
    Ok((code, stdout, stderr))
}

/// `s` as one word for a POSIX shell.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The last `n` non-empty lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_remote_shell() {
        assert_eq!(quote("web1.example.net"), "web1.example.net");
        assert_eq!(quote("HEAD~1"), "'HEAD~1'");
        assert_eq!(quote("it's late; rm -rf /"), r"'it'\''s late; rm -rf /'");
        assert_eq!(quote(""), "''");
    }
}
