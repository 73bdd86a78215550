//! The one way provision runs external programs (package managers): the
//! error of a failed command names it and carries the tail of its stderr,
//! which is where the reason is.

use std::process::Command;

use anyhow::{bail, Context, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
