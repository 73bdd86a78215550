//! Commit signatures as the state and status record them.

use serde::{Deserialize, Serialize};

/// What a check of one commit found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The commit checked.
    pub commit: String,
    /// Whether it carries a valid signature by an allowed key.
    pub verified: bool,
    /// The principals of the allowed key, or `unsigned`, or the key's
    /// fingerprint when it is not allowed.
    pub signer: String,
    /// The signing key's fingerprint (`SHA256:...`), when signed.
    pub fingerprint: Option<String>,
    /// `ssh` or `openpgp`, when signed.
    pub format: Option<String>,
    /// Why it is not verified (`unsigned`, `unknown key`, ...).
    pub reason: Option<String>,
}

impl Verdict {
    /// One line: `signed by alice@example.net (ssh, SHA256:...)` or why not.
    pub fn describe(&self) -> String {
        let key = self
            .fingerprint
            .as_deref()
            .map(|f| format!(", {}", f))
            .unwrap_or_default();
        let format = self.format.as_deref().unwrap_or("");
        match (&self.reason, self.verified) {
            (None, true) => format!("signed by {} ({format}{key})", self.signer),
            (Some(r), _) if *r == self.signer => r.clone(),
            (reason, _) => format!(
                "{}: {}{}",
                self.signer,
                reason.as_deref().unwrap_or("not verified"),
                if format.is_empty() {
                    String::new()
                } else {
                    format!(" ({format}{key})")
                }
            ),
        }
    }
}
