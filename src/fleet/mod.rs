//! The fleet: every machine the config names, seen and steered from an
//! operator's machine over the system's OpenSSH client, out of band (no
//! server of provision's own). Each remote call is the machine's own
//! `provision --machine NAME ...`, so what the fleet shows and does is
//! exactly what the machine shows and does.

pub mod action;
pub mod fanout;
pub mod host_keys;
pub mod inventory;
pub mod prometheus;
pub mod push;
pub mod secrets;
pub mod ssh;
pub mod status;
pub mod web;

use crate::config::Config;

/// The machines of `config`, each once, in file order, narrowed to those
/// matching one of `patterns` (names or shell globs; all when empty).
pub fn machines(config: &Config, patterns: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in &config.services {
        if !out.contains(&s.machine) && selected(&s.machine, patterns) {
            out.push(s.machine.clone());
        }
    }
    out
}

/// Whether `machine` matches one of `patterns` (all when empty).
fn selected(machine: &str, patterns: &[String]) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .any(|p| glob(&p.to_ascii_lowercase(), machine))
}

/// Shell-style glob with `*` and `?`.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob("web*", "web1.example.net"));
        assert!(glob("*.example.net", "db2.example.net"));
        assert!(glob("web?", "web3"));
        assert!(!glob("web?", "web10"));
        assert!(!glob("db*", "web1"));
        assert!(glob("*", ""));
    }
}
