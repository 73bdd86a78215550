//! `fleet encrypt` and `fleet rekey`: a secret is encrypted for the
//! machines that run its service, with their ssh host keys as the
//! recipients (nothing new to distribute, nothing new to trust: the keys
//! are those the fleet's known_hosts already pins), plus the operator's
//! own recipients. Only ciphertext is ever written or shown.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::fleet::host_keys::{self, HostKey};
use crate::fleet::ssh::Transport;
use crate::util::secret;

/// Who a file is encrypted for.
pub struct Recipients {
    /// Each machine and the host key it was found by.
    pub machines: Vec<(String, HostKey)>,
    /// The further recipients given.
    pub extra: Vec<String>,
}

impl Recipients {
    /// Every recipient, for the encryptor.
    fn all(&self) -> Result<Vec<Box<dyn age::Recipient + Send>>> {
        self.machines
            .iter()
            .map(|(m, k)| secret::recipient(&k.key).with_context(|| format!("the host key of {m}")))
            .chain(self.extra.iter().map(|r| secret::recipient(r)))
            .collect()
    }

    /// `web1, web2 and 1 further recipient`, for the summary line.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.machines.iter().map(|(m, _)| m.as_str()).collect();
        let mut s = format!("{} machine(s) ({})", names.len(), names.join(", "));
        if !self.extra.is_empty() {
            s.push_str(&format!(" and {} further recipient(s)", self.extra.len()));
        }
        s
    }
}

/// The host keys of `machines`, from known_hosts, or (`keyscan`) from the
/// machine itself once `confirm(machine, fingerprint)` says yes. A machine
/// with neither is an error naming it and how to pin its key.
pub fn recipients(
    machines: &[String],
    transport: &Transport,
    extra: &[String],
    keyscan: bool,
    confirm: &dyn Fn(&str, &str) -> Result<bool>,
) -> Result<Recipients> {
    for r in extra {
        secret::recipient(r).context("--recipient")?;
    }
    let mut out = Vec::new();
    for m in machines {
        let route = host_keys::route(transport, m)?;
        if let Some(k) = host_keys::pinned(&route)? {
            out.push((m.clone(), k));
            continue;
        }
        let files: Vec<String> = route
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        if !keyscan {
            bail!(
                "no ssh-ed25519 host key of {m} (as {}) in {}: connect once with ssh to pin it, or pass --keyscan to ask the machine and confirm its fingerprint",
                route.known_as,
                files.join(", ")
            );
        }
        let Some(key) = host_keys::scan(&route, transport.connect_timeout)? else {
            bail!(
                "{m} ({}:{}) sent no ssh-ed25519 host key to ssh-keyscan",
                route.host,
                route.port
            );
        };
        if !confirm(m, &host_keys::fingerprint(&key)?)? {
            bail!("the host key of {m} was not confirmed; nothing was written");
        }
        out.push((
            m.clone(),
            HostKey {
                key,
                file: PathBuf::from("ssh-keyscan"),
            },
        ));
    }
    Ok(Recipients {
        machines: out,
        extra: extra.to_vec(),
    })
}

/// The machines of `config` running `service` (all of `selected` when
/// `None`), in `selected`'s order.
pub fn machines_running(
    config: &Config,
    selected: &[String],
    service: Option<&str>,
) -> Vec<String> {
    selected
        .iter()
        .filter(|m| {
            service.is_none_or(|name| {
                config
                    .services
                    .iter()
                    .any(|s| &s.machine == *m && s.name == name)
            })
        })
        .cloned()
        .collect()
}

/// `plaintext` encrypted for `to`, ASCII-armored (it reads as text in Git,
/// and `age -d` reads it as it is).
pub fn encrypt(plaintext: &[u8], to: &Recipients) -> Result<Vec<u8>> {
    secret::encrypt(plaintext, &to.all()?, true)
}

/// The services whose `decrypt` dirs hold `rel` (a path in the
/// repository), and the machines of `selected` that run them.
pub fn machines_for_file(
    config: &Config,
    selected: &[String],
    rel: &Path,
) -> (Vec<String>, Vec<String>) {
    let mut services = Vec::new();
    let mut machines = Vec::new();
    for s in &config.services {
        let holds = s
            .dirs
            .iter()
            .any(|d| d.decrypt && rel.starts_with(Path::new(&d.link)));
        if !holds || !selected.contains(&s.machine) {
            continue;
        }
        if !services.contains(&s.name) {
            services.push(s.name.clone());
        }
        if !machines.contains(&s.machine) {
            machines.push(s.machine.clone());
        }
    }
    (services, machines)
}

/// `path` relative to the top of the git checkout it is in.
pub fn in_checkout(path: &Path) -> Result<PathBuf> {
    let abs = std::fs::canonicalize(path).with_context(|| format!("reading {}", path.display()))?;
    let dir = abs.parent().context("a file has a directory")?;
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .context("running git rev-parse")?;
    if !out.status.success() {
        bail!("{} is not in a git checkout", path.display());
    }
    let top = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(abs
        .strip_prefix(&top)
        .with_context(|| {
            format!(
                "{} is outside its checkout {}",
                abs.display(),
                top.display()
            )
        })?
        .to_path_buf())
}

/// Re-encrypts the file at `path` for `to`, decrypting it with
/// `identity`; written in place, atomically.
pub fn rekey(path: &Path, identity: &secret::Identity, to: &Recipients) -> Result<()> {
    let old = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let plain = identity.decrypt(&old, path)?;
    let new = encrypt(&plain, to)?;
    crate::util::write_atomic(path, &new, crate::util::Visibility::Public)
}
