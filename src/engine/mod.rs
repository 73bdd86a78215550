//! What changes a machine: the reconcile pass, the apply transaction it
//! shares with operator commands, and those commands.

pub mod apply;
pub mod control;
pub mod pass;
pub mod rev;
