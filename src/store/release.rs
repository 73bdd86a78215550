//! Immutable per-service releases: the files one service mounts, exactly as
//! they are in one commit.
//!
//! A release is written under a temporary name and renamed into place when
//! complete, so a release directory that exists is always whole; the host
//! side only ever mounts whole releases. A release is named after its commit
//! and a fingerprint of the service's `dirs`, so changing which paths a
//! service mounts produces a new release instead of reusing a stale one.
//!
//! Repository content is used as-is, with one exception for safety: a
//! symbolic link whose target leaves the release is refused, so a repository
//! cannot make the host mount or expose arbitrary host paths.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use git2::{FileMode, ObjectType, Odb, Oid, Repository, Tree, TreeEntry};
use nix::unistd::{Gid, Uid};

use crate::config::{Dir, Limits, Service, DEFAULT_FILE_MODE, DEFAULT_SECRET_MODE};
use crate::store::manifest::{Kind, Manifest};
use crate::util::secret::{self, Plaintext};
use crate::util::{dirfd, human_size};

/// Directory of a service's releases, below its service directory.
pub const RELEASES_DIR: &str = "releases";
const TMP_PREFIX: &str = ".tmp-";
const REPLACED_PREFIX: &str = ".replaced-";
/// Directory of the releases' manifests, below the service directory.
pub const MANIFESTS_DIR: &str = "manifests";
/// Mode of the service directory and of `releases/`: root's alone. Services
/// reach their files through the bind mounts, whose path lookups start at
/// the mounted directory and never cross these.
const PRIVATE_DIR: u32 = 0o700;

/// Owner given to every file of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The user.
    pub uid: Uid,
    /// The user's primary group.
    pub gid: Gid,
}

impl Owner {
    /// Looks up a user name (its primary group is used).
    pub fn lookup(user: &str) -> Result<Owner> {
        let u = nix::unistd::User::from_name(user)
            .with_context(|| format!("looking up user {user:?}"))?
            .with_context(|| format!("user {user:?} does not exist on this machine"))?;
        Ok(Owner {
            uid: u.uid,
            gid: u.gid,
        })
    }
}

/// Who owns the files of one `dirs` entry, and their permission bits.
///
/// A writable entry (`readonly = false`) of a service with a `user` belongs
/// to that user, who may edit it (drift then reports the edit). Everything
/// else belongs to root, so `readonly` holds against the service's own user
/// too; the group is `group`, else the user's primary group, else root's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Owner of every file and directory.
    pub uid: u32,
    /// Group of every file and directory.
    pub gid: u32,
    /// Permission bits of regular files.
    pub mode: u32,
    /// Owner of decrypted files: the service's user whatever `readonly`
    /// says (a read-only mount keeps them unchanged; a secret only root
    /// could read would be of no use to the service), else root.
    pub secret_uid: u32,
    /// Permission bits of decrypted files.
    pub secret_mode: u32,
}

impl Access {
    /// The access of `d` for a service run by `user`.
    pub fn of(d: &Dir, user: Option<Owner>) -> Result<Access> {
        let group = match &d.group {
            Some(g) => Some(
                nix::unistd::Group::from_name(g)
                    .with_context(|| format!("looking up group {g:?}"))?
                    .with_context(|| format!("group {g:?} does not exist on this machine"))?
                    .gid,
            ),
            None => None,
        };
        let uid = match user {
            Some(u) if !d.readonly => u.uid.as_raw(),
            _ => 0,
        };
        let gid = group.or(user.map(|u| u.gid)).map_or(0, Gid::as_raw);
        Ok(Access {
            uid,
            gid,
            mode: d.mode,
            secret_uid: user.map_or(0, |u| u.uid.as_raw()),
            secret_mode: d.secret_mode,
        })
    }

    /// Permission bits for `kind`.
    fn perm(&self, kind: Kind) -> u32 {
        match kind {
            Kind::File => self.mode,
            Kind::Exec | Kind::Dir => self.mode | ((self.mode & 0o444) >> 2),
            Kind::Symlink => 0o777,
            Kind::Secret => self.secret_mode,
        }
    }
}

/// The releases of one service.
#[derive(Debug, Clone)]
pub struct Releases {
    service_dir: PathBuf,
    dir: PathBuf,
    manifests: PathBuf,
}

impl Releases {
    /// Releases kept under `service_dir/releases`.
    pub fn new(service_dir: &Path) -> Releases {
        Releases {
            service_dir: service_dir.to_path_buf(),
            dir: service_dir.join(RELEASES_DIR),
            manifests: service_dir.join(MANIFESTS_DIR),
        }
    }

    /// The release name for `commit` with the service's `dirs`.
    pub fn name(commit: Oid, svc: &Service) -> String {
        format!("{commit}-{}", fingerprint(&svc.dirs, svc.user.as_deref()))
    }

    /// Path of a release by name.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether a complete release of that name exists.
    pub fn exists(&self, name: &str) -> bool {
        matches!(
            dirfd::Dir::open_opt(&self.dir)
                .map(|d| d.and_then(|d| d.dir_opt(Path::new(name)).ok().flatten())),
            Ok(Some(_))
        )
    }

    /// Opens `releases/`, creating it and the service directory (root's
    /// alone) when missing, and taking away any access others had to them.
    fn open(&self) -> Result<dirfd::Dir> {
        let service = dirfd::Dir::create(&self.service_dir, PRIVATE_DIR)?;
        let releases = service.ensure_dir(OsStr::new(RELEASES_DIR), PRIVATE_DIR)?;
        for d in [&service, &releases] {
            let m = d.meta_self()?;
            if m.uid != 0 {
                bail!(
                    "{} belongs to uid {}, not root; refusing to write releases there",
                    d.path().display(),
                    m.uid
                );
            }
            if m.perm != PRIVATE_DIR {
                d.chmod(PRIVATE_DIR)?;
            }
        }
        Ok(releases)
    }

    /// Writes the release of `commit` for `svc` unless it exists; returns
    /// its path.
    pub fn materialize(&self, repo: &Repository, commit: Oid, svc: &Service) -> Result<PathBuf> {
        let name = Releases::name(commit, svc);
        let releases = self.open()?;
        if releases.dir_opt(Path::new(&name))?.is_some() {
            return Ok(self.path(&name));
        }
        let tmp = self.write_tmp(&releases, repo, commit, svc, &name)?;
        releases.rename(&tmp, &releases, OsStr::new(&name))?;
        releases.sync()?;
        Ok(self.path(&name))
    }

    /// Writes the release of `commit` afresh and puts it in place of the
    /// existing one, which stays (renamed, still mounted) until
    /// [`Releases::remove_replaced`] runs after the mounts moved over: local
    /// edits to the old copy are discarded without the mounted paths ever
    /// showing a missing or half-written tree.
    pub fn rewrite(&self, repo: &Repository, commit: Oid, svc: &Service) -> Result<PathBuf> {
        let name = Releases::name(commit, svc);
        let releases = self.open()?;
        let tmp = self.write_tmp(&releases, repo, commit, svc, &name)?;
        if releases.meta(OsStr::new(&name))?.is_some() {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let aside = format!("{REPLACED_PREFIX}{name}-{stamp}");
            releases.rename(OsStr::new(&name), &releases, OsStr::new(&aside))?;
        }
        releases.rename(&tmp, &releases, OsStr::new(&name))?;
        releases.sync()?;
        Ok(self.path(&name))
    }

    /// Deletes the copies [`Releases::rewrite`] replaced. Only call once every
    /// mount shows the current release, or a mounted tree would be emptied.
    pub fn remove_replaced(&self) -> Result<()> {
        match dirfd::Dir::open_opt(&self.dir)? {
            Some(releases) => remove_prefixed(&releases, REPLACED_PREFIX),
            None => Ok(()),
        }
    }

    /// Writes the release under a temporary name, with its manifest, and
    /// returns that name. The temporary directory is root's alone (0700,
    /// inside `releases/`, itself 0700) from creation to rename, so no user
    /// can reach any file of it while it is written; every file is created
    /// through the descriptor of its directory, `O_EXCL|O_NOFOLLOW`.
    fn write_tmp(
        &self,
        releases: &dirfd::Dir,
        repo: &Repository,
        commit: Oid,
        svc: &Service,
        name: &str,
    ) -> Result<std::ffi::OsString> {
        remove_prefixed(releases, TMP_PREFIX)?;
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .with_context(|| format!("reading tree of commit {commit}"))?;
        let odb = repo.odb().context("opening the mirror's object database")?;
        check_limits(repo, &odb, &tree, commit, &svc.dirs, &svc.limits)?;
        let user = svc.user.as_deref().map(Owner::lookup).transpose()?;
        let tmp = std::ffi::OsString::from(format!("{TMP_PREFIX}{name}"));
        let root = releases.mkdir(&tmp, PRIVATE_DIR)?;
        let mut w = Writer {
            repo,
            odb: &odb,
            link_root: PathBuf::new(),
            link_tree: None,
            access: Access {
                uid: 0,
                gid: 0,
                mode: DEFAULT_FILE_MODE,
                secret_uid: 0,
                secret_mode: DEFAULT_SECRET_MODE,
            },
            manifest: Manifest::default(),
            decrypt: false,
            identity: None,
            age_identity: svc.age_identity.clone(),
        };
        let written = w
            .write(&tree, commit, &svc.dirs, user, &root)
            // Private until complete; then it looks like any tree (its
            // parent, `releases/`, stays root's alone).
            .and_then(|()| root.chmod(0o755))
            .and_then(|()| root.syncfs())
            .and_then(|()| w.manifest.write(&self.manifest_path(name)));
        if let Err(e) = written {
            // Free the space at once: on a full disk the state file and
            // the metrics that report this failure need it.
            let _ = releases.remove_tree(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    /// Where the manifest of release `name` is kept: outside it, since the
    /// release itself holds repository content only.
    pub fn manifest_path(&self, name: &str) -> PathBuf {
        self.manifests.join(name)
    }

    /// The manifest of release `name` of `commit`: the one written with it,
    /// or, for a release written without one, rebuilt from `repo`.
    pub fn manifest(
        &self,
        name: &str,
        repo: Option<&Repository>,
        commit: Oid,
        dirs: &[Dir],
    ) -> Result<Manifest> {
        if let Some(m) = Manifest::read(&self.manifest_path(name))? {
            return Ok(m);
        }
        let repo = repo.with_context(|| {
            format!("release {name} has no manifest and the mirror is unavailable")
        })?;
        Manifest::from_tree(repo, commit, dirs)
    }

    /// Complete releases, newest first (by the time they were last deployed,
    /// which [`Releases::touch`] records in the directory's mtime).
    pub fn list(&self) -> Result<Vec<String>> {
        let Some(releases) = dirfd::Dir::open_opt(&self.dir)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in releases.entries()? {
            let name = e.to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Some(m) = releases.meta(&e)? else {
                continue;
            };
            out.push((m.mtime_ns, name));
        }
        out.sort_by(|a, b| b.cmp(a));
        Ok(out.into_iter().map(|(_, n)| n).collect())
    }

    /// Marks a release as just deployed, for [`Releases::prune`]'s order.
    pub fn touch(&self, name: &str) -> Result<()> {
        let releases = dirfd::Dir::open(&self.dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ts = rustix::fs::Timespec {
            tv_sec: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: now.subsec_nanos().into(),
        };
        let times = rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        };
        rustix::fs::utimensat(
            releases.fd(),
            name,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("touching {}", self.path(name).display()))
    }

    /// Keeps the `keep` most recently deployed releases and always `current`;
    /// deletes the rest. Returns the names removed.
    pub fn prune(&self, keep: usize, current: &str) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let list = self.list()?;
        if list.len() > keep {
            let releases = dirfd::Dir::open(&self.dir)?;
            for (i, name) in list.into_iter().enumerate() {
                if i >= keep && name != current {
                    releases.remove_tree(OsStr::new(&name))?;
                    removed.push(name);
                }
            }
        }
        self.remove_orphan_manifests()?;
        Ok(removed)
    }

    /// Manifests whose release is gone (pruned, or never renamed into place).
    fn remove_orphan_manifests(&self) -> Result<()> {
        let Some(manifests) = dirfd::Dir::open_opt(&self.manifests)? else {
            return Ok(());
        };
        let Some(releases) = dirfd::Dir::open_opt(&self.dir)? else {
            return Ok(());
        };
        for e in manifests.entries()? {
            if !e.as_bytes().starts_with(b".") && releases.meta(&e)?.is_none() {
                manifests.remove_file(&e)?;
            }
        }
        Ok(())
    }
}

/// Removes the entries of `releases` whose name starts with `prefix`.
fn remove_prefixed(releases: &dirfd::Dir, prefix: &str) -> Result<()> {
    for e in releases.entries()? {
        if e.as_bytes().starts_with(prefix.as_bytes()) {
            releases.remove_tree(&e)?;
        }
    }
    Ok(())
}

/// `text` (a check's output) with every line of the release's decrypted
/// files masked, so that a `validate` that prints the file it reads (a
/// config test quoting a line) does not carry a secret into the state,
/// the journal or the fleet page. Lines under 4 characters are left: they
/// would mask ordinary words and reveal nothing.
pub fn redact_secrets(release: &Path, text: &str) -> String {
    let (Some(name), Some(service_dir)) = (
        release.file_name().and_then(OsStr::to_str),
        release.parent().and_then(Path::parent),
    ) else {
        return text.to_string();
    };
    let releases = Releases::new(service_dir);
    let Ok(Some(manifest)) = Manifest::read(&releases.manifest_path(name)) else {
        return text.to_string();
    };
    let Ok(root) = dirfd::Dir::open(release) else {
        return text.to_string();
    };
    let mut out = text.to_string();
    for rel in manifest.secrets() {
        let mut plain = zeroize::Zeroizing::new(Vec::new());
        let read = root
            .open_file(rel)
            .and_then(|mut f| f.read_to_end(&mut plain).map_err(Into::into));
        if read.is_err() {
            continue;
        }
        let plain = zeroize::Zeroizing::new(String::from_utf8_lossy(&plain).into_owned());
        let mask = format!("[secret {}]", rel.display());
        for line in plain
            .lines()
            .map(str::trim)
            .filter(|l| l.chars().count() >= 4)
        {
            out = out.replace(line, &mask);
        }
    }
    out
}

/// A short, stable digest of what a service mounts and who owns it. Mode
/// and group enter only when set, and the user only when there is one, so
/// that adding them makes a new release (written with the new owners and
/// modes) while the names of releases without them stay as they were.
pub fn fingerprint(dirs: &[Dir], user: Option<&str>) -> String {
    let mut links: Vec<String> = dirs
        .iter()
        .map(|d| {
            let mut s = format!("{}\0{}", d.link, d.file);
            if d.mode != DEFAULT_FILE_MODE || d.group.is_some() {
                s.push_str(&format!(
                    "\0{:o}\0{}",
                    d.mode,
                    d.group.as_deref().unwrap_or("")
                ));
            }
            if let Some(u) = user {
                s.push_str(&format!("\0user={u}\0{}", d.readonly));
            }
            if d.decrypt {
                s.push_str(&format!("\0decrypt\0{:o}", d.secret_mode));
            }
            s
        })
        .collect();
    links.sort();
    let oid = Oid::hash_object(ObjectType::Blob, links.join("\n").as_bytes())
        .map(|o| o.to_string())
        .unwrap_or_default();
    oid.chars().take(8).collect()
}

/// Refuses a commit whose files for `dirs` exceed `limits`, before anything
/// is written: sizes come from the object headers, so a small pack that
/// inflates into a huge blob is never inflated.
fn check_limits(
    repo: &Repository,
    odb: &Odb<'_>,
    tree: &Tree<'_>,
    commit: Oid,
    dirs: &[Dir],
    limits: &Limits,
) -> Result<()> {
    let mut count = Count::default();
    for d in dirs {
        let Ok(entry) = tree.get_path(Path::new(&d.link)) else {
            continue; // reported with its own message when written
        };
        count.entry(repo, odb, &entry, Path::new(&d.link), limits, commit)?;
    }
    Ok(())
}

/// Running totals of [`check_limits`].
#[derive(Default)]
struct Count {
    files: u64,
    bytes: u64,
}

impl Count {
    fn entry(
        &mut self,
        repo: &Repository,
        odb: &Odb<'_>,
        entry: &TreeEntry<'_>,
        rel: &Path,
        limits: &Limits,
        commit: Oid,
    ) -> Result<()> {
        self.files += 1;
        if self.files > limits.max_files {
            bail!(
                "commit {commit} has more than {} files for this service (max_files); refusing to write it",
                limits.max_files
            );
        }
        let mode = entry.filemode();
        if mode == i32::from(FileMode::Tree) {
            let tree = repo
                .find_tree(entry.id())
                .with_context(|| format!("reading tree {}", entry.id()))?;
            for child in tree.iter() {
                let name = OsStr::from_bytes(child.name_bytes());
                self.entry(repo, odb, &child, &rel.join(name), limits, commit)?;
            }
            return Ok(());
        }
        if mode != i32::from(FileMode::Blob) && mode != i32::from(FileMode::BlobExecutable) {
            return Ok(());
        }
        let (size, _) = odb
            .read_header(entry.id())
            .with_context(|| format!("reading the header of blob {}", entry.id()))?;
        let size = size as u64;
        if size > limits.max_file_size {
            bail!(
                "{} in commit {commit} is {}, more than max_file_size ({}); refusing to write it",
                rel.display(),
                human_size(size),
                human_size(limits.max_file_size)
            );
        }
        self.bytes += size;
        if self.bytes > limits.max_release_size {
            bail!(
                "the service's files in commit {commit} add up to more than max_release_size ({}); refusing to write them",
                human_size(limits.max_release_size)
            );
        }
        Ok(())
    }
}

/// Writes git objects into one temporary release directory, always through
/// the descriptor of the directory being filled.
struct Writer<'a> {
    repo: &'a Repository,
    odb: &'a Odb<'a>,
    /// While a `link` is written, its path in the release: symlinks are
    /// judged against it, since that is what is mounted on the host.
    link_root: PathBuf,
    /// While a directory `link` is written, its tree: symlinks are resolved
    /// through it, following the symlinks it holds, as the kernel will.
    link_tree: Option<Oid>,
    /// Owner and mode of the link being written.
    access: Access,
    manifest: Manifest,
    /// The link being written decrypts its `.age` files.
    decrypt: bool,
    /// The service's `age_identity`, read at the first file to decrypt.
    identity: Option<secret::Identity>,
    age_identity: PathBuf,
}

impl Writer<'_> {
    /// Writes every `dirs` entry of `tree` into the new release `root`.
    fn write(
        &mut self,
        tree: &Tree<'_>,
        commit: Oid,
        dirs: &[Dir],
        user: Option<Owner>,
        root: &dirfd::Dir,
    ) -> Result<()> {
        for d in dirs {
            self.access = Access::of(d, user)?;
            self.decrypt = d.decrypt;
            self.link(tree, d, root)
                .with_context(|| format!("materializing {:?} of commit {commit}", d.link))?;
        }
        Ok(())
    }

    /// Writes the `link` path of `tree` into the release at the same path.
    fn link(&mut self, tree: &Tree<'_>, d: &Dir, root: &dirfd::Dir) -> Result<()> {
        let entry = tree.get_path(Path::new(&d.link)).map_err(|_| {
            anyhow::anyhow!(
                "path {:?} does not exist in the repository (or a parent of it is not a directory)",
                d.link
            )
        })?;
        let what = if entry.filemode() == i32::from(FileMode::Link) {
            Some("a symbolic link (never followed)")
        } else if entry.filemode() == i32::from(FileMode::Commit) {
            Some("a submodule (its files are not in this repository)")
        } else {
            None
        };
        if let Some(what) = what {
            bail!(
                "{:?} is {what}; a link must be a directory, or a regular file with file = true",
                d.link
            );
        }
        let rel = PathBuf::from(&d.link);
        let name = rel.file_name().context("link has a name")?.to_os_string();
        // The link's parents exist only inside the release: root's, 0755.
        let mut parent = root.dir(Path::new("."))?;
        for c in rel.parent().into_iter().flat_map(Path::components) {
            parent = parent.ensure_dir(c.as_os_str(), 0o755)?;
        }
        match (entry.kind(), d.file) {
            (Some(ObjectType::Tree), false) => {
                self.link_root = rel.clone();
                self.link_tree = Some(entry.id());
                let r = self.tree(&entry, &parent, &name, &rel);
                self.link_root = PathBuf::new();
                self.link_tree = None;
                r
            }
            // The encrypted file itself is the link: decrypted under its
            // own name, which is what the mount shows.
            (Some(ObjectType::Blob), true) if d.decrypt => {
                self.secret(&entry, &parent, &name, &rel)
            }
            (Some(ObjectType::Blob), true) => self.entry(&entry, &parent, &name, &rel),
            (_, true) => bail!(
                "{:?} is configured with file = true but is not a regular file in the repository",
                d.link
            ),
            (_, false) => bail!(
                "{:?} is not a directory in the repository; set file = true to mount a single file",
                d.link
            ),
        }
    }

    /// Creates directory `name` in `parent` and writes `entry`'s tree into it.
    fn tree(
        &mut self,
        entry: &TreeEntry<'_>,
        parent: &dirfd::Dir,
        name: &OsStr,
        rel: &Path,
    ) -> Result<()> {
        let tree = self
            .repo
            .find_tree(entry.id())
            .with_context(|| format!("reading tree {}", entry.id()))?;
        let dir = self.mkdir(parent, name, rel)?;
        let mut seen = std::collections::HashSet::new();
        for child in tree.iter() {
            let child_name = entry_name(child.name_bytes())?;
            let child_rel = rel.join(child_name);
            if !seen.insert(child.name_bytes().to_vec()) {
                bail!("refusing duplicate tree entry {}", child_rel.display());
            }
            if self.decrypt {
                if let Some(plain) = encrypted_name(child_name) {
                    if tree.get_name_bytes(plain.as_bytes()).is_some() {
                        bail!(
                            "{} and {} are both in the repository: with decrypt = true the first is what the second decrypts to; keep one",
                            rel.join(plain).display(),
                            child_rel.display()
                        );
                    }
                    let mode = child.filemode();
                    if mode == i32::from(FileMode::Blob)
                        || mode == i32::from(FileMode::BlobExecutable)
                    {
                        self.secret(&child, &dir, plain, &rel.join(plain))?;
                        continue;
                    }
                }
            }
            self.entry(&child, &dir, child_name, &child_rel)?;
        }
        Ok(())
    }

    /// Writes one tree entry as `name` in `dir` (`rel` in the release).
    fn entry(
        &mut self,
        entry: &TreeEntry<'_>,
        dir: &dirfd::Dir,
        name: &OsStr,
        rel: &Path,
    ) -> Result<()> {
        let mode = entry.filemode();
        if mode == i32::from(FileMode::Tree) {
            return self.tree(entry, dir, name, rel);
        }
        if mode == i32::from(FileMode::Commit) {
            // A submodule: like a plain checkout without `submodule update`.
            self.mkdir(dir, name, rel)?;
            return Ok(());
        }
        if mode == i32::from(FileMode::Link) {
            let blob = self
                .repo
                .find_blob(entry.id())
                .with_context(|| format!("reading blob {}", entry.id()))?;
            self.symlink(blob.content(), dir, name, rel)?;
            return self.record(dir, name, rel, Kind::Symlink, entry.id());
        }
        let kind = Kind::of_mode(mode);
        let mut f = dir.create_file(name, self.access.perm(kind))?;
        self.copy_blob(entry.id(), &mut f)
            .with_context(|| format!("writing {}", dir.path().join(name).display()))?;
        self.chown_file(&f, dir, name, self.access.uid)?;
        drop(f);
        self.record(dir, name, rel, kind, entry.id())
    }

    /// Decrypts the `.age` blob of `entry` with the service's identity and
    /// writes the plaintext as `name` in `dir` (`rel` in the release),
    /// with the secret's owner and mode; the manifest records the hash of
    /// the plaintext, so that drift compares what the service reads.
    fn secret(
        &mut self,
        entry: &TreeEntry<'_>,
        dir: &dirfd::Dir,
        name: &OsStr,
        rel: &Path,
    ) -> Result<()> {
        let blob = self
            .repo
            .find_blob(entry.id())
            .with_context(|| format!("reading blob {}", entry.id()))?;
        let mut encrypted = name.to_os_string();
        if encrypted_name(name).is_none() {
            encrypted.push(".age");
        }
        let encrypted = rel.with_file_name(encrypted);
        let plain: Plaintext = self.identity()?.decrypt(blob.content(), &encrypted)?;
        let mut f = dir.create_file(name, self.access.perm(Kind::Secret))?;
        f.write_all(&plain)
            .with_context(|| format!("writing {}", dir.path().join(name).display()))?;
        self.chown_file(&f, dir, name, self.access.secret_uid)?;
        drop(f);
        let oid = Oid::hash_object(ObjectType::Blob, &plain).context("hashing a decrypted file")?;
        self.record(dir, name, rel, Kind::Secret, oid)
    }

    /// The service's identity, read once per release.
    fn identity(&mut self) -> Result<&secret::Identity> {
        if self.identity.is_none() {
            let id = secret::Identity::load(&self.age_identity)
                .map_err(|e| secret::Undecryptable(format!("{e:#} (age_identity)")))?;
            self.identity = Some(id);
        }
        self.identity
            .as_ref()
            .context("the age identity was just read")
    }

    /// Streams blob `id` into `f` without holding it whole in memory where
    /// the object database can stream it (loose objects); packed objects
    /// are read whole, which [`check_limits`] bounds by `max_file_size`.
    fn copy_blob(&self, id: Oid, f: &mut File) -> Result<()> {
        if let Ok((mut reader, _, _)) = self.odb.reader(id) {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = reader.read(&mut buf).context("reading blob")?;
                if n == 0 {
                    return Ok(());
                }
                f.write_all(&buf[..n])?;
            }
        }
        let blob = self
            .repo
            .find_blob(id)
            .with_context(|| format!("reading blob {id}"))?;
        f.write_all(blob.content())?;
        Ok(())
    }

    /// Gives `f` (just created as `name` in `dir`) to `uid` and the
    /// link's group, through its descriptor.
    fn chown_file(&self, f: &File, dir: &dirfd::Dir, name: &OsStr, uid: u32) -> Result<()> {
        if uid == 0 && self.access.gid == 0 {
            return Ok(());
        }
        nix::unistd::fchown(
            std::os::fd::AsRawFd::as_raw_fd(f),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(self.access.gid)),
        )
        .with_context(|| format!("changing owner of {}", dir.path().join(name).display()))
    }

    /// Adds a just-written path to the manifest (after its owner is set,
    /// since that changes its ctime).
    fn record(
        &mut self,
        dir: &dirfd::Dir,
        name: &OsStr,
        rel: &Path,
        kind: Kind,
        oid: Oid,
    ) -> Result<()> {
        let meta = dir
            .meta(name)?
            .with_context(|| format!("{} vanished after writing it", rel.display()))?;
        self.manifest.record(rel, kind, oid, &meta);
        Ok(())
    }

    /// Creates a symlink whose target stays inside the release.
    fn symlink(&mut self, target: &[u8], dir: &dirfd::Dir, name: &OsStr, rel: &Path) -> Result<()> {
        let target = Path::new(OsStr::from_bytes(target));
        let in_link = rel
            .strip_prefix(&self.link_root)
            .context("symlink inside its link")?;
        let inside = match self.link_tree {
            Some(id) => resolves_inside(&self.repo.find_tree(id)?, self.repo, in_link, target)?,
            None => stays_inside(rel, target),
        };
        if !inside {
            bail!(
                "refusing symlink {} -> {}: it points outside the service's files",
                in_link.display(),
                target.display()
            );
        }
        dir.symlink(target.as_os_str(), name)?;
        if self.access.uid != 0 || self.access.gid != 0 {
            dir.chown(name, self.access.uid, self.access.gid)?;
        }
        Ok(())
    }

    /// Creates directory `name` in `parent` with the link's owner and mode,
    /// records it, and opens it.
    fn mkdir(&mut self, parent: &dirfd::Dir, name: &OsStr, rel: &Path) -> Result<dirfd::Dir> {
        let dir = parent.mkdir(name, self.access.perm(Kind::Dir))?;
        if self.access.uid != 0 || self.access.gid != 0 {
            dir.chown_self(self.access.uid, self.access.gid)?;
        }
        self.record(parent, name, rel, Kind::Dir, Oid::zero())?;
        Ok(dir)
    }
}

/// The name `name` decrypts to: without its `.age` suffix; `None` when it
/// has none (or is nothing but the suffix).
fn encrypted_name(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    b.strip_suffix(b".age")
        .filter(|s| !s.is_empty())
        .map(OsStr::from_bytes)
}

/// A tree entry name as a path component. Git never stores these names,
/// but a crafted tree could, and they would escape the release.
fn entry_name(name: &[u8]) -> Result<&OsStr> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        bail!(
            "refusing tree entry named {:?}",
            String::from_utf8_lossy(name)
        );
    }
    Ok(OsStr::from_bytes(name))
}

/// Whether `target`, a symlink at `link` (relative to the link's root),
/// resolves inside that root, following the symlinks of `tree` (the link's
/// tree) on the way as the kernel will: `d/up -> ..` is inside, but
/// `esc -> d/up/..` is not. A component missing from the tree is a plain
/// name (a dangling link stays dangling).
fn resolves_inside(tree: &Tree<'_>, repo: &Repository, link: &Path, target: &Path) -> Result<bool> {
    const MAX_HOPS: usize = 64;
    if target.is_absolute() {
        return Ok(false);
    }
    let mut at: Vec<PathBuf> = link
        .parent()
        .map(|p| {
            p.components()
                .map(|c| PathBuf::from(c.as_os_str()))
                .collect()
        })
        .unwrap_or_default();
    let mut todo: Vec<PathBuf> = target
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_os_str().as_bytes() {
            b"" | b"." => {}
            b".." => {
                if at.pop().is_none() {
                    return Ok(false);
                }
            }
            _ => {
                at.push(c);
                let here: PathBuf = at.iter().collect();
                let Ok(e) = tree.get_path(&here) else {
                    continue;
                };
                if e.filemode() != i32::from(FileMode::Link) {
                    continue;
                }
                hops += 1;
                if hops > MAX_HOPS {
                    // More than the kernel follows (40): it never
                    // resolves (ELOOP), so it leads nowhere.
                    return Ok(true);
                }
                let blob = repo.find_blob(e.id())?;
                let next = Path::new(OsStr::from_bytes(blob.content()));
                if next.is_absolute() {
                    return Ok(false);
                }
                at.pop();
                todo.extend(
                    next.components()
                        .rev()
                        .map(|c| PathBuf::from(c.as_os_str())),
                );
            }
        }
    }
    Ok(true)
}

/// Whether `target`, a symlink at `link` (relative to the release root),
/// resolves inside the release, judged lexically: absolute targets and any
/// `..` that climbs above the root are refused.
fn stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.parent().map_or(0, |p| p.components().count() as i64);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_must_stay_inside_the_release() {
        assert!(stays_inside(Path::new("app/etc/a"), Path::new("b")));
        assert!(stays_inside(Path::new("app/etc/a"), Path::new("../../x")));
        assert!(!stays_inside(
            Path::new("app/etc/a"),
            Path::new("../../../x")
        ));
        assert!(!stays_inside(Path::new("a"), Path::new("/etc/shadow")));
        assert!(!stays_inside(Path::new("app/a"), Path::new("x/../../../y")));
    }

    #[test]
    fn entry_names_must_be_one_path_component() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(entry_name(bad).is_err(), "{bad:?}");
        }
        for good in [&b"..."[..], b"a\nb", b"\xff", b"-rf"] {
            assert!(entry_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn fingerprint_ignores_order_but_not_content() {
        let d = |link: &str, file| Dir {
            local: "/x".into(),
            link: link.into(),
            file,
            readonly: false,
            mode: DEFAULT_FILE_MODE,
            group: None,
            allow_writable_parents: false,
            decrypt: false,
            secret_mode: crate::config::DEFAULT_SECRET_MODE,
        };
        let f = |dirs: &[Dir]| fingerprint(dirs, None);
        assert_eq!(
            f(&[d("a", false), d("b", true)]),
            f(&[d("b", true), d("a", false)])
        );
        assert_ne!(f(&[d("a", false)]), f(&[d("a", true)]));
        assert_ne!(f(&[d("a", false)]), f(&[d("b", false)]));
        // Names of releases written before modes and owners existed stay.
        let before = Oid::hash_object(ObjectType::Blob, b"a\0false").expect("hash");
        assert_eq!(f(&[d("a", false)]), before.to_string()[..8]);
        let mut private = d("a", false);
        private.mode = 0o640;
        assert_ne!(f(&[private]), f(&[d("a", false)]));
        assert_ne!(
            fingerprint(&[d("a", false)], Some("daemon")),
            f(&[d("a", false)])
        );
    }
}
