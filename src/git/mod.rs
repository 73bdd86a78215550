//! Mirrors of upstream branches, and the credentials and host keys used
//! to fetch them.

pub mod auth;
pub mod known_hosts;
pub mod mirror;
pub mod tls;
