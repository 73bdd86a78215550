//! Property test of the allowed_signers parser over many mutated files
//! (the libFuzzer target fuzz/fuzz_targets/allowed_signers.rs checks the
//! same promises, coverage-guided, under `make fuzz`): it never panics, it
//! is deterministic, a refusal names a line of the text and says why, and
//! accepted signers come with their lines in file order.
//!
//! `PROVISION_FUZZ_ITERS` and `PROVISION_FUZZ_SEED` set the cases and the
//! seed; both are printed so a failure can be replayed.

use provision::git::allowed_signers::parse;

const SEED_FILE: &str = include_str!("../../fuzz/seeds/allowed_signers");
/// Pieces spliced in: the format's own words and troublemakers.
const PIECES: [&str; 16] = [
    "namespaces=\"",
    "valid-after=\"",
    "valid-before=\"",
    "cert-authority",
    "\"",
    ",",
    " ",
    "\n",
    "#",
    "ssh-ed25519 ",
    "ecdsa-sha2-nistp256 ",
    "AAAA",
    "20261301",
    "Z",
    "\u{0}",
    "é",
];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(3) {
            0 if !chars.is_empty() => {
                let end = (at + rng.below(12)).min(chars.len());
                chars.drain(at.min(chars.len())..end);
            }
            1 => {
                let piece: Vec<char> = PIECES[rng.below(PIECES.len())].chars().collect();
                chars.splice(at..at, piece);
            }
            _ => {
                let c = char::from_u32(rng.below(0x80) as u32).unwrap_or('x');
                chars.insert(at, c);
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mutated_allowed_signers_files_keep_the_parsers_promises() {
    let iters = env("PROVISION_FUZZ_ITERS", 5000);
    let seed = env("PROVISION_FUZZ_SEED", 0x5eed_5167_0000_0001);
    println!("allowed_signers property test: {iters} cases, seed {seed}");
    let mut rng = Rng(seed | 1);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..iters {
        let text = mutate(&mut rng, SEED_FILE);
        let first = parse(&text);
        assert_eq!(
            format!("{first:?}"),
            format!("{:?}", parse(&text)),
            "not deterministic: {text:?}"
        );
        let lines = text.lines().count();
        match first {
            Err((line, message)) => {
                refused += 1;
                assert!(
                    (1..=lines).contains(&line),
                    "line {line} of {lines}: {text:?}"
                );
                assert!(!message.trim().is_empty(), "no reason: {text:?}");
            }
            Ok(signers) => {
                accepted += 1;
                let mut last = 0;
                for s in &signers {
                    assert!(s.principals.iter().all(|p| !p.is_empty()), "{text:?}");
                    assert!(s.line > last && s.line <= lines, "{text:?}");
                    last = s.line;
                }
            }
        }
    }
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}
