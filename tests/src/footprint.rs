//! What a process holds (resident memory, open files, pipes), read from /proc, and
//! room for what this one holds: the scale benchmark and the tests that look for leaks.

use anyhow::Context as _;

/// One process's footprint: resident memory, open files, and pipes among them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Footprint {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub files: u64,
    /// Those of them that are pipes.
    pub pipes: u64,
}

impl Footprint {
    /// Reads process `pid`'s footprint from /proc.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("no process {pid}"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc status")?;
        let mut files = 0;
        let mut pipes = 0;
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            files += 1;
            let target = std::fs::read_link(entry?.path()).unwrap_or_default();
            if target.to_string_lossy().starts_with("pipe:") {
                pipes += 1;
            }
        }
        Ok(Self {
            rss_kib,
            files,
            pipes,
        })
    }

    /// Open files that are not pipes.
    pub fn sockets_and_others(&self) -> u64 {
        self.files - self.pipes
    }
}

/// Raises this process's soft open-file limit to the hard one (it holds both ends of
/// many flows); returns the hard limit.
pub fn raise_own_file_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}
