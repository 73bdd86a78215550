//! What only looks: observation of the host, status, diff, history and
//! metrics. Nothing here changes a deployment.

pub(crate) mod check;
pub(crate) mod diff;
pub(crate) mod history;
pub mod metrics;
pub(crate) mod plan;
pub(crate) mod status;
