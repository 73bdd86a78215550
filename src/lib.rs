//! provision: pull-based GitOps for ordinary Linux machines.
//!
//! One invocation of the binary performs one reconcile pass (or one operator
//! command). The crate is layered; a module imports only from layers below
//! its own (checked by `tests/it/architecture.rs`):
//!
//! | layer | owns |
//! |---|---|
//! | `cli` | clap types, dispatch, exit codes, human output |
//! | `fleet` | every machine of the config, over OpenSSH: status, actions, inventory |
//! | `engine` | what changes a machine: the pass, the apply transaction, operator commands |
//! | `view` | what only looks: status, diff, history, metrics |
//! | `observe` | what the machine shows now against the state: drift, mounts, the unit |
//! | `store` | what provision keeps on disk: state, releases, manifests, drift scans |
//! | `git` | mirrors, credentials and host keys |
//! | `host` | the machine: mounts, systemd, packages, processes, identity, users |
//! | `model` | plain data several layers share: the status document, rejections, holds, commit ids, signature verdicts |
//! | `config` | the configuration file |
//! | `util` | descriptor-based file operations, locks, small helpers |
//!
//! Layers in one row of the architecture test's floors (`engine`, `view`
//! and `fleet`; `store`, `git` and `host`) do not use each other.

pub mod cli;
pub mod config;
pub(crate) mod engine;
pub(crate) mod fleet;
pub mod git;
pub(crate) mod host;
pub mod model;
pub(crate) mod observe;
pub(crate) mod store;
pub(crate) mod util;
pub mod view;

/// A machine's place in the staged rollout of a commit, for tools that plan
/// a rollout (and for the bench that measures how evenly it spreads).
pub use engine::rollout::position as rollout_position;
pub use model::commit::CommitId;
pub use store::state::Position;
