//! The README and the user guide (`docs/src`, built by `make guide`) as a
//! reader follows them: every relative link reaches a file, every
//! `#anchor` a heading of its page, every page of the guide is in its
//! table of contents, and no page links out of `docs/src` (mdBook copies
//! nothing else, so such a link is dead in the built guide).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn guide() -> PathBuf {
    root().join("docs/src")
}

/// A page's text with mdBook's `{{#include FILE}}` lines replaced by the
/// file, as the built page shows it.
fn page_text(page: &Path) -> String {
    let text =
        fs::read_to_string(page).unwrap_or_else(|e| panic!("reading {}: {e}", page.display()));
    text.lines()
        .map(|l| {
            match l
                .trim()
                .strip_prefix("{{#include ")
                .and_then(|r| r.strip_suffix("}}"))
            {
                Some(file) => {
                    let included = page.parent().expect("a page's directory").join(file.trim());
                    fs::read_to_string(&included).unwrap_or_else(|e| {
                        panic!("{} includes {}: {e}", page.display(), included.display())
                    })
                }
                None => format!("{l}\n"),
            }
        })
        .collect()
}

/// The lines outside fenced code blocks, with their numbers.
fn prose(text: &str) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((n + 1, line.to_string()));
        }
    }
    out
}

/// A line without its inline code spans (links inside them are text).
fn without_code(line: &str) -> String {
    let mut out = String::new();
    for (i, part) in line.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        }
    }
    out
}

/// The targets of `[text](target)` links and images on a line; a code
/// span inside the text (``[`x`](y)``) counts as text.
fn links(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.to_string());
        rest = &after[end..];
    }
    out
}

/// The anchors of a page's headings, as mdBook and GitHub make them:
/// lowercase, markup dropped, spaces to `-`, other punctuation dropped,
/// `-N` added to a repeated one.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let mut words = heading.trim().replace('`', "");
        // [text](url) in a heading: the text counts.
        while let (Some(a), Some(b)) = (words.find("]("), words.find(')')) {
            if b < a {
                break;
            }
            words.replace_range(a..=b, "");
            words = words.replacen('[', "", 1);
        }
        let slug: String = words
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut id = slug.clone();
        let mut n = 1;
        while seen.contains(&id) {
            id = format!("{slug}-{n}");
            n += 1;
        }
        seen.insert(id);
    }
    seen
}

/// Every broken link of `page`: a missing file, a missing anchor, or (for
/// a page of the guide) a link out of the guide.
fn broken(page: &Path) -> Vec<String> {
    let in_guide = page.starts_with(guide());
    let text = page_text(page);
    let dir = page.parent().expect("a page's directory");
    let mut out = Vec::new();
    for (n, line) in prose(&text) {
        for target in links(&without_code(&line)) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() {
                page.to_path_buf()
            } else {
                dir.join(file)
            };
            let at = format!(
                "{}:{n}: `{target}`",
                page.strip_prefix(root()).unwrap_or(page).display()
            );
            let Ok(path) = path.canonicalize() else {
                out.push(format!("{at}: no such file"));
                continue;
            };
            if in_guide && !path.starts_with(guide().canonicalize().expect("docs/src")) {
                out.push(format!(
                    "{at}: leads out of docs/src, dead in the built guide"
                ));
                continue;
            }
            if !anchor.is_empty() && !anchors(&page_text(&path)).contains(anchor) {
                out.push(format!("{at}: no heading with that anchor"));
            }
        }
    }
    out
}

fn guide_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = fs::read_dir(guide())
        .expect("listing docs/src")
        .map(|e| e.expect("an entry of docs/src").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    pages
}

#[test]
fn every_link_of_the_readme_and_the_guide_reaches_its_page_and_heading() {
    let mut pages = vec![root().join("README.md")];
    pages.extend(guide_pages());
    assert!(pages.len() > 10, "the guide has its pages: {pages:?}");
    let bad: Vec<String> = pages.iter().flat_map(|p| broken(p)).collect();
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn the_guides_table_of_contents_lists_every_page() {
    let summary = fs::read_to_string(guide().join("SUMMARY.md")).expect("docs/src/SUMMARY.md");
    let listed: BTreeSet<String> = prose(&summary).iter().flat_map(|(_, l)| links(l)).collect();
    for page in guide_pages() {
        let name = page
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        if name != "SUMMARY.md" {
            assert!(
                listed.contains(&name),
                "docs/src/SUMMARY.md does not list {name}"
            );
        }
    }
}

/// The checker itself finds what it must: a missing file, a missing
/// anchor, a link out of the guide, and not a link in a code span.
#[test]
fn the_link_check_finds_broken_links() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let page = dir.path().join("page.md");
    fs::write(
        &page,
        "# Top `x`\n## Exit codes\n[a](page.md#exit-codes) [b](page.md#top-x) [c](gone.md) [d](#nope) `[e](gone.md)`\n\
         ```\n[f](gone.md)\n```\n",
    )
    .expect("writing the page");
    let bad = broken(&page);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0].contains("gone.md") && bad[0].contains("no such file"),
        "{bad:?}"
    );
    assert!(
        bad[1].contains("#nope") && bad[1].contains("no heading"),
        "{bad:?}"
    );
}
