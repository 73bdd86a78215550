//! The machine provision works on: bind mounts, systemd over D-Bus, the
//! unit generator, package managers, the fleet's Prometheus, external processes, identity, mount
//! namespaces.

pub mod generator;
pub mod machine;
pub mod mount;
pub mod namespace;
pub mod package;
pub mod process;
pub mod prometheus;
pub mod systemd;
pub mod volatile;
