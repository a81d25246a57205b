//! Host plumbing below the level of tokio and std: splice and pipes, bpffs, rlimits, the
//! instance lock, clocks and socket options nix and socket2 do not offer. Every `unsafe`
//! block of the daemon lives here, each with its SAFETY comment.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::{AsFd, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use log::{debug, info};
use nix::{
    fcntl::{Flock, FlockArg, OFlag, SpliceFFlags},
    mount::{MsFlags, mount},
    sys::{
        resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit},
        statfs::{BPF_FS_MAGIC, statfs},
    },
    unistd::pipe2,
};
use socket2::{Domain, Socket, Type};
use tokio::io::{Interest, unix::AsyncFd};

/// Where bpffs is mounted on every mainstream distribution.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Where instance locks are kept; /run is a tmpfs, so a reboot clears them.
const LOCK_DIR: &str = "/run/mptcp-user";

/// Now, in seconds since the Unix epoch (0 if the clock is before 1970, which a
/// stale-timestamp check then refuses).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, whose default (64 KiB or
/// 8 MiB) is too small for our maps. Newer kernels use memory cgroups and ignore it.
pub fn raise_memlock_rlimit() {
    if let Err(error) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        debug!("could not raise RLIMIT_MEMLOCK: {error}");
    }
}

/// Raises the soft limit on open files to the hard one and returns it. Service managers
/// start daemons with a soft limit of 1024, about 500 relayed flows: the hard limit is
/// what the administrator allows, so take it.
pub fn raise_file_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
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

/// Creates directory `dir` root-only (mode 0700) if it does not exist: the maps pinned
/// there steer the household's traffic, and only root may read or change them. A
/// directory that exists is never changed (`--pin-path /tmp` must not close /tmp), but
/// refused when others may write to it: they could put their own maps in our pins'
/// places.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    // Missing parents are made as `create_dir_all` makes them; only `dir` is ours.
    let parents = dir.parent().map_or(Ok(()), fs::create_dir_all);
    match parents.and_then(|()| fs::DirBuilder::new().mode(0o700).create(dir)) {
        Ok(()) => {
            // The mode was cut by the umask at most; say it whole.
            return fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("failed to make {} root-only", dir.display()));
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            bail!(
                "cannot create {}: permission denied ({})",
                dir.display(),
                NEEDS_PRIVILEGES
            )
        }
        Err(error) => {
            return Err(error).with_context(|| format!("failed to create {}", dir.display()));
        }
    }
    let mode = fs::metadata(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o022 != 0 {
        bail!(
            "{} is writable by group or others (mode {:o}); choose a directory only root \
             can write",
            dir.display(),
            mode & 0o777
        );
    }
    Ok(())
}

/// What the gateway needs to run, for the errors that say it is missing.
pub const NEEDS_PRIVILEGES: &str = "the gateway needs root, or CAP_NET_ADMIN, CAP_BPF and \
                                    CAP_PERFMON as its systemd unit gives it";

/// Linux capability numbers (include/uapi/linux/capability.h) the gateway needs.
pub const GATEWAY_CAPABILITIES: [(&str, u32); 3] =
    [("CAP_NET_ADMIN", 12), ("CAP_PERFMON", 38), ("CAP_BPF", 39)];

/// The capabilities of `wanted` this process lacks (its effective set, from
/// /proc/self/status).
pub fn missing_capabilities(wanted: &[(&'static str, u32)]) -> anyhow::Result<Vec<&'static str>> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let effective = effective_capabilities(&status).context("no CapEff in /proc/self/status")?;
    Ok(wanted
        .iter()
        .filter(|(_, bit)| effective & (1 << bit) == 0)
        .map(|(name, _)| *name)
        .collect())
}

/// The `CapEff` mask of a /proc/PID/status text.
fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// `value` as JSON in `path`, replaced whole (written beside it, then renamed), so that
/// a reader never sees half a file.
pub fn write_json_replacing(path: &Path, value: &impl serde::Serialize) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    fs::write(&temporary, json)?;
    fs::rename(&temporary, path)
}

/// A file of the daemon that pins its maps in `pin_dir`, under /run: `NAME.extension`.
pub fn run_file(pin_dir: &Path, extension: &str) -> PathBuf {
    let name = pin_dir.to_string_lossy().replace('/', "_");
    Path::new(LOCK_DIR).join(format!("{name}.{extension}"))
}

impl InstanceLock {
    /// Takes the lock for the daemon that pins its maps in `pin_dir`, or fails with a
    /// message saying that another one runs.
    pub fn acquire(pin_dir: &Path) -> anyhow::Result<Self> {
        private_dir(Path::new(LOCK_DIR))?;
        let path = run_file(pin_dir, "lock");
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

/// Registers `fd` with tokio, for read readiness. Must be called inside a tokio runtime.
///
/// Takes an `OwnedFd` (a duplicate, for a descriptor some other object owns): only then
/// is the descriptor guaranteed to stay open, and the same, while tokio watches it.
pub fn register_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns `fd`, which closes only when the `AsyncFd` drops, after
    // it has deregistered it; nothing else can close or replace it meanwhile.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(Into::into)
}

/// A non-blocking pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?)
}

/// Sets the capacity of the pipe whose end is `pipe` to at least `bytes`; returns the
/// capacity granted.
pub fn set_pipe_size(pipe: &impl AsFd, bytes: usize) -> io::Result<usize> {
    let bytes = libc::c_int::try_from(bytes).map_err(|_| io::ErrorKind::InvalidInput)?;
    let granted = nix::fcntl::fcntl(pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(bytes))?;
    Ok(usize::try_from(granted).unwrap_or(0))
}

/// Moves up to `len` bytes from `from` to `to` without copying them through userspace;
/// one of the two must be a pipe. Never blocks: EAGAIN comes back as `WouldBlock`.
pub fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    Ok(nix::fcntl::splice(from, None, to, None, len, flags)?)
}

/// The kernel's TCP_INFO of a TCP socket.
pub fn tcp_info(socket: &impl AsFd) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers, for which all-zero bytes are valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(size_of::<libc::tcp_info>()).unwrap_or(0);
    // SAFETY: the pointers describe `info` and `len`, valid for the call; the kernel
    // writes at most `len` bytes.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// The values a socket option can be read as: every bit pattern is a valid value.
trait OptionValue: Copy + Default {}
impl OptionValue for u64 {}
impl OptionValue for libc::c_int {}
impl OptionValue for [u8; 12] {}

/// An integer socket option nix does not offer.
fn get_option<T: OptionValue>(
    socket: &impl AsFd,
    level: libc::c_int,
    option: libc::c_int,
) -> io::Result<T> {
    let mut value = T::default();
    let mut len = libc::socklen_t::try_from(size_of::<T>()).unwrap_or(0);
    // SAFETY: the pointers describe `value` and `len`, valid for the call; the kernel
    // writes at most `len` bytes, and any bytes make a valid integer.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            option,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if ret == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets an integer socket option nix does not offer.
fn set_option(
    socket: &impl AsFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(0);
    // SAFETY: the pointer and length describe `value`, valid for the call.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            option,
            (&raw const value).cast(),
            len,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lets a listener accept data in SYNs (TCP Fast Open), with at most `queue`
/// connections whose handshake has not completed yet. The kernel does so only if
/// net.ipv4.tcp_fastopen has its server bit: see [`fast_open_server_enabled`].
pub fn set_fast_open(listener: &impl AsFd, queue: libc::c_int) -> io::Result<()> {
    set_option(listener, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, queue)
}

/// Whether this network namespace's net.ipv4.tcp_fastopen lets listeners accept data
/// in SYNs (its bit 2; the default, 1, is the client's bit only).
pub fn fast_open_server_enabled() -> io::Result<bool> {
    const SERVER_ENABLE: u64 = 2;
    Ok(read_sysctl("net/ipv4/tcp_fastopen")? & SERVER_ENABLE != 0)
}

/// The last number of /proc/sys/`path` (for a triple like tcp_wmem, its maximum).
pub fn read_sysctl(path: &str) -> io::Result<u64> {
    let file = format!("/proc/sys/{path}");
    let text = std::fs::read_to_string(&file)
        .map_err(|error| io::Error::new(error.kind(), format!("cannot read {file}: {error}")))?;
    text.split_whitespace()
        .last()
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{file} holds no number: {text:?}"),
            )
        })
}

/// Whether an MPTCP socket still speaks MPTCP (`TCP_IS_MPTCP`): 0 once it has fallen
/// back to plain TCP, as when a middlebox strips the MPTCP options of its handshake.
pub fn is_mptcp(socket: &impl AsFd) -> io::Result<bool> {
    /// From include/uapi/linux/tcp.h.
    const TCP_IS_MPTCP: libc::c_int = 43;
    Ok(get_option::<libc::c_int>(socket, libc::SOL_TCP, TCP_IS_MPTCP)? != 0)
}

/// Whether an accepted connection may be written to without its answer being held:
/// false only for an MPTCP connection whose client's key has not arrived yet.
///
/// That is a connection accepted with TCP Fast Open data in its SYN, before the
/// handshake's third ACK. On kernel 6.18 what is written to it then stays queued until
/// the client's next packet (tests/tests/kernel.rs); once the key has arrived, writes
/// leave at once. Plain TCP, and MPTCP fallen back to it, is never held.
pub fn mptcp_can_send(socket: &impl AsFd) -> bool {
    /// From include/uapi/linux/mptcp.h: `SOL_MPTCP`, `MPTCP_INFO`, and the flags of
    /// `struct mptcp_info`, which follow six one-byte counters and two of padding.
    const SOL_MPTCP: libc::c_int = 284;
    const MPTCP_INFO: libc::c_int = 1;
    const FLAG_FALLBACK: u32 = 1 << 0;
    const FLAG_REMOTE_KEY_RECEIVED: u32 = 1 << 1;
    // A plain TCP socket, or (before kernel 6.10) a fallen-back one, has no MPTCP_INFO.
    let Ok(head) = get_option::<[u8; 12]>(socket, SOL_MPTCP, MPTCP_INFO) else {
        return true;
    };
    let flags = u32::from_ne_bytes([head[8], head[9], head[10], head[11]]);
    flags & (FLAG_FALLBACK | FLAG_REMOTE_KEY_RECEIVED) != 0
}

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`), the value
/// `bpf_get_netns_cookie` returns for its sockets.
pub fn netns_cookie() -> io::Result<u64> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    get_option(&socket, libc::SOL_SOCKET, libc::SO_NETNS_COOKIE)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(now.tv_nsec()).unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_made_private_and_existing_ones_left_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = std::env::temp_dir().join(format!("mptcp-private-{}", std::process::id()));
        fs::create_dir(&base).unwrap();
        let mode = |dir: &Path| fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
        let fresh = base.join("run").join("pins");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        // An existing directory (`--pin-path /tmp`) keeps its mode...
        let shared = base.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o755);
        // ...and is refused when others may write to it.
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let error = private_dir(&shared).unwrap_err();
        assert!(
            error.to_string().contains("writable by group or others"),
            "{error}"
        );
        assert_eq!(mode(&shared), 0o1777);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn effective_capabilities_are_read_from_the_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        let effective = effective_capabilities(status).unwrap();
        for (_, bit) in GATEWAY_CAPABILITIES {
            assert_ne!(effective & (1 << bit), 0, "bit {bit}");
        }
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }
}
