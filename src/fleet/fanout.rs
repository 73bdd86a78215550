//! Runs one job per machine on at most `jobs` threads at once, keeping the
//! machines' order in the results: the cost of a fleet call is ssh's, not a
//! queue's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// `work` for every item of `items`, `jobs` at a time; results in order.
/// `done` hears how many have finished, after each one.
pub fn each<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> R + Sync,
    done: impl Fn(usize) + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = work(item);
                if let Ok(mut all) = results.lock() {
                    all[i] = Some(r);
                }
                done(finished.fetch_add(1, Ordering::Relaxed) + 1);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_the_order_of_the_items() {
        let items: Vec<u64> = (0..50).collect();
        let seen = std::sync::atomic::AtomicUsize::new(0);
        let out = super::each(
            &items,
            8,
            |i| i * 2,
            |n| {
                seen.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
            },
        );
        assert_eq!(seen.into_inner(), 50);
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
    }
}
