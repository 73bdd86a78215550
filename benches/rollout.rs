//! `make bench`, rollout part: how evenly a staged rollout spreads.
//!
//! 1,000 machines (`web0.example.net`…) and 100 commits: each machine's
//! place in each commit's rollout, as `provision` computes it from the
//! machine, the service and the commit. Reported:
//! - per commit, the Kolmogorov–Smirnov statistic D of the 1,000 places
//!   against the uniform distribution (D below 1.36/√n = 0.043 is what
//!   uniform places give 95% of the time), and of all 100,000 pooled;
//! - per machine, its mean place over the 100 commits (uniform places give
//!   0.5 ± 0.029), and how often it was among the last tenth to adopt
//!   (10 times in 100 on average), against a fixed per-machine order (a
//!   place from the machine's name alone), where the same machines are
//!   always last;
//! - the cost of computing one place.
//!
//! Writes the "Staged rollout spread" section of docs/BENCHMARKS.md and
//! prints it. Option: `--out PATH`.

use testkit as common;

use std::path::PathBuf;
use std::time::Instant;

use provision::{rollout_position, CommitId};

const HEADING: &str = "## Staged rollout spread";
const MACHINES: usize = 1000;
const COMMITS: usize = 100;

/// The KS statistic of `xs` (sorted in place) against uniform [0, 1).
fn ks(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len() as f64;
    xs.iter()
        .enumerate()
        .map(|(i, &x)| {
            let above = (i + 1) as f64 / n - x;
            let below = x - i as f64 / n;
            above.max(below)
        })
        .fold(0.0, f64::max)
}

fn commit(j: usize) -> CommitId {
    let oid = git2::Oid::hash_object(git2::ObjectType::Commit, format!("commit {j}").as_bytes())
        .expect("hashing a commit id");
    CommitId::from(oid)
}

/// Places by machine then commit: `places[m][c]`.
fn places(place: impl Fn(&str, CommitId) -> f64) -> Vec<Vec<f64>> {
    let commits: Vec<CommitId> = (0..COMMITS).map(commit).collect();
    (0..MACHINES)
        .map(|m| {
            let name = format!("web{m}.example.net");
            commits.iter().map(|&c| place(&name, c)).collect()
        })
        .collect()
}

/// (mean D, max D, commits over the 5% critical value, pooled D).
fn uniformity(p: &[Vec<f64>]) -> (f64, f64, usize, f64) {
    let critical = 1.36 / (MACHINES as f64).sqrt();
    let ds: Vec<f64> = (0..COMMITS)
        .map(|c| ks(&mut p.iter().map(|m| m[c]).collect::<Vec<_>>()))
        .collect();
    let mut pooled: Vec<f64> = p.iter().flatten().copied().collect();
    (
        ds.iter().sum::<f64>() / ds.len() as f64,
        ds.iter().copied().fold(0.0, f64::max),
        ds.iter().filter(|&&d| d > critical).count(),
        ks(&mut pooled),
    )
}

/// (lowest and highest mean place of a machine, most times in the last
/// tenth, machines never in the last tenth).
fn lateness(p: &[Vec<f64>]) -> (f64, f64, usize, usize) {
    let means: Vec<f64> = p
        .iter()
        .map(|m| m.iter().sum::<f64>() / m.len() as f64)
        .collect();
    let mut last = vec![0usize; MACHINES];
    for c in 0..COMMITS {
        let mut order: Vec<(f64, usize)> = p.iter().enumerate().map(|(i, m)| (m[c], i)).collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        for &(_, i) in &order[MACHINES - MACHINES / 10..] {
            last[i] += 1;
        }
    }
    (
        means.iter().copied().fold(1.0, f64::min),
        means.iter().copied().fold(0.0, f64::max),
        last.iter().copied().max().unwrap_or(0),
        last.iter().filter(|&&n| n == 0).count(),
    )
}

fn row(name: &str, p: &[Vec<f64>]) -> String {
    let (mean_d, max_d, over, pooled) = uniformity(p);
    let (lo, hi, most_last, never_last) = lateness(p);
    format!(
        "| {name} | {mean_d:.4} | {max_d:.4} | {over} of {COMMITS} | {pooled:.4} | {lo:.3} – {hi:.3} | {most_last} of {COMMITS} | {never_last} |"
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let start = Instant::now();
    let ours = places(|m, c| rollout_position(m, "web", c).fraction());
    let per_place = start.elapsed().as_secs_f64() / (MACHINES * COMMITS) as f64;
    // The fixed order: the same hash with one commit for every commit.
    let fixed = places(|m, _| rollout_position(m, "web", commit(0)).fraction());
    let mut section = format!(
        "{HEADING}\n\n{MACHINES} machines, {COMMITS} commits: each machine's place in each commit's \
         rollout (its adoption time is first seen + place × `rollout`). D is the Kolmogorov–Smirnov \
         statistic against the uniform distribution; uniform places stay below 1.36/√{MACHINES} = \
         {:.3} for 95% of commits. A machine's mean place is 0.5 ± 0.029 for uniform places; \
         \"last tenth\" counts the commits for which a machine was among the last 10% to adopt \
         (10 on average). The fixed order (a place from the machine's name alone) is the \
         alternative: as uniform per commit, but the same machines are always last.\n\n\
         | places | mean D per commit | max D | commits with D > {:.3} | D of all {} | mean place per machine | most times in the last tenth | machines never in it |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        1.36 / (MACHINES as f64).sqrt(),
        1.36 / (MACHINES as f64).sqrt(),
        MACHINES * COMMITS,
    );
    section.push_str(&row("provision (machine, service, commit)", &ours));
    section.push('\n');
    section.push_str(&row("fixed order (machine only)", &fixed));
    section.push_str(&format!(
        "\n\nOne place costs {:.2} µs (SHA-1 of the three names).\n",
        per_place * 1e6
    ));
    println!("{section}");
    if let Some(path) = out {
        common::replace_section(&path, HEADING, &section);
    }
}
