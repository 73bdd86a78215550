//! The frame every page shares: escaping, the head (the action token,
//! the style), and the little JavaScript the pages use (reload while the
//! data ages, confirm before acting). Everything is inline: the page works
//! with no internet.

use std::fmt::Write as _;

/// Text made safe for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Text made safe as one path segment of a link.
pub fn path_segment(s: &str) -> String {
    crate::util::percent_encode(s)
}

/// What a page says about its data.
pub struct Frame<'a> {
    /// The page title.
    pub title: &'a str,
    /// The token forms carry.
    pub token: &'a str,
    /// Seconds between automatic reloads; 0 for none.
    pub reload: u64,
    /// When the data was collected (Unix seconds) and the time now.
    pub data_time: Option<(u64, u64)>,
}

/// A whole page around `body`.
pub fn page(f: &Frame<'_>, body: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"provision-token\" content=\"{token}\">\
         <meta name=\"provision-reload\" content=\"{reload}\">\
         <title>{title} · provision fleet</title><style>{STYLE}</style></head><body>\
         <header><a class=\"home\" href=\"/\">provision fleet</a><span class=\"title\">{title}</span>",
        token = esc(f.token),
        reload = f.reload,
        title = esc(f.title),
    );
    if let Some((taken, now)) = f.data_time {
        let _ = write!(
            out,
            "<span class=\"age\" id=\"data-age\" data-time=\"{taken}\">data from {} UTC ({} old) \
             <a href=\"?refresh=1\">refresh</a></span>",
            crate::util::format_utc(taken as i64),
            age(now, taken)
        );
    }
    let _ = writeln!(
        out,
        "</header><main>{body}</main><script>{SCRIPT}</script></body></html>"
    );
    out
}

pub use crate::util::age;

/// Reloads the page every `provision-reload` seconds unless a form field
/// has the focus or holds input; asks before any action form is sent.
const SCRIPT: &str = r#"
(function () {
  var reload = parseInt(document.querySelector('meta[name="provision-reload"]').content, 10);
  var some = function (sel, test) { return Array.prototype.some.call(document.querySelectorAll(sel), test); };
  var busy = function () {
    var a = document.activeElement;
    if (a && (a.tagName === 'INPUT' || a.tagName === 'SELECT' || a.tagName === 'BUTTON')) return true;
    return some('form.act input[type=text]', function (i) { return i.value !== ''; })
      || some('input[type=checkbox]', function (i) { return i.checked; });
  };
  if (reload > 0) setInterval(function () { if (!busy()) location.reload(); }, reload * 1000);
  document.querySelectorAll('form.act').forEach(function (f) {
    f.addEventListener('submit', function (e) {
      var verb = (e.submitter && e.submitter.value) || f.dataset.verb;
      var picked = Array.prototype.filter.call(f.elements, function (i) {
        return i.name === 'machines' && (i.type === 'hidden' || i.checked);
      }).map(function (i) { return i.value; });
      var what = verb + ' ' + f.dataset.service;
      var rev = f.elements.namedItem('rev');
      if (verb === 'rollback' && rev) what += ' to ' + rev.value.substring(0, 10);
      if (picked.length === 0) { alert('Tick at least one machine.'); e.preventDefault(); return; }
      if (!confirm(what + ' on ' + picked.join(', ') + '?')) e.preventDefault();
    });
  });
})();
"#;

const STYLE: &str = r#"
:root { --ok:#2e7d32; --wait:#1565c0; --behind:#f9a825; --held:#78909c; --bad:#c62828; --rej:#6a1b9a; --off:#424242;
  --bg:#fafafa; --fg:#212121; --mute:#666; --line:#e0e0e0; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; flex-wrap:wrap; gap:.4em 1em; align-items:baseline; padding:.7em 1em; background:#263238; color:#eceff1; }
header a { color:#eceff1; }
.home { font-weight:600; text-decoration:none; }
.title { font-size:1.05em; }
.age { margin-left:auto; font-size:.85em; color:#b0bec5; }
main { padding:1em; max-width:80em; margin:0 auto; }
h2 { font-size:1.15em; margin:1.4em 0 .5em; }
h3 { font-size:1em; margin:1.2em 0 .4em; }
.svc { background:#fff; border:1px solid var(--line); border-radius:6px; padding:.7em .9em; margin:.6em 0; }
.svc .head { display:flex; flex-wrap:wrap; gap:.3em 1em; align-items:baseline; }
.svc .head a { font-weight:600; }
.bar { display:flex; height:14px; border-radius:7px; overflow:hidden; background:var(--line); margin:.5em 0 .3em; }
.bar span { display:block; height:100%; }
.legend { display:flex; flex-wrap:wrap; gap:.2em .9em; font-size:.85em; color:var(--mute); }
.legend i { display:inline-block; width:.75em; height:.75em; border-radius:2px; margin-right:.3em; vertical-align:-1px; }
.at_head { background:var(--ok); } .waiting { background:var(--wait); } .behind { background:var(--behind); }
.frozen { background:var(--held); } .failing { background:var(--bad); } .rejected { background:var(--rej); } .unreachable { background:var(--off); }
.scroll { overflow-x:auto; -webkit-overflow-scrolling:touch; }
table { border-collapse:collapse; background:#fff; width:100%; font-size:.9em; }
th, td { border-bottom:1px solid var(--line); padding:.35em .6em; text-align:left; vertical-align:top; white-space:nowrap; }
th { background:#eceff1; font-weight:600; }
td.cell small { display:block; color:var(--mute); }
td.notes { white-space:normal; min-width:18em; }
tr.problem td:first-child { border-left:4px solid var(--bad); }
code { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:.92em; }
.badge { display:inline-block; padding:0 .45em; border-radius:3px; font-size:.8em; color:#fff; }
.b-ok { background:var(--ok); } .b-wait { background:var(--wait); } .b-behind { background:#b28704; } .b-held { background:var(--held); }
.b-bad { background:var(--bad); } .b-rej { background:var(--rej); } .b-off { background:var(--off); }
.mute { color:var(--mute); }
pre { background:#263238; color:#eceff1; padding:.7em; border-radius:4px; overflow-x:auto; font-size:.85em; }
form.act { display:flex; flex-wrap:wrap; gap:.4em; align-items:center; margin:.4em 0; }
form.act input[type=text], form.act select { padding:.35em; font-size:.95em; max-width:100%; }
button { padding:.4em .9em; font-size:.95em; border:1px solid #90a4ae; background:#fff; border-radius:4px; cursor:pointer; }
button.danger { border-color:var(--bad); color:var(--bad); }
.results li.fail { color:var(--bad); }
@media (max-width: 40em) { main { padding:.6em; } th, td { padding:.3em .4em; } }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_links_are_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(path_segment("web 1/x"), "web%201%2Fx");
    }
}
