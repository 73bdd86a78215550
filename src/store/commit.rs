//! Commits as operators see them.

/// The abbreviated commit hash shown to operators.
pub fn short(commit: &str) -> String {
    commit.chars().take(10).collect()
}
