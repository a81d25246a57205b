//! `cargo xtask fuzz`: the libFuzzer targets in fuzz/ (cargo-fuzz), each for a bounded
//! time, from the seed corpus in fuzz/corpus/TARGET (Convert messages laid out as in
//! RFC 8803; Ethernet frames for `lan_packet`). A crash fails the command; libFuzzer
//! saves the input under fuzz/artifacts/TARGET/.
//!
//! cargo-fuzz passes nightly-only flags (-Z sanitizer); rustup cannot download a
//! nightly here, so the machine's toolchain runs with RUSTC_BOOTSTRAP=1.

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::cmd;

/// The fuzz targets, in fuzz/fuzz_targets/.
pub const TARGETS: &[&str] = &["codec", "request", "lan_packet"];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct Options {
    /// One target: `codec` (the message codec), `request` (the converter's whole
    /// request handler) or `lan_packet` (the LAN program's packet reader); all of them
    /// by default.
    pub target: Option<String>,

    /// Seconds each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

/// Runs the chosen targets one after the other.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let targets: Vec<&str> = match &options.target {
        Some(target) if TARGETS.contains(&target.as_str()) => vec![target.as_str()],
        Some(target) => bail!("no fuzz target {target}: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    crate::setup::fuzz_tools()?;
    for target in targets {
        fuzz(target, options.seconds)?;
    }
    Ok(())
}

/// Fuzzes `target` for `seconds` (building it first if need be).
pub fn fuzz(target: &str, seconds: u64) -> anyhow::Result<()> {
    eprintln!("fuzz: {target} for {seconds} s");
    cmd::run(&mut fuzz_command(&[], target, seconds))
}

/// `cargo fuzz run OPTIONS` of `target` on its seed corpus for `seconds`.
fn fuzz_command(options: &[&str], target: &str, seconds: u64) -> Command {
    let mut run = cargo_fuzz(&["run"]);
    run.args(options).arg(target);
    run.arg(cmd::workspace_root().join("fuzz/corpus").join(target))
        .args(["--", &format!("-max_total_time={seconds}")]);
    run
}

/// `cargo fuzz ARGS` in fuzz/, allowed the nightly flags it passes.
fn cargo_fuzz(args: &[&str]) -> Command {
    in_fuzz_dir(cmd::cargo(), args)
}

/// `command` (cargo, or a wrapper that runs it) made `cargo fuzz ARGS` in fuzz/.
fn in_fuzz_dir(mut command: Command, args: &[&str]) -> Command {
    command
        .current_dir(cmd::workspace_root().join("fuzz"))
        .arg("fuzz")
        .args(args)
        .env("RUSTC_BOOTSTRAP", "1");
    command
}

/// The test suite's fuzz targets are built without optimisation (`cargo fuzz --dev`):
/// the sanitizer build of mptcp-user and its dependencies is the suite's longest build,
/// and unoptimised it takes far less CPU. 20 s of an unoptimised target still replay
/// its seeds and try tens of thousands of inputs (one run: 33,000 for `request`,
/// 333,000 for `codec`, a twentieth and a seventh of the optimised targets' count);
/// `cargo xtask fuzz`, which fuzzes for longer, builds them optimised.
const SUITE_PROFILE: &str = "--dev";

/// Starts building every fuzz target for the test suite in the background: the
/// sanitizer build of mptcp-user and the targets, minutes of CPU. Its output goes to
/// target/fuzz-build.log.
pub fn start_build() -> anyhow::Result<cmd::Background> {
    let log = cmd::workspace_root().join("target/fuzz-build.log");
    eprintln!(
        "fuzz: building the targets in the background ({})",
        log.display()
    );
    // At the lowest priority: the builds in the foreground are the suite's critical
    // path, and this one takes the CPU they leave, the untimed tests' waits above all.
    let mut nice = Command::new("nice");
    nice.args(["-n", "19"]).arg(cmd::cargo().get_program());
    let mut niced = in_fuzz_dir(nice, &["build", SUITE_PROFILE]);
    cmd::Background::start(&mut niced, log)
}

/// Fuzzes every target for `seconds`, all at once (each takes a core), once built
/// ([`start_build`]); their output goes to target/fuzz-TARGET.log, and the end of it
/// here.
pub fn all_at_once(seconds: u64) -> anyhow::Result<()> {
    let runs = TARGETS
        .iter()
        .map(|&target| {
            let log = cmd::workspace_root()
                .join("target")
                .join(format!("fuzz-{target}.log"));
            eprintln!("fuzz: {target} for {seconds} s ({})", log.display());
            let run =
                cmd::Background::start(&mut fuzz_command(&[SUITE_PROFILE], target, seconds), log)?;
            Ok((target, run))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (target, run) in runs {
        let log = run.log().to_owned();
        run.wait()
            .with_context(|| format!("fuzz target {target} failed"))?;
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!(
            "fuzz: {target}: {}",
            said.lines().last().unwrap_or_default()
        );
    }
    Ok(())
}
