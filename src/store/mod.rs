//! What provision keeps on disk between invocations: state files,
//! releases, their manifests and drift scans.

pub mod drift;
pub mod layout;
pub mod manifest;
pub mod release;
pub mod state;
