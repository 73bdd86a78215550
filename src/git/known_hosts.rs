//! known_hosts: the host keys provision accepts for ssh upstreams, in
//! OpenSSH's file format (plain, hashed and bracketed `[host]:port` names,
//! wildcards and negation, `@revoked` and `@cert-authority` markers).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::config::Credentials;

/// System-wide known_hosts, searched first when none is configured.
const SYSTEM_KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";

/// The names known_hosts lists `host` under, as OpenSSH writes them: the
/// bare host for port 22, `[host]:port` for any other port.
pub(super) fn host_names(host: &str, port: u16) -> Vec<String> {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        vec![host.clone(), format!("[{host}]:22")]
    } else {
        vec![format!("[{host}]:{port}")]
    }
}

/// The known_hosts files to search: the configured one, else the system one
/// and the user's.
pub(super) fn known_hosts_files(creds: &Credentials) -> Vec<PathBuf> {
    if let Some(path) = &creds.ssh_known_hosts {
        return vec![path.clone()];
    }
    let mut files = vec![PathBuf::from(SYSTEM_KNOWN_HOSTS)];
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        files.push(Path::new(&home).join(".ssh/known_hosts"));
    }
    files
}

/// Parse all `files`; a missing default file is skipped, a missing configured
/// one is an error.
pub(super) fn load_known_hosts(files: &[PathBuf], configured: bool) -> Result<Vec<KnownHost>> {
    let mut entries = Vec::new();
    for file in files {
        match fs::read_to_string(file) {
            Ok(text) => entries.extend(parse_known_hosts(&text, file)),
            Err(e) if e.kind() == ErrorKind::NotFound && !configured => {}
            Err(e) => {
                return Err(e).with_context(|| format!("reading known_hosts {}", file.display()))
            }
        }
    }
    Ok(entries)
}

/// The marker at the start of a known_hosts line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marker {
    None,
    Revoked,
    CertAuthority,
}

/// One usable known_hosts line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KnownHost {
    marker: Marker,
    hosts: String,
    key_type: String,
    blob: Vec<u8>,
    /// `file:line`, for messages.
    origin: String,
}

/// The usable lines of a known_hosts file; comments, blank and malformed
/// lines are skipped, as OpenSSH does.
pub(super) fn parse_known_hosts(text: &str, file: &Path) -> Vec<KnownHost> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let mut entry = parse_line(line)?;
            entry.origin = format!("{}:{}", file.display(), i + 1);
            Some(entry)
        })
        .collect()
}

/// `[@marker] hosts keytype base64key [comment]`, or None.
pub(super) fn parse_line(line: &str) -> Option<KnownHost> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace().peekable();
    let marker = match fields.next_if(|f| f.starts_with('@')) {
        None => Marker::None,
        Some("@revoked") => Marker::Revoked,
        Some("@cert-authority") => Marker::CertAuthority,
        Some(_) => return None,
    };
    let hosts = fields.next()?.to_owned();
    let key_type = fields.next()?.to_owned();
    let blob = STANDARD.decode(fields.next()?).ok()?;
    Some(KnownHost {
        marker,
        hosts,
        key_type,
        blob,
        origin: String::new(),
    })
}

/// What known_hosts says about a presented key.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Match,
    Unknown,
    /// The host is listed, but not with this key: `TYPE at file:line` each.
    Changed(Vec<String>),
    /// The key is listed as `@revoked` at this `file:line`.
    Revoked(String),
}

/// Compare a presented key (type and blob) with the entries for `names`.
pub(super) fn check_host_key(
    entries: &[KnownHost],
    names: &[String],
    key_type: &str,
    blob: &[u8],
) -> Verdict {
    let relevant: Vec<&KnownHost> = entries
        .iter()
        .filter(|e| e.marker == Marker::Revoked || e.marker == Marker::None)
        .filter(|e| names.iter().any(|n| host_field_matches(&e.hosts, n)))
        .collect();
    let same = |e: &KnownHost| e.key_type == key_type && e.blob == blob;
    if let Some(e) = relevant
        .iter()
        .find(|e| e.marker == Marker::Revoked && same(e))
    {
        return Verdict::Revoked(e.origin.clone());
    }
    let plain: Vec<&&KnownHost> = relevant
        .iter()
        .filter(|e| e.marker == Marker::None)
        .collect();
    if plain.iter().any(|e| same(e)) {
        return Verdict::Match;
    }
    if plain.is_empty() {
        return Verdict::Unknown;
    }
    Verdict::Changed(
        plain
            .iter()
            .map(|e| format!("{} at {}", e.key_type, e.origin))
            .collect(),
    )
}

/// Whether a known_hosts host field (hashed, or comma-separated patterns with
/// `*`, `?` and `!` negation) matches `name`.
pub(super) fn host_field_matches(field: &str, name: &str) -> bool {
    if let Some(hashed) = field.strip_prefix("|1|") {
        return hashed_matches(hashed, name);
    }
    let mut matched = false;
    for pattern in field.split(',') {
        match pattern.strip_prefix('!') {
            Some(negated) if glob_matches(negated.as_bytes(), name.as_bytes()) => return false,
            Some(_) => {}
            None => matched |= glob_matches(pattern.as_bytes(), name.as_bytes()),
        }
    }
    matched
}

/// `salt|hmac` (both base64): HMAC-SHA1 of `name` keyed by the salt.
pub(super) fn hashed_matches(salt_and_hash: &str, name: &str) -> bool {
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// Case-insensitive glob match with `*` and `?`, as ssh host patterns use.
pub(super) fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, _) => name.is_empty(),
        (Some((b'*', rest)), _) => {
            glob_matches(rest, name) || (!name.is_empty() && glob_matches(pattern, &name[1..]))
        }
        (Some(_), None) => false,
        (Some((b'?', rest)), Some((_, name_rest))) => glob_matches(rest, name_rest),
        (Some((p, rest)), Some((c, name_rest))) => {
            p.eq_ignore_ascii_case(c) && glob_matches(rest, name_rest)
        }
    }
}

/// The key type named inside an ssh wire-format public key blob.
pub(super) fn blob_key_type(blob: &[u8]) -> Option<&str> {
    let len_bytes: [u8; 4] = blob.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    std::str::from_utf8(blob.get(4..4usize.checked_add(len)?)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIL6d8SK2JNX61zEeSCnYBmxTUh89b19PHkpNpb9YnQEx";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBmdsOfB8Tb9yB1UVbOtIikASRg4xTIKEXQU2PbMs6L+";
    /// `server.example.org` with KEY_A, hashed by `ssh-keygen -H`.
    const HASHED_A: &str = "|1|MT8EBGU48Rn261TY+Cu0BAF1NOg=|o7d/KE3LKAZJQxNMS8qrFozWVDs= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL6d8SK2JNX61zEeSCnYBmxTUh89b19PHkpNpb9YnQEx";

    fn blob(key: &str) -> Vec<u8> {
        STANDARD.decode(key).expect("test key is base64")
    }

    fn verdict(known_hosts: &str, host: &str, port: u16, key: &str) -> Verdict {
        let entries = parse_known_hosts(known_hosts, Path::new("/kh"));
        check_host_key(&entries, &host_names(host, port), "ssh-ed25519", &blob(key))
    }

    #[test]
    fn plain_entry_matches_any_listed_host() {
        let kh = format!("other.example,server.example.org,10.0.0.1 ssh-ed25519 {KEY_A} c\n");
        assert_eq!(
            verdict(&kh, "server.example.org", 22, KEY_A),
            Verdict::Match
        );
        assert_eq!(verdict(&kh, "10.0.0.1", 22, KEY_A), Verdict::Match);
        assert_eq!(
            verdict(&kh, "SERVER.example.org", 22, KEY_A),
            Verdict::Match
        );
        assert_eq!(verdict(&kh, "nope.example", 22, KEY_A), Verdict::Unknown);
    }

    #[test]
    fn hashed_entry_matches_only_its_host() {
        assert_eq!(
            verdict(HASHED_A, "server.example.org", 22, KEY_A),
            Verdict::Match
        );
        assert_eq!(
            verdict(HASHED_A, "server.example.com", 22, KEY_A),
            Verdict::Unknown
        );
        assert_eq!(
            verdict("|1|bad|base64! ssh-ed25519 AAAA", "x", 22, KEY_A),
            Verdict::Unknown
        );
    }

    #[test]
    fn bracketed_port_form_is_used_for_other_ports() {
        let kh = format!("[server.example.org]:2222 ssh-ed25519 {KEY_A}\n");
        assert_eq!(
            verdict(&kh, "server.example.org", 2222, KEY_A),
            Verdict::Match
        );
        assert_eq!(
            verdict(&kh, "server.example.org", 22, KEY_A),
            Verdict::Unknown
        );
        let bare = format!("server.example.org ssh-ed25519 {KEY_A}\n");
        assert_eq!(
            verdict(&bare, "server.example.org", 2222, KEY_A),
            Verdict::Unknown
        );
    }

    #[test]
    fn comments_blank_and_malformed_lines_are_skipped() {
        let kh = format!(
            "# comment server.example.org ssh-ed25519 {KEY_B}\n\n   \nserver.example.org ssh-ed25519\n\
             server.example.org ssh-ed25519 not*base64\n@bogus server.example.org ssh-ed25519 {KEY_B}\n\
             \tserver.example.org ssh-ed25519 {KEY_A} trailing comment\n"
        );
        let entries = parse_known_hosts(&kh, Path::new("/kh"));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].origin, "/kh:7");
        assert_eq!(
            verdict(&kh, "server.example.org", 22, KEY_A),
            Verdict::Match
        );
    }

    #[test]
    fn different_key_is_reported_as_changed() {
        let kh = format!("server.example.org ssh-ed25519 {KEY_B}\n");
        assert_eq!(
            verdict(&kh, "server.example.org", 22, KEY_A),
            Verdict::Changed(vec!["ssh-ed25519 at /kh:1".into()])
        );
    }

    #[test]
    fn any_matching_line_accepts_the_key() {
        let kh = format!("server.example.org ssh-ed25519 {KEY_B}\n{HASHED_A}\n");
        assert_eq!(
            verdict(&kh, "server.example.org", 22, KEY_A),
            Verdict::Match
        );
    }

    #[test]
    fn revoked_and_cert_authority_markers() {
        let kh =
            format!("@revoked * ssh-ed25519 {KEY_A}\nserver.example.org ssh-ed25519 {KEY_A}\n");
        assert_eq!(
            verdict(&kh, "server.example.org", 22, KEY_A),
            Verdict::Revoked("/kh:1".into())
        );
        let ca = format!("@cert-authority server.example.org ssh-ed25519 {KEY_A}\n");
        assert_eq!(
            verdict(&ca, "server.example.org", 22, KEY_A),
            Verdict::Unknown
        );
    }

    #[test]
    fn wildcards_and_negation() {
        let kh = format!("*.example.org,!bad.example.org ssh-ed25519 {KEY_A}\n");
        assert_eq!(
            verdict(&kh, "server.example.org", 22, KEY_A),
            Verdict::Match
        );
        assert_eq!(verdict(&kh, "bad.example.org", 22, KEY_A), Verdict::Unknown);
        assert!(glob_matches(b"10.0.0.?", b"10.0.0.7"));
        assert!(!glob_matches(b"10.0.0.?", b"10.0.0.17"));
    }

    #[test]
    fn key_type_is_read_from_the_blob() {
        assert_eq!(blob_key_type(&blob(KEY_A)), Some("ssh-ed25519"));
        assert_eq!(blob_key_type(&[0, 0, 0, 9, b'x']), None);
    }
}
