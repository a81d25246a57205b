//! `cargo xtask lint`: formatting and clippy on every crate, the eBPF one included.
//!
//! The eBPF crate only builds for `bpfel-unknown-none` with Debian's toolchain (see
//! mptcp-user/build.rs), so it is linted by that toolchain's clippy (package
//! rust-web-clippy), called directly: `cargo clippy` would find rustup's cargo-clippy
//! first, whose compiler cannot build `core` for BPF.

use std::process::Command;

use crate::{cmd, setup};

const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// Checks formatting, then runs clippy with warnings as errors on the workspace and on
/// the eBPF crate.
pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
    // The fuzz targets are a workspace of their own.
    cmd::run(cmd::cargo().args(["fmt", "--check", "--manifest-path", "fuzz/Cargo.toml"]))?;
    cmd::run(cmd::cargo().args([
        "clippy",
        "--all-targets",
        "--workspace",
        "--exclude",
        "mptcp-ebpf",
        "--",
        "-D",
        "warnings",
    ]))?;
    let target_dir = cmd::workspace_root().join("target").join("ebpf-clippy");
    let mut ebpf = Command::new(DEBIAN_CARGO_CLIPPY);
    ebpf.current_dir(cmd::workspace_root())
        .args(["clippy", "--package", "mptcp-ebpf", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--", "-D", "warnings"])
        // As mptcp-user/build.rs: Debian's compiler, -Z flags on it, and no rustup
        // toolchain leaking in.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", DEBIAN_RUSTC)
        .env("CARGO", DEBIAN_CARGO)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd::run(&mut ebpf)
}
