//! The bounded, shallow, single-branch mirror of one (upstream, branch).
//!
//! Every service that follows the same branch of the same repository shares
//! one bare mirror, fetched at most once per pass under a file lock. Only
//! the followed branch is fetched, through one explicit refspec, and only to
//! the configured depth, so the disk used and the bytes moved depend on the
//! depth and the size of the tree, not on the upstream's history length or
//! its number of refs.
//!
//! A mirror is a cache: whenever it cannot be used (corrupt objects, lost
//! refs, a shallow boundary the server no longer accepts) it is rebuilt
//! beside the old one and swapped in only once the new fetch succeeded, so
//! a broken network never costs the commits already on disk.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use git2::{AutotagOption, Direction, ErrorClass, FetchOptions, Oid, Repository};

use crate::config::Credentials;
use crate::config::Upstream;
use crate::git::ancestry;
use crate::git::auth;
use crate::git::partial::{self, Files};
use crate::git::upload_pack::{self, Bounds, Opened, Session, Target, Want};
use crate::git::{dumb, info_refs, ssh};
use crate::model::place::{self, Place};
use crate::util::dirfd::Dir;
use crate::util::http;
use crate::util::lock::Lock;
use crate::util::proxy;

pub use crate::model::place::MIRRORS_DIR;
/// After this many pack files the mirror is rebuilt from a fresh shallow
/// fetch: every fetch that brings objects adds one pack, and libgit2 has no
/// `gc`, so this is what bounds the disk of a long-lived mirror.
pub const MAX_PACKS: usize = 32;
/// File in a mirror naming the `fetch` features of an https server that
/// speaks protocol v2, so later polls skip asking for them.
const V2_MARK: &str = "provision-v2";
/// File in a mirror keeping the last TLS session with an https server, so
/// the next poll resumes it instead of a full handshake.
const TLS_SESSION: &str = "provision-tls-session";
/// File in a mirror saying that its ssh server answers protocol v0 (its
/// sshd does not accept `GIT_PROTOCOL`), so that the pass which finds it
/// out says so once, with what makes polls cheap, and later ones do not.
const V0_MARK: &str = "provision-ssh-v0";
/// How long a static server's mark ([`DUMB_MARK`]) is believed before
/// smart HTTP is asked for again (the server may have been upgraded).
const MARK_LIFE: Duration = Duration::from_secs(24 * 3600);
/// File in a mirror saying that its server serves static files (git's
/// dumb HTTP protocol), with the validators of its last `info/refs`:
/// polls within a day are one conditional GET.
const DUMB_MARK: &str = "provision-dumb";
/// Most commits read (and fetched) to prove that a new head descends from
/// the deployed commit: a machine further behind than this needs `forward
/// --allow-older`.
pub const MAX_PROOF_COMMITS: u32 = 10_000;
/// Generations first asked for when the proof runs past the shallow
/// boundary; each further request asks for eight times more.
const PROOF_FIRST_DEPTH: u32 = 64;
/// How long a pass waits for another process fetching the same mirror.
const LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// What one fetch did.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The branch head now in the mirror.
    pub head: Oid,
    /// Why the mirror was rebuilt, if it was.
    pub rebuilt: Option<String>,
    /// The further upstream it was fetched from, when the first could
    /// not be (and why not).
    pub via: Option<(String, String)>,
    /// This fetch found out that the ssh server answers in protocol v0
    /// (the mirror remembers it; later fetches do not say it again).
    pub found_v0: bool,
}

/// Whether a head descends from a commit (see [`Mirror::descends`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Descent {
    /// The commit is in the head's history.
    Proven,
    /// The head's whole history was read and the commit is not in it.
    Not,
    /// Neither could be shown, and why.
    Unproven(String),
}

/// A mirror on disk: where it is and what it follows.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// The bare repository.
    pub path: PathBuf,
    /// Where it is fetched from.
    pub upstream: Upstream,
    /// Further upstreams of the same repository, tried in order when
    /// `upstream` cannot be fetched.
    pub alternates: Vec<Upstream>,
    /// The one branch it holds.
    pub branch: String,
    /// Most bytes one fetch may receive (the service's `max_fetch_bytes`).
    pub max_fetch_bytes: u64,
    /// The files its services mount: the only blobs it needs.
    pub files: Files,
    /// Commits whose files are kept for offline use (the services'
    /// `depth`).
    pub window: u32,
}

impl Mirror {
    /// The mirror of `upstream`/`branch` under `base`. The name carries a
    /// readable slug of the URL plus a hash of URL and branch, so switching
    /// a service to another branch or repository uses a new mirror instead
    /// of reinterpreting an old one.
    pub fn new(base: &Path, upstream: &Upstream, branch: &str) -> Mirror {
        Mirror::at(place::mirror_path(base, upstream, branch), upstream, branch)
    }

    /// The mirror at `path`.
    fn at(path: PathBuf, upstream: &Upstream, branch: &str) -> Mirror {
        Mirror {
            path,
            upstream: upstream.clone(),
            alternates: Vec::new(),
            branch: branch.to_string(),
            max_fetch_bytes: crate::config::Limits::default().max_fetch_bytes,
            files: Files::All,
            window: 1,
        }
    }

    /// The mirror `svc` fetches through (at `place.mirror`), bounded by its
    /// `max_fetch_bytes`.
    pub fn of(svc: &crate::config::Service, place: &Place) -> Mirror {
        let mut m = Mirror::at(place.mirror.clone(), &svc.upstream, &svc.branch);
        m.max_fetch_bytes = svc.limits.max_fetch_bytes;
        m.files = Files::of(&svc.dirs);
        m.window = svc.depth;
        m.alternates = svc.mirrors.clone();
        m
    }

    /// The lock file serializing fetches of this mirror.
    pub fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }

    fn refname(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    /// Opens the mirror for reading.
    pub fn open(&self) -> Result<Repository> {
        Repository::open_bare(&self.path)
            .with_context(|| format!("opening mirror {}", self.path.display()))
    }

    /// The branch head as last fetched, without network.
    pub fn head(&self) -> Result<Option<Oid>> {
        if !self.path.exists() {
            return Ok(None);
        }
        let repo = self.open()?;
        let head = repo.refname_to_id(&self.refname()).ok();
        Ok(head)
    }

    /// Fetches the branch to `depth` commits, under the mirror lock, and
    /// rebuilds the mirror when it is unusable or has grown too many packs.
    /// When that fails and further upstreams are configured, each is tried
    /// in turn, into the same mirror: they serve the same repository, and
    /// the signature rules apply to whatever one of them serves.
    pub fn fetch(&self, depth: u32, creds: &Credentials, timeout: Duration) -> Result<Fetched> {
        let first = match self.fetch_from(depth, creds, timeout) {
            Ok(f) => return Ok(f),
            Err(e) => e,
        };
        let mut failed = vec![format!("{}: {first:#}", self.upstream.url)];
        let mut last = first;
        for alt in &self.alternates {
            let m = Mirror {
                upstream: alt.clone(),
                alternates: Vec::new(),
                ..self.clone()
            };
            match m.fetch_from(depth, creds, timeout) {
                Ok(mut f) => {
                    f.via = Some((alt.url.clone(), failed.join("; ")));
                    return Ok(f);
                }
                Err(e) => {
                    failed.push(format!("{}: {e:#}", alt.url));
                    last = e;
                }
            }
        }
        if failed.len() == 1 {
            return Err(last);
        }
        failed.pop();
        Err(last.context(format!(
            "no upstream could be fetched; before the last: {}",
            failed.join("; ")
        )))
    }

    /// [`Mirror::fetch`] from `upstream` alone.
    fn fetch_from(&self, depth: u32, creds: &Credentials, timeout: Duration) -> Result<Fetched> {
        let _lock = self.lock()?;
        let depth = self.bounded(depth);
        let knew_v0 = self.path.join(V0_MARK).exists();
        let found_v0 = || !knew_v0 && self.path.join(V0_MARK).exists();
        let rebuild = match self.try_fetch(&self.path, depth, creds, timeout) {
            Ok(head) => match self.outgrown() {
                None => {
                    return Ok(Fetched {
                        head,
                        rebuilt: None,
                        via: None,
                        found_v0: found_v0(),
                    })
                }
                Some(why) => why,
            },
            Err(e) if is_network(&e) => return Err(explain_timeout(e, timeout)),
            Err(e) => format!("its objects or refs were unusable ({e:#})"),
        };
        let head = self
            .rebuild(depth, creds, timeout)
            .with_context(|| format!("rebuilding mirror after: {rebuild}"))?;
        Ok(Fetched {
            head,
            rebuilt: Some(rebuild),
            via: None,
            found_v0: found_v0(),
        })
    }

    /// Rebuilds the mirror with `depth` commits of history (0: all of it):
    /// how a rollback reaches a commit older than the configured depth. The
    /// extra history is dropped again by the next compaction rebuild.
    pub fn deepen(&self, depth: u32, creds: &Credentials, timeout: Duration) -> Result<Oid> {
        let _lock = self.lock()?;
        let depth = self.bounded(depth);
        self.rebuild(depth, creds, timeout)
    }

    /// Fetches tag `tag` (tags are otherwise never fetched) and returns the
    /// commit the server names with it now; `None` when the server has no
    /// such tag. The copy an earlier fetch left is dropped first: a tag
    /// the server moved or deleted must not resolve to what it once named.
    pub fn fetch_tag(
        &self,
        tag: &str,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Option<Oid>> {
        let _lock = self.lock()?;
        let repo = open_or_init(&self.path)?;
        let creds = network_setup(creds, timeout)?;
        let refname = format!("refs/tags/{tag}");
        if let Ok(mut old) = repo.find_reference(&refname) {
            old.delete()
                .with_context(|| format!("dropping the old copy of tag {tag:?}"))?;
        }
        let depth = u32::from(self.upstream.supports_shallow());
        match self.ask_v2(&self.path, &refname, &creds, timeout)? {
            Some((mut session, Some(id))) => {
                let have = repo.refname_to_id(&self.refname()).ok();
                let have = have.filter(|h| repo.find_commit(*h).is_ok());
                self.download_v2(
                    &mut session,
                    &repo,
                    &self.path,
                    &refname,
                    id,
                    have,
                    1,
                    timeout,
                )?;
                session.close();
            }
            Some((_, None)) => {}
            None => self.download_ref(&repo, &refname, depth, &creds, timeout)?,
        }
        let Ok(reference) = repo.find_reference(&refname) else {
            return Ok(None);
        };
        let commit = reference
            .peel_to_commit()
            .with_context(|| format!("reading the commit of tag {tag:?}"))?
            .id();
        self.fetch_files(&repo, commit, &creds, timeout)?;
        Ok(Some(commit))
    }

    /// Makes sure the mirror holds the files its services mount from
    /// `commit` (a partial mirror may lack them for a commit outside the
    /// window), fetching them when needed.
    pub fn ensure_files(
        &self,
        repo: &Repository,
        commit: Oid,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<()> {
        if !partial::is_partial(&self.path) {
            return Ok(());
        }
        let _lock = self.lock()?;
        let creds = network_setup(creds, timeout)?;
        self.fetch_files(repo, commit, &creds, timeout)
    }

    /// Fetches the blobs of `commit` under the mounted paths that the
    /// mirror lacks, through protocol v2 (fetching objects by id).
    fn fetch_files(
        &self,
        repo: &Repository,
        commit: Oid,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<()> {
        if !partial::is_partial(&self.path) {
            return Ok(());
        }
        let paths = self.files.roots();
        let missing = partial::missing(repo, &[commit], &paths)?;
        if missing.is_empty() {
            return Ok(());
        }
        let lacking = || {
            format!(
                "the files of {commit} under {} are not in the mirror",
                paths
                    .iter()
                    .map(|p| if p.is_empty() { "/" } else { p.as_str() })
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut session = match self.open_v2(&self.path, creds, timeout, false) {
            Ok(Some(s)) => s,
            Ok(None) => anyhow::bail!(
                "{}, and {} no longer speaks protocol v2 to fetch them",
                lacking(),
                self.upstream.url
            ),
            Err(e) => return Err(e.context(lacking())),
        };
        let want = Want {
            wants: &missing,
            ..Want::default()
        };
        let odb = repo.odb().context("opening the mirror's objects")?;
        session
            .fetch(&want, &odb)
            .map_err(|e| self.download_failed(e, timeout))?;
        session.close();
        Ok(())
    }

    /// Why the mirror must be compacted (fetched afresh), if it must: too
    /// many packs, or packs holding more than one fetch may bring. So a
    /// mirror never keeps more than `max_fetch_bytes` of packs from one
    /// pass to the next, however a server spreads what it sends.
    fn outgrown(&self) -> Option<String> {
        let (count, bytes) = pack_stats(&self.path);
        if count > MAX_PACKS {
            Some(format!("more than {MAX_PACKS} packs accumulated"))
        } else if bytes > self.max_fetch_bytes {
            Some(format!(
                "its packs hold {}, more than max_fetch_bytes ({})",
                crate::util::human_size(bytes),
                crate::util::human_size(self.max_fetch_bytes)
            ))
        } else {
            None
        }
    }

    /// Serializes every change to this mirror between processes.
    fn lock(&self) -> Result<Lock> {
        Lock::acquire(&self.lock_path(), LOCK_TIMEOUT, "the mirror")
    }

    /// `depth`, or 0 (everything) where libgit2 cannot fetch shallow.
    fn bounded(&self, depth: u32) -> u32 {
        if self.upstream.supports_shallow() {
            depth
        } else {
            0
        }
    }

    /// Fetches into a fresh repository beside the mirror and swaps it in
    /// only after the fetch succeeded.
    fn rebuild(&self, depth: u32, creds: &Credentials, timeout: Duration) -> Result<Oid> {
        let (mirrors, name) = self.parent()?;
        let fresh = self.path.with_extension("new");
        let fresh_name = file_name(&fresh)?;
        mirrors.remove_tree(fresh_name)?;
        let head = self.try_fetch(&fresh, depth, creds, timeout)?;
        let old = file_name(&self.path.with_extension("old"))?.to_os_string();
        mirrors.remove_tree(&old)?;
        if mirrors.meta(name)?.is_some() {
            mirrors.rename(name, &mirrors, &old)?;
        }
        mirrors.rename(fresh_name, &mirrors, name)?;
        mirrors.remove_tree(&old)?;
        Ok(head)
    }

    /// The directory of mirrors, opened (and made, 0700) as root's alone,
    /// and this mirror's name in it: the mirror is renamed and removed
    /// through that descriptor, like a release, and no other user can
    /// change a path below it that libgit2 opens.
    fn parent(&self) -> Result<(Dir, &OsStr)> {
        let parent = self
            .path
            .parent()
            .with_context(|| format!("mirror {} has no parent", self.path.display()))?;
        Ok((crate::util::private_dir(parent)?, file_name(&self.path)?))
    }

    /// One fetch attempt into the repository at `path`: ask the server for
    /// the branch head first (one round trip), and download only when the
    /// mirror does not already have it. Failures of that first exchange are
    /// [`ServerError`]: the server, not the mirror, is at fault.
    fn try_fetch(
        &self,
        path: &Path,
        depth: u32,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Oid> {
        let repo = open_or_init(path)?;
        let creds = network_setup(creds, timeout)?;
        if recent(&path.join(DUMB_MARK), MARK_LIFE) {
            if let Some((target, auth)) = self.http_target(path, &creds)? {
                let server = upload_pack::DumbServer {
                    target,
                    auth,
                    refs: Vec::new(),
                    validators: info_refs::Validators::default(),
                };
                return self.fetch_dumb(&repo, path, depth, timeout, server, true);
            }
        }
        let v2 = match self.try_fetch_v2(&repo, path, depth, &creds, timeout) {
            Err(e) => match e.downcast::<upload_pack::DumbServer>() {
                Ok(server) => return self.fetch_dumb(&repo, path, depth, timeout, server, false),
                Err(e) => return Err(e),
            },
            Ok(v2) => v2,
        };
        if let Some(head) = v2 {
            repo.find_commit(head)
                .with_context(|| format!("reading fetched commit {head} in {}", path.display()))?;
            return Ok(head);
        }
        let remote_head = self.advertised_head(&repo, &creds, timeout)?;
        let refname = self.refname();
        let local = repo.refname_to_id(&refname).ok();
        if local != Some(remote_head) || repo.find_commit(remote_head).is_err() {
            self.download(&repo, depth, &creds, timeout)?;
        }
        let head = repo.refname_to_id(&refname).with_context(|| {
            format!("reading {refname} in {} after fetching it", path.display())
        })?;
        // Reading the commit proves the objects arrived intact.
        repo.find_commit(head)
            .with_context(|| format!("reading fetched commit {head} in {}", path.display()))?;
        Ok(head)
    }

    /// The upstream as an HTTP(S) target, through its proxy, with its
    /// `Authorization` header; `None` for other transports.
    fn http_target(
        &self,
        dir: &Path,
        creds: &Credentials,
    ) -> Result<Option<(Target, Option<String>)>> {
        let Some(target) = Target::parse(&self.upstream.url) else {
            return Ok(None);
        };
        if target.http_host().is_none() {
            return Ok(None);
        }
        let proxy = proxy_for(&target, creds)?;
        let target = target.resume_tls_in(dir.join(TLS_SESSION)).through(proxy);
        let auth = if self.is_https() {
            upload_pack::basic(auth::https_basic(creds, target.user.as_deref())?)
        } else {
            None
        };
        Ok(Some((target, auth)))
    }

    /// Fetches the branch from a dumb HTTP server: `server.refs` as its
    /// first answer gave them, or (`poll`) a conditional GET of its
    /// `info/refs`, which a static server answers 304 when nothing moved.
    fn fetch_dumb(
        &self,
        repo: &Repository,
        path: &Path,
        depth: u32,
        timeout: Duration,
        server: upload_pack::DumbServer,
        poll: bool,
    ) -> Result<Oid> {
        let bounds = Bounds {
            connect: timeout.min(Duration::from_secs(15)),
            deadline: Instant::now() + timeout,
            budget: http::Budget::new(self.max_fetch_bytes),
        };
        let refname = self.refname();
        let local = repo.refname_to_id(&refname).ok();
        let mut client = dumb::Client::new(&server, &bounds);
        let last = info_refs::Validators::parse(&read_small(path, DUMB_MARK)?.unwrap_or_default());
        let (refs, validators) = if poll {
            match dumb::poll(&client, &last).map_err(|e| self.dumb_failed(e, timeout))? {
                None => match local {
                    Some(head) => return Ok(head),
                    None => (Vec::new(), last),
                },
                Some(found) => found,
            }
        } else {
            (
                server.refs.clone(),
                info_refs::Validators {
                    etag: server.validators.etag.clone(),
                    last_modified: server.validators.last_modified.clone(),
                },
            )
        };
        let head = if refs.is_empty() && local.is_none() {
            // A 304 for a mirror without the branch: ask again in full.
            let _ = std::fs::remove_file(path.join(DUMB_MARK));
            anyhow::bail!(
                "{} answered 304 for a branch the mirror lacks; the next pass asks again",
                self.upstream.url
            );
        } else {
            dumb::find(&refs, &refname)
                .ok_or_else(|| branch_missing(&self.upstream.url, &self.branch))?
        };
        if local != Some(head) || repo.find_commit(head).is_err() {
            let shallow = read_shallow(path)?;
            let cut = client
                .fetch(repo, head, depth)
                .map_err(|e| self.dumb_failed(e, timeout))?;
            let got = upload_pack::Fetched {
                shallow: cut,
                unshallow: Vec::new(),
            };
            move_boundary(path, shallow, &got)?;
            repo.reference(&refname, head, true, "provision: fetch (dumb http)")
                .with_context(|| format!("moving {refname} in {}", path.display()))?;
        }
        Dir::open(path)?.write_atomic(
            OsStr::new(DUMB_MARK),
            validators.to_text().as_bytes(),
            0o644,
        )?;
        Ok(head)
    }

    /// A dumb server's failure, as the server's fault (never a reason to
    /// rebuild the mirror), naming the branch and URL.
    fn dumb_failed(&self, e: anyhow::Error, timeout: Duration) -> anyhow::Error {
        if http::is_timeout(&e) {
            return self.unanswered(e);
        }
        if upload_pack::is_overflow(&e) {
            return self.download_failed(e, timeout);
        }
        let busy = busy(&e);
        let retry = e
            .chain()
            .find_map(|c| c.downcast_ref::<upload_pack::HttpStatus>()?.retry_after);
        anyhow::Error::new(ServerError(format!("{e:#}"), retry, busy)).context(format!(
            "fetching branch {:?} from {} (static files)",
            self.branch, self.upstream.url
        ))
    }

    /// A protocol v2 session with the upstream; `None` when the transport
    /// is not spoken here (ssh, local) or the server answered in v0. An
    /// https server that spoke v2 to the mirror in `dir` before is resumed
    /// without asking for its capabilities (`resume`), which saves a
    /// request per poll; `fresh` asks again.
    fn open_v2(
        &self,
        dir: &Path,
        creds: &Credentials,
        timeout: Duration,
        fresh: bool,
    ) -> Result<Option<Box<Session>>> {
        let ssh = Target::ssh(&self.upstream.url, &creds.clone().with_env_defaults());
        let Some(target) = ssh.or_else(|| Target::parse(&self.upstream.url)) else {
            return Ok(None);
        };
        let proxy = proxy_for(&target, creds)?;
        let target = target.resume_tls_in(dir.join(TLS_SESSION)).through(proxy);
        let auth = if self.is_https() {
            auth::https_basic(creds, target.user.as_deref())?
        } else {
            None
        };
        let bounds = Bounds {
            connect: timeout.min(Duration::from_secs(15)),
            deadline: Instant::now() + timeout,
            budget: http::Budget::new(self.max_fetch_bytes),
        };
        if !fresh {
            if let Ok(Some(features)) = read_small(dir, V2_MARK) {
                let features = features.split_whitespace().map(str::to_string).collect();
                if let Some(s) = Session::resume(&target, auth.clone(), bounds.clone(), features) {
                    return Ok(Some(s));
                }
            }
        }
        match Session::open(&target, auth, bounds)? {
            Opened::V0(s) => {
                let d = Dir::open(dir)?;
                if d.meta(OsStr::new(V0_MARK))?.is_none() {
                    d.write_atomic(OsStr::new(V0_MARK), b"v0\n", 0o644)?;
                }
                Ok(Some(s))
            }
            Opened::V2(s) => {
                let mirror = Dir::open(dir)?;
                let _ = mirror.remove_file(OsStr::new(V0_MARK));
                if s.is_http() && !s.redirected() && mirror.meta(OsStr::new("HEAD"))?.is_some() {
                    let features = s.fetch_features().join(" ");
                    mirror.write_atomic(OsStr::new(V2_MARK), features.as_bytes(), 0o644)?;
                }
                Ok(Some(s))
            }
            Opened::NotV2 => {
                let d = Dir::open(dir)?;
                let _ = d.remove_file(OsStr::new(V2_MARK));
                Ok(None)
            }
        }
    }

    /// One fetch attempt through protocol v2: `ls-refs` for the branch
    /// alone, and, when it moved, a download of its commits and trees
    /// (blobs only under the mounted paths where the server can filter).
    /// `None` leaves the fetch to libgit2 (see [`Mirror::ask_v2`]).
    fn try_fetch_v2(
        &self,
        repo: &Repository,
        path: &Path,
        depth: u32,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Option<Oid>> {
        let refname = self.refname();
        let Some((mut session, remote)) = self.ask_v2(path, &refname, creds, timeout)? else {
            return Ok(None);
        };
        let remote = remote.ok_or_else(|| branch_missing(&self.upstream.url, &self.branch))?;
        let local = repo.refname_to_id(&refname).ok();
        if local != Some(remote) {
            let have = intact(repo, path, local, depth)?;
            self.download_v2(
                &mut session,
                repo,
                path,
                &refname,
                remote,
                have,
                depth,
                timeout,
            )?;
        }
        self.complete_window(&mut session, repo, path, remote, timeout)?;
        session.close();
        Ok(Some(remote))
    }

    /// Opens a protocol v2 session and asks `ls-refs` where `refname` is.
    /// `None` leaves the work to libgit2 (`git://` only): the server does
    /// not speak v2, or the first exchange failed in a way libgit2 explains
    /// in its own words (refused, closed, unknown repository). A timeout is
    /// final (asking again would double the wait), and so is every failure
    /// over https, which only this client speaks.
    fn ask_v2(
        &self,
        path: &Path,
        refname: &str,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Option<(Box<Session>, Option<Oid>)>> {
        let mut fresh = false;
        loop {
            let mut session = match self.open_v2(path, creds, timeout, fresh) {
                Ok(Some(s)) => s,
                Ok(None) if self.is_https() => return Err(self.not_v2()),
                Ok(None) => return Ok(None),
                Err(e) if e.is::<upload_pack::DumbServer>() => return Err(e),
                Err(e) => return self.first_failure(e, creds).map(|_| None),
            };
            match session.ls_ref(refname) {
                Ok(found) => return Ok(Some((session, found))),
                // A resumed session the server no longer accepts: ask it
                // for its capabilities once.
                Err(e)
                    if !fresh
                        && !http::is_timeout(&e)
                        && !busy(&e)
                        && path.join(V2_MARK).exists() =>
                {
                    let _ = Dir::open(path).and_then(|d| d.remove_file(OsStr::new(V2_MARK)));
                    fresh = true;
                }
                Err(e) => return self.first_failure(e, creds).map(|_| None),
            }
        }
    }

    fn is_https(&self) -> bool {
        self.upstream.url.starts_with("https://")
    }

    /// `Ok` when libgit2 is to try after `e` ended the first exchange;
    /// the error to report otherwise.
    fn first_failure(&self, e: anyhow::Error, creds: &Credentials) -> Result<()> {
        if http::is_timeout(&e) {
            return Err(self.unanswered(e));
        }
        if upload_pack::is_overflow(&e) {
            return Err(self.download_failed(e, Duration::ZERO));
        }
        if let Some(t) = ssh::SshTarget::parse(&self.upstream.url) {
            return Err(self.ssh_failure(&t, e, &creds.clone().with_env_defaults()));
        }
        if !self.is_https() {
            return Ok(());
        }
        let url = &self.upstream.url;
        let denied = e
            .downcast_ref::<upload_pack::HttpStatus>()
            .is_some_and(|s| matches!(s.status, 401 | 403));
        let why = match (&creds.https_token_file, denied) {
            (None, true) => format!(
                "{url} asks for credentials: set https_user and https_token_file (or PROVISION_HTTPS_USER and PROVISION_HTTPS_TOKEN_FILE)"
            ),
            (Some(file), true) => format!(
                "https authentication was rejected for {url} with token file {}",
                file.display()
            ),
            _ => format!("{e:#}"),
        };
        let retry = e
            .downcast_ref::<upload_pack::HttpStatus>()
            .and_then(|s| s.retry_after);
        Err(
            anyhow::Error::new(ServerError(why, retry, busy(&e))).context(format!(
                "fetching branch {:?} from {}",
                self.branch, self.upstream.url
            )),
        )
    }

    /// Why OpenSSH could not reach upload-pack on `t`, in the words of what
    /// to fix: final, since libgit2's ssh would fail the same way and
    /// without the operator's ssh_config.
    fn ssh_failure(
        &self,
        t: &ssh::SshTarget,
        e: anyhow::Error,
        creds: &Credentials,
    ) -> anyhow::Error {
        let url = &self.upstream.url;
        let said = format!("{e:#}");
        let files = match &creds.ssh_known_hosts {
            Some(f) => f.display().to_string(),
            None => "known_hosts (/etc/ssh/ssh_known_hosts, ~/.ssh/known_hosts)".to_string(),
        };
        let (why, busy) = match ssh::refusal(&said) {
            Some(ssh::Refusal::Denied) => (
                match &creds.ssh_key {
                    Some(k) => format!("ssh authentication was rejected for {url} with key {}", k.display()),
                    None => format!(
                        "ssh authentication was rejected for {url}: set ssh_key (or PROVISION_SSH_KEY) to a private key file the server accepts"
                    ),
                },
                false,
            ),
            Some(ssh::Refusal::UnknownHost) => (
                format!(
                    "the ssh host key of {} is not in {files}; check the server's key fingerprint, then add it (`ssh-keyscan{} {} >> FILE`)",
                    t.known_as(),
                    t.port.map_or(String::new(), |p| format!(" -p {p}")),
                    t.host
                ),
                false,
            ),
            Some(ssh::Refusal::ChangedHostKey) => (
                format!(
                    "ssh host key for {} CHANGED: the server presents another key than {files} holds; refusing to connect (a new server key, or someone in between)",
                    t.known_as()
                ),
                false,
            ),
            Some(ssh::Refusal::Unreachable) => (said, true),
            None => (said, false),
        };
        anyhow::Error::new(ServerError(why, None, busy))
            .context(format!("fetching branch {:?} from {url}", self.branch))
    }

    /// An https server that answers in protocol v0 (or a dumb one).
    fn not_v2(&self) -> anyhow::Error {
        self.server_error(format!(
            "{} does not speak git's protocol v2 (git 2.18 and later serve it, as GitHub, GitLab, Gitea and Bitbucket do); https upstreams are fetched over protocol v2",
            self.upstream.url
        ))
    }

    /// `why`, as the server's fault (never a reason to rebuild), naming the
    /// branch and URL.
    fn server_error(&self, why: String) -> anyhow::Error {
        anyhow::Error::new(ServerError(why, None, false)).context(format!(
            "fetching branch {:?} from {}",
            self.branch, self.upstream.url
        ))
    }

    /// Downloads `head` to `depth` over `session`, sending `have` so the
    /// server leaves out what the mirror holds, then moves the branch and
    /// the shallow boundary.
    #[allow(clippy::too_many_arguments)]
    fn download_v2(
        &self,
        session: &mut Session,
        repo: &Repository,
        path: &Path,
        refname: &str,
        head: Oid,
        have: Option<Oid>,
        depth: u32,
        timeout: Duration,
    ) -> Result<()> {
        // Blobs are left out of a first download (or a rebuild), where
        // they are the bulk. A later one sends `have` and brings only what
        // changed, in one round trip: filtering it too would cost a second
        // request for the changed files, and a second pack on the server.
        let blobless = have.is_none()
            && depth > 0
            && matches!(self.files, Files::Under(_))
            && session.can_filter();
        let shallow = read_shallow(path)?;
        let haves: Vec<Oid> = have.into_iter().collect();
        let want = Want {
            wants: &[head],
            haves: &haves,
            shallow: &shallow,
            depth,
            blobless,
        };
        let odb = repo.odb().context("opening the mirror's objects")?;
        let got = session
            .fetch(&want, &odb)
            .map_err(|e| self.download_failed(e, timeout))?;
        if blobless {
            partial::mark_partial(path)?;
        }
        move_boundary(path, shallow, &got)?;
        repo.reference(refname, head, true, "provision: fetch")
            .with_context(|| format!("moving {refname} in {}", path.display()))?;
        Ok(())
    }

    /// Whether `head` descends from `ancestor`, reading the parents that
    /// `head`'s commits name (each id is covered by the hash of the commit
    /// naming it, so a server cannot forge the chain) and deepening the
    /// mirror where the chain runs past its shallow boundary, up to
    /// [`MAX_PROOF_COMMITS`] commits. A server that stops sending older
    /// commits leaves the question [`Descent::Unproven`]: the caller fails
    /// closed.
    pub fn descends(
        &self,
        head: Oid,
        ancestor: Oid,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Descent> {
        if head == ancestor {
            return Ok(Descent::Proven);
        }
        let _lock = self.lock()?;
        let creds = network_setup(creds, timeout)?;
        // One `timeout` for the whole proof, however many requests it takes.
        let deadline = Instant::now() + timeout;
        let mut depth = PROOF_FIRST_DEPTH.max(self.window.saturating_mul(2));
        let mut last_frontier = None;
        loop {
            let repo = self.open()?;
            let walked = ancestry::walk(&repo, head, ancestor, MAX_PROOF_COMMITS)?;
            let frontier = match walked {
                ancestry::Walk::Found => return Ok(Descent::Proven),
                ancestry::Walk::Exhausted => return Ok(Descent::Not),
                ancestry::Walk::TooFar => {
                    return Ok(Descent::Unproven(format!(
                        "{ancestor} is not among the {MAX_PROOF_COMMITS} commits before it"
                    )))
                }
                ancestry::Walk::Frontier(missing) => missing,
            };
            if last_frontier.as_ref() == Some(&frontier) {
                return Ok(Descent::Unproven(format!(
                    "the server sent no commits older than {} when asked for {depth} generations",
                    frontier.first().map(Oid::to_string).unwrap_or_default()
                )));
            }
            if depth > MAX_PROOF_COMMITS {
                return Ok(Descent::Unproven(format!(
                    "{ancestor} is not among the {MAX_PROOF_COMMITS} commits before it that the server sent"
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.download_failed(
                    anyhow::Error::new(http::TimedOut("proving descent".into())),
                    timeout,
                ));
            }
            self.deepen_for_proof(&repo, head, depth, &creds, left)?;
            last_frontier = Some(frontier);
            depth = depth.saturating_mul(8).min(MAX_PROOF_COMMITS + 1);
        }
    }

    /// Fetches the history of `head` down to `depth` generations, keeping
    /// what the mirror has: over protocol v2 with the shallow boundary sent
    /// and blobs left out where the server can filter; else through libgit2.
    fn deepen_for_proof(
        &self,
        repo: &Repository,
        head: Oid,
        depth: u32,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<()> {
        if !self.upstream.supports_shallow() {
            // A local path is fetched whole: nothing deeper to ask for.
            return Ok(());
        }
        let Some(mut session) = self.open_v2(&self.path, creds, timeout, false)? else {
            return self.download(repo, depth, creds, timeout);
        };
        let shallow = read_shallow(&self.path)?;
        let blobless = session.can_filter();
        let want = Want {
            wants: &[head],
            haves: &[head],
            shallow: &shallow,
            depth,
            blobless,
        };
        let odb = repo.odb().context("opening the mirror's objects")?;
        let got = session
            .fetch(&want, &odb)
            .map_err(|e| self.download_failed(e, timeout))?;
        session.close();
        if blobless {
            partial::mark_partial(&self.path)?;
        }
        move_boundary(&self.path, shallow, &got)
    }

    /// Fetches, over `session`, the blobs under the mounted paths of every
    /// commit of the window that the mirror lacks, unless a previous pass
    /// recorded them complete for this head.
    fn complete_window(
        &self,
        session: &mut Session,
        repo: &Repository,
        path: &Path,
        head: Oid,
        timeout: Duration,
    ) -> Result<()> {
        let paths = self.files.roots();
        if !partial::is_partial(path) || partial::complete(path, head, &paths) {
            return Ok(());
        }
        let commits = partial::window(repo, head, self.window.max(1));
        let missing = partial::missing(repo, &commits, &paths)?;
        if !missing.is_empty() {
            let want = Want {
                wants: &missing,
                ..Want::default()
            };
            let odb = repo.odb().context("opening the mirror's objects")?;
            session
                .fetch(&want, &odb)
                .map_err(|e| self.download_failed(e, timeout))?;
        }
        partial::record_complete(path, head, &paths)
    }

    /// The server stopped answering before the ref check ended.
    fn unanswered(&self, e: anyhow::Error) -> anyhow::Error {
        self.server_error(format!("{e:#}"))
    }

    /// A download of ours that failed: the server, not the mirror, is at
    /// fault (nothing was written: a pack is kept only once complete).
    fn download_failed(&self, e: anyhow::Error, timeout: Duration) -> anyhow::Error {
        let why = if let Some(max) = http::exceeded(&e) {
            stopped_message(&auth::Stopped::TooLarge(max), timeout)
        } else if http::is_timeout(&e) {
            stopped_message(&auth::Stopped::Deadline, timeout)
        } else {
            format!("{e:#}")
        };
        self.server_error(why)
    }

    /// The proxy of a plain `http://` upstream that libgit2 fetches (one
    /// that does not speak protocol v2), so that it is not bypassed; its
    /// credentials are not handed to libgit2.
    fn libgit2_proxy(&self, creds: &Credentials) -> Result<Option<git2::ProxyOptions<'static>>> {
        let Some(target) = Target::parse(&self.upstream.url) else {
            return Ok(None);
        };
        Ok(proxy_for(&target, creds)?.map(|p| {
            let mut o = git2::ProxyOptions::new();
            o.url(&format!("http://{}", p.authority()));
            o
        }))
    }

    /// The branch head as the server advertises it right now.
    fn advertised_head(
        &self,
        repo: &Repository,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Oid> {
        let url = &self.upstream.url;
        let callbacks = auth::remote_callbacks(Instant::now() + timeout);
        let unreachable = |e: git2::Error| {
            anyhow::Error::new(ServerError(e.message().to_string(), None, false))
                .context(format!("fetching branch {:?} from {url}", self.branch))
        };
        let mut remote = repo.remote_anonymous(url).map_err(unreachable)?;
        let conn = remote
            .connect_auth(
                Direction::Fetch,
                Some(callbacks),
                self.libgit2_proxy(creds)?,
            )
            .map_err(unreachable)?;
        let refname = self.refname();
        let head = conn
            .list()
            .map_err(unreachable)?
            .iter()
            .find(|h| h.name() == refname)
            .map(|h| h.oid());
        head.ok_or_else(|| branch_missing(url, &self.branch))
    }

    /// Downloads the branch to `depth` commits (0: all of it).
    fn download(
        &self,
        repo: &Repository,
        depth: u32,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<()> {
        let refname = self.refname();
        self.download_ref(repo, &refname, depth, creds, timeout)
    }

    /// Fetches one ref (`refs/heads/…` or `refs/tags/…`) to `depth`.
    fn download_ref(
        &self,
        repo: &Repository,
        refname: &str,
        depth: u32,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<()> {
        let refspec = format!("+{refname}:{refname}");
        let mut opts = FetchOptions::new();
        let (callbacks, watch) =
            auth::watched_callbacks(Instant::now() + timeout, Some(self.max_fetch_bytes));
        opts.remote_callbacks(callbacks)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);
        if depth > 0 {
            opts.depth(i32::try_from(depth).unwrap_or(i32::MAX));
        }
        if let Some(p) = self.libgit2_proxy(creds)? {
            opts.proxy_options(p);
        }
        let mut remote = repo
            .remote_anonymous(&self.upstream.url)
            .with_context(|| format!("preparing fetch of {}", self.upstream.url))?;
        let fetched = remote.fetch(&[refspec.as_str()], Some(&mut opts), None);
        drop(opts);
        fetched.map_err(|e| match watch.stopped() {
            // Stopped by us: the server, not the mirror, is at fault, so
            // the mirror is kept (not rebuilt and downloaded again).
            Some(why) => {
                anyhow::Error::new(ServerError(stopped_message(&why, timeout), None, false))
                    .context(format!(
                        "fetching branch {:?} from {}",
                        self.branch, self.upstream.url
                    ))
            }
            None => fetch_error(e, &self.upstream.url, &self.branch),
        })
    }
}

/// The mirror's branch head, once checked to be usable as a `have`: its
/// commits readable down to `depth` generations (0: all), each missing
/// parent recorded as a shallow boundary. A mirror that has objects but no
/// branch, an unreadable commit, or a lost boundary is unusable: the error
/// makes the caller rebuild it, as a failed libgit2 fetch would.
fn intact(repo: &Repository, path: &Path, local: Option<Oid>, depth: u32) -> Result<Option<Oid>> {
    let Some(head) = local else {
        anyhow::ensure!(
            pack_count(path) == 0,
            "the branch is gone from {} while objects remain",
            path.display()
        );
        return Ok(None);
    };
    let shallow = read_shallow(path)?;
    let odb = repo.odb().context("opening the mirror's objects")?;
    let mut level = vec![head];
    let mut seen = std::collections::BTreeSet::new();
    let mut generation = 0;
    while !level.is_empty() && (depth == 0 || generation < depth) {
        let mut next = Vec::new();
        for id in level.into_iter().filter(|id| seen.insert(*id)) {
            let commit = repo
                .find_commit(id)
                .with_context(|| format!("reading commit {id} in {}", path.display()))?;
            if shallow.contains(&id) {
                continue;
            }
            for parent in commit.parent_ids() {
                anyhow::ensure!(
                    odb.exists(parent),
                    "commit {id} lacks its parent {parent} and {} records no shallow boundary there",
                    path.display()
                );
                next.push(parent);
            }
        }
        level = next;
        generation += 1;
    }
    Ok(Some(head))
}

/// Moves the shallow boundary by what the server said: commits it
/// unshallowed leave it, commits it made shallow join it.
fn move_boundary(path: &Path, shallow: Vec<Oid>, got: &upload_pack::Fetched) -> Result<()> {
    let mut edge: Vec<Oid> = shallow
        .into_iter()
        .filter(|s| !got.unshallow.contains(s))
        .collect();
    for s in &got.shallow {
        if !edge.contains(s) {
            edge.push(*s);
        }
    }
    write_shallow(path, &edge)
}

/// Why a download was stopped, naming the setting that stopped it.
fn stopped_message(why: &auth::Stopped, timeout: Duration) -> String {
    match why {
        auth::Stopped::Deadline => format!(
            "the download did not finish within {} s (the service's `timeout`); stopped it",
            timeout.as_secs()
        ),
        auth::Stopped::TooLarge(max) => format!(
            "the server sent more than {} (the service's `max_fetch_bytes`); stopped the download",
            crate::util::human_size(*max)
        ),
    }
}

/// The commits at the mirror's shallow boundary (git's `shallow` file).
fn read_shallow(path: &Path) -> Result<Vec<Oid>> {
    let file = path.join("shallow");
    let Some(text) = read_small(path, SHALLOW)? else {
        return Ok(Vec::new());
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            Oid::from_str(l.trim())
                .with_context(|| format!("{}: {l:?} is not a commit id", file.display()))
        })
        .collect()
}

/// Writes the shallow boundary (removing the file when there is none).
fn write_shallow(path: &Path, edge: &[Oid]) -> Result<()> {
    let dir = Dir::open(path)?;
    if edge.is_empty() {
        return dir.remove_file(OsStr::new(SHALLOW));
    }
    let text: String = edge.iter().map(|o| format!("{o}\n")).collect();
    dir.write_atomic(OsStr::new(SHALLOW), text.as_bytes(), 0o644)
}

/// git's list of the commits at a shallow boundary, in a mirror.
const SHALLOW: &str = "shallow";

/// A small file of the mirror at `path` (the shallow list, the v2 mark),
/// read through the mirror's descriptor; `None` when there is none. Read
/// up to a bound: a list that long is no list of this mirror's.
fn read_small(path: &Path, name: &str) -> Result<Option<String>> {
    let Some(dir) = Dir::open_opt(path)? else {
        return Ok(None);
    };
    if dir.meta(OsStr::new(name))?.is_none() {
        return Ok(None);
    }
    let file = path.join(name);
    let mut text = String::new();
    dir.open_file(Path::new(name))?
        .take(SMALL_FILE_MAX)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", file.display()))?;
    Ok(Some(text))
}

/// The most read of a mirror's small files (a shallow list of 100,000
/// commits).
const SMALL_FILE_MAX: u64 = 4 << 20;

/// Credentials with env defaults applied, and libgit2's timeouts set, for
/// one network operation.
fn network_setup(creds: &Credentials, timeout: Duration) -> Result<Credentials> {
    auth::set_network_timeouts(timeout.min(Duration::from_secs(15)), timeout)?;
    Ok(creds.clone().with_env_defaults())
}

/// Opens a bare repository, creating it when missing (in a directory
/// that is root's alone, through its descriptor).
fn open_or_init(path: &Path) -> Result<Repository> {
    let parent = path
        .parent()
        .with_context(|| format!("mirror {} has no parent", path.display()))?;
    let mirrors = crate::util::private_dir(parent)?;
    let name = file_name(path)?;
    let existing = mirrors.dir_opt(Path::new(name))?;
    if existing.is_some_and(|d| d.meta(OsStr::new("HEAD")).is_ok_and(|m| m.is_some())) {
        return Repository::open_bare(path)
            .with_context(|| format!("opening mirror {}", path.display()));
    }
    mirrors.remove_tree(name)?;
    mirrors.mkdir(name, 0o700)?;
    Repository::init_bare(path).with_context(|| format!("creating mirror {}", path.display()))
}

/// The last name of a mirror's path.
fn file_name(path: &Path) -> Result<&OsStr> {
    path.file_name()
        .with_context(|| format!("mirror {} has no name", path.display()))
}

/// The server could not be reached, refused the conversation (down,
/// hanging, wrong credentials, unknown host key) or does not have the
/// branch. Never a reason to rebuild the mirror. With it, the server's
/// `Retry-After` and whether it said it was busy or failing (429, 5xx).
#[derive(Debug)]
pub struct ServerError(String, Option<u64>, bool);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerError {}

/// Whether the fetch failed because the server could not serve it: the
/// connection was refused, reset or timed out, or the server answered
/// that it is busy or failing (429, 5xx). Not a refusal of credentials, a
/// missing branch or repository, or a server breaking the protocol: a
/// person fixes those, and the next pass should try at once.
pub fn is_unavailable(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::*;
    busy(e)
        || http::is_timeout(e)
        || e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ConnectionRefused
                        | ConnectionReset
                        | ConnectionAborted
                        | TimedOut
                        | HostUnreachable
                        | NetworkUnreachable
                )
            }) || c
                .downcast_ref::<git2::Error>()
                .is_some_and(|g| g.class() == ErrorClass::Net && g.code() != git2::ErrorCode::Auth)
        })
}

/// The proxy `target` is reached through: the `proxy` key, else the
/// environment; `None` for a direct connection or a transport other than
/// HTTP(S).
fn proxy_for(target: &Target, creds: &Credentials) -> Result<Option<http::Proxy>> {
    let Some((host, tls)) = target.http_host() else {
        return Ok(None);
    };
    proxy::choose(
        creds.proxy.as_deref(),
        creds.proxy_credentials_file.as_deref(),
        tls,
        host,
        proxy::environment,
    )
}

/// Whether the file at `path` was written less than `life` ago.
fn recent(path: &Path, life: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < life)
}

/// Whether the server answered that it is busy or failing (429, 5xx):
/// asking it again at once would only add to its load.
fn busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<upload_pack::HttpStatus>()
            .is_some_and(|s| s.status == 429 || s.status >= 500)
            || c.downcast_ref::<ServerError>().is_some_and(|s| s.2)
    })
}

/// How long the server behind `e` asked to wait before the next fetch
/// (`Retry-After`, seconds), if it did.
pub fn retry_after(e: &anyhow::Error) -> Option<u64> {
    e.chain().find_map(|c| {
        c.downcast_ref::<ServerError>()
            .and_then(|s| s.1)
            .or_else(|| c.downcast_ref::<upload_pack::HttpStatus>()?.retry_after)
    })
}

fn branch_missing(url: &str, branch: &str) -> anyhow::Error {
    anyhow::Error::new(ServerError(
        format!("branch {branch:?} does not exist on {url}"),
        None,
        false,
    ))
}

/// Says which setting ran out when the server stopped answering: libgit2
/// only reports a socket timeout.
fn explain_timeout(e: anyhow::Error, timeout: Duration) -> anyhow::Error {
    if format!("{e:#}").contains("timed out") {
        e.context(format!(
            "the server did not answer within {} s (the service's `timeout`)",
            timeout.as_secs()
        ))
    } else {
        e
    }
}

/// Names the URL and branch in a fetch error and keeps libgit2's class so
/// callers can tell a network failure from a broken mirror.
fn fetch_error(e: git2::Error, url: &str, branch: &str) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("fetching branch {branch:?} from {url}"))
}

/// Whether an error came from talking to the server (keep the mirror and
/// report) rather than from the mirror itself (rebuild it).
pub fn is_network(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<ServerError>()
            || c.downcast_ref::<git2::Error>().is_some_and(|g| {
                matches!(
                    g.class(),
                    ErrorClass::Net
                        | ErrorClass::Ssh
                        | ErrorClass::Http
                        | ErrorClass::Ssl
                        | ErrorClass::Callback
                ) || g.code() == git2::ErrorCode::Auth
                    || g.code() == git2::ErrorCode::Certificate
            })
    })
}

fn pack_count(repo: &Path) -> usize {
    pack_stats(repo).0
}

/// How many packs the mirror at `repo` holds, and their bytes.
fn pack_stats(repo: &Path) -> (usize, u64) {
    let Ok(dir) = Dir::open(&repo.join("objects/pack")) else {
        return (0, 0);
    };
    let packs: Vec<u64> = dir
        .entries()
        .unwrap_or_default()
        .iter()
        .filter(|n| Path::new(n).extension().is_some_and(|x| x == "pack"))
        .map(|n| dir.meta(n).ok().flatten().map_or(0, |m| m.size))
        .collect();
    (packs.len(), packs.iter().sum())
}

/// Removes mirrors under `base` that are not in `used`. A mirror whose lock
/// is held (another pass is fetching it) is left for a later pass.
pub fn remove_unused(base: &Path, used: &[PathBuf]) -> Result<()> {
    let dir = base.join(MIRRORS_DIR);
    let Some(mirrors) = Dir::open_opt(&dir)? else {
        return Ok(());
    };
    for name in mirrors.entries()? {
        let path = dir.join(&name);
        if path.extension().is_none_or(|x| x != "git") || used.contains(&path) {
            continue;
        }
        let lock_path = path.with_extension("lock");
        if let Ok(_lock) = Lock::acquire(&lock_path, Duration::ZERO, "an old mirror") {
            mirrors.remove_tree(&name)?;
            mirrors.remove_file(file_name(&lock_path)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;

    #[test]
    fn mirror_name_changes_with_branch_and_url() {
        let up = |url: &str| Upstream {
            url: url.into(),
            transport: Transport::Git,
        };
        let base = Path::new("/m");
        let a = Mirror::new(base, &up("git://h/ops/config.git"), "main");
        let b = Mirror::new(base, &up("git://h/ops/config.git"), "canary");
        let c = Mirror::new(base, &up("git://h/ops/other.git"), "main");
        assert_ne!(a.path, b.path);
        assert_ne!(a.path, c.path);
        assert!(a.path.starts_with("/m/.mirrors"));
        assert!(
            a.path.to_string_lossy().contains("config-main-"),
            "{}",
            a.path.display()
        );
    }
}
