//! provision: pull-based GitOps for ordinary Linux machines.
//!
//! One invocation of the binary performs one reconcile pass (or one operator
//! command). Every module owns one concept of that pass; see `pass` for the
//! order in which they are used.

pub mod auth;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod control;
pub mod deploy;
pub mod diff;
pub mod dirfd;
pub mod drift;
pub mod git;
pub mod history;
pub mod lock;
pub mod machine;
pub mod metrics;
pub mod mount;
pub mod observe;
pub mod package;
pub mod pass;
pub mod release;
pub mod rev;
pub mod state;
pub mod status;
pub mod systemd;
pub mod units;
pub mod util;
