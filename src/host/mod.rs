//! The machine provision works on: bind mounts, systemd over D-Bus, the
//! unit generator, package managers, external processes, identity.

pub mod generator;
pub mod machine;
pub mod mount;
pub mod package;
pub mod process;
pub mod systemd;
