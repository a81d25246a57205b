//! Running external programs with errors that name the command.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

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

/// A program running in the background, its output in a log file. It stays in our
/// process group, so that an interrupt (Ctrl-C) ends it with us. Dropped before it
/// ends, it is stopped.
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
            .spawn()
            .with_context(|| format!("failed to start {command:?}"))?;
        Ok(Self { child, log })
    }

    /// Its log file.
    pub fn log(&self) -> &std::path::Path {
        &self.log
    }

    /// Stops it and every process it started (SIGSTOP) until [`Self::resume`].
    pub fn pause(&self) {
        // A process not stopped yet may start another meanwhile: look again until
        // every one is.
        let mut stopped = Vec::new();
        loop {
            let running: Vec<Pid> = self
                .processes()
                .into_iter()
                .filter(|pid| !stopped.contains(pid))
                .collect();
            if running.is_empty() {
                return;
            }
            for pid in running {
                // One that ended meanwhile is no error.
                let _ = kill(pid, Signal::SIGSTOP);
                stopped.push(pid);
            }
        }
    }

    /// Lets a paused program go on.
    pub fn resume(&self) {
        for pid in self.processes() {
            let _ = kill(pid, Signal::SIGCONT);
        }
    }

    /// The program and the processes it started, parents before their children.
    fn processes(&self) -> Vec<Pid> {
        let mut parents: Vec<(i32, i32)> = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // "PID (COMMAND) STATE PPID ...": the command may hold spaces.
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, fields)| fields.split_whitespace().nth(1)?.parse().ok());
            if let Some(parent) = parent {
                parents.push((pid, parent));
            }
        }
        let mut family = vec![i32::try_from(self.child.id()).unwrap_or(i32::MAX)];
        let mut next = 0;
        while next < family.len() {
            let parent = family[next];
            family.extend(
                parents
                    .iter()
                    .filter(|&&(_, of)| of == parent)
                    .map(|&(pid, _)| pid),
            );
            next += 1;
        }
        family.into_iter().map(Pid::from_raw).collect()
    }

    /// Waits for it to end; fails, with the end of its log, unless it exits 0.
    pub fn wait(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        if status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        bail!(
            "{status}; the end of {}:\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let processes = self.processes();
            for &pid in processes.iter().rev() {
                let _ = kill(pid, Signal::SIGTERM);
                let _ = kill(pid, Signal::SIGCONT);
            }
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Background;

    /// The state letter of process `pid` (`T` when stopped), or `None` once it is gone.
    fn state(pid: nix::unistd::Pid) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    #[test]
    fn a_background_program_and_its_children_pause_resume_and_end_when_dropped() {
        let log = std::env::temp_dir().join(format!("xtask-background-{}", std::process::id()));
        let mut shell = std::process::Command::new("sh");
        shell.args(["-c", "sleep 30 & sleep 30 & wait"]);
        let background = Background::start(&mut shell, log.clone()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while background.processes().len() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the sleeps never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let processes = background.processes();

        // Signals are delivered asynchronously: each state is waited for.
        let eventually = |what: &str, reached: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !reached() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{processes:?} never {what}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        background.pause();
        eventually("stopped", &|| {
            processes.iter().all(|&pid| state(pid) == Some('T'))
        });
        background.resume();
        eventually("went on", &|| {
            processes.iter().all(|&pid| state(pid) != Some('T'))
        });

        drop(background);
        // The children end (as zombies until their reaper gets to them).
        eventually("ended", &|| {
            processes
                .iter()
                .all(|&pid| matches!(state(pid), None | Some('Z')))
        });
        let _ = std::fs::remove_file(log);
    }
}
