//! Helpers for the end-to-end tests: each creates what it needs under a unique name and
//! removes it on drop, also when the test panics.
//!
//! The tests need root (eBPF, cgroups, namespaces); `cargo xtask test` runs them with
//! cargo-nextest, several at a time, each in a process of its own, then those that
//! measure one at a time (.config/nextest.toml). So a test shares nothing with another:
//! names from [`unique_name`], ports only inside its own namespaces. They never skip:
//! without root they fail and say why.

pub mod bench;
pub mod browser;
pub mod carriers;
pub mod cgroup;
pub mod dns;
pub mod emulator;
pub mod footprint;
pub mod greeting;
pub mod household;
pub mod inbound;
pub mod measure;
pub mod metrics;
pub mod netns;
pub mod testbed;
pub mod udp;
pub mod whoami;

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

/// The Debian package under test for this machine's architecture; see
/// [`mptcp_user_deb_for`].
///
/// # Panics
/// When there is none, saying how to make it.
pub fn mptcp_user_deb() -> std::path::PathBuf {
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    mptcp_user_deb_for(arch)
}

/// The Debian package under test for `arch` (`amd64`, `arm64`): `$MPTCP_USER_DEB`, or
/// `$MPTCP_USER_DEB_ARM64` for arm64 (set by `cargo xtask test`, which builds them), else
/// what `cargo xtask dist [--arch arm64]` left in target/debian.
///
/// # Panics
/// When there is none, saying how to make it.
pub fn mptcp_user_deb_for(arch: &str) -> std::path::PathBuf {
    let variable = if arch == "arm64" && !cfg!(target_arch = "aarch64") {
        "MPTCP_USER_DEB_ARM64"
    } else {
        "MPTCP_USER_DEB"
    };
    if let Some(path) = std::env::var_os(variable) {
        return path.into();
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let suffix = format!("_{arch}.deb");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with(&suffix))
        .unwrap_or_else(|| {
            panic!(
                "no {arch} package in {}: run `cargo xtask dist --arch {arch}`",
                dir.display()
            )
        })
}

/// The Python with aioquic that `cargo xtask setup` makes (target/quic-venv), for the
/// QUIC tests.
///
/// # Panics
/// When it is missing, saying how to make it.
pub fn quic_python() -> std::path::PathBuf {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/quic-venv/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
    python
}

/// Polls `done` every 100 ms until it holds; fails with `what()` after `timeout`.
pub fn wait_until(
    timeout: std::time::Duration,
    mut done: impl FnMut() -> bool,
    what: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{}", what());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Whether process `pid`, a child of this one, has ended (a zombie not yet reaped, or
/// gone).
pub fn exited(pid: u32) -> bool {
    // The state is the field after the command name, which may hold spaces.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, fields)| fields.trim_start().starts_with(['Z', 'X']))
    })
}

/// `len` pseudo-random bytes: incompressible, so nothing on the way can shrink them, and
/// no two runs alike.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut random = Xorshift::new(u64::from(std::process::id()));
    (0..len)
        .map(|_| random.next_u64().to_le_bytes()[0])
        .collect()
}

/// A small xorshift generator: test data, loss and jitter need no cryptographic quality.
pub struct Xorshift(u64);

impl Xorshift {
    /// A generator started from `seed` (any value; zero is made odd).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The value at `share` (0 to 1) of `sorted` values, rounded to the nearest rank.
pub fn percentile(sorted: &[f64], share: f64) -> f64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into at most millions of samples"
    )]
    let index = ((sorted.len() - 1) as f64 * share).round() as usize;
    sorted[index]
}

/// The median of `values` by `key`: the middle value, the lower of the middle two for an
/// even count; `None` when there are none.
pub fn median_by<T>(mut values: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| key(a).total_cmp(&key(b)));
    Some(values.swap_remove((values.len() - 1) / 2))
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
