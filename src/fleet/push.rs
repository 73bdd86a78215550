//! Push events from a forge (GitHub, Gitea/Forgejo, GitLab), the one
//! receiver of the fleet (`fleet serve`'s hook): a push to a repository
//! and branch becomes `sync SERVICE` on exactly the machines whose
//! services follow them and whose mounted paths it changed. The machines
//! still decide (rollout window, gate, change windows): a push only says
//! "look now", so machines can keep a long `interval` as the safety net.
//!
//! The signature is the only authentication (a forge has no session):
//! GitHub's and Gitea's HMAC-SHA256 of the body, GitLab's shared token,
//! each compared in constant time.

use std::collections::BTreeSet;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::config::Config;
use crate::util::repo_key;

/// Which forge sent an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// `X-Hub-Signature-256: sha256=HEX`.
    GitHub,
    /// `X-Gitea-Signature: HEX` (Forgejo: `X-Forgejo-Signature` too).
    Gitea,
    /// `X-Gitlab-Token: SECRET`.
    GitLab,
}

impl Forge {
    /// Its name in logs and on the page.
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::GitHub => "GitHub",
            Forge::Gitea => "Gitea",
            Forge::GitLab => "GitLab",
        }
    }
}

/// Why an event was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No signature of a known forge, or a wrong one: 401, nothing runs.
    Unauthenticated(&'static str),
    /// Signed, but not a push event (ping, tag, issue...): 202, nothing runs.
    NotAPush(String),
    /// Signed, but the body is not a push payload: 400.
    Malformed(String),
}

/// A verified push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Who sent it.
    pub forge: Forge,
    /// Every URL the payload gives the repository by (clone, git, ssh,
    /// web), as [`repo_key`]s.
    pub repos: BTreeSet<String>,
    /// The branch pushed to.
    pub branch: String,
    /// The paths its commits changed; `None` when the payload does not
    /// list them all (a forced push, or more commits than it carries).
    pub paths: Option<BTreeSet<String>>,
    /// The repository as the payload names it, for the log.
    pub name: String,
}

/// Verifies `body` with the forge's signature header and reads the push.
/// `header` looks a request header up by name (any case).
pub fn receive<'a>(
    secret: &[u8],
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
) -> Result<Push, Refused> {
    let forge = verify(secret, &header, body)?;
    let event = match forge {
        Forge::GitHub => header("X-GitHub-Event"),
        Forge::Gitea => header("X-Gitea-Event").or(header("X-Forgejo-Event")),
        Forge::GitLab => header("X-Gitlab-Event"),
    }
    .unwrap_or("push");
    if !matches!(event, "push" | "Push Hook") {
        return Err(Refused::NotAPush(event.to_string()));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Refused::Malformed(format!("the body is not JSON: {e}")))?;
    parse(forge, &v)
}

/// Which forge signed `body` with `secret`, in constant time.
fn verify<'a>(
    secret: &[u8],
    header: &impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
) -> Result<Forge, Refused> {
    let hmac_ok = |hex_sig: &str| {
        let Ok(sig) = hex_decode(hex_sig.trim()) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    };
    if let Some(sig) = header("X-Hub-Signature-256") {
        let ok = sig.strip_prefix("sha256=").is_some_and(hmac_ok);
        return ok.then_some(Forge::GitHub).ok_or(Refused::Unauthenticated(
            "X-Hub-Signature-256 does not match",
        ));
    }
    if let Some(sig) = header("X-Gitea-Signature").or(header("X-Forgejo-Signature")) {
        return hmac_ok(sig)
            .then_some(Forge::Gitea)
            .ok_or(Refused::Unauthenticated("X-Gitea-Signature does not match"));
    }
    if let Some(token) = header("X-Gitlab-Token") {
        return same(token.as_bytes(), secret)
            .then_some(Forge::GitLab)
            .ok_or(Refused::Unauthenticated("X-Gitlab-Token does not match"));
    }
    Err(Refused::Unauthenticated(
        "no X-Hub-Signature-256, X-Gitea-Signature or X-Gitlab-Token header",
    ))
}

/// Equal bytes, compared in time independent of where they differ (the
/// length is not secret: it is the secret file's).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex_decode(s: &str) -> Result<Vec<u8>, ()> {
    if !s.len().is_multiple_of(2) {
        return Err(());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or(())?, 16).map_err(|_| ()))
        .collect()
}

/// The push of a verified payload.
fn parse(forge: Forge, v: &Value) -> Result<Push, Refused> {
    let branch = v["ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("refs/heads/"))
        .ok_or_else(|| Refused::NotAPush("a push to no branch (a tag?)".into()))?
        .to_string();
    let repo = if v["project"].is_object() {
        &v["project"]
    } else {
        &v["repository"]
    };
    let mut repos = BTreeSet::new();
    for key in [
        "clone_url",
        "git_url",
        "ssh_url",
        "html_url",
        "url",
        "git_http_url",
        "git_ssh_url",
        "web_url",
        "http_url",
        "ssh_url_to_repo",
        "http_url_to_repo",
    ] {
        for r in [repo, &v["repository"]] {
            if let Some(u) = r[key].as_str() {
                repos.insert(repo_key(u));
            }
        }
    }
    if repos.is_empty() {
        return Err(Refused::Malformed(
            "the payload names no repository URL".into(),
        ));
    }
    let name = repo["full_name"]
        .as_str()
        .or(repo["path_with_namespace"].as_str())
        .or(repo["name"].as_str())
        .unwrap_or_default()
        .to_string();
    Ok(Push {
        forge,
        repos,
        branch,
        paths: changed_paths(v),
        name,
    })
}

/// Every path the payload's commits added, removed or modified; `None`
/// when it cannot be all of them.
fn changed_paths(v: &Value) -> Option<BTreeSet<String>> {
    let commits = v["commits"].as_array()?;
    if commits.is_empty() || v["forced"].as_bool() == Some(true) {
        return None;
    }
    if v["total_commits_count"]
        .as_u64()
        .is_some_and(|n| n > commits.len() as u64)
    {
        return None;
    }
    let mut out = BTreeSet::new();
    for c in commits {
        for key in ["added", "removed", "modified"] {
            for p in c[key].as_array()? {
                out.insert(p.as_str()?.to_string());
            }
        }
    }
    Some(out)
}

/// The (machine, service) pairs among `machines` that `push` concerns:
/// a service following one of its repositories (any of `upstream`) and
/// its branch, with a changed path under one of its `link`s when the
/// paths are known.
pub fn targets(config: &Config, machines: &[String], push: &Push) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in &config.services {
        if !machines.contains(&s.machine) || s.branch != push.branch {
            continue;
        }
        let follows = std::iter::once(&s.upstream)
            .chain(&s.mirrors)
            .any(|u| push.repos.contains(&repo_key(&u.url)));
        let touched = push.paths.as_ref().is_none_or(|paths| {
            paths.iter().any(|p| {
                s.dirs.iter().any(|d| {
                    p == &d.link
                        || p.strip_prefix(d.link.as_str())
                            .is_some_and(|r| r.starts_with('/'))
                })
            })
        });
        let pair = (s.machine.clone(), s.name.clone());
        if follows && touched && !out.contains(&pair) {
            out.push(pair);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("key");
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn urls_of_one_repository_reduce_to_one_key() {
        use crate::util::repo_key;
        for u in [
            "https://git.example.net/ops/config.git",
            "https://deploy@git.example.net:443/ops/config/",
            "git@git.example.net:ops/config.git",
            "ssh://git@GIT.example.net:2222/ops/config.git",
            "git://git.example.net/ops/config",
        ] {
            assert_eq!(repo_key(u), "git.example.net/ops/config", "{u}");
        }
        assert_ne!(
            repo_key("https://h/ops/other"),
            repo_key("https://h/ops/config")
        );
    }

    #[test]
    fn each_forge_signature_is_checked_and_a_wrong_one_refused() {
        let body = br#"{"ref":"refs/heads/main","repository":{"clone_url":"https://h/o/r.git"},"commits":[{"added":["a/x"],"removed":[],"modified":["b/y"]}]}"#;
        let secret = b"s3cret";
        let sig = sign(secret, body);
        let github = format!("sha256={sig}");
        let cases: [(&str, &str, Forge); 3] = [
            ("X-Hub-Signature-256", &github, Forge::GitHub),
            ("X-Gitea-Signature", &sig, Forge::Gitea),
            ("X-Gitlab-Token", "s3cret", Forge::GitLab),
        ];
        for (name, value, forge) in cases {
            let header = |h: &str| h.eq_ignore_ascii_case(name).then_some(value);
            let push = receive(secret, header, body).expect("verified");
            assert_eq!(push.forge, forge);
            assert_eq!(push.branch, "main");
            assert!(push.repos.contains("h/o/r"));
            let paths = push.paths.expect("paths");
            assert!(paths.contains("a/x") && paths.contains("b/y"));
            let wrong = |h: &str| h.eq_ignore_ascii_case(name).then_some("sha256=00");
            assert!(matches!(
                receive(secret, wrong, body),
                Err(Refused::Unauthenticated(_))
            ));
        }
        assert!(matches!(
            receive(secret, |_| None, body),
            Err(Refused::Unauthenticated(_))
        ));
        let tampered =
            br#"{"ref":"refs/heads/evil","repository":{"clone_url":"https://h/o/r.git"}}"#;
        let header = |h: &str| {
            h.eq_ignore_ascii_case("X-Hub-Signature-256")
                .then_some(github.as_str())
        };
        assert!(matches!(
            receive(secret, header, tampered),
            Err(Refused::Unauthenticated(_))
        ));
    }

    #[test]
    fn a_ping_and_a_tag_run_nothing() {
        let secret = b"k";
        let body = br#"{"ref":"refs/tags/v1","repository":{"clone_url":"https://h/o/r"}}"#;
        let sig = format!("sha256={}", sign(secret, body));
        let header = |h: &str| match h {
            "X-Hub-Signature-256" => Some(sig.as_str()),
            "X-GitHub-Event" => Some("ping"),
            _ => None,
        };
        assert!(matches!(
            receive(secret, header, body),
            Err(Refused::NotAPush(_))
        ));
        let header = |h: &str| (h == "X-Hub-Signature-256").then_some(sig.as_str());
        assert!(matches!(
            receive(secret, header, body),
            Err(Refused::NotAPush(_))
        ));
    }
}
