//! Small filesystem helpers shared by the modules that write state.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

pub mod dirfd;
pub(crate) mod http;
pub mod lock;
pub(crate) mod proxy;
pub mod secret;
pub(crate) mod tls;

use dirfd::Dir;

/// Who may read a file provision writes, and the directories it creates
/// on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Root only (0700 directories, 0600 files): state, manifests. They name
    /// every deployed path and carry error messages, and their directories
    /// hold the mirrors and releases, which may carry secrets.
    Private,
    /// Readable by all (0755 directories, 0644 files): the metrics file,
    /// which node_exporter reads as another user.
    Public,
}

impl Visibility {
    fn modes(self) -> (u32, u32) {
        match self {
            Visibility::Private => (0o700, 0o600),
            Visibility::Public => (0o755, 0o644),
        }
    }
}

/// Replaces `path` with `data` so that a reader (or a crash) sees either the
/// old or the new content, never a mix, through a descriptor of its
/// directory (see [`Dir::write_atomic`]): the directory is opened without
/// following symlinks, missing ones are created. A private file's directory
/// must belong to root and be writable by nobody else.
pub fn write_atomic(path: &Path, data: &[u8], vis: Visibility) -> Result<()> {
    let dir = path
        .parent()
        .context("atomic write needs a parent directory")?;
    let name = path.file_name().context("atomic write needs a file name")?;
    let (dir_mode, file_mode) = vis.modes();
    let d = Dir::create(dir, dir_mode)?;
    if vis == Visibility::Private {
        let m = d.meta_self()?;
        if m.writable_by_others(None) {
            bail!(
                "refusing to write {}: its directory belongs to uid {} with mode {:o}; \
                 it must belong to root and be writable by nobody else",
                path.display(),
                m.uid,
                m.perm
            );
        }
    }
    d.write_atomic(name, data, file_mode)
}

/// Opens (creating when missing) a directory that must be this process's
/// user's alone (root's, for a machine's provision): the state directory, a
/// service's directory, the mirrors, `fleet --repo`'s cache. Directories of
/// an earlier version, created 0755, are closed (0700) here; one that
/// belongs to another user is refused.
pub fn private_dir(path: &Path) -> Result<Dir> {
    let d = Dir::create(path, 0o700)?;
    let m = d.meta_self()?;
    let me = rustix::process::geteuid().as_raw();
    if m.uid != me {
        let whose = if me == 0 {
            "root".to_string()
        } else {
            format!("uid {me} (this user)")
        };
        bail!(
            "{} belongs to uid {}, not {whose}; refusing to keep provision's state there",
            path.display(),
            m.uid
        );
    }
    if m.perm != 0o700 {
        d.chmod(0o700)?;
    }
    Ok(d)
}

/// Whether a `git` program is on `PATH` (looked up once per process).
pub fn git_installed() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| {
                fs::metadata(dir.join("git")).is_ok_and(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
            })
        })
    })
}

/// Removes a directory tree if it exists.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// A byte count for messages: `256.0 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A time span for messages, as the config writes it: `2h`, `1h 30m`, `45s`.
pub fn human_span(d: std::time::Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".to_string();
    }
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            parts.push(format!("{}{unit}", s / size));
            s %= size;
        }
    }
    parts.join(" ")
}

/// Seconds since the Unix epoch, for state files and metrics.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD HH:MM` in UTC for Unix seconds (days-to-civil conversion, so
/// no time-zone database is needed).
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Unix seconds of an RFC 3339 time (`2026-12-01T08:00:00Z`,
/// `2026-12-01T09:00:00+01:00`, fractions ignored); `None` when it is not
/// one. The inverse of the conversion in [`format_utc`].
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let t = text.trim();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let sep = |i: usize, c: &[u8]| t.as_bytes().get(i).is_some_and(|b| c.contains(b));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            if rest.as_bytes()[3] != b':' || h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + min * 60 + sec - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of
/// [`format_utc`]'s conversion; no time-zone database needed).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Percent-encodes everything but unreserved characters: a URL query
/// value or one path segment.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Text from outside (a commit, a server, a remote machine, a form) made
/// safe for one line of a terminal or a log: line breaks, escape sequences
/// and every other control character are shown escaped (`\n`, `\u{1b}`),
/// so such text can neither forge a log line nor drive the terminal.
pub fn escape_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Text from outside shown over several lines (an error with a server's
/// message, a command's output, a remote machine's answer): as
/// [`escape_line`], but line breaks and tabs are kept.
pub fn escape_text(s: &str) -> std::borrow::Cow<'_, str> {
    let shown = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !s.chars().any(shown) {
        return std::borrow::Cow::Borrowed(s);
    }
    s.chars()
        .map(|c| {
            if shown(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// [`escape_text`] for bytes that may not be UTF-8: control bytes are
/// shown escaped (`\x1b`), everything else passes as it is.
pub fn escape_bytes(b: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if let Ok(s) = std::str::from_utf8(b) {
        return match escape_text(s) {
            std::borrow::Cow::Borrowed(_) => std::borrow::Cow::Borrowed(b),
            std::borrow::Cow::Owned(o) => std::borrow::Cow::Owned(o.into_bytes()),
        };
    }
    let shown = |c: u8| (c < 0x20 && c != b'\n' && c != b'\t') || c == 0x7f;
    let mut out = Vec::with_capacity(b.len());
    for &c in b {
        if shown(c) {
            out.extend_from_slice(format!("\\x{c:02x}").as_bytes());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A compact age: `42s`, `5m`, `3h`, `2d`.
pub fn age(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A repository URL reduced to `host/path`, lower case, without scheme,
/// user, port, `.git` or slashes at the ends: the clone, ssh and web URLs
/// of one repository all reduce to the same key, whatever the config
/// writes (`https://h/o/r.git`, `git@h:o/r`, `ssh://git@h:22/o/r.git`).
pub fn repo_key(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = match url.contains("://") {
        true => rest.split_once('/').unwrap_or((rest, "")),
        false => rest.split_once(':').unwrap_or((rest, "")),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(h, _)| h),
        None => host.split_once(':').map_or(host, |(h, _)| h),
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!(
        "{}/{}",
        host.to_ascii_lowercase(),
        path.trim_start_matches('~')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(
            parse_rfc3339("2026-11-18T12:06:40+01:00"),
            Some(1_795_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-18T11:06:40.25Z"),
            Some(1_795_000_000)
        );
        for bad in [
            "",
            "2026-11-18",
            "2026-13-01T00:00:00Z",
            "2026-11-18T11:06:40",
            "tomorrow",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn control_characters_are_shown_escaped_but_lines_and_tabs_kept() {
        assert_eq!(escape_text("a\tb\nc"), "a\tb\nc");
        assert_eq!(escape_text("\u{1b}[2J\r\u{9b}"), "\\u{1b}[2J\\r\\u{9b}");
        assert_eq!(&*escape_bytes(b"ok\n"), b"ok\n");
        assert_eq!(&*escape_bytes(b"\xff\x1b[\n"), b"\xff\\x1b[\n");
    }

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00");
        assert_eq!(format_utc(1_795_000_000), "2026-11-18 11:06");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00");
    }
}
