//! Builds the eBPF programs (crate `mptcp-ebpf`) for `bpfel-unknown-none` and leaves the
//! object at `$OUT_DIR/mptcp-ebpf`, where `src/bpf/mod.rs` embeds it.
//!
//! The BPF target has no prebuilt `core`, so it is built from source (`-Z build-std`).
//! The only toolchain on our machines that ships that source is Debian's rustc 1.96
//! (packages rustc-web, cargo-web, rust-web-src), which `cargo xtask setup` installs;
//! rustup's toolchains here have no rust-src and cannot download it. Its `core` only
//! compiles with its own rustc, so this script always calls /usr/bin/cargo and
//! /usr/bin/rustc, whatever toolchain builds the rest of the workspace.
//!
//! The eBPF build gets a target directory of its own (`target/ebpf`), shared by every
//! profile, so `cargo build`, `cargo test` and `cargo clippy` compile `core` only once.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CORE_SOURCE: &str = "/usr/lib/rustlib/src/rust/library/core";
const BPF_TARGET: &str = "bpfel-unknown-none";
const EBPF_PACKAGE: &str = "mptcp-ebpf";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace_dir = manifest_dir
        .parent()
        .context("mptcp-user has no parent directory")?;
    // Cargo scans a watched directory for any change inside it.
    for watched in ["mptcp-ebpf", "mptcp-ebpf-common"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace_dir.join(watched).display()
        );
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    println!(
        "cargo:rustc-env=MPTCP_USER_COMMIT={}",
        commit(workspace_dir)
    );

    check_toolchain()?;

    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_dir.join("target"), PathBuf::from)
        .join("ebpf");
    let status = Command::new(DEBIAN_CARGO)
        .current_dir(workspace_dir)
        .args(["build", "--package", EBPF_PACKAGE, "--bins", "--release"])
        .args(["--target", BPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        // -Z flags on a stable compiler.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", DEBIAN_RUSTC)
        // BTF lets the kernel check map types and relocate field accesses; bpf-linker
        // emits it only when asked. The separator is cargo's for encoded flags.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        // Set by rustup and by cargo for this build script; they would pull the outer
        // toolchain (or clippy) into the inner build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        // Cargo reads a build script's stdout as instructions; keep the inner build's
        // messages out of it.
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("failed to run {DEBIAN_CARGO}"))?;
    if !status.success() {
        bail!("building the eBPF programs failed ({status}); see the cargo output above");
    }

    let object = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join(EBPF_PACKAGE);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::copy(&object, out_dir.join(EBPF_PACKAGE))
        .with_context(|| format!("failed to copy {}", object.display()))?;
    Ok(())
}

/// The commit being built (`git rev-parse`), for `--version`; "unknown" outside a git
/// checkout. The build reruns when the checkout moves to another commit.
fn commit(workspace_dir: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(workspace_dir)
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    // HEAD's reflog grows with every commit, checkout and reset of this checkout, a
    // worktree's too (whose branches live in the main checkout's git directory). Where
    // reflogs are off, the branches' refs, loose and packed, stand in. Only paths that
    // exist are named: cargo reruns a build script on every build while one it names
    // is missing (a fresh clone has no packed-refs, a worktree no refs of its own),
    // and mptcp-user would be compiled again each time.
    if let (Some(git_dir), Some(common_dir)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) {
        let (git_dir, common_dir) = (Path::new(&git_dir), Path::new(&common_dir));
        let reflog = git_dir.join("logs/HEAD");
        let moved = if reflog.exists() {
            vec![git_dir.join("HEAD"), reflog]
        } else {
            vec![
                git_dir.join("HEAD"),
                common_dir.join("refs/heads"),
                common_dir.join("packed-refs"),
            ]
        };
        for path in moved.iter().filter(|path| path.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}

/// Fails with the fix in the message when the eBPF toolchain is not installed.
fn check_toolchain() -> anyhow::Result<()> {
    let missing: Vec<&str> = [DEBIAN_CARGO, DEBIAN_RUSTC, DEBIAN_CORE_SOURCE]
        .into_iter()
        .filter(|path| !Path::new(path).exists())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the eBPF toolchain is not installed (missing {}); run `cargo xtask setup`",
            missing.join(", ")
        );
    }
    let linker_found = env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join("bpf-linker").is_file()));
    if !linker_found {
        bail!("bpf-linker is not on PATH; run `cargo xtask setup`");
    }
    Ok(())
}
