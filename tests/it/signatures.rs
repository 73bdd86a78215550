//! Signed commits, made by real tools (`git commit -S` with SSH keys from
//! `ssh-keygen` and with GnuPG keys in a throwaway keyring, and hand-built
//! commit objects signed by `ssh-keygen -Y sign`), checked by provision
//! in-process: an allowed key deploys; unsigned, unknown, expired,
//! wrong-namespace, tampered and replayed commits are refused with their
//! reasons, nothing switching; a rollback to an unsigned commit is refused;
//! `verify` and `check` say why.

use testkit as common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::host::{app_config, Host};
use common::{GitDaemon, Upstream};

/// Signing settings for `git commit -S` with the SSH key at `key`.
fn ssh_signing(key: &Path) -> [String; 2] {
    [
        "gpg.format=ssh".to_string(),
        format!("user.signingkey={}", key.display()),
    ]
}

fn commit_as(up: &Upstream, key: &Path, content: &str, message: &str) -> String {
    commit_on(up, "main", key, content, message)
}

fn commit_on(up: &Upstream, branch: &str, key: &Path, content: &str, message: &str) -> String {
    let sign = ssh_signing(key);
    let sign: Vec<&str> = sign.iter().map(String::as_str).collect();
    up.commit_signed(
        branch,
        &[("app/etc/app.conf", Some(content))],
        message,
        &sign,
    )
}

/// Points the served branch main at `commit`, as a hostile server would.
fn serve_main_at(up: &Upstream, commit: &str) {
    common::run(common::git_cmd(up.bare()).args(["update-ref", "refs/heads/main", commit]));
}

/// The commit the host has deployed, as status says it.
fn deployed(h: &Host) -> String {
    h.status_json()["deployed"]["commit"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The raw commit object of `sha`.
fn raw(up: &Upstream, sha: &str) -> String {
    common::run(common::git_cmd(up.bare()).args(["cat-file", "commit", sha])) + "\n"
}

/// Writes `text` as a commit object and points main at it.
fn write_commit(up: &Upstream, text: &str) -> String {
    let mut child = common::git_cmd(up.bare())
        .args([
            "hash-object",
            "-t",
            "commit",
            "-w",
            "--stdin",
            "--literally",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git hash-object");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing the commit");
    let out = child.wait_with_output().expect("git hash-object");
    assert!(out.status.success());
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    common::run(common::git_cmd(up.bare()).args(["update-ref", "refs/heads/main", &sha]));
    sha
}

/// A commit object like `unsigned_sha`'s, signed by `key` in `namespace`
/// (git signs in "git").
fn signed_in_namespace(
    up: &Upstream,
    unsigned_sha: &str,
    key: &Path,
    namespace: &str,
    dir: &Path,
) -> String {
    let payload = raw(up, unsigned_sha);
    let payload = payload.strip_suffix('\n').unwrap_or(&payload).to_string();
    let file = dir.join("payload");
    fs::write(&file, &payload).expect("payload");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", namespace, "-f"])
        .arg(key)
        .arg(&file)
        .output()
        .expect("ssh-keygen -Y sign");
    assert!(out.status.success(), "{}", common::output_text(&out));
    let sig = fs::read_to_string(dir.join("payload.sig")).expect("signature");
    let _ = fs::remove_file(dir.join("payload.sig"));
    let header: String = sig
        .trim_end()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("gpgsig {l}\n")
            } else {
                format!(" {l}\n")
            }
        })
        .collect();
    let (head, message) = payload.split_once("\n\n").expect("a commit has a message");
    write_commit(up, &format!("{head}\n{header}\n{message}"))
}

#[test]
fn only_commits_signed_by_an_allowed_key_deploy_and_each_refusal_says_why() {
    if !common::require_tool("git-daemon") || !common::require_tool("ssh-keygen") {
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let key = |n: &str| keys.path().join(n);
    for n in ["alice", "mallory", "old", "files"] {
        common::ssh_keygen(&key(n));
    }
    let public = |n: &str| common::public_key(&key(&format!("{n}.pub")));
    let signers = key("allowed_signers");
    fs::write(
        &signers,
        format!(
            "# who may sign\nalice@example.net {}\nold@example.net valid-before=\"20200101\" {}\n\
             files@example.net namespaces=\"file\" {}\n",
            public("alice"),
            public("old"),
            public("files")
        ),
    )
    .expect("allowed_signers");
    let d = GitDaemon::start();
    let up = d.repo("app");
    let h = Host::new();
    h.write_config(&app_config(
        &up.url(),
        &format!("allowed_signers = \"{}\"", signers.display()),
    ));

    // Signed by an allowed key: deployed, and said so.
    up.commit(
        "main",
        &[("app/default", Some("OPTS=-v\n"))],
        "unsigned base",
    );
    let good = commit_as(&up, &key("alice"), "port = 1\n", "one");
    h.sync(0);
    assert_eq!(deployed(&h), good);
    let s = h.status_json();
    assert_eq!(s["signature"]["verified"], true, "{s}");
    assert_eq!(s["signature"]["signer"], "alice@example.net");
    assert!(h
        .metrics_text()
        .contains("provision_signature_verified{service=\"app\"} 1"));

    // Each bad head is refused with its reason; nothing switches.
    let unsigned = up.commit(
        "main",
        &[("app/etc/app.conf", Some("port = 2\n"))],
        "unsigned",
    );
    let mallory = commit_as(&up, &key("mallory"), "port = 3\n", "mallory");
    let cases: Vec<(String, &str)> = vec![
        (unsigned.clone(), "unsigned"),
        (mallory.clone(), "unknown key"),
        (
            commit_as(&up, &key("old"), "port = 4\n", "old"),
            "expired: the key was valid until 2020-01-01",
        ),
        (
            commit_as(&up, &key("files"), "port = 5\n", "files"),
            "the key may not sign in \"git\"",
        ),
    ];
    for (commit, reason) in &cases {
        common::run(common::git_cmd(up.bare()).args(["update-ref", "refs/heads/main", commit]));
        let out = h.sync(1);
        assert!(
            out.contains(&format!("rejected {} at signature", &commit[..10])),
            "{out}"
        );
        assert!(out.contains(reason), "{reason}: {out}");
        assert!(out.contains("nothing switched"), "{out}");
        assert_eq!(deployed(&h), good, "{reason}");
        let s = h.status_json();
        assert_eq!(s["rejected"]["stage"], "signature", "{s}");
        assert_eq!(s["signature"]["verified"], false, "{s}");
        assert!(h
            .metrics_text()
            .contains("provision_signature_verified{service=\"app\"} 0"));
    }

    // Signed in another namespace than git's, and a signed commit whose
    // content was changed afterwards.
    let base = up.commit(
        "main",
        &[("app/etc/app.conf", Some("port = 6\n"))],
        "to be signed by hand",
    );
    let other_ns = signed_in_namespace(&up, &base, &key("alice"), "file", keys.path());
    let out = h.sync(1);
    assert!(
        out.contains(&other_ns[..10]) && out.contains("wrong namespace \"file\""),
        "{out}"
    );
    let signed = commit_as(&up, &key("alice"), "port = 7\n", "seven");
    let tampered = write_commit(&up, &raw(&up, &signed).replacen("seven", "eleven", 1));
    let out = h.sync(1);
    assert!(
        out.contains(&tampered[..10]) && out.contains("bad signature"),
        "{out}"
    );
    assert_eq!(deployed(&h), good);

    // A newer signed head deploys; the server replaying the older signed
    // one is refused until the operator says so.
    common::run(common::git_cmd(up.bare()).args(["update-ref", "refs/heads/main", &signed]));
    h.sync(0);
    assert_eq!(deployed(&h), signed);
    common::run(common::git_cmd(up.bare()).args(["update-ref", "refs/heads/main", &good]));
    let out = h.sync(1);
    assert!(out.contains("does not descend from"), "{out}");
    assert!(out.contains("--allow-older"), "{out}");
    assert_eq!(deployed(&h), signed);
    let out = h.run(&["forward", "--allow-older", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert_eq!(deployed(&h), good);

    // A rollback to an unsigned commit is refused.
    let out = h.run(&["rollback", "app", &unsigned]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("unsigned"), "{text}");
    assert_eq!(deployed(&h), good);

    // `verify` shows a commit's signature; `check` reads the key file.
    let out = h.run(&["verify", "app", &good]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("signed by alice@example.net (ssh, SHA256:"),
        "{text}"
    );
    let out = h.run(&["verify", "app", &mallory]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("unknown key"), "{text}");
    fs::write(
        &signers,
        format!(
            "alice@example.net {}\nbob@example.net ssh-ed25519\n",
            public("alice")
        ),
    )
    .expect("a broken allowed_signers");
    let out = h.run(&["check"]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("{}:2:", signers.display())),
        "{text}"
    );
}

/// A GnuPG home of its own, and a `gpg` that uses it, for `gpg.program`.
struct Gpg {
    dir: tempfile::TempDir,
}

impl Gpg {
    fn new() -> Gpg {
        let g = Gpg {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let home = g.dir.path().join("home");
        fs::create_dir(&home).expect("GNUPGHOME");
        let wrapper = g.program();
        fs::write(
            &wrapper,
            format!("#!/bin/sh\nexec gpg --homedir {} \"$@\"\n", home.display()),
        )
        .expect("gpg wrapper");
        common::run(Command::new("chmod").arg("+x").arg(&wrapper));
        g
    }

    fn program(&self) -> std::path::PathBuf {
        self.dir.path().join("gpg")
    }

    fn gpg(&self, args: &[&str]) -> String {
        common::run(
            Command::new(self.program())
                .args(["--batch", "--quiet"])
                .args(args),
        )
    }

    /// A new signing key for `uid`; returns its fingerprint.
    fn key(&self, uid: &str) -> String {
        self.gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            "ed25519",
            "sign",
            "never",
        ]);
        let listing = self.gpg(&["--with-colons", "--list-keys", uid]);
        listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:::::::::"))
            .map(|f| f.trim_end_matches(':').to_string())
            .expect("a fingerprint")
    }

    /// A new key for `uid` whose primary key may do `usage` only
    /// (`sign`, `cert`), made at `at` (seconds since 1970; now when `None`)
    /// and valid for `expire` (`never`, `1d`); returns its fingerprint.
    fn key_made(&self, uid: &str, usage: &str, expire: &str, at: Option<u64>) -> String {
        let faked = at.map(|t| format!("--faked-system-time={t}!"));
        let mut args = vec![
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            "ed25519",
            usage,
            expire,
        ];
        if let Some(f) = &faked {
            args.insert(0, f);
        }
        self.gpg(&args);
        self.fingerprints(uid)[0].clone()
    }

    /// The fingerprints of `who`'s primary key and subkeys, in order.
    fn fingerprints(&self, who: &str) -> Vec<String> {
        let listing = self.gpg(&["--with-colons", "--list-keys", who]);
        listing
            .lines()
            .filter_map(|l| l.strip_prefix("fpr:::::::::"))
            .map(|f| f.trim_end_matches(':').to_string())
            .collect()
    }

    /// Adds an ed25519 subkey for `usage` to the key `fpr`; returns the
    /// subkey's fingerprint.
    fn add_subkey(&self, fpr: &str, usage: &str) -> String {
        self.gpg(&[
            "--passphrase",
            "",
            "--quick-add-key",
            fpr,
            "ed25519",
            usage,
            "never",
        ]);
        self.fingerprints(fpr).last().cloned().expect("a subkey")
    }

    /// Revokes the key `fpr` with the certificate gpg made with it.
    fn revoke(&self, fpr: &str) {
        let cert = self
            .dir
            .path()
            .join(format!("home/openpgp-revocs.d/{fpr}.rev"));
        let text = fs::read_to_string(&cert).expect("the revocation certificate");
        let armed = self.dir.path().join("revoke.asc");
        fs::write(&armed, text.replace(":-----BEGIN", "-----BEGIN")).expect("revoke.asc");
        self.gpg(&["--import", &armed.display().to_string()]);
    }

    /// Makes the key `fpr` a certifying key only (it made signatures
    /// before), as `gpg --edit-key` `change-usage` does.
    fn certify_only(&self, fpr: &str) {
        let mut child = Command::new(self.program())
            .args([
                "--batch",
                "--expert",
                "--command-fd",
                "0",
                "--status-fd",
                "2",
            ])
            .args([
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--edit-key",
                fpr,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gpg --edit-key");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"change-usage\nS\nQ\nsave\n")
            .expect("answers");
        assert!(child.wait().expect("gpg").success());
        let caps = self.gpg(&["--with-colons", "--list-keys", fpr]);
        assert!(caps.contains(":cC:"), "{caps}");
    }

    /// The binary export of `fpr`, split into OpenPGP packets (tag, bytes).
    fn packets(&self, fpr: &str) -> Vec<(u8, Vec<u8>)> {
        let out = Command::new(self.program())
            .args(["--batch", "--export", fpr])
            .output()
            .expect("gpg --export");
        split_packets(&out.stdout)
    }

    fn commit(&self, up: &Upstream, fpr: &str, content: &str, message: &str) -> String {
        self.commit_with(&self.program(), up, fpr, content, message)
    }

    /// [`Gpg::commit`] through `program` (a gpg with a faked clock).
    fn commit_with(
        &self,
        program: &Path,
        up: &Upstream,
        fpr: &str,
        content: &str,
        message: &str,
    ) -> String {
        let program = format!("gpg.program={}", program.display());
        let key = format!("user.signingkey={fpr}");
        up.commit_signed(
            "main",
            &[("app/etc/app.conf", Some(content))],
            message,
            &["gpg.format=openpgp", &program, &key],
        )
    }
}

/// OpenPGP packets of a binary key export: (tag, the whole packet).
fn split_packets(mut data: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(&ctb) = data.first() {
        assert!(ctb & 0x80 != 0, "not an OpenPGP packet");
        let (tag, header, len) = if ctb & 0x40 != 0 {
            match data[1] {
                l @ 0..=191 => (ctb & 0x3f, 2, usize::from(l)),
                l @ 192..=223 => (
                    ctb & 0x3f,
                    3,
                    ((usize::from(l) - 192) << 8) + usize::from(data[2]) + 192,
                ),
                255 => (
                    ctb & 0x3f,
                    6,
                    u32::from_be_bytes([data[2], data[3], data[4], data[5]]) as usize,
                ),
                _ => panic!("partial lengths do not occur in keys"),
            }
        } else {
            let tag = (ctb >> 2) & 0x0f;
            match ctb & 3 {
                0 => (tag, 2, usize::from(data[1])),
                1 => (tag, 3, usize::from(u16::from_be_bytes([data[1], data[2]]))),
                2 => (
                    tag,
                    5,
                    u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize,
                ),
                _ => panic!("indeterminate lengths do not occur in keys"),
            }
        };
        out.push((tag, data[..header + len].to_vec()));
        data = &data[header + len..];
    }
    out
}

/// `packets` as an ASCII-armored public key block.
fn armor(packets: &[(u8, Vec<u8>)]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = packets.iter().flat_map(|(_, p)| p.clone()).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n{}\n-----END PGP PUBLIC KEY BLOCK-----\n",
        lines.join("\n")
    )
}

/// A key file is judged as gpg judges keys, not taken whole: a signing
/// subkey that someone appended to a trusted key (a keyserver accepts
/// such packets), a key revoked after it signed, a key that expired, and
/// a key that may now only certify are each refused, with the reason; a
/// commit from a properly bound signing subkey deploys.
#[test]
fn openpgp_signatures_count_only_from_keys_that_may_sign_now() {
    if !common::require_tool("git-daemon") || !common::require_tool("gpg") {
        return;
    }
    let g = Gpg::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let bob = g.key("Bob <bob@example.net>");
    let mallory = g.key_made("Mallory <mallory@example.net>", "cert", "never", None);
    let mallory_sub = g.add_subkey(&mallory, "sign");
    let carol = g.key("Carol <carol@example.net>");
    let ten_days_ago = now - 10 * 86_400;
    let dave = g.key_made("Dave <dave@example.net>", "sign", "1d", Some(ten_days_ago));
    let erin = g.key("Erin <erin@example.net>");
    let frank = g.key_made("Frank <frank@example.net>", "cert", "never", None);
    let frank_sub = g.add_subkey(&frank, "sign");
    // Bob's key as a keyserver may hand it out: Mallory's signing subkey
    // and its binding (by Mallory's key, not Bob's) appended.
    let mut bobs = g.packets(&bob);
    let theirs = g.packets(&mallory);
    let sub_at = theirs.iter().position(|(t, _)| *t == 14).expect("a subkey");
    bobs.extend(theirs[sub_at..].iter().cloned());
    let keys = g.dir.path().join("keys.asc");
    let write_keys = || {
        let mut text = armor(&bobs);
        for k in [&carol, &dave, &erin, &frank] {
            text.push_str(&g.gpg(&["--armor", "--export", k]));
            text.push('\n');
        }
        fs::write(&keys, text).expect("keys.asc");
    };
    write_keys();
    let d = GitDaemon::start();
    let up = d.repo("app");
    up.commit(
        "main",
        &[("app/default", Some("OPTS=-v\n"))],
        "unsigned base",
    );
    let h = Host::new();
    h.write_config(&app_config(
        &up.url(),
        &format!("openpgp_keys = \"{}\"", keys.display()),
    ));
    let good = g.commit(&up, &bob, "port = 1\n", "by bob");
    h.sync(0);
    assert_eq!(deployed(&h), good);
    let refused = |commit: &str, why: &str| {
        let out = h.sync(1);
        assert!(
            out.contains(&format!("rejected {} at signature", &commit[..10])) && out.contains(why),
            "{commit} is refused because {why}: {out}"
        );
        assert_eq!(deployed(&h), good);
    };

    let appended = g.commit(&up, &format!("{mallory_sub}!"), "port = 2\n", "appended");
    refused(
        &appended,
        &format!("Bob <bob@example.net>: a key that may not sign: subkey {mallory_sub} is not bound to the key by a valid binding signature"),
    );

    let revoked = g.commit(&up, &carol, "port = 3\n", "carol");
    g.revoke(&carol);
    write_keys();
    refused(
        &revoked,
        "Carol <carol@example.net>: a key that may not sign: the key is revoked",
    );

    let past = g.dir.path().join("gpg-past");
    fs::write(
        &past,
        format!(
            "#!/bin/sh\nexec {} --faked-system-time={}! \"$@\"\n",
            g.program().display(),
            ten_days_ago + 3600
        ),
    )
    .expect("gpg-past");
    common::run(Command::new("chmod").arg("+x").arg(&past));
    let expired = g.commit_with(&past, &up, &dave, "port = 4\n", "dave, ten days ago");
    refused(
        &expired,
        "Dave <dave@example.net>: a key that may not sign: the key expired on ",
    );

    let certifies = g.commit(&up, &erin, "port = 5\n", "erin");
    g.certify_only(&erin);
    write_keys();
    refused(
        &certifies,
        "Erin <erin@example.net>: a key that may not sign: the key is not flagged for signing",
    );

    let by_subkey = g.commit(&up, &format!("{frank_sub}!"), "port = 6\n", "frank");
    h.sync(0);
    assert_eq!(deployed(&h), by_subkey);
    let s = h.status_json()["signature"].clone();
    assert_eq!(s["signer"], "Frank <frank@example.net>", "{s}");
}

/// Anti-rollback holds by ancestry, not by dates: several signed commits
/// pushed between two passes deploy (the proof fetches the history a
/// shallow mirror lacks), while a newer signed commit from another branch,
/// and an older one served after the mirror was rebuilt (removed here, as a
/// rebuild leaves it: nothing but what the server sends), are refused and
/// stay refused until `forward --allow-older`.
#[test]
fn a_head_that_does_not_descend_from_the_deployed_one_is_refused_whatever_its_date() {
    if !common::require_tool("git-daemon") || !common::require_tool("ssh-keygen") {
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let alice = keys.path().join("alice");
    common::ssh_keygen(&alice);
    let signers = keys.path().join("allowed_signers");
    let public = common::public_key(&keys.path().join("alice.pub"));
    fs::write(&signers, format!("alice@example.net {public}\n")).expect("allowed_signers");
    let d = GitDaemon::start();
    let up = d.repo("app");
    let h = Host::new();
    h.write_config(&app_config(
        &up.url(),
        &format!("allowed_signers = \"{}\"", signers.display()),
    ));
    up.commit(
        "main",
        &[("app/default", Some("OPTS=-v\n"))],
        "unsigned base",
    );
    let first = commit_as(&up, &alice, "port = 1\n", "one");
    h.sync(0);
    assert_eq!(deployed(&h), first);

    // Ten signed commits at once: the mirror holds one, the proof the rest.
    let mut newest = String::new();
    for i in 2..12 {
        newest = commit_as(&up, &alice, &format!("port = {i}\n"), &format!("c{i}"));
    }
    let older = common::run(common::git_cmd(up.bare()).args(["rev-parse", "main~3"]));
    h.sync(0);
    assert_eq!(deployed(&h), newest);

    // A signed commit made later, but on a branch forked from the first.
    common::run(common::git_cmd(up.bare()).args(["update-ref", "refs/heads/fork", &first]));
    let forked = commit_on(&up, "fork", &alice, "port = 99\n", "forked");
    serve_main_at(&up, &forked);
    let out = h.sync(1);
    assert!(
        out.contains(&format!(
            "upstream head {} does not descend from {}",
            &forked[..10],
            &newest[..10]
        )),
        "{out}"
    );
    assert!(out.contains("--allow-older app"), "{out}");
    assert_eq!(deployed(&h), newest);
    let s = h.status_json();
    assert_eq!(s["rejected"]["stage"], "ancestry", "{s}");
    assert_eq!(s["rejected"]["commit"], forked.as_str(), "{s}");
    let out = h.sync(0);
    assert!(out.contains("was rejected at ancestry"), "{out}");
    assert_eq!(deployed(&h), newest);

    // The mirror rebuilt, then an older signed commit of the same branch.
    for m in h.mirrors() {
        fs::remove_dir_all(&m).expect("removing the mirror");
    }
    serve_main_at(&up, &older);
    let out = h.sync(1);
    assert!(
        out.contains(&format!("upstream head {} does not descend", &older[..10])),
        "{out}"
    );
    assert_eq!(deployed(&h), newest);

    // The operator accepts the rewrite on purpose; it becomes the newest.
    let out = h.run(&["forward", "--allow-older", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert_eq!(deployed(&h), older);
    assert_eq!(h.state_json("app")["followed"], older.as_str());
    serve_main_at(&up, &newest);
    h.sync(0);
    assert_eq!(deployed(&h), newest);
}

#[test]
fn gnupg_signed_commits_deploy_with_openpgp_keys_and_others_are_refused() {
    if !common::require_tool("git-daemon") || !common::require_tool("gpg") {
        return;
    }
    let g = Gpg::new();
    let bob = g.key("Bob <bob@example.net>");
    let eve = g.key("Eve <eve@example.net>");
    let keys = g.dir.path().join("keys.asc");
    fs::write(&keys, g.gpg(&["--armor", "--export", &bob])).expect("keys.asc");
    let d = GitDaemon::start();
    let up = d.repo("app");
    up.commit(
        "main",
        &[("app/default", Some("OPTS=-v\n"))],
        "unsigned base",
    );
    let h = Host::new();
    h.write_config(&app_config(
        &up.url(),
        &format!("openpgp_keys = \"{}\"", keys.display()),
    ));

    let good = g.commit(&up, &bob, "port = 1\n", "by bob");
    h.sync(0);
    assert_eq!(deployed(&h), good);
    let s = h.status_json()["signature"].clone();
    assert_eq!(s["verified"], true, "{s}");
    assert_eq!(s["format"], "openpgp");
    assert_eq!(s["signer"], "Bob <bob@example.net>");
    assert_eq!(s["fingerprint"].as_str(), Some(bob.as_str()));

    let by_eve = g.commit(&up, &eve, "port = 2\n", "by eve");
    let out = h.sync(1);
    assert!(
        out.contains(&format!("rejected {} at signature", &by_eve[..10])),
        "{out}"
    );
    assert!(out.contains("unknown key"), "{out}");
    let signed = g.commit(&up, &bob, "port = 3\n", "three");
    let tampered = write_commit(&up, &raw(&up, &signed).replacen("three", "thirty", 1));
    let out = h.sync(1);
    assert!(
        out.contains(&tampered[..10]) && out.contains("Bob <bob@example.net>: bad signature"),
        "{out}"
    );
    assert_eq!(deployed(&h), good);

    let out = h.run(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert!(common::output_text(&out).contains("1 OpenPGP key(s)"));
    fs::write(&keys, "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64 at all\n-----END PGP PUBLIC KEY BLOCK-----\n").expect("broken keys");
    let out = h.run(&["check"]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("{}:1:", keys.display())), "{text}");
}

/// The same rules on a booted machine, through its timer-run unit: a
/// signed commit is deployed and the unit reloaded; an unsigned head is
/// refused by the pass systemd runs, the unit keeps the signed files, and
/// the journal and metrics say why.
#[test]
fn a_booted_machine_deploys_signed_commits_and_refuses_an_unsigned_head() {
    if !common::require_tool("git-daemon")
        || !common::require_tool("ssh-keygen")
        || !common::container::require_containers()
    {
        return;
    }
    const BIN: &str = env!("CARGO_BIN_EXE_provision");
    let keys = tempfile::tempdir().expect("tempdir");
    common::ssh_keygen(&keys.path().join("alice"));
    let d = GitDaemon::start();
    let up = d.repo("web");
    up.commit("main", &[("web/default", Some("x\n"))], "unsigned base");
    let signed = commit_signed_web(&up, &keys.path().join("alice"), "one\n");
    let m = common::container::Machine::boot("sig1");
    m.put(
        "/etc/provision/allowed_signers",
        &format!(
            "alice@example.net {}\n",
            common::public_key(&keys.path().join("alice.pub"))
        ),
        0o644,
    );
    m.put(
        "/etc/systemd/system/web.service",
        "[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/sh -c 'echo r >> /var/log/web.reloads'\n",
        0o644,
    );
    m.put(
        "/etc/provision/config.toml",
        &format!(
            "[[services]]\nmachine = \"sig1\"\nservice = \"web\"\nupstream = \"{}\"\naction = \"reload\"\n\
             allowed_signers = \"/etc/provision/allowed_signers\"\nhealth = \"! grep -q bad /etc/web/web.conf\"\nhealth_timeout = \"3s\"\n\
             dirs = [ {{ local = \"/etc/web\", link = \"web\" }} ]\n",
            up.url()
        ),
        0o644,
    );
    m.sh("systemctl daemon-reload && systemctl start web");
    common::container::install_provision(&m, BIN);
    let run =
        |m: &common::container::Machine| m.sh_status("systemctl start provision@web.service").0;
    assert_eq!(run(&m), 0, "{}", m.journal("provision@web.service"));
    assert_eq!(m.read("/etc/web/web.conf").as_deref(), Some("one\n"));
    assert_eq!(m.reloads("web"), 1);

    let unsigned = up.commit("main", &[("web/web.conf", Some("evil\n"))], "unsigned");
    assert_ne!(run(&m), 0, "the pass fails");
    assert_eq!(m.read("/etc/web/web.conf").as_deref(), Some("one\n"));
    assert_eq!(m.reloads("web"), 1, "no reload for a refused commit");
    let journal = m.journal("provision@web.service");
    assert!(
        journal.contains(&format!(
            "rejected {} at signature: unsigned",
            &unsigned[..10]
        )),
        "{journal}"
    );
    let metrics = m
        .read("/var/lib/prometheus/node-exporter/provision.prom")
        .expect("metrics");
    assert!(
        metrics.contains("provision_signature_verified{service=\"web\"} 0"),
        "{metrics}"
    );
    let out = m.sh_status(&format!("{BIN} verify web {signed}"));
    assert_eq!(out.0, 0, "{}", out.1);
    assert!(out.1.contains("signed by alice@example.net"), "{}", out.1);

    // Alice's key is withdrawn; Bob signs a commit that fails its health
    // check. Going back would deploy Alice's commit again, which no trusted
    // key signed any more: the revert is refused and says so.
    common::ssh_keygen(&keys.path().join("bob"));
    m.put(
        "/etc/provision/allowed_signers",
        &format!(
            "bob@example.net {}\n",
            common::public_key(&keys.path().join("bob.pub"))
        ),
        0o644,
    );
    commit_signed_web(&up, &keys.path().join("bob"), "bad\n");
    assert_ne!(run(&m), 0);
    let journal = m.journal("provision@web.service");
    assert!(
        journal.contains(&format!(
            "could not revert: the previous commit {} is not signed by a trusted key",
            &signed[..10]
        )),
        "{journal}"
    );
    assert_eq!(m.read("/etc/web/web.conf").as_deref(), Some("bad\n"));
}

fn commit_signed_web(up: &Upstream, key: &Path, content: &str) -> String {
    let sign = ssh_signing(key);
    let sign: Vec<&str> = sign.iter().map(String::as_str).collect();
    up.commit_signed("main", &[("web/web.conf", Some(content))], "signed", &sign)
}

/// `bootstrap` and `fleet --repo` with `--allowed-signers` use the config
/// only from a commit signed by an allowed key: an unsigned head installs
/// and lists nothing; without keys, a `git://` repository gets a warning.
#[test]
fn a_config_from_git_is_used_only_when_its_commit_is_signed_by_an_allowed_key() {
    if !common::require_tool("git-daemon") || !common::require_tool("ssh-keygen") {
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let alice = keys.path().join("alice");
    common::ssh_keygen(&alice);
    let signers = keys.path().join("allowed_signers");
    let public = common::public_key(&keys.path().join("alice.pub"));
    fs::write(&signers, format!("alice@example.net {public}\n")).expect("allowed_signers");
    let d = GitDaemon::start();
    let up = d.repo("fleet");
    let config = |machine: &str| {
        format!(
            "[[services]]\nmachine = \"{machine}\"\nservice = \"web\"\nupstream = \"{}\"\n\
             dirs = [{{ local = \"/etc/web\", link = \"web\" }}]\n",
            up.url()
        )
    };
    let unsigned = up.commit(
        "main",
        &[("provision/config.toml", Some(&config("forged")))],
        "unsigned",
    );
    let url = up.url();
    let h = Host::new();
    let dest = h.path().join("etc/provision/config.toml");
    let run = |args: &[&str]| {
        let out = Command::new(common::provision_bin())
            .arg("--config")
            .arg(&dest)
            .arg("--state-dir")
            .arg(h.state())
            .args(args)
            // bootstrap goes on to start timers: never on this host's systemd.
            .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
            .output()
            .expect("running provision");
        (out.status.code(), common::output_text(&out))
    };
    let signed_flag = ["--allowed-signers", signers.to_str().expect("utf-8 path")];
    let fleet = |extra: &[&str]| {
        let mut args = vec!["fleet", "--repo", &url, "inventory"];
        args.extend_from_slice(extra);
        run(&args)
    };

    let (code, said) = run(&["bootstrap", &url, signed_flag[0], signed_flag[1]]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!("commit {} on branch main", &unsigned[..10])),
        "{said}"
    );
    assert!(said.contains("refused"), "{said}");
    assert!(!dest.exists(), "nothing installed: {said}");
    let (code, said) = fleet(&signed_flag);
    assert_eq!(code, Some(1), "{said}");
    assert!(!said.contains("forged"), "{said}");

    // Without keys it is used, with a warning about git://.
    let (code, said) = fleet(&[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("forged"), "{said}");
    assert!(
        said.contains("is git://, unauthenticated") && said.contains("--allowed-signers"),
        "{said}"
    );

    // Signed by alice: used, and no warning.
    let sign = ssh_signing(&alice);
    let sign: Vec<&str> = sign.iter().map(String::as_str).collect();
    up.commit_signed(
        "main",
        &[("provision/config.toml", Some(&config("m1")))],
        "signed",
        &sign,
    );
    let (code, said) = fleet(&signed_flag);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("m1") && !said.contains("forged"), "{said}");
    assert!(!said.contains("warning"), "{said}");
    let (_, said) = run(&["bootstrap", &url, signed_flag[0], signed_flag[1]]);
    assert!(said.contains("/nonexistent/bus"), "{said}");
    let installed = fs::read_to_string(&dest).unwrap_or_else(|e| panic!("{e}: {said}"));
    assert_eq!(installed, config("m1"));
}

/// A signature is the `gpgsig` header and nothing else: a commit that
/// carries a copy of another commit's signature in its message (whose
/// payload, with those lines taken out, is the signed one) is unsigned,
/// as `git verify-commit` says, so one signature vouches for one commit.
#[test]
fn a_signature_copied_into_a_commit_message_signs_nothing() {
    if !common::require_tool("git-daemon") || !common::require_tool("ssh-keygen") {
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let alice = keys.path().join("alice");
    common::ssh_keygen(&alice);
    let signers = keys.path().join("allowed_signers");
    let public = common::public_key(&keys.path().join("alice.pub"));
    fs::write(&signers, format!("alice@example.net {public}\n")).expect("allowed_signers");
    let d = GitDaemon::start();
    let up = d.repo("app");
    let h = Host::new();
    h.write_config(&app_config(
        &up.url(),
        &format!("allowed_signers = \"{}\"", signers.display()),
    ));
    up.commit("main", &[("app/default", Some("OPTS=-v\n"))], "base");
    let good = commit_as(&up, &alice, "port = 1\n", "one");

    // The signed commit without its header, the header moved to the end
    // of the message: what libgit2 calls the payload is unchanged.
    let text = raw(&up, &good);
    let (head, message) = text.split_once("\n\n").expect("headers and message");
    let mut kept = Vec::new();
    let mut block = String::new();
    for line in head.lines() {
        if line.starts_with("gpgsig ") || (line.starts_with(' ') && !block.is_empty()) {
            block.push_str(line);
            block.push('\n');
        } else {
            kept.push(line);
        }
    }
    assert!(block.contains("BEGIN SSH SIGNATURE"), "{text}");
    let forged = write_commit(&up, &format!("{}\n\n{message}{block}", kept.join("\n")));
    assert_ne!(forged, good);
    let out = h.run(&["verify", "app", &forged]);
    let said = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("unsigned"), "{said}");
    let said = h.sync(1);
    assert!(said.contains("at signature: unsigned"), "{said}");
    assert_eq!(deployed(&h), "", "nothing deployed");
    serve_main_at(&up, &good);
    h.sync(0);
    assert_eq!(deployed(&h), good);
}
