//! What `provision check` reports of this machine's services beyond the
//! config's own validity: directories a reboot would empty, and the trusted
//! key files, each read once as a pass would read it.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config::Service;

/// The state dir and `mount` directories that a reboot would empty, each
/// as a warning.
pub fn volatile(state_dir: &Path, services: &[&Service]) -> Vec<String> {
    let mut dirs: Vec<(PathBuf, String)> =
        vec![(state_dir.to_path_buf(), "the state dir".to_string())];
    for svc in services {
        if let Some(m) = &svc.mount {
            dirs.push((m.clone(), format!("`mount` of {}", svc.name)));
        }
    }
    dirs.dedup_by(|a, b| a.0 == b.0);
    dirs.into_iter()
        .filter_map(|(dir, what)| {
            let fs = crate::host::volatile::memory_backed(&dir).ok().flatten()?;
            Some(format!(
                "{what}, {}, is on {fs}: its releases are lost at reboot and the service would \
                 start on what its package ships; choose a directory on disk",
                dir.display()
            ))
        })
        .collect()
}

/// One key file: trusted signers (`allowed_signers`, `openpgp_keys`) or
/// the identity that decrypts (`age_identity`, for a service with a
/// `decrypt` dir).
pub struct KeyFile {
    /// The file.
    pub path: PathBuf,
    /// The services that use it, comma-separated.
    pub services: String,
    /// How many keys it holds, in words, or why it does not read.
    pub read: Result<String>,
}

/// What a key file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    AllowedSigners,
    OpenPgp,
    AgeIdentity,
}

/// Each key file once, with the services that use it, read now.
pub fn key_files(services: &[&Service]) -> Vec<KeyFile> {
    let mut out: Vec<(PathBuf, Role, Vec<&str>)> = Vec::new();
    for svc in services {
        let decrypts = svc.dirs.iter().any(|d| d.decrypt);
        let files = [
            (svc.allowed_signers.as_ref(), Role::AllowedSigners),
            (svc.openpgp_keys.as_ref(), Role::OpenPgp),
            (
                Some(&svc.age_identity).filter(|_| decrypts),
                Role::AgeIdentity,
            ),
        ];
        for (p, role) in files.iter().filter_map(|(p, r)| p.map(|p| (p, *r))) {
            match out.iter_mut().find(|(q, r, _)| q == p && *r == role) {
                Some((_, _, names)) => names.push(&svc.name),
                None => out.push((p.clone(), role, vec![&svc.name])),
            }
        }
    }
    out.into_iter()
        .map(|(path, role, names)| {
            let read = match role {
                Role::OpenPgp => crate::git::openpgp_keys::load(&path)
                    .map(|k| format!("{} OpenPGP key(s)", k.len())),
                Role::AllowedSigners => crate::git::allowed_signers::load(&path)
                    .map(|s| format!("{} allowed signer(s)", s.len())),
                Role::AgeIdentity => crate::util::secret::Identity::load(&path)
                    .map(|_| "the age identity that decrypts".to_string()),
            };
            KeyFile {
                path,
                services: names.join(", "),
                read,
            }
        })
        .collect()
}

/// For each service with change windows: the windows, and whether one is
/// open now or when the next opens.
pub fn windows(services: &[&Service], now: u64) -> Vec<String> {
    services
        .iter()
        .filter(|s| !s.rollout.windows.always())
        .map(|s| {
            let w = &s.rollout.windows;
            let list: Vec<&str> = w.0.iter().map(|x| x.text.as_str()).collect();
            let when = if w.is_open(now) {
                "open now".to_string()
            } else {
                match w.next_open(now) {
                    Some(t) => format!("next opens {} UTC", crate::util::format_utc(t as i64)),
                    None => "opens not in the next ten years".to_string(),
                }
            };
            format!("{}: change windows {}: {when}", s.name, list.join("; "))
        })
        .collect()
}
