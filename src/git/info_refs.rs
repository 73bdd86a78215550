//! A dumb HTTP server's `info/refs` (one `commit<TAB>ref` line per ref)
//! and the validators of its last answer, for a conditional GET. Plain
//! reading, below both the session that first meets such a server and the
//! client that fetches from it.

use git2::Oid;

use crate::util::http;

/// A server's refs: (commit, ref name).
pub type Refs = Vec<(Oid, String)>;

/// `info/refs` as `(commit, ref)` lines; `None` when `text` is not one
/// (an HTML page, say).
pub fn refs(text: &str) -> Option<Refs> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (id, name) = line.split_once('\t')?;
        if id.len() != 40 {
            return None;
        }
        out.push((Oid::from_str(id).ok()?, name.to_string()));
    }
    Some(out)
}

/// What a conditional GET of `info/refs` needs from the last one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// `ETag`, as sent.
    pub etag: Option<String>,
    /// `Last-Modified`, as sent.
    pub last_modified: Option<String>,
}

impl Validators {
    /// The validators of `resp`, when they can be trusted to change with
    /// the file: not when it was modified in the second it was served (a
    /// push later in that second would keep the same `Last-Modified`, and
    /// an ETag made of mtime and size, as nginx's is, the same ETag).
    pub fn of(resp: &http::Response) -> Validators {
        if resp.date.is_some() && resp.date == resp.last_modified {
            return Validators::default();
        }
        Validators {
            etag: resp.etag.clone(),
            last_modified: resp.last_modified.clone(),
        }
    }

    /// The file's text: one `name: value` line each.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(e) = &self.etag {
            out.push_str(&format!("etag: {e}\n"));
        }
        if let Some(l) = &self.last_modified {
            out.push_str(&format!("last-modified: {l}\n"));
        }
        out
    }

    /// Reads [`Validators::to_text`]'s text.
    pub fn parse(text: &str) -> Validators {
        let mut v = Validators::default();
        for line in text.lines() {
            match line.split_once(": ") {
                Some(("etag", e)) => v.etag = Some(e.to_string()),
                Some(("last-modified", l)) => v.last_modified = Some(l.to_string()),
                _ => {}
            }
        }
        v
    }

    /// `If-None-Match` and `If-Modified-Since` headers.
    pub fn headers(&self) -> Vec<String> {
        let mut h = Vec::new();
        if let Some(e) = &self.etag {
            h.push(format!("If-None-Match: {e}"));
        }
        if let Some(l) = &self.last_modified {
            h.push(format!("If-Modified-Since: {l}"));
        }
        h
    }
}
