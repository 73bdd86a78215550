//! `make deb` and `make install` run this: the man pages (`provision(1)`
//! and one per verb) generated from the clap definitions, and the shell
//! completion scripts, written under the directory given.
//!
//! The completion scripts call `provision` back with the words typed so
//! far (see `src/cli/complete.rs`), so they stay right as verbs, options
//! and the config's services change.

use std::fs;
use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};
use provision::cli::Cli;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or_else(|| "target/assets".into()),
    );
    let man = out.join("man");
    fs::create_dir_all(&man)?;
    clap_mangen::generate_to(Cli::command(), &man)?;

    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    let shells: [(&dyn EnvCompleter, &str); 3] = [
        (&Bash, "provision"),
        (&Zsh, "_provision"),
        (&Fish, "provision.fish"),
    ];
    for (shell, file) in shells {
        let mut buf = Vec::new();
        shell.write_registration("COMPLETE", "provision", "provision", "provision", &mut buf)?;
        fs::write(completions.join(file), buf)?;
    }
    println!(
        "man pages in {}, completions in {}",
        man.display(),
        completions.display()
    );
    Ok(())
}
