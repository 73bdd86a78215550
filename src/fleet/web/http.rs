//! HTTP/1.1 for `fleet serve`, bounded before anyone is authenticated.
//!
//! Every request is read under limits an unauthenticated client cannot
//! push past: the header block (size and count), the body (refused by its
//! `Content-Length` before a byte of it is read; no chunked bodies), and one
//! deadline for the whole request, so a slow client is cut off rather than
//! holding a thread. Parsing is `httparse`'s; one request per connection
//! (`Connection: close`), so there is no state between requests to get
//! wrong. Many more connections may wait than requests are worked on, so a
//! few idle sockets cannot lock the page out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The largest header block (request line included).
const MAX_HEADER_BYTES: usize = 16 << 10;
/// The most header fields a request may carry.
const MAX_HEADERS: usize = 64;
/// The largest body (a form) a request may send.
pub const MAX_BODY_BYTES: usize = 64 << 10;
/// How long a client has to send its whole request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long writing a response may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections open at once; one more is closed at once.
const MAX_CONNECTIONS: usize = 256;

/// One request, read whole.
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target as sent (`/machine/web1?refresh=1`).
    pub target: String,
    /// Header fields in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body (at most [`MAX_BODY_BYTES`]).
    pub body: Vec<u8>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to (what a browser puts in `Host`).
    pub local: SocketAddr,
}

impl Request {
    /// The first field called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response: status, content type, body, extra headers.
pub struct Reply {
    /// The status code.
    pub code: u16,
    /// `Content-Type`.
    pub kind: &'static str,
    /// The body.
    pub body: String,
    /// Headers beyond the ones every response has.
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// An HTML page.
    pub fn html(code: u16, body: String) -> Reply {
        Reply::of(code, "text/html; charset=utf-8", body)
    }

    /// A JSON document.
    pub fn json(code: u16, v: &serde_json::Value) -> Reply {
        Reply::of(code, "application/json", format!("{v:#}\n"))
    }

    /// A document serialized straight to JSON text (machines' documents
    /// kept as their raw text stay as they are).
    pub fn json_of<T: serde::Serialize>(code: u16, v: &T) -> Reply {
        match serde_json::to_string_pretty(v) {
            Ok(text) => Reply::of(code, "application/json", text + "\n"),
            Err(e) => Reply::text(500, format!("writing the document: {e}\n")),
        }
    }

    /// Plain text.
    pub fn text(code: u16, body: impl Into<String>) -> Reply {
        Reply::of(code, "text/plain; charset=utf-8", body.into())
    }

    fn of(code: u16, kind: &'static str, body: String) -> Reply {
        Reply {
            code,
            kind,
            body,
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// Why a request was not read: answered with `code`, or (`None`) the
/// connection is simply closed (the client went away or stalled).
struct Unread {
    code: Option<u16>,
    why: &'static str,
}

/// Accepts connections until the listener fails, reading each request
/// under the limits above and answering it with `handle`.
pub fn serve<F>(listener: TcpListener, handle: F) -> Result<()>
where
    F: Fn(Request) -> Reply + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            drop(stream);
            continue;
        }
        let (handle, count) = (Arc::clone(&handle), Arc::clone(&open));
        let spawned = std::thread::Builder::new()
            .name("fleet-web".to_string())
            .spawn(move || {
                connection(stream, &*handle);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // The closure (and its count) went with the failed spawn.
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

/// One connection: read, answer, close.
fn connection(mut stream: TcpStream, handle: &dyn Fn(Request) -> Reply) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let reply = match read_request(&mut stream) {
        Ok(req) => handle(req),
        Err(Unread { code: None, .. }) => return,
        Err(Unread {
            code: Some(code),
            why,
        }) => Reply::text(code, format!("{why}\n")),
    };
    let _ = write_reply(&mut stream, reply);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Reads one request within [`REQUEST_DEADLINE`] and the size limits.
fn read_request(stream: &mut TcpStream) -> std::result::Result<Request, Unread> {
    let closed = |why| Unread { code: None, why };
    let peer = stream.peer_addr().map_err(|_| closed("no peer"))?;
    let local = stream.local_addr().map_err(|_| closed("no address"))?;
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(2048);
    let (head_len, mut req) = loop {
        if let Some(parsed) = parse_head(&buf)? {
            break parsed;
        }
        if buf.len() >= MAX_HEADER_BYTES {
            return Err(Unread {
                code: Some(431),
                why: "the request's header is too large",
            });
        }
        let room = MAX_HEADER_BYTES - buf.len();
        if read_some(stream, &mut buf, room.min(4096), deadline)? == 0 {
            return Err(closed("closed before the header ended"));
        }
    };
    req.peer = peer;
    req.local = local;
    if req.header("Transfer-Encoding").is_some() {
        return Err(Unread {
            code: Some(411),
            why: "send the body with a Content-Length",
        });
    }
    let length = match req.header("Content-Length") {
        None => 0,
        Some(v) => v.trim().parse::<u64>().map_err(|_| Unread {
            code: Some(400),
            why: "Content-Length is not a number",
        })?,
    };
    if length > MAX_BODY_BYTES as u64 {
        return Err(Unread {
            code: Some(413),
            why: "the body is too large (a form here is at most 64 KiB)",
        });
    }
    let length = length as usize;
    let mut body = buf.split_off(head_len.min(buf.len()));
    body.truncate(length);
    while body.len() < length {
        let want = length - body.len();
        if read_some(stream, &mut body, want, deadline)? == 0 {
            return Err(closed("closed before the body ended"));
        }
    }
    req.body = body;
    Ok(req)
}

/// The request line and headers once `buf` holds them whole, and where the
/// body starts.
fn parse_head(buf: &[u8]) -> std::result::Result<Option<(usize, Request)>, Unread> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let status = parsed.parse(buf).map_err(|e| Unread {
        code: Some(if e == httparse::Error::TooManyHeaders {
            431
        } else {
            400
        }),
        why: "the request is not HTTP/1.1",
    })?;
    let httparse::Status::Complete(len) = status else {
        return Ok(None);
    };
    let headers = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    Ok(Some((
        len,
        Request {
            method: parsed.method.unwrap_or("").to_string(),
            target: parsed.path.unwrap_or("/").to_string(),
            headers,
            body: Vec::new(),
            peer: unspecified,
            local: unspecified,
        },
    )))
}

/// Reads at most `max` bytes onto `buf` before `deadline`; 0 at the end.
fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
) -> std::result::Result<usize, Unread> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Unread {
            code: Some(408),
            why: "the request took too long",
        });
    }
    let _ = stream.set_read_timeout(Some(left));
    let mut chunk = [0u8; 4096];
    let max = max.min(chunk.len());
    loop {
        return match stream.read(&mut chunk[..max]) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(Unread {
                    code: Some(408),
                    why: "the request took too long",
                })
            }
            Err(_) => Err(Unread {
                code: None,
                why: "the connection failed",
            }),
        };
    }
}

/// Writes `r` with the headers every page has.
fn write_reply(stream: &mut TcpStream, r: Reply) -> Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n\
         Referrer-Policy: no-referrer\r\n",
        r.code,
        reason(r.code),
        r.kind,
        r.body.len()
    );
    for (k, v) in &r.headers {
        // A value never carries a line break into the header block.
        if !v.contains(['\r', '\n']) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(r.body.as_bytes()))
        .and_then(|_| stream.flush())
        .context("writing the response")
}

/// The reason phrase of the codes this server sends.
fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        202 => "Accepted",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_once_whole() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .ok()
            .flatten()
            .is_none());
        let (len, req) =
            parse_head(b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
                .ok()
                .flatten()
                .expect("complete");
        assert_eq!(len, 52);
        assert_eq!(req.method, "POST");
        assert_eq!(req.target, "/x?y=1");
        assert_eq!(req.header("host"), Some("a"));
        assert!(parse_head(b"\x01\x02 nonsense\r\n\r\n").is_err());
    }
}
