//! `cargo xtask build`: the eBPF object and the mptcp-user binary that embeds it.

use std::path::PathBuf;

use clap::Args;

use crate::{cmd, setup};

/// Options of `cargo xtask build`.
#[derive(Debug, Args)]
pub struct Options {
    /// Build with optimisations (target/release/mptcp-user).
    #[arg(long)]
    pub release: bool,
}

/// Builds everything and returns the path of the mptcp-user binary.
pub fn run(options: &Options) -> anyhow::Result<PathBuf> {
    setup::run()?;
    let mut cargo = cmd::cargo();
    cargo.args(["build", "--package", "mptcp-user"]);
    if options.release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)?;
    let profile = if options.release { "release" } else { "debug" };
    Ok(cmd::workspace_root()
        .join("target")
        .join(profile)
        .join("mptcp-user"))
}
