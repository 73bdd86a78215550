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

/// One trusted key file (`allowed_signers` or `openpgp_keys`).
pub struct KeyFile {
    /// The file.
    pub path: PathBuf,
    /// The services that use it, comma-separated.
    pub services: String,
    /// How many keys it holds, in words, or why it does not read.
    pub read: Result<String>,
}

/// Each key file once, with the services that use it, read now.
pub fn key_files(services: &[&Service]) -> Vec<KeyFile> {
    let mut out: Vec<(PathBuf, bool, Vec<&str>)> = Vec::new();
    for svc in services {
        let files = [(&svc.allowed_signers, false), (&svc.openpgp_keys, true)];
        for (p, openpgp) in files
            .iter()
            .filter_map(|(p, o)| p.as_ref().map(|p| (p, *o)))
        {
            match out.iter_mut().find(|(q, o, _)| q == p && *o == openpgp) {
                Some((_, _, names)) => names.push(&svc.name),
                None => out.push((p.clone(), openpgp, vec![&svc.name])),
            }
        }
    }
    out.into_iter()
        .map(|(path, openpgp, names)| {
            let read = if openpgp {
                crate::git::openpgp_keys::load(&path).map(|k| format!("{} OpenPGP key(s)", k.len()))
            } else {
                crate::git::allowed_signers::load(&path)
                    .map(|s| format!("{} allowed signer(s)", s.len()))
            };
            KeyFile {
                path,
                services: names.join(", "),
                read,
            }
        })
        .collect()
}
