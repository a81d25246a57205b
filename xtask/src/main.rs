//! Project tasks: `cargo xtask <command>`. One module per command; [`cmd`] runs a
//! program and puts the failing command line into the error.

mod build;
mod cmd;
mod cross;
mod dist;
mod docs;
mod fuzz;
mod lint;
mod run;
mod setup;
mod test;
mod testbed;

use clap::{Parser, Subcommand};

/// Builds, runs and tests the MPTCP gateway.
#[derive(Debug, Parser)]
#[command(bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need (apt packages, bpf-linker); idempotent.
    Setup,
    /// Build the eBPF programs and the mptcp-user binary that embeds them.
    Build(build::Options),
    /// Build, then run mptcp-user (as root) with the given arguments; with none, the demo.
    Run(run::Options),
    /// The gateway on a namespace testbed with two realistic uplinks: a download over the
    /// best uplink alone, then through the gateway, and a table of both (root).
    Demo,
    /// Run a benchmark on the namespace testbed (root): `aggregate`, `interception`, `keys`, `scale`, `web`, `relay`.
    Bench(testbed::BenchOptions),
    /// Run every test: unit tests, then the end-to-end tests (root, eBPF, namespaces).
    Test(test::Options),
    /// Check formatting and run clippy on every crate, the eBPF programs included.
    Lint,
    /// Fuzz the Convert codec and the converter's request handler (libFuzzer).
    Fuzz(fuzz::Options),
    /// Write docs/configuration.md from the code (every command, option and metric).
    Docs,
    /// Build the Debian package (target/debian/): binary, systemd units, sample
    /// configs, completions and man pages; `--arch arm64` cross-builds it.
    Dist(dist::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build(options) => build::run(&options).map(|_| ()),
        Command::Run(options) => run::run(&options),
        Command::Test(options) => test::run(&options),
        Command::Lint => lint::run(),
        Command::Fuzz(options) => fuzz::run(&options),
        Command::Dist(options) => dist::run(&options).map(|_| ()),
        Command::Docs => docs::run(),
        Command::Demo => testbed::demo(),
        Command::Bench(options) => testbed::bench(&options),
    }
}
