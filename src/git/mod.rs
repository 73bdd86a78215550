//! Mirrors of upstream branches, and the credentials and host keys used
//! to fetch them.

pub mod auth;
pub(crate) mod known_hosts;
pub(crate) mod mirror;
pub(crate) mod tls;
