//! The machines' ssh host keys, as the recipients of their secrets: read
//! the way ssh itself finds them, so that a secret is encrypted for
//! exactly the key the fleet's connections already trust. `ssh -G
//! MACHINE` gives the effective host name, port, `HostKeyAlias` and
//! known_hosts files of the operator's ssh setup (`--ssh-config` and
//! `--ssh-option` included); `ssh-keygen -F` finds the key there, hashed
//! entries too. A machine not pinned yet can be asked with `ssh-keyscan`,
//! and its key is used only once the operator confirmed its fingerprint.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::fleet::ssh::Transport;

/// The key type a machine decrypts with by default
/// (`/etc/ssh/ssh_host_ed25519_key`).
const KEY_TYPE: &str = "ssh-ed25519";

/// Where ssh reaches a machine, and the files that pin its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The name known_hosts lists it under: `host` or `[host]:port`.
    pub known_as: String,
    /// `HostName`.
    pub host: String,
    /// `Port`.
    pub port: u16,
    /// `UserKnownHostsFile` and `GlobalKnownHostsFile`, in ssh's order.
    pub files: Vec<PathBuf>,
}

/// A machine's host key, and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// `ssh-ed25519 AAAA...`.
    pub key: String,
    /// The known_hosts file it is in.
    pub file: PathBuf,
}

/// The route ssh takes to `machine` (`ssh -G`, which connects nowhere).
pub fn route(transport: &Transport, machine: &str) -> Result<Route> {
    let mut cmd = Command::new(&transport.ssh);
    if let Some(f) = &transport.config {
        cmd.arg("-F").arg(f);
    }
    for o in &transport.options {
        cmd.arg("-o").arg(o);
    }
    let out = cmd
        .arg("-G")
        .arg("--")
        .arg(machine)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} -G {machine}", transport.ssh.display()))?;
    if !out.status.success() {
        bail!(
            "`ssh -G {machine}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_route(&String::from_utf8_lossy(&out.stdout), machine)
}

/// Reads `ssh -G`'s `keyword value` lines.
fn parse_route(text: &str, machine: &str) -> Result<Route> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .map(str::trim)
    };
    let host = value("hostname").unwrap_or(machine).to_string();
    let port = value("port").and_then(|p| p.parse().ok()).unwrap_or(22);
    let alias = value("hostkeyalias").filter(|a| !a.is_empty() && *a != "none");
    let name = alias.unwrap_or(&host);
    let known_as = if port == 22 {
        name.to_string()
    } else {
        format!("[{name}]:{port}")
    };
    let mut files = Vec::new();
    for key in ["userknownhostsfile", "globalknownhostsfile"] {
        for f in value(key).unwrap_or_default().split_whitespace() {
            files.push(PathBuf::from(expand_home(f)));
        }
    }
    Ok(Route {
        known_as,
        host,
        port,
        files,
    })
}

/// `~/x` as ssh expands it, for the operator running the command.
fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => path.to_string(),
    }
}

/// The ed25519 host key known_hosts pins for `route`; `None` when no file
/// holds one.
pub fn pinned(route: &Route) -> Result<Option<HostKey>> {
    for file in route.files.iter().filter(|f| f.exists()) {
        let out = Command::new("ssh-keygen")
            .arg("-F")
            .arg(&route.known_as)
            .arg("-f")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .context("running ssh-keygen -F (package openssh-client)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(key) = keys_of(&text).into_iter().next() {
            return Ok(Some(HostKey {
                key,
                file: file.clone(),
            }));
        }
    }
    Ok(None)
}

/// The ed25519 keys of known_hosts lines (`ssh-keygen -F`'s answer, or
/// `ssh-keyscan`'s), markers and revoked keys left out.
fn keys_of(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('@'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (_, kind, blob) = (w.next()?, w.next()?, w.next()?);
            (kind == KEY_TYPE).then(|| format!("{kind} {blob}"))
        })
        .collect()
}

/// Asks the machine itself for its ed25519 key (`ssh-keyscan`), which
/// nothing vouches for: the caller shows its fingerprint and uses it only
/// once the operator confirmed it.
pub fn scan(route: &Route, timeout: std::time::Duration) -> Result<Option<String>> {
    let out = Command::new("ssh-keyscan")
        .args(["-q", "-t", "ed25519", "-T"])
        .arg(timeout.as_secs().max(1).to_string())
        .arg("-p")
        .arg(route.port.to_string())
        .arg("--")
        .arg(&route.host)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keyscan (package openssh-client)")?;
    Ok(keys_of(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .next())
}

/// `SHA256:...` of a public key line, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &str) -> Result<String> {
    let parsed = ssh_key::PublicKey::from_openssh(key)
        .map_err(|e| anyhow::anyhow!("reading host key {key:?}: {e}"))?;
    Ok(parsed.fingerprint(ssh_key::HashAlg::Sha256).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_follows_ssh_g_with_its_port_and_alias() {
        let text = "host web1\nhostname 10.0.0.5\nport 2222\nuserknownhostsfile /k/one /k/two\nglobalknownhostsfile /etc/ssh/ssh_known_hosts\n";
        let r = parse_route(text, "web1").expect("parse");
        assert_eq!(r.known_as, "[10.0.0.5]:2222");
        assert_eq!(r.files.len(), 3);
        let r = parse_route("hostname h\nport 22\nhostkeyalias web1\n", "x").expect("parse");
        assert_eq!(r.known_as, "web1");
    }

    #[test]
    fn only_ed25519_keys_are_taken() {
        let text = "# Host h found: line 1\nh ssh-rsa AAAAB3\nh ssh-ed25519 AAAAC3x\n@revoked h ssh-ed25519 AAAAC3y\n";
        assert_eq!(keys_of(text), ["ssh-ed25519 AAAAC3x"]);
    }
}
