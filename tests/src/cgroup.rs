//! A throwaway child cgroup of the cgroup v2 hierarchy.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::Context as _;

/// A child cgroup that is removed on drop, after killing any process still in it.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup v2 root>/<unique name>`, under the root the gateway attaches to.
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let path = mptcp_user::bpf::cgroup_root()?.join(crate::unique_name(label));
        fs::create_dir(&path).with_context(|| format!("failed to create {}", path.display()))?;
        Ok(Self { path })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `command` move itself into this cgroup before it executes, so that the
    /// program runs, and opens its sockets, inside it.
    pub fn put(&self, command: &mut Command) {
        let procs = self.path.join("cgroup.procs");
        // SAFETY: the closure runs in the forked child before exec; it only opens and
        // writes a file, which is safe there (no locks held by other threads are taken).
        unsafe {
            command.pre_exec(move || {
                // "0" means the writing process itself.
                fs::OpenOptions::new()
                    .write(true)
                    .open(&procs)?
                    .write_all(b"0")
            });
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // cgroup.kill (Linux 5.14+) kills every process inside; rmdir fails while any is left.
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..50 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}
