//! libFuzzer target for the allowed_signers parser on arbitrary UTF-8 text:
//! it never panics, it is deterministic, a refusal names a line of the text
//! and says why, and every accepted signer has principals, a key and the
//! line it came from, in file order.

#![no_main]

use libfuzzer_sys::fuzz_target;
use provision::git::allowed_signers::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
});

fn check(text: &str) {
    let first = parse(text);
    let second = parse(text);
    assert_eq!(format!("{first:?}"), format!("{second:?}"), "two parses differ");
    let lines = text.lines().count();
    match first {
        Err((line, message)) => {
            assert!(line >= 1 && line <= lines, "line {line} of {lines}");
            assert!(!message.trim().is_empty(), "a refusal without a reason");
        }
        Ok(signers) => {
            let mut last = 0;
            for s in &signers {
                assert!(!s.principals.is_empty() && s.principals.iter().all(|p| !p.is_empty()));
                assert!(s.line > last && s.line <= lines, "line {} after {last}", s.line);
                last = s.line;
            }
        }
    }
}
