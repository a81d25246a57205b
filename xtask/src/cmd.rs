//! Running external programs with errors that name the command.

use std::{
    fs::File,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command},
};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, killpg};

/// Runs `command` with inherited stdio; fails, naming the command, unless it exits 0.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("failed to start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Runs `command` and returns its stdout, or `None` when it cannot start or fails.
pub fn output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `cargo` as invoked us (rustup's proxy, with the workspace's toolchain file).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    let xtask_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask_dir
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Whether this process runs as root (the end-to-end tests and the daemon need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A program running in the background, in a process group of its own, its output in
/// a log file. Dropped before it ends, it is killed.
pub struct Background {
    child: Child,
    log: PathBuf,
}

impl Background {
    /// Starts `command` with its stdout and stderr in the file `log`.
    pub fn start(command: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let output = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdout(output.try_clone()?)
            .stderr(output)
            .process_group(0)
            .spawn()
            .with_context(|| format!("failed to start {command:?}"))?;
        Ok(Self { child, log })
    }

    /// Its log file.
    pub fn log(&self) -> &std::path::Path {
        &self.log
    }

    /// Stops it (SIGSTOP to its process group) until [`Self::resume`].
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// Lets a paused program go on.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let group = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        killpg(group, signal).with_context(|| format!("{signal} to {}", self.log.display()))
    }

    /// Waits for it to end; fails, with the end of its log, unless it exits 0.
    pub fn wait(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        if status.success() {
            return Ok(());
        }
        bail!(
            "{status}; the end of {}:\n{}",
            self.log.display(),
            self.log_tail(40)
        )
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.resume();
            let _ = self.signal(Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}
