//! ssh upstreams through the system's OpenSSH client, as git reaches
//! them: `ssh [options] HOST "git-upload-pack 'PATH'"`, spoken to over its
//! stdin and stdout in protocol v2 (asked for with `SetEnv
//! GIT_PROTOCOL=version=2`). The operator's ssh_config applies (`Host`
//! blocks, `ProxyJump`, host certificates, FIDO keys, key exchanges), as
//! it does for git; `ssh_command` replaces `ssh` as `GIT_SSH_COMMAND`
//! does. A server whose sshd does not accept `GIT_PROTOCOL` answers v0 on
//! the same connection, and is spoken to in v0 there.

use std::process::Command;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::config::Credentials;

/// Where an ssh upstream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The login, when the URL names one.
    pub user: Option<String>,
    /// The host, as the URL writes it (an ssh_config `Host` alias too).
    pub host: String,
    /// The port, when the URL names one.
    pub port: Option<u16>,
    /// The repository's path on the server, as upload-pack is given it.
    pub path: String,
}

impl SshTarget {
    /// `ssh://[user@]host[:port]/path` (also `git+ssh://`, `ssh+git://`)
    /// or scp-like `[user@]host:path`; `None` for any other URL, and for a
    /// host that would read as an option of ssh.
    pub fn parse(url: &str) -> Option<SshTarget> {
        let (authority, path, scp) = match ["ssh://", "git+ssh://", "ssh+git://"]
            .iter()
            .find_map(|p| url.strip_prefix(p))
        {
            Some(rest) => {
                let i = rest.find('/')?;
                let path = &rest[i..];
                // `ssh://host/~user/repo` is relative to that user's home.
                let path = path
                    .strip_prefix("/~")
                    .map_or(path.to_string(), |p| format!("~{p}"));
                (&rest[..i], path, false)
            }
            None if !url.contains("://") => {
                let (authority, path) = url.split_once(':')?;
                if authority.contains('/') || path.is_empty() {
                    return None;
                }
                (authority, path.to_string(), true)
            }
            None => return None,
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()).filter(|u| !u.is_empty()), h),
            None => (None, authority),
        };
        let (host, port) = if scp {
            (hostport.trim_start_matches('[').trim_end_matches(']'), None)
        } else {
            host_and_port(hostport)?
        };
        finish(user, host.to_string(), port, path)
    }

    /// `user@host`, or the host alone.
    fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// `host` or `[host]:port`, as known_hosts and ssh-keyscan name it.
    pub fn known_as(&self) -> String {
        match self.port {
            Some(p) if p != 22 => format!("[{}]:{p}", self.host),
            _ => self.host.clone(),
        }
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_and_port(hostport: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host, port));
    }
    match hostport.split_once(':') {
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((hostport, None)),
    }
}

fn finish(
    user: Option<String>,
    host: String,
    port: Option<u16>,
    path: String,
) -> Option<SshTarget> {
    // `ssh -oProxyCommand=...` as a host name would run a command.
    if host.is_empty()
        || host.starts_with('-')
        || user.as_deref().is_some_and(|u| u.starts_with('-'))
    {
        return None;
    }
    Some(SshTarget {
        user,
        host,
        port,
        path,
    })
}

/// Checks the configured `ssh_key` before ssh is started, so that a key
/// that cannot work is named with what to do: an unreadable file (ssh
/// would go on without it and report only a refused login) or one
/// protected by a passphrase, which nobody is there to type.
pub fn check_key(creds: &Credentials) -> Result<()> {
    let Some(key) = &creds.ssh_key else {
        return Ok(());
    };
    let text = std::fs::read(key).with_context(|| format!("reading ssh key {}", key.display()))?;
    if key_is_encrypted(&text) {
        bail!(
            "ssh key {k} is encrypted with a passphrase, which provision, running \
             unattended, cannot type; give it a key without one, readable by root only \
             (`ssh-keygen -p -N '' -f {k}` removes the passphrase of a copy)",
            k = key.display()
        );
    }
    Ok(())
}

/// Whether a private key file needs a passphrase: a PEM key with
/// `Proc-Type: 4,ENCRYPTED`, a PKCS#8 `ENCRYPTED PRIVATE KEY`, or an
/// OpenSSH key whose cipher is not `none`. With `BatchMode` OpenSSH
/// cannot ask for the passphrase and only says "Permission denied".
fn key_is_encrypted(text: &[u8]) -> bool {
    let text = String::from_utf8_lossy(text);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return true;
    }
    let Some(body) = text
        .split("-----BEGIN OPENSSH PRIVATE KEY-----")
        .nth(1)
        .and_then(|b| b.split("-----END").next())
    else {
        return false;
    };
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let Ok(raw) = STANDARD.decode(b64) else {
        return false;
    };
    // "openssh-key-v1\0", then the cipher name as a length-prefixed string.
    let Some(rest) = raw.strip_prefix(b"openssh-key-v1\0") else {
        return false;
    };
    let Some(len) = rest
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
    else {
        return false;
    };
    rest.get(4..4 + len).is_some_and(|cipher| cipher != b"none")
}

/// The command that runs upload-pack on `t`'s server: `ssh` (or
/// `ssh_command` through the shell, as git runs `GIT_SSH_COMMAND`) with
/// the options provision needs: never a prompt, v2 asked for, the
/// configured key alone, and the configured known_hosts file strictly.
pub fn upload_pack(t: &SshTarget, creds: &Credentials) -> Command {
    let mut args: Vec<String> = vec![
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "SetEnv=GIT_PROTOCOL=version=2".into(),
    ];
    if let Some(p) = t.port {
        args.extend(["-p".into(), p.to_string()]);
    }
    if let Some(key) = &creds.ssh_key {
        args.extend([
            "-i".into(),
            key.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
        ]);
    }
    if let Some(file) = &creds.ssh_known_hosts {
        args.extend([
            "-o".into(),
            format!("UserKnownHostsFile={}", file.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
        ]);
    }
    args.push("--".into());
    args.push(t.destination());
    args.push(format!("git-upload-pack {}", quoted(&t.path)));
    let mut cmd = match &creds.ssh_command {
        Some(c) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(format!("{c} \"$@\"")).arg(c);
            cmd
        }
        None => Command::new("ssh"),
    };
    cmd.args(args).env("GIT_PROTOCOL", "version=2");
    cmd
}

/// `path` in single quotes for the server's shell, as git quotes it.
fn quoted(path: &str) -> String {
    format!("'{}'", path.replace('\'', "'\\''"))
}

/// What ssh said on stderr as the error's words.
pub fn explain(said: &str) -> String {
    format!("ssh: {said}")
}

/// What went wrong, read from ssh's words: the fault a person fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The host key is not in known_hosts (or none was given).
    UnknownHost,
    /// known_hosts holds another key for the host.
    ChangedHostKey,
    /// The server refused the key.
    Denied,
    /// The server could not be reached or dropped the connection.
    Unreachable,
}

/// The refusal `text` (an error's words, ssh's included) tells of.
pub fn refusal(text: &str) -> Option<Refusal> {
    if text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        Some(Refusal::ChangedHostKey)
    } else if text.contains("Host key verification failed")
        || text.contains("No ED25519 host key is known")
        || text.contains("host key is known")
    {
        Some(Refusal::UnknownHost)
    } else if text.contains("Permission denied") {
        Some(Refusal::Denied)
    } else if [
        "Connection refused",
        "Connection timed out",
        "No route to host",
        "Could not resolve hostname",
        "Connection closed by",
        "Connection reset",
        "timed out",
    ]
    .iter()
    .any(|m| text.contains(m))
    {
        Some(Refusal::Unreachable)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_urls_and_scp_paths_are_read_and_options_are_not_hosts() {
        let t = SshTarget::parse("ssh://git@h.example:2222/srv/r.git").expect("ssh url");
        assert_eq!(
            (t.user.as_deref(), t.host.as_str(), t.port, t.path.as_str()),
            (Some("git"), "h.example", Some(2222), "/srv/r.git")
        );
        assert_eq!(t.known_as(), "[h.example]:2222");
        let t = SshTarget::parse("git@github.com:o/r.git").expect("scp-like");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("github.com", None, "o/r.git")
        );
        let t = SshTarget::parse("ssh://h/~alice/r").expect("home");
        assert_eq!(t.path, "~alice/r");
        for bad in [
            "ssh://-oProxyCommand=x/r",
            "-oProxyCommand=x:r",
            "https://h/r",
            "/srv/r",
            "h:",
        ] {
            assert_eq!(SshTarget::parse(bad), None, "{bad}");
        }
        assert_eq!(quoted("/srv/it's"), "'/srv/it'\\''s'");
    }

    #[test]
    fn the_command_keeps_to_the_configured_key_and_known_hosts() {
        let t = SshTarget::parse("ssh://git@h:2222/r").expect("url");
        let creds = Credentials {
            ssh_key: Some("/etc/provision/id".into()),
            ssh_known_hosts: Some("/etc/provision/kh".into()),
            ..Credentials::default()
        };
        let cmd = upload_pack(&t, &creds);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cmd.get_program(), "ssh");
        for want in [
            "BatchMode=yes",
            "SetEnv=GIT_PROTOCOL=version=2",
            "IdentitiesOnly=yes",
            "UserKnownHostsFile=/etc/provision/kh",
            "StrictHostKeyChecking=yes",
            "git@h",
            "git-upload-pack '/r'",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        let dash = args.iter().position(|a| a == "--").expect("--");
        assert_eq!(args[dash + 1], "git@h", "the host comes after --");
    }
}
