//! `cargo xtask fuzz`: the libFuzzer targets in fuzz/ (built by cargo-fuzz), side by
//! side, each for a bounded time, from the seed corpus in fuzz/corpus/TARGET (Convert
//! messages laid out as in RFC 8803). A crash fails the command; libFuzzer saves the
//! input under fuzz/artifacts/TARGET/.
//!
//! cargo-fuzz passes nightly-only flags (-Z sanitizer); rustup cannot download a
//! nightly here, so the machine's toolchain runs with RUSTC_BOOTSTRAP=1.

use std::process::Command;

use anyhow::{Context as _, bail};
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

/// Runs the chosen targets side by side.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let targets: Vec<&str> = match &options.target {
        Some(target) if TARGETS.contains(&target.as_str()) => vec![target.as_str()],
        Some(target) => bail!("no fuzz target {target}: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    crate::setup::fuzz_tools()?;
    fuzz(&targets, options.seconds)
}

/// Builds the fuzz targets once, then fuzzes each of `targets` for `seconds`, all at
/// once (one process each: libFuzzer uses one core). Fails naming the targets that
/// found a crash.
pub fn fuzz(targets: &[&str], seconds: u64) -> anyhow::Result<()> {
    let fuzz_dir = cmd::workspace_root().join("fuzz");
    cmd::run(
        cmd::cargo()
            .current_dir(&fuzz_dir)
            .args(["fuzz", "build"])
            .env("RUSTC_BOOTSTRAP", "1"),
    )?;
    let binaries = fuzz_dir
        .join("target")
        .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .join("release");
    let mut running = Vec::new();
    for &target in targets {
        eprintln!("fuzz: {target} for {seconds} s");
        let artifacts = fuzz_dir.join("artifacts").join(target);
        std::fs::create_dir_all(&artifacts)?;
        let child = Command::new(binaries.join(target))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(format!("-max_total_time={seconds}"))
            .arg(fuzz_dir.join("corpus").join(target))
            .spawn()
            .with_context(|| format!("cannot start fuzz target {target}"))?;
        running.push((target, child));
    }
    let mut failed = Vec::new();
    for (target, mut child) in running {
        if !child.wait()?.success() {
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzzing found a crash in {}; the input is under fuzz/artifacts/",
            failed.join(", ")
        );
    }
    Ok(())
}
