//! What changes a machine: the reconcile pass, the apply transaction it
//! shares with operator commands, the gates a new commit passes (validate
//! before the switch, the trial after it), the staged rollout that decides
//! when a new head is adopted, and those commands.

pub mod apply;
pub mod backoff;
pub mod bootstrap;
pub mod check;
pub mod control;
pub mod gate;
pub mod mounts;
pub mod pass;
pub mod report;
pub mod rev;
pub mod rollout;
pub mod timers;
pub mod trial;
pub mod trust;
