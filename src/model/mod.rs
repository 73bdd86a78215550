//! Plain data that several layers share: what provision records and
//! reports, without the code that produces it, so that the state on disk
//! and the machines' documents can name it without reaching sideways into
//! the layer that makes it.

pub mod commit;
pub mod fleet;
pub mod history;
pub mod pass;
pub mod place;
pub mod plan;
pub mod record;
pub mod signature;
pub mod status;
