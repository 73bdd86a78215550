//! Mirrors of upstream branches, the credentials and host keys used to
//! fetch them, and the signatures that say who wrote a commit.

pub(crate) mod advertisement;
pub mod allowed_signers;
pub(crate) mod ancestry;
pub mod auth;
pub(crate) mod dumb;
pub(crate) mod info_refs;
pub(crate) mod local;
pub(crate) mod mirror;
pub mod openpgp_keys;
pub(crate) mod partial;
pub(crate) mod pkt_line;
pub mod signature;
pub(crate) mod ssh;
pub(crate) mod upload_pack;
