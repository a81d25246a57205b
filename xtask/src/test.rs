//! `cargo xtask test`: unit tests, then the Debian package and the end-to-end tests,
//! then a short run of each fuzz target (the whole suite only, not with a filter).
//!
//! cargo-nextest runs the tests, every binary built by one cargo invocation: cargo
//! unifies features over the packages it builds, so a build of the end-to-end tests
//! alone would compile a dozen dependencies again.
//!
//! The end-to-end tests (crate `mptcp-tests`) load eBPF programs, make cgroups and
//! network namespaces, so they need root. They run in two passes (.config/nextest.toml
//! says which test is in which):
//! 1. the tests that check what happens, several at a time: each builds its testbed
//!    under names of its own, and most of their time is spent waiting;
//! 2. the `timed` group, the tests that assert a rate or a time, one at a time on an
//!    otherwise idle machine, so that nothing else moves what they measure.
//!
//! The fuzz targets' sanitizer build is minutes of CPU. It runs in the background from
//! the start, on what the foreground leaves (the builds' serial stretches, the waiting
//! end-to-end tests), and is paused while the unit tests run; the targets then run
//! side by side, a core each, beside the untimed pass, and are done before the timed
//! pass starts.

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    build, cmd,
    cross::{self, Arch},
    dist, fuzz,
};

/// How long each fuzz target runs in the test suite: enough to replay the corpus and
/// catch a regression on the message paths; `cargo xtask fuzz` runs longer.
const SHORT_FUZZ_SECONDS: u64 = 20;

/// The packages with tests: all but the eBPF programs, which only build for BPF.
const PACKAGES: &[&str] = &["--workspace", "--exclude", "mptcp-ebpf"];
/// The unit tests: nextest filtersets and options of each pass.
const UNIT_PASS: &[&str] = &[
    "-E",
    "not package(mptcp-tests)",
    "--test-threads",
    "num-cpus",
];
/// The end-to-end tests that only check what happens, several at a time.
const UNTIMED_PASS: &[&str] = &["-E", "package(mptcp-tests) & not group(timed)"];
/// The end-to-end tests that measure, one at a time.
const TIMED_PASS: &[&str] = &["-E", "group(timed)", "--test-threads", "1"];

/// mptcp-user's unit tests that cannot run under qemu-user, which runs the arm64 ones
/// (7.2, Debian 12's): it does not pass TCP_CONGESTION, a string option, to the kernel
/// (EINVAL), which checking a congestion control name needs; and it runs no foreign
/// binary that a test starts (binfmt is not registered in containers).
const NOT_UNDER_QEMU: &[&str] = &[
    // TCP_CONGESTION.
    "bpf::tuning::tests::the_inflight_cap_is_off_or_above_the_product",
    "converter::tests::a_request_with_the_key_is_relayed_to_its_destination_both_ways",
    "converter::tests::a_wrong_magic_number_is_reset_without_an_answer",
    "converter::tests::bad_requests_get_the_rfc_error_code_and_nothing_else",
    // Starts the test binary again.
    "net::netlink::tests::cleanup_without_a_file_left_is_an_error_not_a_panic",
];

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
    let filter = options.filter.as_deref();
    let whole_suite = filter.is_none() && !options.unit;
    crate::setup::run()?;
    let fuzz_build = (whole_suite && cmd::is_root())
        .then(fuzz::start_build)
        .transpose()?;
    let binary = build::run(&build::Options { release: true })?;

    cmd::run(cmd::cargo().arg("test").args(PACKAGES).arg("--no-run"))?;
    if let Some(fuzz_build) = &fuzz_build {
        fuzz_build.pause();
    }
    cmd::run(&mut nextest(UNIT_PASS, filter))?;
    // nextest runs no doc tests.
    cmd::run(
        cmd::cargo()
            .args(["test", "--doc"])
            .args(PACKAGES)
            .arg("--")
            .args(filter),
    )?;
    if let Some(fuzz_build) = &fuzz_build {
        fuzz_build.resume();
    }
    if options.unit {
        return Ok(());
    }

    if !cmd::is_root() {
        bail!("the end-to-end tests need root: run `sudo -E cargo xtask test` (or `--unit`)");
    }
    // The package test installs it.
    let package = dist::run(&dist::Options { arch: Arch::Amd64 })?;
    // The arm64 package, cross-built; its unit tests under qemu-user, and the package
    // tests check what runs of it there.
    let arm64_package = whole_suite
        .then(|| {
            let package = dist::run(&dist::Options { arch: Arch::Arm64 })?;
            cross::unit_tests_arm64(NOT_UNDER_QEMU)?;
            anyhow::Ok(package)
        })
        .transpose()?;
    let end_to_end = |pass: &[&str]| {
        let mut nextest = nextest(pass, filter);
        nextest
            .env("MPTCP_USER_BIN", &binary)
            .env("MPTCP_USER_DEB", &package);
        if let Some(arm64_package) = &arm64_package {
            nextest.env("MPTCP_USER_DEB_ARM64", arm64_package);
        }
        cmd::run(&mut nextest)
    };
    // The fuzz targets run beside the untimed tests, which mostly wait, and are done
    // before the timed ones start.
    std::thread::scope(|scope| {
        let fuzzing = fuzz_build.map(|fuzz_build| {
            scope.spawn(move || {
                fuzz_build
                    .wait()
                    .context("building the fuzz targets failed")?;
                fuzz::all_at_once(SHORT_FUZZ_SECONDS)
            })
        });
        let untimed = end_to_end(UNTIMED_PASS);
        if fuzzing.is_some() {
            eprintln!("fuzz: waiting for the fuzz targets before the timed tests");
        }
        let fuzzed = fuzzing.map_or(Ok(()), |fuzzing| {
            fuzzing
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        untimed.and(fuzzed)
    })?;
    end_to_end(TIMED_PASS)
}

/// `cargo nextest run` on the tests of `pass`, those whose name contains `filter` if
/// given (then a pass may have none).
fn nextest(pass: &[&str], filter: Option<&str>) -> Command {
    let mut nextest = cmd::cargo();
    nextest.args(["nextest", "run"]).args(PACKAGES).args(pass);
    if let Some(filter) = filter {
        nextest.args(["--no-tests", "pass", filter]);
    }
    nextest
}
