//! Everything that talks to the kernel below the level of tokio and std: sockets with
//! options std does not offer (MPTCP, IP_TRANSPARENT), splice and pipes, bpffs, rlimits.
//! Every `unsafe` block of the daemon lives here, each with its SAFETY comment.

use std::{
    fs::{self, File, OpenOptions},
    io,
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, bail};
use log::{debug, info};
use nix::{
    fcntl::{Flock, FlockArg, OFlag, SpliceFFlags},
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
    unistd::pipe2,
};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::{TcpListener, TcpStream},
};

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

/// A non-blocking stream socket of `addr`'s family: MPTCP when `mptcp`, else TCP.
fn stream_socket(addr: SocketAddr, mptcp: bool) -> io::Result<Socket> {
    let protocol = if mptcp {
        Protocol::MPTCP
    } else {
        Protocol::TCP
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(protocol))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Connects a socket (MPTCP when `mptcp`) to `addr`, after `configure` has set its
/// options; callers bound the wait. The kernel falls back to plain TCP by itself when the
/// peer does not speak MPTCP.
pub async fn connect(
    addr: SocketAddr,
    mptcp: bool,
    configure: impl FnOnce(&Socket) -> io::Result<()>,
) -> io::Result<TcpStream> {
    let socket = stream_socket(addr, mptcp)?;
    configure(&socket)?;
    let socket =
        tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(OwnedFd::from(socket)));
    socket.connect(addr).await
}

/// A listening socket for `addr`: MPTCP when `mptcp`; `[::]` serves IPv4 too.
/// `transparent` sets IP_TRANSPARENT, so that it accepts connections addressed to any
/// destination a TPROXY rule or the eBPF redirect steers to it; an accepted socket's
/// local address is then the client's original destination.
pub fn listen(addr: SocketAddr, mptcp: bool, transparent: bool) -> io::Result<TcpListener> {
    let socket = stream_socket(addr, mptcp)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
        if transparent {
            socket.set_ip_transparent_v6(true)?;
        }
    }
    if transparent {
        // IPv4 (and IPv4-mapped on a dual-stack socket) needs the IPv4-level option.
        socket.set_ip_transparent_v4(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(std::net::TcpListener::from(OwnedFd::from(socket)))
}

/// Makes the next close of `stream` send a reset instead of a FIN (SO_LINGER 0).
pub fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// A non-blocking pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?)
}

/// Moves up to `len` bytes from `from` to `to` without copying them through userspace;
/// one of the two must be a pipe. Never blocks: EAGAIN comes back as `WouldBlock`.
pub fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    Ok(nix::fcntl::splice(from, None, to, None, len, flags)?)
}

/// Reads a 64-bit socket option at level SOL_SOCKET.
fn get_socket_u64(socket: &impl AsFd, option: libc::c_int) -> io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let mut value = 0u64;
    let mut len: libc::socklen_t = 8;
    // SAFETY: the pointers describe `value` and `len`, valid for the call; the kernel
    // writes at most `len` bytes.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
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

/// The kernel's cookie of a socket (`SO_COOKIE`): the key BPF programs see for it.
pub fn socket_cookie(socket: &impl AsFd) -> io::Result<u64> {
    get_socket_u64(socket, libc::SO_COOKIE)
}

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`), the value
/// `bpf_get_netns_cookie` returns for its sockets.
pub fn netns_cookie() -> io::Result<u64> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    get_socket_u64(&socket, libc::SO_NETNS_COOKIE)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(now.tv_nsec()).unwrap_or(0)
    })
}
