//! Where one service's things live on disk: its state file and lock, its
//! releases, its mirror. Worked out once per command from the service and
//! the state directory, and handed down, so no layer rebuilds a path from
//! `(service, state_dir)` and two layers cannot disagree about one.

use std::path::{Path, PathBuf};

use git2::Oid;

use crate::config::{Service, Upstream};

/// Directory under a service's base (`mount`, else the state directory)
/// holding its mirrors.
pub const MIRRORS_DIR: &str = ".mirrors";

/// The paths of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The service's name.
    pub name: String,
    /// The machine's state directory, every service's.
    pub root: PathBuf,
    /// `<root>/<name>`: the service's state file and lock.
    pub state: PathBuf,
    /// `mount`, else `root`: where its releases and mirrors are.
    pub base: PathBuf,
    /// `<base>/<name>`: its releases and their manifests.
    pub releases: PathBuf,
    /// `<base>/.mirrors/<slug>-<hash>.git`: the mirror it fetches through.
    pub mirror: PathBuf,
}

impl Place {
    /// The paths of `svc` under `state_dir`.
    pub fn of(svc: &Service, state_dir: &Path) -> Place {
        let base = svc.mount.clone().unwrap_or_else(|| state_dir.to_path_buf());
        Place {
            name: svc.name.clone(),
            root: state_dir.to_path_buf(),
            state: state_dir.join(&svc.name),
            releases: base.join(&svc.name),
            mirror: mirror_path(&base, &svc.upstream, &svc.branch),
            base,
        }
    }
}

/// The mirror of `upstream`'s `branch` under `base`: a readable slug of the
/// URL plus a hash of URL and branch, so switching a service to another
/// branch or repository uses a new mirror instead of reinterpreting an old
/// one.
pub fn mirror_path(base: &Path, upstream: &Upstream, branch: &str) -> PathBuf {
    let key = format!("{}\n{}", upstream.url, branch);
    let hash = Oid::hash_object(git2::ObjectType::Blob, key.as_bytes())
        .map(|o| o.to_string())
        .unwrap_or_default();
    base.join(MIRRORS_DIR).join(format!(
        "{}-{}.git",
        slug(&upstream.url, branch),
        &hash[..12.min(hash.len())]
    ))
}

/// The last part of the URL and the branch, in letters, digits, `-` and
/// `_`, at most 48 of them.
fn slug(url: &str, branch: &str) -> String {
    let tail = url.trim_end_matches('/').trim_end_matches(".git");
    let tail = tail.rsplit(['/', ':']).next().unwrap_or("repo");
    format!("{tail}-{branch}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect()
}
