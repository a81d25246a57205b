//! `cargo xtask setup`: installs the eBPF toolchain and the test tools.
//!
//! The recipe (checked on Debian 12 with rustup's Rust 1.95 and no rust-src):
//! - Debian's rustc 1.96 with its library source (rustc-web, cargo-web, rust-web-src):
//!   `-Z build-std=core` for the BPF target needs the `core` source of the very compiler
//!   that builds it, and rustup cannot download rust-src here.
//! - bpf-linker 0.13 linked against LLVM 22 (llvm-22-dev), the LLVM of that rustc.
//! - bpftool, iproute2, nftables, curl, iputils-ping, python3: used by the tests and the testbed.
//! - dnsmasq-base and bind9-dnsutils (dig): the household tests' DNS server, forwarder
//!   and resolver client (dnsmasq-base is the binary alone, no service).
//! - lintian: the package test checks the Debian package with it.
//! - aioquic from PyPI in a venv under target/, for the QUIC fallback test.
//! - cargo-fuzz, for `cargo xtask fuzz` and the tests' short fuzz run (`fuzz_tools`).
//! - cargo-nextest, which runs the end-to-end tests in their two passes (any version
//!   that reads .config/nextest.toml's `group()` filters will do).
//! - For the benchmarks only (`bench_tools`): shadowsocks-libev and mptcpd, the
//!   comparison the aggregate benchmark runs; redsocks and dante-server, the relay
//!   benchmark's SOCKS chain.
//!
//! Every step checks first, so a second run takes well under a second.

use std::process::Command;

use anyhow::bail;

use crate::cmd;

/// Debian packages the build and the tests need.
const APT_PACKAGES: &[&str] = &[
    // eBPF toolchain.
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    // clippy of the same compiler, for the eBPF crate (`cargo xtask lint`).
    "rust-web-clippy",
    "llvm-22-dev",
    // Linked into bpf-linker along with LLVM.
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    // Tests and testbed.
    "bpftool",
    "iproute2",
    "nftables",
    "curl",
    "iputils-ping",
    "python3",
    "python3-venv",
    // The household tests' DNS: dnsmasq (no service) and dig.
    "dnsmasq-base",
    "bind9-dnsutils",
    // The package test's check of the .deb against Debian's policy.
    "lintian",
    // The status page's test: a real browser, headless, driven over WebDriver.
    "chromium",
    "chromium-driver",
];

/// Debian packages only the benchmarks need: shadowsocks, redsocks and dante made MPTCP
/// by mptcpize.
const BENCH_APT_PACKAGES: &[&str] = &["shadowsocks-libev", "mptcpd", "redsocks", "dante-server"];

/// The services those packages start on systemd machines; the benchmarks start their
/// own daemons in namespaces and need none on the host.
const BENCH_SERVICES: &[&str] = &[
    "shadowsocks-libev.service",
    "redsocks.service",
    "danted.service",
];

/// Debian packages of the arm64 build (`cargo xtask dist --arch arm64`, crate::cross):
/// the arm64 standard library of Debian's rustc (a multiarch package), the aarch64
/// linker and C library, and qemu-user to run what it builds.
const CROSS_ARM64_APT_PACKAGES: &[&str] = &[
    "libstd-rust-web-dev:arm64",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The cargo-nextest `cargo xtask setup` installs where there is none.
const NEXTEST_VERSION: &str = "0.9.143";
/// The oldest cargo-nextest that reads .config/nextest.toml (filters on test groups).
const NEXTEST_OLDEST: (u32, u32, u32) = (0, 9, 133);
/// The QUIC implementation the QUIC fallback test builds its client and server with.
const AIOQUIC: &str = "aioquic==1.7.2";

/// Installs what the arm64 build needs, adding arm64 to dpkg's architectures first
/// (for the multiarch standard library); idempotent.
pub fn cross_arm64() -> anyhow::Result<()> {
    let foreign =
        cmd::output(Command::new("dpkg").arg("--print-foreign-architectures")).unwrap_or_default();
    if !foreign.split_whitespace().any(|arch| arch == "arm64") {
        if !cmd::is_root() {
            bail!("the arm64 build needs arm64 among dpkg's architectures: run it as root once");
        }
        eprintln!("setup: adding arm64 to dpkg's architectures (the arm64 Rust standard library)");
        cmd::run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    }
    install_apt_packages(CROSS_ARM64_APT_PACKAGES).map(drop)
}

/// Installs whatever is missing.
pub fn run() -> anyhow::Result<()> {
    install_apt_packages(APT_PACKAGES)?;
    install_bpf_linker()?;
    install_quic_python()?;
    install_nextest()?;
    fuzz_tools()
}

/// Installs cargo-nextest unless one recent enough is there (it may come with the
/// machine: /usr/local/bin/cargo-nextest).
fn install_nextest() -> anyhow::Result<()> {
    // "cargo-nextest 0.9.143 (60fa45f63 2026-08-04)"
    let installed = cmd::output(cmd::cargo().args(["nextest", "--version"]))
        .and_then(|version| {
            let number = version.split_whitespace().nth(1)?;
            let mut parts = number.split('.').map(|part| part.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??, parts.next()??))
        })
        .is_some_and(|version| version >= NEXTEST_OLDEST);
    if installed {
        return Ok(());
    }
    eprintln!("setup: building cargo-nextest {NEXTEST_VERSION} (a few minutes)");
    cmd::run(cmd::cargo().args([
        "install",
        "cargo-nextest",
        "--locked",
        "--version",
        NEXTEST_VERSION,
    ]))
}

/// The Python the QUIC test runs (a virtual environment in target/, with aioquic).
pub fn quic_python() -> std::path::PathBuf {
    cmd::workspace_root().join("target/quic-venv/bin/python3")
}

/// Makes the QUIC test's Python environment: a venv of Debian's python3 with aioquic
/// from PyPI, in target/ (rebuilt by this step when missing).
fn install_quic_python() -> anyhow::Result<()> {
    let python = quic_python();
    let installed = cmd::output(Command::new(&python).args(["-c", "import aioquic"])).is_some();
    if installed {
        return Ok(());
    }
    let venv = cmd::workspace_root().join("target/quic-venv");
    eprintln!("setup: making {} with {AIOQUIC}", venv.display());
    cmd::run(
        Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv),
    )?;
    cmd::run(Command::new(&python).args(["-m", "pip", "install", "-q", AIOQUIC]))
}

/// Installs cargo-fuzz, which `cargo xtask fuzz` (and the tests' short fuzz run) use.
pub fn fuzz_tools() -> anyhow::Result<()> {
    let installed = cmd::output(cmd::cargo().args(["fuzz", "--version"]))
        .is_some_and(|version| version.contains(CARGO_FUZZ_VERSION));
    if installed {
        return Ok(());
    }
    eprintln!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    cmd::run(cmd::cargo().args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// Installs what the benchmarks need besides [`run`]'s, leaving no service running.
pub fn bench_tools() -> anyhow::Result<()> {
    if install_apt_packages(BENCH_APT_PACKAGES)?
        && std::path::Path::new("/run/systemd/system").exists()
    {
        for service in BENCH_SERVICES {
            eprintln!("setup: stopping and disabling {service}, which its package started");
            // A service that failed to start (dante without a config) is no error here.
            let _ = Command::new("systemctl")
                .args(["disable", "--now", service])
                .status();
        }
    }
    Ok(())
}

/// Installs the missing ones of `packages`; returns whether it installed any.
fn install_apt_packages(packages: &[&str]) -> anyhow::Result<bool> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !apt_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    if !cmd::is_root() {
        bail!(
            "missing Debian packages: {}; run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(true)
}

fn apt_installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status == "install ok installed")
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let installed = cmd::output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|version| version.contains(BPF_LINKER_VERSION));
    if installed {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    cmd::run(
        cmd::cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            // Without it the build finds Debian's default llvm-config (LLVM 14) and fails
            // with "unable to find library -lLLVM".
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}
