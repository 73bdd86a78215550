//! `provision plan --format json`: what a change to the config repository
//! will do to the fleet, computed from Git alone (schema 1). The text and
//! Markdown views render this same document.

use serde::{Deserialize, Serialize};

use crate::model::record::Change;
use crate::model::signature::Verdict;

/// The document's version: fields are only added within one.
pub const SCHEMA: u32 = 1;

/// The plan of `base..head`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The commit compared from (40 hex digits).
    pub base: String,
    /// The commit compared to.
    pub head: String,
    /// Whether anything would change on any machine (or in the config).
    pub changes: bool,
    /// Every machine × service of the head config that a file change
    /// reaches.
    pub services: Vec<ServicePlan>,
    /// Services and machines added, removed or changed by the config.
    pub config: ConfigPlan,
    /// The head config's errors (`file:line:column: context: key: why`):
    /// with any, the plan has no services.
    pub errors: Vec<String>,
    /// Its warnings.
    pub warnings: Vec<String>,
    /// With trusted keys given: the verdict on each commit of base..head,
    /// newest first.
    pub signatures: Vec<Verdict>,
    /// Things the reader should know about how the plan was made.
    pub notes: Vec<String>,
}

/// What one machine's service gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicePlan {
    /// The machine, as the config names it.
    pub machine: String,
    /// The service's name.
    pub service: String,
    /// The files that change, where the service reads them.
    pub files: Vec<FilePlan>,
    /// What runs after the switch (`reload`, `restart`, ...), if anything.
    pub action: Option<String>,
    /// How the head reaches this machine: `at once`, `canary: at once`,
    /// `within 2h (staged)`, with the gate and change windows.
    pub rollout: String,
}

/// One file that changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilePlan {
    /// Where the service reads it (`/etc/nginx/nginx.conf`).
    pub path: String,
    /// `modified`, `added` or `deleted`.
    pub change: Change,
    /// A decrypted file: its content is never shown.
    pub secret: bool,
    /// The unified diff (capped), `None` for secrets and binary files.
    pub diff: Option<String>,
}

/// The config's own changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigPlan {
    /// `MACHINE: SERVICE` entries new in head.
    pub added: Vec<String>,
    /// Entries gone from head.
    pub removed: Vec<String>,
    /// Entries whose keys changed, with the keys.
    pub changed: Vec<KeysChanged>,
}

/// One entry whose keys changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysChanged {
    /// `MACHINE: SERVICE`.
    pub entry: String,
    /// The keys whose values differ.
    pub keys: Vec<String>,
}
