//! Helpers for the end-to-end tests: each creates what it needs under a unique name and
//! removes it on drop, also when the test panics.
//!
//! The tests need root (eBPF, cgroups, namespaces); `cargo xtask test` runs them one at a
//! time. They never skip: without root they fail and say why.

pub mod aggregate;
pub mod cgroup;
pub mod emulator;
pub mod interception;
pub mod measure;
pub mod netns;
pub mod testbed;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Fails the calling test unless it runs as root.
///
/// # Panics
/// When not root, with a message saying how to run the tests.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests need root: run `sudo -E cargo xtask test`"
    );
}

/// A name no other test, and no other run of this test binary, uses at the same time:
/// `mptcp-test-<label>-<pid>-<counter>`.
pub fn unique_name(label: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("mptcp-test-{label}-{}-{n}", std::process::id())
}

/// The mptcp-user binary under test: `$MPTCP_USER_BIN` (set by `cargo xtask test`), else
/// the workspace's release build.
pub fn mptcp_user_bin() -> std::path::PathBuf {
    std::env::var_os("MPTCP_USER_BIN").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/mptcp-user"),
        std::path::PathBuf::from,
    )
}

/// `len` pseudo-random bytes: incompressible, so nothing on the way can shrink them, and
/// no two runs alike.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = u64::from(std::process::id()) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// A scratch directory for one test's files and logs, removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates `/tmp/<unique name>`.
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(unique_name(label));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Turns SIGINT and SIGTERM into [`interrupted`] becoming true, so that a long-running
/// tool (benchmark, demo) can unwind and remove its namespaces instead of dying with
/// them in place.
pub fn catch_interrupts() -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(note_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}
