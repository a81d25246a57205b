//! The architectures we build for: amd64 (this machine's) and arm64 (most household
//! routers and the boards they are built from), cross-built here.
//!
//! rustup's toolchain cannot fetch the aarch64 standard library on our machines (no
//! internet but the package registries), so the arm64 build uses Debian's own Rust:
//! its rustc 1.96 (rustc-web, which already builds the eBPF object), the standard
//! library for arm64 from the multiarch package `libstd-rust-web-dev:arm64`, and the
//! aarch64 cross linker. What it builds is run here under qemu-user (`--version`,
//! `manpages`, the unit tests); the kernel is not emulated, so nothing that needs
//! root or eBPF is.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{build, cmd, setup};

/// Debian's Rust, with the arm64 standard library beside its own.
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_RUSTDOC: &str = "/usr/bin/rustdoc";

/// An architecture of the package, by its Debian name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// x86-64, this machine's.
    Amd64,
    /// 64-bit ARM (Raspberry Pi 4 and 5, most router boards), cross-built.
    Arm64,
}

impl Arch {
    /// Debian's name of it, as in a package's file name.
    pub fn debian_name(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The binutils `strip` that knows its binaries.
    pub fn strip(self) -> &'static str {
        match self {
            Self::Amd64 => "strip",
            Self::Arm64 => "aarch64-linux-gnu-strip",
        }
    }

    /// A command that runs `binary` of this architecture here: directly, or under
    /// qemu-user.
    pub fn command(self, binary: &Path) -> Command {
        match self {
            Self::Amd64 => Command::new(binary),
            Self::Arm64 => {
                let mut command = Command::new("qemu-aarch64-static");
                command.arg(binary);
                command
            }
        }
    }
}

/// Builds the release binary for `arch`; returns its path.
pub fn build_release(arch: Arch) -> anyhow::Result<PathBuf> {
    if arch == Arch::Amd64 {
        return build::run(&build::Options { release: true });
    }
    setup::run()?;
    setup::cross_arm64()?;
    cmd::run(&mut arm64_cargo(&[
        "build",
        "--release",
        "--package",
        "mptcp-user",
    ]))?;
    Ok(arm64_target_dir()
        .join(ARM64_TARGET)
        .join("release/mptcp-user"))
}

/// Runs mptcp-user's unit tests built for arm64 under qemu-user, but `skipped` (tests
/// that need what qemu-user does not emulate).
pub fn unit_tests_arm64(skipped: &[&str]) -> anyhow::Result<()> {
    setup::cross_arm64()?;
    let mut cargo = arm64_cargo(&["test", "--package", "mptcp-user", "--lib", "--"]);
    for test in skipped {
        cargo.args(["--skip", test]);
    }
    cmd::run(&mut cargo)
}

/// Rust's name of the arm64 target.
const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";

/// Where the arm64 build goes: a directory of its own, since another compiler builds
/// it than the rest of the workspace (whose artifacts it would otherwise replace).
fn arm64_target_dir() -> PathBuf {
    cmd::workspace_root().join("target/arm64")
}

/// Debian's cargo with `args`, for the arm64 target, linked by the aarch64 linker and
/// run under qemu-user. (mptcp-user's build script finds the eBPF object in
/// target/ebpf as usual: the object is the same for every architecture.)
fn arm64_cargo(args: &[&str]) -> Command {
    let mut cargo = Command::new(DEBIAN_CARGO);
    let (before, after) = args
        .iter()
        .position(|&arg| arg == "--")
        .map_or((args, &[][..]), |split| args.split_at(split));
    cargo
        .current_dir(cmd::workspace_root())
        .args(before)
        .args(["--target", ARM64_TARGET, "--target-dir"])
        .arg(arm64_target_dir())
        .args(after)
        // Not rustup's proxies, which would take the pinned toolchain.
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTDOC", DEBIAN_RUSTDOC)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
            "qemu-aarch64-static",
        );
    cargo
}
