//! The integration tests, one binary: each module is one subject, tested
//! against the built `provision` and real components (git daemon, sshd,
//! systemd booted in containers, Prometheus, nginx, GnuPG, a headless
//! browser), with testkit's fixtures and skip macros. One binary links the
//! crate and testkit once; the tests of every module share its threads.
//!
//! `tests/fetch.rs` stays a binary of its own: it sets process-wide TLS
//! settings (`SSL_CERT_DIR`) that the other tests must not see.

mod allowed_signers_fuzz;
mod architecture;
mod auth_ssh;
mod bootstrap;
mod checks;
mod config_fuzz;
mod container_selftest;
mod control;
mod crash;
mod docs;
mod e2e;
mod faults;
mod fixture_selftest;
mod fleet;
mod hostile;
mod lifecycle;
mod local_users;
mod observability_examples;
mod observe;
mod package;
mod plan;
mod rough_edges;
mod safe_changes;
mod secrets;
mod signatures;
mod ssh_upstream;
mod sync;
mod windows;
