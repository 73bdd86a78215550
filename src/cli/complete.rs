//! Shell completion, answered by the binary itself: the scripts installed
//! for bash, zsh and fish (`COMPLETE=bash provision` prints bash's) call
//! `provision` back with the words typed so far, so verbs and options come
//! from the clap definitions and service names from this machine's config
//! as it is now.

use std::ffi::OsString;

use clap::CommandFactory;
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::CompleteEnv;

use crate::cli::Cli;
use crate::config::{self, Config};
use crate::host::machine::Identity;

/// Answers a completion request and exits, when the shell made one (the
/// `COMPLETE` variable is set); returns otherwise.
pub fn answer_if_asked() {
    CompleteEnv::with_factory(Cli::command)
        .bin("provision")
        .completer("provision")
        .complete();
}

/// The names of this machine's services, from the config the command
/// would read (`PROVISION_CONFIG`, else the default path); none when it
/// cannot be read.
pub fn service_names() -> Vec<CompletionCandidate> {
    let path = std::env::var_os("PROVISION_CONFIG")
        .unwrap_or_else(|| OsString::from(config::DEFAULT_PATH));
    let Ok(config) = Config::load(std::path::Path::new(&path)) else {
        return Vec::new();
    };
    let id = match std::env::var("PROVISION_MACHINE") {
        Ok(name) => Identity::named(&name),
        Err(_) => match Identity::this_host() {
            Ok(id) => id,
            Err(_) => return Vec::new(),
        },
    };
    id.services(&config)
        .into_iter()
        .map(|s| CompletionCandidate::new(&s.name).help(Some(s.unit.clone().into())))
        .collect()
}
