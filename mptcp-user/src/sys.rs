//! Host set-up that needs raw system calls. Every `unsafe` block of the daemon lives
//! here, each with its SAFETY comment.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::AsFd,
    path::Path,
};

use anyhow::{Context as _, bail};
use log::{debug, info};
use nix::{
    fcntl::{Flock, FlockArg},
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use tokio::io::{Interest, unix::AsyncFd};

/// Where bpffs is mounted on every mainstream distribution.
const BPFFS: &str = "/sys/fs/bpf";
/// Where instance locks are kept; /run is a tmpfs, so a reboot clears them.
const LOCK_DIR: &str = "/run/mptcp-user";

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, whose default (64 KiB or
/// 8 MiB) is too small for our maps. Newer kernels use memory cgroups and ignore it.
pub fn raise_memlock_rlimit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct and keeps no pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
    if ret != 0 {
        debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there: some minimal systems do
/// not mount it, and maps can only be pinned on it.
pub fn mount_bpffs_if_missing() -> anyhow::Result<()> {
    let mounted = statfs(BPFFS).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC);
    if mounted {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("failed to create {BPFFS}"))?;
    mount(
        Some("bpffs"),
        BPFFS,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("failed to mount bpffs at {BPFFS}"))?;
    info!("mounted bpffs at {BPFFS}");
    Ok(())
}

/// Held while a daemon runs; a second daemon with the same pin directory cannot take it.
/// The kernel releases the lock when the process dies, however it dies.
///
/// The lock file stays in place after exit: removing it would let a third daemon lock a
/// new file while a second one still holds the old one.
pub struct InstanceLock {
    _lock: Flock<File>,
}

impl InstanceLock {
    /// Takes the lock for the daemon that pins its maps in `pin_dir`, or fails with a
    /// message saying that another one runs.
    pub fn acquire(pin_dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(LOCK_DIR).with_context(|| format!("failed to create {LOCK_DIR}"))?;
        let name = pin_dir.to_string_lossy().replace('/', "_");
        let path = Path::new(LOCK_DIR).join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another gateway is already running with pin path {} (lock {})",
                pin_dir.display(),
                path.display()
            ),
            Err((_, errno)) => {
                Err(errno).with_context(|| format!("failed to lock {}", path.display()))
            }
        }
    }
}

/// Registers an object that owns its file descriptor with tokio, for read readiness.
/// Must be called inside a tokio runtime.
pub fn register_readable<T: AsFd + std::os::fd::AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T: AsFd` owns its descriptor: it stays open, and stays the same, for as long
    // as the `AsyncFd` owns `inner`.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(Into::into)
}

/// Fills `buf` from the kernel's random number generator.
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a valid writable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if let Ok(n) = usize::try_from(n) {
            filled += n;
        } else {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
    Ok(())
}
