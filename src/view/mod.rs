//! What only looks: observation of the host, status, diff, history and
//! metrics. Nothing here changes a deployment.

pub mod diff;
pub mod history;
pub mod metrics;
pub mod observe;
pub mod status;
