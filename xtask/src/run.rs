//! `cargo xtask run -- ARGS`: build, then run mptcp-user with ARGS. With no ARGS there
//! is nothing to configure a gateway from, so it runs the demo on the testbed.

use std::process::Command;

use anyhow::bail;
use clap::Args;

use crate::{build, cmd, testbed};

/// Options of `cargo xtask run`.
#[derive(Debug, Args)]
pub struct Options {
    /// Run a debug build instead of the release build.
    #[arg(long)]
    pub debug: bool,

    /// Arguments for mptcp-user, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Builds and runs mptcp-user, which needs root for eBPF (help and version do not).
pub fn run(options: &Options) -> anyhow::Result<()> {
    if options.args.is_empty() {
        println!(
            "No arguments: running the demo on a namespace testbed (`cargo xtask demo`).\n\
             For a real gateway: cargo xtask run -- gateway --lan IFACE --converter HOST:PORT \
             --key-file KEY (see README.md)."
        );
        return testbed::demo();
    }
    let binary = build::run(&build::Options {
        release: !options.debug,
    })?;
    let wants_help = options
        .args
        .iter()
        .any(|arg| matches!(arg.as_str(), "-h" | "--help" | "-V" | "--version" | "help"));
    if !wants_help && !cmd::is_root() {
        bail!("mptcp-user needs root (eBPF, sockets, routes); run `sudo -E cargo xtask run`");
    }
    cmd::run(Command::new(binary).args(&options.args))
}
