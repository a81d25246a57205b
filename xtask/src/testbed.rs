//! `cargo xtask demo` and `cargo xtask bench NAME`: tools that run on the namespace
//! testbed. They live in the mptcp-tests crate (binaries mptcp-demo and mptcp-bench),
//! next to the testbed they build, and drive the release mptcp-user binary.

use std::process::Command;

use anyhow::bail;
use clap::Args;

use crate::{build, cmd};

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchOptions {
    /// The benchmark: `aggregate`, `interception`, `scale`, `web` or `relay`.
    pub name: String,

    /// Its options (see `cargo xtask bench NAME -- --help`), after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Runs a benchmark; its JSON results go to target/bench/.
pub fn bench(options: &BenchOptions) -> anyhow::Result<()> {
    let mut bench = tool("mptcp-bench")?;
    crate::setup::bench_tools()?;
    bench.arg(&options.name).args(&options.args);
    bench.env(
        "MPTCP_BENCH_DIR",
        cmd::workspace_root().join("target").join("bench"),
    );
    cmd::run(&mut bench)
}

/// Runs the demo.
pub fn demo() -> anyhow::Result<()> {
    cmd::run(&mut tool("mptcp-demo")?)
}

/// Builds the release mptcp-user and the testbed tool `name`; returns a command that
/// runs the tool against that mptcp-user.
fn tool(name: &str) -> anyhow::Result<Command> {
    let mptcp_user = build::run(&build::Options { release: true })?;
    if !cmd::is_root() {
        bail!("{name} builds network namespaces and needs root: run it with `sudo -E`");
    }
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "--package",
        "mptcp-tests",
        "--bin",
        name,
        // The smallest relay chain, a carrier of `bench relay`.
        "--bin",
        "tcp-relay",
    ]))?;
    let mut command = Command::new(cmd::workspace_root().join("target/release").join(name));
    command.env("MPTCP_USER_BIN", mptcp_user);
    Ok(command)
}
