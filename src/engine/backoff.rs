//! Backing off from an upstream that cannot serve (it refuses or drops
//! connections, times out, answers 5xx or 429): after the second such
//! fetch in a row the next passes make no connection until a time that
//! doubles with each failure (from twice the service's interval, capped at
//! eight times it), spread by a random part so that a fleet does not
//! return at one instant; a server's own `Retry-After` is waited for from
//! the first. A forge's abuse limits count fetches: a fleet polling a
//! failing or rate-limited server at every interval keeps it failing. One
//! failure alone waits for nothing more than the next timer pass, and a
//! refusal of credentials or a missing branch, which a person fixes, does
//! not back off.

use std::time::Duration;

use crate::model::record::Backoff;
use crate::store::state::State;

/// The longest `Retry-After` honoured: a server cannot stop a fleet's
/// deployments for more than a day.
const MAX_RETRY_AFTER: u64 = 24 * 3600;

/// The backoff of `state` that still holds at `now`, if any.
pub fn active(state: &State, now: u64) -> Option<&Backoff> {
    state.backoff.as_ref().filter(|b| b.holds_at(now))
}

/// The backoff after a fetch failed at `now` for `reason`, following
/// `previous` (the failures before it in a row); `spread` in [0, 1)
/// chooses where in the upper half of the delay it ends.
pub fn after_failure(
    previous: Option<&Backoff>,
    interval: Duration,
    retry_after: Option<u64>,
    reason: &str,
    now: u64,
    spread: f64,
) -> Backoff {
    let failures = previous.map_or(0, |b| b.failures).saturating_add(1);
    let interval = interval.as_secs().max(1);
    let full = match failures {
        0 | 1 => 0,
        n => interval
            .saturating_mul(1u64 << (n - 1).min(3))
            .min(interval.saturating_mul(8)),
    };
    let delay = full / 2 + ((full / 2) as f64 * spread.clamp(0.0, 1.0)) as u64;
    let asked = retry_after.unwrap_or(0).min(MAX_RETRY_AFTER);
    Backoff {
        until: now + delay.max(asked),
        failures,
        reason: reason.lines().last().unwrap_or(reason).trim().to_string(),
    }
}

/// A number in [0, 1) from the kernel's random source (0.5 if it fails).
pub fn spread() -> f64 {
    let mut b = [0u8; 4];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
        Ok(4) => f64::from(u32::from_le_bytes(b)) / 4_294_967_296.0,
        _ => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing after one failure; then doubling from twice the interval,
    /// capped at eight times it, each delay in the upper half of its span;
    /// a longer Retry-After wins from the first failure, up to a day.
    #[test]
    fn the_delay_doubles_to_eight_intervals_and_honours_retry_after() {
        let i = Duration::from_secs(60);
        let mut b: Option<Backoff> = None;
        let mut fulls = Vec::new();
        for _ in 0..6 {
            let lo = after_failure(b.as_ref(), i, None, "x", 1000, 0.0);
            let hi = after_failure(b.as_ref(), i, None, "x", 1000, 0.999);
            fulls.push(hi.until - 1000);
            assert!(lo.until - 1000 >= (hi.until - 1000) / 2, "{lo:?} {hi:?}");
            b = Some(hi);
        }
        assert_eq!(fulls, [0, 119, 239, 479, 479, 479], "{fulls:?}");
        assert_eq!(b.as_ref().map(|b| b.failures), Some(6));
        let r = after_failure(None, i, Some(3600), "HTTP 429", 1000, 0.0);
        assert_eq!(r.until, 1000 + 3600);
        let r = after_failure(None, i, Some(10 * 24 * 3600), "x", 0, 0.0);
        assert_eq!(r.until, 24 * 3600, "a day at most");
    }
}
