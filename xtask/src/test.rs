//! `cargo xtask test`: unit tests, then the Debian package and the end-to-end tests,
//! then a short run of each fuzz target (the whole suite only, not with a filter).
//!
//! The end-to-end tests (crate `mptcp-tests`) load eBPF programs, make cgroups and network
//! namespaces, so they need root. They run one at a time: they share the host's cgroup
//! tree and kernel settings, and the machine has two cores.

use anyhow::bail;
use clap::Args;

use crate::{build, cmd};

/// How long each fuzz target runs in the test suite: enough to replay the corpus and
/// catch a regression on the message paths; `cargo xtask fuzz` runs longer.
const SHORT_FUZZ_SECONDS: u64 = 20;

/// Options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct Options {
    /// Only the unit tests (no root needed).
    #[arg(long)]
    pub unit: bool,

    /// Only run tests whose name contains this filter.
    pub filter: Option<String>,
}

/// Runs the test suites, failing on the first red one.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let binary = build::run(&build::Options { release: true })?;
    let filter = options.filter.as_deref();

    let mut unit = cmd::cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "mptcp-ebpf",
        "--exclude",
        "mptcp-tests",
    ]);
    unit.args(["--"]).args(filter);
    cmd::run(&mut unit)?;
    if options.unit {
        return Ok(());
    }

    if !cmd::is_root() {
        bail!("the end-to-end tests need root: run `sudo -E cargo xtask test` (or `--unit`)");
    }
    // The package test installs it.
    let package = crate::dist::run()?;
    let mut end_to_end = cmd::cargo();
    end_to_end
        .args(["test", "--package", "mptcp-tests", "--", "--test-threads=1"])
        .args(filter)
        .env("MPTCP_USER_BIN", binary)
        .env("MPTCP_USER_DEB", package);
    cmd::run(&mut end_to_end)?;
    if filter.is_none() {
        crate::setup::fuzz_tools()?;
        crate::fuzz::fuzz(crate::fuzz::TARGETS, SHORT_FUZZ_SECONDS)?;
    }
    Ok(())
}
