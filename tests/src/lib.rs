//! Helpers for the end-to-end tests: each creates what it needs under a unique name and
//! removes it on drop, also when the test panics.
//!
//! The tests need root (eBPF, cgroups, namespaces); `cargo xtask test` runs them one at a
//! time. They never skip: without root they fail and say why.

pub mod cgroup;

use std::sync::atomic::{AtomicU32, Ordering};

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
