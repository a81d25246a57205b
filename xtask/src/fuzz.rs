//! `cargo xtask fuzz`: the libFuzzer targets in fuzz/ (cargo-fuzz), each for a bounded
//! time, from the seed corpus in fuzz/corpus/TARGET (Convert messages laid out as in
//! RFC 8803). A crash fails the command; libFuzzer saves the input under
//! fuzz/artifacts/TARGET/.
//!
//! cargo-fuzz passes nightly-only flags (-Z sanitizer); rustup cannot download a
//! nightly here, so the machine's toolchain runs with RUSTC_BOOTSTRAP=1.

use anyhow::bail;
use clap::Args;

use crate::cmd;

/// The fuzz targets, in fuzz/fuzz_targets/.
pub const TARGETS: &[&str] = &["codec", "request"];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct Options {
    /// One target: `codec` (the message codec) or `request` (the converter's whole
    /// request handler); all of them by default.
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

/// Fuzzes `target` for `seconds`.
pub fn fuzz(target: &str, seconds: u64) -> anyhow::Result<()> {
    let fuzz_dir = cmd::workspace_root().join("fuzz");
    eprintln!("fuzz: {target} for {seconds} s");
    cmd::run(
        cmd::cargo()
            .current_dir(&fuzz_dir)
            .args(["fuzz", "run", target])
            .arg(fuzz_dir.join("corpus").join(target))
            .args(["--", &format!("-max_total_time={seconds}")])
            .env("RUSTC_BOOTSTRAP", "1"),
    )
}
